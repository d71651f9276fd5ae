//! Counted access to a problem's derivatives: every estimator pays through here, so methods
//! can be compared per unit of work (gradient evaluations, second-order products).

use crate::autodiff::{self, Gradients, SecondDerivatives};
use crate::engine::{FirstOrderPhase, Workspace};
use crate::error::Result;
use crate::problem::{BilevelProblem, phase_loss};
use candle_core::Tensor;
use std::cell::Cell;

/// Work done, in common units. One second-order product is one double-backward pass
/// (a Hessian-vector product and the mixed product come out of the same pass).
/// `floats_kept` is a memory proxy: the most floats of state (iterates, adjoints, solver
/// vectors, dense matrices) the method had to keep alive at once, as the method declares them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cost {
    pub gradient_evaluations: usize,
    pub second_order_products: usize,
    pub floats_kept: usize,
}

impl Cost {
    pub fn total(&self) -> usize {
        self.gradient_evaluations + self.second_order_products
    }
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        // Work adds up; memory is a peak.
        Cost {
            gradient_evaluations: self.gradient_evaluations + o.gradient_evaluations,
            second_order_products: self.second_order_products + o.second_order_products,
            floats_kept: self.floats_kept.max(o.floats_kept),
        }
    }
}

/// A problem plus a running cost ledger.
pub struct Oracle<'p> {
    problem: &'p dyn BilevelProblem,
    cost: Cell<Cost>,
}

impl<'p> Oracle<'p> {
    pub fn new(problem: &'p dyn BilevelProblem) -> Self {
        Oracle {
            problem,
            cost: Cell::new(Cost::default()),
        }
    }

    pub fn problem(&self) -> &'p dyn BilevelProblem {
        self.problem
    }

    pub fn cost(&self) -> Cost {
        self.cost.get()
    }

    fn charge(&self, gradients: usize, products: usize) {
        let c = self.cost.get();
        self.cost.set(
            c + Cost {
                gradient_evaluations: gradients,
                second_order_products: products,
                floats_kept: 0,
            },
        );
    }

    /// Records that `floats` floats of state are alive at once now.
    pub fn keep_alive(&self, floats: usize) {
        let c = self.cost.get();
        self.cost.set(Cost {
            floats_kept: c.floats_kept.max(floats),
            ..c
        });
    }

    /// `(d phi_init / d theta)^T a`, the pull-back of `a` through the initial fast parameters
    /// (zero when they do not depend on `theta`): one gradient evaluation.
    pub fn initial_phi_vjp(&self, theta: &Tensor, a: &Tensor) -> Result<Tensor> {
        self.charge(1, 0);
        let p = self.problem;
        autodiff::vjp(
            &|theta: &Tensor| p.initial_phi(theta).map_err(candle_core::Error::wrap),
            theta,
            a,
        )
    }

    /// `L_beta`, `d_phi L_beta`, `d_theta L_beta` at `(phi, theta)`: one gradient evaluation.
    pub fn phase_gradients(&self, phi: &Tensor, theta: &Tensor, beta: f64) -> Result<Gradients> {
        self.charge(1, 0);
        autodiff::gradients(&phase_loss(self.problem, beta), phi, theta)
    }

    /// `L_beta` and `d_phi L_beta` only (`theta` held constant, its gradient left at zero): one
    /// gradient evaluation, cheaper than [`Oracle::phase_gradients`] when `theta` is large.
    pub fn phase_phi_gradient(&self, phi: &Tensor, theta: &Tensor, beta: f64) -> Result<Gradients> {
        self.charge(1, 0);
        autodiff::phi_gradient(&phase_loss(self.problem, beta), phi, theta)
    }

    /// The fast engine's `L_beta`, `d_phi L_beta` (and `d_theta L_beta` into `grad_theta` when
    /// given), see [`FirstOrderPhase::phase_gradient`]: one gradient evaluation.
    pub fn fast_phase_gradient(
        &self,
        model: &dyn FirstOrderPhase,
        workspace: &mut Workspace,
        phi: &[f64],
        beta: f64,
        grad_phi: &mut [f64],
        grad_theta: Option<&mut [f64]>,
    ) -> f64 {
        self.charge(1, 0);
        model.phase_gradient(workspace, phi, beta, grad_phi, grad_theta)
    }

    /// `L_out` and its partial derivatives: one gradient evaluation.
    pub fn outer_gradients(&self, phi: &Tensor, theta: &Tensor) -> Result<Gradients> {
        self.charge(1, 0);
        let p = self.problem;
        autodiff::gradients(
            &|phi: &Tensor, theta: &Tensor| p.outer_loss(phi, theta),
            phi,
            theta,
        )
    }

    /// `d2_{phi phi} L_in v` and `d2_{theta phi} L_in v`: one second-order product.
    pub fn inner_hvp_and_mixed(&self, phi: &Tensor, theta: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        self.charge(0, 1);
        autodiff::hvp_and_mixed(&phase_loss(self.problem, 0.0), phi, theta, v)
    }

    /// `d2_{phi phi} L_beta v`: one second-order product.
    pub fn phase_hvp(&self, phi: &Tensor, theta: &Tensor, beta: f64, v: &Tensor) -> Result<Tensor> {
        self.charge(0, 1);
        Ok(autodiff::hvp_and_mixed(&phase_loss(self.problem, beta), phi, theta, v)?.0)
    }

    /// `d2_{theta phi} L_beta v` (over `theta`): one second-order product.
    pub fn phase_mixed_product(&self, phi: &Tensor, theta: &Tensor, beta: f64, v: &Tensor) -> Result<Tensor> {
        self.charge(0, 1);
        Ok(autodiff::hvp_and_mixed(&phase_loss(self.problem, beta), phi, theta, v)?.1)
    }

    /// `d2_{phi theta} L_beta u` (over `phi`), the transposed mixed product: one second-order
    /// product.
    pub fn phase_mixed_transpose_product(
        &self,
        phi: &Tensor,
        theta: &Tensor,
        beta: f64,
        u: &Tensor,
    ) -> Result<Tensor> {
        self.charge(0, 1);
        autodiff::mixed_transpose_product(&phase_loss(self.problem, beta), phi, theta, u)
    }

    /// Dense Hessian and mixed matrix of `L_beta`: one product per fast parameter
    /// (the gradient on the same graph comes with them).
    pub fn phase_second_derivatives(
        &self,
        phi: &Tensor,
        theta: &Tensor,
        beta: f64,
    ) -> Result<SecondDerivatives> {
        self.charge(1, self.problem.dims().phi);
        autodiff::dense_second_derivatives(&phase_loss(self.problem, beta), phi, theta)
    }
}
