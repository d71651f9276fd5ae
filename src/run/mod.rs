//! Running the core: the registry of names, sweeps and their fits, the meta-training executor
//! and its drivers, the statistics over seeds, experiments as independent units and the
//! validation searches they make their choices by. It imports only the core.

pub mod chain;
pub mod choice;
pub mod executor;
pub mod fit;
pub mod meta_training;
pub mod protocol;
pub mod registry;
pub mod stats;
pub mod sweep;
pub mod units;
