//! The paper's §5.4 (docs/SPIKING.md): a recurrent spiking network whose own learning rule is
//! e-prop, meta-learned by the contrastive rule on few-shot sinusoid regression.

pub mod network;
pub mod problem;

pub use network::{
    Accumulation, NetworkSpec, Samples, Spike, SpikeInputs, SpikingKernel, SpikingNet, Surrogate,
};
pub use problem::{INPUT_RANGE, PULL_STRENGTH, SpikingSynapse, SpikingTask};
