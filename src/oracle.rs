//! Counted access to a problem's derivatives: every estimator pays through here, so methods
//! can be compared per unit of work (gradient evaluations, second-order products).

use crate::autodiff::{self, Gradients, SecondDerivatives};
use crate::error::Result;
use crate::problem::{BilevelProblem, phase_loss};
use candle_core::Tensor;
use std::cell::Cell;

/// Work done, in common units. One second-order product is one double-backward pass
/// (a Hessian-vector product and the mixed product come out of the same pass).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Cost {
    pub gradient_evaluations: usize,
    pub second_order_products: usize,
}

impl Cost {
    pub fn total(&self) -> usize {
        self.gradient_evaluations + self.second_order_products
    }
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost {
            gradient_evaluations: self.gradient_evaluations + o.gradient_evaluations,
            second_order_products: self.second_order_products + o.second_order_products,
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
            },
        );
    }

    /// `L_beta`, `d_phi L_beta`, `d_theta L_beta` at `(phi, theta)`: one gradient evaluation.
    pub fn phase_gradients(&self, phi: &Tensor, theta: &Tensor, beta: f64) -> Result<Gradients> {
        self.charge(1, 0);
        autodiff::gradients(&phase_loss(self.problem, beta), phi, theta)
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
    pub fn inner_hvp_and_mixed(
        &self,
        phi: &Tensor,
        theta: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        self.charge(0, 1);
        autodiff::hvp_and_mixed(&phase_loss(self.problem, 0.0), phi, theta, v)
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
