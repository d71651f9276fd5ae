//! The implicit function theorem's meta-gradient at a given `phi` (MATH.md §1, §4):
//! `dJ/dtheta = d_theta L_out - d2_{theta phi} L_in v` with `H v = d_phi L_out`,
//! `H = d2_{phi phi} L_in`, the linear system solved by one of `linear_solve`'s solvers. Exact at
//! `phi = phi*` with the dense solve: the ground truth's reference, and the implicit estimators'
//! last step at their free solution.

use crate::error::{CmlError, Result};
use crate::linalg::{Vector, to_dvector, to_tensor};
use crate::linear_solve;
use crate::oracle::Oracle;
use crate::smoothness;
use candle_core::Tensor;

/// What the dense implicit solve calls the matrix it factorises.
pub const INNER_HESSIAN: &str = "the inner Hessian d2_{phi phi} L_in";

/// How `H v = b` is solved.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "solver", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LinearSolver {
    /// Dense Hessian from `n` Hessian-vector products, Cholesky solve.
    Dense,
    /// `steps` conjugate-gradient iterations from `v = 0`, one HVP each.
    ConjugateGradient { steps: usize },
    /// `v = alpha sum_{j=0}^{steps} (I - alpha H)^j b`, one HVP per term after the first;
    /// converges when `0 < alpha < 2 / L`, at rate `max_i |1 - alpha lambda_i|`.
    /// `alpha = None` takes `1 / L` from the problem's known smoothness.
    Neumann { steps: usize, alpha: Option<f64> },
    /// T1-T2: `H` replaced by the identity, `v = b`.
    Identity,
}

impl LinearSolver {
    pub fn describe(&self) -> String {
        match self {
            LinearSolver::Dense => "implicit (dense solve)".into(),
            LinearSolver::ConjugateGradient { steps } => format!("implicit CG ({steps} steps)"),
            LinearSolver::Neumann {
                steps,
                alpha: Some(a),
            } => format!("implicit Neumann ({steps} terms, alpha = {a})"),
            LinearSolver::Neumann { steps, alpha: None } => {
                format!("implicit Neumann ({steps} terms, alpha = 1/L)")
            }
            LinearSolver::Identity => "T1-T2 (H = I)".into(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        match *self {
            LinearSolver::ConjugateGradient { steps } | LinearSolver::Neumann { steps, .. } if steps == 0 => {
                Err(CmlError::invalid(
                    "solver steps",
                    steps,
                    "the linear solver needs at least 1 step",
                ))
            }
            LinearSolver::Neumann {
                alpha: Some(alpha), ..
            } if !(alpha.is_finite() && alpha > 0.0) => Err(CmlError::invalid(
                "Neumann alpha",
                alpha,
                "alpha must be finite and > 0 (below 2 / L for the series to converge)",
            )),
            _ => Ok(()),
        }
    }
}

/// What an implicit solve produced.
#[derive(Debug, Clone)]
pub struct ImplicitSolution {
    pub gradient: Vector,
    /// `||H v - d_phi L_out||`.
    pub residual: f64,
    /// Set when the solver had to stop early for a reason the user must know.
    pub warning: Option<String>,
}

/// The implicit meta-gradient at `phi` with the given solver.
pub fn implicit_meta_gradient(
    oracle: &Oracle,
    phi: &Tensor,
    theta: &Tensor,
    solver: LinearSolver,
) -> Result<ImplicitSolution> {
    let n = oracle.problem().dims().phi;
    let m = oracle.problem().dims().theta;
    let outer = oracle.outer_gradients(phi, theta)?;
    let b = to_dvector(&outer.phi)?;
    let direct = to_dvector(&outer.theta)?;
    if solver == LinearSolver::Dense {
        // The dense solve names the matrix it could not factorise (the command line adds how to
        // make it positive definite).
        let d = oracle.phase_second_derivatives(phi, theta, 0.0)?;
        oracle.keep_alive(n * n + m * n + 2 * n + m);
        let (v, _) = linear_solve::dense(&d.hessian, &b, INNER_HESSIAN).map_err(|e| match e {
            CmlError::NotPositiveDefinite { what, reason } => CmlError::NotPositiveDefinite {
                what,
                reason: format!(
                    "{reason}; the dense implicit solve needs a strongly convex inner loss at the free solution"
                ),
            },
            other => other,
        })?;
        let residual = (&d.hessian * &v - &b).norm();
        return Ok(ImplicitSolution {
            gradient: direct - &d.mixed * v,
            residual,
            warning: None,
        });
    }
    let hvp = |v: &Vector| -> Result<Vector> {
        to_dvector(&oracle.inner_hvp_and_mixed(phi, theta, &to_tensor(v)?)?.0)
    };
    let (v, info) = match solver {
        LinearSolver::Identity => {
            oracle.keep_alive(2 * n + m); // v = b, H v
            linear_solve::identity(&b)
        }
        LinearSolver::ConjugateGradient { steps } => {
            oracle.keep_alive(4 * n + m); // v, r, p, Hp
            linear_solve::conjugate_gradient(hvp, &b, steps)?
        }
        LinearSolver::Neumann { steps, alpha } => {
            let alpha = match alpha {
                Some(a) => a,
                None => match oracle.problem().curvature(theta, 0.0)? {
                    Some(c) if c.smoothness > 0.0 => 1.0 / c.smoothness,
                    // Unknown smoothness: power iteration at the free solution (docs/STEP_SIZE.md).
                    _ => smoothness::default_step(oracle, phi, theta, 0.0, "Neumann alpha")?.0,
                },
            };
            oracle.keep_alive(3 * n + m); // v, term, H term
            linear_solve::neumann(hvp, &b, steps, alpha)?
        }
        LinearSolver::Dense => unreachable!("handled above"),
    };
    // One more double backward gives the mixed product and, from the same pass, `H v` for
    // the true residual.
    let (hv, mv) = oracle.inner_hvp_and_mixed(phi, theta, &to_tensor(&v)?)?;
    let residual = (to_dvector(&hv)? - &b).norm();
    Ok(ImplicitSolution {
        gradient: direct - to_dvector(&mv)?,
        residual,
        warning: info.warning,
    })
}
