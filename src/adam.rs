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

    pub fn update(&mut self, theta: &mut Vector, grad: &Vector) {
        self.step += 1;
        let scale_m = 1.0 / (1.0 - self.beta1.powi(self.step));
        let scale_v = 1.0 / (1.0 - self.beta2.powi(self.step));
        for i in 0..theta.len() {
            let g = grad[i];
            let m = self.first_moment[i] * self.beta1 + g * (1.0 - self.beta1);
            let v = self.second_moment[i] * self.beta2 + g * g * (1.0 - self.beta2);
            let m_hat = m * scale_m;
            let v_hat = v * scale_v;
            // candle-nn multiplies theta by (1 - lr * weight_decay) = 1 first.
            theta[i] = theta[i] * 1.0 - m_hat / (v_hat.sqrt() + self.eps) * self.lr;
            self.first_moment[i] = m;
            self.second_moment[i] = v;
        }
    }
}
