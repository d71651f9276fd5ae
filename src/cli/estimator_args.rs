//! The estimator flags shared by `grad`, `train` and `sweep`.

use crate::engine::EngineChoice;
use crate::estimator::{EstimatorParams, EstimatorSpec, Variant};
use crate::inner::GdParams;
use crate::optimizer::Optimizer;
use crate::{CmlError, Result};

#[derive(clap::Args, Debug, Clone)]
pub struct EstimatorArgs {
    #[arg(long, default_value = "contrastive", help = format!("Estimator: {}", crate::registry::estimator_names()))]
    pub estimator: String,
    /// Contrastive variant: standard, symmetric or second-order-forward (reference-code-symmetric:
    /// an ablation reproducing the authors' code, whose -beta phase drops the outer loss).
    #[arg(long, default_value = "standard")]
    pub variant: String,
    /// Nudging strength beta (non-zero), or `auto`: chosen by pilot phases to minimise the
    /// estimate's error bar (docs/ERROR_BAR.md).
    #[arg(long, default_value = "1e-3", allow_hyphen_values = true)]
    pub beta: BetaArg,
    /// Free-phase step budget (the K of bptt and tbptt).
    #[arg(long, default_value_t = 1000, allow_hyphen_values = true)]
    pub free_steps: i64,
    /// Step budget of each nudged phase.
    #[arg(long, default_value_t = 500, allow_hyphen_values = true)]
    pub nudged_steps: i64,
    /// Free-phase step size. Default: 1 / L where the problem bounds the smoothness L (quadratic,
    /// ridge, logistic); elsewhere (synapse, modulation) 1 / (2 L^), L^ the largest curvature at the
    /// phase's start by power iteration.
    #[arg(long, allow_hyphen_values = true)]
    pub free_step_size: Option<f64>,
    /// Nudged-phase step size. Default: the free-phase step size if one is given, else chosen
    /// for the nudged loss as for the free phase.
    #[arg(long, allow_hyphen_values = true)]
    pub nudged_step_size: Option<f64>,
    /// Stop a phase once its gradient norm is at most this (0: run the whole budget).
    #[arg(long, default_value_t = 1e-12, allow_hyphen_values = true)]
    pub tolerance: f64,
    /// Conjugate-gradient iterations, or Neumann terms.
    #[arg(long, default_value_t = 10, allow_hyphen_values = true)]
    pub solver_steps: i64,
    /// Neumann step alpha. Default: 1 / L where the smoothness L is known, else 1 / (2 L^) with L^
    /// by power iteration at the free solution.
    #[arg(long, allow_hyphen_values = true)]
    pub neumann_alpha: Option<f64>,
    /// Steps walked back by tbptt.
    #[arg(long, default_value_t = 10, allow_hyphen_values = true)]
    pub truncation: i64,
    /// Inner-loop gradients: auto (the fast hand-derived path where the problem has one: synapse,
    /// modulation, the weight-decay MLP), candle (autodiff, the reference) or fast.
    #[arg(long, default_value = "auto")]
    pub engine: String,
    /// Free-phase optimiser: gd, momentum, nesterov or adam (PyTorch's rules; docs/STEP_SIZE.md).
    #[arg(long, default_value = "gd")]
    pub free_optimizer: String,
    /// Nudged-phase optimiser (a fresh state for each nudged phase): gd, momentum, nesterov or adam.
    #[arg(long, default_value = "gd")]
    pub nudged_optimizer: String,
    /// Momentum of the momentum and nesterov optimisers.
    #[arg(long, default_value_t = 0.9, allow_hyphen_values = true)]
    pub momentum: f64,
    /// Run an estimator whose assumptions do not hold for the problem (e.g. first-order MAML where
    /// theta does not set the initialisation), with a warning instead of an error.
    #[arg(long)]
    pub allow_inapplicable: bool,
}

/// `--beta`: a number, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BetaArg {
    Value(f64),
    Auto,
}

impl std::str::FromStr for BetaArg {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "auto" {
            return Ok(BetaArg::Auto);
        }
        s.parse::<f64>()
            .map(BetaArg::Value)
            .map_err(|_| format!("'{s}' is neither a number nor auto"))
    }
}

/// A count from the command line: a whole number >= 1.
pub fn at_least_one(name: &str, value: i64) -> Result<usize> {
    usize::try_from(value)
        .ok()
        .filter(|&v| v >= 1)
        .ok_or_else(|| CmlError::invalid(name, value, "must be a whole number >= 1"))
}

impl EstimatorArgs {
    pub fn spec(&self) -> Result<EstimatorSpec> {
        let engine = EngineChoice::parse(&self.engine)?;
        let phase = |name: &str, steps, step_size, optimizer: &str| -> Result<GdParams> {
            Ok(GdParams {
                step_size,
                max_steps: at_least_one(&format!("{name} step budget"), steps)?,
                tolerance: self.tolerance,
                engine,
                optimizer: Optimizer::from_name(optimizer, self.momentum)?,
                ..GdParams::default()
            })
        };
        let params = EstimatorParams {
            variant: Variant::parse(&self.variant)?,
            // `auto` starts its pilots from `error_bar::AUTO_START` (set by `with_auto_beta`).
            beta: match self.beta {
                BetaArg::Value(b) => b,
                BetaArg::Auto => crate::estimator::error_bar::AUTO_START,
            },
            free: phase(
                "free phase",
                self.free_steps,
                self.free_step_size,
                &self.free_optimizer,
            )?,
            // A nudged phase without its own step size takes the free phase's.
            nudged: phase(
                "nudged phase",
                self.nudged_steps,
                self.nudged_step_size.or(self.free_step_size),
                &self.nudged_optimizer,
            )?,
            solver_steps: at_least_one("solver steps", self.solver_steps)?,
            neumann_alpha: self.neumann_alpha,
            truncation: at_least_one("truncation", self.truncation)?,
        };
        let spec = crate::registry::estimator(&self.estimator, &params)?;
        match self.beta {
            BetaArg::Value(_) => Ok(spec),
            BetaArg::Auto => spec.with_auto_beta(),
        }
    }
}
