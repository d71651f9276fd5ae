//! The implicit estimators (MATH.md §4): a free phase, then the implicit meta-gradient
//! (`implicit_function`) at its end point `phi^_0`, with the linear system solved exactly (dense
//! Cholesky) or approximately (conjugate gradient, Neumann series, or T1-T2's `H ~ I`). The error
//! is `O(delta)` in the free phase's distance plus the linear solver's error.

use super::{Estimate, MetaGradientEstimator};
use crate::error::Result;
pub use crate::implicit_function::LinearSolver;
use crate::implicit_function::implicit_meta_gradient;
use crate::inner::{GdParams, InnerSolver, Phase};
use crate::oracle::Oracle;
use crate::problem::BilevelProblem;
use candle_core::Tensor;

/// Implicit differentiation at the end point of a free phase run by `free`, any
/// [`InnerSolver`] (gradient descent by default).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Implicit<S = GdParams> {
    pub solver: LinearSolver,
    pub free: S,
}

impl<S: InnerSolver> MetaGradientEstimator for Implicit<S> {
    fn describe(&self) -> String {
        self.solver.describe()
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
