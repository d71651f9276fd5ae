//! The numerical core: the problems and their data, the inner solvers, every estimator, the
//! exact references, the fast engine and the bound. It imports nothing from the layers above
//! (`run`, `report`, `experiments`, `cli`; `tests/architecture.rs`).

pub mod adam;
pub mod autodiff;
pub mod bandit;
pub mod bound;
pub mod digits;
pub mod engine;
pub mod error;
pub mod estimator;
pub mod ground_truth;
pub mod implicit_function;
pub mod inner;
pub mod io;
pub mod linalg;
pub mod linear_solve;
pub mod mlp;
pub mod optimizer;
pub mod oracle;
pub mod parallel;
pub mod problem;
pub mod rng;
pub mod smoothness;
pub mod spiking;
