//! Meta-training a bandit agent's network across wheel-bandit tasks (docs/BANDIT.md §2): each
//! meta-step draws a meta-batch of tasks (`delta ~ U(0, 1)`, random pulls), averages the
//! estimator's meta-gradients, and updates `theta` with Adam.

use super::agents::{OnlineModel, build};
use super::task::BanditTask;
use crate::adam::Adam;
use crate::error::{CmlError, Result};
use crate::estimator::EstimatorSpec;
use crate::linalg::Vector;
use crate::meta_training::batch_estimate;
use crate::parallel::available_threads;
use crate::rng::stream;

/// Everything a bandit meta-training run depends on.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    pub model: OnlineModel,
    pub estimator: EstimatorSpec,
    pub meta_steps: usize,
    pub meta_batch: usize,
    pub meta_lr: f64,
    /// Support and query pulls per task.
    pub support: usize,
    pub query: usize,
    pub seed: u64,
}

/// One meta-step's record.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MetaStep {
    pub step: usize,
    /// Mean query loss of the meta-batch after adaptation, before the update.
    pub query_loss: f64,
    pub seconds: f64,
}

const INIT: u64 = 0;
const TASKS: u64 = 1;

/// The model's initial meta-parameters for `seed`.
pub fn initial_theta(model: &OnlineModel, seed: u64) -> Result<Vector> {
    let mut rng = stream(seed, INIT);
    match model {
        OnlineModel::Synapse(s) => s.initial_theta(&mut rng),
        OnlineModel::Modulation(s) => s.initial_theta(&mut rng),
    }
}

/// Runs meta-training; returns the meta-parameters and one record per meta-step.
pub fn meta_train(config: &MetaConfig) -> Result<(Vector, Vec<MetaStep>)> {
    for (name, v) in [
        ("meta_steps", config.meta_steps),
        ("meta_batch", config.meta_batch),
    ] {
        if v == 0 {
            return Err(CmlError::invalid(name, v, "must be a whole number >= 1"));
        }
    }
    config.estimator.validate()?;
    let clock = std::time::Instant::now();
    let mut theta = initial_theta(&config.model, config.seed)?;
    let mut adam = Adam::new(config.meta_lr, theta.len());
    let mut rng = stream(config.seed, TASKS);
    let mut log = Vec::with_capacity(config.meta_steps);
    for step in 1..=config.meta_steps {
        let tasks: Vec<BanditTask> = (0..config.meta_batch)
            .map(|_| BanditTask::sample(&mut rng, config.support, config.query))
            .collect::<Result<_>>()?;
        let batch = batch_estimate(
            &tasks,
            |t| build(&config.model, t.clone(), &theta),
            &config.estimator,
            theta.len(),
            available_threads(),
        )
        .map_err(|e| CmlError::NotConverged {
            what: format!("bandit meta-step {step}"),
            reason: e.to_string(),
        })?;
        if batch.mean.iter().any(|g| !g.is_finite()) {
            return Err(CmlError::invalid(
                "bandit meta-gradient",
                "non-finite",
                "finite values",
            ));
        }
        adam.update(&mut theta, &batch.mean);
        log.push(MetaStep {
            step,
            query_loss: batch.loss,
            seconds: clock.elapsed().as_secs_f64(),
        });
    }
    Ok((theta, log))
}
