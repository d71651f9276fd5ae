//! The contrastive meta-learning rule (MATH.md §2).
//!
//! With `g(b) = d_theta L_b(phi^_b, theta)` taken at the end point of the phase run on
//! `L_b = L_in + b L_out`, each variant is a finite-difference stencil of `g` at multiples of
//! `beta`: `estimate = sum_k w_k g(m_k beta) / beta`. Only first derivatives are used.
//!
//! Convention for the direct term: `g(b)` contains `b d_theta L_out(phi^_b)`, so the direct
//! term is taken inside the nudged phases (at `phi^_beta`, or averaged over `phi^_{+-beta}`
//! for the symmetric variant), not at `phi^_0`. The two choices differ by `O(beta)`.

use super::{Estimate, MetaGradientEstimator, Stage};
use crate::error::{CmlError, Result};
use crate::inner::{GdParams, InnerSolver, Phase, PhaseSolution};
use crate::linalg::{Vector, to_dvector};
use crate::oracle::Oracle;
use crate::problem::BilevelProblem;
use candle_core::Tensor;

/// Which finite difference of `g` estimates `F'(0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// `(g(beta) - g(0)) / beta`; error `O(beta)`.
    Standard,
    /// `(g(beta) - g(-beta)) / (2 beta)`; error `O(beta^2)`.
    Symmetric,
    /// `(-3/2 g(0) + 2 g(beta) - 1/2 g(2 beta)) / beta`; error `O(beta^2)`.
    SecondOrderForward,
    /// An ablation, not an estimator to use: the authors' PyTorch code never adds the outer loss
    /// in its `-beta` phase, which then minimises `L_in` alone from the free solution, so its
    /// "symmetric" estimate is `(g(beta) - g_0) / (2 beta)`, half a forward difference, biased by
    /// `-F'(0) / 2` (docs/THEORY.md §3). Kept to measure what that defect does.
    ReferenceCodeSymmetric,
}

impl Variant {
    /// The estimators (the error bound applies to each).
    pub const ALL: [Variant; 3] = [Variant::Standard, Variant::Symmetric, Variant::SecondOrderForward];
    /// Every name `parse` accepts: the estimators and the reference code's defect.
    pub const NAMED: [Variant; 4] = [
        Variant::Standard,
        Variant::Symmetric,
        Variant::SecondOrderForward,
        Variant::ReferenceCodeSymmetric,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Standard => "standard",
            Variant::Symmetric => "symmetric",
            Variant::SecondOrderForward => "second-order-forward",
            Variant::ReferenceCodeSymmetric => "reference-code-symmetric",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::NAMED
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| CmlError::UnknownName {
                kind: "contrastive variant".into(),
                name: s.into(),
                allowed: Self::NAMED.map(Variant::name).join(", "),
            })
    }

    /// `(m_k, w_k)`: phase at `m_k beta`, weight `w_k` (MATH.md §2 table).
    pub fn stencil(self) -> &'static [(f64, f64)] {
        match self {
            Variant::Standard => &[(0.0, -1.0), (1.0, 1.0)],
            Variant::Symmetric => &[(-1.0, -0.5), (1.0, 0.5)],
            Variant::SecondOrderForward => &[(0.0, -1.5), (1.0, 2.0), (2.0, -0.5)],
            Variant::ReferenceCodeSymmetric => &[(-1.0, -0.5), (1.0, 0.5)],
        }
    }

    /// The order of the truncation error in `beta`: 1 standard, 2 symmetric and second-order
    /// forward, 0 for the reference code's defect (biased by `-F'(0)/2` at every `beta`).
    pub fn truncation_order(self) -> i32 {
        match self {
            Variant::Standard => 1,
            Variant::Symmetric | Variant::SecondOrderForward => 2,
            Variant::ReferenceCodeSymmetric => 0,
        }
    }

    /// The nudging strength the phase asked for at `b` really runs with: `b`, except in the
    /// reference code's defect, whose negative phase drops the outer loss (runs at 0).
    pub fn phase_beta(self, b: f64) -> f64 {
        match self {
            Variant::ReferenceCodeSymmetric if b < 0.0 => 0.0,
            _ => b,
        }
    }

    /// `sum_k w_k g(m_k beta) / beta`, with `g(b)` supplied by the caller: from gradient-descent
    /// phases in the estimator, from exact or perturbed phase solutions in tests and theory.
    ///
    /// ```
    /// use cml::estimator::Variant;
    /// use cml::linalg::Vector;
    ///
    /// // g(b) = sin(b): F'(0) = 1; the symmetric stencil's error is beta^2 / 6 to leading order.
    /// let g = |b: f64| Ok(Vector::from_element(1, b.sin()));
    /// let beta = 1e-2;
    /// let estimate = Variant::Symmetric.combine(beta, g)?;
    /// assert!((estimate[0] - 1.0).abs() < 1.01 * beta * beta / 6.0);
    /// # Ok::<(), cml::CmlError>(())
    /// ```
    pub fn combine(self, beta: f64, mut g: impl FnMut(f64) -> Result<Vector>) -> Result<Vector> {
        let mut estimate: Option<Vector> = None;
        for &(multiple, weight) in self.stencil() {
            let term = g(multiple * beta)? * (weight / beta);
            estimate = Some(match estimate {
                Some(e) => e + term,
                None => term,
            });
        }
        Ok(estimate.expect("every stencil has at least two points"))
    }
}

/// Parameters of the contrastive estimator: the stencil, the nudging strength, and the inner
/// solver of each phase (gradient descent by default; any [`InnerSolver`], e.g. damped Newton
/// for phases solved to machine precision).
///
/// ```
/// use cml::estimator::{Contrastive, MetaGradientEstimator, Variant};
/// use cml::inner::NewtonParams;
/// use cml::linalg::relative_error;
///
/// let problem = cml::registry::draw_problem("quadratic", 1)?;
/// let rule = Contrastive {
///     variant: Variant::Symmetric,
///     beta: 1e-3,
///     free: NewtonParams::default(),
///     nudged: NewtonParams::default(),
/// };
/// let estimate = rule.estimate(problem.as_ref(), problem.theta())?;
/// let exact = cml::ground_truth::exact_meta_gradient(problem.as_ref(), problem.theta())?;
/// // Exact phases leave only the stencil's O(beta^2) truncation error.
/// assert!(relative_error(&estimate.gradient, &exact.meta_gradient) < 1e-5);
/// # Ok::<(), cml::CmlError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Contrastive<S = GdParams> {
    pub variant: Variant,
    /// Nudging strength; non-zero and finite.
    pub beta: f64,
    /// The free phase, from the problem's initial `phi`.
    pub free: S,
    /// Each nudged phase, from the free-phase solution.
    pub nudged: S,
}

impl<S: InnerSolver> Contrastive<S> {
    pub fn validate(&self) -> Result<()> {
        if !self.beta.is_finite() || self.beta == 0.0 {
            return Err(CmlError::invalid(
                "beta",
                self.beta,
                "the nudging strength must be finite and non-zero (the estimate divides by beta)",
            ));
        }
        self.free.validate("free phase")?;
        self.nudged.validate("nudged phase")
    }

    /// The free phase, then the stencil's nudged phases at `beta` (at the strength each really
    /// runs with).
    pub fn phase_stages(&self, beta: f64) -> Vec<Stage> {
        let nudged = self.variant.stencil().iter().filter(|(m, _)| *m != 0.0);
        std::iter::once(Stage::Phase { beta: 0.0 })
            .chain(nudged.map(|(m, _)| Stage::Phase {
                beta: self.variant.phase_beta(m * beta),
            }))
            .collect()
    }
}

impl<S: InnerSolver + Clone> MetaGradientEstimator for Contrastive<S> {
    fn name(&self) -> &'static str {
        "contrastive"
    }

    fn stages(&self) -> Vec<Stage> {
        self.phase_stages(self.beta)
    }

    fn has_error_bar(&self) -> bool {
        self.variant.truncation_order() > 0
    }

    fn describe(&self) -> String {
        format!("contrastive {} (beta = {})", self.variant.name(), self.beta)
    }

    fn estimate(&self, problem: &dyn BilevelProblem, theta: &Tensor) -> Result<Estimate> {
        self.validate()?;
        let oracle = Oracle::with_engine(problem, self.free.engine());
        let mut runs = PhaseRuns::start(self, &oracle, theta)?;
        let gradient = runs.estimate(self.beta)?;
        Ok(runs.finish(gradient, oracle.cost()))
    }
}

/// The phases of contrastive estimates at one `theta`: the free phase, run once, and every
/// nudged phase run so far, so that stencils at several nudging strengths (the error bar's
/// `beta` and `2 beta`, the pilots of `--beta auto`) share them.
pub struct PhaseRuns<'o, 'p, S = GdParams> {
    rule: Contrastive<S>,
    oracle: &'o Oracle<'p>,
    theta: &'o Tensor,
    free: PhaseSolution,
    /// `(b, solution)` in the order run, `b` the strength the stencil asked for.
    nudged: Vec<(f64, PhaseSolution)>,
}

impl<'o, 'p, S: InnerSolver + Clone> PhaseRuns<'o, 'p, S> {
    /// Runs the free phase of `rule` from the problem's initial `phi`.
    pub fn start(rule: &Contrastive<S>, oracle: &'o Oracle<'p>, theta: &'o Tensor) -> Result<Self> {
        let problem = oracle.problem();
        let free = rule.free.solve(
            oracle,
            &Phase::new(&problem.initial_phi(theta)?, theta, 0.0, "free phase"),
        )?;
        // The free solution is kept through the nudged phases, beside the current iterate, its
        // gradient, and the running estimate with g(0).
        oracle.keep_alive(3 * problem.dims().phi + 3 * problem.dims().theta);
        Ok(PhaseRuns {
            rule: rule.clone(),
            oracle,
            theta,
            free,
            nudged: Vec::new(),
        })
    }

    /// The end point of the phase the stencil asks for at `b` (the free phase at `b = 0`),
    /// run now if it has not been.
    pub fn solution(&mut self, b: f64) -> Result<&PhaseSolution> {
        if b == 0.0 {
            return Ok(&self.free);
        }
        let at = match self.nudged.iter().position(|(done, _)| *done == b) {
            Some(at) => at,
            None => {
                // The reference code's defect runs its -beta phase on L_in alone (a fresh phase
                // from the free solution, as that code does).
                let run = self.rule.variant.phase_beta(b);
                let name = format!("nudged phase (beta = {run})");
                let nudged = self
                    .rule
                    .nudged
                    .solve(self.oracle, &Phase::new(&self.free.phi, self.theta, run, &name))?;
                self.nudged.push((b, nudged));
                self.nudged.len() - 1
            }
        };
        Ok(&self.nudged[at].1)
    }

    pub fn rule(&self) -> &Contrastive<S> {
        &self.rule
    }

    pub fn oracle(&self) -> &'o Oracle<'p> {
        self.oracle
    }

    pub fn theta(&self) -> &'o Tensor {
        self.theta
    }

    /// The rule's stencil at nudging strength `beta`, running the phases it still needs.
    pub fn estimate(&mut self, beta: f64) -> Result<Vector> {
        let variant = self.rule.variant;
        variant.combine(beta, |b| to_dvector(&self.solution(b)?.gradients.theta))
    }

    /// Gradient evaluations of the free phase and of the stencil's phases at `beta` (those run).
    pub fn stencil_gradient_evaluations(&self, beta: f64) -> usize {
        let mut total = self.free.info.gradient_evaluations;
        for &(multiple, _) in self.rule.variant.stencil() {
            let b = multiple * beta;
            if let Some((_, s)) = self.nudged.iter().find(|(done, _)| b != 0.0 && *done == b) {
                total += s.info.gradient_evaluations;
            }
        }
        total
    }

    /// The estimate `gradient` with every phase run so far, charged `cost`.
    pub fn finish(self, gradient: Vector, cost: crate::oracle::Cost) -> Estimate {
        let mut phases = vec![self.free.info];
        let mut phase_points = vec![self.free.phi.clone()];
        for (_, s) in self.nudged {
            phases.push(s.info);
            phase_points.push(s.phi);
        }
        let mut estimate = Estimate {
            gradient,
            cost,
            phases,
            phase_points,
            adapted_phi: self.free.phi,
            linear_residual: None,
            warnings: Vec::new(),
            error_bar: None,
        };
        estimate.add_phase_warnings(true);
        estimate
    }
}
