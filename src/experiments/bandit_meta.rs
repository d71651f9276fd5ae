//! Meta-training a bandit agent's network across wheel-bandit tasks (docs/BANDIT.md §2): each
//! meta-step draws a meta-batch of tasks (`delta ~ U(0, 1)`, random pulls), averages the
//! estimator's meta-gradients, and updates `theta` with Adam.

use crate::bandit::agents::{OnlineModel, build};
use crate::bandit::task::BanditTask;
use crate::error::Result;
use crate::estimator::EstimatorSpec;
use crate::linalg::Vector;
use crate::meta_training::{MetaObserver, TaskMetaRun, TaskMetaTraining};
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

const INIT: u64 = 0;

/// The model's initial meta-parameters for `seed`.
pub fn initial_theta(model: &OnlineModel, seed: u64) -> Result<Vector> {
    let mut rng = stream(seed, INIT);
    match model {
        OnlineModel::Synapse(s) => s.initial_theta(&mut rng),
        OnlineModel::Modulation(s) => s.initial_theta(&mut rng),
    }
}

/// Runs meta-training (see [`TaskMetaTraining::run`]); `observe` sees every meta-step's
/// meta-parameters.
pub fn meta_train(config: &MetaConfig, observe: Option<&MetaObserver>) -> Result<TaskMetaRun> {
    TaskMetaTraining {
        estimator: &config.estimator,
        meta_steps: config.meta_steps,
        meta_batch: config.meta_batch,
        meta_lr: config.meta_lr,
        seed: config.seed,
        sample: &|rng| BanditTask::sample(rng, config.support, config.query),
        problem: &|task, theta| build(&config.model, task.clone(), theta),
        observe,
    }
    .run(initial_theta(&config.model, config.seed)?)
}
