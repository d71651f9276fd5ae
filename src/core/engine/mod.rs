//! The fast engine (docs/ENGINE.md): hand-derived gradients of a phase loss
//! `L_beta = L_in + beta L_out` on preallocated buffers, for the inner loops, which the
//! contrastive rule needs only first derivatives for, and hand-derived Hessian-vector and mixed
//! products for the estimators that need second order. Candle autodiff stays the reference;
//! property tests check this path against it.
//!
//! A problem gets the fast path by implementing [`FirstOrderPhase`]: a workspace for one phase
//! (meta-parameters fixed), and the phase loss with its gradients into caller buffers. It gets
//! fast second-order products (BPTT's reverse loop, CG, Neumann, T1-T2, the error bar, the
//! smoothness estimate) by also implementing [`SecondOrderPhase`].

pub mod matmul;
pub mod mlp_kernel;
pub mod reduce;
pub mod tanh;

use crate::error::{CmlError, Result};
use std::any::Any;

/// The engine selector (`--engine`): which implementation computes inner-loop gradients and
/// second-order products. The fast engine itself is this module's kernels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineChoice {
    /// The fast path where the problem has one, Candle otherwise.
    #[default]
    Auto,
    /// Candle autodiff everywhere (the reference).
    Candle,
    /// The fast path; an error on a problem without a first-order one (second-order products
    /// fall back to Candle on a problem without a [`SecondOrderPhase`]).
    Fast,
}

impl EngineChoice {
    pub const ALL: [EngineChoice; 3] = [EngineChoice::Auto, EngineChoice::Candle, EngineChoice::Fast];

    pub fn name(self) -> &'static str {
        match self {
            EngineChoice::Auto => "auto",
            EngineChoice::Candle => "candle",
            EngineChoice::Fast => "fast",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| CmlError::UnknownName {
                kind: "engine".into(),
                name: s.into(),
                allowed: Self::ALL.map(EngineChoice::name).join(", "),
            })
    }
}

/// A model's buffers for one phase: whatever its [`FirstOrderPhase`] implementation needs,
/// allocated once by [`FirstOrderPhase::workspace`] and reused by every step.
pub type Workspace = Box<dyn Any + Send>;

/// A phase loss with hand-derived first derivatives (a capability of a bilevel problem).
pub trait FirstOrderPhase: Send + Sync {
    /// Buffers for phases at meta-parameters `theta` (fixed during a phase, so anything that
    /// depends on `theta` alone, such as `exp(rho)`, is computed here once).
    fn workspace(&self, theta: &[f64]) -> Result<Workspace>;

    /// Returns `L_beta(phi, theta)`, writes `d_phi L_beta` into `grad_phi`, and `d_theta L_beta`
    /// into `grad_theta` when given. No heap allocation.
    fn phase_gradient(
        &self,
        workspace: &mut Workspace,
        phi: &[f64],
        beta: f64,
        grad_phi: &mut [f64],
        grad_theta: Option<&mut [f64]>,
    ) -> f64;
}

/// Hand-derived second-order products of a phase loss (a capability of a bilevel problem,
/// beside [`FirstOrderPhase`], whose workspace it shares): forward-over-reverse, docs/ENGINE.md §4.
/// Each call is one second-order product in the cost ledger, as a double backward is.
pub trait SecondOrderPhase: FirstOrderPhase {
    /// Writes `d2_{phi phi} L_beta v` into `hv` and, when given, the mixed product
    /// `d2_{theta phi} L_beta v` (one entry per meta-parameter) into `mixed`. No heap allocation.
    fn hessian_vector_product(
        &self,
        workspace: &mut Workspace,
        phi: &[f64],
        beta: f64,
        v: &[f64],
        hv: &mut [f64],
        mixed: Option<&mut [f64]>,
    );

    /// Writes the transposed mixed product `d2_{phi theta} L_beta u` (one entry per fast
    /// parameter) for a direction `u` in the meta-parameters. No heap allocation.
    fn mixed_transpose_product(
        &self,
        workspace: &mut Workspace,
        phi: &[f64],
        beta: f64,
        u: &[f64],
        out: &mut [f64],
    );
}

/// The workspace of a model, checked to be the one its `workspace` made.
pub fn downcast<T: 'static>(workspace: &mut Workspace) -> &mut T {
    workspace
        .downcast_mut::<T>()
        .expect("a workspace is used only with the model that made it")
}
