//! Meta-training on few-shot sinusoid regression with every estimator, both models, several
//! seeds: the curves, example tasks, and the final meta-test loss.

use super::chain::Chain;
use super::choice::{Search, whole_steps};
use super::units::{Job, Scale, Stored};
use super::{Settings, num, save, write_csv, write_table};
use crate::error::Result;
use crate::estimator::{EstimatorParams, EstimatorSpec, Variant};
use crate::inner::GdParams;
use crate::linalg::Vector;
use crate::meta_training::{Control, MetaStep, ModelSpec, TrainConfig, TrainState, adapt, train_with};
use crate::mlp::Mlp;
use crate::optimizer::Optimizer;
use crate::problem::SinusoidTask;
use crate::report::plot::{Figure, Panel, Series, Style};
use crate::report::template::Context;
use crate::stats::{self, Verdict};
use std::path::{Path, PathBuf};

/// The estimators compared, with the name shown.
pub const ESTIMATORS: [(&str, &str); 6] = [
    ("contrastive", "contrastive (symmetric)"),
    ("cg", "implicit CG (iMAML-style)"),
    ("bptt", "BPTT (MAML-style)"),
    ("fomaml", "first-order MAML"),
    ("reptile", "Reptile"),
    ("t1t2", "T1-T2"),
];

/// Final meta-test loss after adaptation of one model and estimator: per seed, the mean query
/// MSE over the test tasks at the checkpoint the validation tasks chose; then over seeds.
#[derive(Debug, Clone)]
pub struct FinalLoss {
    pub model: String,
    pub estimator: String,
    /// One value per seed.
    pub per_seed: Vec<f64>,
    pub mean: f64,
    /// Half-width of the 95% t-interval of the mean over seeds.
    pub ci95: f64,
    /// The untrained initialisation on the same test tasks, mean over seeds.
    pub initial_mean: f64,
    /// Paired over seeds: mean of (untrained - trained) and its 95% t-interval half-width.
    pub improvement: f64,
    pub improvement_ci95: f64,
    /// The paired t-test's p-value of "no improvement", Holm-adjusted over every method of the
    /// table.
    pub improvement_holm: f64,
    /// Meta-steps chosen by the validation tasks, per seed.
    pub chosen_steps: Vec<usize>,
    /// Wall seconds per meta-step, mean over seeds (not reproducible; the table only).
    pub seconds_per_meta_step: f64,
    /// Runs that stopped early because an inner phase diverged (seed and last meta-step), and
    /// test tasks whose adaptation diverged (scored at their loss before adaptation).
    pub diverged: Vec<String>,
}

/// A difference in final loss between two estimators of one model, paired over seeds.
#[derive(Debug, Clone)]
pub struct PairedDifference {
    pub model: String,
    pub first: String,
    pub second: String,
    /// Mean over seeds of (first - second) and its 95% t-interval half-width.
    pub mean: f64,
    pub ci95: f64,
    /// The paired t-test's p-value of "no difference", Holm-adjusted over every pair.
    pub holm: f64,
    /// The equivalence margin and the TOST p-value of "the difference lies inside it",
    /// Holm-adjusted over every pair.
    pub margin: f64,
    pub equivalence_holm: f64,
    pub verdict: Verdict,
}

#[derive(Debug, Clone)]
pub struct TrainingResults {
    pub finals: Vec<FinalLoss>,
    pub differences: Vec<PairedDifference>,
    pub meta_steps: usize,
    pub meta_batch: usize,
    pub free_steps: usize,
    pub nudged_steps: usize,
    pub seeds: usize,
    pub test_tasks: usize,
    pub validation_tasks: usize,
    pub net: String,
    /// The validation searches: the contrastive rule's `beta` per model, the outer step size per
    /// model and estimator (none at the paper scale).
    pub beta_searches: Vec<Search>,
    pub meta_lr_searches: Vec<Search>,
    /// The inner step size per model and estimator (none at the paper scale).
    pub step_size_searches: Vec<Search>,
    /// The contrastive rule's nudged budget per model (none at the paper scale).
    pub nudged_steps_searches: Vec<Search>,
    /// The protocol the runs followed.
    pub protocol: Protocol,
}

/// The write-up's sentence on the choices the validation searches made.
pub fn choices_sentence(t: &TrainingResults) -> String {
    if t.beta_searches.is_empty() && t.meta_lr_searches.is_empty() && t.step_size_searches.is_empty() {
        return format!(
            "The contrastive rule's beta ({}), the outer step size ({}) and the inner step sizes ({}, BPTT's {}) are \
             the paper scale's, not searched.",
            t.protocol.beta, t.protocol.meta_lr, t.protocol.step_size, t.protocol.bptt_step_size
        );
    }
    format!(
        "Chosen on validation tasks of search streams of their own ([final_loss.md](final_loss.md) gives every score): \
         the contrastive rule's beta per model ({}, one stream), and the outer Adam step size per model and estimator \
         ({}, {} streams), then the inner step size per model and estimator ({}, {} streams, a value at which a run \
         stopped early failing), then the contrastive rule's nudged budget per model ({}, {} streams, the smallest \
         budget within one standard error of the least loss).",
        super::searches::chosen_values(&t.beta_searches),
        super::searches::chosen_values(&t.meta_lr_searches),
        t.protocol.meta_lr_search.as_ref().map_or(0, |r| r.streams),
        super::searches::chosen_values(&t.step_size_searches),
        t.protocol.step_size_search.as_ref().map_or(0, |r| r.streams),
        super::searches::chosen_values(&t.nudged_steps_searches),
        t.protocol.nudged_steps_search.as_ref().map_or(0, |r| r.streams)
    )
}

/// Both meta-training models of the registry, at the protocol's strength (one per synapse).
fn models(p: &Protocol) -> Vec<ModelSpec> {
    let options = crate::registry::ModelOptions {
        net: p.net.clone(),
        strength: p.strength,
        per_synapse: true,
    };
    crate::registry::MODELS
        .iter()
        .map(|m| (m.build)(&options))
        .collect()
}

/// The job's protocol at one scale (`--protocol training=FILE` changes it; the default's is
/// shipped as `configs/training.toml`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Protocol {
    /// The network of both models, and their fixed pull strength (one per synapse).
    pub net: Mlp,
    pub strength: f64,
    /// Independent meta-training seeds (a new initialisation, task stream and held-out tasks).
    pub seeds: usize,
    /// Support points of a task.
    pub shots: usize,
    pub meta_steps: usize,
    pub meta_batch: usize,
    /// The contrastive phases and every other estimator's inner loop: Nesterov (momentum 0.9)
    /// at `step_size` (at the paper scale; the other scales search it per estimator, around this
    /// value). Nesterov is stable for curvature below about 1.36 / step size, and meta-training
    /// sharpens the networks: 0.003 (curvature up to 450) diverged in a nudged phase at
    /// meta-step 104 of the synapse run; 0.001 allows 1360.
    pub free_steps: usize,
    pub nudged_steps: usize,
    pub step_size: f64,
    /// MAML-style BPTT: a short loop of plain gradient steps, backpropagated through, which is
    /// also how it adapts at test time (its step size searched as `step_size` is). MAML's usual
    /// 0.01 diverged at meta-step 72 of the synapse run (curvature above 200); 0.003 allows 667
    /// and lasted to meta-step 203.
    pub bptt_steps: usize,
    pub bptt_step_size: f64,
    /// CG and Neumann iterations, and truncated BPTT's steps walked back.
    pub solver_steps: usize,
    pub truncation: usize,
    /// Held-out tasks of the training loop's curves, evaluated every `eval_every` meta-steps.
    pub eval_tasks: usize,
    pub eval_every: usize,
    /// Tasks that choose each run's checkpoint, and tasks that measure it (streams of their own).
    pub validation_tasks: usize,
    pub test_tasks: usize,
    /// The contrastive rule's `beta` and the outer Adam's step size where no search sets them
    /// (the paper scale), and where the searches start.
    pub beta: f64,
    pub meta_lr: f64,
    /// The searches on validation tasks (none at the paper scale), in the order they run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta_search: Option<TrainingBetaSearch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta_lr_search: Option<TrainingRateSearch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_size_search: Option<TrainingStepSizeSearch>,
    /// Last, the contrastive rule's nudged budget per model (at the chosen `beta`, outer and inner
    /// step sizes): a whole meta-training at each number of nudged steps of `grid` on each of
    /// `streams` search streams of its own; a value at which a run stops early fails, and the
    /// smallest budget within one standard error of the least validation loss wins (a larger one
    /// costs more, and the tasks cannot tell them apart). A budget an extension makes fractional
    /// is rounded to whole steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nudged_steps_search: Option<TrainingRateSearch>,
}

/// The contrastive rule's `beta` search: a short meta-training of `meta_steps` at each value of
/// `grid`; a choice at an edge extends the grid at most `extensions` times.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainingBetaSearch {
    pub grid: Vec<f64>,
    pub extensions: usize,
    pub meta_steps: usize,
}

/// The outer step size's search: a whole meta-training at each value of `grid` on each of
/// `streams` search streams; a choice at an edge extends the grid at most `extensions` times.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainingRateSearch {
    pub grid: Vec<f64>,
    pub extensions: usize,
    pub streams: u64,
}

/// The inner step sizes' search, per model and estimator, after the outer step size's (at the
/// chosen `beta` and outer step size): a whole meta-training at each value on each of `streams`
/// search streams of its own. A value fails where a run stops early on any stream (a phase
/// diverged), so that the reported runs can complete their budget; otherwise the least mean
/// validation loss wins. `grid` is the Nesterov phases' (every estimator but BPTT), `bptt_grid`
/// BPTT's short loop of plain steps; a choice at an edge extends its grid at most `extensions`
/// times.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainingStepSizeSearch {
    pub grid: Vec<f64>,
    pub bptt_grid: Vec<f64>,
    pub extensions: usize,
    pub streams: u64,
}

impl Protocol {
    /// The budgets of the scale, as shipped: `configs/quick/training.toml`, `configs/training.toml`
    /// or the paper's `configs/paper/training.toml`.
    pub fn at(scale: Scale) -> Result<Self> {
        shipped_protocol!(scale, "training")
    }

    /// The protocol of `settings`' scale with the user's changes (`--protocol training=FILE`).
    pub fn of(settings: &Settings) -> Result<Self> {
        crate::protocol::configured("training", Self::at(settings.scale)?, settings)
    }
}

impl crate::protocol::Checked for Protocol {
    fn check(&self) -> Result<()> {
        let mut c = crate::protocol::Checks::new("training");
        c.sizes("net.sizes", &self.net.sizes)
            .that(
                self.net.sizes.first() == Some(&1) && self.net.sizes.last() == Some(&1),
                "net.sizes",
                format!("{:?}", self.net.sizes),
                "1 input and 1 output (a sinusoid)",
            )
            .positive("strength", self.strength)
            .seeds("seeds", self.seeds)
            .count("shots", self.shots)
            .count("meta_steps", self.meta_steps)
            .count("meta_batch", self.meta_batch)
            .count("free_steps", self.free_steps)
            .count("nudged_steps", self.nudged_steps)
            .positive("step_size", self.step_size)
            .count("bptt_steps", self.bptt_steps)
            .positive("bptt_step_size", self.bptt_step_size)
            .count("solver_steps", self.solver_steps)
            .count("truncation", self.truncation)
            .count("eval_tasks", self.eval_tasks)
            .count("eval_every", self.eval_every)
            // The one-standard-error rule pairs over at least two tasks.
            .that(
                self.validation_tasks >= 2,
                "validation_tasks",
                self.validation_tasks,
                "at least 2",
            )
            .count("test_tasks", self.test_tasks)
            .positive("beta", self.beta)
            .positive("meta_lr", self.meta_lr);
        if let Some(b) = &self.beta_search {
            c.grid("beta_search.grid", &b.grid, 2, false)
                .count("beta_search.meta_steps", b.meta_steps);
        }
        if let Some(r) = &self.meta_lr_search {
            c.grid("meta_lr_search.grid", &r.grid, 2, false).that(
                r.streams >= 1,
                "meta_lr_search.streams",
                r.streams,
                "at least 1",
            );
        }
        if let Some(n) = &self.nudged_steps_search {
            c.grid("nudged_steps_search.grid", &n.grid, 2, false)
                .that(
                    n.grid.iter().all(|v| v.fract() == 0.0),
                    "nudged_steps_search.grid",
                    format!("{:?}", n.grid),
                    "whole numbers of steps",
                )
                .that(
                    n.streams >= 1,
                    "nudged_steps_search.streams",
                    n.streams,
                    "at least 1",
                );
        }
        if let Some(s) = &self.step_size_search {
            c.grid("step_size_search.grid", &s.grid, 2, false)
                .grid("step_size_search.bptt_grid", &s.bptt_grid, 2, false)
                .that(
                    s.streams >= 1,
                    "step_size_search.streams",
                    s.streams,
                    "at least 1",
                );
        }
        c.done()
    }
}

/// The values the validation searches chose for one run; `None` takes the protocol's (the paper
/// scale, which has no search, or a setting the estimator does not have).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Chosen {
    /// The contrastive rule's nudging strength.
    pub beta: Option<f64>,
    /// The outer Adam's step size.
    pub meta_lr: Option<f64>,
    /// The inner loop's step size: the Nesterov phases', or BPTT's short loop's.
    pub step_size: Option<f64>,
    /// The contrastive rule's nudged steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nudged_steps: Option<usize>,
}

/// The run's configuration at the protocol's values (`beta`, `meta_lr` and the inner step
/// sizes: the paper scale; at the other scales a unit takes the validation searches' values
/// instead).
fn config(settings: &Settings, model: ModelSpec, estimator: &str, seed: u64) -> Result<TrainConfig> {
    config_at(settings, model, estimator, seed, Chosen::default())
}

fn config_at(
    settings: &Settings,
    model: ModelSpec,
    estimator: &str,
    seed: u64,
    chosen: Chosen,
) -> Result<TrainConfig> {
    let p = Protocol::of(settings)?;
    let (beta, meta_lr) = (chosen.beta.unwrap_or(p.beta), chosen.meta_lr.unwrap_or(p.meta_lr));
    // The chosen inner step size is that of the loop the estimator runs: BPTT's short loop, or
    // the Nesterov phases of every other.
    let bptt = estimator == "bptt";
    let step_size = |own: bool, protocol: f64| Some(chosen.step_size.filter(|_| own).unwrap_or(protocol));
    // A fresh optimiser for every phase (the protocol's doc says why these step sizes).
    let phase = GdParams {
        step_size: step_size(!bptt, p.step_size),
        max_steps: p.free_steps,
        tolerance: 0.0,
        optimizer: Optimizer::Nesterov { momentum: 0.9 },
        ..GdParams::default()
    };
    let short = GdParams {
        step_size: step_size(bptt, p.bptt_step_size),
        max_steps: p.bptt_steps,
        tolerance: 0.0,
        ..GdParams::default()
    };
    let params = EstimatorParams {
        variant: Variant::Symmetric,
        beta,
        free: if bptt { short } else { phase },
        nudged: GdParams {
            max_steps: chosen.nudged_steps.unwrap_or(p.nudged_steps),
            ..phase
        },
        solver_steps: p.solver_steps,
        neumann_alpha: None,
        truncation: p.truncation,
    };
    Ok(TrainConfig {
        model,
        shots: p.shots,
        estimator: crate::registry::estimator(estimator, &params)?,
        meta_steps: p.meta_steps,
        meta_batch: p.meta_batch,
        meta_lr,
        eval_tasks: p.eval_tasks,
        eval_every: p.eval_every,
        seed,
    })
}

/// Held-out tasks: the validation tasks that choose the checkpoint, and the test tasks that
/// measure it, from streams of their own (the training loop's held-out stream draws the curves).
fn validation_and_test_tasks(
    settings: &Settings,
    seed: u64,
) -> Result<(Vec<SinusoidTask>, Vec<SinusoidTask>)> {
    let p = Protocol::of(settings)?;
    let (n_val, n_test) = (p.validation_tasks, p.test_tasks);
    let draw = |purpose: u64, n: usize| -> Result<Vec<SinusoidTask>> {
        let mut rng = crate::rng::stream(seed, purpose);
        (0..n).map(|_| SinusoidTask::sample(&mut rng, p.shots)).collect()
    };
    Ok((draw(VALIDATION_TASKS, n_val)?, draw(TEST_TASKS, n_test)?))
}

/// Stream word of the search's own seed (its initialisation, task stream and validation tasks).
const CHOICE: u64 = 71;

/// Chooses the contrastive rule's `beta` for `model` on validation tasks: from an initialisation
/// and task stream of the search's own (no reported seed's), a short meta-training at each `beta`,
/// then the validation loss after adaptation, chosen by the one-standard-error rule
/// ([`super::choice::search_beta`]). `None` at the paper scale, which takes the paper's `beta`.
fn choose_beta(settings: &Settings, model: &ModelSpec) -> Result<Option<Search>> {
    let p = Protocol::of(settings)?;
    let Some(search) = &p.beta_search else {
        return Ok(None);
    };
    let seed = crate::rng::hash_words(&[settings.seed, CHOICE]);
    let (validation, _) = validation_and_test_tasks(settings, seed)?;
    let score = |beta: f64| -> Result<(Vec<f64>, Option<String>)> {
        let c = TrainConfig {
            meta_steps: search.meta_steps,
            eval_every: search.meta_steps,
            eval_tasks: 1,
            ..config_at(
                settings,
                model.clone(),
                "contrastive",
                seed,
                Chosen {
                    beta: Some(beta),
                    ..Chosen::default()
                },
            )?
        };
        Ok(match crate::meta_training::train(&c, &mut |_| {}) {
            Ok(r) => (
                losses_after_adaptation(&c, &validation, &r.theta)?
                    .iter()
                    .map(|l| l.0)
                    .collect(),
                None,
            ),
            // A setting whose meta-training fails (a phase diverged) is the worst of the grid.
            Err(e) => (vec![f64::INFINITY; validation.len()], Some(e.to_string())),
        })
    };
    super::choice::search_beta(model.name(), &search.grid, search.extensions, score).map(Some)
}

/// Stream word of the step-size search's own seeds.
const META_LR_CHOICE: u64 = 72;
/// The seed of search stream `s` (the first is the seed the one-stream search used).
fn meta_lr_search_seed(settings: &Settings, s: u64) -> u64 {
    match s {
        0 => crate::rng::hash_words(&[settings.seed, META_LR_CHOICE]),
        s => crate::rng::hash_words(&[settings.seed, META_LR_CHOICE, s]),
    }
}

/// Chooses the outer Adam's step size for `model` and estimator `name` (the contrastive rule at
/// `beta`, its own search's choice) on validation tasks: on each of the protocol's `streams`
/// search streams (an initialisation and task stream of the search's own, no reported seed's), a
/// whole meta-training at each step size, its checkpoint chosen on that stream's validation tasks
/// as a reported run's is, then each validation task's loss after adaptation from that checkpoint;
/// the least mean over every stream's tasks wins (`choice::search_meta_lr`: no direction of a
/// step size is the safer). A run that stops early keeps its checkpoint from before, as a reported run does.
/// `None` at the paper scale, which takes the protocol's `meta_lr`.
fn choose_meta_lr(
    settings: &Settings,
    model: &ModelSpec,
    name: &str,
    beta: Option<f64>,
) -> Result<Option<Search>> {
    let p = Protocol::of(settings)?;
    let Some(search) = &p.meta_lr_search else {
        return Ok(None);
    };
    let seeds = (0..search.streams).map(|s| meta_lr_search_seed(settings, s));
    let streams = search_streams(settings, model, seeds)?;
    let score = |meta_lr: f64| {
        let chosen = Chosen {
            beta,
            meta_lr: Some(meta_lr),
            ..Chosen::default()
        };
        scored_on_streams(settings, model, name, &streams, chosen, false)
    };
    super::choice::search_meta_lr(&run_subject(model, name), &search.grid, search.extensions, score).map(Some)
}

/// Stream word of the inner step-size search's own seeds.
const STEP_SIZE_CHOICE: u64 = 73;

/// Chooses the inner step size of `model` and estimator `name` (at `beta` and the outer step size
/// `meta_lr`, their searches' choices) on validation tasks, as [`choose_meta_lr`] chooses the
/// outer one but on search streams of its own and with one more rule: a value at which a run stops
/// early on any stream (an inner phase diverged as meta-training sharpened the network) fails, so
/// that the reported runs can meta-train for their whole budget (docs/PROTOCOL.md, rule 4).
/// `None` at the paper scale, which takes the protocol's step sizes.
fn choose_step_size(
    settings: &Settings,
    model: &ModelSpec,
    name: &str,
    beta: Option<f64>,
    meta_lr: Option<f64>,
) -> Result<Option<Search>> {
    let p = Protocol::of(settings)?;
    let Some(search) = &p.step_size_search else {
        return Ok(None);
    };
    let seeds = (0..search.streams).map(|s| crate::rng::hash_words(&[settings.seed, STEP_SIZE_CHOICE, s]));
    let streams = search_streams(settings, model, seeds)?;
    let score = |step_size: f64| {
        let chosen = Chosen {
            beta,
            meta_lr,
            step_size: Some(step_size),
            nudged_steps: None,
        };
        scored_on_streams(settings, model, name, &streams, chosen, true)
    };
    let grid = if name == "bptt" {
        &search.bptt_grid
    } else {
        &search.grid
    };
    super::choice::search(
        &run_subject(model, name),
        "step_size",
        super::choice::Ties::None,
        grid,
        search.extensions,
        score,
    )
    .map(Some)
}

/// Stream word of the nudged budget search's own seeds.
const NUDGED_STEPS_CHOICE: u64 = 74;

/// Chooses the contrastive rule's nudged budget for `model` (at the searched `beta`, outer and
/// inner step sizes) on validation tasks, as [`choose_step_size`] chooses the step size (on search
/// streams of its own, a value at which a run stops early failing) but with ties to the smaller
/// budget ([`Protocol::nudged_steps_search`]). `None` at the paper scale.
fn choose_nudged_steps(settings: &Settings, model: &ModelSpec, chosen: Chosen) -> Result<Option<Search>> {
    let p = Protocol::of(settings)?;
    let Some(search) = &p.nudged_steps_search else {
        return Ok(None);
    };
    let seeds = (0..search.streams).map(|s| crate::rng::hash_words(&[settings.seed, NUDGED_STEPS_CHOICE, s]));
    let streams = search_streams(settings, model, seeds)?;
    let score = |steps: f64| {
        let chosen = Chosen {
            nudged_steps: Some(whole_steps(steps)),
            ..chosen
        };
        scored_on_streams(settings, model, "contrastive", &streams, chosen, true)
    };
    super::choice::search(
        &run_subject(model, "contrastive"),
        "nudged_steps",
        super::choice::Ties::ToTheSmaller,
        &search.grid,
        search.extensions,
        score,
    )
    .map(Some)
}

/// A search stream of a per-run search: its seed, validation tasks and initialisation.
type SearchStream = (u64, Vec<SinusoidTask>, Vector);

/// The search streams of `seeds` (each an initialisation and task stream of the search's own).
fn search_streams(
    settings: &Settings,
    model: &ModelSpec,
    seeds: impl Iterator<Item = u64>,
) -> Result<Vec<SearchStream>> {
    seeds
        .map(|seed| {
            let (validation, _) = validation_and_test_tasks(settings, seed)?;
            let theta0 = model.initial_theta(&mut crate::rng::stream(seed, 0))?;
            Ok((seed, validation, theta0))
        })
        .collect()
}

/// A search value's score: on each stream, a whole meta-training of `name` at `chosen`, its
/// checkpoint chosen on the stream's validation tasks, then each task's loss after adaptation from
/// it (all streams' in one list). With `stop_fails`, a run that stops early fails the value
/// (infinite losses, and why); without, it keeps its checkpoint from before, as a reported run does.
fn scored_on_streams(
    settings: &Settings,
    model: &ModelSpec,
    name: &str,
    streams: &[SearchStream],
    chosen: Chosen,
    stop_fails: bool,
) -> Result<(Vec<f64>, Option<String>)> {
    let mut losses = Vec::new();
    for (s, (seed, validation, theta0)) in streams.iter().enumerate() {
        let c = config_at(settings, model.clone(), name, *seed, chosen)?;
        let run = train_checkpointed(&c, theta0, validation, &mut |_| {})?;
        match run.stopped {
            Some(e) if stop_fails => {
                let why = format!("stream {s} stopped after meta-step {}: {e}", run.last.0);
                return Ok((vec![f64::INFINITY; validation.len() * streams.len()], Some(why)));
            }
            _ => losses.extend(run.validation),
        }
    }
    Ok((losses, None))
}

/// A per-run search's subject (the outer and inner step sizes'): model and estimator, as in unit
/// names.
fn run_subject(model: &ModelSpec, name: &str) -> String {
    format!("{}-{name}", model.name())
}

/// Stream numbers of the figure's own held-out tasks (the training loop uses 0 to 2).
const VALIDATION_TASKS: u64 = 3;
const TEST_TASKS: u64 = 4;

/// Student's t quantile t(0.975, df) (`stats::t_quantile`).
pub(super) fn t975(df: usize) -> f64 {
    stats::t_quantile(0.975, df as f64)
}

/// Mean over seeds and the half-width of its 95% t-interval (seeds are the independent units).
pub(super) fn seed_mean_ci(values: &[f64]) -> (f64, f64) {
    stats::mean_interval(values, 0.95)
}

/// The equivalence margin of two estimators' final losses: this fraction of the mean of their
/// matched untrained losses (fixed before any run; docs/PROTOCOL.md).
pub const EQUIVALENCE_MARGIN: f64 = 0.1;
/// The family-wise error rate of each table's family of tests (Holm-corrected).
pub const ALPHA: f64 = 0.05;

/// The configuration of one meta-training run of the figures (shipped as `configs/train_*.toml`)
/// at the values the job's searches chose (`chosen`: from `training_beta_choice.csv`,
/// `training_meta_lr_choice.csv`, `training_step_size_choice.csv` and
/// `training_nudged_steps_choice.csv`; the searches themselves are minutes of meta-training), or,
/// where `chosen` has none, the protocol's (the paper scale's).
pub fn figure_training_config(
    scale: Scale,
    seed: u64,
    model: &str,
    estimator: &str,
    chosen: Chosen,
) -> Result<TrainConfig> {
    let settings = Settings {
        out: PathBuf::new(),
        paper: PathBuf::new(),
        scale,
        seed,
        protocols: Vec::new(),
        replace_stale: false,
    };
    let model = models(&Protocol::of(&settings)?)
        .into_iter()
        .find(|m| m.name() == model)
        .ok_or_else(|| crate::CmlError::UnknownName {
            kind: "model".into(),
            name: model.into(),
            allowed: crate::registry::model_names(),
        })?;
    config_at(&settings, model, estimator, seed, chosen)
}

/// The seeds of the runs: the protocol's count from `settings`' seed on.
fn seeds(settings: &Settings) -> Result<Vec<u64>> {
    let n = Protocol::of(settings)?.seeds as u64;
    Ok((0..n).map(|i| settings.seed + i).collect())
}

/// The job: one unit per model, estimator and seed.
pub(super) struct Training;
pub(super) static TRAINING: Training = Training;

fn unit_name(model: &str, estimator: &str, seed: u64) -> String {
    format!("{model}-{estimator}-seed{seed}")
}

/// What one meta-training run (one model, estimator and seed) leaves for the report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SeedRun {
    /// The contrastive rule's beta and the outer and inner step sizes, as the searches chose them.
    /// Rows written before the inner searches existed (the committed paper-scale slice) carry
    /// `beta` and `meta_lr` at the top instead: [`SeedRun::with_legacy_choices`] moves them here.
    #[serde(default)]
    chosen: Chosen,
    #[serde(default, skip_serializing)]
    beta: Option<f64>,
    #[serde(default, skip_serializing)]
    meta_lr: Option<f64>,
    /// Rows of `meta_training.csv`, and the curve they draw: (meta-step, held-out loss after).
    curve_rows: Vec<String>,
    curve: Vec<(f64, f64)>,
    final_loss: f64,
    initial_loss: f64,
    chosen_step: usize,
    seconds_per_meta_step: f64,
    diverged: Vec<String>,
    /// Panels and rows of the example tasks (the contrastive run of the first seed only).
    examples: Option<(Vec<Panel>, Vec<String>)>,
}

impl SeedRun {
    /// The run with the choices of rows in the earlier layout (top-level `beta`, `meta_lr`) in
    /// `chosen`, where they are.
    fn with_legacy_choices(self) -> Self {
        Self {
            chosen: Chosen {
                beta: self.chosen.beta.or(self.beta),
                meta_lr: self.chosen.meta_lr.or(self.meta_lr),
                ..self.chosen
            },
            beta: None,
            meta_lr: None,
            ..self
        }
    }
}

impl Job<super::Section> for Training {
    fn name(&self) -> &'static str {
        "training"
    }

    fn about(&self) -> &'static str {
        "meta-training curves and example tasks for both models, final-loss table"
    }

    fn paper_budgets(&self) -> super::units::PaperBudgets {
        super::units::PaperBudgets::Own
    }

    fn protocol(&self, settings: &Settings) -> Result<serde_json::Value> {
        super::units::encode(&Protocol::of(settings)?)
    }

    fn configurable(&self) -> bool {
        true
    }

    fn extent_keys(&self) -> &'static [&'static str] {
        // Each seed's units draw from that seed alone.
        &["seeds"]
    }

    fn reads(&self, unit: &str) -> super::units::Reads {
        // Of the searches' keys, a unit reads those of the searches it (or its search) runs after.
        let settings = Settings::at(Scale::Default);
        let (Ok(subjects), Ok(runs)) = (subjects(&settings), runs(&settings)) else {
            return Default::default();
        };
        let run = runs
            .iter()
            .find(|(model, name, seed)| unit_name(model.name(), name, *seed) == unit)
            .and_then(|(model, name, _)| {
                subjects
                    .iter()
                    .find(|s| s.model.name() == model.name() && s.name == *name)
            });
        super::chain::reads(&Searches, unit, &subjects, run)
    }

    fn units(&self, settings: &Settings) -> Result<Vec<String>> {
        // The searches first, in the order they run, so that the runs find them stored.
        Ok(super::chain::search_units(&Searches, &subjects(settings)?)
            .into_iter()
            .map(|(_, _, unit)| unit)
            .chain(
                runs(settings)?
                    .iter()
                    .map(|(model, name, seed)| unit_name(model.name(), name, *seed)),
            )
            .collect())
    }

    fn run_unit(&self, settings: &Settings, unit: &str, staging: &Path) -> Result<serde_json::Value> {
        let subjects = subjects(settings)?;
        if let Some(rows) =
            super::chain::run_search_unit(&Searches, self, settings, staging, unit, &subjects)?
        {
            return Ok(rows);
        }
        let (model, name, seed) = self.parse_unit(settings, unit)?;
        let subject = Subject {
            p: Protocol::of(settings)?,
            model,
            name,
            chosen: Chosen::default(),
        };
        let all = Searches.choices().len();
        let (s, _) = super::chain::settle(&Searches, self, settings, staging, all, subject)?;
        super::units::encode(&run_seed(settings, s.model, name, seed, s.chosen)?)
    }

    fn report(&self, settings: &Settings, units: &[Stored], files: &mut Vec<PathBuf>) -> Result<Context> {
        Ok(super::writeup::training_section(&report(settings, units, files)?))
    }

    fn calibrate(&self, settings: &Settings, units: &[String]) -> Result<Option<Vec<f64>>> {
        // One short timed run per (model, estimator): the seeds of a kind cost the same. Each
        // search is counted once, in its own unit: the beta search's short runs, and a step-size
        // unit's whole run per search stream, value of its grid and extension it may add (an
        // upper bound: a run that stops early costs less). A run unit that finds its search
        // unstored runs it too, so slices that start together may cost more.
        enum Unit {
            Run,
            BetaSearch,
            MetaLrSearch,
            StepSizeSearch,
            NudgedStepsSearch,
        }
        let mut per_kind: Vec<(String, (f64, f64))> = Vec::new();
        let mut out = Vec::new();
        let searches = super::chain::search_units(&Searches, &subjects(settings)?);
        for unit in units {
            let (model, name, kind_of_unit) = match searches.iter().find(|(_, _, u)| u == unit) {
                Some((k, s, _)) => (
                    s.model.clone(),
                    s.name,
                    match Searches.choices()[*k] {
                        Choice::Beta => Unit::BetaSearch,
                        Choice::MetaLr => Unit::MetaLrSearch,
                        Choice::StepSize => Unit::StepSizeSearch,
                        Choice::NudgedSteps => Unit::NudgedStepsSearch,
                    },
                ),
                None => {
                    let (model, name, _) = self.parse_unit(settings, unit)?;
                    (model, name, Unit::Run)
                }
            };
            let kind = format!("{}-{name}", model.name());
            let (run, search) = match per_kind.iter().find(|(k, _)| *k == kind) {
                Some((_, s)) => *s,
                None => {
                    let s = calibrate_run(settings, model, name)?;
                    per_kind.push((kind, s));
                    s
                }
            };
            out.push(match kind_of_unit {
                Unit::Run => run,
                Unit::BetaSearch => search,
                Unit::MetaLrSearch => {
                    let r = Protocol::of(settings)?
                        .meta_lr_search
                        .expect("an outer step-size unit where the protocol has that search");
                    (r.grid.len() + r.extensions) as f64 * r.streams as f64 * run
                }
                Unit::StepSizeSearch => {
                    let r = Protocol::of(settings)?
                        .step_size_search
                        .expect("an inner step-size unit where the protocol has that search");
                    let grid = if name == "bptt" { &r.bptt_grid } else { &r.grid };
                    (grid.len() + r.extensions) as f64 * r.streams as f64 * run
                }
                // A run's cost at the protocol's budget stands for every budget's.
                Unit::NudgedStepsSearch => {
                    let r = Protocol::of(settings)?
                        .nudged_steps_search
                        .expect("a nudged budget unit where the protocol has that search");
                    (r.grid.len() + r.extensions) as f64 * r.streams as f64 * run
                }
            });
        }
        Ok(Some(out))
    }
}

impl Training {
    fn parse_unit(&self, settings: &Settings, unit: &str) -> Result<(ModelSpec, &'static str, u64)> {
        super::units::lookup(self, settings, unit, runs(settings)?, |(model, name, seed)| {
            unit_name(model.name(), name, *seed)
        })
    }
}

/// The job's validation searches, in the order they run (docs/PROTOCOL.md): the contrastive rule's
/// `beta` (one unit per model), then per model and estimator the outer step size and the inner
/// one, then the contrastive rule's nudged budget.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Choice {
    Beta,
    MetaLr,
    StepSize,
    NudgedSteps,
}

/// A run's model and estimator, with the protocol it runs and what the searches so far chose for it.
#[derive(Debug, Clone)]
struct Subject {
    p: Protocol,
    model: ModelSpec,
    name: &'static str,
    chosen: Chosen,
}

/// The job's chain of searches ([`super::chain`]).
struct Searches;

impl Chain for Searches {
    type Choice = Choice;
    type Subject = Subject;

    fn choices(&self) -> &'static [Choice] {
        &[
            Choice::Beta,
            Choice::MetaLr,
            Choice::StepSize,
            Choice::NudgedSteps,
        ]
    }

    fn key(&self, choice: Choice) -> &'static str {
        match choice {
            Choice::Beta => "beta_search",
            Choice::MetaLr => "meta_lr_search",
            Choice::StepSize => "step_size_search",
            Choice::NudgedSteps => "nudged_steps_search",
        }
    }

    fn unit(&self, choice: Choice, s: &Subject) -> Option<String> {
        let p = &s.p;
        let contrastive = s.name == "contrastive";
        let (searched, takes, prefix) = match choice {
            Choice::Beta => (p.beta_search.is_some(), contrastive, "choice"),
            Choice::MetaLr => (p.meta_lr_search.is_some(), true, "choice-meta-lr"),
            Choice::StepSize => (p.step_size_search.is_some(), true, "choice-step-size"),
            Choice::NudgedSteps => (
                p.nudged_steps_search.is_some(),
                contrastive,
                "choice-nudged-steps",
            ),
        };
        let subject = match choice {
            Choice::Beta => s.model.name().to_string(),
            _ => run_subject(&s.model, s.name),
        };
        (searched && takes).then(|| format!("{prefix}-{subject}"))
    }

    fn search(&self, settings: &Settings, choice: Choice, s: &Subject) -> Result<Option<Search>> {
        let Chosen { beta, meta_lr, .. } = s.chosen;
        match choice {
            Choice::Beta => choose_beta(settings, &s.model),
            Choice::MetaLr => choose_meta_lr(settings, &s.model, s.name, beta),
            Choice::StepSize => choose_step_size(settings, &s.model, s.name, beta, meta_lr),
            Choice::NudgedSteps => choose_nudged_steps(settings, &s.model, s.chosen),
        }
    }

    fn apply(&self, choice: Choice, s: Subject, value: f64) -> Subject {
        let c = s.chosen;
        let chosen = match choice {
            Choice::Beta => Chosen {
                beta: Some(value),
                ..c
            },
            Choice::MetaLr => Chosen {
                meta_lr: Some(value),
                ..c
            },
            Choice::StepSize => Chosen {
                step_size: Some(value),
                ..c
            },
            Choice::NudgedSteps => Chosen {
                nudged_steps: Some(whole_steps(value)),
                ..c
            },
        };
        Subject { chosen, ..s }
    }
}

/// Every model and estimator, unsearched.
fn subjects(settings: &Settings) -> Result<Vec<Subject>> {
    let p = Protocol::of(settings)?;
    let mut out = Vec::new();
    for model in models(&p) {
        for (name, _) in ESTIMATORS {
            out.push(Subject {
                p: p.clone(),
                model: model.clone(),
                name,
                chosen: Chosen::default(),
            });
        }
    }
    Ok(out)
}

/// Every run of the job, in unit order: model, estimator, seed.
fn runs(settings: &Settings) -> Result<Vec<(ModelSpec, &'static str, u64)>> {
    let mut out = Vec::new();
    for model in models(&Protocol::of(settings)?) {
        for (name, _) in ESTIMATORS {
            for seed in seeds(settings)? {
                out.push((model.clone(), name, seed));
            }
        }
    }
    Ok(out)
}

/// Seconds one run of `model` and `estimator` would take, from 3 timed meta-steps and one timed
/// validation evaluation, scaled to the run's meta-steps and evaluations; and the seconds of the
/// contrastive rule's beta search (0 for the other estimators and at the paper scale).
fn calibrate_run(settings: &Settings, model: ModelSpec, name: &str) -> Result<(f64, f64)> {
    let full = config(settings, model.clone(), name, settings.seed)?;
    let (validation, test) = validation_and_test_tasks(settings, settings.seed)?;
    let short = TrainConfig {
        meta_steps: 3,
        eval_every: 1000,
        ..full.clone()
    };
    let mut wall = Vec::new();
    let mut control = Control {
        resume: None,
        checkpoint_every: 1000,
        checkpoint: &mut |_| Ok(()),
        stop: &|_| false,
    };
    train_with(&short, &mut control, &mut |s| wall.push(s.wall_seconds))?;
    // Steps 1 to 3 (the first entry is step 0's evaluation).
    let per_step = (wall[3] - wall[1]) / 2.0;
    let theta0 = model.initial_theta(&mut crate::rng::stream(settings.seed, 0))?;
    let clock = std::time::Instant::now();
    scored_after_adaptation(&full, &validation, &theta0)?;
    let per_task = clock.elapsed().as_secs_f64() / validation.len() as f64;
    let evaluations = (full.meta_steps / full.eval_every + 1) as f64;
    let tasks = evaluations * (validation.len() + full.eval_tasks) as f64 + 2.0 * test.len() as f64;
    let search = match (name, Protocol::of(settings)?.beta_search) {
        ("contrastive", Some(b)) => {
            let per_setting = per_step * b.meta_steps as f64 + per_task * validation.len() as f64;
            b.grid.len() as f64 * per_setting
        }
        _ => 0.0,
    };
    Ok((per_step * full.meta_steps as f64 + per_task * tasks, search))
}

/// A meta-training run and the checkpoint its validation tasks chose.
struct Checkpointed {
    /// (mean validation loss after adaptation, meta-step, theta) of the chosen checkpoint.
    best: (f64, usize, Vector),
    /// Each validation task's loss after adaptation at that checkpoint (what a search scores).
    validation: Vec<f64>,
    /// The last meta-step completed and the wall seconds by then.
    last: (usize, f64),
    /// Why the run stopped early, if it did (its checkpoint is from before).
    stopped: Option<crate::CmlError>,
}

/// Meta-trains `c` from `theta0` while the validation tasks choose the checkpoint, as the paper's
/// code does: at every evaluation step, theta is kept if its mean validation loss after
/// adaptation is the lowest so far (step 0 is `theta0`). `observe` sees every meta-step.
fn train_checkpointed(
    c: &TrainConfig,
    theta0: &Vector,
    validation: &[SinusoidTask],
    observe: &mut dyn FnMut(&MetaStep),
) -> Result<Checkpointed> {
    // Each task's loss and their mean, summed as `scored_after_adaptation` sums them.
    let after = |theta: &Vector| -> Result<(f64, Vec<f64>)> {
        let losses: Vec<f64> = losses_after_adaptation(c, validation, theta)?
            .iter()
            .map(|l| l.0)
            .collect();
        Ok((losses.iter().sum::<f64>() / losses.len() as f64, losses))
    };
    let (mean0, losses0) = after(theta0)?;
    let mut best = (mean0, 0usize, theta0.clone());
    let mut best_losses = losses0;
    let mut last = (0usize, 0.0f64);
    let outcome = {
        let mut keep_best = |state: &TrainState| -> Result<()> {
            let theta = Vector::from_vec(state.theta.clone());
            let (v, losses) = after(&theta)?;
            if v < best.0 {
                best = (v, state.step, theta);
                best_losses = losses;
            }
            Ok(())
        };
        let mut control = Control {
            resume: None,
            checkpoint_every: c.eval_every,
            checkpoint: &mut keep_best,
            stop: &|_| false,
        };
        train_with(c, &mut control, &mut |s| {
            last = (s.step, s.wall_seconds);
            observe(s);
        })
    };
    Ok(Checkpointed {
        best,
        validation: best_losses,
        last,
        stopped: outcome.err(),
    })
}

/// One meta-training run: the curve, the validation-chosen checkpoint and its test loss.
/// `chosen`: the values the searches chose.
fn run_seed(settings: &Settings, model: ModelSpec, name: &str, seed: u64, chosen: Chosen) -> Result<SeedRun> {
    let c = config_at(settings, model.clone(), name, seed, chosen)?;
    let (validation, test) = validation_and_test_tasks(settings, seed)?;
    let theta0 = model.initial_theta(&mut crate::rng::stream(seed, 0))?;
    // The curve is collected as it is made, so that a run that diverges keeps it.
    let (mut curve, mut curve_rows) = (Vec::new(), Vec::new());
    let run = train_checkpointed(&c, &theta0, &validation, &mut |s| {
        if let Some(e) = s.evaluation {
            curve.push((s.step as f64, e.after));
            curve_rows.push(format!(
                "{},{name},{seed},{},{:e},{:e}",
                model.name(),
                s.step,
                e.before,
                e.after
            ));
        }
    })?;
    let (best, last) = (run.best, run.last);
    // Meta-training can sharpen a network until a fixed inner step size diverges. The run then
    // stops there, and the validation-chosen checkpoint (from before the divergence) is what
    // gets tested; the table says which runs stopped.
    let mut diverged = Vec::new();
    if let Some(e) = run.stopped {
        diverged.push(format!("seed {seed} after meta-step {}", last.0));
        log_divergence(model.name(), name, seed, &e);
    }
    let (final_loss, failed) = scored_after_adaptation(&c, &test, &best.2)?;
    if failed > 0 {
        diverged.push(format!(
            "seed {seed}: adaptation diverged on {failed} of {} test tasks",
            test.len()
        ));
    }
    let examples = if name == "contrastive" && seed == settings.seed {
        let (mut panels, mut rows) = (Vec::new(), Vec::new());
        examples(&c, &test, &theta0, &best.2, &mut panels, &mut rows)?;
        Some((panels, rows))
    } else {
        None
    };
    Ok(SeedRun {
        chosen,
        beta: None,
        meta_lr: None,
        curve_rows,
        curve,
        final_loss,
        initial_loss: scored_after_adaptation(&c, &test, &theta0)?.0,
        chosen_step: best.1,
        seconds_per_meta_step: last.1 / last.0.max(1) as f64,
        diverged,
        examples,
    })
}

/// The curves, examples, final-loss table and paired differences, from the stored runs.
fn report(settings: &Settings, units: &[Stored], files: &mut Vec<PathBuf>) -> Result<TrainingResults> {
    let protocol = Protocol::of(settings)?;
    let net = protocol.net.clone();
    let seeds = seeds(settings)?;
    // The units given (all of them, or those `--unit` selected): absent runs are left out.
    let run_of = |model: &str, name: &str, seed: u64| -> Result<Option<SeedRun>> {
        let unit = unit_name(model, name, seed);
        units
            .iter()
            .find(|s| s.unit == unit)
            .map(|s| super::units::decode::<SeedRun>(s).map(SeedRun::with_legacy_choices))
            .transpose()
    };
    let mut curve_rows = Vec::new();
    let mut finals = Vec::new();
    let mut improvement_p = Vec::new();
    let mut panels = Vec::new();
    let mut example_panels = Vec::new();
    let mut example_rows = Vec::new();
    let mut seed_rows = Vec::new();
    let probe = config(
        settings,
        models(&protocol).remove(0),
        "contrastive",
        settings.seed,
    )?;
    let subjects = subjects(settings)?;
    for model in models(&protocol) {
        let mut panel = Panel::new(
            format!("{} model: meta-test loss after adaptation", model.name()),
            "meta-step",
            "query MSE (held-out tasks)",
            false,
            false,
        );
        for (i, (name, shown)) in ESTIMATORS.iter().enumerate() {
            let mut per_seed: Vec<Vec<(f64, f64)>> = Vec::new();
            let (mut finals_per_seed, mut initial_per_seed, mut chosen, mut seconds) =
                (Vec::new(), Vec::new(), Vec::new(), 0.0);
            let mut diverged = Vec::new();
            for &seed in &seeds {
                let Some(run) = run_of(model.name(), name, seed)? else {
                    continue;
                };
                let unit = format!("training unit {}", unit_name(model.name(), name, seed));
                let c = run.chosen;
                let taken = [c.beta, c.meta_lr, c.step_size, c.nudged_steps.map(|n| n as f64)];
                let subject = Subject {
                    p: protocol.clone(),
                    model: model.clone(),
                    name,
                    chosen: Chosen::default(),
                };
                super::chain::check_taken(&Searches, units, &subject, &taken, &unit)?;
                seed_rows.push(format!(
                    "{},{name},{seed},{},{},{}",
                    model.name(),
                    run.initial_loss,
                    run.final_loss,
                    run.chosen_step
                ));
                curve_rows.extend(run.curve_rows);
                per_seed.push(run.curve);
                finals_per_seed.push(run.final_loss);
                initial_per_seed.push(run.initial_loss);
                chosen.push(run.chosen_step);
                seconds += run.seconds_per_meta_step;
                diverged.extend(run.diverged);
                if let Some((p, r)) = run.examples {
                    example_panels.extend(p);
                    example_rows.extend(r);
                }
            }
            if per_seed.is_empty() {
                continue;
            }
            seconds /= per_seed.len() as f64;
            // Mean and min-max spread at each evaluated step, over the seeds that reached it.
            let longest = per_seed
                .iter()
                .max_by_key(|c| c.len())
                .cloned()
                .unwrap_or_default();
            let mut mean = Vec::new();
            let mut band = Vec::new();
            for (j, &(x, _)) in longest.iter().enumerate() {
                let ys: Vec<f64> = per_seed.iter().filter_map(|c| c.get(j).map(|p| p.1)).collect();
                let m = ys.iter().sum::<f64>() / ys.len() as f64;
                mean.push((x, m));
                band.push((
                    x,
                    ys.iter().copied().fold(f64::INFINITY, f64::min),
                    ys.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                ));
            }
            let mut s = Series::new(*shown, mean, i, Style::LinePoints);
            s.band = band;
            panel.series.push(s);
            let (m, ci) = seed_mean_ci(&finals_per_seed);
            let (m0, _) = seed_mean_ci(&initial_per_seed);
            let paired: Vec<f64> = initial_per_seed
                .iter()
                .zip(&finals_per_seed)
                .map(|(a, b)| a - b)
                .collect();
            let (improvement, improvement_ci95) = seed_mean_ci(&paired);
            improvement_p.push(stats::paired_test(&paired).p_value);
            finals.push(FinalLoss {
                model: model.name().into(),
                estimator: shown.to_string(),
                per_seed: finals_per_seed,
                mean: m,
                ci95: ci,
                initial_mean: m0,
                improvement,
                improvement_ci95,
                improvement_holm: f64::NAN,
                chosen_steps: chosen,
                seconds_per_meta_step: seconds,
                diverged,
            });
        }
        if !panel.series.is_empty() {
            panels.push(panel);
        }
    }
    for (f, holm) in finals.iter_mut().zip(stats::holm(&improvement_p)) {
        f.improvement_holm = holm;
    }
    let meta_steps = probe.meta_steps;
    // Seeds per method (fewer than the job's when `--unit` chose some).
    let seed_count = finals.iter().map(|f| f.per_seed.len()).max().unwrap_or(0);
    write_csv(
        &settings.out.join("meta_training.csv"),
        "model,estimator,seed,step,test_loss_before,test_loss_after",
        &curve_rows,
        files,
    )?;
    // Every number of the final-loss table, recomputable from this file (docs/PROTOCOL.md).
    write_csv(
        &settings.out.join("final_loss_per_seed.csv"),
        "model,estimator,seed,matched_baseline_loss,final_loss,chosen_meta_step",
        &seed_rows,
        files,
    )?;
    // The searches, where their units were given, written after the runs' checks.
    let [searches, rate_searches, step_searches, nudged_searches] = super::chain::write_stored(
        &Searches,
        units,
        &subjects,
        &settings.out,
        [
            ("training_beta_choice.csv", "model", &[Choice::Beta]),
            ("training_meta_lr_choice.csv", "run", &[Choice::MetaLr]),
            ("training_step_size_choice.csv", "run", &[Choice::StepSize]),
            ("training_nudged_steps_choice.csv", "run", &[Choice::NudgedSteps]),
        ],
        files,
    )?;
    let columns = panels.len().clamp(1, 2);
    save(settings, "meta_training", &Figure { panels, columns }, files)?;
    // The examples come from the first seed's contrastive runs, which a report of part of the
    // job (`--unit`) may not hold.
    if !example_panels.is_empty() {
        write_csv(
            &settings.out.join("sinusoid_examples.csv"),
            "model,task,theta,x,target,before,after",
            &example_rows,
            files,
        )?;
        save(
            settings,
            "sinusoid_examples",
            &Figure {
                panels: example_panels,
                columns: 2,
            },
            files,
        )?;
    }

    let net_name = net.to_string();
    let (free_steps, nudged_steps) = match &probe.estimator {
        EstimatorSpec::Contrastive(c) => (c.free.max_steps, c.nudged.max_steps),
        _ => (0, 0),
    };
    let (n_val, n_test) = {
        let (v, t) = validation_and_test_tasks(settings, settings.seed)?;
        (v.len(), t.len())
    };
    let differences = paired_differences(&finals);
    let results = TrainingResults {
        finals,
        differences,
        meta_steps,
        meta_batch: probe.meta_batch,
        free_steps,
        nudged_steps,
        seeds: seed_count,
        test_tasks: n_test,
        validation_tasks: n_val,
        net: net_name,
        beta_searches: searches,
        meta_lr_searches: rate_searches,
        step_size_searches: step_searches,
        nudged_steps_searches: nudged_searches,
        protocol,
    };
    write_table(
        settings,
        "final_loss.md",
        &table(&results, probe.eval_every)?,
        files,
    )?;
    Ok(results)
}

/// The sinusoid job's table page: each estimator's final meta-test loss against its matched
/// baseline, the pairs of estimators, and the searches (`eval_every`: the checkpoints' spacing).
pub fn table(r: &TrainingResults, eval_every: usize) -> Result<String> {
    let p = &r.protocol;
    // Each inner loop's step size: the protocol's, or its search's choice (the sections below).
    let inner_lr = |lr: f64| {
        if r.step_size_searches.is_empty() {
            lr.to_string()
        } else {
            "chosen on validation per model and estimator".to_string()
        }
    };
    let finals = r
        .finals
        .iter()
        .map(|f| {
            Context::new()
                .text("model", &f.model)
                .text("estimator", &f.estimator)
                .text("untrained", num(f.initial_mean))
                .text("mean", num(f.mean))
                .text("ci95", num(f.ci95))
                .text("improvement", num(f.improvement))
                .text("improvement_ci95", num(f.improvement_ci95))
                .text("p", p_value(f.improvement_holm))
                .text(
                    "per_seed",
                    f.per_seed.iter().map(|v| num(*v)).collect::<Vec<_>>().join(", "),
                )
                .text(
                    "chosen_steps",
                    f.chosen_steps
                        .iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                )
                .text("seconds", format!("{:.3}", f.seconds_per_meta_step))
                .text("diverged", super::joined_or_none(&f.diverged, "; "))
        })
        .collect();
    let differences = r
        .differences
        .iter()
        .map(|d| {
            Context::new()
                .text("model", &d.model)
                .text("first", &d.first)
                .text("second", &d.second)
                .text("difference", num(d.mean))
                .text("ci95", num(d.ci95))
                .text("p", p_value(d.holm))
                .text("margin", num(d.margin))
                .text("equivalence_p", p_value(d.equivalence_holm))
                .text("verdict", d.verdict.describe())
        })
        .collect();
    // A search's section where the scale has the search and its units were given.
    let searched = |extensions: String, searches: &[Search], column: &str| {
        (!searches.is_empty()).then(|| {
            Context::new()
                .text("extensions", extensions)
                .text("table", super::searches::table(searches, column))
        })
    };
    let context = Context::new()
        .text("net", &r.net)
        .text("shots", p.shots)
        .text("meta_steps", r.meta_steps)
        .text("meta_batch", r.meta_batch)
        .text("seeds", r.seeds)
        .text("step_size", inner_lr(p.step_size))
        .text("free_steps", r.free_steps)
        .text(
            "nudged_budget",
            if r.nudged_steps_searches.is_empty() {
                format!("{} nudged steps", r.nudged_steps)
            } else {
                "the contrastive rule's nudged steps chosen on validation per model".to_string()
            },
        )
        .text("bptt_steps", p.bptt_steps)
        .text("bptt_step_size", inner_lr(p.bptt_step_size))
        .text("test_tasks", r.test_tasks)
        .text("validation_tasks", r.validation_tasks)
        .text("eval_every", eval_every)
        .text("method_count", r.finals.len())
        .list("finals", finals)
        .text("margin", EQUIVALENCE_MARGIN)
        .text("pair_count", r.differences.len())
        .text("alpha", ALPHA)
        .list("differences", differences)
        .text("validation", p.validation_tasks)
        .text("beta", p.beta)
        .section(
            "beta_search",
            p.beta_search.as_ref().and_then(|s| {
                searched(s.extensions.to_string(), &r.beta_searches, "model")
                    .map(|c| c.text("meta_steps", s.meta_steps))
            }),
        )
        .text("meta_lr", p.meta_lr)
        .section(
            "meta_lr_search",
            p.meta_lr_search.as_ref().and_then(|s| {
                searched(s.extensions.to_string(), &r.meta_lr_searches, "run")
                    .map(|c| c.text("streams", s.streams))
            }),
        )
        .text("protocol_step_size", p.step_size)
        .text("protocol_bptt_step_size", p.bptt_step_size)
        .section(
            "step_size_search",
            p.step_size_search.as_ref().and_then(|s| {
                searched(s.extensions.to_string(), &r.step_size_searches, "run")
                    .map(|c| c.text("streams", s.streams))
            }),
        )
        .text("protocol_nudged_steps", p.nudged_steps)
        .section(
            "nudged_steps_search",
            p.nudged_steps_search.as_ref().and_then(|s| {
                searched(
                    super::searches::times(s.extensions),
                    &r.nudged_steps_searches,
                    "run",
                )
                .map(|c| c.text("streams", s.streams))
            }),
        );
    super::render_table(include_str!("tables/final_loss.md"), "final_loss.md", &context)
}

/// Every pair of estimators of a model, paired over seeds, as one Holm-corrected family of
/// difference tests and one of equivalence tests; the two methods' matched untrained losses set
/// the pair's equivalence margin.
fn paired_differences(finals: &[FinalLoss]) -> Vec<PairedDifference> {
    let mut pairs = Vec::new();
    for (i, a) in finals.iter().enumerate() {
        for (j, b) in finals.iter().enumerate().skip(i + 1) {
            if b.model == a.model {
                pairs.push((i, j));
            }
        }
    }
    let diffs: Vec<Vec<f64>> = pairs
        .iter()
        .map(|&(i, j)| {
            finals[i]
                .per_seed
                .iter()
                .zip(&finals[j].per_seed)
                .map(|(x, y)| x - y)
                .collect()
        })
        .collect();
    let margins: Vec<f64> = pairs
        .iter()
        .map(|&(i, j)| EQUIVALENCE_MARGIN * 0.5 * (finals[i].initial_mean + finals[j].initial_mean))
        .collect();
    pairs
        .iter()
        .zip(stats::compare_family(&diffs, &margins, ALPHA))
        .map(|(&(i, j), c)| PairedDifference {
            model: finals[i].model.clone(),
            first: finals[i].estimator.clone(),
            second: finals[j].estimator.clone(),
            mean: c.mean,
            ci95: c.ci95,
            holm: c.holm,
            margin: c.margin,
            equivalence_holm: c.equivalence_holm,
            verdict: c.verdict,
        })
        .collect()
}

/// A p-value for a table: three significant digits, or "n/a" below 2 seeds.
pub(super) fn p_value(p: f64) -> String {
    if p.is_nan() {
        "n/a".into()
    } else {
        format!("{p:.3}")
    }
}

/// Two held-out tasks: target, support points, prediction before and after adaptation, with the
/// initial and the meta-trained meta-parameters.
fn examples(
    c: &TrainConfig,
    tasks: &[SinusoidTask],
    theta0: &Vector,
    trained: &Vector,
    panels: &mut Vec<Panel>,
    rows: &mut Vec<String>,
) -> Result<()> {
    let xs = Vector::from_iterator(101, (0..101).map(|i| -5.0 + 0.1 * i as f64));
    for (t, task) in tasks.iter().take(2).enumerate() {
        let mut panel = Panel::new(
            format!("{} model, held-out task {}", c.model.name(), t + 1),
            "x",
            "y",
            false,
            false,
        );
        panel.series.push(Series::new(
            "target",
            xs.iter().map(|&x| (x, task.target(x))).collect(),
            6,
            Style::Dashed,
        ));
        panel.series.push(Series::new(
            "support points",
            task.x_support
                .iter()
                .zip(task.y_support.iter())
                .map(|(&x, &y)| (x, y))
                .collect(),
            6,
            Style::Points,
        ));
        for (k, (theta, what)) in [(theta0, "untrained"), (trained, "meta-trained")]
            .into_iter()
            .enumerate()
        {
            let problem = c.model.problem(task.clone(), theta)?;
            let phi_init = problem.initial_phi(problem.theta())?;
            let before = c.model.predict(task, theta, &phi_init, &xs)?;
            let after = c.model.predict(task, theta, &adapt(c, problem.as_ref())?, &xs)?;
            if k == 1 {
                panel.series.push(Series::new(
                    "meta-trained, before adaptation",
                    xs.iter().copied().zip(before.iter().copied()).collect(),
                    0,
                    Style::Line,
                ));
            }
            panel.series.push(Series::new(
                format!("{what}, after adaptation"),
                xs.iter().copied().zip(after.iter().copied()).collect(),
                1 + k,
                Style::Line,
            ));
            for i in 0..xs.len() {
                rows.push(format!(
                    "{},{},{what},{:e},{:e},{:e},{:e}",
                    c.model.name(),
                    t + 1,
                    xs[i],
                    task.target(xs[i]),
                    before[i],
                    after[i]
                ));
            }
        }
        panels.push(panel);
    }
    Ok(())
}

/// Mean query loss after adaptation over `tasks`, and how many adaptations diverged. A task
/// whose adaptation diverges scores its loss before adaptation (at `phi_init`): no adaptation
/// was possible, and leaving the task out would flatter the method.
fn scored_after_adaptation(c: &TrainConfig, tasks: &[SinusoidTask], theta: &Vector) -> Result<(f64, usize)> {
    let scores = losses_after_adaptation(c, tasks, theta)?;
    let n = scores.len() as f64;
    Ok((
        scores.iter().map(|s| s.0).sum::<f64>() / n,
        scores.iter().filter(|s| s.1).count(),
    ))
}

/// Each task's query MSE after adaptation from `theta`, and whether the adaptation diverged (then
/// the loss before it).
fn losses_after_adaptation(
    c: &TrainConfig,
    tasks: &[SinusoidTask],
    theta: &Vector,
) -> Result<Vec<(f64, bool)>> {
    crate::parallel::map_in_order(tasks, |task| {
        let problem = c.model.problem(task.clone(), theta)?;
        let theta = problem.theta();
        let before = problem
            .outer_loss(&problem.initial_phi(theta)?, theta)?
            .to_scalar::<f64>()?;
        match adapt(c, problem.as_ref()) {
            Ok(phi) => Ok((problem.outer_loss(&phi, theta)?.to_scalar::<f64>()?, false)),
            Err(crate::CmlError::Diverged { .. }) => Ok((before, true)),
            Err(e) => Err(e),
        }
    })
}

/// Says on stderr which run stopped and why (the table records that it did).
fn log_divergence(model: &str, estimator: &str, seed: u64, e: &crate::CmlError) {
    eprintln!("note: {model} / {estimator} / seed {seed} stopped: {e}");
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_units_that_read_a_search_keep_it_in_their_fingerprint() {
        // The searches run in this order, each at the choices before it: beta (the contrastive
        // rule, one per model), the outer and the inner step size (every estimator), the nudged
        // budget (the contrastive rule). A unit reads a search's key where the search takes its
        // estimator and runs no later than the unit's own search (a run comes after them all).
        // Read from the unit names alone.
        let settings = Settings::at(Scale::Default);
        const KEYS: [&str; 4] = [
            "beta_search",
            "meta_lr_search",
            "step_size_search",
            "nudged_steps_search",
        ];
        const PREFIXES: [&str; 3] = ["choice-meta-lr-", "choice-step-size-", "choice-nudged-steps-"];
        let units = TRAINING.units(&settings).unwrap();
        assert_eq!(units.len(), 88);
        let mut readers = [0; 4];
        for unit in &units {
            let at = match PREFIXES.iter().position(|p| unit.starts_with(p)) {
                Some(k) => k + 1,
                None if unit.starts_with("choice-") => 0,
                None => KEYS.len(),
            };
            let contrastive = at == 0 || unit.contains("-contrastive");
            let ignores = TRAINING.reads(unit).ignores;
            for (k, key) in KEYS.iter().enumerate() {
                let reads = k <= at && (contrastive || k == 1 || k == 2);
                readers[k] += usize::from(reads);
                assert_eq!(!ignores.contains(key), reads, "{unit} {key}");
            }
        }
        // 2 models: beta by its 2 searches, the contrastive rule's 3 later searches each and its
        // 10 runs; the outer step size by all but the 2 beta searches; the inner one by 12
        // searches, 2 nudged searches and 60 runs; the nudged budget by 2 searches and 10 runs.
        assert_eq!(readers, [2 + 6 + 10, 86, 12 + 2 + 60, 2 + 10]);
    }
}
