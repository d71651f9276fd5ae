//! Meta-training on few-shot sinusoid regression: sample a meta-batch of tasks, average the
//! per-task meta-gradient estimates, update `theta` with Adam (candle-nn's), and evaluate on a
//! fixed set of held-out tasks.

use crate::adam::Adam;
use crate::error::{CmlError, Result};
use crate::estimator::{EstimatorSpec, MetaGradientEstimator};
use crate::executor::{Ending, Flow, MetaExecutor, OnFailure};
use crate::inner::{GdParams, InnerSolver, Phase};
use crate::linalg::{Vector, to_dvector};
use crate::oracle::{Cost, Oracle};
use crate::parallel::{available_threads, map_in_order, map_in_order_on};
use crate::problem::ProblemInstance;
use crate::problem::{Modulation, ModulationSpec, SinusoidTask, Synapse, SynapseSpec};
use crate::rng::stream;
use std::cell::{Cell, RefCell};
use std::time::Instant;

/// Which model is meta-learned.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "model", rename_all = "kebab-case")]
pub enum ModelSpec {
    Synapse(SynapseSpec),
    Modulation(ModulationSpec),
}

impl ModelSpec {
    pub fn name(&self) -> &'static str {
        match self {
            ModelSpec::Synapse(_) => "synapse",
            ModelSpec::Modulation(_) => "modulation",
        }
    }

    pub fn initial_theta(&self, rng: &mut crate::rng::Rng) -> Result<Vector> {
        match self {
            ModelSpec::Synapse(s) => s.initial_theta(rng),
            ModelSpec::Modulation(s) => s.initial_theta(rng),
        }
    }

    /// The network's predictions at inputs `x` with fast parameters `phi` (and, for the
    /// modulation model, the slow weights in `theta`).
    pub fn predict(
        &self,
        task: &SinusoidTask,
        theta: &Vector,
        phi: &candle_core::Tensor,
        x: &Vector,
    ) -> Result<Vector> {
        let xs = crate::problem::sinusoid::column(x)?;
        let out = match self {
            ModelSpec::Synapse(s) => s.net.forward(phi, &xs)?,
            ModelSpec::Modulation(s) => {
                let m = Modulation::new(s.clone(), task.clone(), theta)?;
                m.predict(phi, m.theta(), &xs)?
            }
        };
        to_dvector(&out)
    }

    /// The bilevel problem of one task at meta-parameters `theta`.
    pub fn problem(&self, task: SinusoidTask, theta: &Vector) -> Result<Box<dyn ProblemInstance>> {
        Ok(match self {
            ModelSpec::Synapse(s) => Box::new(Synapse::new(s.clone(), task, theta)?),
            ModelSpec::Modulation(s) => Box::new(Modulation::new(s.clone(), task, theta)?),
        })
    }
}

/// Everything a meta-training run depends on.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainConfig {
    pub model: ModelSpec,
    /// Support and query points per task.
    pub shots: usize,
    pub estimator: EstimatorSpec,
    pub meta_steps: usize,
    pub meta_batch: usize,
    /// Adam's learning rate (betas 0.9, 0.999, eps 1e-8, no weight decay).
    pub meta_lr: f64,
    /// Held-out tasks, fixed for the whole run.
    pub eval_tasks: usize,
    /// Evaluate every this many meta-steps (and at the first and last).
    pub eval_every: usize,
    pub seed: u64,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        check_budget(
            &[
                ("shots", self.shots),
                ("meta_steps", self.meta_steps),
                ("meta_batch", self.meta_batch),
                ("eval_tasks", self.eval_tasks),
                ("eval_every", self.eval_every),
            ],
            self.meta_lr,
        )?;
        self.estimator.validate()
    }

    /// The inner loop used to adapt to a held-out task: the estimator's free phase.
    fn adaptation(&self) -> GdParams {
        self.estimator.free_phase()
    }
}

/// Every count at least 1 and Adam's learning rate finite and positive.
fn check_budget(counts: &[(&str, usize)], meta_lr: f64) -> Result<()> {
    for &(name, v) in counts {
        if v == 0 {
            return Err(CmlError::invalid(name, v, "must be a whole number >= 1"));
        }
    }
    if !(meta_lr.is_finite() && meta_lr > 0.0) {
        return Err(CmlError::invalid("meta_lr", meta_lr, "must be finite and > 0"));
    }
    Ok(())
}

/// Meta-test query loss, mean over the held-out tasks.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    /// At `phi_init(theta)`, without adaptation.
    pub before: f64,
    /// After the free phase on the task's support set.
    pub after: f64,
}

/// One meta-step's log line.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetaStep {
    /// 0 is the initialisation (evaluation only); 1.. are updates.
    pub step: usize,
    /// Mean query loss of the meta-batch at the adapted parameters (before this update).
    pub meta_train_loss: Option<f64>,
    pub evaluation: Option<Evaluation>,
    pub estimate_norm: Option<f64>,
    /// Summed over the meta-batch.
    pub cost: Cost,
    /// How many of the meta-batch's estimates came with a warning (e.g. truncated CG).
    pub warnings: usize,
    /// The nudging strength the contrastive rule ran with (with `--beta auto`, the last choice).
    #[serde(default)]
    pub beta: Option<f64>,
    /// Seconds since this process started the run (not reproducible; kept out of train.csv).
    pub wall_seconds: f64,
}

pub struct TrainResult {
    pub theta: Vector,
    pub steps: Vec<MetaStep>,
    /// Set when the run stopped early at a request (the last completed meta-step).
    pub interrupted_at: Option<usize>,
}

/// Everything needed to continue a run exactly where it stopped.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    /// Meta-steps completed.
    pub step: usize,
    pub theta: Vec<f64>,
    pub adam: Adam,
    /// Position in the training-task stream (a u128, as text for JSON).
    pub task_stream_position: String,
    /// Every log line so far.
    pub log: Vec<MetaStep>,
    /// With `--beta auto`: the strength chosen last.
    #[serde(default)]
    pub chosen_beta: Option<f64>,
}

/// How a run is driven from outside: resumed, checkpointed, stopped.
pub struct Control<'a> {
    pub resume: Option<TrainState>,
    /// Call `checkpoint` every this many meta-steps (0: never), and when stopping early.
    pub checkpoint_every: usize,
    pub checkpoint: &'a mut dyn FnMut(&TrainState) -> Result<()>,
    /// Asked after every meta-step; `true` stops the run there.
    pub stop: &'a dyn Fn(usize) -> bool,
}

/// Stream numbers for [`stream`].
const INIT: u64 = 0;
pub const TRAIN_TASKS: u64 = 1;
pub const EVAL_TASKS: u64 = 2;

/// Runs meta-training; `observer` sees every log line as it is made.
pub fn train(config: &TrainConfig, observer: &mut dyn FnMut(&MetaStep)) -> Result<TrainResult> {
    let mut no_checkpoint = |_: &TrainState| Ok(());
    let mut control = Control {
        resume: None,
        checkpoint_every: 0,
        checkpoint: &mut no_checkpoint,
        stop: &|_| false,
    };
    train_with(config, &mut control, observer)
}

/// [`train`], resumable: from `control.resume` if given, checkpointing as asked.
pub fn train_with(
    config: &TrainConfig,
    control: &mut Control,
    observer: &mut dyn FnMut(&MetaStep),
) -> Result<TrainResult> {
    config.validate()?;
    let clock = Instant::now();
    let held_out = held_out_tasks(config)?;
    let mut task_rng = stream(config.seed, TRAIN_TASKS);
    let (mut executor, mut steps, chosen_beta) = match control.resume.take() {
        Some(state) => {
            let position: u128 = state.task_stream_position.parse().map_err(|_| {
                CmlError::invalid(
                    "checkpoint task_stream_position",
                    &state.task_stream_position,
                    "a whole number",
                )
            })?;
            task_rng.set_word_pos(position);
            let done = state.log.last().map_or(0, |s| s.step);
            let executor = MetaExecutor::resume(Vector::from_vec(state.theta), state.adam, done);
            (executor, state.log, state.chosen_beta)
        }
        None => {
            let theta0 = config.model.initial_theta(&mut stream(config.seed, INIT))?;
            let first = MetaStep {
                step: 0,
                meta_train_loss: None,
                evaluation: Some(evaluate(config, &held_out, &theta0)?),
                estimate_norm: None,
                cost: Cost::default(),
                warnings: 0,
                beta: None,
                wall_seconds: clock.elapsed().as_secs_f64(),
            };
            observer(&first);
            (MetaExecutor::new(theta0, config.meta_lr), vec![first], None)
        }
    };
    // Shared by the estimate (which draws tasks and chooses beta) and the checkpoints.
    let task_rng = RefCell::new(task_rng);
    let chosen_beta = Cell::new(chosen_beta);
    let estimate = |step: usize, theta: &Vector| {
        let tasks: Vec<SinusoidTask> = (0..config.meta_batch)
            .map(|_| SinusoidTask::sample(&mut task_rng.borrow_mut(), config.shots))
            .collect::<Result<_>>()?;
        // `--beta auto`: choose on the first task every `rechoose_every` steps, then run the
        // whole batch at the chosen strength (docs/ERROR_BAR.md §4).
        let mut choice_cost = Cost::default();
        let step_config = match &config.estimator {
            EstimatorSpec::ContrastiveAutoBeta(auto) => {
                if chosen_beta.get().is_none() || (step - 1).is_multiple_of(auto.rechoose_every) {
                    let problem = config.model.problem(tasks[0].clone(), theta)?;
                    let choice = auto.estimate(problem.as_ref(), problem.theta())?;
                    choice_cost = choice.cost;
                    chosen_beta.set(choice.error_bar.map(|b| b.beta));
                }
                let beta = chosen_beta.get().expect("chosen above");
                std::borrow::Cow::Owned(TrainConfig {
                    estimator: EstimatorSpec::Contrastive(auto.at(beta)),
                    ..config.clone()
                })
            }
            _ => std::borrow::Cow::Borrowed(config),
        };
        let batch = meta_batch_gradient(&step_config, &tasks, theta, available_threads())?;
        let beta = match &step_config.estimator {
            EstimatorSpec::Contrastive(c) => Some(c.beta),
            _ => None,
        };
        let MetaBatch {
            mean,
            cost,
            loss,
            warnings,
        } = batch;
        let logged = StepLog {
            loss,
            cost: cost + choice_cost,
            warnings,
            norm: mean.norm(),
            beta,
        };
        Ok((mean, logged))
    };
    let observe = |run: &MetaExecutor, logged: StepLog| {
        let step = run.step;
        let evaluate_now = step.is_multiple_of(config.eval_every) || step == config.meta_steps;
        let evaluation = if evaluate_now {
            Some(evaluate(config, &held_out, &run.theta)?)
        } else {
            None
        };
        let line = MetaStep {
            step,
            meta_train_loss: Some(logged.loss),
            evaluation,
            estimate_norm: Some(logged.norm),
            cost: logged.cost,
            warnings: logged.warnings,
            beta: logged.beta,
            wall_seconds: clock.elapsed().as_secs_f64(),
        };
        observer(&line);
        steps.push(line);
        let stop = step < config.meta_steps && (control.stop)(step);
        if stop || (control.checkpoint_every > 0 && step.is_multiple_of(control.checkpoint_every)) {
            (control.checkpoint)(&TrainState {
                step,
                theta: run.theta.iter().copied().collect(),
                adam: run.adam.clone(),
                task_stream_position: task_rng.borrow().get_word_pos().to_string(),
                log: steps.clone(),
                chosen_beta: chosen_beta.get(),
            })?;
        }
        Ok(if stop { Flow::Stop } else { Flow::Continue })
    };
    let ending = executor.run(config.meta_steps, OnFailure::Error, estimate, observe)?;
    Ok(TrainResult {
        theta: executor.theta,
        steps,
        interrupted_at: match ending {
            Ending::Stopped { step } => Some(step),
            _ => None,
        },
    })
}

/// What one meta-step of [`train_with`] logs beside its estimate.
struct StepLog {
    loss: f64,
    cost: Cost,
    warnings: usize,
    norm: f64,
    beta: Option<f64>,
}

/// Refuses (or, with `allow`, returns as a warning) an estimator that does not apply to the
/// model (see [`EstimatorSpec::inapplicable`]), judged on one task at the initial `theta`.
pub fn check_applicable(config: &TrainConfig, allow: bool) -> Result<Option<String>> {
    let theta = config.model.initial_theta(&mut stream(config.seed, INIT))?;
    let task = SinusoidTask::sample(&mut stream(config.seed, TRAIN_TASKS), config.shots)?;
    let problem = config.model.problem(task, &theta)?;
    config
        .estimator
        .check_applicable(problem.as_ref(), problem.theta(), allow)
}

/// A meta-batch's averaged estimate and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaBatch {
    /// Mean of the per-task meta-gradient estimates.
    pub mean: Vector,
    /// Summed over the tasks.
    pub cost: Cost,
    /// Mean query loss at the adapted parameters.
    pub loss: f64,
    /// How many tasks' estimates came with a warning.
    pub warnings: usize,
}

/// The meta-gradient of a meta-batch at `theta`: one estimate per task on up to `threads`
/// workers (each building its own problem and buffers), averaged in the tasks' order, so the
/// result is the same bits whatever the thread count.
pub fn meta_batch_gradient(
    config: &TrainConfig,
    tasks: &[SinusoidTask],
    theta: &Vector,
    threads: usize,
) -> Result<MetaBatch> {
    batch_estimate(
        tasks,
        |task| config.model.problem(task.clone(), theta),
        &config.estimator,
        theta.len(),
        threads,
    )
}

/// [`meta_batch_gradient`] for any task family: `problem` builds one task's bilevel problem
/// (at the meta-parameters to differentiate at, of length `theta_len`).
pub fn batch_estimate<T: Sync>(
    tasks: &[T],
    problem: impl Fn(&T) -> Result<Box<dyn ProblemInstance>> + Sync,
    estimator: &EstimatorSpec,
    theta_len: usize,
    threads: usize,
) -> Result<MetaBatch> {
    let results = map_in_order_on(
        threads,
        tasks,
        |task| {
            let problem = problem(task)?;
            let estimate = estimator
                .estimator()
                .estimate(problem.as_ref(), problem.theta())?;
            let loss = problem
                .outer_loss(&estimate.adapted_phi, problem.theta())?
                .to_scalar::<f64>()?;
            Ok((
                estimate.gradient,
                estimate.cost,
                loss,
                !estimate.warnings.is_empty(),
            ))
        },
        &|| {},
    )?;
    let n = tasks.len() as f64;
    let mut batch = MetaBatch {
        mean: Vector::zeros(theta_len),
        cost: Cost::default(),
        loss: 0.0,
        warnings: 0,
    };
    for (g, c, l, warned) in results {
        batch.warnings += usize::from(warned);
        batch.mean += g / n;
        batch.cost = batch.cost + c;
        batch.loss += l / n;
    }
    Ok(batch)
}

/// A meta-training run over any task family, as the bandit and few-shot digit jobs run it:
/// `meta_steps` updates of Adam (learning rate `meta_lr`) from `theta0`, each on the mean
/// estimate over `meta_batch` tasks drawn by `sample` (from one stream of `seed`), whose problems
/// `problem` builds at the current meta-parameters.
pub struct TaskMetaTraining<'a, T> {
    pub estimator: &'a EstimatorSpec,
    pub meta_steps: usize,
    pub meta_batch: usize,
    pub meta_lr: f64,
    pub seed: u64,
    pub sample: &'a dyn Fn(&mut crate::rng::Rng) -> Result<T>,
    pub problem: &'a TaskProblem<'a, T>,
    /// Called after every meta-step with the step and the updated meta-parameters (a probe that
    /// logs more than the query loss, e.g. the spiking job's halves of the symmetric estimate).
    pub observe: Option<&'a MetaObserver<'a>>,
}

/// Sees each meta-step's number and meta-parameters.
pub type MetaObserver<'a> = dyn Fn(usize, &Vector) -> Result<()> + Sync + 'a;

/// Builds one task's bilevel problem at given meta-parameters.
pub type TaskProblem<'a, T> = dyn Fn(&T, &Vector) -> Result<Box<dyn ProblemInstance>> + Sync + 'a;

/// One meta-step of [`TaskMetaTraining`]: the meta-batch's mean query loss after adaptation
/// (before the update) and the wall seconds since the run started (not reproducible).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TaskMetaStep {
    pub step: usize,
    pub query_loss: f64,
    pub seconds: f64,
}

/// What a [`TaskMetaTraining`] run produced.
#[derive(Debug, Clone)]
pub struct TaskMetaRun {
    /// The meta-parameters after the last completed meta-step.
    pub theta: Vector,
    pub log: Vec<TaskMetaStep>,
    /// Why the run stopped before its last meta-step (an estimate failed, e.g. an inner loop
    /// diverged at the current meta-parameters); `None` when it completed.
    pub stopped: Option<String>,
}

impl<T: Sync> TaskMetaTraining<'_, T> {
    /// Runs from `theta0`. A meta-step whose estimate fails ends the run there, with the
    /// meta-parameters of the last completed step and the reason (never silently).
    pub fn run(&self, theta0: Vector) -> Result<TaskMetaRun> {
        check_budget(
            &[("meta_steps", self.meta_steps), ("meta_batch", self.meta_batch)],
            self.meta_lr,
        )?;
        self.estimator.validate()?;
        let clock = Instant::now();
        let mut rng = stream(self.seed, TRAIN_TASKS);
        let mut log = Vec::with_capacity(self.meta_steps);
        let mut executor = MetaExecutor::new(theta0, self.meta_lr);
        let ending = executor.run(
            self.meta_steps,
            OnFailure::Stop,
            |_, theta| {
                let tasks: Vec<T> = (0..self.meta_batch)
                    .map(|_| (self.sample)(&mut rng))
                    .collect::<Result<_>>()?;
                let batch = batch_estimate(
                    &tasks,
                    |t| (self.problem)(t, theta),
                    self.estimator,
                    theta.len(),
                    available_threads(),
                )?;
                Ok((batch.mean, batch.loss))
            },
            |run, query_loss| {
                if let Some(observe) = self.observe {
                    observe(run.step, &run.theta)?;
                }
                log.push(TaskMetaStep {
                    step: run.step,
                    query_loss,
                    seconds: clock.elapsed().as_secs_f64(),
                });
                Ok(Flow::Continue)
            },
        )?;
        Ok(TaskMetaRun {
            theta: executor.theta,
            log,
            stopped: match ending {
                Ending::Failed { step, reason } => Some(format!("meta-step {step}: {reason}")),
                _ => None,
            },
        })
    }
}

/// Query loss of each task before and after adaptation (the estimator's free phase).
pub fn evaluate_per_task(
    config: &TrainConfig,
    tasks: &[SinusoidTask],
    theta: &Vector,
) -> Result<Vec<(f64, f64)>> {
    map_in_order(tasks, |task| {
        let problem = config.model.problem(task.clone(), theta)?;
        let theta = problem.theta();
        let before = problem
            .outer_loss(&problem.initial_phi(theta)?, theta)?
            .to_scalar::<f64>()?;
        let after = problem
            .outer_loss(&adapt(config, problem.as_ref())?, theta)?
            .to_scalar::<f64>()?;
        Ok((before, after))
    })
}

/// The fast parameters after adapting to a task: the estimator's free phase from `phi_init`.
pub fn adapt(config: &TrainConfig, problem: &dyn ProblemInstance) -> Result<candle_core::Tensor> {
    let theta = problem.theta();
    let phi_init = problem.initial_phi(theta)?;
    Ok((config.adaptation())
        .solve(
            &Oracle::new(problem),
            &Phase::new(&phi_init, theta, 0.0, "adaptation"),
        )?
        .phi)
}

/// The held-out tasks of a run (the same for every estimator with the same seed and shots).
pub fn held_out_tasks(config: &TrainConfig) -> Result<Vec<SinusoidTask>> {
    let mut eval_rng = stream(config.seed, EVAL_TASKS);
    (0..config.eval_tasks)
        .map(|_| SinusoidTask::sample(&mut eval_rng, config.shots))
        .collect()
}

/// Mean query loss over the held-out tasks, before and after adaptation.
pub fn evaluate(config: &TrainConfig, tasks: &[SinusoidTask], theta: &Vector) -> Result<Evaluation> {
    let losses = evaluate_per_task(config, tasks, theta)?;
    let n = tasks.len() as f64;
    Ok(Evaluation {
        before: losses.iter().map(|l| l.0).sum::<f64>() / n,
        after: losses.iter().map(|l| l.1).sum::<f64>() / n,
    })
}
