//! The error bound of the contrastive estimate (MATH.md §3) and its constants.
//!
//! `standard:  ||est - dJ|| <= A |beta| + 2K delta / |beta| + C delta`, `A = 1/2 sup ||F''||`;
//! `symmetric: ||est - dJ|| <= A3 beta^2 + K delta / |beta| + C delta`, `A3 = 1/6 sup ||F'''||`;
//! second-order forward (docs/THEORY.md §1: Taylor's theorem with integral remainder on
//! `-3/2 F(0) + 2 F(beta) - 1/2 F(2 beta)`; the remainder kernel has one sign on `[0, 2 beta]`
//! and integrates to `beta^3 / 3`; the stencil's `sum |w_k| = 4` and `sum |w_k m_k| = 3`):
//! `||est - dJ|| <= 1/3 sup_[0, 2 beta] ||F'''|| beta^2 + 4K delta / |beta| + 3C delta`.
//! The sups are over `|b| <= |beta|` (over `[0, 2 beta]` for second-order forward).
//! For the quadratic problem `F(b) = d_theta L_b(phi*_b, theta)` is rational in `b` and every
//! constant is computed exactly here.

use crate::error::{CmlError, Result};
use crate::estimator::Variant;
use crate::linalg::Vector;
use crate::problem::Quadratic;
use nalgebra::DMatrix;

/// The constants of the bound for one problem instance and `theta`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BoundConstants {
    /// Strong convexity of `L_in` in `phi`.
    pub mu: f64,
    /// Smoothness of `L_in` in `phi`.
    pub smoothness: f64,
    /// `K = ||d2_{theta phi} L_in||` (spectral norm).
    pub mixed_norm: f64,
    /// `l`: Lipschitz constant of `d_phi L_out` in `phi`.
    pub outer_lipschitz: f64,
    /// `C`: Lipschitz constant in `phi` of the direct term `d_theta L_out`.
    pub direct_lipschitz: f64,
}

impl BoundConstants {
    /// Largest `|beta|` for which `L_beta` stays `mu/2`-strongly convex: `mu / (2 l)`.
    pub fn beta_max(&self) -> f64 {
        if self.outer_lipschitz > 0.0 {
            self.mu / (2.0 * self.outer_lipschitz)
        } else {
            f64::INFINITY
        }
    }

    /// `sum_k |w_k| K`: how strongly a phase error `delta` moves the estimate, times `beta`.
    pub fn delta_coefficient(&self, variant: Variant) -> f64 {
        variant.stencil().iter().map(|(_, w)| w.abs()).sum::<f64>() * self.mixed_norm
    }

    /// `sum_k |w_k m_k| C`: the direct term `b d_theta L_out(phi_b)` inside `g(b)` moves by at most
    /// `|m_k beta| C delta` at phase `k`, weighted by `|w_k| / |beta|` (1 for standard and
    /// symmetric, 3 for second-order forward).
    pub fn direct_coefficient(&self, variant: Variant) -> f64 {
        variant.stencil().iter().map(|(m, w)| (m * w).abs()).sum::<f64>() * self.direct_lipschitz
    }
}

/// The bound's terms at one `(beta, delta)`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Bound {
    /// `A |beta|` or `A3 beta^2`: the error with exact phases.
    pub truncation: f64,
    /// `B delta / |beta|`.
    pub delta_term: f64,
    /// `C delta`.
    pub direct_term: f64,
}

impl Bound {
    pub fn total(&self) -> f64 {
        self.truncation + self.delta_term + self.direct_term
    }
}

/// Predicted best `beta` and best error for a truncation coefficient `a` (error `a |beta|^p`),
/// delta coefficient `b` and direct term `c`: minimising `a beta^p + b delta / beta` gives
/// `beta* = (b delta / (p a))^(1/(p+1))`, so `beta* ~ delta^(1/2)` (p = 1) or `delta^(1/3)` (p = 2).
pub fn best_beta(variant: Variant, a: f64, b: f64, c: f64, delta: f64) -> (f64, f64) {
    let p = variant.truncation_order();
    let beta = (b * delta / (f64::from(p) * a)).powf(1.0 / f64::from(p + 1));
    (beta, a * beta.powi(p) + b * delta / beta + c * delta)
}

/// Theory slopes on log-log axes: (error vs beta on the right of the minimum, on the left,
/// best beta vs delta, best error vs delta).
pub fn theory_slopes(variant: Variant) -> [f64; 4] {
    match variant.truncation_order() {
        1 => [1.0, -1.0, 0.5, 0.5],
        2 => [2.0, -1.0, 1.0 / 3.0, 2.0 / 3.0],
        // A bias independent of beta: flat on the right, and neither the best beta nor the best
        // error improves as delta shrinks.
        _ => [0.0, -1.0, 0.0, 0.0],
    }
}

/// `F(b)` of the quadratic problem in closed form, diagonalised: with `A = L L^T`,
/// `L^{-1} C^T C L^{-T} = U diag(s) U^T`, `phi*_b = L^{-T} U y(b)`,
/// `y_i(b) = (p_i + b q_i) / (1 + b s_i)`, so `y_i^(k)(b) = e_i (-1)^(k-1) k! s_i^(k-1) / (1 + b s_i)^(k+1)`
/// with `e_i = q_i - s_i p_i`, and `F^(k)(b) = -B^T L^{-T} U y^(k)(b)` (+ `gamma theta` for k = 1).
pub struct QuadraticTheory {
    /// `-B^T L^{-T} U`.
    map: DMatrix<f64>,
    s: Vector,
    e: Vector,
    direct: Vector,
    constants: BoundConstants,
}

impl QuadraticTheory {
    pub fn new(q: &Quadratic, theta: &Vector) -> Result<Self> {
        let m = q.matrices();
        let chol =
            m.a.clone()
                .cholesky()
                .ok_or_else(|| CmlError::NotPositiveDefinite {
                    what: "A".into(),
                    reason: "Cholesky failed".into(),
                })?;
        let l_inv = chol.l().try_inverse().expect("a Cholesky factor is invertible");
        let g = m.cm.transpose() * m.cm;
        let sym = &l_inv * &g * l_inv.transpose();
        let eig = nalgebra::SymmetricEigen::new((&sym + sym.transpose()) * 0.5);
        let u = eig.eigenvectors;
        let s = eig.eigenvalues;
        let p = u.transpose() * &l_inv * (m.b * theta + m.c);
        let qv = u.transpose() * &l_inv * (m.cm.transpose() * m.d);
        let e = Vector::from_fn(s.len(), |i, _| qv[i] - s[i] * p[i]);
        let map = -(m.b.transpose() * l_inv.transpose() * &u);
        let (mu, smoothness) = crate::linalg::spectrum_bounds(m.a);
        let constants = BoundConstants {
            mu,
            smoothness,
            mixed_norm: m.b.clone().singular_values().max(),
            outer_lipschitz: crate::linalg::spectrum_bounds(&g).1,
            direct_lipschitz: 0.0, // d_theta L_out = gamma theta does not depend on phi
        };
        Ok(QuadraticTheory {
            map,
            s,
            e,
            direct: theta * m.gamma,
            constants,
        })
    }

    pub fn constants(&self) -> BoundConstants {
        self.constants
    }

    /// `F^(k)(b)` for `k >= 1`.
    pub fn derivative(&self, k: u32, b: f64) -> Vector {
        let factorial: f64 = (1..=k).map(f64::from).product();
        let sign = if k % 2 == 1 { 1.0 } else { -1.0 };
        let y = Vector::from_fn(self.s.len(), |i, _| {
            let si = self.s[i];
            sign * self.e[i] * factorial * si.powi(k as i32 - 1) / (1.0 + b * si).powi(k as i32 + 1)
        });
        let fk = &self.map * y;
        if k == 1 { fk + &self.direct } else { fk }
    }

    /// `sup_{b in [lo, hi]} ||F^(k)(b)||`: the maximum over a 2001-point grid, refined by a
    /// golden-section search around the best grid point.
    pub fn sup_norm(&self, k: u32, lo: f64, hi: f64) -> f64 {
        let f = |b: f64| self.derivative(k, b).norm();
        let n = 2000;
        let h = (hi - lo) / n as f64;
        let (mut best_b, mut best) = (lo, f(lo));
        for i in 1..=n {
            let b = lo + h * i as f64;
            let v = f(b);
            if v > best {
                (best_b, best) = (b, v);
            }
        }
        let (mut a, mut c) = ((best_b - h).max(lo), (best_b + h).min(hi));
        let ratio = 0.5 * (5f64.sqrt() - 1.0);
        for _ in 0..60 {
            let x1 = c - ratio * (c - a);
            let x2 = a + ratio * (c - a);
            if f(x1) > f(x2) {
                c = x2
            } else {
                a = x1
            }
            best = best.max(f(x1)).max(f(x2));
        }
        best
    }

    /// The truncation coefficient (`A`, `A3`, or second-order forward's `1/3 sup ||F'''||`) at `beta`.
    pub fn truncation_coefficient(&self, variant: Variant, beta: f64) -> f64 {
        let b = beta.abs();
        match variant {
            Variant::Standard => 0.5 * self.sup_norm(2, -b, b),
            Variant::Symmetric => self.sup_norm(3, -b, b) / 6.0,
            Variant::SecondOrderForward => {
                self.sup_norm(3, (2.0 * beta).min(0.0), (2.0 * beta).max(0.0)) / 3.0
            }
            // (F(beta) - F(0)) / (2 beta) - F'(0) = -F'(0)/2 + (1 / 2 beta) int_0^beta (F' - F'(0)):
            // at most ||F'(0)|| / 2 + sup ||F''|| |beta| / 4 (order 0: the coefficient of beta^0).
            Variant::ReferenceCodeSymmetric => {
                0.5 * self.derivative(1, 0.0).norm()
                    + 0.25 * self.sup_norm(2, beta.min(0.0), beta.max(0.0)) * b
            }
        }
    }

    /// The bound at `(beta, delta)`.
    pub fn bound(&self, variant: Variant, beta: f64, delta: f64) -> Bound {
        let c = &self.constants;
        Bound {
            truncation: self.truncation_coefficient(variant, beta)
                * beta.abs().powi(variant.truncation_order()),
            delta_term: c.delta_coefficient(variant) * delta / beta.abs(),
            direct_term: c.direct_coefficient(variant) * delta,
        }
    }

    /// Predicted best `beta` and error for a phase precision `delta`, with the truncation
    /// coefficient taken at `beta_max` (an upper bound for every smaller `beta`).
    pub fn best(&self, variant: Variant, delta: f64) -> (f64, f64) {
        let c = &self.constants;
        let a = self.truncation_coefficient(variant, c.beta_max());
        best_beta(
            variant,
            a,
            c.delta_coefficient(variant),
            c.direct_coefficient(variant),
            delta,
        )
    }
}
