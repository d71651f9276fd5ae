//! Inner learning: gradient descent on a phase loss `L_beta = L_in + beta L_out` (MATH.md §2).
//! The free phase is `beta = 0`; nudged phases start from the free solution.

use crate::autodiff::Gradients;
use crate::error::{CmlError, Result};
use crate::linalg::norm;
use crate::oracle::Oracle;
use candle_core::Tensor;

/// Gradient-descent settings of one phase.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct GdParams {
    /// Step size; `None` takes `1 / L_beta` from the problem's known smoothness.
    pub step_size: Option<f64>,
    /// Step budget (at least 1).
    pub max_steps: usize,
    /// Stop early once `||d_phi L_beta|| <= tolerance` (0 runs the whole budget).
    pub tolerance: f64,
}

impl Default for GdParams {
    fn default() -> Self {
        GdParams {
            step_size: None,
            max_steps: 1000,
            tolerance: 0.0,
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
    gradient_descent_observed(oracle, phi0, theta, beta, params, phase, &mut |_| {})
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
    let mut phi = phi0.clone();
    let mut start_loss = f64::NAN;
    let mut previous_loss = f64::INFINITY;
    let mut increases = 0;
    let mut step = 0;
    loop {
        // The meta-parameter gradient is needed only at the end point: on the last step of the
        // budget it comes with this evaluation, after an early stop it costs one more.
        let g = if step == params.max_steps {
            oracle.phase_gradients(&phi, theta, beta)?
        } else {
            oracle.phase_phi_gradient(&phi, theta, beta)?
        };
        let grad_norm = norm(&g.phi)?;
        if !g.loss.is_finite() || !grad_norm.is_finite() {
            return Err(CmlError::Diverged {
                phase: phase.into(),
                step,
                reason: format!(
                    "loss {} and gradient norm {grad_norm} are not finite (step size {step_size})",
                    g.loss
                ),
            });
        }
        if step == 0 {
            start_loss = g.loss;
        }
        increases = if g.loss > previous_loss { increases + 1 } else { 0 };
        let above_start = g.loss > start_loss + LOSS_GROWTH_TOLERANCE * start_loss.abs().max(1.0);
        if above_start || increases >= GROWTH_PATIENCE {
            return Err(CmlError::Diverged {
                phase: phase.into(),
                step,
                reason: format!(
                    "the loss grew to {:.6e} (from {start_loss:.6e} at the start, {previous_loss:.6e} a step \
                     before); step size {step_size} is too large (gradient descent needs a step size below \
                     2 / smoothness)",
                    g.loss
                ),
            });
        }
        let converged = grad_norm <= params.tolerance;
        if converged || step == params.max_steps {
            let certified_distance = curvature
                .filter(|c| c.strong_convexity > 0.0)
                .map(|c| grad_norm / c.strong_convexity);
            let info = GdInfo {
                beta,
                step_size,
                steps: step,
                gradient_evaluations: oracle.cost().gradient_evaluations - start,
                grad_norm,
                loss: g.loss,
                certified_distance,
                converged,
            };
            let gradients = if step == params.max_steps {
                g
            } else {
                oracle.phase_gradients(&phi, theta, beta)?
            };
            let info = GdInfo {
                gradient_evaluations: oracle.cost().gradient_evaluations - start,
                ..info
            };
            return Ok(PhaseSolution { phi, gradients, info });
        }
        observer(&phi);
        phi = (&phi - (&g.phi * step_size)?)?;
        previous_loss = g.loss;
        step += 1;
    }
}
