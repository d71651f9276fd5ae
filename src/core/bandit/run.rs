//! Running an agent on one wheel bandit and keeping its regret (docs/BANDIT.md §4).

use super::agents::Agent;
use super::wheel::{ARMS, Context, WheelBandit};
use crate::error::{CmlError, Result};
use crate::rng::stream;

/// Stream numbers of a run's seed: the contexts, the rewards and the agent's own draws are
/// independent, so every agent of a seed sees the same contexts and, arm for arm, the same
/// reward noise.
const CONTEXTS: u64 = 10;
const REWARDS: u64 = 11;
const AGENT: u64 = 12;

/// The length of a run and its opening.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunParams {
    /// Contexts (steps) per run.
    pub steps: usize,
    /// Round-robin pulls of every arm before the agent chooses (the paper's code: 2).
    pub initial_pulls: usize,
}

/// Cumulative expected regret after each step: `sum_{s <= t} (max_a mu_a(x_s) - mu_{a_s}(x_s))`.
pub fn cumulative_regret(bandit: &WheelBandit, contexts: &[Context], arms: &[usize]) -> Vec<f64> {
    let mut total = 0.0;
    contexts
        .iter()
        .zip(arms)
        .map(|(x, &a)| {
            total += bandit.regret(x, a);
            total
        })
        .collect()
}

/// Runs `agent` for `params.steps` contexts of `bandit` drawn from `seed`; returns the arms it
/// pulled and its cumulative regret.
pub fn run(
    bandit: &WheelBandit,
    agent: &mut dyn Agent,
    params: &RunParams,
    seed: u64,
) -> Result<(Vec<usize>, Vec<f64>)> {
    if params.steps == 0 {
        return Err(CmlError::invalid(
            "bandit steps",
            0,
            "a run needs at least 1 step",
        ));
    }
    let (mut ctx_rng, mut reward_rng, mut agent_rng) =
        (stream(seed, CONTEXTS), stream(seed, REWARDS), stream(seed, AGENT));
    let mut contexts = Vec::with_capacity(params.steps);
    let mut arms = Vec::with_capacity(params.steps);
    for t in 0..params.steps {
        let x = WheelBandit::sample_context(&mut ctx_rng);
        let arm = if t < params.initial_pulls * ARMS {
            t % ARMS
        } else {
            agent.act(&x, &mut agent_rng)?
        };
        let reward = bandit.sample_reward(&x, arm, &mut reward_rng);
        agent.observe(&x, arm, reward, &mut agent_rng)?;
        contexts.push(x);
        arms.push(arm);
    }
    let regret = cumulative_regret(bandit, &contexts, &arms);
    Ok((arms, regret))
}
