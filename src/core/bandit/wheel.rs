//! The wheel bandit (docs/BANDIT.md §1): contexts uniform in the unit disk, 5 arms. Arm 4 pays
//! `N(1.2, 0.05^2)` everywhere; arms 0-3 pay `N(1.0, 0.05^2)`, except that where `||x|| >= delta`
//! the arm of `x`'s quadrant pays `N(50, 0.01^2)`. Small `1 - delta` hides the large rewards
//! in a thin rim, which is what makes exploration hard.

use crate::error::{CmlError, Result};
use crate::rng::{Rng, normal};
use rand::Rng as _;

pub const ARMS: usize = 5;
/// Mean reward of each arm away from the rim.
pub const MEANS: [f64; ARMS] = [1.0, 1.0, 1.0, 1.0, 1.2];
pub const NOISE_STD: f64 = 0.05;
/// Mean and noise of the quadrant's arm on the rim.
pub const RIM_MEAN: f64 = 50.0;
pub const RIM_STD: f64 = 0.01;

/// A context: a point of the unit disk.
pub type Context = [f64; 2];

/// One wheel-bandit environment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WheelBandit {
    pub delta: f64,
}

impl WheelBandit {
    /// `delta` in `[0, 1]`.
    pub fn new(delta: f64) -> Result<Self> {
        if (0.0..=1.0).contains(&delta) {
            Ok(WheelBandit { delta })
        } else {
            Err(CmlError::invalid(
                "wheel bandit delta",
                delta,
                "the exploration parameter lies in [0, 1]",
            ))
        }
    }

    /// Uniform in the unit disk: radius `sqrt(u)`, angle uniform (two draws).
    pub fn sample_context(rng: &mut Rng) -> Context {
        let r = rng.random::<f64>().sqrt();
        let a = std::f64::consts::TAU * rng.random::<f64>();
        [r * a.cos(), r * a.sin()]
    }

    /// Arm 0 for the quadrant `x >= 0, y >= 0`, then counter-clockwise: 1 for `x < 0, y >= 0`,
    /// 2 for `x < 0, y < 0`, 3 for `x >= 0, y < 0`.
    pub fn quadrant_arm(x: &Context) -> usize {
        match (x[0] >= 0.0, x[1] >= 0.0) {
            (true, true) => 0,
            (false, true) => 1,
            (false, false) => 2,
            (true, false) => 3,
        }
    }

    pub fn on_rim(&self, x: &Context) -> bool {
        x[0].hypot(x[1]) >= self.delta
    }

    /// Expected reward of every arm at `x`.
    pub fn mean_rewards(&self, x: &Context) -> [f64; ARMS] {
        let mut m = MEANS;
        if self.on_rim(x) {
            m[Self::quadrant_arm(x)] = RIM_MEAN;
        }
        m
    }

    /// One noisy reward of `arm` at `x` (one normal draw).
    pub fn sample_reward(&self, x: &Context, arm: usize, rng: &mut Rng) -> f64 {
        let rim = self.on_rim(x) && arm == Self::quadrant_arm(x);
        let (mean, std) = if rim {
            (RIM_MEAN, RIM_STD)
        } else {
            (MEANS[arm], NOISE_STD)
        };
        mean + std * normal(rng)
    }

    /// Expected regret of pulling `arm` at `x`: the best arm's mean minus `arm`'s.
    pub fn regret(&self, x: &Context, arm: usize) -> f64 {
        let m = self.mean_rewards(x);
        m.iter().copied().fold(f64::NEG_INFINITY, f64::max) - m[arm]
    }

    /// Expected regret per step of the uniform policy, in closed form (docs/BANDIT.md §1):
    /// inside the disk of radius `delta` (probability `delta^2`) the best arm pays 1.2 and a
    /// uniform pull on average `(4 + 1.2) / 5`, a regret of `0.8 * 0.2`; on the rim the best
    /// pays 50 and the others 1.2 (one) or 1.0 (three): `0.2 (50 - 1.2) + 0.6 (50 - 1.0)`.
    pub fn uniform_regret_per_step(&self) -> f64 {
        let d2 = self.delta * self.delta;
        d2 * 0.8 * (1.2 - 1.0) + (1.0 - d2) * (0.2 * (RIM_MEAN - 1.2) + 0.6 * (RIM_MEAN - 1.0))
    }
}
