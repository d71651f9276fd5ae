//! Implicit differentiation with a dense solve (MATH.md §4) at the free phase's end point.
//! Exact when the free phase is; its error is `O(delta)` in the free phase's distance.

use super::{Estimate, MetaGradientEstimator};
use crate::error::Result;
use crate::ground_truth::implicit_at;
use crate::inner::{GdParams, gradient_descent};
use crate::oracle::Oracle;
use crate::problem::BilevelProblem;
use candle_core::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ImplicitDense {
    pub free: GdParams,
}

impl MetaGradientEstimator for ImplicitDense {
    fn describe(&self) -> String {
        "implicit (dense solve)".into()
    }

    fn estimate(&self, problem: &dyn BilevelProblem, theta: &Tensor) -> Result<Estimate> {
        let oracle = Oracle::new(problem);
        let free = gradient_descent(
            &oracle,
            &problem.initial_phi(theta)?,
            theta,
            0.0,
            &self.free,
            "free phase",
        )?;
        let gradient = implicit_at(&oracle, &free.phi, theta)?;
        Ok(Estimate {
            gradient,
            cost: oracle.cost(),
            phases: vec![free.info],
        })
    }
}
