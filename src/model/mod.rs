//! The paper's models of how a brain could meta-learn, as bilevel problems on few-shot
//! sinusoid regression (MATH.md §5).

pub mod mlp;
pub mod modulation;
pub mod sinusoid;
pub mod synapse;

pub use mlp::Mlp;
pub use modulation::{Modulation, ModulationSpec};
pub use sinusoid::SinusoidTask;
pub use synapse::{Synapse, SynapseSpec};
