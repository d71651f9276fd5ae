//! A wheel-bandit task as a regression task (docs/BANDIT.md §2): a network maps a context to
//! one predicted reward per arm, and only the pulled arm's prediction is scored, so the loss is
//! the masked mean squared error `1/N sum_i (f(x_i)_{a_i} - r_i)^2`.

use super::wheel::{ARMS, Context, WheelBandit};
use crate::engine::mlp_kernel::MlpKernel;
use crate::error::{CmlError, Result};
use crate::linalg::Vector;
use crate::mlp::Mlp;
use crate::problem::instance::InstanceReader;
use crate::problem::{InstanceFile, SupervisedTask, TaskTensors};
use crate::rng::Rng;
use candle_core::{Device, Tensor};
use rand::Rng as _;

/// Observed `(context, arm, reward)` triples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pulls {
    pub contexts: Vec<Context>,
    pub arms: Vec<usize>,
    pub rewards: Vec<f64>,
}

impl Pulls {
    pub fn len(&self) -> usize {
        self.arms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.arms.is_empty()
    }

    pub fn push(&mut self, x: Context, arm: usize, reward: f64) {
        self.contexts.push(x);
        self.arms.push(arm);
        self.rewards.push(reward);
    }

    /// `n` contexts of `bandit`, each with a uniformly random arm and its reward.
    pub fn sample(bandit: &WheelBandit, n: usize, rng: &mut Rng) -> Self {
        let mut p = Pulls::default();
        for _ in 0..n {
            let x = WheelBandit::sample_context(rng);
            let arm = rng.random_range(0..ARMS);
            let r = bandit.sample_reward(&x, arm, rng);
            p.push(x, arm, r);
        }
        p
    }

    /// The pulls at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Self {
        let mut p = Pulls::default();
        for &i in indices {
            p.push(self.contexts[i], self.arms[i], self.rewards[i]);
        }
        p
    }

    fn inputs(&self) -> Vec<f64> {
        self.contexts.iter().flatten().copied().collect()
    }

    /// One row of `ARMS` per pull: the reward at the pulled arm, 0 elsewhere; and the mask.
    fn targets_and_mask(&self) -> (Vec<f64>, Vec<f64>) {
        let mut t = vec![0.0; self.len() * ARMS];
        let mut m = vec![0.0; self.len() * ARMS];
        for (i, (&a, &r)) in self.arms.iter().zip(&self.rewards).enumerate() {
            t[i * ARMS + a] = r;
            m[i * ARMS + a] = 1.0;
        }
        (t, m)
    }

    fn tensors(&self) -> Result<(Tensor, Tensor, Tensor)> {
        let (t, m) = self.targets_and_mask();
        let n = self.len();
        let dev = &Device::Cpu;
        Ok((
            Tensor::from_vec(self.inputs(), (n, 2), dev)?,
            Tensor::from_vec(t, (n, ARMS), dev)?,
            Tensor::from_vec(m, (n, ARMS), dev)?,
        ))
    }

    fn push_into(&self, file: &mut InstanceFile, part: &str) {
        let v = |x: Vec<f64>| Vector::from_vec(x);
        file.push_vector(&format!("contexts_{part}"), &v(self.inputs()));
        file.push_vector(
            &format!("arms_{part}"),
            &v(self.arms.iter().map(|&a| a as f64).collect()),
        );
        file.push_vector(&format!("rewards_{part}"), &v(self.rewards.clone()));
    }

    fn read_from(r: &mut InstanceReader, part: &str) -> Result<Self> {
        let rewards = r.vector(&format!("rewards_{part}"), None)?;
        let n = rewards.len();
        let contexts = r.vector(&format!("contexts_{part}"), Some(2 * n))?;
        let arms = r.vector(&format!("arms_{part}"), Some(n))?;
        if n == 0 {
            return Err(r.error(format!("a bandit task needs at least one {part} pull")));
        }
        let mut p = Pulls::default();
        for i in 0..n {
            let a = arms[i];
            if !(a >= 0.0 && a < ARMS as f64 && a.fract() == 0.0) {
                return Err(r.error(format!("arm {a} of pull {i} is not one of 0..{}", ARMS - 1)));
            }
            p.push([contexts[2 * i], contexts[2 * i + 1]], a as usize, rewards[i]);
        }
        Ok(p)
    }
}

/// One meta-training task: support pulls for the inner loss, query pulls for the outer loss.
#[derive(Debug, Clone, PartialEq)]
pub struct BanditTask {
    pub delta: f64,
    pub support: Pulls,
    pub query: Pulls,
}

impl BanditTask {
    /// `delta ~ U(0, 1)`, then `n_support` and `n_query` uniformly random pulls.
    pub fn sample(rng: &mut Rng, n_support: usize, n_query: usize) -> Result<Self> {
        if n_support == 0 || n_query == 0 {
            return Err(CmlError::invalid(
                "bandit task size",
                format!("{n_support} support, {n_query} query"),
                "a task needs at least 1 support and 1 query pull",
            ));
        }
        let bandit = WheelBandit::new(rng.random_range(0.0..1.0))?;
        Ok(BanditTask {
            delta: bandit.delta,
            support: Pulls::sample(&bandit, n_support, rng),
            query: Pulls::sample(&bandit, n_query, rng),
        })
    }
}

impl SupervisedTask for BanditTask {
    const SYNAPSE_NAME: &'static str = "bandit-synapse";
    const MODULATION_NAME: &'static str = "bandit-modulation";

    fn input_dim(&self) -> usize {
        2
    }

    fn output_dim(&self) -> usize {
        ARMS
    }

    fn tensors(&self) -> Result<TaskTensors> {
        let (xs, ys, ms) = self.support.tensors()?;
        let (xq, yq, mq) = self.query.tensors()?;
        Ok(TaskTensors {
            cross_entropy: false,
            x_support: xs,
            y_support: ys,
            mask_support: Some(ms),
            x_query: xq,
            y_query: yq,
            mask_query: Some(mq),
        })
    }

    /// Row weights `1 / N` (one scored output per row), the mask on the pulled arms.
    fn kernel(&self, net: &Mlp) -> MlpKernel {
        let (ns, nq) = (self.support.len(), self.query.len());
        let (ts, ms) = self.support.targets_and_mask();
        let (tq, mq) = self.query.targets_and_mask();
        let cat = |a: Vec<f64>, b: Vec<f64>| a.into_iter().chain(b).collect::<Vec<f64>>();
        MlpKernel::new(
            net,
            cat(self.support.inputs(), self.query.inputs()),
            cat(ts, tq),
            ns,
            1.0 / ns as f64,
            1.0 / nq as f64,
        )
        .with_mask(cat(ms, mq))
    }

    fn push(&self, file: &mut InstanceFile) {
        file.push_scalar("delta", self.delta);
        self.support.push_into(file, "support");
        self.query.push_into(file, "query");
    }

    fn read(r: &mut InstanceReader) -> Result<Self> {
        Ok(BanditTask {
            delta: r.scalar("delta")?,
            support: Pulls::read_from(r, "support")?,
            query: Pulls::read_from(r, "query")?,
        })
    }
}
