//! Ground truth: phase solutions to machine precision by Newton's method on the dense Hessian,
//! and the exact implicit meta-gradient of MATH.md §1/§4 at them.

use crate::error::{CmlError, Result};
use crate::implicit_function::{LinearSolver, implicit_meta_gradient};
use crate::linalg::{Vector, norm, to_dvector, to_tensor};
use crate::oracle::Oracle;
use crate::problem::BilevelProblem;
use candle_core::Tensor;

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

/// What Newton's method did.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct NewtonInfo {
    pub iterations: usize,
    /// `||d_phi L_beta||` at the returned point.
    pub grad_norm: f64,
}

/// `phi*_beta = argmin_phi L_beta(phi, theta)` by damped Newton from `phi0`. Stops when the
/// Newton step no longer changes `phi` beyond rounding (quadratic convergence means the
/// previous step already reached machine precision).
pub fn solve_phase(
    oracle: &Oracle,
    phi0: &Tensor,
    theta: &Tensor,
    beta: f64,
    params: NewtonParams,
) -> Result<(Tensor, NewtonInfo)> {
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
        // At machine precision the gradient stops shrinking quadratically: stop there.
        if grad_norm > 0.5 * previous_grad_norm && grad_norm <= 1e-8 * g0.max(1.0) {
            return finish(phi, &d.hessian, grad_norm, g0, iteration, what);
        }
        previous_grad_norm = grad_norm;
        let step = damped_newton_step(&d.hessian, &g);
        if grad_norm == 0.0 || step.norm() <= 4.0 * f64::EPSILON * (1.0 + phi.norm()) {
            return finish(phi, &d.hessian, grad_norm, g0, iteration, what);
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
    hessian: &nalgebra::DMatrix<f64>,
    grad_norm: f64,
    g0: f64,
    iterations: usize,
    what: String,
) -> Result<(Tensor, NewtonInfo)> {
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
    Ok((
        to_tensor(&phi)?,
        NewtonInfo {
            iterations,
            grad_norm,
        },
    ))
}

/// The implicit meta-gradient at a given `phi` with a dense solve (MATH.md §4). Exact when
/// `phi = phi*`; with an inexact `phi` its error is `O(||phi - phi*||)`.
pub fn implicit_at(oracle: &Oracle, phi: &Tensor, theta: &Tensor) -> Result<Vector> {
    Ok(implicit_meta_gradient(oracle, phi, theta, LinearSolver::Dense)?.gradient)
}

/// The exact meta-gradient and the Newton-solved `phi*` it was taken at.
#[derive(Debug, Clone)]
pub struct GroundTruth {
    pub phi_star: Tensor,
    pub meta_gradient: Vector,
    pub newton: NewtonInfo,
}

/// `dJ/dtheta` at `phi*(theta)` found by Newton from the problem's initial `phi`.
pub fn exact_meta_gradient(problem: &dyn BilevelProblem, theta: &Tensor) -> Result<GroundTruth> {
    let oracle = Oracle::new(problem);
    let (phi_star, newton) = solve_phase(
        &oracle,
        &problem.initial_phi(theta)?,
        theta,
        0.0,
        NewtonParams::default(),
    )?;
    let meta_gradient = implicit_at(&oracle, &phi_star, theta)?;
    Ok(GroundTruth {
        phi_star,
        meta_gradient,
        newton,
    })
}

/// `||phi - phi*_beta||`: the measured `delta` of a phase, against a Newton solve started at
/// `phi` itself.
pub fn distance_to_phase_solution(
    problem: &dyn BilevelProblem,
    phi: &Tensor,
    theta: &Tensor,
    beta: f64,
) -> Result<f64> {
    let oracle = Oracle::new(problem);
    let (star, _) = solve_phase(&oracle, phi, theta, beta, NewtonParams::default())?;
    norm(&(phi - star)?)
}
