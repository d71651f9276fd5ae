//! Adam on a flat parameter vector, with its whole state in the open so that a meta-training
//! run can be checkpointed and resumed exactly. The update is candle-nn's `AdamW` with weight
//! decay 0, operation for operation (checked against it in the tests):
//! `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
//! `theta -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`.

use crate::linalg::Vector;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Updates taken so far.
    pub step: i32,
    pub first_moment: Vec<f64>,
    pub second_moment: Vec<f64>,
}

impl Adam {
    /// Adam with candle-nn's defaults (betas 0.9, 0.999, eps 1e-8).
    pub fn new(lr: f64, len: usize) -> Self {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            first_moment: vec![0.0; len],
            second_moment: vec![0.0; len],
        }
    }

    /// The update rule without its state.
    pub fn rule(&self) -> AdamRule {
        AdamRule {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
        }
    }

    pub fn update(&mut self, theta: &mut Vector, grad: &Vector) {
        self.step += 1;
        self.rule().apply(
            self.step,
            self.lr,
            theta.as_mut_slice(),
            &mut self.first_moment,
            &mut self.second_moment,
            grad.as_slice(),
        );
    }
}

/// Adam's update rule, the one implementation in the crate: the meta-level [`Adam`] and the inner
/// phases' Adam (`optimizer::OptimizerState`) both step through it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamRule {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl AdamRule {
    /// Update number `step` (from 1) of `theta` with gradient `grad` and step size `lr`, moving
    /// the moments `m` and `v` along; no allocation.
    pub fn apply(self, step: i32, lr: f64, theta: &mut [f64], m: &mut [f64], v: &mut [f64], grad: &[f64]) {
        let scale_m = 1.0 / (1.0 - self.beta1.powi(step));
        let scale_v = 1.0 / (1.0 - self.beta2.powi(step));
        for (((t, m), v), &g) in theta.iter_mut().zip(m).zip(v).zip(grad) {
            *m = *m * self.beta1 + g * (1.0 - self.beta1);
            *v = *v * self.beta2 + g * g * (1.0 - self.beta2);
            let m_hat = *m * scale_m;
            let v_hat = *v * scale_v;
            // candle-nn multiplies theta by (1 - lr * weight_decay) = 1 first.
            *t = *t * 1.0 - m_hat / (v_hat.sqrt() + self.eps) * lr;
        }
    }
}
