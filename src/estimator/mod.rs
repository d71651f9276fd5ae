//! Meta-gradient estimators. Each takes a problem and `theta` and returns an [`Estimate`]:
//! the meta-gradient estimate, what it cost, and a report of every inner phase it ran.

pub mod contrastive;
pub mod implicit;

use crate::error::{CmlError, Result};
use crate::inner::GdInfo;
use crate::linalg::Vector;
use crate::oracle::Cost;
use crate::problem::BilevelProblem;
use candle_core::Tensor;
pub use contrastive::{Contrastive, Variant};
pub use implicit::ImplicitDense;

/// An estimate of `dJ/dtheta` and its price.
#[derive(Debug, Clone)]
pub struct Estimate {
    pub gradient: Vector,
    pub cost: Cost,
    /// Every gradient-descent phase run, in order (free phase first).
    pub phases: Vec<GdInfo>,
}

/// A meta-gradient estimator: a value holding its parameters.
pub trait MetaGradientEstimator {
    /// A short description with the parameters, e.g. `contrastive standard (beta = 0.001)`.
    fn describe(&self) -> String;
    fn estimate(&self, problem: &dyn BilevelProblem, theta: &Tensor) -> Result<Estimate>;
}

/// The estimator names the command line accepts.
pub const ESTIMATOR_NAMES: &[&str] = &["contrastive", "implicit"];

pub fn unknown_estimator(name: &str) -> CmlError {
    CmlError::UnknownName {
        kind: "estimator".into(),
        name: name.into(),
        allowed: ESTIMATOR_NAMES.join(", "),
    }
}
