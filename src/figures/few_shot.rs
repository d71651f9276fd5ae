//! The paper's §5.3 in the Omniglot protocol on the shipped handwritten digits: 5-way 1-shot and
//! 5-shot classification, classes (digit, rotation), meta-train digits 0-6 and meta-test digits
//! 7-9; the contrastive rule against MAML, first-order MAML, Reptile and iMAML
//! (docs/DIGITS.md §3).

use super::plot::{Figure, Panel, Series, Style};
use super::training::seed_mean_ci;
use super::{Settings, running_mean, save, write_csv, write_table};
use crate::digits::{ClassPool, Episode, accuracy, load_digits};
use crate::error::{CmlError, Result};
use crate::estimator::{
    Contrastive, EstimatorSpec, FirstOrder, FirstOrderRule, Implicit, LinearSolver, Unrolled, Variant,
};
use crate::inner::{GdParams, InnerSolver, Phase};
use crate::linalg::{Vector, to_tensor};
use crate::meta_training::TaskMetaTraining;
use crate::model::Mlp;
use crate::optimizer::Optimizer;
use crate::oracle::Oracle;
use crate::parallel::map_in_order;
use crate::problem::{BilevelProblem, ProblemInstance, Synapse, SynapseSpec};
use crate::rng::stream;
use std::path::PathBuf;

/// Digits whose rotations are the meta-training classes; the others are the meta-test classes.
pub const TRAIN_DIGITS: [usize; 7] = [0, 1, 2, 3, 4, 5, 6];
pub const TEST_DIGITS: [usize; 3] = [7, 8, 9];
pub const WAYS: usize = 5;
/// Query images per class, as in the Omniglot protocol.
pub const QUERIES: usize = 15;

/// The budget of the job (full or `--quick`); the full one is shipped as a config in `configs/`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Protocol {
    pub hidden: Vec<usize>,
    pub shots: Vec<usize>,
    pub meta_steps: usize,
    pub meta_batch: usize,
    pub meta_lr: f64,
    pub test_episodes: usize,
    /// The complex synapse's fixed strength (CML and iMAML).
    pub strength: f64,
    pub beta: f64,
    pub free_steps: usize,
    pub nudged_steps: usize,
    /// Gradient steps of MAML, first-order MAML and Reptile, and their size.
    pub maml_steps: usize,
    pub maml_step_size: f64,
}

impl Protocol {
    pub fn new(quick: bool) -> Self {
        if quick {
            Protocol {
                hidden: vec![16],
                shots: vec![1],
                meta_steps: 2,
                meta_batch: 2,
                meta_lr: 3e-3,
                test_episodes: 10,
                strength: 0.5,
                beta: 0.1,
                free_steps: 20,
                nudged_steps: 10,
                maml_steps: 3,
                maml_step_size: 0.5,
            }
        } else {
            Protocol {
                hidden: vec![64, 64],
                shots: vec![1, 5],
                meta_steps: 200,
                meta_batch: 16,
                meta_lr: 1e-3,
                test_episodes: 600,
                strength: 0.1,
                beta: 0.1,
                free_steps: 200,
                nudged_steps: 100,
                maml_steps: 10,
                maml_step_size: 0.05,
            }
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

    /// The contrastive phases: SGD with Nesterov momentum 0.9, step 0.01 (the paper's; a fresh
    /// optimiser per phase).
    fn phase(&self, steps: usize) -> Result<GdParams> {
        Ok(GdParams {
            step_size: Some(0.01),
            max_steps: steps,
            optimizer: Optimizer::from_name("nesterov", 0.9)?,
            ..GdParams::default()
        })
    }

    fn sgd(&self) -> GdParams {
        GdParams {
            step_size: Some(self.maml_step_size),
            max_steps: self.maml_steps,
            ..GdParams::default()
        }
    }

    /// The methods compared.
    pub fn methods(&self) -> Result<Vec<Method>> {
        let free = self.phase(self.free_steps)?;
        let method = |name, strength, estimator, adaptation| Method {
            name,
            strength,
            estimator,
            adaptation,
        };
        let first_order = |rule| {
            Some(EstimatorSpec::FirstOrder(FirstOrder {
                rule,
                free: self.sgd(),
            }))
        };
        Ok(vec![
            method(
                "CML (symmetric)",
                self.strength,
                Some(EstimatorSpec::Contrastive(Contrastive {
                    variant: Variant::Symmetric,
                    beta: self.beta,
                    free,
                    nudged: self.phase(self.nudged_steps)?,
                })),
                free,
            ),
            method(
                "iMAML (CG)",
                self.strength,
                Some(EstimatorSpec::Implicit(Implicit {
                    solver: LinearSolver::ConjugateGradient { steps: 10 },
                    free,
                })),
                free,
            ),
            method(
                "MAML",
                0.0,
                Some(EstimatorSpec::Unrolled(Unrolled {
                    inner: self.sgd(),
                    truncation: None,
                })),
                self.sgd(),
            ),
            method(
                "first-order MAML",
                0.0,
                first_order(FirstOrderRule::FirstOrderMaml),
                self.sgd(),
            ),
            method("Reptile", 0.0, first_order(FirstOrderRule::Reptile), self.sgd()),
            method("no meta-learning", 0.0, None, self.sgd()),
        ])
    }
}

/// One method of the comparison.
#[derive(Debug, Clone)]
pub struct Method {
    pub name: &'static str,
    /// The complex synapse's fixed strength (0: a plain network).
    pub strength: f64,
    /// How `omega` is meta-learned (`None`: not at all).
    pub estimator: Option<EstimatorSpec>,
    /// The inner loop a meta-test episode runs (the estimator's own).
    pub adaptation: GdParams,
}

/// Meta-test accuracy of one method in one setting, over the test episodes.
#[derive(Debug, Clone)]
pub struct Accuracy {
    pub method: String,
    pub shots: usize,
    pub mean: f64,
    /// Half-width of the 95% t-interval over episodes.
    pub ci95: f64,
    /// Meta-test episodes whose adaptation diverged (scored without adaptation).
    pub diverged: usize,
    /// Accuracy on each meta-test episode (the same episodes for every method of a setting).
    pub per_episode: Vec<f64>,
    /// Wall seconds of meta-training (not reproducible; the table only).
    pub meta_seconds: f64,
}

#[derive(Debug, Clone)]
pub struct FewShotResults {
    pub protocol: Protocol,
    pub rows: Vec<Accuracy>,
    /// Meta-training runs that stopped early, and why.
    pub stopped: Vec<String>,
}

/// Stream numbers of the job's seed.
const META_TEST: u64 = 21;
const INIT: u64 = 22;

pub fn run(settings: &Settings, files: &mut Vec<PathBuf>) -> Result<FewShotResults> {
    let protocol = Protocol::new(settings.quick());
    let data = load_digits()?;
    let (train_pool, test_pool) = (
        ClassPool::new(&data, &TRAIN_DIGITS)?,
        ClassPool::new(&data, &TEST_DIGITS)?,
    );
    let net = protocol.net()?;
    let theta0 = net.init(&mut stream(settings.seed, INIT));
    let mut rows = Vec::new();
    let mut curve_rows = Vec::new();
    let mut panels = Vec::new();
    let mut stopped = Vec::new();
    for &shots in &protocol.shots {
        let mut rng = stream(settings.seed, META_TEST + 100 * shots as u64);
        let episodes: Vec<Episode> = (0..protocol.test_episodes)
            .map(|_| test_pool.episode(&mut rng, WAYS, shots, QUERIES))
            .collect::<Result<_>>()?;
        let mut panel = Panel::new(
            format!("{WAYS}-way {shots}-shot digits: meta-training"),
            "meta-step",
            "query cross-entropy",
            false,
            false,
        );
        for (
            i,
            Method {
                name,
                strength,
                estimator,
                adaptation,
            },
        ) in protocol.methods()?.into_iter().enumerate()
        {
            let spec = protocol.synapse(strength)?;
            let build = |e: &Episode, theta: &Vector| -> Result<Box<dyn ProblemInstance>> {
                Ok(Box::new(Synapse::new(spec.clone(), e.clone(), theta)?))
            };
            let (theta, seconds) = match &estimator {
                Some(estimator) => {
                    let run = TaskMetaTraining {
                        estimator,
                        meta_steps: protocol.meta_steps,
                        meta_batch: protocol.meta_batch,
                        meta_lr: protocol.meta_lr,
                        seed: settings.seed,
                        sample: &|rng| train_pool.episode(rng, WAYS, shots, QUERIES),
                        problem: &build,
                    }
                    .run(theta0.clone())?;
                    let (theta, log) = (run.theta, run.log);
                    if let Some(reason) = run.stopped {
                        stopped.push(format!("{name} ({shots}-shot) stopped at {reason}"));
                    }
                    for s in &log {
                        curve_rows.push(format!("{name},{shots},{},{:e}", s.step, s.query_loss));
                    }
                    panel.series.push(Series::new(
                        name,
                        running_mean(&log.iter().map(|s| s.query_loss).collect::<Vec<_>>()),
                        i,
                        Style::Line,
                    ));
                    (theta, log.last().map_or(0.0, |s| s.seconds))
                }
                None => (theta0.clone(), 0.0),
            };
            // An adaptation that diverges is scored at the meta-learned parameters themselves
            // (no adaptation) and counted.
            let scored = map_in_order(&episodes, |e| {
                let problem = Synapse::new(spec.clone(), e.clone(), &theta)?;
                let theta = to_tensor(&theta)?;
                let start = problem.initial_phi(&theta)?;
                let (phi, diverged) = match adaptation.solve(
                    &Oracle::new(&problem),
                    &Phase::new(&start, &theta, 0.0, "adaptation"),
                ) {
                    Ok(s) => (s.phi, false),
                    Err(CmlError::Diverged { .. }) => (start, true),
                    Err(e) => return Err(e),
                };
                let x = candle_core::Tensor::from_vec(
                    e.query.x.clone(),
                    (e.query.len(), 64),
                    &candle_core::Device::Cpu,
                )?;
                Ok((accuracy(&problem.predict(&phi, &x)?, &e.query.labels)?, diverged))
            })?;
            let accuracies: Vec<f64> = scored.iter().map(|s| s.0).collect();
            let diverged = scored.iter().filter(|s| s.1).count();
            let (mean, ci95) = seed_mean_ci(&accuracies);
            rows.push(Accuracy {
                method: name.to_string(),
                shots,
                mean,
                ci95,
                diverged,
                per_episode: accuracies,
                meta_seconds: seconds,
            });
        }
        panels.push(panel);
    }
    write_csv(
        &settings.out.join("few_shot_meta_training.csv"),
        "method,shots,meta_step,query_cross_entropy",
        &curve_rows,
        files,
    )?;
    let acc_rows: Vec<String> = rows
        .iter()
        .map(|r| format!("{},{},{:e},{:e}", r.method, r.shots, r.mean, r.ci95))
        .collect();
    write_csv(
        &settings.out.join("few_shot_accuracy.csv"),
        "method,shots,mean_accuracy,ci95",
        &acc_rows,
        files,
    )?;
    let columns = panels.len();
    save(settings, "few_shot", &Figure { panels, columns }, files)?;
    let results = FewShotResults {
        protocol,
        rows,
        stopped,
    };
    write_table(settings, "few_shot.md", &table(&results), files)?;
    Ok(results)
}

/// The few-shot table, shaped like the paper's: one row per method, one column per setting.
pub fn table(r: &FewShotResults) -> String {
    let p = &r.protocol;
    let mut t = format!(
        "# Few-shot classification on the handwritten digits (Omniglot protocol)\n\n\
         Generated by `cml figures`: classes are (digit, rotation by 0/90/180/270 degrees); meta-training on the 28\n\
         classes of digits 0-6, meta-test on the 12 classes of digits 7-9. {WAYS}-way episodes with {QUERIES} query images\n\
         per class. Network {} (tanh), every weight fast. {} meta-steps of {} episodes (Adam, lr {}). Meta-test\n\
         accuracy over {} episodes, mean +- half-width of the 95% t-interval over episodes.\n\n| method |",
        p.net()
            .map(|n| n.sizes.iter().map(usize::to_string).collect::<Vec<_>>().join("-"))
            .unwrap_or_default(),
        p.meta_steps,
        p.meta_batch,
        p.meta_lr,
        p.test_episodes
    );
    for s in &p.shots {
        t.push_str(&format!(" {WAYS}-way {s}-shot |"));
    }
    t.push_str(&format!("\n|---|{}\n", "---|".repeat(p.shots.len())));
    let mut methods: Vec<&str> = Vec::new();
    for row in &r.rows {
        if !methods.contains(&row.method.as_str()) {
            methods.push(&row.method);
        }
    }
    for m in methods {
        t.push_str(&format!("| {m} |"));
        for s in &p.shots {
            if let Some(a) = r.rows.iter().find(|a| a.method == m && a.shots == *s) {
                t.push_str(&format!(" {:.1}% +- {:.1}% |", 100.0 * a.mean, 100.0 * a.ci95));
            }
        }
        t.push('\n');
    }
    t.push_str(
        "\nMeta-test episodes whose adaptation diverged (scored at the meta-learned parameters, unadapted): ",
    );
    let diverged: Vec<String> = r
        .rows
        .iter()
        .filter(|a| a.diverged > 0)
        .map(|a| format!("{} ({}-shot) {}", a.method, a.shots, a.diverged))
        .collect();
    t.push_str(&super::joined_or_none(&diverged, ", "));
    if !r.stopped.is_empty() {
        t.push_str(&format!(
            ".\n\nMeta-training stopped early (evaluated at its last completed meta-step): {}",
            r.stopped.join("; ")
        ));
    }
    t.push_str(".\n\nMeta-training wall time (this machine, 2 cores): ");
    let times: Vec<String> = r
        .rows
        .iter()
        .filter(|a| a.meta_seconds > 0.0)
        .map(|a| format!("{} ({}-shot) {:.0} s", a.method, a.shots, a.meta_seconds))
        .collect();
    t.push_str(&times.join(", "));
    t.push_str(".\n");
    t
}
