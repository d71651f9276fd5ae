//! Running the core: the registry of names, sweeps and their fits, the meta-training executor
//! and its drivers, and the statistics over seeds. It imports only the core.

pub mod executor;
pub mod fit;
pub mod meta_training;
pub mod registry;
pub mod stats;
pub mod sweep;
