//! The paper's §5.2 in miniature: one weight-decay strength per parameter of a 10-16-1 network,
//! meta-learned on the validation loss of the diabetes data set, by the contrastive rule and the
//! reference estimators, against fixed weight decay and the best single decay; over independent
//! seeds (each a new split of the patients and new initial weights), compared as
//! docs/PROTOCOL.md says.

use super::training::{ALPHA, p_value, seed_mean_ci};
use super::{Settings, num, save, write_csv, write_table};
use crate::error::Result;
use crate::estimator::{Contrastive, EstimatorSpec, Implicit, LinearSolver, Unrolled, Variant};
use crate::executor::{Flow, MetaExecutor, OnFailure};
use crate::inner::{GdParams, InnerSolver, Phase};
use crate::linalg::{Vector, to_tensor};
use crate::oracle::Oracle;
use crate::parallel::map_in_order;
use crate::problem::{BilevelProblem, RegularisedMlp};
use crate::report::plot::{Figure, Panel, Series, Style};
use crate::stats::{self, Comparison};
use std::path::PathBuf;

/// Validation and test loss (1/2 MSE, standardised targets) after adaptation.
#[derive(Debug, Clone, Copy)]
pub struct Losses {
    pub validation: f64,
    pub test: f64,
}

/// The job's budgets and settings (full or `--quick`); the full one is shipped as
/// `configs/weight_decay.toml`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Protocol {
    /// Independent runs: seed `s` draws its own split of the patients and initial weights.
    pub seeds: usize,
    /// The strength every parameter starts from (and the fixed-decay baseline's).
    pub initial_decay: f64,
    /// Gradient descent from the fixed initial weights: the free phase and every adaptation.
    pub step_size: f64,
    pub free_steps: usize,
    pub nudged_steps: usize,
    /// The symmetric contrastive rule's nudging strength.
    pub beta: f64,
    /// Adam on the log-strengths, minimising the validation loss after adaptation.
    pub meta_steps: usize,
    pub meta_lr: f64,
    /// The validation loss is evaluated every `eval_every` meta-steps (and at the last); each
    /// run deploys the evaluated meta-step with the least (ties to the later).
    pub eval_every: usize,
    /// The single strengths searched on each seed's validation split.
    pub grid: Vec<f64>,
    pub baseline_steps: BaselineSteps,
    /// Neumann's step.
    pub neumann_alpha: f64,
}

impl Protocol {
    pub fn new(quick: bool) -> Self {
        let full = Protocol {
            seeds: 5,
            initial_decay: 1e-2,
            step_size: 0.1,
            free_steps: 300,
            nudged_steps: 100,
            beta: 0.5,
            meta_steps: 60,
            meta_lr: 0.05,
            eval_every: 5,
            grid: vec![1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0],
            baseline_steps: BaselineSteps {
                cg: 10,
                neumann: 10,
                truncation: 20,
            },
            neumann_alpha: 0.1,
        };
        if quick {
            Protocol {
                seeds: 2,
                free_steps: 60,
                nudged_steps: 20,
                meta_steps: 4,
                eval_every: 2,
                grid: vec![1e-3, 1e-2, 1e-1],
                ..full
            }
        } else {
            full
        }
    }

    fn phase(&self, steps: usize) -> GdParams {
        GdParams {
            step_size: Some(self.step_size),
            max_steps: steps,
            tolerance: 0.0,
            ..GdParams::default()
        }
    }
    /// The estimators compared, named as in the tables: the symmetric contrastive rule and the
    /// references, all after the same free phase.
    fn estimators(&self) -> Vec<(&'static str, EstimatorSpec)> {
        decay_estimators(
            Contrastive {
                variant: Variant::Symmetric,
                beta: self.beta,
                free: self.phase(self.free_steps),
                nudged: self.phase(self.nudged_steps),
            },
            self.baseline_steps,
            self.neumann_alpha,
        )
    }
}

/// The protocol of the scale, as the fingerprint of the job's unit records it.
pub(super) fn protocol(settings: &Settings) -> Result<serde_json::Value> {
    super::units::encode(&Protocol::new(settings.quick()))
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
}

/// Adapt from the initial weights with strengths `theta`, then measure.
fn losses(p: &RegularisedMlp, theta: &Vector, free: GdParams) -> Result<Losses> {
    let theta = to_tensor(theta)?;
    let phi = free
        .solve(
            &Oracle::new(p),
            &Phase::new(&p.initial_phi(&theta)?, &theta, 0.0, "adaptation"),
        )?
        .phi;
    Ok(Losses {
        validation: p.outer_loss(&phi, &theta)?.to_scalar::<f64>()?,
        test: p.test_loss(&phi)?,
    })
}

/// The estimators a weight-decay job compares, named as in its tables: the contrastive rule,
/// CG and Neumann with `solver_steps` (Neumann at step `neumann_alpha`), T1-T2 and truncated
/// BPTT through the last 20 steps, all after the contrastive rule's free phase.
/// The iterations of the baselines' linear solves (CG, Neumann) and truncated BPTT's walk back.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BaselineSteps {
    pub cg: usize,
    pub neumann: usize,
    pub truncation: usize,
}

pub(super) fn decay_estimators(
    contrastive: Contrastive,
    steps: BaselineSteps,
    neumann_alpha: f64,
) -> Vec<(&'static str, EstimatorSpec)> {
    let free = contrastive.free;
    vec![
        ("contrastive", EstimatorSpec::Contrastive(contrastive)),
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

/// One seed's runs: each estimator's evaluated meta-steps, the fixed decay, the single-decay grid.
struct SeedRuns {
    curves: Vec<Vec<(usize, Losses)>>,
    fixed: Losses,
    grid: Vec<(f64, Losses)>,
}

/// Meta-trains every estimator from the initial decay on seed `seed`'s split and initial weights,
/// and scores the fixed decay and every single decay of the grid.
fn run_seed(p: &Protocol, seed: u64) -> Result<SeedRuns> {
    let problem = RegularisedMlp::diabetes(p.initial_decay, seed)?;
    let free = p.phase(p.free_steps);
    let estimators = p.estimators();
    let theta0 = Vector::from_element(problem.dims().theta, p.initial_decay.ln());
    let fixed = losses(&problem, &theta0, free)?;
    let curves = map_in_order(&estimators, |(_, spec)| {
        let mut curve = vec![(0usize, fixed)];
        MetaExecutor::new(theta0.clone(), p.meta_lr).run(
            p.meta_steps,
            OnFailure::Error,
            |_, theta| {
                Ok((
                    spec.estimator().estimate(&problem, &to_tensor(theta)?)?.gradient,
                    (),
                ))
            },
            |run, ()| {
                if run.step % p.eval_every == 0 || run.step == p.meta_steps {
                    curve.push((run.step, losses(&problem, &run.theta, free)?));
                }
                Ok(Flow::Continue)
            },
        )?;
        Ok(curve)
    })?;
    let grid = map_in_order(&p.grid, |&d| {
        Ok((
            d,
            losses(
                &problem,
                &Vector::from_element(problem.dims().theta, d.ln()),
                free,
            )?,
        ))
    })?;
    Ok(SeedRuns { curves, fixed, grid })
}

/// Runs every seed, then writes the curves, the per-seed CSV, the figure and the table.
pub fn run(settings: &Settings, files: &mut Vec<PathBuf>) -> Result<WeightDecayResults> {
    let p = Protocol::new(settings.quick());
    let names: Vec<&str> = p.estimators().iter().map(|e| e.0).collect();
    let seeds: Vec<u64> = (0..p.seeds as u64).map(|s| settings.seed + s).collect();
    let runs: Vec<SeedRuns> = seeds
        .iter()
        .map(|&seed| run_seed(&p, seed))
        .collect::<Result<_>>()?;

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
        for (k, curve) in r.curves.iter().enumerate() {
            for (step, l) in curve {
                rows.push(format!(
                    "{},{seed},{step},{:e},{:e}",
                    names[k], l.validation, l.test
                ));
            }
            // The evaluated meta-step with the least validation loss is deployed.
            let validation: Vec<f64> = curve.iter().map(|c| c.1.validation).collect();
            let chosen = curve[super::choice::least_loss(&validation).expect("step 0 is evaluated")];
            let m = &mut methods[2 + k];
            m.per_seed.push(chosen.1);
            m.deployed.push(chosen.0);
            m.decay.push(None);
        }
        for (d, l) in &r.grid {
            rows.push(format!(
                "single decay {d},{seed},0,{:e},{:e}",
                l.validation, l.test
            ));
        }
    }
    for m in &methods {
        for (s, seed) in seeds.iter().enumerate() {
            let l = m.per_seed[s];
            // The decay column is empty for the meta-learned strengths.
            let decay = m.decay[s].map_or(String::new(), |d| format!("{d:e}"));
            per_seed_rows.push(format!(
                "{},{seed},{},{decay},{:e},{:e}",
                m.method, m.deployed[s], l.validation, l.test
            ));
        }
    }
    write_csv(
        &settings.out.join("weight_decay.csv"),
        "estimator,seed,step,validation_loss,test_loss",
        &rows,
        files,
    )?;
    write_csv(
        &settings.out.join("weight_decay_per_seed.csv"),
        "method,seed,deployed_step,decay,validation_loss,test_loss",
        &per_seed_rows,
        files,
    )?;
    figure(settings, &p, &names, &runs, &methods, files)?;
    let results = WeightDecayResults {
        comparisons: compare(&methods),
        protocol: p,
        methods,
    };
    write_table(settings, "weight_decay.md", &table(&results), files)?;
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
            (0..runs[0].curves[k].len())
                .map(|i| {
                    let step = runs[0].curves[k][i].0 as f64;
                    (step, runs.iter().map(|r| of(&r.curves[k][i].1)).sum::<f64>() / n)
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
pub fn table(r: &WeightDecayResults) -> String {
    let p = &r.protocol;
    let mut t = format!(
        "# Per-parameter weight decay on the diabetes data set\n\n\
         Generated by `cml figures`: 10-16-1 tanh network (193 parameters, one strength each), 147 / 147 / 147 \
         train / validation / test patients, standardised, {} seeds (each its own split of the patients and its own \
         initial weights); {} meta-steps of Adam (step size {}) on the validation loss from decay {} everywhere; \
         adaptation: {} gradient steps of size {} from the fixed initial weights. Each meta-learning run deploys the \
         evaluated meta-step (every {}) with the least validation loss; the single decay is the grid's value with the \
         least validation loss ({:?}). Mean over seeds +- half-width of the 95% t-interval.\n\n\
         | method | validation 1/2 MSE | test 1/2 MSE | deployed meta-steps or decays |\n|---|---|---|---|\n",
        p.seeds, p.meta_steps, p.meta_lr, p.initial_decay, p.free_steps, p.step_size, p.eval_every, p.grid
    );
    for m in &r.methods {
        let (v, vh) = m.stat(|l| l.validation);
        let (e, eh) = m.stat(|l| l.test);
        let chosen = if m.method == BEST_SINGLE {
            format!("{:?}", m.decay.iter().flatten().collect::<Vec<_>>())
        } else {
            format!("{:?}", m.deployed)
        };
        t.push_str(&format!(
            "| {} | {} +- {} | {} +- {} | {chosen} |\n",
            m.method,
            num(v),
            num(vh),
            num(e),
            num(eh)
        ));
    }
    t.push_str(&format!(
        "\n## Comparisons\n\nTest loss, first minus second, paired over seeds; one family of {}, paired t-tests and \
         equivalence tests (TOST, margin ± {}x the mean of the two test losses), each Holm-adjusted; verdict at {ALPHA} \
         (docs/PROTOCOL.md). Per-seed values: `weight_decay_per_seed.csv`.\n\n\
         | first | second | difference | 95% interval | p (Holm) | equivalence p (Holm) | verdict |\n|---|---|---|---|---|---|---|\n",
        r.comparisons.len(),
        EQUIVALENCE_MARGIN
    ));
    for c in &r.comparisons {
        let k = &c.comparison;
        t.push_str(&format!(
            "| {} | {} | {} | ± {} | {} | {} | {} |\n",
            c.first,
            c.second,
            num(k.mean),
            num(k.ci95),
            p_value(k.holm),
            p_value(k.equivalence_holm),
            k.verdict.describe()
        ));
    }
    t
}
