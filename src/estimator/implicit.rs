//! Implicit differentiation (MATH.md §4) at the free phase's end point `phi^_0`:
//! `dJ/dtheta ~ d_theta L_out - d2_{theta phi} L_in v` with `H v = d_phi L_out`, `H = d2_{phi phi} L_in`.
//! The linear system is solved exactly (dense Cholesky) or approximately (conjugate gradient,
//! Neumann series, or T1-T2's `H ~ I`). The error is `O(delta)` in the free phase's distance
//! plus the linear solver's error.

use super::{Estimate, MetaGradientEstimator};
use crate::error::{CmlError, Result};
use crate::inner::{GdParams, gradient_descent};
use crate::linalg::{Vector, spd_solve, to_dvector, to_tensor};
use crate::oracle::Oracle;
use crate::problem::BilevelProblem;
use crate::smoothness;
use candle_core::Tensor;

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

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Implicit {
    pub solver: LinearSolver,
    pub free: GdParams,
}

impl MetaGradientEstimator for Implicit {
    fn describe(&self) -> String {
        self.solver.describe()
    }

    fn estimate(&self, problem: &dyn BilevelProblem, theta: &Tensor) -> Result<Estimate> {
        self.solver.validate()?;
        let oracle = Oracle::new(problem);
        let free = gradient_descent(
            &oracle,
            &problem.initial_phi(theta)?,
            theta,
            0.0,
            &self.free,
            "free phase",
        )?;
        let solution = implicit_meta_gradient(&oracle, &free.phi, theta, self.solver)?;
        let mut estimate = Estimate {
            gradient: solution.gradient,
            cost: oracle.cost(),
            phases: vec![free.info],
            phase_points: vec![free.phi.clone()],
            adapted_phi: free.phi,
            linear_residual: Some(solution.residual),
            warnings: solution.warning.into_iter().collect(),
            error_bar: None,
        };
        estimate.add_phase_warnings(|_| self.free.tolerance);
        Ok(estimate)
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
        let d = oracle.phase_second_derivatives(phi, theta, 0.0)?;
        oracle.keep_alive(n * n + m * n + 2 * n + m);
        let v = spd_solve(&d.hessian, &b, "the inner Hessian d2_{phi phi} L_in").map_err(|e| match e {
            CmlError::NotPositiveDefinite { what, reason } => CmlError::NotPositiveDefinite {
                what,
                reason: format!(
                    "{reason}; the dense implicit solve needs a strongly convex inner loss at the free solution: \
                     a larger --strength (cml train: the pull toward theta), more --free-steps, or --estimator cg, which stops \
                     at negative curvature with a warning"
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
    let mut warning = None;
    let v = match solver {
        LinearSolver::Identity => {
            oracle.keep_alive(2 * n + m); // v = b, H v
            b.clone()
        }
        LinearSolver::ConjugateGradient { steps } => {
            oracle.keep_alive(4 * n + m); // v, r, p, Hp
            let (v, w) = conjugate_gradient(hvp, &b, steps)?;
            warning = w;
            v
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
            let mut term = b.clone();
            let mut v = &b * alpha;
            for _ in 0..steps {
                term -= hvp(&term)? * alpha;
                v += &term * alpha;
            }
            v
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
        warning,
    })
}

/// `steps` iterations of conjugate gradient on `H v = b` from `v = 0`; stops early on an
/// exactly zero residual. Where `H` is not positive definite (a non-convex inner loss away
/// from its minimum) it stops at the first direction of non-positive curvature, as truncated
/// CG does, and says so: the solve is then only partial.
fn conjugate_gradient(
    hvp: impl Fn(&Vector) -> Result<Vector>,
    b: &Vector,
    steps: usize,
) -> Result<(Vector, Option<String>)> {
    let mut v = Vector::zeros(b.len());
    let mut r = b.clone();
    let mut p = r.clone();
    let mut rr = r.dot(&r);
    for iteration in 0..steps {
        if rr == 0.0 {
            break;
        }
        let hp = hvp(&p)?;
        let curvature = p.dot(&hp);
        if curvature <= 0.0 {
            let warning = format!(
                "conjugate gradient stopped at iteration {iteration} of {steps}: direction of curvature \
                 {curvature:.3e} <= 0, the inner Hessian is not positive definite at the free solution"
            );
            return Ok((v, Some(warning)));
        }
        let step = rr / curvature;
        v += &p * step;
        r -= &hp * step;
        let rr_next = r.dot(&r);
        p = &r + &p * (rr_next / rr);
        rr = rr_next;
    }
    Ok((v, None))
}
