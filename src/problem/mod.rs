//! Bilevel problems (MATH.md §1): an inner loss `L_in(phi, theta)`, an outer loss
//! `L_out(phi, theta)`, the initial fast parameters, and what is known about curvature.
//!
//! `phi` and `theta` are flat 1-D f64 tensors; a structured model unflattens them itself.

pub mod instance;
pub mod modulation;
pub mod quadratic;
pub mod regularised_mlp;
pub mod sinusoid;
pub mod synapse;
pub mod task;
pub mod weight_decay;

use crate::error::Result;
use crate::linalg::Vector;
use candle_core::Tensor;
pub use instance::InstanceFile;
pub use modulation::{Modulation, ModulationSpec};
pub use quadratic::{Quadratic, QuadraticSpec};
pub use regularised_mlp::RegularisedMlp;
pub use sinusoid::SinusoidTask;
pub use synapse::{Synapse, SynapseSpec};
pub use task::{SupervisedTask, TaskTensors};
pub use weight_decay::{DataLoss, WeightDecay, WeightDecaySpec};

/// Sizes of the fast and meta-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Dims {
    pub phi: usize,
    pub theta: usize,
}

/// Curvature of a phase loss `L_beta = L_in + beta L_out` in `phi`, valid for every `phi`:
/// `strong_convexity <= eigenvalues of d2_{phi phi} L_beta <= smoothness`.
/// Exact for quadratic losses, bounds otherwise.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Curvature {
    pub strong_convexity: f64,
    pub smoothness: f64,
}

/// A bilevel problem instance. Losses return scalar tensors so Candle can differentiate them.
pub trait BilevelProblem: Send + Sync {
    /// The registry name (`quadratic`, `ridge`, `logistic`, ...).
    fn name(&self) -> &'static str;
    fn dims(&self) -> Dims;
    fn inner_loss(&self, phi: &Tensor, theta: &Tensor) -> candle_core::Result<Tensor>;
    fn outer_loss(&self, phi: &Tensor, theta: &Tensor) -> candle_core::Result<Tensor>;
    /// Where the free phase starts; may depend on `theta`.
    fn initial_phi(&self, theta: &Tensor) -> Result<Tensor>;
    /// The meta-parameters stored with the instance, where meta-gradients are evaluated.
    fn theta(&self) -> &Tensor;
    /// Curvature of `L_beta` over all `phi`, where known.
    fn curvature(&self, _theta: &Tensor, _beta: f64) -> Result<Option<Curvature>> {
        Ok(None)
    }
    /// The hand-derived first-order path (the fast engine), where the problem has one.
    fn first_order(&self) -> Option<&dyn crate::engine::FirstOrderPhase> {
        None
    }
    /// Closed-form phase solutions and meta-gradient, where they exist.
    fn closed_form(&self) -> Option<&dyn ClosedForm> {
        None
    }
    /// The quadratic problem, whose error-bound constants are all computable (`theory`).
    fn as_quadratic(&self) -> Option<&Quadratic> {
        None
    }
    /// Every array and scalar the instance is built from.
    fn to_instance(&self) -> InstanceFile;
}

/// Problems with closed-form solutions (MATH.md §5), used as independent references.
pub trait ClosedForm {
    /// `phi*_beta = argmin_phi L_in + beta L_out`.
    fn phase_solution(&self, theta: &Vector, beta: f64) -> Result<Vector>;
    /// `dJ/dtheta` at `phi*_0`.
    fn meta_gradient(&self, theta: &Vector) -> Result<Vector>;
}

/// The phase loss `L_beta = L_in + beta L_out` (MATH.md §2) as a differentiable function.
pub fn phase_loss(
    problem: &dyn BilevelProblem,
    beta: f64,
) -> impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> + '_ {
    move |phi, theta| {
        let inner = problem.inner_loss(phi, theta)?;
        if beta == 0.0 {
            Ok(inner)
        } else {
            inner + (problem.outer_loss(phi, theta)? * beta)?
        }
    }
}

/// Matrix-vector product of a 2-D tensor with a 1-D tensor.
pub(crate) fn matvec(m: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    m.matmul(&v.unsqueeze(1)?)?.squeeze(1)
}
