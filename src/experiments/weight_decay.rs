//! The paper's §5.2 in miniature: one weight-decay strength per parameter of a 10-16-1 network,
//! meta-learned on the validation loss of the diabetes data set, by the contrastive rule and the
//! reference estimators, against fixed weight decay.

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
use std::path::PathBuf;

/// Validation and test loss (1/2 MSE, standardised targets) after adaptation.
#[derive(Debug, Clone, Copy)]
pub struct Losses {
    pub validation: f64,
    pub test: f64,
}

#[derive(Debug, Clone)]
pub struct WeightDecayResults {
    /// Per estimator: the losses at the last meta-step.
    pub finals: Vec<(String, Losses)>,
    /// Every strength at its initial value for the whole run.
    pub fixed: Losses,
    /// The best single strength for all parameters on a grid, chosen on validation.
    pub best_scalar: (f64, Losses),
    pub meta_steps: usize,
}

const INITIAL_DECAY: f64 = 1e-2;

fn phase(steps: usize) -> GdParams {
    GdParams {
        step_size: Some(0.1),
        max_steps: steps,
        tolerance: 0.0,
        ..GdParams::default()
    }
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

pub fn run(settings: &Settings, files: &mut Vec<PathBuf>) -> Result<WeightDecayResults> {
    let p = RegularisedMlp::diabetes(INITIAL_DECAY, settings.seed)?;
    let (free_steps, nudged_steps, meta_steps, eval_every) = if settings.quick() {
        (60, 20, 4, 2)
    } else {
        (300, 100, 60, 5)
    };
    let free = phase(free_steps);
    let estimators = decay_estimators(
        Contrastive {
            variant: Variant::Symmetric,
            beta: 0.5,
            free,
            nudged: phase(nudged_steps),
        },
        BaselineSteps {
            cg: 10,
            neumann: 10,
            truncation: 20,
        },
        0.1,
    );
    let theta0 = Vector::from_element(p.dims().theta, INITIAL_DECAY.ln());
    let fixed = losses(&p, &theta0, free)?;
    let runs = map_in_order(&estimators, |(name, spec)| {
        let mut curve = vec![(0usize, fixed)];
        MetaExecutor::new(theta0.clone(), 0.05).run(
            meta_steps,
            OnFailure::Error,
            |_, theta| Ok((spec.estimator().estimate(&p, &to_tensor(theta)?)?.gradient, ())),
            |run, ()| {
                if run.step % eval_every == 0 || run.step == meta_steps {
                    curve.push((run.step, losses(&p, &run.theta, free)?));
                }
                Ok(Flow::Continue)
            },
        )?;
        Ok((name.to_string(), curve))
    })?;
    let grid: &[f64] = if settings.quick() {
        &[1e-3, 1e-2, 1e-1]
    } else {
        &[1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
    };
    let scalar = map_in_order(grid, |&d| {
        Ok((
            d,
            losses(&p, &Vector::from_element(p.dims().theta, d.ln()), free)?,
        ))
    })?;
    let best_scalar = scalar
        .iter()
        .copied()
        .min_by(|a, b| a.1.validation.total_cmp(&b.1.validation))
        .expect("a grid");

    let mut rows = Vec::new();
    let mut validation = Panel::new(
        "per-parameter weight decay, diabetes: validation",
        "meta-step",
        "1/2 MSE (standardised)",
        false,
        false,
    );
    let mut test = Panel::new(
        "per-parameter weight decay, diabetes: test",
        "meta-step",
        "1/2 MSE (standardised)",
        false,
        false,
    );
    for (i, (name, curve)) in runs.iter().enumerate() {
        for (step, l) in curve {
            rows.push(format!("{name},{step},{:e},{:e}", l.validation, l.test));
        }
        validation.series.push(Series::new(
            name.clone(),
            curve.iter().map(|(s, l)| (*s as f64, l.validation)).collect(),
            i,
            Style::LinePoints,
        ));
        test.series.push(Series::new(
            name.clone(),
            curve.iter().map(|(s, l)| (*s as f64, l.test)).collect(),
            i,
            Style::LinePoints,
        ));
    }
    let flat = |v: f64| vec![(0.0, v), (meta_steps as f64, v)];
    validation.series.push(Series::new(
        format!("fixed decay {INITIAL_DECAY}"),
        flat(fixed.validation),
        6,
        Style::Dashed,
    ));
    test.series.push(Series::new(
        format!("fixed decay {INITIAL_DECAY}"),
        flat(fixed.test),
        6,
        Style::Dashed,
    ));
    validation.series.push(Series::new(
        format!("best single decay {}", best_scalar.0),
        flat(best_scalar.1.validation),
        5,
        Style::Dashed,
    ));
    test.series.push(Series::new(
        format!("best single decay {}", best_scalar.0),
        flat(best_scalar.1.test),
        5,
        Style::Dashed,
    ));
    for (d, l) in &scalar {
        rows.push(format!("single decay {d},0,{:e},{:e}", l.validation, l.test));
    }
    write_csv(
        &settings.out.join("weight_decay.csv"),
        "estimator,step,validation_loss,test_loss",
        &rows,
        files,
    )?;
    save(
        settings,
        "weight_decay",
        &Figure {
            panels: vec![validation, test],
            columns: 2,
        },
        files,
    )?;

    let finals: Vec<(String, Losses)> = runs
        .iter()
        .map(|(n, c)| (n.clone(), c.last().expect("evaluated").1))
        .collect();
    let mut table = format!(
        "# Per-parameter weight decay on the diabetes data set\n\n\
         Generated by `cml figures`: 10-16-1 tanh network (193 parameters, one strength each), 147 / 147 / 147\n\
         train / validation / test patients, standardised; {meta_steps} meta-steps of Adam (lr 0.05) on the\n\
         validation loss; adaptation: {free_steps} gradient steps of size 0.1 from fixed initial weights.\n\n\
         | method | validation 1/2 MSE | test 1/2 MSE |\n|---|---|---|\n\
         | fixed decay {INITIAL_DECAY} | {} | {} |\n| best single decay ({}, chosen on validation) | {} | {} |\n",
        num(fixed.validation),
        num(fixed.test),
        best_scalar.0,
        num(best_scalar.1.validation),
        num(best_scalar.1.test)
    );
    for (n, l) in &finals {
        table.push_str(&format!("| {n} | {} | {} |\n", num(l.validation), num(l.test)));
    }
    write_table(settings, "weight_decay.md", &table, files)?;
    Ok(WeightDecayResults {
        finals,
        fixed,
        best_scalar,
        meta_steps,
    })
}
