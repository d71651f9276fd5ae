//! Bilevel problems (MATH.md §1): an inner loss `L_in(phi, theta)`, an outer loss
//! `L_out(phi, theta)`, the initial fast parameters, and what is known about curvature.
//!
//! `phi` and `theta` are flat 1-D f64 tensors; a structured model unflattens them itself.

pub mod instance;
pub mod modulation;
pub mod quadratic;
pub mod regularised_mlp;
pub mod sinusoid;
pub mod supervised;
pub mod synapse;
pub mod weight_decay;

use crate::error::Result;
use crate::linalg::Vector;
use candle_core::Tensor;
pub use instance::InstanceFile;
pub use modulation::{Modulation, ModulationSpec};
pub use quadratic::{Quadratic, QuadraticSpec};
pub use regularised_mlp::RegularisedMlp;
pub use sinusoid::SinusoidTask;
pub use supervised::{SupervisedTask, TaskTensors};
pub use synapse::{Synapse, SynapseSpec};
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

/// A bilevel problem: the inner and outer losses and where the free phase starts. Losses return
/// scalar tensors so Candle can differentiate them (gradients, Hessian-vector and mixed
/// products, dense Hessians: `autodiff`, counted by `oracle`).
///
/// Beyond that, a problem may offer capabilities, each optional, in the style of argmin's
/// small traits: known curvature (step sizes and certified distances), a hand-derived
/// first-order path ([`crate::engine::FirstOrderPhase`], the fast engine), closed-form phase
/// solutions ([`ClosedForm`]). Its name and stored meta-parameters belong to a
/// [`ProblemInstance`], its instance file to [`ToInstanceFile`].
pub trait BilevelProblem: Send + Sync {
    fn dims(&self) -> Dims;
    fn inner_loss(&self, phi: &Tensor, theta: &Tensor) -> candle_core::Result<Tensor>;
    fn outer_loss(&self, phi: &Tensor, theta: &Tensor) -> candle_core::Result<Tensor>;
    /// Where the free phase starts; may depend on `theta`.
    fn initial_phi(&self, theta: &Tensor) -> Result<Tensor>;
    /// Curvature of `L_beta` over all `phi`, where known.
    fn curvature(&self, _theta: &Tensor, _beta: f64) -> Result<Option<Curvature>> {
        Ok(None)
    }
    /// The hand-derived first-order path (the fast engine), where the problem has one.
    fn first_order(&self) -> Option<&dyn crate::engine::FirstOrderPhase> {
        None
    }
    /// Hand-derived second-order products on the fast engine's workspace, where the problem
    /// has them.
    fn second_order(&self) -> Option<&dyn crate::engine::SecondOrderPhase> {
        None
    }
    /// Closed-form phase solutions and meta-gradient, where they exist.
    fn closed_form(&self) -> Option<&dyn ClosedForm> {
        None
    }
    /// Why the losses' derivatives are a surrogate's, where they are: a loss that is not
    /// differentiable (a Heaviside spike) whose gradient a pseudo-derivative stands in for. There
    /// is then no exact meta-gradient to compare with, and second-order products would
    /// differentiate the stand-in, so the estimators and references that need them are refused.
    fn surrogate_derivative(&self) -> Option<&'static str> {
        None
    }
}

/// A problem instance: a bilevel problem with its name and the meta-parameters it is evaluated
/// at (what the command line, sweeps and meta-training hand to the estimators). `Any` lets a
/// caller that needs one concrete problem (the quadratic's bound constants) ask for it.
pub trait ProblemInstance: BilevelProblem + std::any::Any {
    /// The registry name (`quadratic`, `ridge`, `logistic`, ...) or the user's label.
    fn name(&self) -> &'static str;
    /// The meta-parameters stored with the instance, where meta-gradients are evaluated.
    fn theta(&self) -> &Tensor;
}

/// Writing an instance file: every array and scalar the instance is built from (the registry
/// reads it back).
pub trait ToInstanceFile {
    fn to_instance(&self) -> InstanceFile;
}

/// What the registry builds: an instance that can be written to its file.
pub trait RegisteredProblem: ProblemInstance + ToInstanceFile {}

impl<P: ProblemInstance + ToInstanceFile> RegisteredProblem for P {}

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
