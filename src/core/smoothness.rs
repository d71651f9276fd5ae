//! An estimate of a phase loss's smoothness where no bound is known (the network models): the
//! largest eigenvalue magnitude of `d2_{phi phi} L_beta` at one point, by power iteration on
//! Hessian-vector products (Candle autodiff, second order). docs/STEP_SIZE.md says how it
//! becomes a default step size and when that fails.

use crate::error::{CmlError, Result};
use crate::linalg::{Vector, to_dvector, to_tensor};
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

/// Power iteration from a fixed seeded unit vector (so every estimate is reproducible): at each
/// iterate `v`, `measure(v)` gives the estimate and what `advance` turns into the next, unnormalised
/// iterate (`None`, or a zero vector, ends the iteration at the current estimate). Stops once the
/// estimate changes by at most [`RELATIVE_CHANGE`] or after [`POWER_ITERATIONS`]; a non-finite
/// estimate is an error naming `what` and `allowed`. Returns the estimate and the iterations run.
fn power_iteration<T>(
    n: usize,
    seed: u64,
    (what, allowed): (&str, &str),
    mut measure: impl FnMut(&Vector) -> Result<(f64, T)>,
    mut advance: impl FnMut(T) -> Result<Option<Vector>>,
) -> Result<(f64, usize)> {
    let mut v = normal_vector(&mut seeded(seed), n).normalize();
    let mut previous = f64::NAN;
    for iteration in 1..=POWER_ITERATIONS {
        let (norm, carried) = measure(&v)?;
        if !norm.is_finite() {
            return Err(CmlError::invalid(what, norm, allowed));
        }
        if norm == 0.0 {
            return Ok((0.0, iteration));
        }
        let converged = (norm - previous).abs() <= RELATIVE_CHANGE * norm;
        previous = norm;
        if converged {
            return Ok((norm, iteration));
        }
        match advance(carried)? {
            Some(next) => {
                let next_norm = next.norm();
                if next_norm == 0.0 {
                    return Ok((norm, iteration));
                }
                v = next / next_norm;
            }
            None => return Ok((norm, iteration)),
        }
    }
    Ok((previous, POWER_ITERATIONS))
}

/// Power iteration on `d2_{phi phi} L_beta` at `(phi, theta)`.
pub fn estimate(oracle: &Oracle, phi: &Tensor, theta: &Tensor, beta: f64) -> Result<SmoothnessEstimate> {
    let (largest_curvature, iterations) = power_iteration(
        phi.dims1()?,
        0x5eed,
        (
            "curvature estimate",
            "a finite Hessian-vector product at the phase's start (give a step size instead)",
        ),
        |v| {
            let hv = to_dvector(&oracle.phase_hvp(phi, theta, beta, &to_tensor(v)?)?)?;
            Ok((hv.norm(), hv))
        },
        |hv| Ok(Some(hv)),
    )?;
    Ok(SmoothnessEstimate {
        largest_curvature,
        iterations,
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

/// Lanczos iterations at most for the smallest curvature; each is one Hessian-vector product.
pub const LANCZOS_ITERATIONS: usize = 60;

/// What Lanczos found about the bottom of the spectrum of `d2_{phi phi} L_beta` at one point.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SmallestCurvature {
    /// The smallest Ritz value. It is never below the smallest eigenvalue and converges to it
    /// from above, so a distance `||grad|| / value` built on it can be too small when Lanczos
    /// stopped early (docs/ERROR_BAR.md).
    pub value: f64,
    /// `||H y - value y||` for the Ritz vector `y`: an eigenvalue lies within this of `value`.
    pub residual: f64,
    /// Hessian-vector products spent.
    pub iterations: usize,
}

/// The smallest eigenvalue of `d2_{phi phi} L_beta` at `(phi, theta)` by Lanczos with full
/// reorthogonalisation from a fixed seeded start, stopped once the Ritz pair's residual is at
/// most `1e-6` of the largest Ritz value's magnitude, the Krylov space is exhausted, or after
/// [`LANCZOS_ITERATIONS`] products.
pub fn smallest_curvature(
    oracle: &Oracle,
    phi: &Tensor,
    theta: &Tensor,
    beta: f64,
) -> Result<SmallestCurvature> {
    let n = phi.dims1()?;
    let limit = LANCZOS_ITERATIONS.min(n);
    let mut basis: Vec<Vector> = vec![normal_vector(&mut seeded(0x1a2c), n).normalize()];
    let (mut alphas, mut betas) = (Vec::new(), Vec::new());
    loop {
        let j = basis.len() - 1;
        let mut w = to_dvector(&oracle.phase_hvp(phi, theta, beta, &to_tensor(&basis[j])?)?)?;
        if !w.iter().all(|x| x.is_finite()) {
            return Err(CmlError::invalid(
                "curvature estimate",
                "a non-finite Hessian-vector product",
                "a phase end point where the loss has finite second derivatives",
            ));
        }
        alphas.push(basis[j].dot(&w));
        // Full reorthogonalisation (twice is enough) keeps the Ritz values free of ghosts.
        for _ in 0..2 {
            for q in &basis {
                w.axpy(-q.dot(&w), q, 1.0);
            }
        }
        let next = w.norm();
        let k = alphas.len();
        let t = nalgebra::DMatrix::from_fn(k, k, |r, c| match r.abs_diff(c) {
            0 => alphas[r],
            1 => betas[r.min(c)],
            _ => 0.0,
        });
        let eig = nalgebra::SymmetricEigen::new(t);
        let (at, &value) = eig
            .eigenvalues
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .expect("at least one Ritz value");
        let residual = next * eig.eigenvectors[(k - 1, at)].abs();
        let scale = eig.eigenvalues.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        if k == limit || residual <= 1e-6 * scale || next <= 1e-14 * scale.max(f64::MIN_POSITIVE) {
            return Ok(SmallestCurvature {
                value,
                residual,
                iterations: k,
            });
        }
        betas.push(next);
        basis.push(w / next);
    }
}

/// The spectral norm of the mixed matrix `d2_{theta phi} L_beta` at `(phi, theta)`, by power
/// iteration on `M^T M` (a product `M v` per iteration, and `M^T (M v)` for the next): it bounds
/// how far `g(beta)` moves per unit distance of the phase's end point from its solution. A lower
/// bound that converges to the norm.
pub fn mixed_norm(oracle: &Oracle, phi: &Tensor, theta: &Tensor, beta: f64) -> Result<f64> {
    let (norm, _) = power_iteration(
        phi.dims1()?,
        0x3b1d,
        (
            "mixed-derivative norm",
            "a phase end point where the loss has finite second derivatives",
        ),
        |v| {
            let mv = oracle.phase_mixed_product(phi, theta, beta, &to_tensor(v)?)?;
            Ok((crate::linalg::norm(&mv)?, mv))
        },
        |mv| {
            Ok(Some(to_dvector(
                &oracle.phase_mixed_transpose_product(phi, theta, beta, &mv)?,
            )?))
        },
    )?;
    Ok(norm)
}
