//! The paper's §5.2 in miniature: one weight-decay strength per parameter of a 10-16-1 network,
//! meta-learned on the validation loss of the diabetes data set, by the contrastive rule and the
//! reference estimators, against fixed weight decay and the best single decay; over independent
//! seeds (each a new split of the patients and new initial weights), compared as
//! docs/PROTOCOL.md says.

use super::choice::{RateSearchSpec, RunSearch, Search};
use super::training::{ALPHA, seed_mean_ci};
use super::{Scale, Settings, num, save, write_csv, write_table};
use crate::error::Result;
use crate::estimator::{Contrastive, EstimatorSpec, Implicit, LinearSolver, Unrolled, Variant};
use crate::executor::{OnFailure, run_evaluated};
use crate::inner::{GdParams, InnerSolver, Phase};
use crate::linalg::{Vector, to_tensor};
use crate::oracle::Oracle;
use crate::parallel::map_in_order;
use crate::problem::{BilevelProblem, RegularisedMlp};
use crate::report::plot::{Figure, Panel, Series, Style};
use crate::report::template::Context;
use crate::stats::{self, Comparison};
use std::path::PathBuf;

/// Validation, selection and test loss (1/2 MSE, standardised targets) after adaptation.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Losses {
    pub validation: f64,
    pub selection: f64,
    pub test: f64,
}

/// The job's budgets and settings (full or `--quick`); the full one is shipped as
/// `configs/weight_decay.toml`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Protocol {
    /// Independent runs: seed `s` draws its own split of the patients and initial weights.
    pub seeds: usize,
    /// Patients per seed held out of the validation split (the last of its rows) to score every
    /// choice of a meta-learning run (its searches and its deployed meta-step): neither the inner
    /// loss (training patients) nor the outer loss (the other validation patients) sees them, so
    /// that a setting cannot win a search by fitting the outer loss's patients harder.
    pub selection: usize,
    /// The strength every parameter starts from (and the fixed-decay baseline's).
    pub initial_decay: f64,
    /// Gradient descent from the fixed initial weights: the free phase and every adaptation.
    pub free_steps: usize,
    pub nudged_steps: usize,
    /// Adam on the log-strengths, minimising the validation loss after adaptation.
    pub meta_steps: usize,
    /// The validation loss is evaluated every `eval_every` meta-steps (and at the last); each
    /// run deploys the evaluated meta-step with the least (ties to the later).
    pub eval_every: usize,
    /// The single strengths searched on each seed's validation split.
    pub grid: Vec<f64>,
    pub baseline_steps: BaselineSteps,
    /// Neumann's step.
    pub neumann_alpha: f64,
    /// Each seed's inner step size, chosen first on its validation patients (every inner loop of
    /// the seed then runs at it): among the values whose free phase trains at the initial decay
    /// and every decay of `grid` without diverging, the least validation loss after the free phase
    /// at the initial decay ([`super::choice::search_stable_step_size`]).
    pub step_size_search: RateSearchSpec,
    /// Each meta-learning run's Adam step size, then the symmetric contrastive rule's nudging
    /// strength at it, on the seed's selection patients ([`super::choice::searched_run`]).
    pub search: RunSearch,
    /// The contrastive rule's nudged budget, searched last at its run's chosen rate and `beta`
    /// (the smallest within one standard error of the least selection loss, since a larger
    /// budget costs more); `nudged_steps` is where it starts.
    pub nudged_steps_search: RateSearchSpec,
}

impl Protocol {
    /// The budgets of the scale, as shipped: `configs/quick/weight_decay.toml`, else
    /// `configs/weight_decay.toml` (the paper gives no budgets for this job).
    pub fn at(scale: Scale) -> Result<Self> {
        shipped_protocol!(scale, "weight_decay", default_at_paper)
    }

    /// The protocol of `settings`' scale with the user's changes (`--protocol weight-decay=FILE`).
    pub fn of(settings: &Settings) -> Result<Self> {
        crate::protocol::configured("weight-decay", Self::at(settings.scale)?, settings)
    }

    fn phase(&self, steps: usize, step_size: f64) -> GdParams {
        GdParams {
            step_size: Some(step_size),
            max_steps: steps,
            tolerance: 0.0,
            ..GdParams::default()
        }
    }
    /// The estimators compared at inner step size `step_size`, named as in the tables: the
    /// symmetric contrastive rule (at the first `beta` of the search's grid; the search sets its
    /// own) and the references, all after the same free phase.
    fn estimators(&self, step_size: f64) -> Vec<(&'static str, EstimatorSpec)> {
        decay_estimators(
            Contrastive {
                variant: Variant::Symmetric,
                beta: self.search.beta[0],
                free: self.phase(self.free_steps, step_size),
                nudged: self.phase(self.nudged_steps, step_size),
            },
            self.baseline_steps,
            self.neumann_alpha,
        )
    }
}

impl crate::protocol::Checked for Protocol {
    fn check(&self) -> Result<()> {
        crate::protocol::Checks::new("weight-decay")
            .seeds("seeds", self.seeds)
            .that(
                (1..VALIDATION_PATIENTS).contains(&self.selection),
                "selection",
                self.selection,
                &format!(
                    "1 to {} (of the {VALIDATION_PATIENTS} validation patients)",
                    VALIDATION_PATIENTS - 1
                ),
            )
            .positive("initial_decay", self.initial_decay)
            .count("free_steps", self.free_steps)
            .count("nudged_steps", self.nudged_steps)
            .count("meta_steps", self.meta_steps)
            .count("eval_every", self.eval_every)
            .grid("grid", &self.grid, 1, false)
            .count("baseline_steps.cg", self.baseline_steps.cg)
            .count("baseline_steps.neumann", self.baseline_steps.neumann)
            .count("baseline_steps.truncation", self.baseline_steps.truncation)
            .positive("neumann_alpha", self.neumann_alpha)
            .rate_search("step_size_search", Some(&self.step_size_search))
            .run_search("search", Some(&self.search))
            .rate_search("nudged_steps_search", Some(&self.nudged_steps_search))
            .done()
    }
}

/// The protocol of the scale, as the fingerprint of the job's unit records it.
pub(super) fn protocol(settings: &Settings) -> Result<serde_json::Value> {
    super::units::encode(&Protocol::of(settings)?)
}

/// Two methods' test losses are equivalent within this fraction of their mean (fixed before any
/// run; the same relative margin as the other tables of losses; docs/PROTOCOL.md).
pub const EQUIVALENCE_MARGIN: f64 = 0.1;

/// The fixed-decay and best-single-decay rows' names.
const FIXED: &str = "fixed decay";
const BEST_SINGLE: &str = "best single decay (grid search on validation)";

/// One method's deployed losses per seed, and its deployed meta-step (0 for the baselines) and
/// single strength (the baselines'; none for the meta-learned strengths) per seed.
#[derive(Debug, Clone)]
pub struct MethodResult {
    pub method: String,
    pub per_seed: Vec<Losses>,
    pub deployed: Vec<usize>,
    pub decay: Vec<Option<f64>>,
}

impl MethodResult {
    /// Mean and 95% t-interval half-width over seeds of one loss.
    pub fn stat(&self, of: impl Fn(&Losses) -> f64) -> (f64, f64) {
        seed_mean_ci(&self.per_seed.iter().map(of).collect::<Vec<_>>())
    }
}

/// Two methods' test losses, paired over seeds (first minus second).
#[derive(Debug, Clone)]
pub struct DecayComparison {
    pub first: String,
    pub second: String,
    pub comparison: Comparison,
}

#[derive(Debug, Clone)]
pub struct WeightDecayResults {
    pub protocol: Protocol,
    /// The fixed decay, the best single decay, then each estimator.
    pub methods: Vec<MethodResult>,
    /// Each estimator against the best single decay, and the contrastive rule against each
    /// other estimator: one family.
    pub comparisons: Vec<DecayComparison>,
    /// Each seed's inner step-size search.
    pub step_sizes: Vec<Search>,
    /// Each meta-learning run's searches (meta-learning rate; `beta` for the contrastive rule),
    /// seed by seed, estimator by estimator.
    pub searches: Vec<Search>,
    /// Per estimator (in table order), each seed's deployed run's inner work per meta-step
    /// ([`EstimatorSpec::inner_work`]).
    pub inner_work: Vec<Vec<String>>,
    /// Wall seconds of each seed's unit (every method's searches and runs on that seed).
    pub unit_seconds: Vec<f64>,
}

/// The validation patients of [`RegularisedMlp::diabetes`], of which the selection ones are held out.
const VALIDATION_PATIENTS: usize = crate::problem::regularised_mlp::DIABETES_SPLIT.1;

/// One seed's problem (the outer loss on its validation patients) and its selection patients.
struct SeedProblem {
    problem: RegularisedMlp,
    selection: crate::problem::regularised_mlp::Split,
}

impl SeedProblem {
    fn new(p: &Protocol, seed: u64) -> Result<Self> {
        let (problem, selection) =
            RegularisedMlp::diabetes(p.initial_decay, seed)?.hold_out_of_validation(p.selection)?;
        Ok(SeedProblem { problem, selection })
    }
}

/// Per-patient losses after an adaptation: the validation patients' (the outer loss's) and the
/// selection patients' (which score a meta-learning run's choices).
struct PerPatient {
    validation: Vec<f64>,
    selection: Vec<f64>,
}

/// Adapts from the initial weights at `theta` by `free`; the losses after it.
fn adapt(s: &SeedProblem, theta: &Vector, free: GdParams) -> Result<(Losses, PerPatient)> {
    let p = &s.problem;
    let theta = to_tensor(theta)?;
    let phi = free
        .solve(
            &Oracle::new(p),
            &Phase::new(&p.initial_phi(&theta)?, &theta, 0.0, "adaptation"),
        )?
        .phi;
    let losses = Losses {
        validation: p.outer_loss(&phi, &theta)?.to_scalar::<f64>()?,
        selection: s.selection.half_mse(&p.net, &phi)?.to_scalar::<f64>()?,
        test: p.test_loss(&phi)?,
    };
    let per_patient = PerPatient {
        validation: p.validation.half_squared_errors(&p.net, &phi)?,
        selection: s.selection.half_squared_errors(&p.net, &phi)?,
    };
    Ok((losses, per_patient))
}

/// The estimators a weight-decay job compares, named as in its tables: the contrastive rule,
/// CG and Neumann with `solver_steps` (Neumann at step `neumann_alpha`), T1-T2 and truncated
/// BPTT through the last 20 steps, all after the contrastive rule's free phase.
/// The iterations of the baselines' linear solves (CG, Neumann) and truncated BPTT's walk back.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct BaselineSteps {
    pub cg: usize,
    pub neumann: usize,
    pub truncation: usize,
}

/// The contrastive rule's name in the decay jobs' tables (the only method with a nudged phase).
pub(super) const CONTRASTIVE: &str = "contrastive";

pub(super) fn decay_estimators(
    contrastive: Contrastive,
    steps: BaselineSteps,
    neumann_alpha: f64,
) -> Vec<(&'static str, EstimatorSpec)> {
    let free = contrastive.free;
    vec![
        (CONTRASTIVE, EstimatorSpec::Contrastive(contrastive)),
        (
            "implicit CG",
            EstimatorSpec::Implicit(Implicit {
                solver: LinearSolver::ConjugateGradient { steps: steps.cg },
                free,
            }),
        ),
        (
            "Neumann",
            EstimatorSpec::Implicit(Implicit {
                solver: LinearSolver::Neumann {
                    steps: steps.neumann,
                    alpha: Some(neumann_alpha),
                },
                free,
            }),
        ),
        (
            "T1-T2",
            EstimatorSpec::Implicit(Implicit {
                solver: LinearSolver::Identity,
                free,
            }),
        ),
        (
            "truncated BPTT",
            EstimatorSpec::Unrolled(Unrolled {
                inner: free,
                truncation: Some(steps.truncation),
            }),
        ),
    ]
}

/// One meta-learning run: its evaluated meta-steps, the index of the one deployed (the least
/// selection loss, ties to the later), that one's per-patient selection losses, and why the run
/// failed, if it did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct DecayRun {
    curve: Vec<(usize, Losses)>,
    deployed: usize,
    selection: Vec<f64>,
    failed: Option<String>,
}

impl super::choice::ScoredRun for DecayRun {
    /// The selection patients' losses: a search's score.
    fn validation(&self) -> &[f64] {
        &self.selection
    }
    fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }
}

/// Meta-trains `spec`'s strengths from the initial decay with Adam at `meta_lr`, every adaptation
/// by `free`.
fn meta_train(
    p: &Protocol,
    seed: &SeedProblem,
    spec: &EstimatorSpec,
    free: GdParams,
    meta_lr: f64,
) -> Result<DecayRun> {
    let problem = &seed.problem;
    let theta0 = Vector::from_element(problem.dims().theta, p.initial_decay.ln());
    let run = run_evaluated(
        theta0,
        meta_lr,
        p.meta_steps,
        p.eval_every,
        // A value of a search that fails scores infinite instead of ending the job.
        OnFailure::Stop,
        |theta| Ok(spec.estimator().estimate(problem, &to_tensor(theta)?)?.gradient),
        |theta| adapt(seed, theta, free),
    )?;
    let selection: Vec<f64> = run.points.iter().map(|(_, (l, _), _)| l.selection).collect();
    let deployed = super::choice::least_loss(&selection).expect("the initialisation is evaluated");
    Ok(DecayRun {
        curve: run.points.iter().map(|(step, (l, _), _)| (*step, *l)).collect(),
        deployed,
        selection: run.points[deployed].1.1.selection.clone(),
        failed: run.failed,
    })
}

/// One seed's runs, a unit's rows: its step-size search, each estimator's searches and deployed
/// run, the fixed decay, the single-decay grid.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SeedRuns {
    step_size: Search,
    searches: Vec<Vec<Search>>,
    runs: Vec<DecayRun>,
    fixed: Losses,
    grid: Vec<(f64, Losses)>,
}

/// On seed `seed`'s split and initial weights: chooses the inner step size (on the validation
/// patients), then meta-trains every estimator from the initial decay under its searches (on the
/// selection patients), and scores the fixed decay and every single decay of the grid (chosen on
/// the validation patients), every inner loop at the chosen step size.
fn run_seed(p: &Protocol, seed: u64) -> Result<SeedRuns> {
    let problem = SeedProblem::new(p, seed)?;
    let uniform = |decay: f64| Vector::from_element(problem.problem.dims().theta, decay.ln());
    // The initial decay first: its losses are the score.
    let decays: Vec<f64> = std::iter::once(p.initial_decay)
        .chain(p.grid.iter().copied())
        .collect();
    let problems: Vec<String> = decays.iter().map(|d| format!("decay {d}")).collect();
    let step_size = super::choice::search_stable_step_size(
        &format!("seed {seed}"),
        &p.step_size_search,
        &problems,
        // Scored on the validation patients: no meta-training fits them here, and every method
        // shares the choice.
        |step_size, k| {
            let (_, per_patient) = adapt(&problem, &uniform(decays[k]), p.phase(p.free_steps, step_size))?;
            Ok(per_patient.validation)
        },
    )?;
    let free = p.phase(p.free_steps, step_size.chosen);
    let fixed = adapt(&problem, &uniform(p.initial_decay), free)?.0;
    let searched = map_in_order(&p.estimators(step_size.chosen), |(name, spec)| {
        super::choice::searched_run(
            &format!("{name} seed {seed}"),
            &p.search,
            Some(&p.nudged_steps_search),
            spec,
            |lr, spec| meta_train(p, &problem, spec, free, lr),
        )
    })?;
    let grid = map_in_order(&p.grid, |&d| Ok((d, adapt(&problem, &uniform(d), free)?.0)))?;
    let (searches, runs) = searched.into_iter().unzip();
    Ok(SeedRuns {
        step_size,
        searches,
        runs,
        fixed,
        grid,
    })
}

/// The job: one unit per seed, `seed{s}` (seed index `s` runs on the run's seed plus `s`), each
/// every method's runs on that seed's split; the report draws the curves, the per-seed CSV, the
/// figure and the table from them.
pub(super) struct WeightDecayJob;

pub(super) static WEIGHT_DECAY: WeightDecayJob = WeightDecayJob;

fn unit_name(s: usize) -> String {
    format!("seed{s}")
}

impl super::units::Job<super::Section> for WeightDecayJob {
    fn name(&self) -> &'static str {
        "weight-decay"
    }

    fn about(&self) -> &'static str {
        "per-parameter weight decay learned on the diabetes data set over seeds, test-loss table"
    }

    fn paper_budgets(&self) -> super::units::PaperBudgets {
        super::units::PaperBudgets::Default(
            "this testbed's small problem; the paper's weight-decay experiment is digits-decay",
        )
    }

    fn protocol(&self, settings: &Settings) -> Result<serde_json::Value> {
        protocol(settings)
    }

    fn configurable(&self) -> bool {
        true
    }

    fn extent_keys(&self) -> &'static [&'static str] {
        // Each seed's unit draws from that seed alone.
        &["seeds"]
    }

    fn units(&self, settings: &Settings) -> Result<Vec<String>> {
        Ok((0..Protocol::of(settings)?.seeds).map(unit_name).collect())
    }

    fn run_unit(
        &self,
        settings: &Settings,
        unit: &str,
        _staging: &std::path::Path,
    ) -> Result<serde_json::Value> {
        let p = Protocol::of(settings)?;
        let s = super::units::lookup(self, settings, unit, (0..p.seeds).collect(), |s| unit_name(*s))?;
        super::units::encode(&run_seed(&p, settings.seed + s as u64)?)
    }

    fn report(
        &self,
        settings: &Settings,
        units: &[super::units::Stored],
        files: &mut Vec<PathBuf>,
    ) -> Result<super::Section> {
        Ok(super::writeup::weight_decay_section(&report(
            settings, units, files,
        )?))
    }
}

/// From every seed's unit: the curves, the per-seed CSV, the figure and the table.
fn report(
    settings: &Settings,
    units: &[super::units::Stored],
    files: &mut Vec<PathBuf>,
) -> Result<WeightDecayResults> {
    let p = Protocol::of(settings)?;
    let names: Vec<&str> = p.estimators(1.0).iter().map(|e| e.0).collect();
    let seeds: Vec<u64> = (0..p.seeds as u64).map(|s| settings.seed + s).collect();
    let stored: Vec<&super::units::Stored> = (0..p.seeds)
        .map(|s| {
            let name = unit_name(s);
            units.iter().find(|u| u.unit == name).ok_or_else(|| {
                crate::CmlError::invalid("weight-decay unit", &name, "a stored unit of the run")
            })
        })
        .collect::<Result<_>>()?;
    let runs: Vec<SeedRuns> = stored
        .iter()
        .map(|u| super::units::decode(u))
        .collect::<Result<_>>()?;
    // Each deployed run at its chosen nudged budget (the rule's searched last; the protocol's for
    // the others); the inner step size does not change the work.
    let inner_work: Vec<Vec<String>> = p
        .estimators(1.0)
        .iter()
        .enumerate()
        .map(|(k, (_, spec))| {
            runs.iter()
                .map(|r| super::choice::at_chosen_nudged_steps(spec, &r.searches[k]).inner_work())
                .collect()
        })
        .collect();

    let method = |name: &str| MethodResult {
        method: name.to_string(),
        per_seed: Vec::new(),
        deployed: Vec::new(),
        decay: Vec::new(),
    };
    let mut methods = vec![method(FIXED), method(BEST_SINGLE)];
    methods.extend(names.iter().map(|n| method(n)));
    let (mut rows, mut per_seed_rows) = (Vec::new(), Vec::new());
    for (seed, r) in seeds.iter().zip(&runs) {
        methods[0].per_seed.push(r.fixed);
        methods[0].deployed.push(0);
        methods[0].decay.push(Some(p.initial_decay));
        // The single decay with the least validation loss (ties to the first, the smallest).
        let best = r
            .grid
            .iter()
            .min_by(|a, b| a.1.validation.total_cmp(&b.1.validation))
            .expect("a grid");
        methods[1].per_seed.push(best.1);
        methods[1].deployed.push(0);
        methods[1].decay.push(Some(best.0));
        for (k, run) in r.runs.iter().enumerate() {
            for (step, l) in &run.curve {
                rows.push(format!(
                    "{},{seed},{step},{:e},{:e},{:e}",
                    names[k], l.validation, l.selection, l.test
                ));
            }
            let chosen = run.curve[run.deployed];
            let m = &mut methods[2 + k];
            m.per_seed.push(chosen.1);
            m.deployed.push(chosen.0);
            m.decay.push(None);
        }
        for (d, l) in &r.grid {
            rows.push(format!(
                "single decay {d},{seed},0,{:e},{:e},{:e}",
                l.validation, l.selection, l.test
            ));
        }
    }
    for m in &methods {
        for (s, seed) in seeds.iter().enumerate() {
            let l = m.per_seed[s];
            // The decay column is empty for the meta-learned strengths.
            let decay = m.decay[s].map_or(String::new(), |d| format!("{d:e}"));
            per_seed_rows.push(format!(
                "{},{seed},{},{decay},{:e},{:e},{:e}",
                m.method, m.deployed[s], l.validation, l.selection, l.test
            ));
        }
    }
    write_csv(
        &settings.out.join("weight_decay.csv"),
        "estimator,seed,step,validation_loss,selection_loss,test_loss",
        &rows,
        files,
    )?;
    write_csv(
        &settings.out.join("weight_decay_per_seed.csv"),
        "method,seed,deployed_step,decay,validation_loss,selection_loss,test_loss",
        &per_seed_rows,
        files,
    )?;
    figure(settings, &p, &names, &runs, &methods, files)?;
    let step_sizes: Vec<Search> = runs.iter().map(|r| r.step_size.clone()).collect();
    let searches: Vec<Search> = runs.iter().flat_map(|r| r.searches.concat()).collect();
    super::choice::write_decay_searches(&settings.out, "weight_decay", &step_sizes, &searches, files)?;
    let results = WeightDecayResults {
        comparisons: compare(&methods),
        protocol: p,
        methods,
        step_sizes,
        searches,
        inner_work,
        unit_seconds: stored.iter().map(|u| u.seconds).collect(),
    };
    write_table(settings, "weight_decay.md", &table(&results)?, files)?;
    Ok(results)
}

/// The validation and test curves, mean over seeds, with the fixed and best single decays' means
/// dashed.
fn figure(
    settings: &Settings,
    p: &Protocol,
    names: &[&str],
    runs: &[SeedRuns],
    methods: &[MethodResult],
    files: &mut Vec<PathBuf>,
) -> Result<()> {
    let panel = |what: &str| {
        Panel::new(
            format!("per-parameter weight decay, diabetes: {what} (mean over seeds)"),
            "meta-step",
            "1/2 MSE (standardised)",
            false,
            false,
        )
    };
    let (mut validation, mut test) = (panel("validation"), panel("test"));
    let n = runs.len() as f64;
    for (k, name) in names.iter().enumerate() {
        // Every seed evaluates the same meta-steps.
        let mean = |of: &dyn Fn(&Losses) -> f64| -> Vec<(f64, f64)> {
            (0..runs[0].runs[k].curve.len())
                .map(|i| {
                    let step = runs[0].runs[k].curve[i].0 as f64;
                    (
                        step,
                        runs.iter().map(|r| of(&r.runs[k].curve[i].1)).sum::<f64>() / n,
                    )
                })
                .collect()
        };
        validation
            .series
            .push(Series::new(*name, mean(&|l| l.validation), k, Style::LinePoints));
        test.series
            .push(Series::new(*name, mean(&|l| l.test), k, Style::LinePoints));
    }
    let flat = |v: f64| vec![(0.0, v), (p.meta_steps as f64, v)];
    for (m, colour) in methods[..2].iter().zip([6, 5]) {
        validation.series.push(Series::new(
            m.method.as_str(),
            flat(m.stat(|l| l.validation).0),
            colour,
            Style::Dashed,
        ));
        test.series.push(Series::new(
            m.method.as_str(),
            flat(m.stat(|l| l.test).0),
            colour,
            Style::Dashed,
        ));
    }
    save(
        settings,
        "weight_decay",
        &Figure {
            panels: vec![validation, test],
            columns: 2,
        },
        files,
    )
}

/// The table's family: each estimator against the best single decay, and the contrastive rule
/// against each other estimator; test losses paired over seeds, margin ± [`EQUIVALENCE_MARGIN`]
/// of the mean of the two.
fn compare(methods: &[MethodResult]) -> Vec<DecayComparison> {
    let test = |m: &MethodResult| m.per_seed.iter().map(|l| l.test).collect::<Vec<_>>();
    let (best, estimators) = (&methods[1], &methods[2..]);
    let mut pairs: Vec<(&MethodResult, &MethodResult)> = estimators.iter().map(|m| (m, best)).collect();
    pairs.extend(estimators[1..].iter().map(|m| (&estimators[0], m)));
    let diffs: Vec<Vec<f64>> = pairs
        .iter()
        .map(|(a, b)| test(a).iter().zip(test(b)).map(|(x, y)| x - y).collect())
        .collect();
    let margins: Vec<f64> = pairs
        .iter()
        .map(|(a, b)| EQUIVALENCE_MARGIN * 0.5 * (a.stat(|l| l.test).0 + b.stat(|l| l.test).0))
        .collect();
    pairs
        .iter()
        .zip(stats::compare_family(&diffs, &margins, ALPHA))
        .map(|((a, b), comparison)| DecayComparison {
            first: a.method.clone(),
            second: b.method.clone(),
            comparison,
        })
        .collect()
}

/// Losses per method (mean +- 95% t-interval over seeds), then the family of comparisons.
pub fn table(r: &WeightDecayResults) -> Result<String> {
    let p = &r.protocol;
    let methods = r
        .methods
        .iter()
        .map(|m| {
            let (v, vh) = m.stat(|l| l.validation);
            let (sel, sh) = m.stat(|l| l.selection);
            let (e, eh) = m.stat(|l| l.test);
            let chosen = if m.method == BEST_SINGLE {
                format!("{:?}", m.decay.iter().flatten().collect::<Vec<_>>())
            } else {
                format!("{:?}", m.deployed)
            };
            Context::new()
                .text("method", &m.method)
                .text("validation_loss", num(v))
                .text("validation_ci95", num(vh))
                .text("selection_loss", num(sel))
                .text("selection_ci95", num(sh))
                .text("test_loss", num(e))
                .text("test_ci95", num(eh))
                .text("chosen", chosen)
        })
        .collect();
    let comparisons = r
        .comparisons
        .iter()
        .map(|c| {
            super::comparison_context(&c.comparison, num)
                .text("first", &c.first)
                .text("second", &c.second)
        })
        .collect();
    let budgets = r.methods[2..]
        .iter()
        .zip(&r.inner_work)
        .map(|(m, work)| {
            Context::new()
                .text("method", &m.method)
                .text("inner_work", super::distinct_joined(work))
        })
        .collect();
    let choices = r.methods[2..]
        .iter()
        .map(|m| {
            let per_seed =
                |setting: &str| {
                    super::searches::chosen_cell(r.searches.iter().filter(|x| {
                        x.setting == setting && x.model.starts_with(&format!("{} seed ", m.method))
                    }))
                };
            Context::new()
                .text("method", &m.method)
                .text("meta_lr", per_seed("meta_lr"))
                .text("beta", per_seed("beta"))
                .text("nudged_steps", per_seed("nudged_steps"))
        })
        .collect();
    let (train, _, _) = crate::problem::regularised_mlp::DIABETES_SPLIT;
    let context = Context::new()
        .text("validation", VALIDATION_PATIENTS - p.selection)
        .text("selection", p.selection)
        .text("seeds", p.seeds)
        .text("meta_steps", p.meta_steps)
        .text("initial_decay", p.initial_decay)
        .text("free_steps", p.free_steps)
        .text("eval_every", p.eval_every)
        .text("grid", format!("{:?}", p.grid))
        .list("methods", methods)
        .text("comparison_count", r.comparisons.len())
        .text("margin", EQUIVALENCE_MARGIN)
        .text("alpha", ALPHA)
        .list("comparisons", comparisons)
        .text("train", train)
        .text("unit_seconds", format!("{:.1}", super::mean(&r.unit_seconds)))
        .text(
            "fastest",
            format!(
                "{:.1}",
                r.unit_seconds.iter().copied().fold(f64::INFINITY, f64::min)
            ),
        )
        .text(
            "slowest",
            format!("{:.1}", r.unit_seconds.iter().copied().fold(0.0, f64::max)),
        )
        .list("budgets", budgets)
        .text(
            "step_size_extensions",
            super::searches::times(p.step_size_search.extensions),
        )
        .text("step_size_table", super::searches::table(&r.step_sizes, "seed"))
        .text("meta_lr_grid", format!("{:?}", p.search.meta_lr))
        .text("beta_grid", format!("{:?}", p.search.beta))
        .text("extensions", super::searches::times(p.search.extensions))
        .text("nudged_grid", format!("{:?}", p.nudged_steps_search.grid))
        .text(
            "nudged_extensions",
            super::searches::times(p.nudged_steps_search.extensions),
        )
        .list("choices", choices)
        .text(
            "edges",
            super::searches::edges_sentence(r.searches.iter().chain(&r.step_sizes)).trim_end_matches('\n'),
        );
    super::render_table(
        include_str!("tables/weight_decay.md"),
        "weight_decay.md",
        &context,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_table_counts_each_methods_inner_work() {
        // The default protocol: 300 free steps; the symmetric rule's two nudged phases of 100
        // steps (25 where its search chose 25), 10 CG iterations and 10 Neumann terms, T1-T2's one
        // mixed product in place of a solve, truncated BPTT walking back the last 20 steps.
        let p = Protocol::at(Scale::Default).unwrap();
        let estimators = p.estimators(0.1);
        let work: Vec<String> = estimators.iter().map(|(_, e)| e.inner_work()).collect();
        assert_eq!(
            work,
            vec![
                "300 steps + 2 x 100 nudged",
                "300 steps + 10 CG products",
                "300 steps + 10 Neumann products",
                "300 steps + 1 mixed product",
                "300 steps + 20 back",
            ]
        );
        let rule = super::super::choice::at_nudged_steps(&estimators[0].1, 25);
        assert_eq!(rule.inner_work(), "300 steps + 2 x 25 nudged");
    }
}
