//! Backpropagation through the unrolled inner loop (MATH.md §4): the exact gradient of
//! `theta -> L_out(phi_K(theta), theta)` for the `K` gradient steps actually taken,
//! `phi_{k+1} = phi_k - alpha d_phi L_in(phi_k, theta)`, `phi_0 = phi_init(theta)`.
//!
//! Manual reverse loop (docs/CANDLE.md): store the iterates' values, then walk back with one double
//! backward per step, carrying the adjoint `a`:
//! `dtheta -= alpha d2_{theta phi} L_in(phi_k) a`, `a -= alpha d2_{phi phi} L_in(phi_k) a`.
//! O(K) time; memory is the stored iterates. Truncated BPTT walks back only the last `k` steps
//! (and so keeps only `k` iterates), dropping the earlier steps' and the initialisation's terms.

use super::{Estimate, MetaGradientEstimator, Stage};
use crate::error::Result;
use crate::inner::{GdParams, InnerSolver, Phase};
use crate::linalg::to_dvector;
use crate::oracle::Oracle;
use crate::problem::BilevelProblem;
use candle_core::Tensor;
use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Unrolled {
    /// The inner loop that is differentiated: `max_steps` is `K`.
    pub inner: GdParams,
    /// Walk back only the last `k` steps (`None`: all of them).
    pub truncation: Option<usize>,
}

impl MetaGradientEstimator for Unrolled {
    fn name(&self) -> &'static str {
        match self.truncation {
            None => "bptt",
            Some(_) => "tbptt",
        }
    }

    fn stages(&self) -> Vec<Stage> {
        vec![
            Stage::Phase { beta: 0.0 },
            Stage::Backward {
                steps: self.truncation,
            },
        ]
    }

    fn describe(&self) -> String {
        match self.truncation {
            None => format!("BPTT (K = {})", self.inner.max_steps),
            Some(k) => format!("truncated BPTT (last {k} of K = {})", self.inner.max_steps),
        }
    }

    fn estimate(&self, problem: &dyn BilevelProblem, theta: &Tensor) -> Result<Estimate> {
        super::EstimatorSpec::Unrolled(*self).validate()?;
        let oracle = Oracle::with_engine(problem, self.inner.engine);
        let n = problem.dims().phi;
        let keep = self.truncation.unwrap_or(usize::MAX);
        let mut iterates: VecDeque<Tensor> = VecDeque::new();
        let phi0 = problem.initial_phi(theta)?;
        let end = self.inner.solve_observed(
            &oracle,
            &Phase::new(&phi0, theta, 0.0, "inner loop"),
            &mut |k, phi: &Tensor| {
                if k == 0 {
                    iterates.clear(); // a restarted phase (halved default step) begins again
                }
                if iterates.len() == keep {
                    iterates.pop_front();
                }
                iterates.push_back(phi.clone());
            },
        )?;
        let steps = end.info.steps;
        let alpha = end.info.step_size;
        // Stored iterates plus the adjoint, its products and the meta-gradient.
        oracle.keep_alive(iterates.len() * n + 3 * n + 2 * problem.dims().theta);

        let outer = oracle.outer_gradients(&end.phi, theta)?;
        let mut adjoint = outer.phi;
        let mut gradient = outer.theta;
        let walked_all = iterates.len() == steps;
        while let Some(phi_k) = iterates.pop_back() {
            let (h_a, m_a) = oracle.inner_hvp_and_mixed(&phi_k, theta, &adjoint)?;
            gradient = (gradient - (m_a * alpha)?)?;
            adjoint = (adjoint - (h_a * alpha)?)?;
        }
        if walked_all {
            gradient = (gradient + oracle.initial_phi_vjp(theta, &adjoint)?)?;
        }
        let mut estimate = Estimate {
            gradient: to_dvector(&gradient)?,
            cost: oracle.cost(),
            phases: vec![end.info],
            phase_points: vec![end.phi.clone()],
            adapted_phi: end.phi,
            linear_residual: None,
            warnings: Vec::new(),
            error_bar: None,
        };
        // BPTT differentiates the steps taken, converged or not: only rises are worth a word.
        estimate.add_phase_warnings(false);
        Ok(estimate)
    }
}
