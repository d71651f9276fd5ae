//! Meta-gradient estimators. Each takes a problem and `theta` and returns an [`Estimate`]:
//! the meta-gradient estimate, what it cost, and a report of every inner phase it ran.
//! An estimator is a value ([`EstimatorSpec`]): a name plus its parameters.

pub mod contrastive;
pub mod error_bar;
pub mod first_order;
pub mod implicit;
pub mod unrolled;

use crate::error::{CmlError, Result};
use crate::inner::{Divergence, GdParams, PhaseInfo, Termination};
use crate::linalg::Vector;
use crate::oracle::Cost;
use crate::problem::{BilevelProblem, ProblemInstance};
use candle_core::Tensor;
pub use contrastive::{Contrastive, Variant};
pub use first_order::{FirstOrder, FirstOrderRule};
pub use implicit::{Implicit, LinearSolver};
pub use unrolled::Unrolled;

/// An estimate of `dJ/dtheta` and its price.
#[derive(Debug, Clone)]
pub struct Estimate {
    pub gradient: Vector,
    pub cost: Cost,
    /// Every gradient-descent phase run, in order (free phase first).
    pub phases: Vec<PhaseInfo>,
    /// The end point of every phase in `phases`, in the same order.
    pub phase_points: Vec<Tensor>,
    /// The adapted fast parameters (the free phase's end point, or `phi_K` when unrolled).
    pub adapted_phi: Tensor,
    /// `||H v - d_phi L_out||` of the implicit estimators' linear solve.
    pub linear_residual: Option<f64>,
    /// Conditions under which the estimate may be wrong (printed by the command line).
    pub warnings: Vec<String>,
    /// How far the estimate may be from the meta-gradient, where it was estimated (contrastive
    /// estimates; docs/ERROR_BAR.md).
    pub error_bar: Option<error_bar::ErrorBar>,
}

impl Estimate {
    /// Warns about every phase whose loss rose without diverging and, with `budget_warnings`,
    /// about every phase stopped by its step budget above its (non-zero) tolerance (the
    /// estimate is then taken at an inexact phase, off by up to the certified distance).
    pub fn add_phase_warnings(&mut self, budget_warnings: bool) {
        for (i, ph) in self.phases.iter().enumerate() {
            let which = if i == 0 {
                "the free phase"
            } else {
                "a nudged phase"
            };
            if budget_warnings && ph.termination == Termination::BudgetExceeded {
                let bound = ph
                    .certified_distance
                    .map_or("unknown (no known strong convexity)".into(), |d| {
                        format!("<= {d:.3e}")
                    });
                self.warnings.push(format!(
                    "{which} (beta = {}) stopped at its budget of {} steps with |grad| = {:.3e} above its tolerance {:e}; \
                     distance to its solution {bound}",
                    ph.beta, ph.steps, ph.grad_norm, ph.tolerance
                ));
            }
            if let Some(r) = ph.loss_rises {
                let reading = match r.divergence {
                    Divergence::LossRise => format!(
                        "below the divergence threshold, but the step size {} may be near 2 / curvature",
                        ph.step_size
                    ),
                    // A surrogate's (or e-prop's) gradient need not lower the loss it reports.
                    Divergence::NonFinite => {
                        "the phase's gradient need not lower this loss (a surrogate's), so only a \
                                              non-finite loss stops it"
                            .into()
                    }
                };
                self.warnings.push(format!(
                    "{which} (beta = {}): the loss rose at {} of {} steps, by at most {:.3e} (at step {}), ending at \
                     {:.6e}; {reading}",
                    ph.beta, r.count, ph.steps, r.largest, r.at_step, ph.loss
                ));
            }
        }
    }
}

/// The parameter named when the unrolled estimators meet an inner optimizer they cannot
/// differentiate.
pub const UNROLLED_OPTIMIZER: &str = "inner optimizer of bptt / tbptt";

/// Fast parameters above which the dense implicit solve is refused: its Hessian alone is
/// `n^2` floats (134 MB at 4096), built from `n` Hessian-vector products, then an `O(n^3)`
/// Cholesky factorisation. CG or Neumann need only products.
pub const DENSE_SOLVE_LIMIT: usize = 4096;

impl EstimatorSpec {
    /// Why this estimator does not apply to `problem` at `theta`, if it does not (docs/ESTIMATORS.md,
    /// the "applies when" column): a stage that needs second-order products on a problem whose
    /// derivatives are a surrogate's, or the estimator's own condition.
    pub fn inapplicable(&self, problem: &dyn ProblemInstance, theta: &Tensor) -> Result<Option<String>> {
        let estimator = self.estimator();
        if let Some(reason) = problem.surrogate_derivative()
            && let Some(stage) = estimator.stages().into_iter().find(Stage::second_order)
        {
            return Ok(Some(format!(
                "{} needs second-order products of the inner loss ({}), but on the {} problem {reason}",
                estimator.describe(),
                stage.describe(),
                problem.name()
            )));
        }
        estimator.inapplicable(problem, theta)
    }

    /// [`EstimatorSpec::inapplicable`] as a refusal, or with `allow` as a warning to report.
    pub fn check_applicable(
        &self,
        problem: &dyn ProblemInstance,
        theta: &Tensor,
        allow: bool,
    ) -> Result<Option<String>> {
        match self.inapplicable(problem, theta)? {
            None => Ok(None),
            Some(reason) if allow => Ok(Some(format!("{reason} (run anyway, as asked)"))),
            Some(reason) => Err(CmlError::Inapplicable { reason }),
        }
    }
}

/// One stage of an estimator's work on a problem, in the order it runs them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stage {
    /// A gradient-based phase on `L_in + beta L_out` (`beta = 0`: the free phase).
    Phase { beta: f64 },
    /// The implicit meta-gradient's linear solve at the free phase's end point.
    LinearSolve(LinearSolver),
    /// A walk back through the inner loop's last `steps` steps (`None`: all of them).
    Backward { steps: Option<usize> },
    /// The error bar: the stencil at `2 beta` and the bar's second-order truncation estimate
    /// (docs/ERROR_BAR.md).
    ErrorBar,
}

impl Stage {
    /// Whether the stage needs second-order products of the inner loss (Hessian- or
    /// mixed-derivative-vector products): every stage but a phase does.
    pub fn second_order(&self) -> bool {
        !matches!(self, Stage::Phase { .. })
    }

    pub fn describe(&self) -> String {
        match self {
            Stage::Phase { beta } if *beta == 0.0 => "the free phase".into(),
            Stage::Phase { beta } => format!("a nudged phase at beta = {beta}"),
            Stage::LinearSolve(_) => "its linear solve".into(),
            Stage::Backward { steps: None } => "the walk back through every inner step".into(),
            Stage::Backward { steps: Some(k) } => format!("the walk back through the last {k} inner steps"),
            Stage::ErrorBar => "the error bar".into(),
        }
    }
}

/// A meta-gradient estimator: it names and describes itself, lists what it runs, and says where
/// it does not apply.
pub trait MetaGradientEstimator {
    /// The registry name (`contrastive`, `cg`, `bptt`, ...): what the command line accepts and
    /// sweep rows print.
    fn name(&self) -> &'static str;
    /// A short description with the parameters, e.g. `contrastive standard (beta = 0.001)`.
    fn describe(&self) -> String;
    /// What the estimator runs, in order.
    fn stages(&self) -> Vec<Stage>;
    /// Whether an error bar exists for its estimate (docs/ERROR_BAR.md): a truncation error
    /// that vanishes with beta, so that Richardson extrapolation can bound it.
    fn has_error_bar(&self) -> bool {
        false
    }
    /// Why the estimator's own assumptions fail on `problem` at `theta`, if they do (the needs
    /// of its stages are checked by [`EstimatorSpec::inapplicable`]).
    fn inapplicable(&self, _problem: &dyn ProblemInstance, _theta: &Tensor) -> Result<Option<String>> {
        Ok(None)
    }
    fn estimate(&self, problem: &dyn BilevelProblem, theta: &Tensor) -> Result<Estimate>;
}

/// Choosing an estimator: a name plus parameters, from the command line or a config.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "estimator", rename_all = "kebab-case")]
pub enum EstimatorSpec {
    Contrastive(Contrastive),
    /// The contrastive rule with `beta` chosen by its error bar (`--beta auto`).
    ContrastiveAutoBeta(error_bar::AutoBeta),
    Implicit(Implicit),
    Unrolled(Unrolled),
    FirstOrder(FirstOrder),
}

/// Every parameter any estimator takes; each name uses the ones it needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EstimatorParams {
    pub variant: Variant,
    pub beta: f64,
    pub free: GdParams,
    pub nudged: GdParams,
    /// CG iterations or Neumann terms.
    pub solver_steps: usize,
    pub neumann_alpha: Option<f64>,
    /// Steps walked back by truncated BPTT.
    pub truncation: usize,
}

impl EstimatorSpec {
    /// The contrastive rule with `beta` chosen by its error bar instead of given (`--beta auto`).
    pub fn with_auto_beta(self) -> Result<Self> {
        match self {
            EstimatorSpec::Contrastive(c) => {
                let auto = EstimatorSpec::ContrastiveAutoBeta(error_bar::AutoBeta::new(c));
                auto.validate()?;
                Ok(auto)
            }
            other => Err(CmlError::invalid(
                "beta",
                "auto",
                format!(
                    "beta auto chooses the nudging strength of the contrastive estimator; {} takes no beta",
                    other.estimator().describe()
                ),
            )),
        }
    }

    /// The same estimator with every phase (free, nudged, or the unrolled inner loop) run with
    /// `phase`: how a sweep's budget sets the phases.
    pub fn with_phases(&self, phase: GdParams) -> Self {
        let mut spec = *self;
        match &mut spec {
            EstimatorSpec::Contrastive(c)
            | EstimatorSpec::ContrastiveAutoBeta(error_bar::AutoBeta { rule: c, .. }) => {
                c.free = phase;
                c.nudged = phase;
            }
            EstimatorSpec::Implicit(i) => i.free = phase,
            EstimatorSpec::Unrolled(u) => u.inner = phase,
            EstimatorSpec::FirstOrder(f) => f.free = phase,
        }
        spec
    }

    /// The contrastive rule, for the contrastive estimators (with `--beta auto`: its rule at the
    /// first pilot's strength).
    pub fn contrastive_rule(&self) -> Option<&Contrastive> {
        match self {
            EstimatorSpec::Contrastive(c)
            | EstimatorSpec::ContrastiveAutoBeta(error_bar::AutoBeta { rule: c, .. }) => Some(c),
            _ => None,
        }
    }

    /// CG iterations, Neumann terms or truncated-BPTT steps, for the estimators that take them.
    pub fn solver_steps(&self) -> Option<usize> {
        match self {
            EstimatorSpec::Implicit(Implicit {
                solver: LinearSolver::ConjugateGradient { steps } | LinearSolver::Neumann { steps, .. },
                ..
            }) => Some(*steps),
            EstimatorSpec::Unrolled(Unrolled { truncation, .. }) => *truncation,
            _ => None,
        }
    }

    /// The inner work of one estimate, for a budget table, stage by stage at the most steps each
    /// runs: the free phase's steps, then what the estimator adds (nudged phases, the linear
    /// solve's products, steps walked back), e.g. `200 steps + 2 x 100 nudged`.
    pub fn inner_work(&self) -> String {
        let free = self.free_phase().max_steps;
        let stages = self.estimator().stages();
        let mut parts = vec![format!("{free} steps")];
        let nudged = stages
            .iter()
            .filter(|s| matches!(s, Stage::Phase { beta } if *beta != 0.0))
            .count();
        if let (true, Some(c)) = (nudged > 0, self.contrastive_rule()) {
            parts.push(format!("{nudged} x {} nudged", c.nudged.max_steps));
        }
        for stage in &stages {
            match stage {
                Stage::LinearSolve(LinearSolver::ConjugateGradient { steps }) => {
                    parts.push(format!("{steps} CG products"))
                }
                Stage::LinearSolve(LinearSolver::Neumann { steps, .. }) => {
                    parts.push(format!("{steps} Neumann products"))
                }
                // T1-T2: the mixed product alone.
                Stage::LinearSolve(LinearSolver::Identity) => parts.push("1 mixed product".into()),
                Stage::LinearSolve(LinearSolver::Dense) => parts.push("a dense solve".into()),
                Stage::Backward { steps } => parts.push(format!("{} back", steps.unwrap_or(free))),
                _ => {}
            }
        }
        parts.join(" + ")
    }

    /// The free phase's parameters (the inner loop of the unrolled estimators).
    pub fn free_phase(&self) -> GdParams {
        match self {
            EstimatorSpec::Contrastive(c) => c.free,
            EstimatorSpec::ContrastiveAutoBeta(a) => a.rule.free,
            EstimatorSpec::Implicit(i) => i.free,
            EstimatorSpec::Unrolled(u) => u.inner,
            EstimatorSpec::FirstOrder(f) => f.free,
        }
    }

    /// Checks every parameter before any work is done.
    pub fn validate(&self) -> Result<()> {
        match self {
            EstimatorSpec::Contrastive(c) => c.validate(),
            EstimatorSpec::ContrastiveAutoBeta(a) => a.validate(),
            EstimatorSpec::Implicit(i) => {
                i.solver.validate()?;
                i.free.validate("free phase")
            }
            EstimatorSpec::Unrolled(u) => {
                // The reverse loop differentiates phi_{k+1} = phi_k - alpha grad L_in(phi_k).
                if u.inner.optimizer != crate::optimizer::Optimizer::GradientDescent {
                    return Err(CmlError::invalid(
                        UNROLLED_OPTIMIZER,
                        u.inner.optimizer.name(),
                        "backpropagation through the inner loop is implemented for gradient-descent steps",
                    ));
                }
                if u.truncation == Some(0) {
                    return Err(CmlError::invalid(
                        "truncation",
                        0,
                        "truncated BPTT needs at least 1 step",
                    ));
                }
                u.inner.validate("inner loop")
            }
            EstimatorSpec::FirstOrder(f) => f.free.validate("free phase"),
        }
    }

    pub fn estimator(&self) -> &dyn MetaGradientEstimator {
        match self {
            EstimatorSpec::Contrastive(e) => e,
            EstimatorSpec::ContrastiveAutoBeta(e) => e,
            EstimatorSpec::Implicit(e) => e,
            EstimatorSpec::Unrolled(e) => e,
            EstimatorSpec::FirstOrder(e) => e,
        }
    }
}
