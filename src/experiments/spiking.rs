//! The paper's §5.4 (docs/SPIKING.md §5): a recurrent spiking network learning sinusoids by
//! e-prop, its initial weights `omega` meta-learned by the contrastive rule, against BPTT through
//! BPTT-trained learning, BPTT through e-prop learning, truncated BPTT through e-prop and no
//! meta-learning; and the reference code's "symmetric" defect as an ablation.

use super::chain::Chain;
use super::choice::{CheckpointSpec, Chosen, RateSearchSpec, Search, Ties};
use super::training::{ALPHA, seed_mean_ci, t975};
use super::{Scale, Settings, num, running_mean, save, write_csv, write_table};
use crate::error::{CmlError, Result};
use crate::estimator::{Contrastive, EstimatorSpec, MetaGradientEstimator, Unrolled, Variant};
use crate::inner::{Divergence, GdParams, InnerSolver, Phase};
use crate::linalg::{Vector, cosine, to_dvector};
use crate::meta_training::{MetaObserver, TaskMetaRun, TaskMetaTraining};
use crate::optimizer::Optimizer;
use crate::oracle::Oracle;
use crate::parallel::map_in_order;
use crate::problem::{ProblemInstance, SinusoidTask};
use crate::report::plot::{Figure, Panel, Series, Style};
use crate::report::template::Context;
use crate::rng::stream;
use crate::spiking::{
    INPUT_RANGE, NetworkSpec, Samples, SpikingKernel, SpikingSynapse, SpikingTask, Surrogate,
};
use crate::stats::{self, Comparison};
use std::path::PathBuf;

/// The budget of the job (full or `--quick`); the full one is shipped as `configs/spiking.toml`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Protocol {
    pub network: NetworkSpec,
    pub shots: usize,
    pub seeds: usize,
    pub test_tasks: usize,
    /// The outer Adam step size where no search chooses it (the paper scale: the paper's).
    pub meta_lr: f64,
    /// Each meta-learned method's outer Adam step size, chosen on validation tasks of the
    /// search's own stream: a whole meta-training at each value, scored at the checkpoint those
    /// tasks choose; the least mean MSE wins, an edge choice extends the grid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta_lr_search: Option<RateSearchSpec>,
    /// The pull `lambda/2 ||phi - omega||^2` (the paper's code: `1e-3 sum`).
    pub strength: f64,
    /// The contrastive rule: meta-steps, meta-batch, nudging strength, and e-prop phases with
    /// Adam (a fresh state per phase).
    pub meta_steps: usize,
    pub meta_batch: usize,
    pub free_steps: usize,
    pub nudged_steps: usize,
    /// Adam's step size in the free phase (and at meta-test).
    pub inner_lr: f64,
    /// The nudging strength and the nudged phases' Adam step size are chosen on validation tasks
    /// from these grids: the setting whose halves of the symmetric estimate agree best.
    pub beta_grid: Vec<f64>,
    pub nudged_lr_grid: Vec<f64>,
    /// Validation tasks (their own stream, never a reported seed's test tasks) for the choice,
    /// and how many of them probe the halves every `halves_every` meta-steps of CML.
    pub validation_tasks: usize,
    pub halves_tasks: usize,
    pub halves_every: usize,
    /// The BPTT baselines: meta-steps, meta-batch (matched to CML's), and gradient steps of
    /// size `unrolled_lr`.
    pub baseline_meta_steps: usize,
    pub baseline_meta_batch: usize,
    /// The baselines' meta learning rate where it is not `meta_lr` (the paper's: 3e-4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_meta_lr: Option<f64>,
    pub unrolled_steps: usize,
    pub unrolled_lr: f64,
    /// Each meta-learned method's inner step size, chosen on validation tasks of a search stream
    /// of its own after its outer step size and at it: the contrastive rule's free phase and
    /// meta-test loop over `inner_lr_search` (the nudged phases keep the step the halves chose,
    /// the no-meta-learning row adapts at CML symmetric's), the BPTT baselines' gradient step
    /// over `unrolled_lr_search`. Each value is a whole meta-training scored as the outer search
    /// scores; `inner_lr` and `unrolled_lr` where no search runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inner_lr_search: Option<RateSearchSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unrolled_lr_search: Option<RateSearchSpec>,
    /// Truncated BPTT: e-prop gradient steps, of which the last `truncated_last` are walked back.
    pub truncated_steps: usize,
    pub truncated_last: usize,
    /// Tasks on which the defect's estimate is compared with the correct one.
    pub ablation_tasks: usize,
    /// Which meta-step each meta-learned run deploys, chosen on validation tasks of its seed's
    /// own stream (the authors' code, too, tests the model with the best meta-validation MSE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSpec>,
}

impl Protocol {
    /// The budgets of the scale, as shipped: `configs/quick/spiking.toml`, `configs/spiking.toml`
    /// or the paper's `configs/paper/spiking.toml`.
    pub fn at(scale: Scale) -> Result<Self> {
        shipped_protocol!(scale, "spiking")
    }

    /// The protocol of `settings`' scale with the user's changes (`--protocol spiking=FILE`).
    pub fn of(settings: &Settings) -> Result<Self> {
        crate::protocol::configured("spiking", Self::at(settings.scale)?, settings)
    }

    /// The meta-steps and meta-batch of `method` (the baselines have their own).
    fn budget_of(&self, method: &Method) -> (usize, usize) {
        if method.baseline {
            (self.baseline_meta_steps, self.baseline_meta_batch)
        } else {
            (self.meta_steps, self.meta_batch)
        }
    }

    /// How many validation tasks choose a run's checkpoint (without a checkpoint choice, as many
    /// as the beta choice scores).
    fn checkpoint_task_count(&self) -> usize {
        self.checkpoint
            .as_ref()
            .map_or(self.validation_tasks, |c| c.validation_tasks)
    }

    /// The search of `method`'s inner step size, if the scale has one: the BPTT baselines' gradient
    /// step, or the e-prop Adam step of the contrastive rule's free phase (and of the
    /// no-meta-learning row, which adapts as CML does).
    fn inner_lr_search_of(&self, method: &Method) -> Option<&RateSearchSpec> {
        if method.baseline {
            self.unrolled_lr_search.as_ref()
        } else {
            self.inner_lr_search.as_ref()
        }
    }

    /// The protocol with `method`'s inner step size at `lr` (that of its kind: see
    /// [`Protocol::inner_lr_search_of`]); every phase, probe and meta-test loop of the method
    /// built from it runs at that step size.
    fn at_inner_lr(&self, method: &Method, lr: f64) -> Protocol {
        if method.baseline {
            Protocol {
                unrolled_lr: lr,
                ..self.clone()
            }
        } else {
            Protocol {
                inner_lr: lr,
                ..self.clone()
            }
        }
    }

    /// The meta learning rate of `method`.
    fn meta_lr_of(&self, method: &Method) -> f64 {
        match (method.baseline, self.baseline_meta_lr) {
            (true, Some(lr)) => lr,
            _ => self.meta_lr,
        }
    }

    fn adam(&self, steps: usize, step_size: f64) -> GdParams {
        GdParams {
            step_size: Some(step_size),
            max_steps: steps,
            optimizer: Optimizer::Adam {
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-8,
            },
            divergence: Divergence::NonFinite,
            ..GdParams::default()
        }
    }

    fn sgd(&self, steps: usize) -> GdParams {
        GdParams {
            step_size: Some(self.unrolled_lr),
            max_steps: steps,
            divergence: Divergence::NonFinite,
            ..GdParams::default()
        }
    }

    fn contrastive(&self, variant: Variant, choice: &BetaChoice) -> Contrastive {
        Contrastive {
            variant,
            beta: choice.beta,
            free: self.adam(self.free_steps, self.inner_lr),
            nudged: self.adam(self.nudged_steps, choice.nudged_lr),
        }
    }

    /// The methods compared, with the contrastive rule at the validation-chosen setting.
    pub fn methods(&self, choice: &BetaChoice) -> Vec<Method> {
        let unrolled = |steps, truncation| {
            Some(EstimatorSpec::Unrolled(Unrolled {
                inner: self.sgd(steps),
                truncation,
            }))
        };
        let contrastive = |name, key, variant| Method {
            name,
            key,
            surrogate: Surrogate::Eprop,
            estimator: Some(EstimatorSpec::Contrastive(self.contrastive(variant, choice))),
            adaptation: self.adam(self.free_steps, self.inner_lr),
            baseline: false,
        };
        let baseline = |name, key, surrogate, estimator, adaptation| Method {
            name,
            key,
            surrogate,
            estimator,
            adaptation,
            baseline: true,
        };
        vec![
            contrastive("CML symmetric (e-prop)", "cml-symmetric", Variant::Symmetric),
            contrastive(
                "CML with the reference code's -beta phase",
                "cml-reference-code",
                Variant::ReferenceCodeSymmetric,
            ),
            baseline(
                "BPTT through BPTT learning",
                "bptt-bptt",
                Surrogate::Bptt,
                unrolled(self.unrolled_steps, None),
                self.sgd(self.unrolled_steps),
            ),
            baseline(
                "BPTT through e-prop learning",
                "bptt-eprop",
                Surrogate::Eprop,
                unrolled(self.unrolled_steps, None),
                self.sgd(self.unrolled_steps),
            ),
            baseline(
                "truncated BPTT through e-prop",
                "tbptt-eprop",
                Surrogate::Eprop,
                unrolled(self.truncated_steps, Some(self.truncated_last)),
                self.sgd(self.truncated_steps),
            ),
            Method {
                name: "no meta-learning (e-prop)",
                key: "no-meta-learning",
                surrogate: Surrogate::Eprop,
                estimator: None,
                adaptation: self.adam(self.free_steps, self.inner_lr),
                baseline: false,
            },
        ]
    }
}

/// The whole-run searches of the protocol, which may score on several search streams.
const POOLED: [&str; 3] = ["meta_lr_search", "inner_lr_search", "unrolled_lr_search"];

impl crate::protocol::Checked for Protocol {
    fn left_out_at_default() -> Vec<(String, serde_json::Value)> {
        super::choice::streams_left_out(&POOLED)
    }

    fn check(&self) -> Result<()> {
        self.network.validate()?;
        let mut c = crate::protocol::Checks::new("spiking");
        c.count("shots", self.shots)
            .seeds("seeds", self.seeds)
            .count("test_tasks", self.test_tasks)
            .positive("meta_lr", self.meta_lr)
            .positive("strength", self.strength)
            .count("meta_steps", self.meta_steps)
            .count("meta_batch", self.meta_batch)
            .count("free_steps", self.free_steps)
            .count("nudged_steps", self.nudged_steps)
            .positive("inner_lr", self.inner_lr)
            .grid("beta_grid", &self.beta_grid, 1, false)
            .grid("nudged_lr_grid", &self.nudged_lr_grid, 1, false)
            .count("validation_tasks", self.validation_tasks)
            .count("halves_tasks", self.halves_tasks)
            .count("halves_every", self.halves_every)
            .count("baseline_meta_steps", self.baseline_meta_steps)
            .count("baseline_meta_batch", self.baseline_meta_batch)
            .positive("baseline_meta_lr", self.baseline_meta_lr.unwrap_or(1.0))
            .count("unrolled_steps", self.unrolled_steps)
            .positive("unrolled_lr", self.unrolled_lr)
            .count("truncated_steps", self.truncated_steps)
            .count("truncated_last", self.truncated_last)
            .that(
                self.truncated_last <= self.truncated_steps,
                "truncated_last",
                self.truncated_last,
                "at most truncated_steps",
            )
            .count("ablation_tasks", self.ablation_tasks);
        c.pooled_search("meta_lr_search", self.meta_lr_search.as_ref());
        c.pooled_search("inner_lr_search", self.inner_lr_search.as_ref());
        c.pooled_search("unrolled_lr_search", self.unrolled_lr_search.as_ref());
        c.checkpoint("checkpoint", self.checkpoint.as_ref());
        c.done()
    }
}

/// One method of the comparison.
#[derive(Debug, Clone)]
pub struct Method {
    pub name: &'static str,
    /// Its part of the unit names (`<key>-seed<s>`).
    pub key: &'static str,
    /// The inner learning rule's gradient: e-prop or surrogate BPTT.
    pub surrogate: Surrogate,
    /// How `omega` is meta-learned (`None`: not at all).
    pub estimator: Option<EstimatorSpec>,
    /// The inner loop a meta-test task runs (the method's own).
    pub adaptation: GdParams,
    /// Meta-trained on the baselines' (smaller) budget.
    pub baseline: bool,
}

/// One method's meta-test MSE, per seed (mean over the seed's test tasks).
#[derive(Debug, Clone)]
pub struct MethodResult {
    pub name: String,
    pub per_seed: Vec<f64>,
    pub mean: f64,
    pub ci95: f64,
    /// Wall seconds per meta-step, mean over seeds (not reproducible; the table only).
    pub seconds_per_step: f64,
    pub meta_steps: usize,
    pub meta_batch: usize,
    /// Meta-test adaptations that diverged (scored unadapted), over all seeds.
    pub diverged: usize,
}

#[derive(Debug, Clone)]
pub struct SpikingResults {
    pub protocol: Protocol,
    pub methods: Vec<MethodResult>,
    /// The query MSE before adaptation at the untrained initialisations, per seed.
    pub untrained: Vec<f64>,
    /// The defect's estimate against the correct symmetric one at the same `beta`, per task:
    /// (norm ratio, cosine).
    pub ablation: Vec<(f64, f64)>,
    /// Mean firing rate of the CML-adapted network on the test tasks' support sets.
    pub firing_rate: f64,
    pub stopped: Vec<String>,
    pub choice: BetaChoice,
    /// The halves during CML's meta-training, on validation tasks: (seed, meta-step, mean
    /// cosine, mean norm ratio).
    pub halves: Vec<(u64, usize, f64, f64)>,
    /// CML symmetric against each other meta-learned method, paired over seeds: one family.
    pub comparisons: Vec<(String, Comparison)>,
    /// Each meta-learned method against its matched baseline, paired over seeds: one family.
    pub gains: Vec<MatchedGain>,
    /// (method, seed, meta-step) each meta-learned run deployed, where validation tasks chose it.
    pub deployed: Vec<(String, u64, usize)>,
    /// Each meta-learned method's outer step-size search (none at a scale without one).
    pub rate_searches: Vec<Search>,
    /// Each meta-learned method's inner step-size search (none at a scale without one).
    pub step_searches: Vec<Search>,
}

/// A meta-learned method against its matched baseline: the untrained initialisation of each seed
/// adapted by the method's own inner loop on the same test tasks.
#[derive(Debug, Clone)]
pub struct MatchedGain {
    pub name: String,
    /// The inner loop both run, in words.
    pub inner_loop: String,
    /// The matched baseline's meta-test MSE, per seed.
    pub baseline_per_seed: Vec<f64>,
    /// The matched baseline's adaptations that diverged, over all seeds.
    pub baseline_diverged: usize,
    /// The method's MSE minus its matched baseline's (negative: meta-learning helped).
    pub comparison: Comparison,
}

/// Two methods' meta-test MSEs are equivalent within this fraction of their mean (fixed before
/// any run; docs/PROTOCOL.md).
pub const EQUIVALENCE_MARGIN: f64 = 0.1;

/// Stream numbers of the job's seeds.
const INIT: u64 = 31;
const TEST: u64 = 32;
const PLOT: u64 = 33;
/// The validation tasks and the initialisation the choice is made at.
const VALIDATION: u64 = 34;
const VALIDATION_INIT: u64 = 35;
/// Stream word of a seed's own validation tasks (its checkpoint choice).
const CHECKPOINT_TASKS: u64 = 36;
/// The seed word of the outer step-size searches (their initialisation, task stream and
/// validation tasks).
const RATE_CHOICE: u64 = 37;
/// The seed word of the inner step-size searches.
const STEP_CHOICE: u64 = 38;

/// The halves of the symmetric estimate need to agree (cosine at least this) for the rule to
/// estimate the meta-gradient (docs/SPIKING.md §5).
pub const REGIME_COSINE: f64 = 0.9;

/// The contrastive rule's setting, chosen on validation tasks, with the search that chose it.
#[derive(Debug, Clone)]
pub struct BetaChoice {
    pub beta: f64,
    pub nudged_lr: f64,
    /// Every setting tried: (beta, nudged step size, mean cosine of the halves, mean norm ratio).
    pub grid: Vec<(f64, f64, f64, f64)>,
}

impl BetaChoice {
    /// No choice: what lists the methods, and what the methods that do not use it carry.
    pub fn unchosen() -> Self {
        BetaChoice {
            beta: f64::NAN,
            nudged_lr: f64::NAN,
            grid: Vec::new(),
        }
    }

    /// The chosen setting's mean cosine of the halves.
    pub fn cosine(&self) -> f64 {
        self.grid
            .iter()
            .find(|g| g.0 == self.beta && g.1 == self.nudged_lr)
            .map_or(f64::NAN, |g| g.2)
    }
}

/// The halves of the symmetric estimate, `(g(beta) - g(0)) / beta` and
/// `(g(-beta) - g(0)) / (-beta)`: both estimate the meta-gradient, to first order in `beta`,
/// when the phases resolve it. Their mean cosine and mean norm ratio (minus over plus) over
/// `tasks` at `theta`.
fn halves(
    p: &Protocol,
    theta: &Vector,
    tasks: &[SpikingTask],
    beta: f64,
    nudged_lr: f64,
) -> Result<(f64, f64)> {
    let choice = BetaChoice {
        beta,
        nudged_lr,
        grid: Vec::new(),
    };
    let per_task = map_in_order(tasks, |t| {
        let problem = SpikingSynapse::new(&p.network, t, p.strength, Surrogate::Eprop, theta)?;
        let half = |b: f64| -> Result<Vector> {
            let c = Contrastive {
                beta: b,
                ..p.contrastive(Variant::Standard, &choice)
            };
            Ok(c.estimate(&problem, problem.theta())?.gradient)
        };
        let (plus, minus) = (half(beta)?, half(-beta)?);
        Ok((cosine(&plus, &minus), minus.norm() / plus.norm()))
    })?;
    let n = per_task.len() as f64;
    Ok((
        per_task.iter().map(|h| h.0).sum::<f64>() / n,
        per_task.iter().map(|h| h.1).sum::<f64>() / n,
    ))
}

/// The validation tasks, and the initialisation the choice is made at (neither a reported seed's).
fn validation(p: &Protocol, settings: &Settings) -> Result<(Vec<SpikingTask>, Vector)> {
    let mut rng = stream(settings.seed, VALIDATION);
    let tasks = (0..p.validation_tasks)
        .map(|_| SpikingTask::sample(&mut rng, p.shots, &p.network))
        .collect::<Result<_>>()?;
    Ok((
        tasks,
        p.network
            .initial_weights(&mut stream(settings.seed, VALIDATION_INIT)),
    ))
}

/// Chooses `beta` and the nudged step size on validation tasks: the setting whose halves agree
/// best (highest mean cosine).
fn choose(p: &Protocol, settings: &Settings) -> Result<BetaChoice> {
    let (tasks, theta) = validation(p, settings)?;
    let mut grid = Vec::new();
    for &beta in &p.beta_grid {
        for &lr in &p.nudged_lr_grid {
            let (cos, ratio) = halves(p, &theta, &tasks, beta, lr)?;
            grid.push((beta, lr, cos, ratio));
        }
    }
    let best = grid
        .iter()
        .max_by(|a, b| a.2.total_cmp(&b.2))
        .copied()
        .expect("a grid");
    Ok(BetaChoice {
        beta: best.0,
        nudged_lr: best.1,
        grid,
    })
}

/// The job as units: the validation choice, then every method x seed. A CML unit takes the stored
/// choice unit's setting, waits for it where this process is running it, and recomputes it
/// (deterministic, from its own stream) where it is absent, so units have no order; the report
/// checks that they agree.
pub(super) struct Spiking;
pub(super) static SPIKING: Spiking = Spiking;

const CHOICE_UNIT: &str = "choice";
/// Units `matched-seed<s>`: the seed's untrained initialisation adapted by each baseline's own
/// inner loop (the contrastive rule's matched baseline is the no-meta-learning row).
const MATCHED_UNIT: &str = "matched";

/// The seeds of the job.
fn seeds(p: &Protocol, settings: &Settings) -> Vec<u64> {
    (0..p.seeds as u64).map(|s| settings.seed + s).collect()
}

/// Every method run, in report order (methods outer, seeds inner): method index, seed, unit name.
fn method_runs(p: &Protocol, settings: &Settings) -> Vec<(usize, u64, String)> {
    let methods = p.methods(&BetaChoice::unchosen());
    let mut out = Vec::new();
    for (index, method) in methods.iter().enumerate() {
        for seed in seeds(p, settings) {
            out.push((index, seed, format!("{}-seed{seed}", method.key)));
        }
    }
    out
}

/// The matched-baseline units, one per seed: (seed, unit name).
fn matched_runs(p: &Protocol, settings: &Settings) -> Vec<(u64, String)> {
    seeds(p, settings)
        .into_iter()
        .map(|seed| (seed, format!("{MATCHED_UNIT}-seed{seed}")))
        .collect()
}

/// One setting of the validation search: (beta, nudged step size, mean cosine of the halves, mean
/// norm ratio).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct GridPoint {
    beta: f64,
    nudged_lr: f64,
    #[serde(with = "super::units::any_float")]
    cosine: f64,
    #[serde(with = "super::units::any_float")]
    ratio: f64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ChoiceRows {
    beta: f64,
    nudged_lr: f64,
    grid: Vec<GridPoint>,
}

impl From<&BetaChoice> for ChoiceRows {
    fn from(c: &BetaChoice) -> Self {
        ChoiceRows {
            beta: c.beta,
            nudged_lr: c.nudged_lr,
            grid: c
                .grid
                .iter()
                .map(|&(beta, nudged_lr, cosine, ratio)| GridPoint {
                    beta,
                    nudged_lr,
                    cosine,
                    ratio,
                })
                .collect(),
        }
    }
}

impl From<&ChoiceRows> for BetaChoice {
    fn from(c: &ChoiceRows) -> Self {
        BetaChoice {
            beta: c.beta,
            nudged_lr: c.nudged_lr,
            grid: c
                .grid
                .iter()
                .map(|g| (g.beta, g.nudged_lr, g.cosine, g.ratio))
                .collect(),
        }
    }
}

/// A meta-test task's query MSE before and after the method's inner loop, and whether that
/// loop diverged (then it is scored unadapted).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct TestScore {
    #[serde(with = "super::units::any_float")]
    before: f64,
    #[serde(with = "super::units::any_float")]
    after: f64,
    diverged: bool,
}

/// A value logged at a meta-step.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct AtStep {
    step: usize,
    #[serde(with = "super::units::any_float")]
    value: f64,
    /// The halves' mean norm ratio (the halves log only).
    #[serde(with = "super::units::any_float", default)]
    ratio: f64,
}

/// What one method's run from one seed leaves for the report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct MethodSeedRun {
    /// The contrastive rule's (beta, nudged step size), as this unit chose it.
    choice: Option<(f64, f64)>,
    /// The outer step size its search chose (none without a search).
    #[serde(default)]
    meta_lr: Option<f64>,
    /// The inner step size its search chose (CML symmetric's for the no-meta-learning row; none
    /// without a search).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step_size: Option<f64>,
    /// (meta-step, meta-batch query MSE) of meta-training.
    curve: Vec<AtStep>,
    /// Wall seconds per meta-step (not reproducible; the table only).
    seconds_per_step: Option<f64>,
    stopped: Option<String>,
    test: Vec<TestScore>,
    /// The halves during CML symmetric's meta-training (mean cosine in `value`).
    halves: Vec<AtStep>,
    /// Each checkpoint's mean validation MSE after the method's own adaptation, and the deployed
    /// meta-step (none without a checkpoint choice or meta-learning).
    #[serde(default)]
    checkpoints: Vec<AtStep>,
    #[serde(default)]
    deployed_step: Option<usize>,
    /// The ablation and the activity of the CML-learned network (CML symmetric, first seed).
    activity: Option<Activity>,
}

/// The ablation and the activity panels' data, from the CML-learned `omega` of the first seed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Activity {
    /// Per task: (norm ratio of the defect's estimate to the symmetric one, their cosine).
    ablation: Vec<(f64, f64)>,
    /// Two held-out tasks: the targets and predictions on [`fit_grid`], and the support points.
    examples: Vec<Example>,
    /// (time step, neuron) of every spike of the first test task's first support sample.
    raster: Vec<(f64, f64)>,
    /// Spikes per step of each neuron, mean over the test tasks' support sets.
    rates: Vec<f64>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Example {
    targets: Vec<f64>,
    predictions: Vec<f64>,
    support: Vec<(f64, f64)>,
}

/// The inputs at which the example fits are drawn.
fn fit_grid() -> Vec<f64> {
    (0..41).map(|k| -5.0 + 0.25 * k as f64).collect()
}

impl super::units::Job<super::Section> for Spiking {
    fn name(&self) -> &'static str {
        "spiking"
    }

    fn about(&self) -> &'static str {
        "recurrent spiking network learning by e-prop: the contrastive rule against BPTT through learning, MSE table"
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

    fn units(&self, settings: &Settings) -> Result<Vec<String>> {
        let p = Protocol::of(settings)?;
        // The searches first (beta, then the chain's, in the order they run), so that the runs
        // find them stored.
        Ok(std::iter::once(CHOICE_UNIT.to_string())
            .chain(
                super::chain::search_units(&Searches, &subjects(&p))
                    .into_iter()
                    .map(|u| u.2),
            )
            .chain(method_runs(&p, settings).into_iter().map(|r| r.2))
            .chain(matched_runs(&p, settings).into_iter().map(|r| r.1))
            .collect())
    }

    fn run_unit(
        &self,
        settings: &Settings,
        unit: &str,
        staging: &std::path::Path,
    ) -> Result<serde_json::Value> {
        let p = Protocol::of(settings)?;
        if unit == CHOICE_UNIT {
            return super::units::encode(&ChoiceRows::from(&choose(&p, settings)?));
        }
        let subjects = subjects(&p);
        if let Some(rows) =
            super::chain::run_search_unit(&Searches, self, settings, staging, unit, &subjects)?
        {
            return Ok(rows);
        }
        if unit.starts_with(MATCHED_UNIT) {
            let (seed, _) =
                super::units::lookup(self, settings, unit, matched_runs(&p, settings), |r| r.1.clone())?;
            let inner_lrs = (0..subjects.len())
                .map(|index| self.inner_lr(settings, staging, &subjects, index))
                .collect::<Result<Vec<_>>>()?;
            return super::units::encode(&run_matched_seed(&p, seed, &inner_lrs)?);
        }
        let (index, seed, _) =
            super::units::lookup(self, settings, unit, method_runs(&p, settings), |r| r.2.clone())?;
        // The no-meta-learning row takes only CML symmetric's inner step size.
        let (choice, meta_lr, inner_lr) = if subjects[index].method().estimator.is_none() {
            let lr = self.inner_lr(settings, staging, &subjects, index)?;
            (BetaChoice::unchosen(), None, lr)
        } else {
            let all = Searches.choices().len();
            let (s, _) =
                super::chain::settle(&Searches, self, settings, staging, all, subjects[index].clone())?;
            (s.choice, s.meta_lr, s.inner_lr)
        };
        super::units::encode(&run_method_seed(
            &p, settings, index, seed, &choice, meta_lr, inner_lr,
        )?)
    }

    fn reads(&self, unit: &str) -> super::units::Reads {
        // The beta choice runs before every search and reads none of them; of the searches' keys,
        // another unit reads those of the searches it (or its search) runs after (the
        // no-meta-learning row's runs CML symmetric's; the matched units every one).
        if unit == CHOICE_UNIT {
            return super::units::Reads {
                ignores: super::chain::all_keys(&Searches),
                searches: Vec::new(),
            };
        }
        let Ok(p) = Protocol::at(Scale::Default) else {
            return Default::default();
        };
        let subjects = subjects(&p);
        let key = unit.split_once("-seed").map(|(k, _)| k);
        let run = subjects.iter().find(|s| Some(s.method().key) == key).map(|s| {
            if s.method().estimator.is_none() {
                &subjects[0]
            } else {
                s
            }
        });
        super::chain::reads(&Searches, unit, &subjects, run)
    }

    fn report(
        &self,
        settings: &Settings,
        units: &[super::units::Stored],
        files: &mut Vec<PathBuf>,
    ) -> Result<super::template::Context> {
        super::writeup::spiking_section(&report(settings, units, files)?)
    }

    fn calibrate(&self, settings: &Settings, units: &[String]) -> Result<Option<Vec<f64>>> {
        calibrate(settings, units)
    }
}

impl Spiking {
    /// The validation choice of `beta` and the nudged step size where method `index` is the
    /// contrastive rule: the stored choice unit's where there is one, else made here (units have
    /// no order; the report checks they agree); unchosen for the other methods.
    fn beta_choice(
        &self,
        p: &Protocol,
        settings: &Settings,
        staging: &std::path::Path,
        index: usize,
    ) -> Result<BetaChoice> {
        let uses_choice = p.methods(&BetaChoice::unchosen())[index]
            .estimator
            .is_some_and(|e| e.contrastive_rule().is_some());
        if !uses_choice {
            return Ok(BetaChoice::unchosen());
        }
        match super::units::stored_beside(self, settings, staging, CHOICE_UNIT)? {
            Some(u) => Ok(BetaChoice::from(&super::units::decode::<ChoiceRows>(&u)?)),
            None => choose(p, settings),
        }
    }

    /// The inner step size method `index` runs at: its search's choice, stored or made here (the
    /// no-meta-learning row's, CML symmetric's, whose loop it adapts with as its matched baseline).
    fn inner_lr(
        &self,
        settings: &Settings,
        staging: &std::path::Path,
        subjects: &[Subject],
        index: usize,
    ) -> Result<Option<f64>> {
        let from = if subjects[index].method().estimator.is_none() {
            0
        } else {
            index
        };
        let choice = match subjects[from].method().baseline {
            true => Choice::BaselineStep,
            false => Choice::RuleStep,
        };
        super::chain::chosen(&Searches, self, settings, staging, subjects[from].clone(), choice)
    }
}

/// The job's validation searches after the beta choice, in the order they run
/// (docs/PROTOCOL.md): each meta-learned method's outer step size, then its inner one (the
/// contrastive rule's e-prop Adam step, the BPTT baselines' gradient step: two protocol keys).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Choice {
    MetaLr,
    RuleStep,
    BaselineStep,
}

/// A method (by index), with the protocol and what the choices so far made for it.
#[derive(Debug, Clone)]
struct Subject {
    p: Protocol,
    index: usize,
    choice: BetaChoice,
    meta_lr: Option<f64>,
    inner_lr: Option<f64>,
}

impl Subject {
    /// The method, unchosen.
    fn method(&self) -> Method {
        self.p.methods(&BetaChoice::unchosen()).swap_remove(self.index)
    }
}

/// The job's chain of searches ([`super::chain`]).
struct Searches;

impl Chain for Searches {
    type Choice = Choice;
    type Subject = Subject;

    fn choices(&self) -> &'static [Choice] {
        &[Choice::MetaLr, Choice::RuleStep, Choice::BaselineStep]
    }

    fn key(&self, choice: Choice) -> &'static str {
        match choice {
            Choice::MetaLr => "meta_lr_search",
            Choice::RuleStep => "inner_lr_search",
            Choice::BaselineStep => "unrolled_lr_search",
        }
    }

    fn unit(&self, choice: Choice, s: &Subject) -> Option<String> {
        let (p, method) = (&s.p, s.method());
        let (searched, prefix) = match choice {
            Choice::MetaLr => (p.meta_lr_search.is_some(), "choice-meta-lr-"),
            Choice::RuleStep => (
                !method.baseline && p.inner_lr_search.is_some(),
                "choice-step-size-",
            ),
            Choice::BaselineStep => (
                method.baseline && p.unrolled_lr_search.is_some(),
                "choice-step-size-",
            ),
        };
        (searched && method.estimator.is_some()).then(|| format!("{prefix}{}", method.key))
    }

    fn search(&self, settings: &Settings, choice: Choice, s: &Subject) -> Result<Option<Search>> {
        match choice {
            Choice::MetaLr => choose_meta_lr(&s.p, settings, s.index, &s.choice),
            Choice::RuleStep | Choice::BaselineStep => {
                choose_inner_lr(&s.p, settings, s.index, &s.choice, s.meta_lr)
            }
        }
    }

    fn apply(&self, choice: Choice, s: Subject, value: f64) -> Subject {
        match choice {
            Choice::MetaLr => Subject {
                meta_lr: Some(value),
                ..s
            },
            Choice::RuleStep | Choice::BaselineStep => Subject {
                inner_lr: Some(value),
                ..s
            },
        }
    }

    /// The contrastive rule's searches run at the beta choice (its own unit's).
    fn prepared(&self, settings: &Settings, staging: &std::path::Path, s: Subject) -> Result<Subject> {
        let choice = SPIKING.beta_choice(&s.p, settings, staging, s.index)?;
        Ok(Subject { choice, ..s })
    }
}

/// Every method, unchosen, by index.
fn subjects(p: &Protocol) -> Vec<Subject> {
    (0..p.methods(&BetaChoice::unchosen()).len())
        .map(|index| Subject {
            p: p.clone(),
            index,
            choice: BetaChoice::unchosen(),
            meta_lr: None,
            inner_lr: None,
        })
        .collect()
}

/// Meta-trains method `index` from `seed` and scores it on the seed's test tasks; the contrastive
/// rule runs at the validation `choice`, a meta-learned method at its searched outer step size
/// `meta_lr`, and every method at its searched inner step size `inner_lr` (`None`: the
/// protocol's).
fn run_method_seed(
    p: &Protocol,
    settings: &Settings,
    index: usize,
    seed: u64,
    choice: &BetaChoice,
    meta_lr: Option<f64>,
    inner_lr: Option<f64>,
) -> Result<MethodSeedRun> {
    let cml_symmetric = index == 0;
    let p = &at_searched_inner_lr(p, index, inner_lr);
    let method = p.methods(choice).swap_remove(index);
    let uses_choice = method.estimator.is_some_and(|e| e.contrastive_rule().is_some());
    let tests = test_tasks(p, seed)?;
    let theta0 = p.network.initial_weights(&mut stream(seed, INIT));
    // Only CML symmetric probes the halves, on validation tasks.
    let validation_tasks = if cml_symmetric {
        validation(p, settings)?.0
    } else {
        Vec::new()
    };
    let probe_tasks = &validation_tasks[..p.halves_tasks.min(validation_tasks.len())];
    let halves_log = std::sync::Mutex::new(Vec::new());
    // The halves during CML symmetric's meta-training, on validation tasks.
    let probe = |step: usize, theta: &Vector| -> Result<()> {
        if step.is_multiple_of(p.halves_every) {
            let (cos, ratio) = halves(p, theta, probe_tasks, choice.beta, choice.nudged_lr)?;
            halves_log.lock().expect("not poisoned").push(AtStep {
                step,
                value: cos,
                ratio,
            });
        }
        Ok(())
    };
    if cml_symmetric {
        probe(0, &theta0)?;
    }
    let mut run = MethodSeedRun {
        choice: uses_choice.then_some((choice.beta, choice.nudged_lr)),
        meta_lr,
        step_size: inner_lr,
        curve: Vec::new(),
        seconds_per_step: None,
        stopped: None,
        test: Vec::new(),
        halves: Vec::new(),
        checkpoints: Vec::new(),
        deployed_step: None,
        activity: None,
    };
    let theta = match &method.estimator {
        Some(estimator) => {
            let meta_lr = meta_lr.unwrap_or(p.meta_lr_of(&method));
            let probe: Option<&MetaObserver> = if cml_symmetric { Some(&probe) } else { None };
            let (trained, chosen) = train_checkpointed(p, &method, estimator, &theta0, seed, meta_lr, probe)?;
            run.stopped = trained.stopped.clone();
            run.curve = trained
                .log
                .iter()
                .map(|s| AtStep {
                    step: s.step,
                    value: s.query_loss,
                    ratio: 0.0,
                })
                .collect();
            run.seconds_per_step = trained.log.last().map(|last| last.seconds / last.step as f64);
            match chosen {
                Some(chosen) => {
                    run.checkpoints = chosen
                        .scores
                        .iter()
                        .map(|&(step, value)| AtStep {
                            step,
                            value,
                            ratio: 0.0,
                        })
                        .collect();
                    run.deployed_step = Some(chosen.step);
                    chosen.theta
                }
                None => trained.theta,
            }
        }
        None => theta0.clone(),
    };
    run.test = score(p, &method, &tests, &theta)?;
    run.halves = halves_log.into_inner().expect("not poisoned");
    if cml_symmetric && seed == settings.seed {
        run.activity = Some(Activity {
            ablation: ablation(p, choice, &theta, settings.seed)?,
            ..activity(p, &theta, &tests, settings.seed)?
        });
    }
    Ok(run)
}

/// Meta-trains the meta-learned `method` (by `estimator`) from `theta0` on the task stream of
/// `seed` at outer step size `meta_lr`, `probe` seeing every meta-step; with a checkpoint choice
/// in `p`, the checkpoint with the least mean MSE on the seed's checkpoint tasks
/// ([`checkpoint_tasks`]) after the method's own inner loop is chosen, else none is.
fn train_checkpointed(
    p: &Protocol,
    method: &Method,
    estimator: &EstimatorSpec,
    theta0: &Vector,
    seed: u64,
    meta_lr: f64,
    probe: Option<&MetaObserver>,
) -> Result<(TaskMetaRun, Option<Chosen<Vector>>)> {
    let (steps, batch) = p.budget_of(method);
    let build = |t: &SpikingTask, theta: &Vector| -> Result<Box<dyn ProblemInstance>> {
        Ok(Box::new(SpikingSynapse::new(
            &p.network,
            t,
            p.strength,
            method.surrogate,
            theta,
        )?))
    };
    // The checkpoints the run keeps (its initialisation among them), scored after meta-training.
    let kept = std::sync::Mutex::new(vec![(0, theta0.clone())]);
    let observe = |step: usize, theta: &Vector| -> Result<()> {
        if let Some(probe) = probe {
            probe(step, theta)?;
        }
        if p.checkpoint.as_ref().is_some_and(|c| c.keeps(step, steps)) {
            kept.lock().expect("not poisoned").push((step, theta.clone()));
        }
        Ok(())
    };
    let trained = TaskMetaTraining {
        estimator,
        meta_steps: steps,
        meta_batch: batch,
        meta_lr,
        seed,
        sample: &|rng| SpikingTask::sample(rng, p.shots, &p.network),
        problem: &build,
        observe: Some(&observe),
    }
    .run(theta0.clone())?;
    let chosen = match &p.checkpoint {
        Some(_) => {
            let validation = checkpoint_tasks(p, seed)?;
            Some(super::choice::choose_checkpoint(
                kept.into_inner().expect("not poisoned"),
                trained.log.last().map(|l| (l.step, &trained.theta)),
                |theta| {
                    Ok(score(p, method, &validation, theta)?
                        .iter()
                        .map(|t| t.after)
                        .collect())
                },
            )?)
        }
        None => None,
    };
    Ok((trained, chosen))
}

/// The validation tasks of `seed`'s own stream that choose its checkpoint
/// ([`Protocol::checkpoint_task_count`] of them).
fn checkpoint_tasks(p: &Protocol, seed: u64) -> Result<Vec<SpikingTask>> {
    let mut rng = stream(seed, CHECKPOINT_TASKS);
    (0..p.checkpoint_task_count())
        .map(|_| SpikingTask::sample(&mut rng, p.shots, &p.network))
        .collect()
}

/// `p` with method `index`'s inner step size at `inner_lr` where a search chose one.
fn at_searched_inner_lr(p: &Protocol, index: usize, inner_lr: Option<f64>) -> Protocol {
    match inner_lr {
        Some(lr) => p.at_inner_lr(&p.methods(&BetaChoice::unchosen())[index], lr),
        None => p.clone(),
    }
}

/// A search of one setting of meta-learned method `index` on validation tasks (`spec`): on each
/// search stream (an initialisation and a task stream of the search's own, seed word `word`, the
/// same for every method, none a reported seed's; their tasks pooled), a whole meta-training at
/// each value, by the protocol and at
/// the outer step size `at(value)` gives (the contrastive rule at the validation `choice`), scored
/// by the query MSE of each of the search's checkpoint tasks after the method's own inner loop, at
/// the checkpoint those tasks choose as a reported run's are chosen. A run that stops early fails
/// its value; the least mean wins, and an edge choice extends the grid.
fn whole_run_search(
    p: &Protocol,
    settings: &Settings,
    index: usize,
    choice: &BetaChoice,
    (word, setting): (u64, &str),
    spec: &RateSearchSpec,
    at: impl Fn(f64) -> (Protocol, f64),
) -> Result<Search> {
    let name = p.methods(choice)[index].name;
    // Each search stream: its seed and initialisation (its tasks are the seed's).
    let streams: Vec<(u64, Vector)> = spec
        .stream_seeds(&[settings.seed, word])
        .into_iter()
        .map(|seed| (seed, p.network.initial_weights(&mut stream(seed, INIT))))
        .collect();
    let tasks = p.checkpoint_task_count();
    let score = |value: f64| -> Result<(Vec<f64>, Option<String>)> {
        let (p, meta_lr) = at(value);
        let method = p.methods(choice).swap_remove(index);
        let estimator = method
            .estimator
            .ok_or_else(|| CmlError::invalid("spiking search", method.name, "a meta-learned method"))?;
        let failed = |why: String| (vec![f64::INFINITY; tasks], Some(why));
        super::choice::pooled(&streams, tasks, |(seed, theta0)| {
            match train_checkpointed(&p, &method, &estimator, theta0, *seed, meta_lr, None) {
                Ok((trained, _)) if trained.stopped.is_some() => {
                    Ok(failed(trained.stopped.unwrap_or_default()))
                }
                Ok((_, Some(chosen))) => Ok((chosen.losses, None)),
                Ok((trained, None)) => Ok((
                    score(&p, &method, &checkpoint_tasks(&p, *seed)?, &trained.theta)?
                        .iter()
                        .map(|t| t.after)
                        .collect(),
                    None,
                )),
                Err(e) => Ok(failed(e.to_string())),
            }
        })
    };
    super::choice::search(name, setting, Ties::None, &spec.grid, spec.extensions, score)
}

/// Chooses the outer Adam step size of meta-learned method `index` on validation tasks
/// ([`whole_run_search`] on the stream of [`RATE_CHOICE`], at the protocol's inner step sizes);
/// `None` without a search.
fn choose_meta_lr(
    p: &Protocol,
    settings: &Settings,
    index: usize,
    choice: &BetaChoice,
) -> Result<Option<Search>> {
    let Some(search) = &p.meta_lr_search else {
        return Ok(None);
    };
    whole_run_search(
        p,
        settings,
        index,
        choice,
        (RATE_CHOICE, "meta_lr"),
        search,
        |lr| (p.clone(), lr),
    )
    .map(Some)
}

/// Chooses the inner step size of meta-learned method `index` on validation tasks
/// ([`whole_run_search`] on the stream of [`STEP_CHOICE`]), at its chosen outer step size
/// `meta_lr` (`None`: the protocol's); `None` without a search of its kind.
fn choose_inner_lr(
    p: &Protocol,
    settings: &Settings,
    index: usize,
    choice: &BetaChoice,
    meta_lr: Option<f64>,
) -> Result<Option<Search>> {
    let method = p.methods(choice).swap_remove(index);
    let Some(search) = p.inner_lr_search_of(&method) else {
        return Ok(None);
    };
    let meta_lr = meta_lr.unwrap_or(p.meta_lr_of(&method));
    whole_run_search(
        p,
        settings,
        index,
        choice,
        (STEP_CHOICE, "step_size"),
        search,
        |lr| (p.at_inner_lr(&method, lr), meta_lr),
    )
    .map(Some)
}

/// A seed's meta-test tasks (every method of the seed meets the same ones).
fn test_tasks(p: &Protocol, seed: u64) -> Result<Vec<SpikingTask>> {
    let mut rng = stream(seed, TEST);
    (0..p.test_tasks)
        .map(|_| SpikingTask::sample(&mut rng, p.shots, &p.network))
        .collect()
}

/// `theta` scored on `tests` after `method`'s own inner loop (its surrogate, optimiser, steps and
/// step size).
fn score(p: &Protocol, method: &Method, tests: &[SpikingTask], theta: &Vector) -> Result<Vec<TestScore>> {
    map_in_order(tests, |t| {
        let problem = SpikingSynapse::new(&p.network, t, p.strength, method.surrogate, theta)?;
        let before = problem.losses(theta.as_slice()).query_mse;
        let (phi, diverged) = adapt(&problem, &method.adaptation)?;
        Ok(TestScore {
            before,
            after: problem.losses(phi.as_slice()).query_mse,
            diverged,
        })
    })
}

/// A baseline's untrained initialisation scored by its own inner loop.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct MatchedScores {
    /// The method's key (`bptt-bptt`, ...).
    key: String,
    /// Its inner loop in words ([`inner_loop`]), as the unit ran it.
    inner_loop: String,
    test: Vec<TestScore>,
}

/// The seed's untrained initialisation (the one every method of the seed starts meta-training
/// from) adapted on the seed's test tasks by each meta-learned method's own inner loop, at its
/// searched inner step size (`inner_lrs`, by method index), where that loop is not the
/// no-meta-learning row's: the matched baselines that row is not. Those are the BPTT baselines',
/// and the contrastive rule's where its search chose another step size than CML symmetric's.
fn run_matched_seed(p: &Protocol, seed: u64, inner_lrs: &[Option<f64>]) -> Result<Vec<MatchedScores>> {
    let tests = test_tasks(p, seed)?;
    let theta0 = p.network.initial_weights(&mut stream(seed, INIT));
    let specs = methods_at(p, &BetaChoice::unchosen(), inner_lrs);
    let untrained = untrained_row(&specs);
    specs
        .iter()
        .filter(|m| m.estimator.is_some() && inner_loop(m) != inner_loop(untrained))
        .map(|m| {
            Ok(MatchedScores {
                key: m.key.to_string(),
                inner_loop: inner_loop(m),
                test: score(p, m, &tests, &theta0)?,
            })
        })
        .collect()
}

/// The methods at `choice`, each at its searched inner step size (`inner_lrs`, by index).
fn methods_at(p: &Protocol, choice: &BetaChoice, inner_lrs: &[Option<f64>]) -> Vec<Method> {
    inner_lrs
        .iter()
        .enumerate()
        .map(|(index, &lr)| {
            at_searched_inner_lr(p, index, lr)
                .methods(choice)
                .swap_remove(index)
        })
        .collect()
}

/// The no-meta-learning row among `specs`.
fn untrained_row(specs: &[Method]) -> &Method {
    specs
        .iter()
        .find(|m| m.estimator.is_none())
        .expect("a no-meta-learning row")
}

/// Figures, tables and the write-up's numbers from the stored units.
fn report(
    settings: &Settings,
    units: &[super::units::Stored],
    files: &mut Vec<PathBuf>,
) -> Result<SpikingResults> {
    let p = Protocol::of(settings)?;
    let find = |name: &str| -> Result<&super::units::Stored> {
        units
            .iter()
            .find(|u| u.unit == name)
            .ok_or_else(|| CmlError::invalid("spiking unit", name, "every unit of the job"))
    };
    let choice = BetaChoice::from(&super::units::decode::<ChoiceRows>(find(CHOICE_UNIT)?)?);
    let [rate_searches, step_searches] = super::chain::write_stored(
        &Searches,
        units,
        &subjects(&p),
        &settings.out,
        [
            ("spiking_meta_lr_choice.csv", "method", &[Choice::MetaLr]),
            (
                "spiking_step_size_choice.csv",
                "method",
                &[Choice::RuleStep, Choice::BaselineStep],
            ),
        ],
        files,
    )?;
    let mut curve_rows = Vec::new();
    let mut test_rows = Vec::new();
    let mut methods = Vec::new();
    let mut stopped = Vec::new();
    let mut untrained = Vec::new();
    let mut halves = Vec::new();
    let (mut checkpoint_rows, mut deployed) = (Vec::new(), Vec::new());
    let mut activity_rows = None;
    let mut curves = Panel::new(
        "spiking network: meta-training (mean over seeds)",
        "meta-step",
        "query MSE of the meta-batch",
        false,
        false,
    );
    let runs = method_runs(&p, settings);
    // Each method at its searched inner step size (CML symmetric's for the no-meta-learning row).
    let unchosen = p.methods(&choice);
    let inner_search = |index: usize| {
        let from = if unchosen[index].estimator.is_none() {
            0
        } else {
            index
        };
        step_searches.iter().find(|x| x.model == unchosen[from].name)
    };
    let inner_lrs: Vec<Option<f64>> = (0..unchosen.len())
        .map(|index| inner_search(index).map(|x| x.chosen))
        .collect();
    let specs = methods_at(&p, &choice, &inner_lrs);
    for (index, method) in specs.iter().enumerate() {
        let (steps, batch) = p.budget_of(method);
        let mut per_seed = Vec::new();
        let mut seconds = Vec::new();
        // Sum and count per meta-step over the seeds (a run that stopped early has fewer steps).
        let mut curve = vec![(0.0, 0usize); steps];
        let mut diverged = 0;
        for (_, seed, name) in runs.iter().filter(|r| r.0 == index) {
            let run: MethodSeedRun = super::units::decode(find(name)?)?;
            if let Some(used) = run.choice
                && used != (choice.beta, choice.nudged_lr)
            {
                return Err(CmlError::invalid(
                    format!("spiking unit {name}"),
                    format!("beta {}, nudged step size {}", used.0, used.1),
                    format!(
                        "the choice unit's beta {}, nudged step size {} (units from one run)",
                        choice.beta, choice.nudged_lr
                    ),
                ));
            }
            // The no-meta-learning row takes CML symmetric's inner step size.
            let from = if method.estimator.is_none() { 0 } else { index };
            let taken = [run.meta_lr, run.step_size, run.step_size];
            let unit = format!("spiking unit {name}");
            super::chain::check_taken(&Searches, units, &subjects(&p)[from], &taken, &unit)?;
            if let Some(reason) = &run.stopped {
                stopped.push(format!("{} (seed {seed}) stopped at {reason}", method.name));
            }
            for s in &run.curve {
                curve_rows.push(format!("{},{seed},{},{:e}", method.name, s.step, s.value));
                let c = &mut curve[s.step - 1];
                *c = (c.0 + s.value, c.1 + 1);
            }
            seconds.extend(run.seconds_per_step);
            diverged += run.test.iter().filter(|t| t.diverged).count();
            for (k, t) in run.test.iter().enumerate() {
                test_rows.push(format!("{},{seed},{k},{:e},{:e}", method.name, t.before, t.after));
            }
            let n = run.test.len() as f64;
            if method.estimator.is_none() {
                untrained.push(run.test.iter().map(|t| t.before).sum::<f64>() / n);
            }
            per_seed.push(run.test.iter().map(|t| t.after).sum::<f64>() / n);
            halves.extend(run.halves.iter().map(|h| (*seed, h.step, h.value, h.ratio)));
            for c in &run.checkpoints {
                let chosen = run.deployed_step == Some(c.step);
                checkpoint_rows.push(format!(
                    "{},{seed},{},{:e},{chosen}",
                    method.name, c.step, c.value
                ));
            }
            if let Some(step) = run.deployed_step {
                deployed.push((method.name.to_string(), *seed, step));
            }
            if let Some(a) = run.activity {
                activity_rows = Some(a);
            }
        }
        if method.estimator.is_some() {
            let mean: Vec<f64> = curve
                .iter()
                .take_while(|c| c.1 > 0)
                .map(|c| c.0 / c.1 as f64)
                .collect();
            curves
                .series
                .push(Series::new(method.name, running_mean(&mean), index, Style::Line));
        }
        let (mean, ci95) = seed_mean_ci(&per_seed);
        methods.push(MethodResult {
            name: method.name.to_string(),
            mean,
            ci95,
            per_seed,
            seconds_per_step: if seconds.is_empty() {
                0.0
            } else {
                seconds.iter().sum::<f64>() / seconds.len() as f64
            },
            meta_steps: if method.estimator.is_some() { steps } else { 0 },
            meta_batch: batch,
            diverged,
        });
    }
    let gains = matched_gains(settings, &p, &specs, &methods, &find, files)?;
    let activity = activity_rows
        .ok_or_else(|| CmlError::invalid("spiking job", "no CML run of the first seed", "its unit"))?;
    write_csv(
        &settings.out.join("spiking_meta_training.csv"),
        "method,seed,meta_step,query_mse",
        &curve_rows,
        files,
    )?;
    write_csv(
        &settings.out.join("spiking_test.csv"),
        "method,seed,task,query_mse_before,query_mse_after",
        &test_rows,
        files,
    )?;
    // The choice and the halves, recorded.
    let choice_rows: Vec<String> = choice
        .grid
        .iter()
        .map(|(b, lr, cos, ratio)| {
            format!(
                "{b:e},{lr:e},{cos:e},{ratio:e},{}",
                *b == choice.beta && *lr == choice.nudged_lr
            )
        })
        .collect();
    write_csv(
        &settings.out.join("spiking_beta_choice.csv"),
        "beta,nudged_step_size,mean_cosine_of_halves,mean_norm_ratio,chosen",
        &choice_rows,
        files,
    )?;
    if p.checkpoint.is_some() {
        write_csv(
            &settings.out.join("spiking_checkpoints.csv"),
            "method,seed,meta_step,validation_mse,deployed",
            &checkpoint_rows,
            files,
        )?;
    }
    let halves_rows: Vec<String> = halves
        .iter()
        .map(|(seed, step, cos, ratio)| format!("{seed},{step},{cos:e},{ratio:e}"))
        .collect();
    write_csv(
        &settings.out.join("spiking_halves.csv"),
        "seed,meta_step,mean_cosine_of_halves,mean_norm_ratio",
        &halves_rows,
        files,
    )?;
    // CML symmetric against each other meta-learned method, paired over seeds.
    let cml = &methods[0];
    let others: Vec<&MethodResult> = methods[1..].iter().filter(|m| m.meta_steps > 0).collect();
    let diffs: Vec<Vec<f64>> = others
        .iter()
        .map(|m| cml.per_seed.iter().zip(&m.per_seed).map(|(a, b)| a - b).collect())
        .collect();
    let margins: Vec<f64> = others
        .iter()
        .map(|m| EQUIVALENCE_MARGIN * 0.5 * (cml.mean + m.mean))
        .collect();
    let comparisons = others
        .iter()
        .map(|m| m.name.clone())
        .zip(stats::compare_family(&diffs, &margins, ALPHA))
        .collect();
    let ablation_rows: Vec<String> = activity
        .ablation
        .iter()
        .enumerate()
        .map(|(k, (ratio, cos))| format!("{k},{ratio:e},{cos:e}"))
        .collect();
    write_csv(
        &settings.out.join("spiking_ablation.csv"),
        "task,norm_ratio_defect_to_symmetric,cosine",
        &ablation_rows,
        files,
    )?;
    let (panels, firing_rate) = activity_panels(&p, &activity, settings, files)?;
    let mut all = vec![curves];
    all.extend(panels);
    save(
        settings,
        "spiking",
        &Figure {
            panels: all,
            columns: 2,
        },
        files,
    )?;
    let results = SpikingResults {
        protocol: p,
        methods,
        untrained,
        ablation: activity.ablation,
        firing_rate,
        stopped,
        choice,
        halves,
        comparisons,
        gains,
        deployed,
        rate_searches,
        step_searches,
    };
    write_table(settings, "spiking.md", &table(&results)?, files)?;
    Ok(results)
}

/// An inner loop in words: the derivative it follows, its optimiser, steps and step size.
fn inner_loop(method: &Method) -> String {
    let rule = match method.surrogate {
        Surrogate::Eprop => "e-prop",
        Surrogate::Bptt => "surrogate BPTT",
    };
    let optimizer = match method.adaptation.optimizer {
        Optimizer::Adam { .. } => "Adam",
        _ => "SGD",
    };
    format!(
        "{rule}, {} {optimizer} steps of {}",
        method.adaptation.max_steps,
        method.adaptation.step_size.unwrap_or(f64::NAN)
    )
}

/// Each meta-learned method against its matched baseline, paired over seeds, one Holm family; and
/// the BPTT loops' matched baselines written to `spiking_matched_baselines.csv`. The contrastive
/// rule's matched baseline is the no-meta-learning row (the same e-prop Adam loop); each BPTT
/// baseline's comes from the `matched` units.
fn matched_gains<'a>(
    settings: &Settings,
    p: &Protocol,
    specs: &[Method],
    methods: &[MethodResult],
    find: &dyn Fn(&str) -> Result<&'a super::units::Stored>,
    files: &mut Vec<PathBuf>,
) -> Result<Vec<MatchedGain>> {
    let untrained = specs
        .iter()
        .position(|m| m.estimator.is_none())
        .expect("a no-meta-learning row");
    // Per baseline key: the per-seed mean MSE and the diverged count.
    let mut matched: Vec<(String, Vec<f64>, usize)> = Vec::new();
    let mut rows = Vec::new();
    for (seed, unit) in matched_runs(p, settings) {
        for scores in super::units::decode::<Vec<MatchedScores>>(find(&unit)?)? {
            let method = specs.iter().find(|m| m.key == scores.key).ok_or_else(|| {
                CmlError::invalid(
                    format!("spiking unit {unit}"),
                    &scores.key,
                    "a meta-learned method's key",
                )
            })?;
            if scores.inner_loop != inner_loop(method) {
                return Err(CmlError::invalid(
                    format!("spiking unit {unit}"),
                    format!("{} adapted by {}", scores.key, scores.inner_loop),
                    format!(
                        "the method's inner loop at its chosen step size, {} (units from one run)",
                        inner_loop(method)
                    ),
                ));
            }
            for (k, t) in scores.test.iter().enumerate() {
                rows.push(format!("{},{seed},{k},{:e},{:e}", method.name, t.before, t.after));
            }
            let mean = scores.test.iter().map(|t| t.after).sum::<f64>() / scores.test.len() as f64;
            let diverged = scores.test.iter().filter(|t| t.diverged).count();
            match matched.iter_mut().find(|m| m.0 == scores.key) {
                Some(m) => {
                    m.1.push(mean);
                    m.2 += diverged;
                }
                None => matched.push((scores.key, vec![mean], diverged)),
            }
        }
    }
    write_csv(
        &settings.out.join("spiking_matched_baselines.csv"),
        "adapted_as,seed,task,query_mse_before,query_mse_after",
        &rows,
        files,
    )?;
    let mut gains = Vec::new();
    let mut diffs = Vec::new();
    let mut margins = Vec::new();
    for (spec, result) in specs.iter().zip(methods).filter(|(m, _)| m.estimator.is_some()) {
        // The no-meta-learning row where the method adapts as it does, else the matched units'.
        let (baseline, diverged) = if inner_loop(spec) == inner_loop(&specs[untrained]) {
            (methods[untrained].per_seed.clone(), methods[untrained].diverged)
        } else {
            let m = matched.iter().find(|m| m.0 == spec.key).ok_or_else(|| {
                CmlError::invalid(
                    "spiking job",
                    format!("no matched baseline for {} ({})", spec.key, inner_loop(spec)),
                    "its matched units",
                )
            })?;
            (m.1.clone(), m.2)
        };
        if baseline.len() != result.per_seed.len() {
            return Err(CmlError::invalid(
                format!("matched baseline of {}", spec.name),
                format!("{} seeds", baseline.len()),
                format!("the method's {} seeds", result.per_seed.len()),
            ));
        }
        diffs.push(
            result
                .per_seed
                .iter()
                .zip(&baseline)
                .map(|(a, b)| a - b)
                .collect(),
        );
        margins.push(EQUIVALENCE_MARGIN * 0.5 * (result.mean + seed_mean_ci(&baseline).0));
        gains.push((spec, baseline, diverged));
    }
    Ok(gains
        .into_iter()
        .zip(stats::compare_family(&diffs, &margins, ALPHA))
        .map(
            |((spec, baseline_per_seed, baseline_diverged), comparison)| MatchedGain {
                name: spec.name.to_string(),
                inner_loop: inner_loop(spec),
                baseline_per_seed,
                baseline_diverged,
                comparison,
            },
        )
        .collect())
}

/// Estimated wall seconds of each of `units` on this machine's cores at the paper scale, from one
/// timed run of each method's estimate and inner loop, and of the halves, on one validation task
/// at an untrained initialisation, multiplied by how often each unit runs them; `None` at the
/// other scales, whose measured runs (`--results`) give their cost.
fn calibrate(settings: &Settings, units: &[String]) -> Result<Option<Vec<f64>>> {
    if settings.scale != Scale::Paper {
        return Ok(None);
    }
    let p = Protocol::of(settings)?;
    let (tasks, theta) = validation(&p, settings)?;
    use super::units::timed;
    // The paper's own setting stands in for the validation choice.
    let choice = BetaChoice {
        beta: p.beta_grid[p.beta_grid.len() / 2],
        nudged_lr: p.nudged_lr_grid[p.nudged_lr_grid.len() - 1],
        grid: Vec::new(),
    };
    let halves_once = timed(|| halves(&p, &theta, &tasks[..1], choice.beta, choice.nudged_lr).map(|_| ()))?;
    let choice_seconds =
        halves_once * (p.beta_grid.len() * p.nudged_lr_grid.len() * p.validation_tasks) as f64;
    let mut per_method = Vec::new();
    // A matched unit adapts the untrained initialisation by every BPTT baseline's loop.
    let mut matched_seconds = 0.0;
    for (index, method) in p.methods(&choice).iter().enumerate() {
        let problem = SpikingSynapse::new(&p.network, &tasks[0], p.strength, method.surrogate, &theta)?;
        let adaptation = timed(|| adapt(&problem, &method.adaptation).map(|_| ()))?;
        let (steps, batch) = p.budget_of(method);
        let mut seconds = p.test_tasks as f64 * adaptation;
        if method.baseline {
            matched_seconds += seconds;
        }
        if let Some(e) = &method.estimator {
            let estimate = timed(|| e.estimator().estimate(&problem, problem.theta()).map(|_| ()))?;
            seconds += (steps * batch) as f64 * estimate;
            // Each checkpoint adapts on the validation tasks (the initialisation and the last
            // meta-step are checkpoints too).
            if let Some(c) = &p.checkpoint {
                let checkpoints = steps / c.every + 1 + usize::from(!steps.is_multiple_of(c.every));
                seconds += (checkpoints * c.validation_tasks) as f64 * adaptation;
            }
            // A CML unit runs the choice itself where the choice unit is not stored yet (slices of
            // an array run at once): counted, an upper bound.
            if e.contrastive_rule().is_some() {
                seconds += choice_seconds;
            }
        }
        // CML symmetric probes the halves during meta-training.
        if index == 0 {
            seconds += halves_once * ((p.meta_steps / p.halves_every + 1) * p.halves_tasks) as f64;
        }
        per_method.push(seconds);
    }
    // The units spread their tasks over the cores (a meta-batch, the test tasks): wall time.
    let threads = crate::parallel::available_threads() as f64;
    let runs = method_runs(&p, settings);
    units
        .iter()
        .map(|unit| {
            if unit == CHOICE_UNIT {
                return Ok(choice_seconds / threads);
            }
            if unit.starts_with(MATCHED_UNIT) {
                return Ok(matched_seconds / threads);
            }
            let (index, seed, _) = runs
                .iter()
                .find(|r| r.2 == *unit)
                .ok_or_else(|| CmlError::invalid("spiking unit", unit, "a unit of the job"))?;
            let ablation = if *index == 0 && *seed == settings.seed {
                halves_once * p.ablation_tasks as f64
            } else {
                0.0
            };
            Ok((per_method[*index] + ablation) / threads)
        })
        .collect::<Result<Vec<f64>>>()
        .map(Some)
}

/// The fast weights after a task's inner loop from `omega`, and whether it diverged (then they
/// are `omega` itself, unadapted, and the caller counts it).
fn adapt(problem: &SpikingSynapse, params: &GdParams) -> Result<(Vector, bool)> {
    let theta = problem.theta();
    match params.solve(
        &Oracle::new(problem),
        &Phase::new(theta, theta, 0.0, "adaptation"),
    ) {
        Ok(s) => Ok((to_dvector(&s.phi)?, false)),
        Err(CmlError::Diverged { .. }) => Ok((to_dvector(theta)?, true)),
        Err(e) => Err(e),
    }
}

/// The defect's estimate against the correct symmetric one, at the CML-learned `omega`.
fn ablation(p: &Protocol, choice: &BetaChoice, theta: &Vector, seed: u64) -> Result<Vec<(f64, f64)>> {
    let mut rng = stream(seed, PLOT + 1);
    let tasks: Vec<SpikingTask> = (0..p.ablation_tasks)
        .map(|_| SpikingTask::sample(&mut rng, p.shots, &p.network))
        .collect::<Result<_>>()?;
    map_in_order(&tasks, |t| {
        let problem = SpikingSynapse::new(&p.network, t, p.strength, Surrogate::Eprop, theta)?;
        let estimate = |variant| -> Result<Vector> {
            Ok(p.contrastive(variant, choice)
                .estimate(&problem, problem.theta())?
                .gradient)
        };
        let (correct, defect) = (
            estimate(Variant::Symmetric)?,
            estimate(Variant::ReferenceCodeSymmetric)?,
        );
        Ok((defect.norm() / correct.norm(), cosine(&defect, &correct)))
    })
}

/// Example fits, a spike raster and the firing rates of the CML-adapted network `theta` on the
/// first seed's test tasks (the ablation is left empty for the caller).
fn activity(p: &Protocol, theta: &Vector, tests: &[SpikingTask], seed: u64) -> Result<Activity> {
    let spec = &p.network;
    let mut rng = stream(seed, PLOT);
    let grid = fit_grid();
    let adaptation = p.adam(p.free_steps, p.inner_lr);
    let mut examples = Vec::new();
    for task in tests.iter().take(2) {
        let problem = SpikingSynapse::new(spec, task, p.strength, Surrogate::Eprop, theta)?;
        let (phi, _) = adapt(&problem, &adaptation)?;
        // The grid's predictions: a kernel whose query set is the grid, inputs coded afresh.
        let kernel = SpikingKernel::new(
            spec,
            task.support.clone(),
            Samples {
                raster: spec.encode(&mut rng, &grid, INPUT_RANGE),
                targets: grid.iter().map(|&x| task.task.target(x)).collect(),
            },
        )?;
        let mut b = kernel.buffers();
        kernel.run(&mut b, phi.as_slice(), 1.0, None);
        let sin: &SinusoidTask = &task.task;
        examples.push(Example {
            targets: grid.iter().map(|&x| sin.target(x)).collect(),
            predictions: b.predictions()[p.shots..].to_vec(),
            support: sin
                .x_support
                .iter()
                .copied()
                .zip(sin.y_support.iter().copied())
                .collect(),
        });
    }
    // Raster of the first test task's first support sample, and per-neuron rates over all test
    // tasks' support sets, after adaptation.
    let per_task = map_in_order(tests, |task| {
        let problem = SpikingSynapse::new(spec, task, p.strength, Surrogate::Eprop, theta)?;
        let (phi, _) = adapt(&problem, &adaptation)?;
        let kernel = SpikingKernel::new(spec, task.support.clone(), task.query.clone())?;
        let mut b = kernel.buffers();
        kernel.run(&mut b, phi.as_slice(), 0.0, None);
        let per_sample = spec.steps * spec.neurons;
        let spikes = &b.spikes()[..p.shots * per_sample];
        let mut rates = vec![0.0; spec.neurons];
        for chunk in spikes.chunks(spec.neurons) {
            for (r, z) in rates.iter_mut().zip(chunk) {
                *r += z / (p.shots * spec.steps) as f64;
            }
        }
        Ok((spikes[..per_sample].to_vec(), rates))
    })?;
    let raster = per_task[0]
        .0
        .chunks(spec.neurons)
        .enumerate()
        .flat_map(|(t, z)| {
            z.iter()
                .enumerate()
                .filter(|(_, s)| **s > 0.5)
                .map(move |(j, _)| ((t + 1) as f64, j as f64))
        })
        .collect();
    let mut rates = vec![0.0; spec.neurons];
    for (_, r) in &per_task {
        for (a, b) in rates.iter_mut().zip(r) {
            *a += b / per_task.len() as f64;
        }
    }
    Ok(Activity {
        ablation: Vec::new(),
        examples,
        raster,
        rates,
    })
}

/// The activity panels and their CSVs, drawn from `a`; returns the panels and the mean firing
/// rate.
fn activity_panels(
    p: &Protocol,
    a: &Activity,
    settings: &Settings,
    files: &mut Vec<PathBuf>,
) -> Result<(Vec<Panel>, f64)> {
    let spec = &p.network;
    let grid = fit_grid();
    let mut fits = Panel::new("held-out sinusoids after e-prop", "x", "y", false, false);
    let mut fit_rows = Vec::new();
    for (k, e) in a.examples.iter().enumerate() {
        for ((x, target), y) in grid.iter().zip(&e.targets).zip(&e.predictions) {
            fit_rows.push(format!("{k},{x:e},{target:e},{y:e}"));
        }
        fits.series.push(Series::new(
            format!("task {k}: target"),
            grid.iter().copied().zip(e.targets.iter().copied()).collect(),
            2 * k,
            Style::Dashed,
        ));
        fits.series.push(Series::new(
            format!("task {k}: network"),
            grid.iter().copied().zip(e.predictions.iter().copied()).collect(),
            2 * k,
            Style::Line,
        ));
        fits.series.push(Series::new(
            format!("task {k}: support"),
            e.support.clone(),
            2 * k,
            Style::Points,
        ));
    }
    write_csv(
        &settings.out.join("spiking_examples.csv"),
        "task,x,target,prediction",
        &fit_rows,
        files,
    )?;
    let raster_rows: Vec<String> = a.raster.iter().map(|(t, j)| format!("{t},{j}")).collect();
    write_csv(
        &settings.out.join("spiking_raster.csv"),
        "step,neuron",
        &raster_rows,
        files,
    )?;
    let mut raster = Panel::new(
        "spike raster (one held-out input, after e-prop)",
        "time step",
        "neuron",
        false,
        false,
    );
    raster
        .series
        .push(Series::new("spikes", a.raster.clone(), 0, Style::Points));
    let rates = &a.rates;
    let mean_rate = rates.iter().sum::<f64>() / rates.len() as f64;
    let rate_rows: Vec<String> = rates
        .iter()
        .enumerate()
        .map(|(j, r)| format!("{j},{r:e}"))
        .collect();
    write_csv(
        &settings.out.join("spiking_rates.csv"),
        "neuron,spikes_per_step",
        &rate_rows,
        files,
    )?;
    let mut sorted = rates.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let mut rate_panel = Panel::new(
        "firing rates after e-prop (test tasks' support sets)",
        "neuron (sorted)",
        "spikes per step",
        false,
        false,
    );
    rate_panel.series.push(Series::new(
        "rate",
        sorted.iter().enumerate().map(|(j, r)| (j as f64, *r)).collect(),
        1,
        Style::Line,
    ));
    rate_panel.series.push(Series::new(
        format!("target {}", spec.rate_target),
        vec![
            (0.0, spec.rate_target),
            ((spec.neurons - 1) as f64, spec.rate_target),
        ],
        3,
        Style::Dashed,
    ));
    Ok((vec![fits, raster, rate_panel], mean_rate))
}

pub fn table(r: &SpikingResults) -> Result<String> {
    let p = &r.protocol;
    let s = &p.network;
    let methods = r
        .methods
        .iter()
        .map(|m| {
            let budget = if m.meta_steps == 0 {
                "-".to_string()
            } else {
                format!("{} x {}", m.meta_steps, m.meta_batch)
            };
            let seconds = if m.seconds_per_step > 0.0 {
                format!("{:.2}", m.seconds_per_step)
            } else {
                "-".into()
            };
            let comparison = r
                .comparisons
                .iter()
                .find(|c| c.0 == m.name)
                .map(|(_, k)| super::comparison_context(k, num));
            Context::new()
                .text("name", &m.name)
                .text("budget", budget)
                .text("mean", num(m.mean))
                .text("ci95", num(m.ci95))
                .section("versus", comparison)
                .text("seconds", seconds)
        })
        .collect();
    let gains = r
        .gains
        .iter()
        .map(|g| {
            let (b, bh) = seed_mean_ci(&g.baseline_per_seed);
            // The gain's verdict (below) says which way the MSE moved.
            super::comparison_context(&g.comparison, num)
                .text("name", &g.name)
                .text("inner_loop", &g.inner_loop)
                .text("baseline", num(b))
                .text("baseline_ci95", num(bh))
                .text("verdict", gain_verdict(&g.comparison))
                .text("baseline_diverged", g.baseline_diverged)
        })
        .collect();
    let regime_grid = r
        .choice
        .grid
        .iter()
        .map(|(b, lr, cos, ratio)| {
            let chosen = *b == r.choice.beta && *lr == r.choice.nudged_lr;
            Context::new()
                .text("beta", b)
                .text("nudged_lr", lr)
                .text("cosine", format!("{cos:.3}"))
                .text("ratio", format!("{ratio:.3}"))
                .text("chosen", if chosen { "yes" } else { "" })
        })
        .collect();
    let (untrained, untrained_ci95) = seed_mean_ci(&r.untrained);
    let n = r.ablation.len() as f64;
    let diverged: Vec<String> = r
        .methods
        .iter()
        .filter(|m| m.diverged > 0)
        .map(|m| format!("{} {}", m.name, m.diverged))
        .collect();
    // A report of part of the job (no search unit given) says nothing of a search it has.
    let step_spec = p.inner_lr_search.as_ref().or(p.unrolled_lr_search.as_ref());
    let step_size_search = step_spec.filter(|_| !r.step_searches.is_empty()).map(|_| {
        let extensions: Vec<String> = [&p.inner_lr_search, &p.unrolled_lr_search]
            .into_iter()
            .flatten()
            .map(|s| super::searches::times(s.extensions))
            .collect();
        let extensions = if extensions.len() == 2 && extensions[0] != extensions[1] {
            format!(
                "{} for the contrastive rule and {} for the baselines",
                extensions[0], extensions[1]
            )
        } else {
            extensions[0].clone()
        };
        Context::new()
            .text("extensions", extensions)
            .text("table", super::searches::table(&r.step_searches, "method"))
    });
    let context = Context::new()
        .text("inputs", s.inputs)
        .text("neurons", s.neurons)
        .text("steps", s.steps)
        .text("shots", p.shots)
        .text("test_tasks", p.test_tasks)
        .text("seeds", p.seeds)
        .text("t", format!("{:.3}", t975(p.seeds.saturating_sub(1).max(1))))
        .list("methods", methods)
        .text("untrained", num(untrained))
        .text("untrained_ci95", num(untrained_ci95))
        .text("firing_rate", format!("{:.3}", r.firing_rate))
        .text("rate_target", s.rate_target)
        .text("ablation_tasks", r.ablation.len())
        .text(
            "ablation_ratio",
            format!("{:.3}", r.ablation.iter().map(|a| a.0).sum::<f64>() / n),
        )
        .text(
            "ablation_cosine",
            format!("{:.3}", r.ablation.iter().map(|a| a.1).sum::<f64>() / n),
        )
        .text("adaptations", p.seeds * p.test_tasks)
        .text("diverged", super::joined_or_none(&diverged, ", "))
        .text("stopped", super::stopped_note(&r.stopped))
        .text("comparison_count", r.comparisons.len())
        .text("margin", EQUIVALENCE_MARGIN)
        .text("alpha", ALPHA)
        .text("gain_count", r.gains.len())
        .list("gains", gains)
        .text("validation_tasks", p.validation_tasks)
        .list("regime_grid", regime_grid)
        .text("regime", regime_sentence(r))
        .section("pooled", super::searches::pooled_context(p, &POOLED))
        .flag("no_meta_lr_search", p.meta_lr_search.is_none())
        .text("meta_lr", p.meta_lr)
        .text("baseline_meta_lr", p.baseline_meta_lr.unwrap_or(p.meta_lr))
        .section(
            "meta_lr_search",
            p.meta_lr_search
                .as_ref()
                .filter(|_| !r.rate_searches.is_empty())
                .map(|search| {
                    Context::new()
                        .text("tasks", p.checkpoint_task_count())
                        .text("extensions", super::searches::times(search.extensions))
                        .text("table", super::searches::table(&r.rate_searches, "method"))
                }),
        )
        .flag("no_step_size_search", step_spec.is_none())
        .text("inner_lr", p.inner_lr)
        .text("unrolled_lr", p.unrolled_lr)
        .section("step_size_search", step_size_search)
        .text(
            "deployed",
            super::searches::deployed_section(
                r.protocol.checkpoint.as_ref(),
                &r.deployed,
                "the query MSE after the method's own inner loop",
                "spiking_checkpoints.csv",
            )
            .trim_end_matches('\n'),
        );
    super::render_table(include_str!("tables/spiking.md"), "spiking.md", &context)
}

/// A gain's verdict in words: which way a difference in MSE goes.
pub fn gain_verdict(k: &Comparison) -> &'static str {
    match k.verdict {
        stats::Verdict::Differs if k.mean < 0.0 => "meta-learning helps",
        stats::Verdict::Differs => "meta-learning hurts",
        v => v.describe(),
    }
}

/// Whether the chosen setting reaches the rule's regime, computed from the halves.
pub fn regime_sentence(r: &SpikingResults) -> String {
    let cos = r.choice.cosine();
    let during: Vec<f64> = r.halves.iter().filter(|h| h.1 > 0).map(|h| h.2).collect();
    let during = if during.is_empty() {
        String::new()
    } else {
        format!(
            "; during meta-training the probe's cosine ranged from {:.3} to {:.3} (`spiking_halves.csv`)",
            during.iter().copied().fold(f64::INFINITY, f64::min),
            during.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        )
    };
    if cos >= REGIME_COSINE {
        format!(
            "At the chosen beta = {} the halves agree (cosine {cos:.3}, at least {REGIME_COSINE}){during}.",
            r.choice.beta
        )
    } else {
        format!(
            "No setting of the grid reached a cosine of {REGIME_COSINE}: the best, beta = {} with nudged step size {}, \
             reaches {cos:.3}{during}. There the halves disagree, so the contrastive update is not an estimate of the \
             meta-gradient in the sense of the paper's bound; CML's results on this network measure the update rule as \
             run, not the accuracy of a meta-gradient estimate.",
            r.choice.beta, r.choice.nudged_lr
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_unit_reads_the_searches_its_runs_use() {
        use crate::units::Job;
        // Written out from what each unit runs: the beta choice precedes every search; an outer
        // step-size search reads its own key; an inner one also the inner key of its method's kind
        // (the contrastive rule's e-prop step, the BPTT baselines' gradient step), as do the runs;
        // the no-meta-learning row adapts at CML symmetric's step; a matched unit reads them all.
        let settings = Settings::at(Scale::Default);
        let baselines: Vec<&str> = Protocol::of(&settings)
            .unwrap()
            .methods(&BetaChoice::unchosen())
            .into_iter()
            .filter(|m| m.baseline)
            .map(|m| m.key)
            .collect();
        let units = SPIKING.units(&settings).unwrap();
        // 1 beta choice, 5 outer and 5 inner step-size searches, 6 methods x 5 seeds, 5 matched.
        assert_eq!(units.len(), 1 + 5 + 5 + 30 + 5);
        for unit in units {
            let ignores = SPIKING.reads(&unit).ignores;
            let reads = |k: &str| !ignores.contains(&k);
            let key = unit
                .strip_prefix("choice-step-size-")
                .or_else(|| unit.split_once("-seed").map(|(k, _)| k))
                .unwrap_or("");
            let baseline = baselines.contains(&key);
            let (outer, rule, baseline_step) = match unit.as_str() {
                "choice" => (false, false, false),
                u if u.starts_with("choice-meta-lr-") => (true, false, false),
                u if u.starts_with("matched-") => (true, true, true),
                _ => (true, !baseline, baseline),
            };
            assert_eq!(reads("meta_lr_search"), outer, "{unit}");
            assert_eq!(reads("inner_lr_search"), rule, "{unit}");
            assert_eq!(reads("unrolled_lr_search"), baseline_step, "{unit}");
        }
    }

    #[test]
    fn at_the_paper_scale_the_table_says_the_step_sizes_are_the_protocols() {
        // The paper scale keeps the paper's step sizes: the step-size sections of the table's
        // template take their text for a scale without a search, with the protocol's values (a
        // misnamed tag would be an error here; the quick and default runs never render them).
        let p = Protocol::at(Scale::Paper).unwrap();
        assert!(p.meta_lr_search.is_none() && p.inner_lr_search.is_none() && p.unrolled_lr_search.is_none());
        let r = SpikingResults {
            protocol: p.clone(),
            methods: Vec::new(),
            untrained: vec![1.0, 2.0],
            ablation: vec![(0.5, 1.0)],
            firing_rate: 0.1,
            stopped: Vec::new(),
            choice: BetaChoice {
                beta: 3.0,
                nudged_lr: 1e-4,
                grid: vec![(3.0, 1e-4, 0.95, 1.0)],
            },
            halves: Vec::new(),
            comparisons: Vec::new(),
            gains: Vec::new(),
            deployed: Vec::new(),
            rate_searches: Vec::new(),
            step_searches: Vec::new(),
        };
        let t = table(&r).unwrap();
        for sentence in [
            format!(
                "The paper's: Adam's step size {} for the contrastive rule, {} for the BPTT baselines (no search at this scale).",
                p.meta_lr,
                p.baseline_meta_lr.unwrap_or(p.meta_lr)
            ),
            format!(
                "Set by hand: Adam's step size {} in the contrastive rule's free phase and at meta-test, gradient steps of {} for the BPTT baselines (no search at this scale).",
                p.inner_lr, p.unrolled_lr
            ),
        ] {
            assert!(t.contains(&sentence), "{sentence}\n{t}");
        }
        assert!(!t.contains("step size, chosen on validation tasks"), "{t}");
    }

    #[test]
    fn the_paper_scale_takes_the_authors_settings() {
        // The authors' code for the spiking experiment (docs/EXPERIMENTS.md, "The spiking job at
        // the paper scale"): 1000 meta-steps of 25 tasks, free 500 Adam steps of 1e-3, nudged
        // 100 of 3e-3 at beta 3, meta Adam 3e-3; baselines at meta-batch 10 and meta lr 3e-4,
        // BPTT through 10 inner steps, truncated BPTT through the last 100 of 500.
        let p = Protocol::at(Scale::Paper).unwrap();
        assert_eq!(
            (p.meta_steps, p.meta_batch, p.free_steps, p.nudged_steps),
            (1000, 25, 500, 100)
        );
        assert_eq!((p.inner_lr, p.meta_lr), (1e-3, 3e-3));
        assert!(p.beta_grid.contains(&3.0) && p.nudged_lr_grid.contains(&3e-3));
        assert_eq!((p.baseline_meta_batch, p.unrolled_steps), (10, 10));
        assert_eq!((p.truncated_steps, p.truncated_last), (500, 100));
        let choice = BetaChoice {
            beta: 3.0,
            nudged_lr: 3e-3,
            grid: Vec::new(),
        };
        for method in p.methods(&choice) {
            let expected = if method.baseline { 3e-4 } else { 3e-3 };
            assert_eq!(p.meta_lr_of(&method), expected, "{}", method.name);
        }
        // The default protocol is unchanged by the paper's field: its units stay valid.
        let default = serde_json::to_value(Protocol::at(Scale::Default).unwrap()).unwrap();
        assert!(default.get("baseline_meta_lr").is_none());
        assert_eq!(Protocol::at(Scale::Default).unwrap().meta_steps, 50);
        assert_eq!(Protocol::at(Scale::Quick).unwrap().meta_steps, 2);
        // The shipped configs pull as hard as the core spiking problem (`cml grad`) at every scale,
        // and describe its network.
        for scale in Scale::ALL {
            let p = Protocol::at(scale).unwrap();
            assert_eq!(p.strength, crate::spiking::PULL_STRENGTH, "{scale:?}");
            assert_eq!(
                serde_json::to_value(&p.network).unwrap(),
                serde_json::to_value(NetworkSpec::default()).unwrap(),
                "{scale:?}"
            );
        }
    }

    #[test]
    fn units_whose_choice_differs_from_the_choice_unit_are_refused() {
        use super::super::units::{self, Job, Selection};
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            out: dir.path().join("figures"),
            paper: dir.path().join("paper"),
            ..Settings::at(Scale::Quick)
        };
        // The quick job's units, run and stored as `cml figures --units 0/1` runs them (each run
        // reads the searches stored before it).
        let registry: [&'static dyn Job<super::super::Section>; 1] = [&SPIKING];
        let results = dir.path().join("results");
        let selection = Selection::default();
        units::run_slice(&registry, &settings, &selection, (0, 1), &results, &|_| {}).unwrap();
        // Every unit took the stored choices: the report draws.
        units::report(&registry, &settings, &selection, &results).unwrap();
        // A unit that ran with another beta (from another run) is refused by name.
        let file = results.join("spiking/cml-reference-code-seed1.json");
        let mut unit: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        unit["rows"]["choice"][0] = serde_json::json!(123.0);
        std::fs::write(&file, unit.to_string()).unwrap();
        let err = units::report(&registry, &settings, &selection, &results)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cml-reference-code-seed1")
                && err.contains("beta 123")
                && err.contains("choice unit"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod nudged_budget {
    use super::*;

    /// An analysis, not run by default (about 40 s): would longer nudged phases bring the halves
    /// of the symmetric estimate into agreement? At the default protocol's validation tasks and
    /// initialisation, beta 0.3 and 3, nudged Adam step sizes 1e-3 and 1e-4, nudged phases of 50,
    /// 200 and 800 steps: it prints each setting's mean cosine and norm ratio (minus over plus)
    /// and checks what docs/SPIKING.md reports from it: at step size 1e-3 a longer phase lowers
    /// the cosine and raises the ratio (the `-beta` phase, which pushes the outer loss up, drifts
    /// the longer it runs), and no setting reaches the regime's cosine.
    #[test]
    #[ignore = "an analysis: cargo test --release --lib nudged_budget -- --ignored --nocapture"]
    fn longer_nudged_phases_do_not_bring_the_halves_into_agreement() {
        let settings = Settings::at(Scale::Default);
        let mut at = std::collections::BTreeMap::new();
        for lr in [1e-3, 1e-4] {
            for steps in [50, 200, 800] {
                for beta in [0.3, 3.0] {
                    let p = Protocol {
                        nudged_steps: steps,
                        ..Protocol::at(Scale::Default).unwrap()
                    };
                    let (tasks, theta) = validation(&p, &settings).unwrap();
                    let (cos, ratio) = halves(&p, &theta, &tasks, beta, lr).unwrap();
                    println!(
                        "nudged step size {lr}, {steps} steps, beta {beta}: cosine {cos:.3}, ratio {ratio:.3}"
                    );
                    assert!(cos < REGIME_COSINE, "{lr} {steps} {beta}: {cos}");
                    at.insert((steps, beta.to_string(), lr.to_string()), (cos, ratio));
                }
            }
        }
        for beta in ["0.3", "3"] {
            let g = |steps: usize| at[&(steps, beta.to_string(), "0.001".to_string())];
            assert!(g(200).0 < g(50).0 && g(800).0 < g(50).0, "beta {beta}");
            assert!(g(50).1 < g(200).1 && g(200).1 < g(800).1, "beta {beta}");
        }
    }
}
