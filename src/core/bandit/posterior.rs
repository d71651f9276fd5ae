//! Bayesian linear regression with a normal-inverse-gamma prior, one per arm, sampled for
//! Thompson sampling (docs/BANDIT.md §3; the LinFullPost and NeuralLinear agents).
//!
//! Prior: `sigma^2 ~ InvGamma(a0, b0)`, `w | sigma^2 ~ N(0, sigma^2 / lambda I)`. After rows
//! `X` (n x d) with rewards `y`:
//! `Lambda = X^T X + lambda I`, `mu = Lambda^{-1} X^T y`, `a = a0 + n / 2`,
//! `b = b0 + (y^T y - mu^T Lambda mu) / 2`, and `w | sigma^2 ~ N(mu, sigma^2 Lambda^{-1})`.

use crate::error::{CmlError, Result};
use crate::rng::{Rng, normal};
use nalgebra::{DMatrix, DVector};
use rand_distr::{Distribution, Gamma};

/// The prior's parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Prior {
    pub a0: f64,
    pub b0: f64,
    pub lambda: f64,
}

/// The sufficient statistics of one arm's data.
#[derive(Debug, Clone)]
pub struct LinearPosterior {
    prior: Prior,
    xtx: DMatrix<f64>,
    xty: DVector<f64>,
    yty: f64,
    n: usize,
    /// [`LinearPosterior::params`] since the last change of the data (Thompson sampling draws
    /// from every arm at every pull, but only the pulled arm's data change).
    cached: Option<PosteriorParams>,
}

/// The posterior's parameters, as in the module comment.
#[derive(Debug, Clone)]
pub struct PosteriorParams {
    /// `Lambda = L L^T`.
    pub cholesky: nalgebra::Cholesky<f64, nalgebra::Dyn>,
    pub mean: DVector<f64>,
    pub a: f64,
    pub b: f64,
}

impl LinearPosterior {
    pub fn new(prior: Prior, dim: usize) -> Result<Self> {
        for (name, v) in [("a0", prior.a0), ("b0", prior.b0), ("lambda", prior.lambda)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(CmlError::invalid(
                    format!("linear posterior {name}"),
                    v,
                    "finite and > 0",
                ));
            }
        }
        Ok(LinearPosterior {
            prior,
            xtx: DMatrix::zeros(dim, dim),
            xty: DVector::zeros(dim),
            yty: 0.0,
            n: 0,
            cached: None,
        })
    }

    pub fn dim(&self) -> usize {
        self.xty.len()
    }

    /// Adds one row `x` with reward `y`.
    pub fn add(&mut self, x: &[f64], y: f64) {
        let x = DVector::from_column_slice(x);
        self.xtx.ger(1.0, &x, &x, 1.0);
        self.xty.axpy(y, &x, 1.0);
        self.yty += y * y;
        self.n += 1;
        self.cached = None;
    }

    /// Forgets every row (NeuralLinear refits on new features).
    pub fn clear(&mut self) {
        self.xtx.fill(0.0);
        self.xty.fill(0.0);
        self.yty = 0.0;
        self.n = 0;
        self.cached = None;
    }

    /// One Thompson draw of the weights (see [`PosteriorParams::sample`]), the posterior
    /// factorised once per change of the data.
    pub fn draw(&mut self, rng: &mut Rng) -> Result<DVector<f64>> {
        if self.cached.is_none() {
            self.cached = Some(self.params()?);
        }
        Ok(self.cached.as_ref().expect("set above").sample(rng))
    }

    pub fn params(&self) -> Result<PosteriorParams> {
        let d = self.dim();
        let precision = &self.xtx + DMatrix::identity(d, d) * self.prior.lambda;
        let cholesky = precision.cholesky().ok_or_else(|| {
            CmlError::invalid(
                "posterior precision",
                "not positive definite",
                "X^T X + lambda I with lambda > 0",
            )
        })?;
        let mean = cholesky.solve(&self.xty);
        let quad = self.yty - mean.dot(&self.xty);
        Ok(PosteriorParams {
            cholesky,
            a: self.prior.a0 + self.n as f64 / 2.0,
            // `mu^T Lambda mu = mu^T X^T y`; rounding can push `y^T y - mu^T X^T y` below 0.
            b: self.prior.b0 + 0.5 * quad.max(0.0),
            mean,
        })
    }
}

impl PosteriorParams {
    /// One Thompson draw: `sigma^2 ~ InvGamma(a, b)`, `w = mu + sigma L^{-T} z` with `z ~ N(0, I)`
    /// (so `Cov w = sigma^2 Lambda^{-1}`). `d + 1` draws.
    pub fn sample(&self, rng: &mut Rng) -> DVector<f64> {
        let gamma = Gamma::new(self.a, 1.0 / self.b).expect("a > 0 and b > 0 by construction");
        let sigma2 = 1.0 / gamma.sample(rng);
        let z = DVector::from_iterator(self.mean.len(), (0..self.mean.len()).map(|_| normal(rng)));
        let lt = self.cholesky.l().transpose();
        let u = lt
            .solve_upper_triangular(&z)
            .expect("the Cholesky factor has a positive diagonal");
        &self.mean + u * sigma2.sqrt()
    }
}
