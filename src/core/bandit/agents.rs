//! Bandit agents (docs/BANDIT.md §3): the uniform policy, linear Thompson sampling
//! (LinFullPost), NeuralLinear, and greedy network agents that start from meta-learned (or
//! random) parameters and keep learning online from a replay buffer.

use super::posterior::{LinearPosterior, Prior};
use super::task::{BanditTask, Pulls};
use super::wheel::{ARMS, Context};
use crate::error::{CmlError, Result};
use crate::inner::{GdParams, InnerSolver, Phase};
use crate::linalg::{Vector, to_dvector, to_tensor};
use crate::optimizer::Optimizer;
use crate::oracle::Oracle;
use crate::problem::{Modulation, ModulationSpec, ProblemInstance, Synapse, SynapseSpec};
use crate::rng::Rng;
use candle_core::{Device, Tensor};
use rand::Rng as _;
use rand::seq::index::sample;

/// A policy that learns from its own pulls.
pub trait Agent: Send {
    /// The arm to pull at `x`.
    fn act(&mut self, x: &Context, rng: &mut Rng) -> Result<usize>;
    /// The reward the pull at `x` returned.
    fn observe(&mut self, x: &Context, arm: usize, reward: f64, rng: &mut Rng) -> Result<()>;
    /// Online retrainings whose loss rose past the divergence rule and were rejected.
    fn rejected_updates(&self) -> usize {
        0
    }
}

/// Pulls every arm with probability `1 / ARMS`.
pub struct Uniform;

impl Agent for Uniform {
    fn act(&mut self, _x: &Context, rng: &mut Rng) -> Result<usize> {
        Ok(rng.random_range(0..ARMS))
    }

    fn observe(&mut self, _: &Context, _: usize, _: f64, _: &mut Rng) -> Result<()> {
        Ok(())
    }
}

/// Thompson sampling on one Bayesian linear model per arm of the features `[x_1, x_2, 1]`.
pub struct LinFullPost {
    arms: Vec<LinearPosterior>,
}

impl LinFullPost {
    pub fn new(prior: Prior) -> Result<Self> {
        Ok(LinFullPost {
            arms: (0..ARMS)
                .map(|_| LinearPosterior::new(prior, 3))
                .collect::<Result<_>>()?,
        })
    }
}

/// The arm whose sampled model predicts the largest reward for `features`.
fn thompson(arms: &mut [LinearPosterior], features: &[f64], rng: &mut Rng) -> Result<usize> {
    let f = nalgebra::DVector::from_column_slice(features);
    let mut best = (0, f64::NEG_INFINITY);
    for (a, post) in arms.iter_mut().enumerate() {
        let value = post.draw(rng)?.dot(&f);
        if value > best.1 {
            best = (a, value);
        }
    }
    Ok(best.0)
}

impl Agent for LinFullPost {
    fn act(&mut self, x: &Context, rng: &mut Rng) -> Result<usize> {
        thompson(&mut self.arms, &[x[0], x[1], 1.0], rng)
    }

    fn observe(&mut self, x: &Context, arm: usize, reward: f64, _: &mut Rng) -> Result<()> {
        self.arms[arm].add(&[x[0], x[1], 1.0], reward);
        Ok(())
    }
}

/// Which network an online learner trains, with its meta-parameters.
#[derive(Debug, Clone)]
pub enum OnlineModel {
    /// All weights are fast, pulled toward `omega` (strength 0: a plain network from `omega`).
    Synapse(SynapseSpec),
    /// Gains, shifts and readout are fast; the body stays at its meta-learned weights.
    Modulation(ModulationSpec),
}

/// How a network keeps learning: every `every` pulls, `updates` optimiser steps (a fresh
/// optimiser each time) on one minibatch of up to `batch` pulls drawn from the replay buffer.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OnlineParams {
    pub every: usize,
    pub updates: usize,
    pub batch: usize,
    pub step_size: f64,
    pub optimizer: Optimizer,
}

/// A network, its replay buffer and its online training.
pub struct OnlineLearner {
    model: OnlineModel,
    /// The gain-modulation model's predictor (for its layout), when that is the model.
    modulation: Option<Modulation<BanditTask>>,
    theta: Vector,
    theta_tensor: Tensor,
    phi: Tensor,
    buffer: Pulls,
    params: OnlineParams,
    /// Retrainings rejected by the divergence rule (the network kept its previous weights).
    pub rejected: usize,
}

impl OnlineLearner {
    pub fn new(model: OnlineModel, theta: Vector, params: OnlineParams) -> Result<Self> {
        for (name, v) in [
            ("every", params.every),
            ("updates", params.updates),
            ("batch", params.batch),
        ] {
            if v == 0 {
                return Err(CmlError::invalid(
                    format!("online training {name}"),
                    v,
                    "a whole number >= 1",
                ));
            }
        }
        if !(params.step_size.is_finite() && params.step_size > 0.0) {
            return Err(CmlError::invalid(
                "online training step size",
                params.step_size,
                "finite and > 0",
            ));
        }
        params.optimizer.validate()?;
        let probe = BanditTask {
            delta: 0.0,
            support: single_pull(),
            query: single_pull(),
        };
        let problem = build(&model, probe.clone(), &theta)?;
        let theta_tensor = to_tensor(&theta)?;
        let phi = problem.initial_phi(&theta_tensor)?;
        // The modulated network predicts through its layout; built once, not at every pull.
        let modulation = match &model {
            OnlineModel::Modulation(s) => Some(Modulation::new(s.clone(), probe, &theta)?),
            OnlineModel::Synapse(_) => None,
        };
        Ok(OnlineLearner {
            model,
            modulation,
            theta,
            theta_tensor,
            phi,
            buffer: Pulls::default(),
            params,
            rejected: 0,
        })
    }

    /// Predicted rewards of every arm at each row of `x` `(N, 2)`.
    pub fn predict(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match &self.model {
            OnlineModel::Synapse(s) => s.net.forward(&self.phi, x)?,
            OnlineModel::Modulation(_) => self
                .modulation
                .as_ref()
                .expect("built in `new` for this model")
                .predict(&self.phi, &self.theta_tensor, x)?,
        })
    }

    /// The last hidden layer at each row of `x` (a plain network's features).
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match &self.model {
            OnlineModel::Synapse(s) => s.net.features(&self.phi, x)?,
            OnlineModel::Modulation(_) => {
                return Err(CmlError::invalid(
                    "NeuralLinear's network",
                    "the gain modulation",
                    "a network whose weights are all fast (the synapse model)",
                ));
            }
        })
    }

    pub fn buffer(&self) -> &Pulls {
        &self.buffer
    }

    /// Stores the pull; returns whether the network was retrained. A retraining whose loss rises
    /// past the divergence rule (docs/STEP_SIZE.md) is rejected and counted, not fatal: from a
    /// network that already fits its minibatch, Adam's first steps (each weight moved by about
    /// the step size) can raise a small loss by more than the rule's 10%, and the agent then
    /// keeps its previous weights (docs/BANDIT.md §3).
    pub fn observe(&mut self, x: &Context, arm: usize, reward: f64, rng: &mut Rng) -> Result<bool> {
        self.buffer.push(*x, arm, reward);
        if !self.buffer.len().is_multiple_of(self.params.every) {
            return Ok(false);
        }
        let n = self.buffer.len();
        let idx = sample(rng, n, self.params.batch.min(n)).into_vec();
        let batch = self.buffer.select(&idx);
        let task = BanditTask {
            delta: 0.0,
            query: batch.select(&[0]),
            support: batch,
        };
        let problem = build(&self.model, task, &self.theta)?;
        let gd = GdParams {
            step_size: Some(self.params.step_size),
            max_steps: self.params.updates,
            tolerance: 0.0,
            optimizer: self.params.optimizer,
            ..GdParams::default()
        };
        match gd.solve(
            &Oracle::new(problem.as_ref()),
            &Phase::new(&self.phi, &self.theta_tensor, 0.0, "online training"),
        ) {
            Ok(solution) => self.phi = solution.phi,
            Err(CmlError::Diverged { .. }) => self.rejected += 1,
            Err(e) => return Err(e),
        }
        Ok(true)
    }
}

fn single_pull() -> Pulls {
    let mut p = Pulls::default();
    p.push([0.0, 0.0], 0, 0.0);
    p
}

/// The model's bilevel problem on one bandit task.
pub fn build(model: &OnlineModel, task: BanditTask, theta: &Vector) -> Result<Box<dyn ProblemInstance>> {
    Ok(match model {
        OnlineModel::Synapse(s) => Box::new(Synapse::new(s.clone(), task, theta)?),
        OnlineModel::Modulation(s) => Box::new(Modulation::new(s.clone(), task, theta)?),
    })
}

fn context_tensor(x: &Context) -> Result<Tensor> {
    Ok(Tensor::from_slice(x, (1, 2), &Device::Cpu)?)
}

/// Pulls the arm its network predicts best (ties to the lowest arm); learns online.
pub struct Greedy {
    pub learner: OnlineLearner,
}

impl Agent for Greedy {
    fn act(&mut self, x: &Context, _: &mut Rng) -> Result<usize> {
        let y = to_dvector(&self.learner.predict(&context_tensor(x)?)?.flatten_all()?)?;
        Ok(y.argmax().0)
    }

    fn observe(&mut self, x: &Context, arm: usize, reward: f64, rng: &mut Rng) -> Result<()> {
        self.learner.observe(x, arm, reward, rng).map(|_| ())
    }

    fn rejected_updates(&self) -> usize {
        self.learner.rejected
    }
}

/// Thompson sampling on Bayesian linear models of a network's last hidden layer (plus a
/// constant), the network trained online on the buffer; after each retraining the posteriors
/// are refitted on the whole buffer's new features.
pub struct NeuralLinear {
    learner: OnlineLearner,
    arms: Vec<LinearPosterior>,
}

impl NeuralLinear {
    pub fn new(learner: OnlineLearner, features: usize, prior: Prior) -> Result<Self> {
        Ok(NeuralLinear {
            learner,
            arms: (0..ARMS)
                .map(|_| LinearPosterior::new(prior, features + 1))
                .collect::<Result<_>>()?,
        })
    }

    fn features(&self, x: &Tensor) -> Result<Vec<Vec<f64>>> {
        let f = self.learner.features(x)?.to_vec2::<f64>()?;
        Ok(f.into_iter()
            .map(|mut row| {
                row.push(1.0);
                row
            })
            .collect())
    }
}

impl Agent for NeuralLinear {
    fn act(&mut self, x: &Context, rng: &mut Rng) -> Result<usize> {
        let f = self.features(&context_tensor(x)?)?;
        thompson(&mut self.arms, &f[0], rng)
    }

    fn observe(&mut self, x: &Context, arm: usize, reward: f64, rng: &mut Rng) -> Result<()> {
        if self.learner.observe(x, arm, reward, rng)? {
            let buffer = self.learner.buffer();
            let xs: Vec<f64> = buffer.contexts.iter().flatten().copied().collect();
            let f = self.features(&Tensor::from_vec(xs, (buffer.len(), 2), &Device::Cpu)?)?;
            self.arms.iter_mut().for_each(LinearPosterior::clear);
            for ((row, &a), &r) in f.iter().zip(&buffer.arms).zip(&buffer.rewards) {
                self.arms[a].add(row, r);
            }
        } else {
            let f = self.features(&context_tensor(x)?)?;
            self.arms[arm].add(&f[0], reward);
        }
        Ok(())
    }

    fn rejected_updates(&self) -> usize {
        self.learner.rejected
    }
}
