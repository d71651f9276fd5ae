//! Counted access to a problem's derivatives: every estimator pays through here, so methods
//! can be compared per unit of work (gradient evaluations, second-order products).

use crate::autodiff::{self, Gradients, SecondDerivatives};
use crate::engine::{EngineChoice, FirstOrderPhase, SecondOrderPhase, Workspace};
use crate::error::Result;
use crate::linalg::Vector;
use crate::problem::{BilevelProblem, phase_loss};
use candle_core::{Device, Tensor};
use nalgebra::DMatrix;
use std::cell::{Cell, RefCell};

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

/// A problem plus a running cost ledger, and the engine of its second-order products.
pub struct Oracle<'p> {
    problem: &'p dyn BilevelProblem,
    cost: Cell<Cost>,
    engine: EngineChoice,
    /// The fast engine's workspace for second-order products, kept for the `theta` it was made
    /// at (an estimate asks for many products at one `theta`).
    second_order: RefCell<Option<(Vec<f64>, Workspace)>>,
}

impl<'p> Oracle<'p> {
    /// Second-order products on the fast engine where the problem has them (`EngineChoice::Auto`).
    pub fn new(problem: &'p dyn BilevelProblem) -> Self {
        Self::with_engine(problem, EngineChoice::Auto)
    }

    /// Second-order products on `engine`: `Candle` always differentiates twice with Candle (the
    /// reference); `Auto` and `Fast` take the problem's [`SecondOrderPhase`] where it has one and
    /// Candle otherwise (`Fast` is strict about the first-order path only, which the phases choose
    /// themselves, see `inner::GdParams::engine`).
    pub fn with_engine(problem: &'p dyn BilevelProblem, engine: EngineChoice) -> Self {
        Oracle {
            problem,
            cost: Cell::new(Cost::default()),
            engine,
            second_order: RefCell::new(None),
        }
    }

    pub fn problem(&self) -> &'p dyn BilevelProblem {
        self.problem
    }

    /// The hand-derived second-order path, when the engine allows it and the problem has one.
    fn fast_second_order(&self) -> Option<&'p dyn SecondOrderPhase> {
        match self.engine {
            EngineChoice::Candle => None,
            EngineChoice::Auto | EngineChoice::Fast => self.problem.second_order(),
        }
    }

    /// Runs `f` on the fast engine's workspace at `theta`, made anew only when `theta` changed.
    fn with_workspace<R>(
        &self,
        model: &dyn SecondOrderPhase,
        theta: &[f64],
        f: impl FnOnce(&mut Workspace) -> R,
    ) -> Result<R> {
        let mut cache = self.second_order.borrow_mut();
        if cache.as_ref().is_none_or(|(at, _)| at.as_slice() != theta) {
            *cache = Some((theta.to_vec(), model.workspace(theta)?));
        }
        let (_, workspace) = cache.as_mut().expect("filled above");
        Ok(f(workspace))
    }

    /// `(H v, M v)` of `L_beta` on the fast engine, as tensors (`mixed`: whether `M v` is wanted).
    fn fast_products(
        &self,
        model: &dyn SecondOrderPhase,
        phi: &Tensor,
        theta: &Tensor,
        beta: f64,
        v: &Tensor,
        mixed: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (phi, theta, v) = (
            phi.to_vec1::<f64>()?,
            theta.to_vec1::<f64>()?,
            v.to_vec1::<f64>()?,
        );
        let mut hv = vec![0.0; phi.len()];
        let mut mv = mixed.then(|| vec![0.0; theta.len()]);
        self.with_workspace(model, &theta, |ws| {
            model.hessian_vector_product(ws, &phi, beta, &v, &mut hv, mv.as_deref_mut())
        })?;
        let hv = Tensor::from_vec(hv, phi.len(), &Device::Cpu)?;
        let mv = match mv {
            Some(m) => Some(Tensor::from_vec(m, theta.len(), &Device::Cpu)?),
            None => None,
        };
        Ok((hv, mv))
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
        if let Some(model) = self.fast_second_order() {
            let (hv, mv) = self.fast_products(model, phi, theta, 0.0, v, true)?;
            return Ok((hv, mv.expect("asked for")));
        }
        autodiff::hvp_and_mixed(&phase_loss(self.problem, 0.0), phi, theta, v)
    }

    /// `d2_{phi phi} L_beta v`: one second-order product.
    pub fn phase_hvp(&self, phi: &Tensor, theta: &Tensor, beta: f64, v: &Tensor) -> Result<Tensor> {
        self.charge(0, 1);
        if let Some(model) = self.fast_second_order() {
            return Ok(self.fast_products(model, phi, theta, beta, v, false)?.0);
        }
        Ok(autodiff::hvp_and_mixed(&phase_loss(self.problem, beta), phi, theta, v)?.0)
    }

    /// `d2_{theta phi} L_beta v` (over `theta`): one second-order product.
    pub fn phase_mixed_product(&self, phi: &Tensor, theta: &Tensor, beta: f64, v: &Tensor) -> Result<Tensor> {
        self.charge(0, 1);
        if let Some(model) = self.fast_second_order() {
            return Ok(self
                .fast_products(model, phi, theta, beta, v, true)?
                .1
                .expect("asked for"));
        }
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
        if let Some(model) = self.fast_second_order() {
            let (phi, theta, u) = (
                phi.to_vec1::<f64>()?,
                theta.to_vec1::<f64>()?,
                u.to_vec1::<f64>()?,
            );
            let mut out = vec![0.0; phi.len()];
            self.with_workspace(model, &theta, |ws| {
                model.mixed_transpose_product(ws, &phi, beta, &u, &mut out)
            })?;
            return Ok(Tensor::from_vec(out, phi.len(), &Device::Cpu)?);
        }
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
        if let Some(model) = self.fast_second_order() {
            return self.fast_second_derivatives(model, phi, theta, beta);
        }
        autodiff::dense_second_derivatives(&phase_loss(self.problem, beta), phi, theta)
    }

    /// [`Oracle::phase_second_derivatives`] on the fast engine: the Hessian's columns and the
    /// mixed matrix's columns from one product per basis vector, the gradients from one pass.
    fn fast_second_derivatives(
        &self,
        model: &dyn SecondOrderPhase,
        phi: &Tensor,
        theta: &Tensor,
        beta: f64,
    ) -> Result<SecondDerivatives> {
        let (phi_v, theta_v) = (phi.to_vec1::<f64>()?, theta.to_vec1::<f64>()?);
        let (n, m) = (phi_v.len(), theta_v.len());
        let mut hessian = DMatrix::zeros(n, n);
        let mut mixed = DMatrix::zeros(m, n);
        let (mut g_phi, mut g_theta) = (vec![0.0; n], vec![0.0; m]);
        let loss = self.with_workspace(model, &theta_v, |ws| {
            let (mut e, mut hv, mut mv) = (vec![0.0; n], vec![0.0; n], vec![0.0; m]);
            for j in 0..n {
                e[j] = 1.0;
                model.hessian_vector_product(ws, &phi_v, beta, &e, &mut hv, Some(&mut mv));
                e[j] = 0.0;
                hessian.set_column(j, &Vector::from_column_slice(&hv));
                mixed.set_column(j, &Vector::from_column_slice(&mv));
            }
            model.phase_gradient(ws, &phi_v, beta, &mut g_phi, Some(&mut g_theta))
        })?;
        // Columns agree with rows to rounding; symmetrise so Cholesky sees a symmetric matrix.
        let hessian = (&hessian + hessian.transpose()) * 0.5;
        Ok(SecondDerivatives {
            hessian,
            mixed,
            gradients: Gradients {
                loss,
                phi: Tensor::from_vec(g_phi, n, &Device::Cpu)?,
                theta: Tensor::from_vec(g_theta, m, &Device::Cpu)?,
            },
        })
    }
}
