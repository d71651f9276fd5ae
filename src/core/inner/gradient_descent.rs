//! Gradient descent (and the momentum and Adam rules of [`Optimizer`]) on a phase loss
//! `L_beta = L_in + beta L_out` (MATH.md §2): the inner solver the estimators learn with.

use super::{InnerSolver, Phase, PhaseInfo, PhaseObserver, PhaseSolution, Termination};
use crate::autodiff::Gradients;
use crate::engine::{EngineChoice, FirstOrderPhase, Workspace};
use crate::error::{CmlError, Result};
use crate::linalg::norm;
use crate::optimizer::{ADAM_DEFAULT_STEP, Optimizer, OptimizerState};
use crate::oracle::Oracle;
use crate::problem::Curvature;
use crate::smoothness;
use candle_core::{Device, Tensor};

/// Gradient-descent settings of one phase; as an [`InnerSolver`], gradient descent itself.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GdParams {
    /// Step size; `None` takes `1 / L_beta` from the problem's known smoothness, or, where it is
    /// unknown, `1 / (2 L_hat)` with `L_hat` from power iteration at the phase's start
    /// (docs/STEP_SIZE.md).
    pub step_size: Option<f64>,
    /// Step budget (at least 1).
    pub max_steps: usize,
    /// Stop early once `||d_phi L_beta|| <= tolerance` (0 runs the whole budget).
    pub tolerance: f64,
    /// Which implementation computes the gradients (the same numbers up to rounding).
    pub engine: EngineChoice,
    /// The update rule (gradient descent by default); a fresh state for every phase.
    pub optimizer: Optimizer,
    /// When the phase counts as diverged (left out of serialised settings at its default).
    #[serde(skip_serializing_if = "Divergence::is_default", default)]
    pub divergence: Divergence,
}

/// When a phase counts as diverged (docs/STEP_SIZE.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Divergence {
    /// A non-finite loss or gradient, or a loss [`DIVERGENCE_MARGIN`] of its scale above its
    /// start.
    #[default]
    LossRise,
    /// Only a non-finite loss or gradient. For inner learning rules that do not descend the loss
    /// they report, such as e-prop on a spiking network, whose loss may rise well above a
    /// near-zero start at a fresh Adam state's first steps (docs/SPIKING.md §4).
    NonFinite,
}

impl Divergence {
    pub fn is_default(&self) -> bool {
        *self == Divergence::LossRise
    }
}

impl Default for GdParams {
    fn default() -> Self {
        GdParams {
            step_size: None,
            max_steps: 1000,
            tolerance: 0.0,
            engine: EngineChoice::Auto,
            optimizer: Optimizer::GradientDescent,
            divergence: Divergence::LossRise,
        }
    }
}

impl GdParams {
    pub fn validate(&self, phase: &str) -> Result<()> {
        self.optimizer.validate()?;
        if self.max_steps == 0 {
            return Err(CmlError::invalid(
                format!("{phase} step budget"),
                self.max_steps,
                "a step budget must be a whole number >= 1",
            ));
        }
        if let Some(lr) = self.step_size
            && !(lr.is_finite() && lr > 0.0)
        {
            return Err(CmlError::invalid(
                format!("{phase} step size"),
                lr,
                "a step size must be finite and > 0",
            ));
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(CmlError::invalid(
                format!("{phase} tolerance"),
                self.tolerance,
                "a gradient-norm tolerance must be finite and >= 0",
            ));
        }
        Ok(())
    }
}

/// How a phase's step size was chosen.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub enum StepSizeRule {
    /// Set by the user.
    Given,
    /// `1 / L_beta` from the problem's known smoothness bound.
    InverseSmoothness { smoothness: f64 },
    /// Adam's usual 1e-3 (its steps are scaled per coordinate, so curvature does not set it).
    AdamDefault,
    /// Damped Newton steps `(H + tau I)^{-1} grad` with backtracking on the loss
    /// ([`super::NewtonParams`]); the step size is that of the full step, 1.
    Newton,
    /// `1 / (safety L_hat)`, `L_hat` the largest curvature at the start point by power iteration.
    /// `halvings` counts restarts after a divergence, each with half the step.
    PowerIteration {
        largest_curvature: f64,
        iterations: usize,
        safety: f64,
        halvings: usize,
    },
}

impl StepSizeRule {
    pub fn describe(&self) -> String {
        match self {
            StepSizeRule::Given => "given".into(),
            StepSizeRule::AdamDefault => format!("Adam's default {ADAM_DEFAULT_STEP}"),
            StepSizeRule::Newton => "damped Newton steps with backtracking".into(),
            StepSizeRule::InverseSmoothness { smoothness } => {
                format!("1 / L with L = {smoothness:.4e} (known)")
            }
            StepSizeRule::PowerIteration {
                largest_curvature,
                iterations,
                safety,
                halvings: 0,
            } => format!(
                "1 / ({safety} L^) with L^ = {largest_curvature:.4e} (power iteration, {iterations} Hessian-vector products)"
            ),
            StepSizeRule::PowerIteration {
                largest_curvature,
                iterations,
                safety,
                halvings,
            } => format!(
                "1 / ({safety} L^ 2^{halvings}) with L^ = {largest_curvature:.4e} (power iteration, {iterations} \
                 Hessian-vector products; halved {halvings} times after the phase diverged)"
            ),
        }
    }
}

/// Rises of the loss during a phase that stayed below the divergence threshold.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LossRises {
    /// Steps at which the loss rose above the previous step's by more than rounding.
    pub count: usize,
    /// The largest rise, and the step it happened at.
    pub largest: f64,
    pub at_step: usize,
    /// The rule the phase ran under: under [`Divergence::NonFinite`] a rise says nothing about
    /// the step size (the phase's gradient need not lower its loss).
    pub divergence: Divergence,
}

/// Divergence: the loss exceeds its start by more than this fraction of its scale,
/// `max(|L_0|, L_0 - min_k L_k, 1e-12)` (docs/STEP_SIZE.md). A blow-up grows geometrically and
/// crosses it within a few steps; a non-convex phase's small late rises stay far below it.
pub const DIVERGENCE_MARGIN: f64 = 0.1;
/// A rise smaller than this, relative to `max(|L|, 1)`, is rounding, not a rise.
const ROUNDING: f64 = 1e-12;

/// Watches a phase's losses: divergence is an error, smaller rises are recorded.
#[derive(Debug, Clone)]
pub struct DivergenceRule {
    start: f64,
    lowest: f64,
    previous: f64,
    rises: Option<LossRises>,
    policy: Divergence,
}

impl DivergenceRule {
    /// The default rule ([`Divergence::LossRise`]).
    pub fn new(start: f64) -> Self {
        Self::with_policy(start, Divergence::LossRise)
    }

    pub fn with_policy(start: f64, policy: Divergence) -> Self {
        DivergenceRule {
            start,
            lowest: start,
            previous: start,
            rises: None,
            policy,
        }
    }

    /// Takes the loss at `step`; `Err` with the reason when the phase has diverged.
    pub fn observe(&mut self, step: usize, loss: f64) -> std::result::Result<(), String> {
        if !loss.is_finite() {
            return Err(format!("the loss is {loss}"));
        }
        let scale = self.start.abs().max(self.start - self.lowest).max(1e-12);
        if self.policy == Divergence::LossRise && loss > self.start + DIVERGENCE_MARGIN * scale {
            return Err(format!(
                "the loss grew to {loss:.6e}, more than {DIVERGENCE_MARGIN} x {scale:.3e} above its start {:.6e} \
                 ({:.6e} a step before)",
                self.start, self.previous
            ));
        }
        let rise = loss - self.previous;
        if rise > ROUNDING * loss.abs().max(1.0) {
            let r = self.rises.get_or_insert(LossRises {
                count: 0,
                largest: rise,
                at_step: step,
                divergence: self.policy,
            });
            r.count += 1;
            if rise > r.largest {
                r.largest = rise;
                r.at_step = step;
            }
        }
        self.lowest = self.lowest.min(loss);
        self.previous = loss;
        Ok(())
    }

    pub fn rises(&self) -> Option<LossRises> {
        self.rises
    }
}

impl InnerSolver for GdParams {
    fn validate(&self, phase: &str) -> Result<()> {
        GdParams::validate(self, phase)
    }

    fn engine(&self) -> EngineChoice {
        self.engine
    }

    fn solve_observed(
        &self,
        oracle: &Oracle,
        phase: &Phase,
        observer: &mut dyn PhaseObserver,
    ) -> Result<PhaseSolution> {
        run_gradient_descent(oracle, phase, self, observer)
    }
}

/// One phase's iterate and the gradient last evaluated there, on one engine.
trait Iterate {
    /// Which engine this is.
    fn engine(&self) -> EngineChoice;
    /// Evaluates `L_beta` and `d_phi L_beta` (and `d_theta L_beta` when `with_theta`) at the
    /// current point; returns the loss and `||d_phi L_beta||`.
    fn evaluate(&mut self, with_theta: bool) -> Result<(f64, f64)>;
    /// `phi <- phi - step_size d_phi L_beta`.
    fn step(&mut self, step_size: f64) -> Result<()>;
    /// One update by `state`'s rule with the gradient last evaluated.
    fn update(&mut self, state: &mut OptimizerState, step_size: f64) -> Result<()>;
    fn observe(&self, step: usize, observer: &mut dyn PhaseObserver) -> Result<()>;
    /// The current point and the gradients last evaluated with `with_theta`.
    fn finish(self: Box<Self>) -> Result<(Tensor, Gradients)>;
}

/// Candle autodiff: the reference engine.
struct CandleIterate<'a, 'p> {
    oracle: &'a Oracle<'p>,
    theta: &'a Tensor,
    beta: f64,
    phi: Tensor,
    gradients: Option<Gradients>,
}

impl Iterate for CandleIterate<'_, '_> {
    fn engine(&self) -> EngineChoice {
        EngineChoice::Candle
    }

    fn evaluate(&mut self, with_theta: bool) -> Result<(f64, f64)> {
        let g = if with_theta {
            self.oracle.phase_gradients(&self.phi, self.theta, self.beta)?
        } else {
            self.oracle.phase_phi_gradient(&self.phi, self.theta, self.beta)?
        };
        let out = (g.loss, norm(&g.phi)?);
        self.gradients = Some(g);
        Ok(out)
    }

    fn step(&mut self, step_size: f64) -> Result<()> {
        let g = self.gradients.as_ref().expect("a step follows an evaluation");
        self.phi = (&self.phi - (&g.phi * step_size)?)?;
        Ok(())
    }

    fn update(&mut self, state: &mut OptimizerState, step_size: f64) -> Result<()> {
        // The reference engine's other rules go through plain vectors (not a hot path).
        let g = self.gradients.as_ref().expect("an update follows an evaluation");
        let mut phi = self.phi.to_vec1::<f64>()?;
        state.apply(&mut phi, &g.phi.to_vec1::<f64>()?, step_size);
        self.phi = Tensor::from_vec(phi, self.phi.dims1()?, &Device::Cpu)?;
        Ok(())
    }

    fn observe(&self, step: usize, observer: &mut dyn PhaseObserver) -> Result<()> {
        observer.iterate(step, &self.phi);
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<(Tensor, Gradients)> {
        let g = self.gradients.expect("a phase ends after an evaluation");
        Ok((self.phi, g))
    }
}

/// The fast first-order engine: flat buffers, allocated once per phase.
struct FastIterate<'a, 'p> {
    oracle: &'a Oracle<'p>,
    model: &'a dyn FirstOrderPhase,
    workspace: Workspace,
    beta: f64,
    phi: Vec<f64>,
    grad_phi: Vec<f64>,
    grad_theta: Vec<f64>,
    loss: f64,
}

impl Iterate for FastIterate<'_, '_> {
    fn engine(&self) -> EngineChoice {
        EngineChoice::Fast
    }

    fn evaluate(&mut self, with_theta: bool) -> Result<(f64, f64)> {
        let grad_theta = with_theta.then_some(&mut self.grad_theta[..]);
        self.loss = self.oracle.fast_phase_gradient(
            self.model,
            &mut self.workspace,
            &self.phi,
            self.beta,
            &mut self.grad_phi,
            grad_theta,
        );
        let norm = crate::engine::reduce::sum_of_squares(&self.grad_phi).sqrt();
        Ok((self.loss, norm))
    }

    fn step(&mut self, step_size: f64) -> Result<()> {
        for (p, g) in self.phi.iter_mut().zip(&self.grad_phi) {
            *p -= g * step_size;
        }
        Ok(())
    }

    fn update(&mut self, state: &mut OptimizerState, step_size: f64) -> Result<()> {
        state.apply(&mut self.phi, &self.grad_phi, step_size);
        Ok(())
    }

    fn observe(&self, step: usize, observer: &mut dyn PhaseObserver) -> Result<()> {
        observer.iterate(
            step,
            &Tensor::from_slice(&self.phi, self.phi.len(), &Device::Cpu)?,
        );
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<(Tensor, Gradients)> {
        let t = |v: &[f64]| Tensor::from_slice(v, v.len(), &Device::Cpu);
        Ok((
            t(&self.phi)?,
            Gradients {
                loss: self.loss,
                phi: t(&self.grad_phi)?,
                theta: t(&self.grad_theta)?,
            },
        ))
    }
}

/// The engine a phase runs on: `params.engine`, with `auto` taking the fast path where the
/// problem has one.
fn iterate<'a, 'p>(
    oracle: &'a Oracle<'p>,
    phi0: &Tensor,
    theta: &'a Tensor,
    beta: f64,
    engine: EngineChoice,
) -> Result<Box<dyn Iterate + 'a>> {
    let fast = oracle.problem().first_order();
    match (engine, fast) {
        (EngineChoice::Candle, _) | (EngineChoice::Auto, None) => Ok(Box::new(CandleIterate {
            oracle,
            theta,
            beta,
            phi: phi0.clone(),
            gradients: None,
        })),
        (EngineChoice::Fast, None) => Err(CmlError::invalid(
            "engine",
            "fast",
            "this problem has no fast first-order path",
        )),
        (EngineChoice::Fast | EngineChoice::Auto, Some(model)) => {
            let theta_values = theta.to_vec1::<f64>()?;
            let phi = phi0.to_vec1::<f64>()?;
            Ok(Box::new(FastIterate {
                oracle,
                model,
                workspace: model.workspace(&theta_values)?,
                beta,
                grad_phi: vec![0.0; phi.len()],
                grad_theta: vec![0.0; theta_values.len()],
                phi,
                loss: f64::NAN,
            }))
        }
    }
}

fn run_gradient_descent(
    oracle: &Oracle,
    phase_to_solve: &Phase,
    params: &GdParams,
    observer: &mut dyn PhaseObserver,
) -> Result<PhaseSolution> {
    let Phase {
        start: phi0,
        theta,
        beta,
        name: phase,
    } = *phase_to_solve;
    params.validate(phase)?;
    let curvature = oracle.problem().curvature(theta, beta)?;
    let start = oracle.cost().gradient_evaluations;
    let (step_size, step_size_rule) = match (params.step_size, curvature) {
        (Some(lr), _) => (lr, StepSizeRule::Given),
        (None, _) if matches!(params.optimizer, Optimizer::Adam { .. }) => {
            (ADAM_DEFAULT_STEP, StepSizeRule::AdamDefault)
        }
        (None, Some(c)) if c.smoothness > 0.0 && c.smoothness.is_finite() => (
            1.0 / c.smoothness,
            StepSizeRule::InverseSmoothness {
                smoothness: c.smoothness,
            },
        ),
        _ => {
            let (step, e) =
                smoothness::default_step(oracle, phi0, theta, beta, &format!("{phase} step size"))?;
            (
                step,
                StepSizeRule::PowerIteration {
                    largest_curvature: e.largest_curvature,
                    iterations: e.iterations,
                    safety: smoothness::SAFETY,
                    halvings: 0,
                },
            )
        }
    };
    let mut run = Descent {
        oracle,
        phi0,
        theta,
        beta,
        params,
        phase,
        step_size,
        step_size_rule,
        curvature,
        start,
    };
    loop {
        match run.run(observer) {
            // A default from the curvature at the start can be too long for a non-convex path:
            // halve it and start the phase again (docs/STEP_SIZE.md).
            Err(CmlError::Diverged { .. }) if matches!(run.step_size_rule, StepSizeRule::PowerIteration { halvings, .. } if halvings < MAX_HALVINGS) =>
            {
                run.step_size /= 2.0;
                if let StepSizeRule::PowerIteration { halvings, .. } = &mut run.step_size_rule {
                    *halvings += 1;
                }
            }
            other => return other,
        }
    }
}

/// Restarts with a halved default step size before a divergence is an error.
pub const MAX_HALVINGS: usize = 6;

/// One run of gradient descent at a fixed step size.
struct Descent<'a, 'p> {
    oracle: &'a Oracle<'p>,
    phi0: &'a Tensor,
    theta: &'a Tensor,
    beta: f64,
    params: &'a GdParams,
    phase: &'a str,
    step_size: f64,
    step_size_rule: StepSizeRule,
    curvature: Option<Curvature>,
    /// Gradient evaluations charged before the phase (its first attempt) began.
    start: usize,
}

impl Descent<'_, '_> {
    fn run(&self, observer: &mut dyn PhaseObserver) -> Result<PhaseSolution> {
        let Descent {
            oracle,
            params,
            phase,
            step_size,
            step_size_rule,
            ..
        } = *self;
        let mut it = iterate(oracle, self.phi0, self.theta, self.beta, params.engine)?;
        // A fresh optimiser state for every phase (and every restart of one).
        let mut optimizer = OptimizerState::new(params.optimizer, self.phi0.dims1()?);
        let mut rule: Option<DivergenceRule> = None;
        // Along a surrogate gradient the loss need not fall (docs/SPIKING.md §4): there only a
        // non-finite loss or gradient is a divergence.
        let policy = match oracle.problem().surrogate_derivative() {
            Some(_) => Divergence::NonFinite,
            None => params.divergence,
        };
        let mut step = 0;
        loop {
            // The meta-parameter gradient is needed only at the end point: on the last step of
            // the budget it comes with this evaluation, after an early stop it costs one more.
            let (loss, grad_norm) = it.evaluate(step == params.max_steps)?;
            let watch = rule.get_or_insert_with(|| DivergenceRule::with_policy(loss, policy));
            let verdict = if grad_norm.is_finite() {
                watch.observe(step, loss)
            } else {
                Err(format!("the gradient norm is {grad_norm}"))
            };
            if let Err(reason) = verdict {
                return Err(CmlError::Diverged {
                    phase: phase.into(),
                    step,
                    reason: format!(
                        "{reason}; step size {step_size} ({}) is too large: gradient descent needs a step \
                         size below 2 / smoothness; set a smaller one",
                        step_size_rule.describe()
                    ),
                });
            }
            let converged = grad_norm <= params.tolerance;
            if converged || step == params.max_steps {
                if step != params.max_steps {
                    it.evaluate(true)?;
                }
                let certified_distance = self
                    .curvature
                    .filter(|c| c.strong_convexity > 0.0)
                    .map(|c| grad_norm / c.strong_convexity);
                let termination = if converged {
                    Termination::Tolerance
                } else if params.tolerance > 0.0 {
                    Termination::BudgetExceeded
                } else {
                    Termination::Budget
                };
                let info = PhaseInfo {
                    beta: self.beta,
                    step_size,
                    step_size_rule,
                    steps: step,
                    gradient_evaluations: oracle.cost().gradient_evaluations - self.start,
                    grad_norm,
                    tolerance: params.tolerance,
                    loss,
                    certified_distance,
                    termination,
                    engine: it.engine(),
                    loss_rises: rule.as_ref().and_then(DivergenceRule::rises),
                };
                let (phi, gradients) = it.finish()?;
                return Ok(PhaseSolution { phi, gradients, info });
            }
            if observer.wants_iterates() {
                it.observe(step, observer)?;
            }
            if params.optimizer == Optimizer::GradientDescent {
                it.step(step_size)?;
            } else {
                it.update(&mut optimizer, step_size)?;
            }
            step += 1;
        }
    }
}
