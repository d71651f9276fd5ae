//! One error type for the whole crate: every failure names the bad value and what is allowed.

use std::path::PathBuf;

/// Everything that can go wrong in `cml`. Errors are results, never panics.
#[derive(Debug, thiserror::Error)]
pub enum CmlError {
    /// Candle is detaching gradients, so every second derivative would be silently wrong.
    #[error(
        "second-order autodiff is off: d2/dx2 of x^4 at x = 1 came out {measured} instead of 12. \
         Candle detaches gradients unless CANDLE_GRAD_DO_NOT_DETACH is set to a non-empty value \
         other than 0 before the thread's first backward pass; set CANDLE_GRAD_DO_NOT_DETACH=1 \
         (cargo does so through .cargo/config.toml, the cml binary when the variable is unset)"
    )]
    SecondOrderOff { measured: String },

    /// A parameter outside its allowed range.
    #[error("invalid {name} = {value}: {allowed}")]
    InvalidParameter {
        name: String,
        value: String,
        allowed: String,
    },

    /// The inner loop produced NaN/infinity or a growing loss.
    #[error("{phase} diverged at step {step}: {reason}")]
    Diverged {
        phase: String,
        step: usize,
        reason: String,
    },

    /// A matrix that must be symmetric positive definite is not (no strong convexity).
    #[error("{what} is not positive definite: {reason}")]
    NotPositiveDefinite { what: String, reason: String },

    /// Newton's method did not reach machine precision.
    #[error("{what} did not converge: {reason}")]
    NotConverged { what: String, reason: String },

    /// A malformed, inconsistent or non-finite instance file.
    #[error("instance {source_name}: {reason}")]
    Instance { source_name: String, reason: String },

    /// An unknown name (problem, estimator, variant).
    #[error("unknown {kind} '{name}': allowed are {allowed}")]
    UnknownName {
        kind: String,
        name: String,
        allowed: String,
    },

    /// An estimator whose assumptions do not hold for the problem.
    #[error("estimator does not apply: {reason}")]
    Inapplicable { reason: String },

    /// An exact reference asked of a problem whose derivatives are a surrogate's.
    #[error("no exact reference: on this problem {reason}")]
    NoExactReference { reason: String },

    /// A meta-step's estimate failed (the error that stopped it is kept whole).
    #[error("meta-step {step}: {source}")]
    MetaStep { step: usize, source: Box<CmlError> },

    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, CmlError>;

impl CmlError {
    /// Shorthand for [`CmlError::InvalidParameter`].
    pub fn invalid(name: impl Into<String>, value: impl ToString, allowed: impl Into<String>) -> Self {
        CmlError::InvalidParameter {
            name: name.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
}
