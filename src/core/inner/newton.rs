//! Damped Newton on the dense Hessian: phase solutions to machine precision, for the exact
//! references (ground truth, measured `delta`, placed phases of a sweep).

use super::{InnerSolver, Phase, PhaseInfo, PhaseObserver, PhaseSolution, StepSizeRule, Termination};
use crate::engine::EngineChoice;
use crate::error::{CmlError, Result};
use crate::linalg::{Vector, to_dvector, to_tensor};
use crate::oracle::Oracle;

/// Settings of Newton's method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewtonParams {
    pub max_iterations: usize,
}

impl Default for NewtonParams {
    fn default() -> Self {
        NewtonParams { max_iterations: 100 }
    }
}

impl InnerSolver for NewtonParams {
    fn solve_observed(
        &self,
        oracle: &Oracle,
        phase: &Phase,
        observer: &mut dyn PhaseObserver,
    ) -> Result<PhaseSolution> {
        solve(oracle, phase, *self, observer)
    }
}

/// `phi*_beta = argmin_phi L_beta(phi, theta)` by damped Newton from the phase's start. Stops
/// when the Newton step no longer changes `phi` beyond rounding (quadratic convergence means the
/// previous step already reached machine precision).
fn solve(
    oracle: &Oracle,
    phase: &Phase,
    params: NewtonParams,
    observer: &mut dyn PhaseObserver,
) -> Result<PhaseSolution> {
    let Phase {
        start: phi0,
        theta,
        beta,
        ..
    } = *phase;
    let charged = oracle.cost().gradient_evaluations;
    let what = format!("Newton's method on L_beta at beta = {beta}");
    let mut phi = to_dvector(phi0)?;
    let mut first_grad_norm = None;
    let mut previous_grad_norm = f64::INFINITY;
    for iteration in 0..params.max_iterations {
        let phi_t = to_tensor(&phi)?;
        let d = oracle.phase_second_derivatives(&phi_t, theta, beta)?;
        let g = to_dvector(&d.gradients.phi)?;
        let grad_norm = g.norm();
        let g0 = *first_grad_norm.get_or_insert(grad_norm);
        if !grad_norm.is_finite() {
            return Err(CmlError::NotConverged {
                what,
                reason: format!("gradient norm {grad_norm} at iteration {iteration}"),
            });
        }
        // The solution found at this iteration, with what it cost.
        let end = |phi: Vector, d: crate::autodiff::SecondDerivatives| {
            let info = PhaseInfo {
                beta,
                step_size: 1.0,
                step_size_rule: StepSizeRule::Newton,
                steps: iteration,
                gradient_evaluations: oracle.cost().gradient_evaluations - charged,
                grad_norm,
                tolerance: 0.0,
                loss: d.gradients.loss,
                certified_distance: None,
                termination: Termination::Stationary,
                engine: EngineChoice::Candle,
                loss_rises: None,
            };
            finish(phi, d, info, g0, what.clone())
        };
        // At machine precision the gradient stops shrinking quadratically: stop there.
        if grad_norm > 0.5 * previous_grad_norm && grad_norm <= 1e-8 * g0.max(1.0) {
            return end(phi, d);
        }
        previous_grad_norm = grad_norm;
        let step = damped_newton_step(&d.hessian, &g);
        if grad_norm == 0.0 || step.norm() <= 4.0 * f64::EPSILON * (1.0 + phi.norm()) {
            return end(phi, d);
        }
        if observer.wants_iterates() {
            observer.iterate(iteration, &phi_t);
        }
        // Backtracking on the loss keeps Newton globally convergent on convex, non-quadratic
        // losses; the full step is taken near the solution.
        let slope = g.dot(&step);
        // Near the solution the decrease `slope / 2` drops below the rounding of the loss and
        // the loss can no longer judge a step: take the full one.
        if slope <= 1e-10 * (1.0 + d.gradients.loss.abs()) {
            phi -= &step;
            continue;
        }
        let mut t = 1.0;
        loop {
            let trial = &phi - &step * t;
            let loss = oracle.phase_gradients(&to_tensor(&trial)?, theta, beta)?.loss;
            if loss <= d.gradients.loss - 1e-4 * t * slope || t < 1e-8 {
                phi = trial;
                break;
            }
            t *= 0.5;
        }
    }
    Err(CmlError::NotConverged {
        what,
        reason: format!("no convergence within {} iterations", params.max_iterations),
    })
}

/// Solves `(H + tau I) p = g` with the smallest `tau` in `0, 1e-8 s, 1e-7 s, ...` (`s` the
/// Hessian's scale) that makes the matrix positive definite: plain Newton near a minimum, a
/// descent direction where the loss is not convex (non-convex models far from their minimum).
fn damped_newton_step(h: &nalgebra::DMatrix<f64>, g: &Vector) -> Vector {
    let scale = h.amax().max(1e-300);
    let mut tau = 0.0;
    loop {
        let shifted = h + nalgebra::DMatrix::identity(h.nrows(), h.ncols()) * tau;
        if let Some(chol) = shifted.cholesky() {
            return chol.solve(g);
        }
        tau = if tau == 0.0 { 1e-8 * scale } else { tau * 10.0 };
    }
}

fn finish(
    phi: Vector,
    d: crate::autodiff::SecondDerivatives,
    info: PhaseInfo,
    g0: f64,
    what: String,
) -> Result<PhaseSolution> {
    let (hessian, grad_norm) = (&d.hessian, info.grad_norm);
    // Rounding leaves a gradient of order eps times the loss's scale; anything far above it
    // means the Hessian was too ill-conditioned to trust the solution.
    if grad_norm > 1e-8 * g0.max(1.0) {
        return Err(CmlError::NotConverged {
            what,
            reason: format!("stalled at gradient norm {grad_norm:.3e} (started at {g0:.3e})"),
        });
    }
    // A stationary point with an indefinite Hessian is a saddle, not a phase solution.
    if hessian.clone().cholesky().is_none() {
        return Err(CmlError::NotPositiveDefinite {
            what: format!("the Hessian at the stationary point found by {what}"),
            reason: format!(
                "smallest eigenvalue {:.3e}: a saddle point, not a strict local minimum",
                hessian.clone().symmetric_eigenvalues().min()
            ),
        });
    }
    Ok(PhaseSolution {
        phi: to_tensor(&phi)?,
        gradients: d.gradients,
        info,
    })
}
