//! Per-feature weight decay (the paper's meta-optimisation, MATH.md §5), on a linear model:
//!
//! `L_in  = data loss on the training split + 1/2 sum_i exp(theta_i) phi_i^2`,
//! `L_out = data loss on the validation split`,
//!
//! with data loss either `1/(2n) ||X phi - y||^2` (squared, "ridge": closed form exists) or the
//! mean binary cross-entropy with logits `1/n sum_j [softplus(z_j) - y_j z_j]`, `z = X phi`,
//! `y_j in {0, 1}` ("logistic": not quadratic in `phi`). Means over examples, not sums.

use super::instance::{InstanceFile, InstanceReader};
use super::{BilevelProblem, ClosedForm, Curvature, Dims, ProblemInstance, ToInstanceFile, matvec};
use crate::error::{CmlError, Result};
use crate::linalg::{Vector, matrix_to_tensor, spd_solve, spectrum_bounds, to_dvector, to_tensor};
use crate::rng::{normal, normal_matrix, normal_vector, seeded};
use candle_core::Tensor;
use nalgebra::DMatrix;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLoss {
    /// Half mean squared error.
    Squared,
    /// Mean binary cross-entropy with logits.
    Logistic,
}

impl DataLoss {
    fn problem_name(self) -> &'static str {
        match self {
            DataLoss::Squared => "ridge",
            DataLoss::Logistic => "logistic",
        }
    }

    /// Upper bound of the per-example curvature of the loss in the logit: 1 for squared
    /// error, 1/4 (the maximum of sigmoid') for cross-entropy.
    fn curvature_bound(self) -> f64 {
        match self {
            DataLoss::Squared => 1.0,
            DataLoss::Logistic => 0.25,
        }
    }

    fn mean_loss(self, x: &Tensor, y: &Tensor, phi: &Tensor) -> candle_core::Result<Tensor> {
        let z = matvec(x, phi)?;
        match self {
            DataLoss::Squared => (z - y)?.sqr()?.mean_all()? * 0.5,
            DataLoss::Logistic => {
                // softplus(z) = relu(z) + log(1 + exp(-|z|)): never overflows, and its double
                // backward is exact (docs/CANDLE.md; checked against finite differences in tests).
                let softplus = (z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
                (softplus - (y * z)?)?.mean_all()
            }
        }
    }
}

/// Sizes and distributions of a random weight-decay instance.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightDecaySpec {
    pub loss: DataLoss,
    pub features: usize,
    pub train: usize,
    pub validation: usize,
    /// Standard deviation of the label noise (of the logit, for logistic).
    pub noise: f64,
    /// `theta_i ~ N(log_decay, log_decay_spread^2)`.
    pub log_decay: f64,
    pub log_decay_spread: f64,
}

impl WeightDecaySpec {
    pub fn new(loss: DataLoss) -> Self {
        WeightDecaySpec {
            loss,
            features: 8,
            train: 32,
            validation: 64,
            noise: 0.5,
            log_decay: (0.05f64).ln(),
            log_decay_spread: 0.5,
        }
    }
}

#[derive(Debug, Clone)]
pub struct WeightDecay {
    loss: DataLoss,
    x_train: DMatrix<f64>,
    y_train: Vector,
    x_val: DMatrix<f64>,
    y_val: Vector,
    theta: Vector,
    phi_init: Vector,
    t: Tensors,
}

#[derive(Debug, Clone)]
struct Tensors {
    x_train: Tensor,
    y_train: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    theta: Tensor,
    phi_init: Tensor,
}

impl WeightDecay {
    /// Draws features `x ~ N(0, I)`, a teacher `w ~ N(0, I)`, targets `y = x.w + noise * e`
    /// (squared) or `y = 1[x.w + noise * e > 0]` (logistic), `e ~ N(0, 1)`; `phi_init = 0`.
    pub fn random(spec: &WeightDecaySpec, seed: u64) -> Result<Self> {
        for (name, v) in [
            ("features", spec.features),
            ("train", spec.train),
            ("validation", spec.validation),
        ] {
            if v == 0 {
                return Err(CmlError::invalid(name, v, "a size must be at least 1"));
            }
        }
        let mut rng = seeded(seed);
        let p = spec.features;
        let teacher = normal_vector(&mut rng, p);
        let mut split = |n: usize| {
            let x = normal_matrix(&mut rng, n, p);
            let y = Vector::from_iterator(
                n,
                (0..n).map(|j| {
                    let z = x.row(j).transpose().dot(&teacher) + spec.noise * normal(&mut rng);
                    match spec.loss {
                        DataLoss::Squared => z,
                        DataLoss::Logistic => f64::from(u8::from(z > 0.0)),
                    }
                }),
            );
            (x, y)
        };
        let (x_train, y_train) = split(spec.train);
        let (x_val, y_val) = split(spec.validation);
        let theta = Vector::from_iterator(
            p,
            (0..p).map(|_| spec.log_decay + spec.log_decay_spread * normal(&mut rng)),
        );
        Self::from_parts(spec.loss, x_train, y_train, x_val, y_val, theta, Vector::zeros(p))
    }

    fn from_parts(
        loss: DataLoss,
        x_train: DMatrix<f64>,
        y_train: Vector,
        x_val: DMatrix<f64>,
        y_val: Vector,
        theta: Vector,
        phi_init: Vector,
    ) -> Result<Self> {
        let t = Tensors {
            x_train: matrix_to_tensor(&x_train)?,
            y_train: to_tensor(&y_train)?,
            x_val: matrix_to_tensor(&x_val)?,
            y_val: to_tensor(&y_val)?,
            theta: to_tensor(&theta)?,
            phi_init: to_tensor(&phi_init)?,
        };
        Ok(WeightDecay {
            loss,
            x_train,
            y_train,
            x_val,
            y_val,
            theta,
            phi_init,
            t,
        })
    }

    pub fn from_instance(mut r: InstanceReader, loss: DataLoss) -> Result<Self> {
        let x_train = r.matrix("x_train", None, None)?;
        let p = x_train.ncols();
        if x_train.nrows() == 0 || p == 0 {
            return Err(r.error("array 'x_train' is empty; need at least one example and one feature".into()));
        }
        let y_train = r.vector("y_train", Some(x_train.nrows()))?;
        let x_val = r.matrix("x_val", None, Some(p))?;
        if x_val.nrows() == 0 {
            return Err(r.error("array 'x_val' is empty; need at least one validation example".into()));
        }
        let y_val = r.vector("y_val", Some(x_val.nrows()))?;
        let theta = r.vector("theta", Some(p))?;
        let phi_init = r.vector("phi_init", Some(p))?;
        if loss == DataLoss::Logistic {
            for (name, y) in [("y_train", &y_train), ("y_val", &y_val)] {
                if let Some((i, v)) = y.iter().enumerate().find(|(_, v)| **v != 0.0 && **v != 1.0) {
                    return Err(r.error(format!(
                        "array '{name}' holds {v} at index {i}; logistic labels must be 0 or 1"
                    )));
                }
            }
        }
        r.finish()?;
        Self::from_parts(loss, x_train, y_train, x_val, y_val, theta, phi_init)
    }

    fn gram(x: &DMatrix<f64>) -> DMatrix<f64> {
        x.transpose() * x / x.nrows() as f64
    }
}

impl BilevelProblem for WeightDecay {
    fn dims(&self) -> Dims {
        Dims {
            phi: self.x_train.ncols(),
            theta: self.x_train.ncols(),
        }
    }

    fn inner_loss(&self, phi: &Tensor, theta: &Tensor) -> candle_core::Result<Tensor> {
        let data = self.loss.mean_loss(&self.t.x_train, &self.t.y_train, phi)?;
        let decay = (theta.exp()? * phi.sqr()?)?.sum_all()? * 0.5;
        data + decay?
    }

    fn outer_loss(&self, phi: &Tensor, _theta: &Tensor) -> candle_core::Result<Tensor> {
        self.loss.mean_loss(&self.t.x_val, &self.t.y_val, phi)
    }

    fn initial_phi(&self, _theta: &Tensor) -> Result<Tensor> {
        Ok(self.t.phi_init.clone())
    }

    /// Squared: the Hessian `X^T X / n + diag(exp theta) + beta X_v^T X_v / n_v` is constant,
    /// so its spectrum is exact. Logistic: the data Hessian `X^T D X / n` has `0 <= D <= 1/4`,
    /// which bounds the spectrum from both sides.
    fn curvature(&self, theta: &Tensor, beta: f64) -> Result<Option<Curvature>> {
        let decay = DMatrix::from_diagonal(&to_dvector(theta)?.map(f64::exp));
        let k = self.loss.curvature_bound();
        let train = Self::gram(&self.x_train) * k;
        let val = Self::gram(&self.x_val) * k;
        let (lower, upper) = match self.loss {
            DataLoss::Squared => {
                let h = &train + &decay + &val * beta;
                (h.clone(), h)
            }
            DataLoss::Logistic => (
                &decay + &val * beta.min(0.0),
                &train + &decay + &val * beta.max(0.0),
            ),
        };
        Ok(Some(Curvature {
            strong_convexity: spectrum_bounds(&lower).0,
            smoothness: spectrum_bounds(&upper).1,
        }))
    }

    fn closed_form(&self) -> Option<&dyn ClosedForm> {
        match self.loss {
            DataLoss::Squared => Some(self),
            DataLoss::Logistic => None,
        }
    }
}

impl ProblemInstance for WeightDecay {
    fn name(&self) -> &'static str {
        self.loss.problem_name()
    }

    fn theta(&self) -> &Tensor {
        &self.t.theta
    }
}

impl ToInstanceFile for WeightDecay {
    fn to_instance(&self) -> InstanceFile {
        let mut f = InstanceFile::new(self.name(), None);
        f.push_matrix("x_train", &self.x_train);
        f.push_vector("y_train", &self.y_train);
        f.push_matrix("x_val", &self.x_val);
        f.push_vector("y_val", &self.y_val);
        f.push_vector("theta", &self.theta);
        f.push_vector("phi_init", &self.phi_init);
        f
    }
}

impl ClosedForm for WeightDecay {
    /// Normal equations of the squared phase loss:
    /// `(X^T X/n + diag(e^theta) + beta X_v^T X_v/n_v) phi = X^T y/n + beta X_v^T y_v/n_v`.
    fn phase_solution(&self, theta: &Vector, beta: f64) -> Result<Vector> {
        let n = self.x_train.nrows() as f64;
        let nv = self.x_val.nrows() as f64;
        let h = Self::gram(&self.x_train)
            + DMatrix::from_diagonal(&theta.map(f64::exp))
            + Self::gram(&self.x_val) * beta;
        let rhs =
            self.x_train.transpose() * &self.y_train / n + self.x_val.transpose() * &self.y_val * (beta / nv);
        spd_solve(&h, &rhs, &format!("the ridge phase Hessian at beta = {beta}"))
    }

    /// `d2_{theta_i phi_j} L_in = delta_ij exp(theta_i) phi_i`, so MATH.md §1 gives
    /// `dJ/dtheta_i = -exp(theta_i) phi*_i (H^{-1} d_phi L_out)_i`.
    fn meta_gradient(&self, theta: &Vector) -> Result<Vector> {
        let phi = self.phase_solution(theta, 0.0)?;
        let nv = self.x_val.nrows() as f64;
        let outer = self.x_val.transpose() * (&self.x_val * &phi - &self.y_val) / nv;
        let h = Self::gram(&self.x_train) + DMatrix::from_diagonal(&theta.map(f64::exp));
        let v = spd_solve(&h, &outer, "the ridge inner Hessian")?;
        Ok(Vector::from_fn(theta.len(), |i, _| {
            -theta[i].exp() * phi[i] * v[i]
        }))
    }
}
