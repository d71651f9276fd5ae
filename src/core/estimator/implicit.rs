//! The implicit estimators (MATH.md §4): a free phase, then the implicit meta-gradient
//! (`implicit_function`) at its end point `phi^_0`, with the linear system solved exactly (dense
//! Cholesky) or approximately (conjugate gradient, Neumann series, or T1-T2's `H ~ I`). The error
//! is `O(delta)` in the free phase's distance plus the linear solver's error.

use super::{DENSE_SOLVE_LIMIT, Estimate, MetaGradientEstimator, Stage};
use crate::error::Result;
pub use crate::implicit_function::LinearSolver;
use crate::implicit_function::implicit_meta_gradient;
use crate::inner::{GdParams, InnerSolver, Phase};
use crate::oracle::Oracle;
use crate::problem::{BilevelProblem, ProblemInstance};
use candle_core::Tensor;

/// Implicit differentiation at the end point of a free phase run by `free`, any
/// [`InnerSolver`] (gradient descent by default).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Implicit<S = GdParams> {
    pub solver: LinearSolver,
    pub free: S,
}

impl<S: InnerSolver> MetaGradientEstimator for Implicit<S> {
    fn name(&self) -> &'static str {
        match self.solver {
            LinearSolver::Dense => "implicit",
            LinearSolver::ConjugateGradient { .. } => "cg",
            LinearSolver::Neumann { .. } => "neumann",
            LinearSolver::Identity => "t1t2",
        }
    }

    fn describe(&self) -> String {
        self.solver.describe()
    }

    fn stages(&self) -> Vec<Stage> {
        vec![Stage::Phase { beta: 0.0 }, Stage::LinearSolve(self.solver)]
    }

    /// The dense solve forms the whole inner Hessian: refused above [`DENSE_SOLVE_LIMIT`].
    fn inapplicable(&self, problem: &dyn ProblemInstance, _theta: &Tensor) -> Result<Option<String>> {
        let n = problem.dims().phi;
        Ok((self.solver == LinearSolver::Dense && n > DENSE_SOLVE_LIMIT).then(|| {
            format!(
                "the dense implicit solve forms the {n} x {n} inner Hessian ({n} Hessian-vector products, \
                 {:.0} MB, an O(n^3) factorisation); above {DENSE_SOLVE_LIMIT} fast parameters use cg or neumann",
                (n * n * 8) as f64 / 1e6
            )
        }))
    }

    fn estimate(&self, problem: &dyn BilevelProblem, theta: &Tensor) -> Result<Estimate> {
        self.solver.validate()?;
        self.free.validate("free phase")?;
        let oracle = Oracle::with_engine(problem, self.free.engine());
        let free = self.free.solve(
            &oracle,
            &Phase::new(&problem.initial_phi(theta)?, theta, 0.0, "free phase"),
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
        estimate.add_phase_warnings(true);
        Ok(estimate)
    }
}
