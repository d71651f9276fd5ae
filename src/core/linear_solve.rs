//! Solvers of `H v = b` for a symmetric `H`, interchangeable in the style of JAXopt's linear
//! solvers: each is a function of the operator and `b` that returns `(v, info)`. The iterative
//! ones see `H` only through `matvec` (a Hessian-vector product); the dense one takes `H`
//! materialised, because the implicit meta-gradient's dense path forms it from one gradient
//! graph (docs/MATH.md §4).

use crate::error::{CmlError, Result};
use crate::linalg::{Vector, spd_solve};
use nalgebra::DMatrix;

/// What a solve did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SolveInfo {
    /// Products `H p` (or, for the dense solve, none: `H` was given).
    pub matvecs: usize,
    /// Why an iterative solve stopped before its budget, where that matters to the caller.
    pub warning: Option<String>,
}

/// Cholesky solve of a symmetric positive definite `H`; `what` names `H` in the error.
pub fn dense(h: &DMatrix<f64>, b: &Vector, what: &str) -> Result<(Vector, SolveInfo)> {
    let v = spd_solve(h, b, what)?;
    Ok((
        v,
        SolveInfo {
            matvecs: 0,
            warning: None,
        },
    ))
}

/// `steps` iterations of conjugate gradient from `v = 0`; stops early on an exactly zero
/// residual. Where `H` is not positive definite (a non-convex inner loss away from its minimum)
/// it stops at the first direction of non-positive curvature, as truncated CG does, and says so
/// in `info.warning`: the solve is then only partial.
///
/// ```
/// use cml::linalg::Vector;
/// use nalgebra::DMatrix;
///
/// // H = diag(1, 2, 4): CG solves H v = b exactly in 3 steps (3 distinct eigenvalues).
/// let h = DMatrix::from_diagonal(&Vector::from_vec(vec![1.0, 2.0, 4.0]));
/// let b = Vector::from_vec(vec![1.0, 1.0, 1.0]);
/// let (v, info) = cml::linear_solve::conjugate_gradient(|p| Ok(&h * p), &b, 3)?;
/// assert!((v - Vector::from_vec(vec![1.0, 0.5, 0.25])).norm() < 1e-12);
/// assert_eq!(info.matvecs, 3);
/// # Ok::<(), cml::CmlError>(())
/// ```
pub fn conjugate_gradient(
    matvec: impl Fn(&Vector) -> Result<Vector>,
    b: &Vector,
    steps: usize,
) -> Result<(Vector, SolveInfo)> {
    let mut v = Vector::zeros(b.len());
    let mut r = b.clone();
    let mut p = r.clone();
    let mut rr = r.dot(&r);
    let mut matvecs = 0;
    for iteration in 0..steps {
        if rr == 0.0 {
            break;
        }
        let hp = matvec(&p)?;
        matvecs += 1;
        let curvature = p.dot(&hp);
        if curvature <= 0.0 {
            let warning = format!(
                "conjugate gradient stopped at iteration {iteration} of {steps}: direction of curvature \
                 {curvature:.3e} <= 0, the inner Hessian is not positive definite at the free solution"
            );
            return Ok((
                v,
                SolveInfo {
                    matvecs,
                    warning: Some(warning),
                },
            ));
        }
        let step = rr / curvature;
        v += &p * step;
        r -= &hp * step;
        let rr_next = r.dot(&r);
        p = &r + &p * (rr_next / rr);
        rr = rr_next;
    }
    Ok((
        v,
        SolveInfo {
            matvecs,
            warning: None,
        },
    ))
}

/// The truncated Neumann series `v = alpha sum_{j=0}^{steps} (I - alpha H)^j b`, one product per
/// term after the first; it converges when `0 < alpha < 2 / L`, at rate `max_i |1 - alpha lambda_i|`.
pub fn neumann(
    matvec: impl Fn(&Vector) -> Result<Vector>,
    b: &Vector,
    steps: usize,
    alpha: f64,
) -> Result<(Vector, SolveInfo)> {
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(CmlError::invalid(
            "Neumann alpha",
            alpha,
            "alpha must be finite and > 0 (below 2 / L for the series to converge)",
        ));
    }
    let mut term = b.clone();
    let mut v = b * alpha;
    for _ in 0..steps {
        term -= matvec(&term)? * alpha;
        v += &term * alpha;
    }
    Ok((
        v,
        SolveInfo {
            matvecs: steps,
            warning: None,
        },
    ))
}

/// T1-T2's solver: `H` replaced by the identity, `v = b`.
pub fn identity(b: &Vector) -> (Vector, SolveInfo) {
    (
        b.clone(),
        SolveInfo {
            matvecs: 0,
            warning: None,
        },
    )
}
