//! First- and second-order derivatives of a scalar loss `f(phi, theta)` by Candle autodiff.
//!
//! Second derivatives need Candle's keep-the-graph mode (docs/CANDLE.md): every
//! second-order entry point here calls [`ensure_second_order`] first, so that a detached
//! build returns an error instead of silently wrong numbers.

use crate::error::{CmlError, Result};
use crate::linalg::{Vector, to_dvector};
use candle_core::{Tensor, Var};
use nalgebra::DMatrix;
use std::cell::Cell;

/// A scalar loss of the fast parameters `phi` and the meta-parameters `theta` (both 1-D).
pub type LossFn<'a> = dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> + 'a;

/// Value and both partial derivatives of a loss at one point.
#[derive(Debug, Clone)]
pub struct Gradients {
    pub loss: f64,
    /// `d_phi f`, detached.
    pub phi: Tensor,
    /// `d_theta f`, detached.
    pub theta: Tensor,
}

thread_local! {
    // Candle freezes its detach flag per thread at the first backward pass, so one check per
    // thread is exact.
    static SECOND_ORDER_OK: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Checks that Candle keeps the gradient graph: d2/dx2 of x^4 at x = 1 must be 12.
pub fn ensure_second_order() -> Result<()> {
    if SECOND_ORDER_OK.with(Cell::get) == Some(true) {
        return Ok(());
    }
    let measured = second_derivative_of_x4_at_1()?;
    let ok = matches!(measured, Some(v) if (v - 12.0).abs() < 1e-9);
    SECOND_ORDER_OK.with(|c| c.set(Some(ok)));
    if ok {
        Ok(())
    } else {
        Err(CmlError::SecondOrderOff {
            measured: measured.map_or("nothing (the gradient had no graph)".into(), |v| v.to_string()),
        })
    }
}

fn second_derivative_of_x4_at_1() -> Result<Option<f64>> {
    let x = Var::new(&[1.0f64], &candle_core::Device::Cpu)?;
    // A chain of products, not `powf`: powf's local derivative 4 x^3 keeps its own graph, so
    // it would pass even with detaching on. Detached, the chain gives 4 (docs/CANDLE.md).
    let x1 = x.as_tensor();
    let y = (((x1 * x1)? * x1)? * x1)?.sum_all()?;
    let g = y.backward()?.get(x.as_tensor()).cloned();
    let Some(g) = g else { return Ok(None) };
    let h = g.sum_all()?.backward()?.get(x.as_tensor()).cloned();
    Ok(match h {
        Some(h) => Some(h.sum_all()?.to_scalar::<f64>()?),
        None => None,
    })
}

/// The graph of one evaluation: leaves for `phi` and `theta` and the loss built on them.
struct Tape {
    phi: Var,
    theta: Var,
    loss: Tensor,
}

impl Tape {
    fn record(f: &LossFn, phi: &Tensor, theta: &Tensor) -> Result<Self> {
        // `Var::from_tensor` copies and cuts any graph the inputs carry.
        let phi = Var::from_tensor(phi)?;
        let theta = Var::from_tensor(theta)?;
        let loss = f(phi.as_tensor(), theta.as_tensor())?;
        if loss.elem_count() != 1 {
            return Err(CmlError::invalid(
                "loss shape",
                format!("{:?}", loss.dims()),
                "a loss must be a scalar",
            ));
        }
        Ok(Tape {
            phi,
            theta,
            loss: loss.sum_all()?,
        })
    }

    /// Gradient of `out` with respect to a leaf; zero where `out` does not depend on it.
    fn grad_of(store: &candle_core::backprop::GradStore, leaf: &Var) -> Result<Tensor> {
        Ok(match store.get(leaf.as_tensor()) {
            Some(g) => g.clone(),
            None => leaf.as_tensor().zeros_like()?,
        })
    }
}

/// Loss value, `d_phi f` and `d_theta f` in one backward pass (first order only).
pub fn gradients(f: &LossFn, phi: &Tensor, theta: &Tensor) -> Result<Gradients> {
    let tape = Tape::record(f, phi, theta)?;
    let store = tape.loss.backward()?;
    Ok(Gradients {
        loss: tape.loss.to_scalar::<f64>()?,
        phi: Tape::grad_of(&store, &tape.phi)?.detach(),
        theta: Tape::grad_of(&store, &tape.theta)?.detach(),
    })
}

/// Loss value and `d_phi f` only: `theta` enters as a constant, so the backward pass skips it.
/// The returned `theta` gradient is zero.
pub fn phi_gradient(f: &LossFn, phi: &Tensor, theta: &Tensor) -> Result<Gradients> {
    let leaf = Var::from_tensor(phi)?;
    let theta = theta.detach();
    let loss = f(leaf.as_tensor(), &theta)?.sum_all()?;
    let store = loss.backward()?;
    Ok(Gradients {
        loss: loss.to_scalar::<f64>()?,
        phi: Tape::grad_of(&store, &leaf)?.detach(),
        theta: theta.zeros_like()?,
    })
}

/// Hessian-vector product `d2_{phi phi} f v` and mixed product `d2_{theta phi} f v`
/// (the gradient in `theta` of `<d_phi f, v>`), from one double-backward pass.
pub fn hvp_and_mixed(f: &LossFn, phi: &Tensor, theta: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
    ensure_second_order()?;
    let tape = Tape::record(f, phi, theta)?;
    let g_phi = Tape::grad_of(&tape.loss.backward()?, &tape.phi)?;
    let store = (g_phi * v)?.sum_all()?.backward()?;
    Ok((
        Tape::grad_of(&store, &tape.phi)?.detach(),
        Tape::grad_of(&store, &tape.theta)?.detach(),
    ))
}

/// Transposed mixed product `d2_{phi theta} f u` (the gradient in `phi` of `<d_theta f, u>`, a
/// vector over `phi`), from one double-backward pass: with [`hvp_and_mixed`] it gives both
/// products of the mixed matrix, so power iteration can find its norm.
pub fn mixed_transpose_product(f: &LossFn, phi: &Tensor, theta: &Tensor, u: &Tensor) -> Result<Tensor> {
    ensure_second_order()?;
    let tape = Tape::record(f, phi, theta)?;
    let g_theta = Tape::grad_of(&tape.loss.backward()?, &tape.theta)?;
    let store = (g_theta * u)?.sum_all()?.backward()?;
    Ok(Tape::grad_of(&store, &tape.phi)?.detach())
}

/// Dense second derivatives at one point: the Hessian `H = d2_{phi phi} f` (n x n) and the
/// mixed matrix `M = d2_{theta phi} f` (m x n, so that `M v` is the mixed product).
/// Costs n double-backward passes (one per unit vector), all on one gradient graph.
#[derive(Debug, Clone)]
pub struct SecondDerivatives {
    pub hessian: DMatrix<f64>,
    pub mixed: DMatrix<f64>,
    /// The first-order quantities at the same point, for free.
    pub gradients: Gradients,
}

pub fn dense_second_derivatives(f: &LossFn, phi: &Tensor, theta: &Tensor) -> Result<SecondDerivatives> {
    ensure_second_order()?;
    let tape = Tape::record(f, phi, theta)?;
    let store = tape.loss.backward()?;
    let g_phi = Tape::grad_of(&store, &tape.phi)?;
    let g_theta = Tape::grad_of(&store, &tape.theta)?;
    let n = g_phi.elem_count();
    let m = g_theta.elem_count();
    let mut hessian = DMatrix::zeros(n, n);
    let mut mixed = DMatrix::zeros(m, n);
    for i in 0..n {
        let row = g_phi.narrow(0, i, 1)?.sum_all()?.backward()?;
        let h_i: Vector = to_dvector(&Tape::grad_of(&row, &tape.phi)?)?;
        let m_i: Vector = to_dvector(&Tape::grad_of(&row, &tape.theta)?)?;
        hessian.set_row(i, &h_i.transpose());
        mixed.set_column(i, &m_i);
    }
    // Autodiff rows agree with the columns to rounding; symmetrise so Cholesky sees an exactly
    // symmetric matrix.
    let hessian = (&hessian + hessian.transpose()) * 0.5;
    Ok(SecondDerivatives {
        hessian,
        mixed,
        gradients: Gradients {
            loss: tape.loss.to_scalar::<f64>()?,
            phi: g_phi.detach(),
            theta: g_theta.detach(),
        },
    })
}

/// Vector-Jacobian product `(dy/dtheta)^T a` of a vector function `y(theta)` (first order);
/// zero when `y` does not depend on `theta`.
pub fn vjp(y: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>, theta: &Tensor, a: &Tensor) -> Result<Tensor> {
    let leaf = Var::from_tensor(theta)?;
    let out = (y(leaf.as_tensor())? * a)?.sum_all()?;
    Ok(Tape::grad_of(&out.backward()?, &leaf)?.detach())
}
