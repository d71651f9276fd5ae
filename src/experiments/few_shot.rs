//! The paper's §5.3 in the Omniglot protocol on the shipped handwritten digits: 5-way 1-shot and
//! 5-shot classification; meta-training classes are digits 0, 1, 2, 6, 9 with rotations as
//! augmentation, validation classes other turns of those digits with images of their own,
//! meta-test classes the upright digits 3, 4, 5, 7, 8; the contrastive rule against MAML,
//! first-order MAML, Reptile and iMAML (docs/DIGITS.md §3). One unit per setting, method and
//! meta-training seed, after one unit per setting for the contrastive rule's `beta` search; each
//! method deploys its checkpoint with the best validation accuracy and is scored against its
//! matched baseline (the untrained initialisation adapted by the method's own inner loop) on the
//! same episodes (docs/PROTOCOL.md).

use super::chain::Chain;
use super::choice::{BetaSearchSpec, RateSearchSpec, Search, Ties, at_beta, whole_steps};
use super::training::ALPHA;
use super::units::{Job, Scale, Stored};
use super::{Settings, mean, running_mean, save, write_csv, write_table};
use crate::digits::{ClassPool, Episode, FewShotSplit, META_TEST_DIGITS, accuracy, load_digits};
use crate::error::{CmlError, Result};
use crate::estimator::{
    Contrastive, EstimatorSpec, FirstOrder, FirstOrderRule, Implicit, LinearSolver, Unrolled, Variant,
};
use crate::inner::{Divergence, GdParams, InnerSolver, Phase};
use crate::linalg::{Vector, to_tensor};
use crate::meta_training::{TaskMetaRun, TaskMetaTraining};
use crate::mlp::Mlp;
use crate::optimizer::Optimizer;
use crate::oracle::Oracle;
use crate::parallel::map_in_order;
use crate::problem::{BilevelProblem, ProblemInstance, Synapse, SynapseSpec};
use crate::report::plot::{Figure, Panel, Series, Style};
use crate::report::template::Context;
use crate::rng::stream;
use crate::stats::{self, Comparison};
use std::path::{Path, PathBuf};

pub const WAYS: usize = 5;
/// The step size of CML's and iMAML's SGD-Nesterov phases where no search sets it: the paper's.
pub const PHASE_STEP_SIZE: f64 = 0.01;
/// Query images per class, as in the Omniglot protocol.
pub const QUERIES: usize = 15;

/// The budget of the job (full or `--quick`); the full one is shipped as a config in `configs/`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Protocol {
    pub hidden: Vec<usize>,
    pub shots: Vec<usize>,
    pub meta_steps: usize,
    pub meta_batch: usize,
    pub meta_lr: f64,
    pub test_episodes: usize,
    /// The complex synapse's fixed strength (CML and iMAML).
    pub strength: f64,
    /// Its strength in the 1-shot setting where it differs (the paper's code: 0.5 at 1 shot, 0.1
    /// at 5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_shot_strength: Option<f64>,
    pub beta: f64,
    pub free_steps: usize,
    pub nudged_steps: usize,
    /// Gradient steps of MAML, first-order MAML and Reptile, and their size.
    pub maml_steps: usize,
    pub maml_step_size: f64,
    /// Independent meta-training seeds (a new initialisation, task stream and test episodes each).
    pub seeds: usize,
    /// Validation episodes each checkpoint is scored on (drawn from the validation classes).
    pub validation_episodes: usize,
    /// Meta-steps between checkpoints; the initialisation and the last meta-step are checkpoints
    /// too. Each run deploys its checkpoint with the best validation accuracy.
    pub validate_every: usize,
    /// The contrastive rule's `beta` search on the validation classes, per setting; none at the
    /// paper scale, which takes the paper's `beta`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta_search: Option<BetaSearchSpec>,
    /// The outer Adam step size's search on the validation classes, per setting and method (the
    /// contrastive rule at its searched beta); none at the paper scale, which takes the paper's.
    /// Each value is a whole meta-training from an initialisation and episode stream of the
    /// search's own, its checkpoint chosen on the search's validation episodes as a reported
    /// run's is, scored by each of those episodes' error rate there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta_lr_search: Option<RateSearchSpec>,
    /// The complex synapse's pull strength's search on the validation classes, per setting and
    /// method with a pull (CML and iMAML), after the outer step size's and at its choice; none at
    /// the paper scale, which takes the paper's strengths. Each value is a whole meta-training as
    /// in the step size's search, the least validation error wins (`grid` increasing, a choice at
    /// an edge extends it at most `extensions` times). Its matched baseline adapts at the same
    /// strength.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strength_search: Option<RateSearchSpec>,
    /// The plain SGD step size of MAML, first-order MAML and Reptile (`maml_step_size`), searched
    /// per setting and method on the validation classes after the outer step size and at its
    /// choice, as the strength is; none at the paper scale. Meta-training and meta-test (and so
    /// the matched baseline) run at the choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maml_step_size_search: Option<RateSearchSpec>,
    /// The step size of the SGD-Nesterov phases of CML and iMAML (the paper's 0.01 where not
    /// searched), searched per setting and method on the validation classes after the pull
    /// strength and at its choice, as the strength is; none at the paper scale. Meta-training and
    /// meta-test (and so the matched baseline) run at the choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_step_size_search: Option<RateSearchSpec>,
    /// Last, the contrastive rule's nudged budget (`nudged_steps` where not searched), per
    /// setting on the validation classes at every choice before it, as the strength is searched
    /// but with ties to the smaller budget: the smallest whose validation error exceeds the least
    /// by at most one standard error of the paired difference wins (a larger budget costs more).
    /// A budget an extension makes fractional is rounded to whole steps; none at the paper scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nudged_steps_search: Option<RateSearchSpec>,
}

impl Protocol {
    /// The budgets of the scale, as shipped: `configs/quick/few_shot.toml`, `configs/few_shot.toml`
    /// or the paper's `configs/paper/few_shot.toml`.
    pub fn at(scale: Scale) -> Result<Self> {
        shipped_protocol!(scale, "few_shot")
    }

    /// The protocol of `settings`' scale with the user's changes (`--protocol few-shot=FILE`).
    pub fn of(settings: &Settings) -> Result<Self> {
        crate::protocol::configured("few-shot", Self::at(settings.scale)?, settings)
    }

    /// The meta-steps at which a run is scored on validation: the initialisation, every
    /// `validate_every`-th meta-step, and the last.
    pub fn checkpoints(&self) -> Vec<usize> {
        let mut steps: Vec<usize> = (0..self.meta_steps).step_by(self.validate_every.max(1)).collect();
        steps.push(self.meta_steps);
        steps
    }

    /// The complex synapse's strength in the `shots` setting.
    pub fn strength_at(&self, shots: usize) -> f64 {
        match self.one_shot_strength {
            Some(s) if shots == 1 => s,
            _ => self.strength,
        }
    }

    pub fn net(&self) -> Result<Mlp> {
        let mut sizes = vec![64];
        sizes.extend(&self.hidden);
        sizes.push(WAYS);
        Mlp::new(sizes)
    }

    /// The synapse at `strength` (0: a plain network whose initialisation is meta-learned).
    fn synapse(&self, strength: f64) -> Result<SynapseSpec> {
        Ok(SynapseSpec {
            net: self.net()?,
            per_synapse: false,
            strength,
            fixed_strength: true,
        })
    }

    /// The contrastive phases: SGD with Nesterov momentum 0.9, step [`PHASE_STEP_SIZE`] (a fresh
    /// optimiser per phase; its search sets the step where the scale has one). Only a non-finite
    /// loss ends a phase, as in the paper's code.
    fn phase(&self, steps: usize) -> Result<GdParams> {
        Ok(GdParams {
            step_size: Some(PHASE_STEP_SIZE),
            max_steps: steps,
            optimizer: Optimizer::from_name("nesterov", 0.9)?,
            divergence: Divergence::NonFinite,
            ..GdParams::default()
        })
    }

    fn sgd(&self) -> GdParams {
        GdParams {
            step_size: Some(self.maml_step_size),
            max_steps: self.maml_steps,
            divergence: Divergence::NonFinite,
            ..GdParams::default()
        }
    }

    /// The methods compared in the `shots` setting.
    pub fn methods(&self, shots: usize) -> Result<Vec<Method>> {
        let strength = self.strength_at(shots);
        let free = self.phase(self.free_steps)?;
        let method = |name, key, strength, estimator, adaptation| Method {
            name,
            key,
            strength,
            estimator,
            adaptation,
        };
        let first_order = |rule| {
            EstimatorSpec::FirstOrder(FirstOrder {
                rule,
                free: self.sgd(),
            })
        };
        Ok(vec![
            method(
                "CML (symmetric)",
                "cml",
                strength,
                EstimatorSpec::Contrastive(Contrastive {
                    variant: Variant::Symmetric,
                    beta: self.beta,
                    free,
                    nudged: self.phase(self.nudged_steps)?,
                }),
                free,
            ),
            method(
                "iMAML (CG)",
                "imaml",
                strength,
                EstimatorSpec::Implicit(Implicit {
                    solver: LinearSolver::ConjugateGradient { steps: 10 },
                    free,
                }),
                free,
            ),
            method(
                "MAML",
                "maml",
                0.0,
                EstimatorSpec::Unrolled(Unrolled {
                    inner: self.sgd(),
                    truncation: None,
                }),
                self.sgd(),
            ),
            method(
                "first-order MAML",
                "fomaml",
                0.0,
                first_order(FirstOrderRule::FirstOrderMaml),
                self.sgd(),
            ),
            method(
                "Reptile",
                "reptile",
                0.0,
                first_order(FirstOrderRule::Reptile),
                self.sgd(),
            ),
        ])
    }
}

/// One method of the comparison.
#[derive(Debug, Clone)]
pub struct Method {
    pub name: &'static str,
    /// Its name in unit names.
    pub key: &'static str,
    /// The complex synapse's fixed strength (0: a plain network).
    pub strength: f64,
    /// How `omega` is meta-learned.
    pub estimator: EstimatorSpec,
    /// The inner loop a meta-test episode runs (the estimator's own).
    pub adaptation: GdParams,
}

/// Stream numbers of a unit's seed.
const META_TEST: u64 = 21;
const INIT: u64 = 22;
const VALIDATION: u64 = 24;
/// The words that make a `beta` search's and a step-size search's seed their own (no reported
/// seed's).
const CHOICE: u64 = 23;
const RATE_CHOICE: u64 = 25;
const STRENGTH_CHOICE: u64 = 26;
const SGD_STEP_CHOICE: u64 = 27;
const PHASE_STEP_CHOICE: u64 = 28;
const NUDGED_STEPS_CHOICE: u64 = 29;

/// Two methods' meta-test accuracies are equivalent when their difference lies within this many
/// (fractional) points, 2 percentage points (fixed before any run; docs/PROTOCOL.md).
pub const EQUIVALENCE_MARGIN: f64 = 0.02;

/// The job: one unit per setting (shots), method and meta-training seed.
pub(super) struct FewShot;
pub(super) static FEW_SHOT: FewShot = FewShot;

fn unit_name(shots: usize, key: &str, seed: u64) -> String {
    format!("{shots}shot-{key}-seed{seed}")
}

/// The `beta` search's unit of the `shots` setting, and the subject it names in the tables.
fn choice_unit(shots: usize) -> String {
    format!("choice-{shots}shot")
}
fn setting_name(shots: usize) -> String {
    format!("{shots}-shot")
}

/// The unit of the search `setting` (`meta-lr`, `strength`, ...) of a setting and method; its
/// subject in the tables is the same without the prefix.
fn search_unit(setting: &str, shots: usize, key: &str) -> String {
    format!("choice-{setting}-{}", rate_subject(shots, key))
}
fn rate_subject(shots: usize, key: &str) -> String {
    format!("{shots}shot-{key}")
}

/// The methods whose complex synapse pulls toward `omega` (a strength above 0), by key.
const PULLED: [&str; 2] = ["cml", "imaml"];

/// `method` with every inner loop at `step_size`, in meta-training and at meta-test alike: the
/// plain SGD loop of MAML, first-order MAML and Reptile, the phases of CML (free and nudged) and
/// iMAML's free phase.
fn at_inner_step(method: &Method, step_size: f64) -> Method {
    let at = |g: GdParams| GdParams {
        step_size: Some(step_size),
        ..g
    };
    let estimator = match method.estimator {
        EstimatorSpec::Unrolled(u) => EstimatorSpec::Unrolled(Unrolled {
            inner: at(u.inner),
            ..u
        }),
        EstimatorSpec::FirstOrder(f) => EstimatorSpec::FirstOrder(FirstOrder {
            free: at(f.free),
            ..f
        }),
        EstimatorSpec::Contrastive(c) => EstimatorSpec::Contrastive(Contrastive {
            free: at(c.free),
            nudged: at(c.nudged),
            ..c
        }),
        EstimatorSpec::Implicit(i) => EstimatorSpec::Implicit(Implicit {
            free: at(i.free),
            ..i
        }),
        other => unreachable!("no few-shot method is meta-learned by {other:?}"),
    };
    Method {
        estimator,
        adaptation: at(method.adaptation),
        ..method.clone()
    }
}

/// The contrastive rule's key.
const CML: &str = "cml";

/// `method` (the contrastive rule) with `steps` in each nudged phase.
fn at_nudged_steps(method: &Method, steps: usize) -> Method {
    Method {
        estimator: super::choice::at_nudged_steps(&method.estimator, steps),
        ..method.clone()
    }
}

/// The job's validation searches, in the order they run (docs/PROTOCOL.md): the contrastive rule's
/// `beta` (one unit per setting), then per setting and method the outer step size, the pull
/// strength (the methods with a pull), the plain SGD step size (the others), the phases' step size
/// (the methods with a pull) and the contrastive rule's nudged budget.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Choice {
    Beta,
    MetaLr,
    Strength,
    SgdStep,
    PhaseStep,
    NudgedSteps,
}

/// A method in one setting, with the protocol it runs, as the searches so far set them.
#[derive(Debug, Clone)]
struct Subject {
    p: Protocol,
    shots: usize,
    method: Method,
}

/// The job's chain of searches ([`super::chain`]).
struct Searches;

/// What a whole-run search of a [`Choice`] is: its grid in the protocol, its unit's prefix, the
/// setting its table names, its stream word and how it breaks ties.
struct ChoiceSpec<'a> {
    search: Option<&'a RateSearchSpec>,
    unit: &'static str,
    setting: &'static str,
    word: u64,
    ties: Ties,
}

impl Choice {
    /// The choice's search in `p` (`beta`'s is of its own kind: [`choose_beta`]).
    fn spec(self, p: &Protocol) -> ChoiceSpec<'_> {
        let (search, unit, setting, word) = match self {
            Choice::Beta => (&None, "", "beta", CHOICE),
            Choice::MetaLr => (&p.meta_lr_search, "meta-lr", "meta_lr", RATE_CHOICE),
            Choice::Strength => (&p.strength_search, "strength", "strength", STRENGTH_CHOICE),
            Choice::SgdStep => (
                &p.maml_step_size_search,
                "step-size",
                "step_size",
                SGD_STEP_CHOICE,
            ),
            Choice::PhaseStep => (
                &p.phase_step_size_search,
                "phase-step-size",
                "step_size",
                PHASE_STEP_CHOICE,
            ),
            Choice::NudgedSteps => (
                &p.nudged_steps_search,
                "nudged-steps",
                "nudged_steps",
                NUDGED_STEPS_CHOICE,
            ),
        };
        ChoiceSpec {
            search: search.as_ref(),
            unit,
            setting,
            word,
            // A larger budget costs more: the smallest within one standard error of the least.
            ties: if self == Choice::NudgedSteps {
                Ties::ToTheSmaller
            } else {
                Ties::None
            },
        }
    }
}

impl super::chain::Chain for Searches {
    type Choice = Choice;
    type Subject = Subject;

    fn choices(&self) -> &'static [Choice] {
        &[
            Choice::Beta,
            Choice::MetaLr,
            Choice::Strength,
            Choice::SgdStep,
            Choice::PhaseStep,
            Choice::NudgedSteps,
        ]
    }

    fn key(&self, choice: Choice) -> &'static str {
        match choice {
            Choice::Beta => "beta_search",
            Choice::MetaLr => "meta_lr_search",
            Choice::Strength => "strength_search",
            Choice::SgdStep => "maml_step_size_search",
            Choice::PhaseStep => "phase_step_size_search",
            Choice::NudgedSteps => "nudged_steps_search",
        }
    }

    fn unit(&self, choice: Choice, s: &Subject) -> Option<String> {
        let pulled = PULLED.contains(&s.method.key);
        let takes = match choice {
            Choice::Beta => {
                let contrastive = matches!(s.method.estimator, EstimatorSpec::Contrastive(_));
                return (contrastive && s.p.beta_search.is_some()).then(|| choice_unit(s.shots));
            }
            Choice::MetaLr => true,
            Choice::Strength | Choice::PhaseStep => pulled,
            Choice::SgdStep => !pulled,
            Choice::NudgedSteps => s.method.key == CML,
        };
        let spec = choice.spec(&s.p);
        (takes && spec.search.is_some()).then(|| search_unit(spec.unit, s.shots, s.method.key))
    }

    fn search(&self, settings: &Settings, choice: Choice, s: &Subject) -> Result<Option<Search>> {
        let spec = choice.spec(&s.p);
        match (choice, spec.search) {
            (Choice::Beta, _) => choose_beta(settings, &s.p, s.shots),
            (_, None) => Ok(None),
            (_, Some(search)) => {
                // Each value is a whole run of the subject at that value.
                let at = |value: f64| {
                    let at = self.apply(choice, s.clone(), value);
                    (at.p, at.method)
                };
                let word = (spec.word, spec.setting, spec.ties);
                whole_run_search(settings, &s.p, s.shots, word, search, s.method.key, at).map(Some)
            }
        }
    }

    fn apply(&self, choice: Choice, s: Subject, value: f64) -> Subject {
        let Subject { p, shots, method } = s;
        let method = match choice {
            Choice::Beta => Method {
                estimator: at_beta(&method.estimator, value),
                ..method
            },
            Choice::MetaLr => {
                let p = Protocol { meta_lr: value, ..p };
                return Subject { p, shots, method };
            }
            Choice::Strength => Method {
                strength: value,
                ..method
            },
            Choice::SgdStep | Choice::PhaseStep => at_inner_step(&method, value),
            Choice::NudgedSteps => at_nudged_steps(&method, whole_steps(value)),
        };
        Subject { p, shots, method }
    }
}

/// Every method of every setting, unsearched.
fn subjects(settings: &Settings) -> Result<Vec<Subject>> {
    let p = Protocol::of(settings)?;
    let mut out = Vec::new();
    for &shots in &p.shots {
        for method in p.methods(shots)? {
            out.push(Subject {
                p: p.clone(),
                shots,
                method,
            });
        }
    }
    Ok(out)
}

/// Every unit of the job, in order: shots, method, seed.
fn runs(settings: &Settings) -> Result<Vec<(usize, Method, u64)>> {
    let p = Protocol::of(settings)?;
    let mut out = Vec::new();
    for &shots in &p.shots {
        for method in p.methods(shots)? {
            for seed in (0..p.seeds as u64).map(|s| settings.seed + s) {
                out.push((shots, method.clone(), seed));
            }
        }
    }
    Ok(out)
}

/// What one meta-training run leaves for the report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SeedRun {
    /// The contrastive rule's `beta`, the outer step size and the pull strength, as their
    /// searches chose them (units stored before the strength was searched have none).
    beta: Option<f64>,
    meta_lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strength: Option<f64>,
    /// The plain SGD step size (MAML, first-order MAML, Reptile), as its search chose it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sgd_step: Option<f64>,
    /// The phases' step size (CML, iMAML), as its search chose it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    phase_step: Option<f64>,
    /// The contrastive rule's nudged steps, as its search chose them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nudged_steps: Option<usize>,
    /// Mean validation accuracy at each checkpoint `(meta-step, accuracy)`, and the meta-step
    /// deployed: the best, ties to the later.
    checkpoints: Vec<(usize, f64)>,
    chosen_step: usize,
    /// Accuracy on each meta-test episode of the deployed checkpoint, and of the matched baseline
    /// (the untrained initialisation adapted by the same inner loop) on the same episodes.
    accuracy: Vec<f64>,
    baseline: Vec<f64>,
    /// Episodes whose adaptation reached a non-finite loss (scored unadapted).
    diverged: usize,
    baseline_diverged: usize,
    /// (meta-step, meta-batch query cross-entropy) of meta-training.
    curve: Vec<(usize, f64)>,
    /// Why meta-training stopped before its last meta-step, if it did.
    stopped: Option<String>,
    /// Wall seconds of meta-training (not reproducible; the table only).
    seconds: f64,
}

impl Job<super::Section> for FewShot {
    fn name(&self) -> &'static str {
        "few-shot"
    }

    fn about(&self) -> &'static str {
        "5-way 1- and 5-shot digits in the Omniglot protocol, matched baselines, 5 seeds"
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
        // The searches first, in the order they run, so that the runs find them stored.
        Ok(super::chain::search_units(&Searches, &subjects(settings)?)
            .into_iter()
            .map(|(_, _, unit)| unit)
            .chain(
                runs(settings)?
                    .iter()
                    .map(|(shots, m, seed)| unit_name(*shots, m.key, *seed)),
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
        let (shots, method, seed) =
            super::units::lookup(self, settings, unit, runs(settings)?, |(shots, m, seed)| {
                unit_name(*shots, m.key, *seed)
            })?;
        let subject = Subject {
            p: Protocol::of(settings)?,
            shots,
            method,
        };
        let choices = Searches.choices().len();
        let (s, chosen) = super::chain::settle(&Searches, self, settings, staging, choices, subject)?;
        super::units::encode(&run_seed(
            &s.p,
            shots,
            &s.method,
            seed,
            Chosen::of(&s.method, &chosen),
        )?)
    }

    fn reads(&self, unit: &str) -> super::units::Reads {
        // Of the searches' keys, a unit reads those of the searches it (or its search) runs after.
        let settings = Settings::at(Scale::Default);
        let (Ok(subjects), Ok(runs)) = (subjects(&settings), runs(&settings)) else {
            return Default::default();
        };
        let run = runs
            .iter()
            .find(|(shots, m, seed)| unit_name(*shots, m.key, *seed) == unit)
            .and_then(|(shots, m, _)| {
                subjects
                    .iter()
                    .find(|s| s.shots == *shots && s.method.key == m.key)
            });
        super::chain::reads(&Searches, unit, &subjects, run)
    }

    fn report(&self, settings: &Settings, units: &[Stored], files: &mut Vec<PathBuf>) -> Result<Context> {
        Ok(super::writeup::few_shot_section(&report(settings, units, files)?))
    }

    /// At the paper scale: one short timed run of each setting and method (2 meta-steps, 4
    /// meta-test episodes), scaled to the unit's meta-steps and episodes; the seeds of a kind cost
    /// the same. The other scales' cost comes from their measured runs (`--results`).
    fn calibrate(&self, settings: &Settings, units: &[String]) -> Result<Option<Vec<f64>>> {
        if settings.scale != Scale::Paper {
            return Ok(None);
        }
        let p = Protocol::of(settings)?;
        let short = Protocol {
            meta_steps: 2,
            test_episodes: 4,
            validation_episodes: 4,
            ..p.clone()
        };
        // Episode adaptations of a unit: its test episodes, twice (method and baseline), and its
        // validation episodes at each checkpoint.
        let adaptations =
            |p: &Protocol| (2 * p.test_episodes + p.checkpoints().len() * p.validation_episodes) as f64;
        let mut per_kind: Vec<((usize, &str), f64)> = Vec::new();
        let mut out = Vec::new();
        for unit in units {
            let (shots, method, _) =
                super::units::lookup(self, settings, unit, runs(settings)?, |(shots, m, seed)| {
                    unit_name(*shots, m.key, *seed)
                })?;
            let seconds = match per_kind.iter().find(|(k, _)| *k == (shots, method.key)) {
                Some((_, s)) => *s,
                None => {
                    let clock = std::time::Instant::now();
                    let run = run_seed(&short, shots, &method, settings.seed, Chosen::default())?;
                    let testing = clock.elapsed().as_secs_f64() - run.seconds;
                    let s = run.seconds / short.meta_steps as f64 * p.meta_steps as f64
                        + testing / adaptations(&short) * adaptations(&p);
                    per_kind.push(((shots, method.key), s));
                    s
                }
            };
            out.push(seconds);
        }
        Ok(Some(out))
    }
}

/// The whole-run searches of the protocol, which may score on several search streams.
const POOLED: [&str; 5] = [
    "meta_lr_search",
    "strength_search",
    "maml_step_size_search",
    "phase_step_size_search",
    "nudged_steps_search",
];

impl crate::protocol::Checked for Protocol {
    fn left_out_at_default() -> Vec<(String, serde_json::Value)> {
        super::choice::streams_left_out(&POOLED)
    }

    fn check(&self) -> Result<()> {
        let mut c = crate::protocol::Checks::new("few-shot");
        c.that(
            !self.hidden.is_empty() && !self.hidden.contains(&0),
            "hidden",
            format!("{:?}", self.hidden),
            "at least one hidden layer, each at least 1 unit",
        )
        .that(
            !self.shots.is_empty() && !self.shots.contains(&0),
            "shots",
            format!("{:?}", self.shots),
            "at least one setting, each at least 1 shot",
        )
        .count("meta_steps", self.meta_steps)
        .count("meta_batch", self.meta_batch)
        .positive("meta_lr", self.meta_lr)
        .count("test_episodes", self.test_episodes)
        .positive("strength", self.strength)
        .positive("one_shot_strength", self.one_shot_strength.unwrap_or(1.0))
        .positive("beta", self.beta)
        .count("free_steps", self.free_steps)
        .count("nudged_steps", self.nudged_steps)
        .count("maml_steps", self.maml_steps)
        .positive("maml_step_size", self.maml_step_size)
        .seeds("seeds", self.seeds)
        .count("validation_episodes", self.validation_episodes)
        .count("validate_every", self.validate_every);
        c.beta_search("beta_search", self.beta_search.as_ref())
            .pooled_search("meta_lr_search", self.meta_lr_search.as_ref())
            .pooled_search("strength_search", self.strength_search.as_ref())
            .pooled_search("maml_step_size_search", self.maml_step_size_search.as_ref())
            .pooled_search("phase_step_size_search", self.phase_step_size_search.as_ref())
            .pooled_search("nudged_steps_search", self.nudged_steps_search.as_ref());
        if let Some(n) = &self.nudged_steps_search {
            c.that(
                n.grid.iter().all(|v| v.fract() == 0.0),
                "nudged_steps_search.grid",
                format!("{:?}", n.grid),
                "whole numbers of steps",
            );
        }
        c.done()
    }
}

/// `n` episodes of the `shots` setting from `pool`, drawn by `rng`.
fn episodes(pool: &ClassPool, n: usize, shots: usize, mut rng: crate::rng::Rng) -> Result<Vec<Episode>> {
    (0..n)
        .map(|_| pool.episode(&mut rng, WAYS, shots, QUERIES))
        .collect()
}

/// Meta-trains `method` from `theta0` on episodes of the meta-training classes drawn from `seed`'s
/// task stream; `observe` sees each meta-step's meta-parameters.
fn meta_train(
    p: &Protocol,
    split: &FewShotSplit,
    shots: usize,
    method: &Method,
    seed: u64,
    theta0: Vector,
    observe: Option<&crate::meta_training::MetaObserver>,
) -> Result<TaskMetaRun> {
    let spec = p.synapse(method.strength)?;
    let build = |e: &Episode, theta: &Vector| -> Result<Box<dyn ProblemInstance>> {
        Ok(Box::new(Synapse::new(spec.clone(), e.clone(), theta)?))
    };
    TaskMetaTraining {
        estimator: &method.estimator,
        meta_steps: p.meta_steps,
        meta_batch: p.meta_batch,
        meta_lr: p.meta_lr,
        seed,
        sample: &|rng| split.meta_train.episode(rng, WAYS, shots, QUERIES),
        problem: &build,
        observe,
    }
    .run(theta0)
}

/// Each episode's query accuracy after `method`'s own inner loop from `theta`, and how many
/// adaptations reached a non-finite loss: only that ends an adaptation (the phases' rule), and
/// such an episode is scored at the parameters it started from.
fn score(p: &Protocol, method: &Method, episodes: &[Episode], theta: &Vector) -> Result<(Vec<f64>, usize)> {
    let spec = p.synapse(method.strength)?;
    let scored = map_in_order(episodes, |e| {
        let problem = Synapse::new(spec.clone(), e.clone(), theta)?;
        let theta = to_tensor(theta)?;
        let start = problem.initial_phi(&theta)?;
        let (phi, diverged) = match method.adaptation.solve(
            &Oracle::new(&problem),
            &Phase::new(&start, &theta, 0.0, "adaptation"),
        ) {
            Ok(s) => (s.phi, false),
            Err(CmlError::Diverged { .. }) => (start, true),
            Err(e) => return Err(e),
        };
        let x =
            candle_core::Tensor::from_vec(e.query.x.clone(), (e.query.len(), 64), &candle_core::Device::Cpu)?;
        Ok((accuracy(&problem.predict(&phi, &x)?, &e.query.labels)?, diverged))
    })?;
    Ok((
        scored.iter().map(|s| s.0).collect(),
        scored.iter().filter(|s| s.1).count(),
    ))
}

/// Chooses the contrastive rule's `beta` in the `shots` setting on the validation classes
/// ([`super::choice::search_beta`]): from an initialisation and task stream of the search's own
/// (no reported seed's), a short meta-training at each setting, then each validation episode's
/// error rate after the rule's free phase. `None` where the protocol has no search.
fn choose_beta(settings: &Settings, p: &Protocol, shots: usize) -> Result<Option<Search>> {
    let Some(search) = &p.beta_search else {
        return Ok(None);
    };
    let seed = crate::rng::hash_words(&[settings.seed, CHOICE, shots as u64]);
    let split = FewShotSplit::new(&load_digits()?)?;
    let rule = p
        .methods(shots)?
        .into_iter()
        .find(|m| matches!(m.estimator, EstimatorSpec::Contrastive(_)))
        .expect("the contrastive rule among the methods");
    let validation = episodes(
        &split.validation,
        search.validation_tasks,
        shots,
        stream(seed, VALIDATION),
    )?;
    let short = Protocol {
        meta_steps: search.meta_steps,
        ..p.clone()
    };
    let theta0 = p.net()?.init(&mut stream(seed, INIT));
    let score_at = |beta: f64| -> Result<(Vec<f64>, Option<String>)> {
        let method = Method {
            estimator: at_beta(&rule.estimator, beta),
            ..rule.clone()
        };
        let run = meta_train(&short, &split, shots, &method, seed, theta0.clone(), None)?;
        if let Some(why) = run.stopped {
            // A setting whose meta-training fails (a phase diverged) is the worst of the grid.
            return Ok((vec![f64::INFINITY; validation.len()], Some(why)));
        }
        let (accuracy, _) = score(p, &method, &validation, &run.theta)?;
        Ok((accuracy.iter().map(|a| 1.0 - a).collect(), None))
    };
    super::choice::search_beta(&setting_name(shots), &search.grid, search.extensions, score_at).map(Some)
}

/// A meta-training run and its checkpoints scored on validation episodes.
struct Checkpointed {
    run: TaskMetaRun,
    /// Mean validation accuracy at each checkpoint `(meta-step, accuracy)`.
    checkpoints: Vec<(usize, f64)>,
    /// The checkpoint deployed (the best validation accuracy, ties to the later): its meta-step,
    /// its `omega`, and each validation episode's accuracy there.
    chosen_step: usize,
    theta: Vector,
    validation: Vec<f64>,
}

/// Meta-trains `method` from `theta0` with the episodes of `seed`, and scores its checkpoints
/// (`p.checkpoints()`, the initialisation among them) on `validation`. A run that stops early
/// keeps the checkpoints it reached.
fn train_checkpointed(
    p: &Protocol,
    split: &FewShotSplit,
    shots: usize,
    method: &Method,
    seed: u64,
    theta0: &Vector,
    validation: &[Episode],
) -> Result<Checkpointed> {
    let wanted = p.checkpoints();
    let kept = std::sync::Mutex::new(vec![(0, theta0.clone())]);
    let keep = |step: usize, theta: &Vector| -> Result<()> {
        if wanted.contains(&step) {
            kept.lock()
                .expect("no panic while kept")
                .push((step, theta.clone()));
        }
        Ok(())
    };
    let run = meta_train(p, split, shots, method, seed, theta0.clone(), Some(&keep))?;
    let mut kept = kept.into_inner().expect("no panic while kept");
    let mut checkpoints = Vec::new();
    let mut accuracies = Vec::new();
    for (step, theta) in &kept {
        let (accuracy, _) = score(p, method, validation, theta)?;
        checkpoints.push((*step, mean(&accuracy)));
        accuracies.push(accuracy);
    }
    // The best validation accuracy, ties to the later checkpoint.
    let best = (0..checkpoints.len())
        .max_by(|&a, &b| checkpoints[a].1.total_cmp(&checkpoints[b].1).then(a.cmp(&b)))
        .expect("the initialisation is a checkpoint");
    let (chosen_step, theta) = kept.swap_remove(best);
    Ok(Checkpointed {
        run,
        checkpoints,
        chosen_step,
        theta,
        validation: accuracies.swap_remove(best),
    })
}

/// A search of one setting (`search`, named `word.1`) of the run of method `key` in the `shots`
/// setting: on each search stream (an initialisation and episode stream of the search's own,
/// seeded by `word.0`, no reported seed's; their episodes pooled), a whole meta-training at each
/// value as `at(value)` gives it (the protocol and method it runs), its checkpoint chosen on
/// `p.validation_episodes` validation episodes of that stream as a reported run's is, scored by
/// each episode's error rate there; the choice follows `word.2` (the least mean, or for a budget the smallest within one standard
/// error of it), a choice at an edge extends the grid.
fn whole_run_search(
    settings: &Settings,
    p: &Protocol,
    shots: usize,
    word: (u64, &str, Ties),
    search: &RateSearchSpec,
    key: &str,
    at: impl Fn(f64) -> (Protocol, Method),
) -> Result<Search> {
    let split = FewShotSplit::new(&load_digits()?)?;
    // Each search stream: its seed, validation episodes and initialisation.
    let streams = search
        .stream_seeds(&[settings.seed, word.0, shots as u64])
        .into_iter()
        .map(|seed| {
            let validation = episodes(
                &split.validation,
                p.validation_episodes,
                shots,
                stream(seed, VALIDATION),
            )?;
            Ok((seed, validation, p.net()?.init(&mut stream(seed, INIT))))
        })
        .collect::<Result<Vec<_>>>()?;
    let score_at = |value: f64| -> Result<(Vec<f64>, Option<String>)> {
        let (p, method) = at(value);
        super::choice::pooled(&streams, p.validation_episodes, |(seed, validation, theta0)| {
            let run = train_checkpointed(&p, &split, shots, &method, *seed, theta0, validation)?;
            Ok((run.validation.iter().map(|a| 1.0 - a).collect(), None))
        })
    };
    super::choice::search(
        &rate_subject(shots, key),
        word.1,
        word.2,
        &search.grid,
        search.extensions,
        score_at,
    )
}

/// The values a run's searches chose (`None` where it has no such search).
#[derive(Debug, Clone, Copy, Default)]
struct Chosen {
    beta: Option<f64>,
    meta_lr: Option<f64>,
    strength: Option<f64>,
    sgd_step: Option<f64>,
    phase_step: Option<f64>,
    nudged_steps: Option<usize>,
}

impl Chosen {
    /// What the [`Searches`] chose for a run of `method` (as they set it), by choice; the
    /// contrastive rule's `beta` is the one it runs, searched or (at the paper scale) the
    /// protocol's.
    fn of(method: &Method, chosen: &[Option<f64>]) -> Chosen {
        let at = |choice: Choice| {
            chosen[Searches
                .choices()
                .iter()
                .position(|s| *s == choice)
                .expect("a choice")]
        };
        Chosen {
            beta: match method.estimator {
                EstimatorSpec::Contrastive(c) => Some(c.beta),
                _ => None,
            },
            meta_lr: at(Choice::MetaLr),
            strength: at(Choice::Strength),
            sgd_step: at(Choice::SgdStep),
            phase_step: at(Choice::PhaseStep),
            nudged_steps: at(Choice::NudgedSteps).map(whole_steps),
        }
    }
}

/// Meta-trains `method` (as its searches set it: `chosen` records their `beta`, outer step size,
/// which `p` carries, pull strength and plain SGD step size, which `method` carries) from `seed`, scores its
/// checkpoints on the seed's validation episodes, and scores the best checkpoint, and the matched
/// baseline, on the seed's meta-test episodes.
fn run_seed(p: &Protocol, shots: usize, method: &Method, seed: u64, chosen: Chosen) -> Result<SeedRun> {
    let Chosen {
        beta,
        meta_lr,
        strength,
        sgd_step,
        phase_step,
        nudged_steps,
    } = chosen;
    let split = FewShotSplit::new(&load_digits()?)?;
    let theta0 = p.net()?.init(&mut stream(seed, INIT));
    let test = episodes(
        &split.meta_test,
        p.test_episodes,
        shots,
        stream(seed, META_TEST + 100 * shots as u64),
    )?;
    let validation = episodes(
        &split.validation,
        p.validation_episodes,
        shots,
        stream(seed, VALIDATION + 100 * shots as u64),
    )?;
    let run = train_checkpointed(p, &split, shots, method, seed, &theta0, &validation)?;
    let (accuracy, diverged) = score(p, method, &test, &run.theta)?;
    let (baseline, baseline_diverged) = score(p, method, &test, &theta0)?;
    Ok(SeedRun {
        beta,
        meta_lr,
        strength,
        sgd_step,
        phase_step,
        nudged_steps,
        checkpoints: run.checkpoints,
        chosen_step: run.chosen_step,
        accuracy,
        baseline,
        diverged,
        baseline_diverged,
        curve: run.run.log.iter().map(|s| (s.step, s.query_loss)).collect(),
        stopped: run.run.stopped,
        seconds: run.run.log.last().map_or(0.0, |s| s.seconds),
    })
}

/// One method in one setting, over its meta-training seeds.
#[derive(Debug, Clone)]
pub struct MethodResult {
    pub method: &'static str,
    pub shots: usize,
    /// Per seed: mean meta-test accuracy after meta-training, and of the matched baseline.
    pub per_seed: Vec<f64>,
    pub baseline_per_seed: Vec<f64>,
    /// Mean over seeds and the half-width of its 95% t-interval.
    pub mean: f64,
    pub ci95: f64,
    pub baseline_mean: f64,
    /// Gain over the matched baseline, paired over seeds, its 95% half-width and its p-value
    /// Holm-adjusted over every method and setting.
    pub gain: f64,
    pub gain_ci95: f64,
    pub gain_holm: f64,
    /// Meta-test episodes (over all seeds) whose adaptation reached a non-finite loss.
    pub diverged: usize,
    pub baseline_diverged: usize,
    /// Mean wall seconds of meta-training (not reproducible).
    pub seconds: f64,
    /// Per seed: the meta-step deployed (the checkpoint with the best validation accuracy).
    pub chosen_steps: Vec<usize>,
    /// The inner work of one meta-training episode ([`EstimatorSpec::inner_work`]).
    pub budget: String,
}

/// The contrastive rule against one reference in one setting, paired over seeds.
#[derive(Debug, Clone)]
pub struct FewShotComparison {
    pub shots: usize,
    pub reference: &'static str,
    pub comparison: Comparison,
}

#[derive(Debug, Clone)]
pub struct FewShotResults {
    pub protocol: Protocol,
    pub rows: Vec<MethodResult>,
    pub comparisons: Vec<FewShotComparison>,
    /// Meta-training runs that stopped early, and why.
    pub stopped: Vec<String>,
    /// The contrastive rule's `beta` searches, one per setting (none at the paper scale).
    pub searches: Vec<Search>,
    /// The outer step size's searches, one per setting and method (none at the paper scale).
    pub rate_searches: Vec<Search>,
    /// The pull strength's searches, one per setting and method with a pull (none at the paper
    /// scale).
    pub strength_searches: Vec<Search>,
    /// The plain SGD step size's searches, one per setting and method without a pull (none at the
    /// paper scale).
    pub sgd_step_searches: Vec<Search>,
    /// The phase step size's searches, one per setting and method with phases (none at the paper
    /// scale).
    pub phase_step_searches: Vec<Search>,
    /// The contrastive rule's nudged budget's searches, one per setting (none at the paper scale).
    pub nudged_steps_searches: Vec<Search>,
    /// The `(digit, quarter turns)` classes of meta-training and of validation.
    pub meta_train_classes: Vec<(usize, usize)>,
    pub validation_classes: Vec<(usize, usize)>,
}

fn report(settings: &Settings, units: &[Stored], files: &mut Vec<PathBuf>) -> Result<FewShotResults> {
    let protocol = Protocol::of(settings)?;
    let mut rows = Vec::new();
    let mut gain_p = Vec::new();
    let mut stopped = Vec::new();
    let mut seed_rows = Vec::new();
    let mut curve_rows = Vec::new();
    let mut panels = Vec::new();
    let mut checkpoint_rows = Vec::new();
    let split = FewShotSplit::new(&load_digits()?)?;
    let subjects = subjects(settings)?;
    for &shots in &protocol.shots {
        let mut panel = Panel::new(
            format!("{WAYS}-way {shots}-shot digits: meta-training"),
            "meta-step",
            "query cross-entropy (mean over seeds)",
            false,
            false,
        );
        for (i, method) in protocol.methods(shots)?.iter().enumerate() {
            let mut result = MethodResult {
                method: method.name,
                shots,
                per_seed: Vec::new(),
                baseline_per_seed: Vec::new(),
                mean: f64::NAN,
                ci95: f64::NAN,
                baseline_mean: f64::NAN,
                gain: f64::NAN,
                gain_ci95: f64::NAN,
                gain_holm: f64::NAN,
                diverged: 0,
                baseline_diverged: 0,
                seconds: 0.0,
                chosen_steps: Vec::new(),
                budget: method.estimator.inner_work(),
            };
            let mut curves: Vec<Vec<(usize, f64)>> = Vec::new();
            for seed in (0..protocol.seeds as u64).map(|s| settings.seed + s) {
                let name = unit_name(shots, method.key, seed);
                let Some(stored) = units.iter().find(|u| u.unit == name) else {
                    continue;
                };
                let run: SeedRun = super::units::decode(stored)?;
                // Each value the run took is its search's choice.
                let taken = [
                    run.beta,
                    run.meta_lr,
                    run.strength,
                    run.sgd_step,
                    run.phase_step,
                    run.nudged_steps.map(|n| n as f64),
                ];
                let subject = Subject {
                    p: protocol.clone(),
                    shots,
                    method: method.clone(),
                };
                super::chain::check_taken(
                    &Searches,
                    units,
                    &subject,
                    &taken,
                    &format!("few-shot unit {name}"),
                )?;
                if let Some(n) = run.nudged_steps {
                    result.budget = at_nudged_steps(method, n).estimator.inner_work();
                }
                let (acc, base) = (mean(&run.accuracy), mean(&run.baseline));
                for (step, validation) in &run.checkpoints {
                    checkpoint_rows.push(format!(
                        "{},{shots},{seed},{step},{validation},{}",
                        method.key,
                        *step == run.chosen_step
                    ));
                }
                seed_rows.push(format!(
                    "{},{shots},{seed},{},{},{acc},{base},{},{},{}",
                    method.key,
                    run.beta.map_or(String::new(), |b| b.to_string()),
                    run.chosen_step,
                    run.diverged,
                    run.baseline_diverged,
                    run.stopped
                        .as_deref()
                        .map_or("", |s| s.split(':').next().unwrap_or(""))
                ));
                for (step, loss) in &run.curve {
                    curve_rows.push(format!("{},{shots},{seed},{step},{loss:e}", method.key));
                }
                if let Some(reason) = &run.stopped {
                    stopped.push(format!(
                        "{} ({shots}-shot, seed {seed}) stopped at {reason}",
                        method.name
                    ));
                }
                result.per_seed.push(acc);
                result.baseline_per_seed.push(base);
                result.diverged += run.diverged;
                result.baseline_diverged += run.baseline_diverged;
                result.seconds += run.seconds;
                result.chosen_steps.push(run.chosen_step);
                curves.push(run.curve);
            }
            if result.per_seed.is_empty() {
                continue;
            }
            result.seconds /= result.per_seed.len() as f64;
            (result.mean, result.ci95) = stats::mean_interval(&result.per_seed, 0.95);
            result.baseline_mean = mean(&result.baseline_per_seed);
            let gains: Vec<f64> = result
                .per_seed
                .iter()
                .zip(&result.baseline_per_seed)
                .map(|(a, b)| a - b)
                .collect();
            (result.gain, result.gain_ci95) = stats::mean_interval(&gains, 0.95);
            gain_p.push(stats::paired_test(&gains).p_value);
            // The mean over seeds of each seed's running mean, over the steps every seed reached.
            let steps = curves.iter().map(Vec::len).min().unwrap_or(0);
            let smoothed: Vec<Vec<(f64, f64)>> = curves
                .iter()
                .map(|c| running_mean(&c[..steps].iter().map(|p| p.1).collect::<Vec<_>>()))
                .collect();
            let line: Vec<(f64, f64)> = (0..steps)
                .map(|k| {
                    (
                        smoothed[0][k].0,
                        mean(&smoothed.iter().map(|s| s[k].1).collect::<Vec<_>>()),
                    )
                })
                .collect();
            panel.series.push(Series::new(method.name, line, i, Style::Line));
            rows.push(result);
        }
        panels.push(panel);
    }
    for (r, p) in rows.iter_mut().zip(stats::holm(&gain_p)) {
        r.gain_holm = p;
    }
    // The rule against each reference, per setting, paired over seeds: one family.
    let mut comparisons = Vec::new();
    let mut diffs = Vec::new();
    for &shots in &protocol.shots {
        let of = |m: &str| rows.iter().find(|r| r.shots == shots && r.method == m);
        let Some(rule) = of("CML (symmetric)") else {
            continue;
        };
        for other in rows
            .iter()
            .filter(|r| r.shots == shots && r.method != rule.method)
        {
            diffs.push(
                rule.per_seed
                    .iter()
                    .zip(&other.per_seed)
                    .map(|(a, b)| a - b)
                    .collect::<Vec<f64>>(),
            );
            comparisons.push((shots, other.method));
        }
    }
    let family = stats::compare_family(&diffs, &vec![EQUIVALENCE_MARGIN; diffs.len()], ALPHA);
    let comparisons: Vec<FewShotComparison> = comparisons
        .into_iter()
        .zip(family)
        .map(|((shots, reference), comparison)| FewShotComparison {
            shots,
            reference,
            comparison,
        })
        .collect();
    write_csv(
        &settings.out.join("few_shot_meta_training.csv"),
        "method,shots,seed,meta_step,query_cross_entropy",
        &curve_rows,
        files,
    )?;
    write_csv(
        &settings.out.join("few_shot_per_seed.csv"),
        "method,shots,seed,beta,chosen_step,accuracy,matched_baseline_accuracy,diverged_episodes,baseline_diverged_episodes,stopped_at",
        &seed_rows,
        files,
    )?;
    write_csv(
        &settings.out.join("few_shot_checkpoints.csv"),
        "method,shots,seed,meta_step,validation_accuracy,chosen",
        &checkpoint_rows,
        files,
    )?;
    // The searches, where their units were given, written after the runs' checks.
    let [
        searches,
        rate_searches,
        strength_searches,
        sgd_step_searches,
        phase_step_searches,
        nudged_steps_searches,
    ] = super::chain::write_stored(
        &Searches,
        units,
        &subjects,
        &settings.out,
        [
            ("few_shot_beta_choice.csv", "setting", &[Choice::Beta]),
            ("few_shot_meta_lr_choice.csv", "run", &[Choice::MetaLr]),
            ("few_shot_strength_choice.csv", "run", &[Choice::Strength]),
            ("few_shot_step_size_choice.csv", "run", &[Choice::SgdStep]),
            ("few_shot_phase_step_size_choice.csv", "run", &[Choice::PhaseStep]),
            ("few_shot_nudged_steps_choice.csv", "run", &[Choice::NudgedSteps]),
        ],
        files,
    )?;
    let acc_rows: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{},{},{:e},{:e},{:e},{:e},{:e},{:e}",
                r.method, r.shots, r.mean, r.ci95, r.baseline_mean, r.gain, r.gain_ci95, r.gain_holm
            )
        })
        .collect();
    write_csv(
        &settings.out.join("few_shot_accuracy.csv"),
        "method,shots,mean_accuracy,ci95,matched_baseline,gain,gain_ci95,gain_holm_p",
        &acc_rows,
        files,
    )?;
    let columns = panels.len();
    save(settings, "few_shot", &Figure { panels, columns }, files)?;
    let results = FewShotResults {
        protocol,
        rows,
        comparisons,
        stopped,
        searches,
        rate_searches,
        strength_searches,
        sgd_step_searches,
        phase_step_searches,
        nudged_steps_searches,
        meta_train_classes: split.meta_train.classes,
        validation_classes: split.validation.classes,
    };
    write_table(settings, "few_shot.md", &table(&results)?, files)?;
    Ok(results)
}

fn points(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

/// The few-shot tables: each method against its matched baseline, then the rule against each
/// reference.
pub fn table(r: &FewShotResults) -> Result<String> {
    let p = &r.protocol;
    let joined = |values: Vec<String>| values.join(", ");
    let rows = r
        .rows
        .iter()
        .map(|m| {
            Context::new()
                .text("method", m.method)
                .text("shots", m.shots)
                .text("mean", points(m.mean))
                .text("ci95", points(m.ci95))
                .text("baseline", points(m.baseline_mean))
                .text("gain", points(m.gain))
                .text("gain_ci95", points(m.gain_ci95))
                .text("p", super::training::p_value(m.gain_holm))
                .text(
                    "per_seed",
                    joined(m.per_seed.iter().map(|a| points(*a)).collect()),
                )
                .text(
                    "deployed",
                    joined(m.chosen_steps.iter().map(usize::to_string).collect()),
                )
                .text("diverged", m.diverged)
                .text("baseline_diverged", m.baseline_diverged)
                .text("episodes", p.meta_steps * p.meta_batch)
                .text("budget", &m.budget)
                .text("seconds", format!("{:.0}", m.seconds))
        })
        .collect();
    let comparisons = r
        .comparisons
        .iter()
        .map(|c| {
            super::comparison_context(&c.comparison, points)
                .text("shots", c.shots)
                .text("reference", c.reference)
        })
        .collect();
    // A search's section where the scale has the search and its units were given.
    let searched = |spec: Option<&RateSearchSpec>, searches: &[Search], times: fn(usize) -> String| {
        spec.filter(|_| !searches.is_empty()).map(|s| {
            Context::new()
                .text("extensions", times(s.extensions))
                .text("table", super::searches::table(searches, "run"))
        })
    };
    let count = |n: usize| n.to_string();
    let words = super::searches::times;
    let context = Context::new()
        .text("meta_train_classes", classes(&r.meta_train_classes))
        .text("validation_classes", classes(&r.validation_classes))
        .text("meta_test_digits", format!("{META_TEST_DIGITS:?}"))
        .text("ways", WAYS)
        .text("queries", QUERIES)
        .text("net", p.net().map(|n| n.to_string()).unwrap_or_default())
        .text("meta_steps", p.meta_steps)
        .text("meta_batch", p.meta_batch)
        .text(
            "meta_lr",
            match p.meta_lr_search {
                Some(_) => "step size searched per setting and method, below".to_string(),
                None => format!("lr {}", p.meta_lr),
            },
        )
        .text(
            "seeds",
            r.rows.iter().map(|m| m.per_seed.len()).max().unwrap_or(0),
        )
        .text("test_episodes", p.test_episodes)
        .text("checkpoints", format!("{:?}", p.checkpoints()))
        .text("validation_episodes", p.validation_episodes)
        .text("row_count", r.rows.len())
        .list("rows", rows)
        .text("comparison_count", r.comparisons.len())
        .text("margin", points(EQUIVALENCE_MARGIN))
        .text("alpha", ALPHA)
        .list("comparisons", comparisons)
        .section(
            "stopped",
            (!r.stopped.is_empty()).then(|| Context::new().text("which", r.stopped.join("; "))),
        )
        .text("beta", p.beta)
        .section(
            "beta_search",
            super::searches::beta_search_context(p.beta_search.as_ref(), &r.searches, "setting"),
        )
        .section("pooled", super::searches::pooled_context(p, &POOLED))
        .text("protocol_meta_lr", p.meta_lr)
        .section(
            "meta_lr_search",
            searched(p.meta_lr_search.as_ref(), &r.rate_searches, count),
        )
        .text("strength", p.strength)
        .text("one_shot_strength", p.strength_at(1))
        .section(
            "strength_search",
            searched(p.strength_search.as_ref(), &r.strength_searches, count),
        )
        .text("maml_steps", p.maml_steps)
        .text("maml_step_size", p.maml_step_size)
        .section(
            "sgd_step_search",
            searched(p.maml_step_size_search.as_ref(), &r.sgd_step_searches, count),
        )
        .text("phase_step_size", PHASE_STEP_SIZE)
        .section(
            "phase_step_search",
            searched(p.phase_step_size_search.as_ref(), &r.phase_step_searches, words),
        )
        .text("nudged_steps", p.nudged_steps)
        .section(
            "nudged_steps_search",
            searched(p.nudged_steps_search.as_ref(), &r.nudged_steps_searches, words),
        );
    super::render_table(include_str!("tables/few_shot.md"), "few_shot.md", &context)
}

/// `(digit, quarter turns)` classes as `digit@degrees`.
pub(super) fn classes(classes: &[(usize, usize)]) -> String {
    classes
        .iter()
        .map(|(d, t)| format!("{d}@{}", 90 * t))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimator::EstimatorSpec;

    #[test]
    fn at_the_paper_scale_the_table_says_each_setting_is_the_protocols() {
        // The paper scale runs no search: each search section of the table's template takes its
        // text for a scale without one, with the protocol's value (a tag the template misnames
        // would be an error here, where the quick and default runs never render these sections).
        let p = Protocol::at(Scale::Paper).unwrap();
        let r = FewShotResults {
            protocol: p.clone(),
            rows: Vec::new(),
            comparisons: Vec::new(),
            stopped: Vec::new(),
            searches: Vec::new(),
            rate_searches: Vec::new(),
            strength_searches: Vec::new(),
            sgd_step_searches: Vec::new(),
            phase_step_searches: Vec::new(),
            nudged_steps_searches: Vec::new(),
            meta_train_classes: vec![(0, 0)],
            validation_classes: vec![(0, 1)],
        };
        let t = table(&r).unwrap();
        for sentence in [
            format!("beta = {}, the paper's code's (no search at this scale).", p.beta),
            format!(
                "Adam at {} for every method (no search at this scale).",
                p.meta_lr
            ),
            format!(
                "CML and iMAML pull toward omega at strength {} (1-shot: {}; no search at this scale).",
                p.strength,
                p.strength_at(1)
            ),
            format!(
                "adapt with {} SGD steps of {} (no search at this scale).",
                p.maml_steps, p.maml_step_size
            ),
            format!("SGD-Nesterov steps of {PHASE_STEP_SIZE}, the paper's (no search at this scale)."),
            format!(
                "CML's nudged phases run {} steps each (no search at this scale).",
                p.nudged_steps
            ),
        ] {
            assert!(t.contains(&sentence), "{sentence}\n{t}");
        }
        assert!(!t.contains("chosen on the validation classes"), "{t}");
    }

    /// What the large `beta` the search prefers (3 at 1 shot, 1 at 5 shots; docs/DIGITS.md §3)
    /// estimates. On 10 validation episodes of each setting at an untrained initialisation, the
    /// protocol's contrastive estimate at each `beta` of the search's grid is compared with the
    /// implicit meta-gradient at the minimum a long free phase reaches (gradient descent to
    /// `|grad| <= 1e-8`, then 1000 conjugate-gradient iterations): a reference no phase of the
    /// estimate enters. The first hypothesis, that the bound's `delta / beta` term favours a large
    /// `beta` with these unconverged phases, was refuted by this measurement: the estimate at the
    /// paper's 0.03 points along the meta-gradient and the estimate at the searched `beta` does
    /// not, so the search's choice improves validation error by an update that is not a
    /// meta-gradient estimate. The same comparison after 50 meta-steps at the searched settings is
    /// printed.
    #[test]
    #[ignore = "an analysis of about 45 s: cargo test --release --lib searched_beta -- --ignored --nocapture"]
    fn at_the_protocols_phases_the_searched_beta_is_not_a_meta_gradient_estimate() {
        // The committed default run's choices (few_shot_beta_choice.csv,
        // few_shot_meta_lr_choice.csv): beta and the rule's outer step size per setting.
        for (shots, searched, meta_lr) in [(1, 3.0, 3e-4), (5, 1.0, 9e-5)] {
            let p = Protocol::at(Scale::Default).unwrap();
            let theta0 = p.net().unwrap().init(&mut stream(7, INIT));
            println!("{shots}-shot, at the untrained initialisation:");
            let untrained = the_estimate_at_each_beta(shots, &theta0);
            let at = |b: f64| BETAS.iter().position(|&x| x == b).expect("a beta of the grid");
            assert!(
                untrained[at(0.03)] > untrained[at(searched)],
                "{shots}-shot: {untrained:?}"
            );
            // Later in meta-training: 50 meta-steps of the rule at its searched settings (the
            // episodes of stream 7, not the validation episodes scored), printed only.
            let rule = p
                .methods(shots)
                .unwrap()
                .into_iter()
                .find(|m| matches!(m.estimator, EstimatorSpec::Contrastive(_)))
                .unwrap();
            let method = Method {
                estimator: at_beta(&rule.estimator, searched),
                ..rule
            };
            let short = Protocol {
                meta_steps: 50,
                meta_lr,
                ..p.clone()
            };
            let split = FewShotSplit::new(&load_digits().unwrap()).unwrap();
            let run = meta_train(&short, &split, shots, &method, 7, theta0, None).unwrap();
            println!("{shots}-shot, after 50 meta-steps at beta {searched}, step size {meta_lr}:");
            the_estimate_at_each_beta(shots, &run.theta);
        }
    }

    /// The analysis's grid: the search's, with its first extension.
    const BETAS: [f64; 6] = [0.03, 0.1, 0.3, 1.0, 3.0, 9.0];

    /// Prints the mean cosine and relative error, against the reference, of the estimate at each
    /// of [`BETAS`] from `theta`, and returns the cosines.
    fn the_estimate_at_each_beta(shots: usize, theta: &Vector) -> Vec<f64> {
        let p = Protocol::at(Scale::Default).unwrap();
        let split = FewShotSplit::new(&load_digits().unwrap()).unwrap();
        let tasks = episodes(&split.validation, 10, shots, stream(7, VALIDATION)).unwrap();
        let spec = p.synapse(p.strength_at(shots)).unwrap();
        let rule = p
            .methods(shots)
            .unwrap()
            .into_iter()
            .find(|m| matches!(m.estimator, EstimatorSpec::Contrastive(_)))
            .unwrap();
        let betas = BETAS;
        let (mut cosine, mut error) = (vec![0.0; betas.len()], vec![0.0; betas.len()]);
        // Against the first-order direction: the outer loss's gradient at the protocol's free end
        // point, which first-order MAML follows (dphi/domega taken as the identity).
        let mut first_order = vec![0.0; betas.len()];
        let mut exact_first_order = 0.0;
        let mut residuals = Vec::new();
        for task in &tasks {
            let problem = Synapse::new(spec.clone(), task.clone(), theta).unwrap();
            let t = problem.theta().clone();
            let oracle = Oracle::new(&problem);
            let start = problem.initial_phi(&t).unwrap();
            let protocol_free = rule
                .adaptation
                .solve(&oracle, &Phase::new(&start, &t, 0.0, "free phase"))
                .unwrap();
            let long = crate::ground_truth::reference_free_phase()
                .solve(&oracle, &Phase::new(&start, &t, 0.0, "reference"))
                .unwrap();
            let exact = crate::implicit_function::implicit_meta_gradient(
                &oracle,
                &long.phi,
                &t,
                crate::implicit_function::LinearSolver::ConjugateGradient { steps: 1000 },
            )
            .unwrap();
            let fo = crate::linalg::to_dvector(&oracle.outer_gradients(&protocol_free.phi, &t).unwrap().phi)
                .unwrap();
            let cos = |a: &Vector, b: &Vector| a.dot(b) / (a.norm() * b.norm());
            exact_first_order += cos(&exact.gradient, &fo) / tasks.len() as f64;
            residuals.push((
                protocol_free.info.grad_norm,
                crate::linalg::norm(&(&protocol_free.phi - &long.phi).unwrap()).unwrap(),
                exact.residual,
            ));
            for (k, &beta) in betas.iter().enumerate() {
                let estimate = at_beta(&rule.estimator, beta)
                    .estimator()
                    .estimate(&problem, &t)
                    .unwrap()
                    .gradient;
                cosine[k] += estimate.dot(&exact.gradient)
                    / (estimate.norm() * exact.gradient.norm())
                    / tasks.len() as f64;
                error[k] += (&estimate - &exact.gradient).norm() / exact.gradient.norm() / tasks.len() as f64;
                first_order[k] += cos(&estimate, &fo) / tasks.len() as f64;
            }
        }
        println!(
            "per episode: (|grad| at the protocol's free end point, its distance to the long phase's, CG residual)"
        );
        for r in &residuals {
            println!("  {:.3e} {:.3e} {:.3e}", r.0, r.1, r.2);
        }
        println!(
            "| beta | mean cosine with the reference | mean relative error | mean cosine with the first-order direction |"
        );
        for (k, beta) in betas.iter().enumerate() {
            println!(
                "| {beta} | {:.4} | {:.4} | {:.4} |",
                cosine[k], error[k], first_order[k]
            );
        }
        println!("the reference's mean cosine with the first-order direction: {exact_first_order:.4}");
        cosine
    }

    #[test]
    fn the_inner_budget_counts_each_stage_of_each_method() {
        // The default protocol: phases of 200 free and 100 nudged steps (two nudged phases for the
        // symmetric stencil at +-beta), 10 CG iterations, MAML's 10 SGD steps walked back in full.
        let budgets: Vec<String> = Protocol::at(Scale::Default)
            .unwrap()
            .methods(1)
            .unwrap()
            .iter()
            .map(|m| m.estimator.inner_work())
            .collect();
        assert_eq!(
            budgets,
            vec![
                "200 steps + 2 x 100 nudged",
                "200 steps + 10 CG products",
                "10 steps + 10 back",
                "10 steps",
                "10 steps"
            ]
        );
    }

    #[test]
    fn the_paper_scale_takes_the_authors_settings() {
        // The authors' Omniglot 5-way settings (docs/EXPERIMENTS.md, "The few-shot job at the
        // paper's budgets"): 30 epochs x 125 meta-batches = 3750 meta-steps of 32 episodes, outer
        // Adam 0.01, free 200 and nudged 100 SGD-Nesterov steps of 0.01, beta 0.1, pull strength
        // 0.5 at 1 shot and 0.1 at 5, 300 evaluation episodes.
        let p = Protocol::at(Scale::Paper).unwrap();
        assert_eq!((p.meta_steps, p.meta_batch, p.test_episodes), (3750, 32, 300));
        assert_eq!((p.meta_lr, p.beta), (0.01, 0.1));
        assert_eq!((p.free_steps, p.nudged_steps), (200, 100));
        for (shots, strength) in [(1, 0.5), (5, 0.1)] {
            let methods = p.methods(shots).unwrap();
            let EstimatorSpec::Contrastive(c) = &methods[0].estimator else {
                panic!("CML first")
            };
            assert_eq!(methods[0].strength, strength, "{shots}-shot");
            assert_eq!(methods[1].strength, strength, "{shots}-shot iMAML");
            assert_eq!((c.free.step_size, c.nudged.step_size), (Some(0.01), Some(0.01)));
            assert_eq!(c.free.optimizer, Optimizer::Nesterov { momentum: 0.9 });
        }
        // The default protocol is unchanged by the paper's field: its units stay valid.
        let default = serde_json::to_value(Protocol::at(Scale::Default).unwrap()).unwrap();
        assert!(default.get("one_shot_strength").is_none());
        assert_eq!(
            Protocol::at(Scale::Default).unwrap().methods(1).unwrap()[0].strength,
            0.1
        );
        assert_eq!(Protocol::at(Scale::Quick).unwrap().meta_steps, 2);
    }

    #[test]
    fn only_the_units_that_read_a_search_keep_it_in_their_fingerprint() {
        // The searches run in this order, each at the choices before it: beta (the contrastive
        // rule), the outer step size (every method), the pull strength (the methods with a pull,
        // those whose synapse has a strength above 0), the plain SGD step size (the others), the
        // phases' step size (those with a pull) and the nudged budget (the contrastive rule). A
        // unit reads a search's key where the search takes its method and runs no later than the
        // unit's own search (a run comes after them all). Read from the unit names alone.
        let settings = Settings::at(Scale::Default);
        let p = Protocol::of(&settings).unwrap();
        let pulled = |key: &str| {
            p.methods(1)
                .unwrap()
                .iter()
                .any(|m| m.key == key && m.strength > 0.0)
        };
        const KEYS: [&str; 6] = [
            "beta_search",
            "meta_lr_search",
            "strength_search",
            "maml_step_size_search",
            "phase_step_size_search",
            "nudged_steps_search",
        ];
        const PREFIXES: [&str; 5] = [
            "meta-lr-",
            "strength-",
            "step-size-",
            "phase-step-size-",
            "nudged-steps-",
        ];
        // (the unit's place in the order, its method's key)
        let place = |unit: &str| -> (usize, String) {
            let Some(rest) = unit.strip_prefix("choice-") else {
                let key = unit.split('-').nth(1).unwrap();
                return (KEYS.len(), key.to_string());
            };
            match PREFIXES.iter().position(|p| rest.starts_with(p)) {
                Some(k) => (
                    k + 1,
                    rest[PREFIXES[k].len()..].split('-').nth(1).unwrap().to_string(),
                ),
                None => (0, CML.to_string()),
            }
        };
        let takes = |k: usize, key: &str| match k {
            0 | 5 => key == "cml",
            1 => true,
            2 | 4 => pulled(key),
            _ => !pulled(key),
        };
        let units = FEW_SHOT.units(&settings).unwrap();
        assert_eq!(units.len(), 78);
        let mut readers = [0; 6];
        for unit in &units {
            let (at, key) = place(unit);
            let ignores = FEW_SHOT.reads(unit).ignores;
            for (k, search) in KEYS.iter().enumerate() {
                let reads = k <= at && takes(k, &key);
                readers[k] += usize::from(reads);
                assert_eq!(!ignores.contains(search), reads, "{unit} {search}");
            }
        }
        // Beta: 2 searches, 2 x 4 later CML searches, 10 CML runs; the outer step size: all but
        // the 2 beta searches; the strength: 4 + 4 phase + 2 nudged searches, 20 runs; the SGD
        // step: 6 searches, 30 runs; the phases: 4 + 2 searches, 20 runs; the nudged budget: 2, 10.
        assert_eq!(readers, [20, 76, 30, 36, 26, 12]);
    }
}
