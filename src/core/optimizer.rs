//! Inner optimisers of a phase: gradient descent, SGD with momentum or Nesterov momentum, and
//! Adam, with PyTorch's update rules (the paper's code runs its phases with them; Adam through
//! the crate's one implementation, `adam::AdamRule`, the same rule in candle-nn's order of operations). Each phase
//! starts with a fresh state, as the paper's code does for every nudged phase.
//!
//! With gradient `g_k`, step size `lr`:
//! - gradient descent: `phi -= lr g`;
//! - momentum: `v = mu v + g`, `phi -= lr v`;
//! - Nesterov: `v = mu v + g`, `phi -= lr (g + mu v)`;
//! - Adam: `m = b1 m + (1 - b1) g`, `s = b2 s + (1 - b2) g^2`,
//!   `phi -= lr (m / (1 - b1^k)) / (sqrt(s / (1 - b2^k)) + eps)` at step `k = 1, 2, ...`.

use crate::adam::AdamRule;
use crate::error::{CmlError, Result};

/// The update rule of a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Optimizer {
    #[default]
    GradientDescent,
    Momentum {
        momentum: f64,
    },
    Nesterov {
        momentum: f64,
    },
    Adam {
        beta1: f64,
        beta2: f64,
        epsilon: f64,
    },
}

/// The names `--free-optimizer` and `--nudged-optimizer` take.
pub const OPTIMIZER_NAMES: &str = "gd, momentum, nesterov, adam";

/// Adam's step size where none is given (its authors' and PyTorch's default).
pub const ADAM_DEFAULT_STEP: f64 = 1e-3;

impl Optimizer {
    /// `name` with momentum `mu` where it applies; Adam takes PyTorch's defaults (0.9, 0.999, 1e-8).
    pub fn from_name(name: &str, mu: f64) -> Result<Self> {
        let opt = match name {
            "gd" => Optimizer::GradientDescent,
            "momentum" => Optimizer::Momentum { momentum: mu },
            "nesterov" => Optimizer::Nesterov { momentum: mu },
            "adam" => Optimizer::Adam {
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-8,
            },
            _ => {
                return Err(CmlError::UnknownName {
                    kind: "optimizer".into(),
                    name: name.into(),
                    allowed: OPTIMIZER_NAMES.into(),
                });
            }
        };
        opt.validate()?;
        Ok(opt)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::GradientDescent => "gd",
            Optimizer::Momentum { .. } => "momentum",
            Optimizer::Nesterov { .. } => "nesterov",
            Optimizer::Adam { .. } => "adam",
        }
    }

    pub fn validate(&self) -> Result<()> {
        let unit = |name: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(CmlError::invalid(name, v, "must be in [0, 1)"))
            }
        };
        match *self {
            Optimizer::GradientDescent => Ok(()),
            Optimizer::Momentum { momentum } | Optimizer::Nesterov { momentum } => unit("momentum", momentum),
            Optimizer::Adam {
                beta1,
                beta2,
                epsilon,
            } => {
                unit("Adam beta1", beta1)?;
                unit("Adam beta2", beta2)?;
                if epsilon.is_finite() && epsilon > 0.0 {
                    Ok(())
                } else {
                    Err(CmlError::invalid(
                        "Adam epsilon",
                        epsilon,
                        "must be finite and > 0",
                    ))
                }
            }
        }
    }
}

/// The optimiser's state over one phase, sized for its parameters once.
#[derive(Debug, Clone)]
pub struct OptimizerState {
    rule: Optimizer,
    /// Velocity (momentum, Nesterov) or first moment (Adam).
    first: Vec<f64>,
    /// Second moment (Adam).
    second: Vec<f64>,
    steps: i32,
}

impl OptimizerState {
    pub fn new(rule: Optimizer, n: usize) -> Self {
        let (a, b) = match rule {
            Optimizer::GradientDescent => (0, 0),
            Optimizer::Momentum { .. } | Optimizer::Nesterov { .. } => (n, 0),
            Optimizer::Adam { .. } => (n, n),
        };
        OptimizerState {
            rule,
            first: vec![0.0; a],
            second: vec![0.0; b],
            steps: 0,
        }
    }

    pub fn rule(&self) -> Optimizer {
        self.rule
    }

    /// One update of `phi` with gradient `g` (no allocation).
    pub fn apply(&mut self, phi: &mut [f64], g: &[f64], lr: f64) {
        self.steps += 1;
        match self.rule {
            Optimizer::GradientDescent => {
                for (p, gi) in phi.iter_mut().zip(g) {
                    *p -= gi * lr;
                }
            }
            Optimizer::Momentum { momentum } => {
                for ((p, v), gi) in phi.iter_mut().zip(&mut self.first).zip(g) {
                    *v = momentum * *v + gi;
                    *p -= lr * *v;
                }
            }
            Optimizer::Nesterov { momentum } => {
                for ((p, v), gi) in phi.iter_mut().zip(&mut self.first).zip(g) {
                    *v = momentum * *v + gi;
                    *p -= lr * (gi + momentum * *v);
                }
            }
            Optimizer::Adam {
                beta1,
                beta2,
                epsilon,
            } => AdamRule {
                beta1,
                beta2,
                eps: epsilon,
            }
            .apply(self.steps, lr, phi, &mut self.first, &mut self.second, g),
        }
    }
}
