//! First-order baselines for meta-parameters that are an initialisation (MATH.md §4), biased by
//! design. Both pull a vector back through `phi_init(theta)`, so on problems whose initial fast
//! parameters do not depend on `theta` only the direct term remains.
//!
//! - first-order MAML: `d_theta L_out(phi^_0) + (d phi_init / d theta)^T d_phi L_out(phi^_0)`,
//!   i.e. BPTT with the Jacobian of the inner loop replaced by the identity;
//! - Reptile: `(d phi_init / d theta)^T (phi_init - phi^_0)`, the step from the initialisation
//!   to the adapted parameters, used as a descent direction.

use super::{Estimate, MetaGradientEstimator, Stage};
use crate::error::Result;
use crate::inner::{GdParams, InnerSolver, Phase};
use crate::linalg::to_dvector;
use crate::oracle::Oracle;
use crate::problem::{BilevelProblem, ProblemInstance};
use candle_core::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirstOrderRule {
    FirstOrderMaml,
    Reptile,
}

/// A first-order rule at the end point of a free phase run by `free`, any [`InnerSolver`]
/// (gradient descent by default).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FirstOrder<S = GdParams> {
    pub rule: FirstOrderRule,
    pub free: S,
}

impl<S: InnerSolver> MetaGradientEstimator for FirstOrder<S> {
    fn name(&self) -> &'static str {
        match self.rule {
            FirstOrderRule::FirstOrderMaml => "fomaml",
            FirstOrderRule::Reptile => "reptile",
        }
    }

    fn stages(&self) -> Vec<Stage> {
        vec![Stage::Phase { beta: 0.0 }]
    }

    /// Both rules estimate the gradient with respect to an initialisation: refused where theta
    /// does not set the initial fast parameters.
    fn inapplicable(&self, problem: &dyn ProblemInstance, theta: &Tensor) -> Result<Option<String>> {
        // theta sets the initialisation iff the pull-back through phi_init(theta) is not
        // identically zero; a generic vector tells.
        let probe = crate::linalg::to_tensor(&crate::rng::normal_vector(
            &mut crate::rng::seeded(1),
            problem.dims().phi,
        ))?;
        let pulled = Oracle::new(problem).initial_phi_vjp(theta, &probe)?;
        let zero = to_dvector(&pulled)?.iter().all(|&x| x == 0.0);
        Ok(zero.then(|| {
            format!(
                "{} estimates the gradient with respect to an initialisation, but on the {} problem theta does \
                 not set the initial fast parameters: its estimate is zero (or the direct term alone) by construction",
                self.describe(),
                problem.name()
            )
        }))
    }

    fn describe(&self) -> String {
        match self.rule {
            FirstOrderRule::FirstOrderMaml => "first-order MAML".into(),
            FirstOrderRule::Reptile => "Reptile".into(),
        }
    }

    fn estimate(&self, problem: &dyn BilevelProblem, theta: &Tensor) -> Result<Estimate> {
        self.free.validate("free phase")?;
        let oracle = Oracle::with_engine(problem, self.free.engine());
        let phi_init = problem.initial_phi(theta)?;
        let free = self
            .free
            .solve(&oracle, &Phase::new(&phi_init, theta, 0.0, "free phase"))?;
        oracle.keep_alive(3 * problem.dims().phi + problem.dims().theta);
        let gradient = match self.rule {
            FirstOrderRule::FirstOrderMaml => {
                let outer = oracle.outer_gradients(&free.phi, theta)?;
                (outer.theta + oracle.initial_phi_vjp(theta, &outer.phi)?)?
            }
            FirstOrderRule::Reptile => oracle.initial_phi_vjp(theta, &(&phi_init - &free.phi)?)?,
        };
        let mut estimate = Estimate {
            gradient: to_dvector(&gradient)?,
            cost: oracle.cost(),
            phases: vec![free.info],
            phase_points: vec![free.phi.clone()],
            adapted_phi: free.phi,
            linear_residual: None,
            warnings: Vec::new(),
            error_bar: None,
        };
        // The first-order rules do not assume a converged inner loop: only rises are worth a word.
        estimate.add_phase_warnings(false);
        Ok(estimate)
    }
}
