//! An estimate of a phase loss's smoothness where no bound is known (the network models): the
//! largest eigenvalue magnitude of `d2_{phi phi} L_beta` at one point, by power iteration on
//! Hessian-vector products (Candle autodiff, second order). docs/STEP_SIZE.md says how it
//! becomes a default step size and when that fails.

use crate::error::{CmlError, Result};
use crate::linalg::{to_dvector, to_tensor};
use crate::oracle::Oracle;
use crate::rng::{normal_vector, seeded};
use candle_core::Tensor;

/// Power iterations at most; each is one Hessian-vector product.
pub const POWER_ITERATIONS: usize = 30;
/// Stop once the estimate changes by less than this, relatively.
const RELATIVE_CHANGE: f64 = 1e-3;
/// Default step size `1 / (SAFETY L_hat)`: power iteration approaches `|lambda_max|` from below,
/// and a non-convex loss's curvature changes along the path; gradient descent is stable up to
/// `2 / L`, so this leaves a factor 4 of room.
pub const SAFETY: f64 = 2.0;

/// What power iteration found.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SmoothnessEstimate {
    /// `||H v||` at the last unit iterate `v`: a lower bound on `|lambda_max|` that converges to it.
    pub largest_curvature: f64,
    /// Hessian-vector products spent.
    pub iterations: usize,
}

/// Power iteration on `d2_{phi phi} L_beta` at `(phi, theta)`, from a fixed seeded start vector
/// (so the estimate is reproducible).
pub fn estimate(oracle: &Oracle, phi: &Tensor, theta: &Tensor, beta: f64) -> Result<SmoothnessEstimate> {
    let n = phi.dims1()?;
    let mut v = normal_vector(&mut seeded(0x5eed), n).normalize();
    let mut previous = f64::NAN;
    for iteration in 1..=POWER_ITERATIONS {
        let hv = to_dvector(&oracle.phase_hvp(phi, theta, beta, &to_tensor(&v)?)?)?;
        let norm = hv.norm();
        if !norm.is_finite() {
            return Err(CmlError::invalid(
                "curvature estimate",
                norm,
                "a finite Hessian-vector product at the phase's start (give a step size instead)",
            ));
        }
        if norm == 0.0 {
            return Ok(SmoothnessEstimate {
                largest_curvature: 0.0,
                iterations: iteration,
            });
        }
        let converged = (norm - previous).abs() <= RELATIVE_CHANGE * norm;
        previous = norm;
        v = hv / norm;
        if converged {
            return Ok(SmoothnessEstimate {
                largest_curvature: norm,
                iterations: iteration,
            });
        }
    }
    Ok(SmoothnessEstimate {
        largest_curvature: previous,
        iterations: POWER_ITERATIONS,
    })
}

/// The default step `1 / (SAFETY L_hat)` for `L_beta` at `(phi, theta)`, with its estimate;
/// `what` names the setting in the error when the curvature there is zero.
pub fn default_step(
    oracle: &Oracle,
    phi: &Tensor,
    theta: &Tensor,
    beta: f64,
    what: &str,
) -> Result<(f64, SmoothnessEstimate)> {
    let e = estimate(oracle, phi, theta, beta)?;
    if e.largest_curvature <= 0.0 {
        return Err(CmlError::invalid(
            what,
            "none",
            "the curvature at this point is zero, so no default can be derived from it; give one",
        ));
    }
    Ok((1.0 / (SAFETY * e.largest_curvature), e))
}
