//! Inner learning: gradient descent on a phase loss `L_beta = L_in + beta L_out` (MATH.md §2).
//! The free phase is `beta = 0`; nudged phases start from the free solution.

use crate::autodiff::Gradients;
use crate::engine::{Engine, FirstOrderPhase, Workspace};
use crate::error::{CmlError, Result};
use crate::linalg::norm;
use crate::oracle::Oracle;
use candle_core::{Device, Tensor};

/// Gradient-descent settings of one phase.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct GdParams {
    /// Step size; `None` takes `1 / L_beta` from the problem's known smoothness.
    pub step_size: Option<f64>,
    /// Step budget (at least 1).
    pub max_steps: usize,
    /// Stop early once `||d_phi L_beta|| <= tolerance` (0 runs the whole budget).
    pub tolerance: f64,
    /// Which implementation computes the gradients (the same numbers up to rounding).
    pub engine: Engine,
}

impl Default for GdParams {
    fn default() -> Self {
        GdParams {
            step_size: None,
            max_steps: 1000,
            tolerance: 0.0,
            engine: Engine::Auto,
        }
    }
}

impl GdParams {
    pub fn validate(&self, phase: &str) -> Result<()> {
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

/// What happened in one phase.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GdInfo {
    /// The phase's nudging strength (`0` for the free phase).
    pub beta: f64,
    pub step_size: f64,
    pub steps: usize,
    pub gradient_evaluations: usize,
    /// `||d_phi L_beta||` at the returned point.
    pub grad_norm: f64,
    pub loss: f64,
    /// `||grad|| / mu_beta >= ||phi - phi*_beta||` (MATH.md §3) where `mu_beta > 0` is known.
    pub certified_distance: Option<f64>,
    /// Whether the tolerance was reached within the budget.
    pub converged: bool,
    /// The engine that computed the gradients (`fast` or `candle`).
    pub engine: Engine,
}

/// The end point of a phase and the gradients there (`gradients.theta` is `g(beta)`).
#[derive(Debug, Clone)]
pub struct PhaseSolution {
    pub phi: Tensor,
    pub gradients: Gradients,
    pub info: GdInfo,
}

/// A relative loss increase above this is divergence, not rounding.
const LOSS_GROWTH_TOLERANCE: f64 = 1e-8;
/// This many increases in a row is divergence even below the starting loss. Isolated small
/// increases happen on non-convex losses where the step is near 2 / (local curvature).
const GROWTH_PATIENCE: usize = 10;

/// Runs gradient descent on `L_beta` from `phi0`.
pub fn gradient_descent(
    oracle: &Oracle,
    phi0: &Tensor,
    theta: &Tensor,
    beta: f64,
    params: &GdParams,
    phase: &str,
) -> Result<PhaseSolution> {
    run_gradient_descent(oracle, phi0, theta, beta, params, phase, None)
}

/// [`gradient_descent`] with an observer that sees every iterate `phi_k` a step is taken from
/// (`k = 0 .. steps - 1`), e.g. to store them for backpropagation through the steps.
pub fn gradient_descent_observed(
    oracle: &Oracle,
    phi0: &Tensor,
    theta: &Tensor,
    beta: f64,
    params: &GdParams,
    phase: &str,
    observer: &mut dyn FnMut(&Tensor),
) -> Result<PhaseSolution> {
    run_gradient_descent(oracle, phi0, theta, beta, params, phase, Some(observer))
}

/// One phase's iterate and the gradient last evaluated there, on one engine.
trait Iterate {
    /// Which engine this is.
    fn engine(&self) -> Engine;
    /// Evaluates `L_beta` and `d_phi L_beta` (and `d_theta L_beta` when `with_theta`) at the
    /// current point; returns the loss and `||d_phi L_beta||`.
    fn evaluate(&mut self, with_theta: bool) -> Result<(f64, f64)>;
    /// `phi <- phi - step_size d_phi L_beta`.
    fn step(&mut self, step_size: f64) -> Result<()>;
    fn observe(&self, observer: &mut dyn FnMut(&Tensor)) -> Result<()>;
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
    fn engine(&self) -> Engine {
        Engine::Candle
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

    fn observe(&self, observer: &mut dyn FnMut(&Tensor)) -> Result<()> {
        observer(&self.phi);
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
    fn engine(&self) -> Engine {
        Engine::Fast
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
        let norm = self.grad_phi.iter().map(|g| g * g).sum::<f64>().sqrt();
        Ok((self.loss, norm))
    }

    fn step(&mut self, step_size: f64) -> Result<()> {
        for (p, g) in self.phi.iter_mut().zip(&self.grad_phi) {
            *p -= g * step_size;
        }
        Ok(())
    }

    fn observe(&self, observer: &mut dyn FnMut(&Tensor)) -> Result<()> {
        observer(&Tensor::from_slice(&self.phi, self.phi.len(), &Device::Cpu)?);
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
    engine: Engine,
) -> Result<Box<dyn Iterate + 'a>> {
    let fast = oracle.problem().first_order();
    match (engine, fast) {
        (Engine::Candle, _) | (Engine::Auto, None) => Ok(Box::new(CandleIterate {
            oracle,
            theta,
            beta,
            phi: phi0.clone(),
            gradients: None,
        })),
        (Engine::Fast, None) => Err(CmlError::invalid(
            "engine",
            "fast",
            format!(
                "the {} problem has no fast first-order path; use --engine candle or auto",
                oracle.problem().name()
            ),
        )),
        (Engine::Fast | Engine::Auto, Some(model)) => {
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
    phi0: &Tensor,
    theta: &Tensor,
    beta: f64,
    params: &GdParams,
    phase: &str,
    mut observer: Option<&mut dyn FnMut(&Tensor)>,
) -> Result<PhaseSolution> {
    params.validate(phase)?;
    let curvature = oracle.problem().curvature(theta, beta)?;
    let step_size = match (params.step_size, curvature) {
        (Some(lr), _) => lr,
        (None, Some(c)) if c.smoothness > 0.0 && c.smoothness.is_finite() => 1.0 / c.smoothness,
        _ => {
            return Err(CmlError::invalid(
                format!("{phase} step size"),
                "none",
                "this problem's smoothness is unknown, so a step size must be given",
            ));
        }
    };
    let start = oracle.cost().gradient_evaluations;
    let mut it = iterate(oracle, phi0, theta, beta, params.engine)?;
    let mut start_loss = f64::NAN;
    let mut previous_loss = f64::INFINITY;
    let mut increases = 0;
    let mut step = 0;
    loop {
        // The meta-parameter gradient is needed only at the end point: on the last step of the
        // budget it comes with this evaluation, after an early stop it costs one more.
        let (loss, grad_norm) = it.evaluate(step == params.max_steps)?;
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Err(CmlError::Diverged {
                phase: phase.into(),
                step,
                reason: format!(
                    "loss {loss} and gradient norm {grad_norm} are not finite (step size {step_size})"
                ),
            });
        }
        if step == 0 {
            start_loss = loss;
        }
        increases = if loss > previous_loss { increases + 1 } else { 0 };
        let above_start = loss > start_loss + LOSS_GROWTH_TOLERANCE * start_loss.abs().max(1.0);
        if above_start || increases >= GROWTH_PATIENCE {
            return Err(CmlError::Diverged {
                phase: phase.into(),
                step,
                reason: format!(
                    "the loss grew to {loss:.6e} (from {start_loss:.6e} at the start, {previous_loss:.6e} a step \
                     before); step size {step_size} is too large (gradient descent needs a step size below \
                     2 / smoothness)"
                ),
            });
        }
        let converged = grad_norm <= params.tolerance;
        if converged || step == params.max_steps {
            if step != params.max_steps {
                it.evaluate(true)?;
            }
            let certified_distance = curvature
                .filter(|c| c.strong_convexity > 0.0)
                .map(|c| grad_norm / c.strong_convexity);
            let info = GdInfo {
                beta,
                step_size,
                steps: step,
                gradient_evaluations: oracle.cost().gradient_evaluations - start,
                grad_norm,
                loss,
                certified_distance,
                converged,
                engine: it.engine(),
            };
            let (phi, gradients) = it.finish()?;
            return Ok(PhaseSolution { phi, gradients, info });
        }
        if let Some(observer) = observer.as_deref_mut() {
            it.observe(observer)?;
        }
        it.step(step_size)?;
        previous_loss = loss;
        step += 1;
    }
}
