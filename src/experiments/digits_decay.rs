//! The paper's §5.2 on the shipped handwritten digits: one weight-decay strength per parameter of
//! a tanh MLP classifier, meta-learned on the validation cross-entropy by the contrastive rule
//! and by CG, Neumann, T1-T2 and truncated BPTT, against a fixed decay and the best single decay
//! of a grid; final test accuracy after retraining on training + validation with the learned
//! strengths, over several seeds (docs/DIGITS.md §4).

use super::choice::{RateSearchSpec, RunSearch, Search};
use super::training::ALPHA;
use super::training::seed_mean_ci;
use super::units::Scale;
use super::weight_decay::{BaselineSteps, DecayComparison, decay_estimators};
use super::{Settings, mean, save, write_csv, write_table};
use crate::digits::decay_classifier::Part;
use crate::digits::{DecayClassifier, Labelled, Standardiser, load_digits, split};
use crate::error::Result;
use crate::estimator::{Contrastive, EstimatorSpec, Variant};
use crate::executor::{Evaluated, OnFailure, run_evaluated};
use crate::inner::{GdParams, InnerSolver, Phase};
use crate::linalg::{Vector, to_tensor};
use crate::mlp::Mlp;
use crate::oracle::Oracle;
use crate::problem::{BilevelProblem, ProblemInstance};
use crate::report::plot::{Figure, Panel, Series, Style};
use crate::report::template::Context;
use crate::rng::{hash_words, stream};
use crate::stats;
use std::path::PathBuf;

/// The budget of the job (full or `--quick`); the full one is shipped as a config in `configs/`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Protocol {
    pub net: Mlp,
    pub train: usize,
    /// Images per seed of the outer loss (the meta-objective).
    pub validation: usize,
    /// Images per seed that score every choice of a meta-learning run (its searches and its
    /// checkpoint), held out from the inner loss (the training images) and the outer loss (the
    /// validation images): scored on the validation images, which meta-training fits, a setting
    /// would win its search by fitting them harder, whether or not its strengths generalise.
    pub selection: usize,
    pub seeds: usize,
    pub meta_steps: usize,
    pub eval_every: usize,
    pub meta_lr: f64,
    pub free_steps: usize,
    pub nudged_steps: usize,
    /// Gradient descent's step size in every inner loop: this value where no search chooses it.
    pub step_size: f64,
    /// The inner step size chosen per seed on its validation images (every inner loop of the
    /// seed, baselines included, then runs at it): among the values whose free phase trains at
    /// every decay of the single-decay grid, the least mean validation cross-entropy per image
    /// after the free phase at the initial decay; an edge choice extends the grid
    /// ([`choose_step_size`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_size_search: Option<RateSearchSpec>,
    pub initial_decay: f64,
    pub beta: f64,
    pub grid: Vec<f64>,
    /// The searches on each seed's selection images (none at the paper scale, which runs the
    /// authors' meta-learning rate and `beta`): `meta_lr` and `beta` above are where they start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<RunSearch>,
    /// The contrastive rule's nudged budget, searched last in each of its runs at the chosen rate
    /// and `beta` (the smallest within one standard error of the least selection loss, since a
    /// larger budget costs more; none at the paper scale); `nudged_steps` is where it starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nudged_steps_search: Option<RateSearchSpec>,
    /// The CG and Neumann iterations and truncated BPTT's walked-back steps where they are not
    /// [`SOLVER_STEPS`] (the paper's: 100 CG iterations, 200 Neumann terms and 200 steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_steps: Option<BaselineSteps>,
}

/// CG and Neumann iterations and truncated BPTT's steps at the quick and default scales.
pub const SOLVER_STEPS: usize = 20;

impl Protocol {
    /// The budgets of the scale, as shipped: `configs/quick/digits_decay.toml`,
    /// `configs/digits_decay.toml` or the paper's `configs/paper/digits_decay.toml`.
    pub fn at(scale: Scale) -> Result<Self> {
        shipped_protocol!(scale, "digits_decay")
    }

    /// The protocol of `settings`' scale with the user's changes (`--protocol digits-decay=FILE`).
    pub fn of(settings: &Settings) -> Result<Self> {
        crate::protocol::configured("digits-decay", Self::at(settings.scale)?, settings)
    }

    fn phase(&self, steps: usize) -> GdParams {
        GdParams {
            step_size: Some(self.step_size),
            max_steps: steps,
            ..GdParams::default()
        }
    }

    pub fn estimators(&self) -> Vec<(&'static str, EstimatorSpec)> {
        decay_estimators(
            Contrastive {
                variant: Variant::Standard,
                beta: self.beta,
                free: self.phase(self.free_steps),
                nudged: self.phase(self.nudged_steps),
            },
            self.baseline_steps.unwrap_or(BaselineSteps {
                cg: SOLVER_STEPS,
                neumann: SOLVER_STEPS,
                truncation: SOLVER_STEPS,
            }),
            self.step_size,
        )
    }
}

impl crate::protocol::Checked for Protocol {
    fn check(&self) -> Result<()> {
        let mut c = crate::protocol::Checks::new("digits-decay");
        c.sizes("net.sizes", &self.net.sizes)
            .that(
                self.net.sizes.first() == Some(&64),
                "net.sizes",
                format!("{:?}", self.net.sizes),
                "64 inputs first (8 x 8 images)",
            )
            .that(
                self.net.sizes.last() == Some(&10),
                "net.sizes",
                format!("{:?}", self.net.sizes),
                "10 outputs last (the digits)",
            )
            .count("train", self.train)
            .count("validation", self.validation)
            .count("selection", self.selection)
            .that(
                self.train + self.validation + self.selection < crate::digits::IMAGES,
                "selection",
                format!(
                    "{} (with {} training and {} validation images)",
                    self.selection, self.train, self.validation
                ),
                &format!(
                    "training + validation + selection images below the {} shipped, so that test images remain",
                    crate::digits::IMAGES
                ),
            )
            .seeds("seeds", self.seeds)
            .count("meta_steps", self.meta_steps)
            .count("eval_every", self.eval_every)
            .positive("meta_lr", self.meta_lr)
            .count("free_steps", self.free_steps)
            .count("nudged_steps", self.nudged_steps)
            .positive("step_size", self.step_size)
            .positive("initial_decay", self.initial_decay)
            .positive("beta", self.beta)
            .grid("grid", &self.grid, 1, true);
        c.rate_search("step_size_search", self.step_size_search.as_ref())
            .run_search("search", self.search.as_ref())
            .rate_search("nudged_steps_search", self.nudged_steps_search.as_ref());
        if let Some(b) = &self.baseline_steps {
            c.count("baseline_steps.cg", b.cg)
                .count("baseline_steps.neumann", b.neumann)
                .count("baseline_steps.truncation", b.truncation);
        }
        c.done()
    }
}

/// The deployed strengths' validation and selection cross-entropy after training on the training
/// images (what meta-training fits, and what chose it), and the final test metrics after
/// retraining on training + validation.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Final {
    pub validation_ce: f64,
    pub selection_ce: f64,
    pub test_ce: f64,
    pub test_accuracy: f64,
}

/// One method's results over seeds.
#[derive(Debug, Clone)]
pub struct MethodResult {
    pub method: String,
    pub per_seed: Vec<Final>,
}

impl MethodResult {
    /// Mean and 95% t-interval half-width over seeds of one metric.
    pub fn stat(&self, metric: impl Fn(&Final) -> f64) -> (f64, f64) {
        seed_mean_ci(&self.per_seed.iter().map(metric).collect::<Vec<_>>())
    }
}

/// A meta-learning method's choices on validation over its seeds: each run's searches (meta-learning
/// rate, and `beta` and the nudged budget for the contrastive rule; none without a search) and
/// deployed meta-step; and what its runs cost.
#[derive(Debug, Clone)]
pub struct MethodChoices {
    pub method: String,
    pub searches: Vec<Search>,
    pub checkpoints: Vec<usize>,
    /// Each deployed run's inner work per meta-step ([`EstimatorSpec::inner_work`]).
    pub inner_work: Vec<String>,
    /// Each seed's unit wall seconds, its searches' runs included.
    pub seconds: Vec<f64>,
}

#[derive(Debug, Clone)]
pub struct DigitsDecayResults {
    pub protocol: Protocol,
    pub methods: Vec<MethodResult>,
    /// The single decay chosen on validation, per seed.
    pub chosen_single: Vec<f64>,
    /// Each seed's inner step-size search (none at a scale without one).
    pub step_size_searches: Vec<Search>,
    /// Each meta-learning method's choices on validation, per seed.
    pub choices: Vec<MethodChoices>,
    pub comparisons: Vec<DecayComparison>,
}

/// One seed's data: standardised splits and the initial weights.
struct SeedData {
    train: Labelled,
    validation: Labelled,
    selection: Labelled,
    test: Labelled,
    phi_init: Vector,
}

fn seed_data(protocol: &Protocol, all: &Labelled, seed: u64) -> Result<SeedData> {
    // The held-out rows after the training rows: the validation rows, then the selection rows.
    let total = protocol.validation + protocol.selection;
    let s = split(all, protocol.train, total, seed)?;
    let held_out = |rows: std::ops::Range<usize>| s.validation.select(&rows.collect::<Vec<_>>());
    let st = Standardiser::fit(&s.train)?;
    Ok(SeedData {
        train: st.apply(&s.train),
        validation: st.apply(&held_out(0..protocol.validation)),
        selection: st.apply(&held_out(protocol.validation..total)),
        test: st.apply(&s.test),
        phi_init: protocol.net.init(&mut stream(seed, 1)),
    })
}

/// Trains from `phi_init` with strengths `theta` on `train` (the free phase) and returns the
/// weights.
fn fit(
    protocol: &Protocol,
    d: &SeedData,
    train: &Labelled,
    theta: &Vector,
) -> Result<(DecayClassifier, candle_core::Tensor)> {
    let p = DecayClassifier::new(
        protocol.net.clone(),
        train.clone(),
        d.validation.clone(),
        &d.phi_init,
        theta,
    )?;
    let t = to_tensor(theta)?;
    let phi = protocol
        .phase(protocol.free_steps)
        .solve(
            &Oracle::new(&p),
            &Phase::new(&p.initial_phi(&t)?, &t, 0.0, "adaptation"),
        )?
        .phi;
    Ok((p, phi))
}

/// The cross-entropies after training on the training rows with some strengths.
struct Evaluation {
    /// Each validation image's.
    validation: Vec<f64>,
    /// Each selection image's.
    selection: Vec<f64>,
    /// The test images' mean.
    test: f64,
}

/// A curve's point: the mean validation, selection and test cross-entropy.
type CurvePoint = (f64, f64, f64);

impl Evaluation {
    fn point(&self) -> CurvePoint {
        (mean(&self.validation), mean(&self.selection), self.test)
    }
}

/// Trains on the training rows with `theta`, then measures every held-out part.
fn evaluate(protocol: &Protocol, d: &SeedData, theta: &Vector) -> Result<Evaluation> {
    let (p, phi) = fit(protocol, d, &d.train, theta)?;
    let part = |rows: &Labelled| Part::new(rows.clone(), classes(protocol));
    Ok(Evaluation {
        validation: p.validation.cross_entropies(&p.net, &phi)?,
        selection: part(&d.selection)?.cross_entropies(&p.net, &phi)?,
        test: part(&d.test)?.cross_entropy(&p.net, &phi)?.to_scalar::<f64>()?,
    })
}

fn classes(protocol: &Protocol) -> usize {
    *protocol.net.sizes.last().expect("an output layer")
}

/// Validation cross-entropy after training on the training rows with `theta`.
fn validation_ce(protocol: &Protocol, d: &SeedData, theta: &Vector) -> Result<f64> {
    Ok(evaluate(protocol, d, theta)?.point().0)
}

/// One meta-training run: its curve (meta-step, validation, selection and test cross-entropy,
/// every `eval_every` meta-steps and at the last), the checkpoint deployed (the least selection
/// cross-entropy, ties to the later; meta-step 0 is the untrained strengths), that checkpoint's
/// strengths and per-image selection losses (a search's score), and why the run failed, if it did.
struct Trained {
    curve: Vec<(usize, CurvePoint)>,
    checkpoint: usize,
    theta: Vector,
    selection: Vec<f64>,
    failed: Option<String>,
}

/// Meta-trains `spec`'s strengths from the protocol's initial decay with Adam at `meta_lr`.
fn meta_train(
    protocol: &Protocol,
    d: &SeedData,
    spec: &EstimatorSpec,
    meta_lr: f64,
    on_failure: OnFailure,
) -> Result<Trained> {
    let theta0 = uniform_theta(protocol.net.param_count(), protocol.initial_decay);
    let Evaluated { mut points, failed } = run_evaluated(
        theta0,
        meta_lr,
        protocol.meta_steps,
        protocol.eval_every,
        on_failure,
        |theta| {
            let p = DecayClassifier::new(
                protocol.net.clone(),
                d.train.clone(),
                d.validation.clone(),
                &d.phi_init,
                theta,
            )?;
            Ok(spec.estimator().estimate(&p, p.theta())?.gradient)
        },
        // Strengths that make the training loop diverge fail the run like an estimate that
        // fails, under the same policy.
        |theta| evaluate(protocol, d, theta),
    )?;
    let curve: Vec<(usize, CurvePoint)> = points.iter().map(|(step, e, _)| (*step, e.point())).collect();
    let means: Vec<f64> = curve.iter().map(|(_, (_, s, _))| *s).collect();
    let best = super::choice::least_loss(&means).expect("the initialisation is evaluated");
    let (checkpoint, evaluation, theta) = points.swap_remove(best);
    Ok(Trained {
        curve,
        checkpoint,
        theta,
        selection: evaluation.selection,
        failed,
    })
}

/// The run of `spec` the protocol deploys, and the searches that chose it (none without a
/// search; [`super::choice::searched_run`]): every value is a whole run, scored by its per-image
/// validation losses at its checkpoint.
fn searched_run(
    protocol: &Protocol,
    d: &SeedData,
    subject: &str,
    spec: &EstimatorSpec,
) -> Result<(Vec<Search>, Trained)> {
    let Some(search) = &protocol.search else {
        return Ok((
            Vec::new(),
            meta_train(protocol, d, spec, protocol.meta_lr, OnFailure::Error)?,
        ));
    };
    super::choice::searched_run(
        subject,
        search,
        protocol.nudged_steps_search.as_ref(),
        spec,
        |meta_lr, spec| meta_train(protocol, d, spec, meta_lr, OnFailure::Stop),
    )
}

impl super::choice::ScoredRun for Trained {
    /// The selection images' losses: a search's score.
    fn validation(&self) -> &[f64] {
        &self.selection
    }
    fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }
}

/// The final protocol: retrain on training + validation with `theta`, measure on test.
fn finish(protocol: &Protocol, d: &SeedData, theta: &Vector) -> Result<Final> {
    let (validation_ce, selection_ce, _) = evaluate(protocol, d, theta)?.point();
    let (p, phi) = fit(protocol, d, &d.train.concat(&d.validation), theta)?;
    let test = crate::digits::decay_classifier::Part::new(
        d.test.clone(),
        *protocol.net.sizes.last().expect("sizes"),
    )?;
    Ok(Final {
        validation_ce,
        selection_ce,
        test_ce: test.cross_entropy(&p.net, &phi)?.to_scalar::<f64>()?,
        test_accuracy: test.accuracy(&p.net, &phi)?,
    })
}

/// Chooses seed `s`'s inner step size on its validation images ([`Protocol::step_size_search`],
/// [`Ties::None`]): each value must train every inner problem of the seed's baselines, the free
/// phase from the seed's initial weights at every decay of the single-decay grid (where it
/// diverges or a validation loss is not finite, the value fails: a step size the baselines
/// cannot use would not match them); it is scored by each validation image's cross-entropy after
/// the free phase at the initial decay, where meta-training starts. `None` without a search.
fn choose_step_size(protocol: &Protocol, d: &SeedData, s: usize) -> Result<Option<Search>> {
    let Some(search) = &protocol.step_size_search else {
        return Ok(None);
    };
    let n = protocol.net.param_count();
    // The initial decay first: its losses are the score.
    let decays: Vec<f64> = std::iter::once(protocol.initial_decay)
        .chain(protocol.grid.iter().copied())
        .collect();
    let problems: Vec<String> = decays.iter().map(|d| format!("decay {d}")).collect();
    super::choice::search_stable_step_size(&format!("seed {s}"), search, &problems, |step_size, k| {
        let q = Protocol {
            step_size,
            ..protocol.clone()
        };
        Ok(evaluate(&q, d, &uniform_theta(n, decays[k]))?.validation)
    })
    .map(Some)
}

/// The job: one unit per meta-learning method and seed, and one per seed for the two baselines
/// (the fixed decay, and the single decay a grid search on validation chooses).
pub(super) struct DigitsDecay;
pub(super) static DIGITS_DECAY: DigitsDecay = DigitsDecay;

/// A method's name in unit names: lower case, words joined by dashes.
fn key(name: &str) -> String {
    name.to_lowercase().replace(' ', "-")
}

const BASELINES: &str = "baselines";
/// Each seed's inner step-size search, a unit of its own that the seed's other units read.
const STEP_SIZE_CHOICE: &str = "choice-step-size";

/// Every unit: (method key, seed index), each seed's step-size search first (where the scale has
/// one), then the methods, then the baselines.
fn unit_list(protocol: &Protocol) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    if protocol.step_size_search.is_some() {
        out.extend((0..protocol.seeds).map(|s| (STEP_SIZE_CHOICE.to_string(), s)));
    }
    for (name, _) in protocol.estimators() {
        out.extend((0..protocol.seeds).map(|s| (key(name), s)));
    }
    out.extend((0..protocol.seeds).map(|s| (BASELINES.to_string(), s)));
    out
}

fn unit_name(key: &str, seed: usize) -> String {
    format!("{key}-seed{seed}")
}

/// The data seed of seed index `s`.
fn data_seed(settings: &Settings, s: usize) -> u64 {
    hash_words(&[settings.seed, 52, s as u64])
}

/// What a method's unit leaves: the searches that chose its run (none without a search), the
/// run's curve (meta-step, validation, selection and test cross-entropy), the checkpoint it
/// deployed, and the deployed strengths' final metrics.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct MethodRun {
    /// The inner step size this unit ran at (its seed's search's choice; none without a search).
    #[serde(default)]
    step_size: Option<f64>,
    searches: Vec<Search>,
    curve: Vec<(usize, CurvePoint)>,
    checkpoint: usize,
    deployed: Final,
}

/// What a seed's baselines unit leaves: the fixed decay's metrics, the grid's validation scores,
/// and the chosen decay's metrics.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct BaselineRun {
    /// The inner step size this unit ran at (its seed's search's choice; none without a search).
    #[serde(default)]
    step_size: Option<f64>,
    fixed: Final,
    grid: Vec<(f64, f64)>,
    chosen: f64,
    best: Final,
}

/// The strengths of one decay for every parameter; decay 0 (no decay) as the smallest positive
/// float, whose exponential underflows to 0 in the losses.
fn uniform_theta(n: usize, decay: f64) -> Vector {
    Vector::from_element(n, decay.max(f64::MIN_POSITIVE).ln())
}

impl super::units::Job<super::Section> for DigitsDecay {
    fn name(&self) -> &'static str {
        "digits-decay"
    }

    fn about(&self) -> &'static str {
        "per-parameter weight decay of a digit classifier: the contrastive rule against CG, Neumann, T1-T2, truncated BPTT"
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
        // Only the contrastive rule has a nudged phase, so only its runs read that search.
        let keys: &[&str] = if unit.starts_with(&format!("{}-seed", key(super::weight_decay::CONTRASTIVE))) {
            &[]
        } else {
            &["nudged_steps_search"]
        };
        super::units::Reads {
            ignores: keys.to_vec(),
            searches: Vec::new(),
        }
    }

    fn units(&self, settings: &Settings) -> Result<Vec<String>> {
        Ok(unit_list(&Protocol::of(settings)?)
            .iter()
            .map(|(k, s)| unit_name(k, *s))
            .collect())
    }

    fn run_unit(
        &self,
        settings: &Settings,
        unit: &str,
        staging: &std::path::Path,
    ) -> Result<serde_json::Value> {
        let protocol = Protocol::of(settings)?;
        let (method, s) = super::units::lookup(self, settings, unit, unit_list(&protocol), |(k, s)| {
            unit_name(k, *s)
        })?;
        let d = seed_data(&protocol, &load_digits()?, data_seed(settings, s))?;
        if method == STEP_SIZE_CHOICE {
            return super::units::encode(&choose_step_size(&protocol, &d, s)?);
        }
        // The seed's choice unit's step size (computed here where it is not stored beside).
        let step_size =
            super::choice::chosen_value(self, settings, staging, &unit_name(STEP_SIZE_CHOICE, s), || {
                choose_step_size(&protocol, &d, s)
            })?;
        let protocol = Protocol {
            step_size: step_size.unwrap_or(protocol.step_size),
            ..protocol
        };
        let n = protocol.net.param_count();
        let theta0 = uniform_theta(n, protocol.initial_decay);
        if method == BASELINES {
            let grid = protocol
                .grid
                .iter()
                .map(|&decay| Ok((decay, validation_ce(&protocol, &d, &uniform_theta(n, decay))?)))
                .collect::<Result<Vec<_>>>()?;
            let chosen = grid.iter().min_by(|a, b| a.1.total_cmp(&b.1)).expect("a grid").0;
            return super::units::encode(&BaselineRun {
                step_size,
                fixed: finish(&protocol, &d, &theta0)?,
                grid,
                chosen,
                best: finish(&protocol, &d, &uniform_theta(n, chosen))?,
            });
        }
        let estimators = protocol.estimators();
        let (_, spec) = estimators
            .iter()
            .find(|(name, _)| key(name) == method)
            .expect("a method of the unit list");
        let (searches, run) = searched_run(&protocol, &d, unit, spec)?;
        super::units::encode(&MethodRun {
            step_size,
            searches,
            curve: run.curve,
            checkpoint: run.checkpoint,
            deployed: finish(&protocol, &d, &run.theta)?,
        })
    }

    fn report(
        &self,
        settings: &Settings,
        units: &[super::units::Stored],
        files: &mut Vec<PathBuf>,
    ) -> Result<crate::report::template::Context> {
        Ok(super::writeup::digits_decay_section(&report(
            settings, units, files,
        )?))
    }

    fn calibrate(&self, settings: &Settings, units: &[String]) -> Result<Option<Vec<f64>>> {
        calibrate(settings, units)
    }
}

/// How much the calibration shrinks every step count: a unit's cost is linear in them.
const CALIBRATION_SHRINK: usize = 50;

/// Estimated wall seconds of each of `units` at the paper scale, from one timed fit (free phase
/// and evaluation) and one timed estimate of each method at the untrained decays, each timed with
/// every step count divided by [`CALIBRATION_SHRINK`] and by twice that: the two times give the
/// fixed cost and the cost per step, extrapolated to the full step counts. `None` at the other
/// scales, whose measured runs (`--results`) give their cost.
fn calibrate(settings: &Settings, units: &[String]) -> Result<Option<Vec<f64>>> {
    if settings.scale != Scale::Paper {
        return Ok(None);
    }
    let p = Protocol::of(settings)?;
    let steps = p.baseline_steps.expect("the paper's baseline steps");
    let shrunk = |k: usize| {
        let by = |n: usize| (n / k).max(1);
        Protocol {
            free_steps: by(p.free_steps),
            nudged_steps: by(p.nudged_steps),
            baseline_steps: Some(BaselineSteps {
                cg: by(steps.cg),
                neumann: by(steps.neumann),
                truncation: by(steps.truncation),
            }),
            ..p.clone()
        }
    };
    let (small, smaller) = (shrunk(CALIBRATION_SHRINK), shrunk(2 * CALIBRATION_SHRINK));
    let d = seed_data(&p, &load_digits()?, data_seed(settings, 0))?;
    let theta0 = uniform_theta(p.net.param_count(), p.initial_decay);
    // t(s) = a + b s at s and s / 2 steps: b s = 2 (t(s) - t(s/2)), and the full count is k s.
    let timed = |work: &dyn Fn(&Protocol) -> Result<()>| -> Result<f64> {
        let mut t = [0.0; 2];
        for (slot, q) in t.iter_mut().zip([&small, &smaller]) {
            *slot = super::units::timed(|| work(q))?;
        }
        let per_s = 2.0 * (t[0] - t[1]).max(0.0);
        Ok(t[0] + (CALIBRATION_SHRINK as f64 - 1.0) * per_s)
    };
    let fit = timed(&|q| evaluate(q, &d, &theta0).map(|_| ()))?;
    // A method's unit: its curve's points, `finish` (a validation fit and a retraining on twice
    // the rows), and an estimate per meta-step; the baselines' unit: the grid's fits and two
    // finishes.
    let points = (p.meta_steps / p.eval_every + 1) as f64;
    // A seed's step-size choice unit: per value, extensions included (an upper bound), a fit at
    // the initial decay and at every decay of the single-decay grid.
    let step_size_fits = p.step_size_search.as_ref().map_or(0.0, |x| {
        ((x.grid.len() + x.extensions) * (1 + p.grid.len())) as f64
    });
    let problem = DecayClassifier::new(
        p.net.clone(),
        d.train.clone(),
        d.validation.clone(),
        &d.phi_init,
        &theta0,
    )?;
    let mut per_method = Vec::new();
    for (k, (name, _)) in p.estimators().iter().enumerate() {
        let estimate = timed(&|q| {
            q.estimators()[k]
                .1
                .estimator()
                .estimate(&problem, problem.theta())
                .map(|_| ())
        })?;
        per_method.push((key(name), (points + 3.0) * fit + p.meta_steps as f64 * estimate));
    }
    let baselines = (p.grid.len() as f64 + 6.0) * fit;
    units
        .iter()
        .map(|unit| {
            let (method, _) =
                super::units::lookup(&DIGITS_DECAY, settings, unit, unit_list(&p), |(k, s)| {
                    unit_name(k, *s)
                })?;
            Ok(if method == STEP_SIZE_CHOICE {
                step_size_fits * fit
            } else {
                per_method
                    .iter()
                    .find(|(k, _)| *k == method)
                    .map_or(baselines, |(_, s)| *s)
            })
        })
        .collect::<Result<Vec<f64>>>()
        .map(Some)
}

fn report(
    settings: &Settings,
    units: &[super::units::Stored],
    files: &mut Vec<PathBuf>,
) -> Result<DigitsDecayResults> {
    let protocol = Protocol::of(settings)?;
    let find = |k: &str, s: usize| units.iter().find(|u| u.unit == unit_name(k, s));
    // (seed index, its baselines unit).
    let seeded: Vec<(usize, BaselineRun)> = (0..protocol.seeds)
        .filter_map(|s| find(BASELINES, s).map(|u| (s, u)))
        .map(|(s, u)| Ok((s, super::units::decode(u)?)))
        .collect::<Result<_>>()?;
    let baselines = &seeded;
    // Each seed's inner step-size search, from its choice unit.
    let step_size_searches =
        super::choice::stored(units, (0..protocol.seeds).map(|s| unit_name(STEP_SIZE_CHOICE, s)))?;
    let step_size_search = |s: usize| step_size_searches.iter().find(|x| x.model == format!("seed {s}"));
    for (s, b) in baselines {
        super::choice::check_agrees(
            step_size_search(*s),
            &format!("digits-decay unit {}", unit_name(BASELINES, *s)),
            b.step_size,
        )?;
    }
    let mut methods = vec![
        MethodResult {
            method: format!("fixed decay {}", protocol.initial_decay),
            per_seed: baselines.iter().map(|b| b.1.fixed).collect(),
        },
        MethodResult {
            method: BEST_SINGLE.into(),
            per_seed: baselines.iter().map(|b| b.1.best).collect(),
        },
    ];
    let mut curve_rows = Vec::new();
    let panel = |what: &str| {
        Panel::new(
            format!("per-parameter weight decay, digits: {what}"),
            "meta-step",
            format!("{what} cross-entropy (mean over seeds)"),
            false,
            false,
        )
    };
    let (mut validation, mut selection, mut test) = (panel("validation"), panel("selection"), panel("test"));
    let mut choices = Vec::new();
    for (e, (name, spec)) in protocol.estimators().iter().enumerate() {
        let (mut runs, mut seconds): (Vec<MethodRun>, Vec<f64>) = (Vec::new(), Vec::new());
        for s in 0..protocol.seeds {
            if let Some(u) = find(&key(name), s) {
                seconds.push(u.seconds);
                let run: MethodRun = super::units::decode(u)?;
                // The seed's step size as its choice unit chose it (units from one run).
                super::choice::check_agrees(
                    step_size_search(s),
                    &format!("digits-decay unit {}", u.unit),
                    run.step_size,
                )?;
                runs.push(run);
            }
        }
        if runs.is_empty() {
            continue;
        }
        methods.push(MethodResult {
            method: name.to_string(),
            per_seed: runs.iter().map(|r| r.deployed).collect(),
        });
        // Each run at its chosen nudged budget (the rule's searched last; the protocol's without it).
        let inner_work = runs
            .iter()
            .map(|r| super::choice::at_chosen_nudged_steps(spec, &r.searches).inner_work())
            .collect();
        choices.push(MethodChoices {
            method: name.to_string(),
            searches: runs.iter().flat_map(|r| r.searches.clone()).collect(),
            checkpoints: runs.iter().map(|r| r.checkpoint).collect(),
            inner_work,
            seconds,
        });
        let (mut v_points, mut s_points, mut t_points) = (Vec::new(), Vec::new(), Vec::new());
        for (k, &(step, _)) in runs[0].curve.iter().enumerate() {
            let values: Vec<CurvePoint> = runs.iter().map(|r| r.curve[k].1).collect();
            for (s, (v, sel, t)) in values.iter().enumerate() {
                curve_rows.push(format!("{name},{s},{step},{v:e},{sel:e},{t:e}"));
            }
            let at = |part: fn(&CurvePoint) -> f64| {
                let parts: Vec<f64> = values.iter().map(part).collect();
                (step as f64, mean(&parts))
            };
            v_points.push(at(|x| x.0));
            s_points.push(at(|x| x.1));
            t_points.push(at(|x| x.2));
        }
        validation
            .series
            .push(Series::new(*name, v_points, e, Style::LinePoints));
        selection
            .series
            .push(Series::new(*name, s_points, e, Style::LinePoints));
        test.series
            .push(Series::new(*name, t_points, e, Style::LinePoints));
    }
    let flat = |v: f64| vec![(0.0, v), (protocol.meta_steps as f64, v)];
    // Short legend labels, so the legend stays beside the plot.
    if !baselines.is_empty() {
        for (i, (m, label)) in methods[..2]
            .iter()
            .zip(["fixed decay", "best single decay"])
            .enumerate()
        {
            validation.series.push(Series::new(
                label,
                flat(m.stat(|f| f.validation_ce).0),
                5 + i,
                Style::Dashed,
            ));
            selection.series.push(Series::new(
                label,
                flat(m.stat(|f| f.selection_ce).0),
                5 + i,
                Style::Dashed,
            ));
        }
    }
    write_csv(
        &settings.out.join("digits_decay_curves.csv"),
        "estimator,seed,meta_step,validation_cross_entropy,selection_cross_entropy,test_cross_entropy",
        &curve_rows,
        files,
    )?;
    let mut final_rows = Vec::new();
    for m in &methods {
        for (s, f) in m.per_seed.iter().enumerate() {
            final_rows.push(format!(
                "{},{s},{:e},{:e},{:e},{:e}",
                m.method, f.validation_ce, f.selection_ce, f.test_ce, f.test_accuracy
            ));
        }
    }
    write_csv(
        &settings.out.join("digits_decay.csv"),
        "method,seed,validation_cross_entropy,selection_cross_entropy,test_cross_entropy,test_accuracy",
        &final_rows,
        files,
    )?;
    // The grid search, recorded: every decay's validation score per seed, and the choice.
    let grid_rows: Vec<String> = baselines
        .iter()
        .map(|(s, b)| (*s, b))
        .flat_map(|(s, b)| {
            b.grid
                .iter()
                .map(move |(decay, v)| format!("{s},{decay:e},{v:e},{}", *decay == b.chosen))
        })
        .collect();
    write_csv(
        &settings.out.join("digits_decay_grid.csv"),
        "seed,decay,validation_cross_entropy,chosen",
        &grid_rows,
        files,
    )?;
    // Each seed's inner step-size search, then every run's searches (subjects are the units,
    // `<method>-seed<s>`) and deployed checkpoint.
    let run_searches: Vec<Search> = choices.iter().flat_map(|c| c.searches.clone()).collect();
    super::choice::write_decay_searches(
        &settings.out,
        "digits_decay",
        &step_size_searches,
        &run_searches,
        files,
    )?;
    let checkpoint_rows: Vec<String> = choices
        .iter()
        .flat_map(|c| {
            c.checkpoints
                .iter()
                .enumerate()
                .map(move |(s, step)| format!("{},{s},{step}", c.method))
        })
        .collect();
    write_csv(
        &settings.out.join("digits_decay_checkpoints.csv"),
        "estimator,seed,deployed_meta_step",
        &checkpoint_rows,
        files,
    )?;
    save(
        settings,
        "digits_decay",
        &Figure {
            panels: vec![validation, selection, test],
            columns: 3,
        },
        files,
    )?;
    let comparisons = compare(&methods);
    let results = DigitsDecayResults {
        protocol,
        methods,
        chosen_single: baselines.iter().map(|b| b.1.chosen).collect(),
        step_size_searches,
        choices,
        comparisons,
    };
    write_table(settings, "digits_decay.md", &table(&results)?, files)?;
    Ok(results)
}

/// The name of the grid-search baseline.
const BEST_SINGLE: &str = "best single decay (grid search on validation)";

/// Two methods' test accuracies are equivalent within this many (fractional) points, 1
/// percentage point (fixed before any run; docs/PROTOCOL.md).
pub const EQUIVALENCE_MARGIN: f64 = 0.01;

/// The table's family: each meta-learning method against the best single decay, and the
/// contrastive rule against each other meta-learning method.
fn compare(methods: &[MethodResult]) -> Vec<DecayComparison> {
    let accuracy = |m: &MethodResult| m.per_seed.iter().map(|f| f.test_accuracy).collect::<Vec<_>>();
    let learned = methods
        .iter()
        .filter(|m| !m.method.starts_with("fixed") && m.method != BEST_SINGLE);
    let mut pairs: Vec<(&MethodResult, &MethodResult)> = Vec::new();
    if let Some(best) = methods.iter().find(|m| m.method == BEST_SINGLE) {
        pairs.extend(learned.clone().map(|m| (m, best)));
    }
    let mut learned = learned;
    if let Some(rule) = learned.next() {
        pairs.extend(learned.map(|m| (rule, m)));
    }
    let diffs: Vec<Vec<f64>> = pairs
        .iter()
        .map(|(a, b)| accuracy(a).iter().zip(accuracy(b)).map(|(x, y)| x - y).collect())
        .collect();
    pairs
        .iter()
        .zip(stats::compare_family(
            &diffs,
            &vec![EQUIVALENCE_MARGIN; diffs.len()],
            ALPHA,
        ))
        .map(|((a, b), comparison)| DecayComparison {
            first: a.method.clone(),
            second: b.method.clone(),
            comparison,
        })
        .collect()
}

/// Test accuracy and cross-entropy per method, mean +- 95% t-interval over seeds.
pub fn table(r: &DigitsDecayResults) -> Result<String> {
    let p = &r.protocol;
    let methods = r
        .methods
        .iter()
        .map(|m| {
            let (a, ac) = m.stat(|f| f.test_accuracy);
            let (c, cc) = m.stat(|f| f.test_ce);
            let (v, vc) = m.stat(|f| f.validation_ce);
            let (sel, sc) = m.stat(|f| f.selection_ce);
            Context::new()
                .text("method", &m.method)
                .text("accuracy", format!("{:.2}", 100.0 * a))
                .text("accuracy_ci95", format!("{:.2}", 100.0 * ac))
                .text("test_ce", format!("{c:.4}"))
                .text("test_ce_ci95", format!("{cc:.4}"))
                .text("validation_ce", format!("{v:.4}"))
                .text("validation_ce_ci95", format!("{vc:.4}"))
                .text("selection_ce", format!("{sel:.4}"))
                .text("selection_ce_ci95", format!("{sc:.4}"))
        })
        .collect();
    let budgets = r
        .choices
        .iter()
        .map(|c| {
            Context::new()
                .text("method", &c.method)
                .text("inner_work", super::distinct_joined(&c.inner_work))
                .text("seconds", format!("{:.0}", mean(&c.seconds)))
        })
        .collect();
    let per_seed = |c: &MethodChoices, setting: &str| {
        super::searches::chosen_cell(c.searches.iter().filter(|x| x.setting == setting))
    };
    let choices = r
        .choices
        .iter()
        .map(|c| {
            Context::new()
                .text("method", &c.method)
                .text("meta_lr", per_seed(c, "meta_lr"))
                .text("beta", per_seed(c, "beta"))
                .text("nudged_steps", per_seed(c, "nudged_steps"))
                .text(
                    "deployed",
                    c.checkpoints
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                )
        })
        .collect();
    let comparisons = r
        .comparisons
        .iter()
        .map(|c| {
            super::comparison_context(&c.comparison, |x| format!("{:.2}", 100.0 * x))
                .text("first", &c.first)
                .text("second", &c.second)
        })
        .collect();
    let search = p.search.as_ref().map(|search| {
        Context::new()
            .text("meta_lr_grid", format!("{:?}", search.meta_lr))
            .text("beta_grid", format!("{:?}", search.beta))
            .text("extensions", super::searches::times(search.extensions))
            .section(
                "nudged_search",
                p.nudged_steps_search.as_ref().map(|n| {
                    Context::new()
                        .text("grid", format!("{:?}", n.grid))
                        .text("extensions", super::searches::times(n.extensions))
                }),
            )
    });
    let step_size_search = p
        .step_size_search
        .as_ref()
        .filter(|_| !r.step_size_searches.is_empty())
        .map(|search| {
            Context::new()
                .text("extensions", super::searches::times(search.extensions))
                .text("table", super::searches::table(&r.step_size_searches, "seed"))
        });
    let any_search = r.choices.iter().any(|c| !c.searches.is_empty());
    let context = Context::new()
        .text("net", &p.net)
        .text("parameters", p.net.param_count())
        .text("train", p.train)
        .text("validation", p.validation)
        .text("selection", p.selection)
        .text(
            "test",
            crate::digits::IMAGES - p.train - p.validation - p.selection,
        )
        .text("seeds", p.seeds)
        .text("meta_steps", p.meta_steps)
        .text(
            "meta_lr",
            match &p.search {
                Some(_) => "searched per run on the selection images, below".to_string(),
                None => p.meta_lr.to_string(),
            },
        )
        .text("free_steps", p.free_steps)
        .text(
            "step_size",
            match r.step_size_searches.as_slice() {
                [] => p.step_size.to_string(),
                searches => format!(
                    "{:?} (chosen per seed on validation, below)",
                    searches.iter().map(|x| x.chosen).collect::<Vec<_>>()
                ),
            },
        )
        .text("grid", format!("{:?}", p.grid))
        .text("chosen_single", format!("{:?}", r.chosen_single))
        .text("edge_flag", grid_edge_flag(&p.grid, &r.chosen_single))
        .list("methods", methods)
        .list("budgets", budgets)
        .section("search", search)
        .text("nudged_steps", p.nudged_steps)
        .text("meta_lr_value", p.meta_lr)
        .text("beta", p.beta)
        .text("initial_decay", p.initial_decay)
        .section("step_size_search", step_size_search)
        .section(
            "fixed_step_size",
            p.step_size_search
                .is_none()
                .then(|| Context::new().text("step_size", p.step_size)),
        )
        .list("choices", choices)
        .text(
            "edges",
            if any_search {
                super::searches::edges_sentence(r.choices.iter().flat_map(|c| &c.searches))
            } else {
                String::new()
            },
        )
        .text("comparison_count", r.comparisons.len())
        .text("margin", format!("{:.1}", 100.0 * EQUIVALENCE_MARGIN))
        .text("alpha", ALPHA)
        .list("comparisons", comparisons);
    super::render_table(
        include_str!("tables/digits_decay.md"),
        "digits_decay.md",
        &context,
    )
}

/// One sentence per method for the write-up: the values its runs chose, and the checkpoints
/// deployed (the table and CSVs hold every score).
pub fn choices_summary(r: &DigitsDecayResults) -> String {
    let p = &r.protocol;
    let mut out = match &p.search {
        Some(search) => format!(
            "each run's meta-learning rate from {:?} and the contrastive rule's beta from {:?}{} (whole \
             meta-trainings scored per selection image; {} of the searches chose at an edge of the \
             extended grid), and each run's checkpoint (least selection cross-entropy).",
            search.meta_lr,
            search.beta,
            p.nudged_steps_search.as_ref().map_or(String::new(), |n| format!(
                " then its nudged steps from {:?}",
                n.grid
            )),
            r.choices
                .iter()
                .flat_map(|c| &c.searches)
                .filter(|x| x.open_edge())
                .count()
        ),
        None => format!(
            "meta-learning rate {} and beta {} as the paper's code sets them, and each run's checkpoint \
             (least selection cross-entropy).",
            p.meta_lr, p.beta
        ),
    };
    for c in &r.choices {
        let values = |setting: &str| -> Vec<f64> {
            c.searches
                .iter()
                .filter(|x| x.setting == setting)
                .map(|x| x.chosen)
                .collect()
        };
        out.push_str(&format!(" {}:", c.method));
        for (setting, label) in [
            ("meta_lr", "rate"),
            ("beta", "beta"),
            ("nudged_steps", "nudged steps"),
        ] {
            let chosen = values(setting);
            if !chosen.is_empty() {
                out.push_str(&format!(" {label} {chosen:?},"));
            }
        }
        out.push_str(&format!(" deployed meta-steps {:?}.", c.checkpoints));
    }
    out
}

/// A note when a choice sits at an edge of its grid: at the lower edge (no decay) the search
/// says regularisation does not help on validation; at the upper edge the grid must grow.
pub fn grid_edge_flag(grid: &[f64], chosen: &[f64]) -> String {
    let (low, high) = (grid[0], grid[grid.len() - 1]);
    let at_low = chosen.iter().filter(|&&c| c == low).count();
    let at_high = chosen.iter().filter(|&&c| c == high).count();
    let mut notes = Vec::new();
    if at_low > 0 {
        notes.push(format!(
            "{at_low} of {} seeds chose the grid's lower edge ({low}){}",
            chosen.len(),
            if low == 0.0 {
                ", no decay: there the search finds no benefit from a single decay"
            } else {
                ", **at the edge: the grid must be extended**"
            }
        ));
    }
    if at_high > 0 {
        notes.push(format!(
            "{at_high} of {} seeds chose the grid's upper edge ({high}), **at the edge: the grid must be extended**",
            chosen.len()
        ));
    }
    if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimator::{Implicit, LinearSolver, Unrolled};

    #[test]
    fn at_the_paper_scale_the_table_says_the_rate_and_beta_are_the_protocols() {
        // The paper scale searches neither the meta-learning rate nor beta: the choices section
        // of the table's template takes its text for a scale without them, with the protocol's
        // values (a misnamed tag would be an error here; the quick and default runs never render it).
        let p = Protocol::at(Scale::Paper).unwrap();
        assert!(p.search.is_none());
        let r = DigitsDecayResults {
            protocol: p.clone(),
            methods: Vec::new(),
            chosen_single: Vec::new(),
            step_size_searches: Vec::new(),
            choices: Vec::new(),
            comparisons: Vec::new(),
        };
        let t = table(&r).unwrap();
        let sentence = format!(
            "No search at this scale: meta-learning rate {} and beta {} as the paper's code sets them.",
            p.meta_lr, p.beta
        );
        assert!(t.contains(&sentence), "{t}");
    }

    #[test]
    fn the_budget_table_counts_each_methods_inner_work() {
        // The default protocol: 200 free steps; the standard rule's one nudged phase of 50 steps
        // (100 where its search chose 100), 20 CG iterations and 20 Neumann terms, T1-T2's one
        // mixed product in place of a solve, truncated BPTT walking back the last 20 steps.
        let p = Protocol::at(Scale::Default).unwrap();
        let work: Vec<String> = p.estimators().iter().map(|(_, e)| e.inner_work()).collect();
        assert_eq!(
            work,
            vec![
                "200 steps + 1 x 50 nudged",
                "200 steps + 20 CG products",
                "200 steps + 20 Neumann products",
                "200 steps + 1 mixed product",
                "200 steps + 20 back",
            ]
        );
        let rule = super::super::choice::at_nudged_steps(&p.estimators()[0].1, 100);
        assert_eq!(rule.inner_work(), "200 steps + 1 x 100 nudged");
    }

    #[test]
    fn the_paper_scale_takes_the_authors_settings() {
        // The authors' MNIST settings (docs/EXPERIMENTS.md, "The digit weight-decay job at the
        // paper's budgets"): an MLP with five hidden layers of 256, 100 outer steps of Adam 1e-4
        // from decay 1e-5, free 2000 and nudged 200 steps at beta 3 (standard variant), CG with
        // 100 iterations, Neumann with 200 terms, truncated BPTT through the last 200 steps.
        let p = Protocol::at(Scale::Paper).unwrap();
        assert_eq!(p.net.sizes, vec![64, 256, 256, 256, 256, 256, 10]);
        assert_eq!((p.meta_steps, p.meta_lr, p.initial_decay), (100, 1e-4, 1e-5));
        let estimators = p.estimators();
        let spec = |name: &str| &estimators.iter().find(|e| e.0 == name).unwrap().1;
        let EstimatorSpec::Contrastive(c) = spec("contrastive") else {
            panic!("contrastive")
        };
        assert_eq!((c.variant, c.beta), (Variant::Standard, 3.0));
        assert_eq!((c.free.max_steps, c.nudged.max_steps), (2000, 200));
        let EstimatorSpec::Implicit(Implicit {
            solver: LinearSolver::ConjugateGradient { steps: 100 },
            ..
        }) = spec("implicit CG")
        else {
            panic!("CG with 100 iterations: {:?}", spec("implicit CG"))
        };
        let EstimatorSpec::Implicit(Implicit {
            solver: LinearSolver::Neumann { steps: 200, .. },
            ..
        }) = spec("Neumann")
        else {
            panic!("Neumann with 200 terms")
        };
        let EstimatorSpec::Unrolled(Unrolled {
            truncation: Some(200),
            ..
        }) = spec("truncated BPTT")
        else {
            panic!("truncated BPTT through 200 steps")
        };
        // The default protocol is unchanged by the paper's field, and keeps 20 solver steps.
        let default = Protocol::at(Scale::Default).unwrap();
        assert!(
            serde_json::to_value(&default)
                .unwrap()
                .get("baseline_steps")
                .is_none()
        );
        let EstimatorSpec::Implicit(Implicit {
            solver: LinearSolver::ConjugateGradient { steps: 20 },
            ..
        }) = &default.estimators()[1].1
        else {
            panic!("the default's CG keeps 20 iterations")
        };
    }
}
