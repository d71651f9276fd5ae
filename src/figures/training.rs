//! Meta-training on few-shot sinusoid regression with every estimator, both models, several
//! seeds: the curves, example tasks, and the final meta-test loss.

use super::plot::{Figure, Panel, Series, Style};
use super::{Settings, num, save, write_csv, write_table};
use crate::error::Result;
use crate::estimator::{EstimatorParams, EstimatorSpec, Variant};
use crate::inner::GdParams;
use crate::linalg::Vector;
use crate::meta_training::{ModelSpec, TrainConfig, adapt, evaluate_per_task, held_out_tasks, train};
use crate::model::{Mlp, ModulationSpec, SynapseSpec};
use std::path::PathBuf;

/// The estimators compared, with the name shown.
pub const ESTIMATORS: [(&str, &str); 6] = [
    ("contrastive", "contrastive (symmetric)"),
    ("cg", "implicit CG (iMAML-style)"),
    ("bptt", "BPTT (MAML-style)"),
    ("fomaml", "first-order MAML"),
    ("reptile", "Reptile"),
    ("t1t2", "T1-T2"),
];

/// Final meta-test loss after adaptation of one model and estimator, over tasks and seeds.
#[derive(Debug, Clone)]
pub struct FinalLoss {
    pub model: String,
    pub estimator: String,
    pub mean: f64,
    /// Half-width of the 95% interval of the mean (1.96 standard errors over task x seed).
    pub ci95: f64,
    /// The same at the untrained initialisation.
    pub initial_mean: f64,
    /// Paired over the same tasks: mean of (untrained - trained) and its 95% half-width.
    pub improvement: f64,
    pub improvement_ci95: f64,
    pub samples: usize,
}

#[derive(Debug, Clone)]
pub struct TrainingResults {
    pub finals: Vec<FinalLoss>,
    pub meta_steps: usize,
    pub seeds: usize,
    pub net: String,
}

fn models(net: &Mlp) -> Vec<ModelSpec> {
    vec![
        ModelSpec::Synapse(SynapseSpec {
            net: net.clone(),
            per_synapse: true,
            strength: 2.0,
        }),
        ModelSpec::Modulation(ModulationSpec {
            net: net.clone(),
            strength: 2.0,
        }),
    ]
}

fn config(settings: &Settings, model: ModelSpec, estimator: &str, seed: u64) -> Result<TrainConfig> {
    let (free_steps, meta_steps, batch) = if settings.quick { (30, 4, 2) } else { (100, 40, 4) };
    // 0.003 stays below 2 / curvature as meta-training sharpens the networks (0.005 diverged
    // at meta-step 49 of a 60-step run).
    let phase = GdParams {
        step_size: Some(0.003),
        max_steps: free_steps,
        tolerance: 0.0,
        ..GdParams::default()
    };
    let params = EstimatorParams {
        variant: Variant::Symmetric,
        beta: 0.05,
        free: phase,
        nudged: GdParams {
            max_steps: free_steps / 4,
            ..phase
        },
        solver_steps: 10,
        neumann_alpha: None,
        truncation: 10,
    };
    Ok(TrainConfig {
        model,
        shots: 10,
        estimator: EstimatorSpec::from_name(estimator, &params)?,
        meta_steps,
        meta_batch: batch,
        meta_lr: 2e-3,
        eval_tasks: if settings.quick { 4 } else { 20 },
        eval_every: if settings.quick { 2 } else { 10 },
        seed,
    })
}

/// The configuration of one meta-training run of the figures (shipped as `configs/train_*.toml`).
pub fn figure_training_config(quick: bool, seed: u64, model: &str, estimator: &str) -> Result<TrainConfig> {
    let settings = Settings {
        out: PathBuf::new(),
        paper: PathBuf::new(),
        quick,
        seed,
    };
    let net = if quick {
        Mlp::parse("1-8-8-1")?
    } else {
        Mlp::parse("1-40-40-1")?
    };
    let model = models(&net)
        .into_iter()
        .find(|m| m.name() == model)
        .ok_or_else(|| crate::CmlError::UnknownName {
            kind: "model".into(),
            name: model.into(),
            allowed: "synapse, modulation".into(),
        })?;
    config(&settings, model, estimator, seed)
}

fn mean_ci(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, 1.96 * (var / n).sqrt())
}

pub fn run(settings: &Settings, files: &mut Vec<PathBuf>) -> Result<TrainingResults> {
    let net = if settings.quick {
        Mlp::parse("1-8-8-1")?
    } else {
        Mlp::parse("1-40-40-1")?
    };
    let seeds: Vec<u64> = if settings.quick {
        vec![settings.seed, settings.seed + 1]
    } else {
        (0..3).map(|i| settings.seed + i).collect()
    };
    let mut curve_rows = Vec::new();
    let mut finals = Vec::new();
    let mut panels = Vec::new();
    let mut example_panels = Vec::new();
    let mut example_rows = Vec::new();
    let mut meta_steps = 0;
    for model in models(&net) {
        let mut panel = Panel::new(
            format!("{} model: meta-test loss after adaptation", model.name()),
            "meta-step",
            "query MSE (held-out tasks)",
            false,
            false,
        );
        for (i, (name, shown)) in ESTIMATORS.iter().enumerate() {
            let mut per_seed: Vec<Vec<(f64, f64)>> = Vec::new();
            let mut final_losses = Vec::new();
            let mut initial_losses = Vec::new();
            for &seed in &seeds {
                let c = config(settings, model.clone(), name, seed)?;
                meta_steps = c.meta_steps;
                let run = train(&c, &mut |_| {})?;
                let mut curve = Vec::new();
                for s in &run.steps {
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
                }
                per_seed.push(curve);
                let tasks = held_out_tasks(&c)?;
                let theta0 = model.initial_theta(&mut crate::rng::stream(seed, 0))?;
                initial_losses.extend(evaluate_per_task(&c, &tasks, &theta0)?.into_iter().map(|l| l.1));
                final_losses.extend(
                    evaluate_per_task(&c, &tasks, &run.theta)?
                        .into_iter()
                        .map(|l| l.1),
                );
                if *name == "contrastive" && seed == settings.seed {
                    examples(
                        &c,
                        &tasks,
                        &theta0,
                        &run.theta,
                        &mut example_panels,
                        &mut example_rows,
                    )?;
                }
            }
            // Mean and min-max spread over seeds at each evaluated step.
            let steps: Vec<f64> = per_seed[0].iter().map(|p| p.0).collect();
            let mut mean = Vec::new();
            let mut band = Vec::new();
            for (j, &x) in steps.iter().enumerate() {
                let ys: Vec<f64> = per_seed.iter().map(|c| c[j].1).collect();
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
            let (m, ci) = mean_ci(&final_losses);
            let (m0, _) = mean_ci(&initial_losses);
            let paired: Vec<f64> = initial_losses
                .iter()
                .zip(&final_losses)
                .map(|(a, b)| a - b)
                .collect();
            let (improvement, improvement_ci95) = mean_ci(&paired);
            finals.push(FinalLoss {
                model: model.name().into(),
                estimator: shown.to_string(),
                mean: m,
                ci95: ci,
                initial_mean: m0,
                improvement,
                improvement_ci95,
                samples: final_losses.len(),
            });
        }
        panels.push(panel);
    }
    write_csv(
        &settings.out.join("meta_training.csv"),
        "model,estimator,seed,step,test_loss_before,test_loss_after",
        &curve_rows,
        files,
    )?;
    save(settings, "meta_training", &Figure { panels, columns: 2 }, files)?;
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

    let mut table = format!(
        "# Final meta-test loss after adaptation\n\n\
         Generated by `cml figures`: network {}, 10 shots, {} meta-steps, {} seeds; query MSE on the held-out\n\
         tasks after the free phase, mean with a 95% interval (1.96 standard errors over task x seed).\n\n\
         The improvement is paired over the same tasks (untrained minus meta-trained loss).\n\n\
         | model | estimator | untrained | after meta-training | 95% interval | improvement (paired) | samples |\n|---|---|---|---|---|---|---|\n",
        net.sizes
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("-"),
        meta_steps,
        seeds.len()
    );
    for f in &finals {
        table.push_str(&format!(
            "| {} | {} | {} | {} | ± {} | {} ± {} | {} |\n",
            f.model,
            f.estimator,
            num(f.initial_mean),
            num(f.mean),
            num(f.ci95),
            num(f.improvement),
            num(f.improvement_ci95),
            f.samples
        ));
    }
    write_table(settings, "final_loss.md", &table, files)?;
    Ok(TrainingResults {
        finals,
        meta_steps,
        seeds: seeds.len(),
        net: net
            .sizes
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("-"),
    })
}

/// Two held-out tasks: target, support points, prediction before and after adaptation, with the
/// initial and the meta-trained meta-parameters.
fn examples(
    c: &TrainConfig,
    tasks: &[crate::model::SinusoidTask],
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
