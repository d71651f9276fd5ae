//! Conversions between Candle tensors (for autodiff) and nalgebra (for dense solves).

use crate::error::{CmlError, Result};
use candle_core::{Device, Tensor};
use nalgebra::{DMatrix, DVector};

pub type Vector = DVector<f64>;

/// A 1-D f64 tensor as an nalgebra vector.
pub fn to_dvector(t: &Tensor) -> Result<Vector> {
    Ok(DVector::from_vec(t.flatten_all()?.to_vec1::<f64>()?))
}

/// An nalgebra vector as a 1-D f64 tensor on the CPU.
pub fn to_tensor(v: &Vector) -> Result<Tensor> {
    Ok(Tensor::from_slice(v.as_slice(), v.len(), &Device::Cpu)?)
}

/// A dense matrix as a 2-D f64 tensor (row-major).
pub fn matrix_to_tensor(m: &DMatrix<f64>) -> Result<Tensor> {
    let rows: Vec<f64> = m.transpose().as_slice().to_vec();
    Ok(Tensor::from_vec(rows, (m.nrows(), m.ncols()), &Device::Cpu)?)
}

/// Euclidean norm of a tensor.
pub fn norm(t: &Tensor) -> Result<f64> {
    Ok(t.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt())
}

/// Solves `H x = b` for a symmetric positive definite `H` by Cholesky.
pub fn spd_solve(h: &DMatrix<f64>, b: &Vector, what: &str) -> Result<Vector> {
    let chol = h
        .clone()
        .cholesky()
        .ok_or_else(|| CmlError::NotPositiveDefinite {
            what: what.to_string(),
            reason: format!(
                "Cholesky failed (smallest eigenvalue {:.3e})",
                h.clone().symmetric_eigenvalues().min()
            ),
        })?;
    Ok(chol.solve(b))
}

/// Smallest and largest eigenvalue of a symmetric matrix.
pub fn spectrum_bounds(h: &DMatrix<f64>) -> (f64, f64) {
    let ev = h.clone().symmetric_eigenvalues();
    (ev.min(), ev.max())
}

/// Relative error `||a - b|| / ||b||` (absolute when `b = 0`).
pub fn relative_error(estimate: &Vector, exact: &Vector) -> f64 {
    let scale = exact.norm();
    let err = (estimate - exact).norm();
    if scale > 0.0 { err / scale } else { err }
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &Vector, b: &Vector) -> f64 {
    let d = a.norm() * b.norm();
    if d > 0.0 { a.dot(b) / d } else { 0.0 }
}
