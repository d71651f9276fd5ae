//! Ground truth: the exact implicit meta-gradient of MATH.md §1/§4 at the free phase solved to
//! machine precision by damped Newton (`inner::NewtonParams`), and measured phase distances.

use crate::engine::EngineChoice;
use crate::error::{CmlError, Result};
use crate::implicit_function::{LinearSolver, implicit_meta_gradient};
use crate::inner::{GdParams, InnerSolver, NewtonParams, Phase, PhaseInfo};
use crate::linalg::{Vector, norm};
use crate::oracle::Oracle;
use crate::problem::BilevelProblem;
use candle_core::Tensor;

/// Newton's solution and the implicit meta-gradient need true second derivatives.
fn refuse_surrogate(problem: &dyn BilevelProblem) -> Result<()> {
    match problem.surrogate_derivative() {
        Some(reason) => Err(CmlError::NoExactReference {
            reason: reason.into(),
        }),
        None => Ok(()),
    }
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
    /// How Newton's method reached `phi_star`.
    pub newton: PhaseInfo,
}

/// `dJ/dtheta` at `phi*(theta)` found by Newton from the problem's initial `phi`.
pub fn exact_meta_gradient(problem: &dyn BilevelProblem, theta: &Tensor) -> Result<GroundTruth> {
    exact_meta_gradient_from(problem, theta, &problem.initial_phi(theta)?)
}

/// The free phase whose end point anchors the exact reference on a problem without a curvature
/// bound: gradient descent with the default step rule to `|grad| <= 1e-8`, at most 100,000 steps.
pub fn reference_free_phase() -> GdParams {
    GdParams {
        max_steps: 100_000,
        tolerance: 1e-8,
        ..GdParams::default()
    }
}

/// `dJ/dtheta` at the inner minimum that `free` (a free phase) reaches from the initial `phi`.
/// Where the problem states a curvature bound, its inner loss has one minimum and Newton starts
/// at the initial `phi`; elsewhere (the networks) Newton refines `free`'s end point, since Newton
/// from the initial `phi` may reach another stationary point than the phases do
/// (docs/ERROR_BAR.md §5.1).
pub fn exact_meta_gradient_at_phase_minimum(
    problem: &dyn BilevelProblem,
    theta: &Tensor,
    free: &GdParams,
) -> Result<GroundTruth> {
    refuse_surrogate(problem)?;
    let start = problem.initial_phi(theta)?;
    if problem.curvature(theta, 0.0)?.is_some() {
        return exact_meta_gradient_from(problem, theta, &start);
    }
    let descended = free.solve(
        &Oracle::new(problem),
        &Phase::new(&start, theta, 0.0, "free phase"),
    )?;
    exact_meta_gradient_from(problem, theta, &descended.phi)
}

/// `dJ/dtheta` at the stationary point Newton reaches from `start`. On a non-convex inner loss
/// Newton from the initial `phi` may reach another stationary point than gradient descent does
/// (docs/ERROR_BAR.md §5.1); started at a free phase's end point, it refines the minimum that
/// phase converged to, which is the one a contrastive estimate differentiates.
pub fn exact_meta_gradient_from(
    problem: &dyn BilevelProblem,
    theta: &Tensor,
    start: &Tensor,
) -> Result<GroundTruth> {
    refuse_surrogate(problem)?;
    let oracle = Oracle::with_engine(problem, EngineChoice::Candle);
    let free = NewtonParams::default().solve(&oracle, &Phase::new(start, theta, 0.0, "free phase"))?;
    let meta_gradient = implicit_at(&oracle, &free.phi, theta)?;
    Ok(GroundTruth {
        phi_star: free.phi,
        meta_gradient,
        newton: free.info,
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
    refuse_surrogate(problem)?;
    let oracle = Oracle::with_engine(problem, EngineChoice::Candle);
    let star = NewtonParams::default().solve(&oracle, &Phase::new(phi, theta, beta, "phase"))?;
    norm(&(phi - star.phi)?)
}
