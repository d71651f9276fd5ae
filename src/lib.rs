//! `cml`: a testbed for the contrastive meta-learning rule (Zucchet et al., NeurIPS 2022).
//!
//! The contrastive estimator runs the inner learning process twice, a free phase on the inner
//! loss and a nudged phase on the inner loss plus `beta` times the outer loss, and estimates the
//! meta-gradient from the difference of the meta-parameter partial derivatives at the two end
//! points. This crate runs it beside exact references computed by Candle autodiff.
//! Formulas: docs/MATH.md (section numbers in comments refer to it).
//!
//! One estimate beside the exact meta-gradient, by name from the registry:
//!
//! ```
//! use cml::estimator::{EstimatorParams, Variant};
//! use cml::inner::GdParams;
//! use cml::linalg::relative_error;
//!
//! let problem = cml::registry::draw_problem("quadratic", 0)?;
//! let phases = GdParams { max_steps: 10_000, tolerance: 1e-12, ..GdParams::default() };
//! let params = EstimatorParams {
//!     variant: Variant::Symmetric,
//!     beta: 1e-3,
//!     free: phases,
//!     nudged: phases,
//!     solver_steps: 10,
//!     neumann_alpha: None,
//!     truncation: 10,
//! };
//! let spec = cml::registry::estimator("contrastive", &params)?;
//! let estimate = spec.estimator().estimate(problem.as_ref(), problem.theta())?;
//! let exact = cml::ground_truth::exact_meta_gradient(problem.as_ref(), problem.theta())?;
//! // Converged phases: the symmetric rule's error is O(beta^2).
//! assert!(relative_error(&estimate.gradient, &exact.meta_gradient) < 1e-4);
//! # Ok::<(), cml::CmlError>(())
//! ```

// The floors, each importing only the ones below it (`tests/architecture.rs`): the numerical
// core, running it (registry, sweeps, meta-training, statistics, experiments as units and their
// validation searches), reporting (plots, the write-up's template), the experiments (the figure
// jobs and the write-up), the command line.
#[cfg(feature = "cli")]
pub mod cli;
pub mod core;
#[cfg(feature = "figures")]
pub mod experiments;
#[cfg(feature = "figures")]
pub mod report;
pub mod run;

// Every module by its own name (`cml::estimator`, `cml::registry`, ...), wherever its floor.
pub use crate::core::{
    adam, autodiff, bandit, bound, digits, engine, error, estimator, ground_truth, implicit_function, inner,
    io, linalg, linear_solve, mlp, optimizer, oracle, parallel, problem, rng, smoothness, spiking,
};
pub use crate::run::{chain, choice, executor, fit, meta_training, protocol, registry, stats, sweep, units};

pub use error::{CmlError, Result};

/// Keeps glibc from mapping and unmapping every buffer over 128 KiB on each tensor op (the
/// default thresholds): measured 1.4x faster Candle inner steps on the complex synapse
/// (docs/CANDLE.md). The same as `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...`,
/// set from inside the process. A no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before heavy allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}
