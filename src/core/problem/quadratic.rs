//! The quadratic problem of MATH.md §5:
//!
//! `L_in  = 1/2 phi^T A phi - phi^T (B theta + c)`,
//! `L_out = 1/2 ||C phi - d||^2 + gamma/2 ||theta||^2`,
//! `A` symmetric positive definite with spectrum in `[mu, L]`.
//! Everything about it is known in closed form, which makes it the reference problem.

use super::instance::{InstanceFile, InstanceReader};
use super::{BilevelProblem, ClosedForm, Curvature, Dims, ProblemInstance, ToInstanceFile, matvec};
use crate::error::{CmlError, Result};
use crate::linalg::{Vector, matrix_to_tensor, spd_solve, spectrum_bounds, to_tensor};
use crate::rng::{normal_matrix, normal_vector, seeded};
use candle_core::Tensor;
use nalgebra::DMatrix;

/// Sizes and constants of a random quadratic instance.
#[derive(Debug, Clone, PartialEq)]
pub struct QuadraticSpec {
    pub phi_dim: usize,
    pub theta_dim: usize,
    /// Rows of `C` (number of outer "observations").
    pub outer_dim: usize,
    /// Smallest eigenvalue of `A`.
    pub mu: f64,
    /// Largest eigenvalue of `A`.
    pub smoothness: f64,
    pub gamma: f64,
}

impl Default for QuadraticSpec {
    fn default() -> Self {
        QuadraticSpec {
            phi_dim: 10,
            theta_dim: 5,
            outer_dim: 8,
            mu: 1.0,
            smoothness: 10.0,
            gamma: 0.1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Quadratic {
    a: DMatrix<f64>,
    b: DMatrix<f64>,
    c: Vector,
    cm: DMatrix<f64>,
    d: Vector,
    gamma: f64,
    theta: Vector,
    phi_init: Vector,
    /// Tensor copies for autodiff.
    t: Tensors,
}

#[derive(Debug, Clone)]
struct Tensors {
    a: Tensor,
    b: Tensor,
    c: Tensor,
    cm: Tensor,
    d: Tensor,
    theta: Tensor,
    phi_init: Tensor,
}

impl Quadratic {
    /// Draws an instance: `A = Q diag(s) Q^T` with `Q` a random orthogonal matrix and the
    /// spectrum `s` spread evenly over `[mu, L]` (both ends included, so the constants are
    /// exact); `B`, `C` Gaussian scaled by `1/sqrt(cols)`; `c`, `d`, `theta` standard normal;
    /// `phi_init = 0`.
    pub fn random(spec: &QuadraticSpec, seed: u64) -> Result<Self> {
        let QuadraticSpec {
            phi_dim: n,
            theta_dim: m,
            outer_dim: k,
            mu,
            smoothness,
            gamma,
        } = *spec;
        for (name, v) in [("phi_dim", n), ("theta_dim", m), ("outer_dim", k)] {
            if v == 0 {
                return Err(CmlError::invalid(name, v, "a size must be at least 1"));
            }
        }
        if !(mu > 0.0 && mu.is_finite() && smoothness >= mu && smoothness.is_finite()) {
            return Err(CmlError::invalid(
                "spectrum [mu, L]",
                format!("[{mu}, {smoothness}]"),
                "need 0 < mu <= L < infinity",
            ));
        }
        if !(gamma >= 0.0 && gamma.is_finite()) {
            return Err(CmlError::invalid("gamma", gamma, "need a finite gamma >= 0"));
        }
        let mut rng = seeded(seed);
        let q = normal_matrix(&mut rng, n, n).qr().q();
        let spectrum = Vector::from_fn(n, |i, _| {
            if n == 1 {
                mu
            } else {
                mu + (smoothness - mu) * i as f64 / (n - 1) as f64
            }
        });
        let a = &q * DMatrix::from_diagonal(&spectrum) * q.transpose();
        let a = (&a + a.transpose()) * 0.5;
        let b = normal_matrix(&mut rng, n, m) / (m as f64).sqrt();
        let cm = normal_matrix(&mut rng, k, n) / (n as f64).sqrt();
        let c = normal_vector(&mut rng, n);
        let d = normal_vector(&mut rng, k);
        let theta = normal_vector(&mut rng, m);
        Self::from_parts(a, b, c, cm, d, gamma, theta, Vector::zeros(n))
    }

    #[allow(clippy::too_many_arguments)]
    fn from_parts(
        a: DMatrix<f64>,
        b: DMatrix<f64>,
        c: Vector,
        cm: DMatrix<f64>,
        d: Vector,
        gamma: f64,
        theta: Vector,
        phi_init: Vector,
    ) -> Result<Self> {
        let t = Tensors {
            a: matrix_to_tensor(&a)?,
            b: matrix_to_tensor(&b)?,
            c: to_tensor(&c)?,
            cm: matrix_to_tensor(&cm)?,
            d: to_tensor(&d)?,
            theta: to_tensor(&theta)?,
            phi_init: to_tensor(&phi_init)?,
        };
        Ok(Quadratic {
            a,
            b,
            c,
            cm,
            d,
            gamma,
            theta,
            phi_init,
            t,
        })
    }

    pub fn from_instance(mut r: InstanceReader) -> Result<Self> {
        let a = r.matrix("A", None, None)?;
        let n = a.nrows();
        if a.ncols() != n {
            return Err(r.error(format!("array 'A' must be square, it is {}x{}", n, a.ncols())));
        }
        let asym = (&a - a.transpose()).amax();
        if asym > 1e-12 * a.amax().max(1.0) {
            return Err(r.error(format!("array 'A' must be symmetric; max |A - A^T| = {asym:.3e}")));
        }
        let (mu, _) = spectrum_bounds(&a);
        if mu <= 0.0 {
            return Err(r.error(format!(
                "array 'A' must be positive definite (the inner loss strongly convex); its smallest eigenvalue is {mu:.3e}"
            )));
        }
        let b = r.matrix("B", Some(n), None)?;
        let m = b.ncols();
        let c = r.vector("c", Some(n))?;
        let cm = r.matrix("C", None, Some(n))?;
        let d = r.vector("d", Some(cm.nrows()))?;
        let theta = r.vector("theta", Some(m))?;
        let phi_init = r.vector("phi_init", Some(n))?;
        let gamma = r.scalar("gamma")?;
        if gamma < 0.0 {
            return Err(r.error(format!("scalar 'gamma' is {gamma}, it must be >= 0")));
        }
        r.finish()?;
        Self::from_parts(a, b, c, cm, d, gamma, theta, phi_init)
    }

    /// `C^T C`, the outer loss's Hessian in `phi`.
    fn outer_hessian(&self) -> DMatrix<f64> {
        self.cm.transpose() * &self.cm
    }

    /// `A + beta C^T C`, the Hessian of `L_beta` (constant in `phi`).
    pub fn phase_hessian(&self, beta: f64) -> DMatrix<f64> {
        &self.a + self.outer_hessian() * beta
    }

    pub fn matrices(&self) -> QuadraticMatrices<'_> {
        QuadraticMatrices {
            a: &self.a,
            b: &self.b,
            c: &self.c,
            cm: &self.cm,
            d: &self.d,
            gamma: self.gamma,
        }
    }
}

/// Read access to the defining arrays, for the theory module and tests.
pub struct QuadraticMatrices<'a> {
    pub a: &'a DMatrix<f64>,
    pub b: &'a DMatrix<f64>,
    pub c: &'a Vector,
    pub cm: &'a DMatrix<f64>,
    pub d: &'a Vector,
    pub gamma: f64,
}

impl BilevelProblem for Quadratic {
    fn dims(&self) -> Dims {
        Dims {
            phi: self.a.nrows(),
            theta: self.b.ncols(),
        }
    }

    fn inner_loss(&self, phi: &Tensor, theta: &Tensor) -> candle_core::Result<Tensor> {
        let quad = (phi * matvec(&self.t.a, phi)?)?.sum_all()? * 0.5;
        let linear = (phi * (matvec(&self.t.b, theta)? + &self.t.c)?)?.sum_all()?;
        quad? - linear
    }

    fn outer_loss(&self, phi: &Tensor, theta: &Tensor) -> candle_core::Result<Tensor> {
        let residual = (matvec(&self.t.cm, phi)? - &self.t.d)?;
        let fit = (residual.sqr()?.sum_all()? * 0.5)?;
        if self.gamma == 0.0 {
            Ok(fit)
        } else {
            fit + (theta.sqr()?.sum_all()? * (0.5 * self.gamma))?
        }
    }

    fn initial_phi(&self, _theta: &Tensor) -> Result<Tensor> {
        Ok(self.t.phi_init.clone())
    }

    fn curvature(&self, _theta: &Tensor, beta: f64) -> Result<Option<Curvature>> {
        let (lo, hi) = spectrum_bounds(&self.phase_hessian(beta));
        Ok(Some(Curvature {
            strong_convexity: lo,
            smoothness: hi,
        }))
    }

    fn closed_form(&self) -> Option<&dyn ClosedForm> {
        Some(self)
    }
}

impl ProblemInstance for Quadratic {
    fn name(&self) -> &'static str {
        "quadratic"
    }

    fn theta(&self) -> &Tensor {
        &self.t.theta
    }
}

impl ToInstanceFile for Quadratic {
    fn to_instance(&self) -> InstanceFile {
        let mut f = InstanceFile::new(self.name(), None);
        f.push_matrix("A", &self.a);
        f.push_matrix("B", &self.b);
        f.push_vector("c", &self.c);
        f.push_matrix("C", &self.cm);
        f.push_vector("d", &self.d);
        f.push_vector("theta", &self.theta);
        f.push_vector("phi_init", &self.phi_init);
        f.push_scalar("gamma", self.gamma);
        f
    }
}

impl ClosedForm for Quadratic {
    /// `phi*_beta = (A + beta C^T C)^{-1} (B theta + c + beta C^T d)` (MATH.md §5).
    fn phase_solution(&self, theta: &Vector, beta: f64) -> Result<Vector> {
        let rhs = &self.b * theta + &self.c + self.cm.transpose() * &self.d * beta;
        spd_solve(
            &self.phase_hessian(beta),
            &rhs,
            &format!("A + beta C^T C at beta = {beta}"),
        )
    }

    /// `dJ/dtheta = B^T A^{-1} C^T (C phi*_0 - d) + gamma theta` (MATH.md §5).
    fn meta_gradient(&self, theta: &Vector) -> Result<Vector> {
        let phi = self.phase_solution(theta, 0.0)?;
        let outer = self.cm.transpose() * (&self.cm * &phi - &self.d);
        Ok(self.b.transpose() * spd_solve(&self.a, &outer, "A")? + theta * self.gamma)
    }
}
