//! The paper's §5.5 on a smaller budget: the networks of greedy bandit agents meta-learned
//! across wheel-bandit tasks (the contrastive rule on the complex synapse and on the gain
//! modulation, and MAML), then run online against the non-meta-learned agents; cumulative regret
//! relative to the uniform policy (docs/BANDIT.md).

use super::plot::{Figure, Panel, Series, Style};
use super::training::{seed_mean_ci, t975};
use super::{Settings, num, running_mean, save, write_csv, write_table};
use crate::bandit::WheelBandit;
use crate::bandit::agents::{
    Agent, Greedy, LinFullPost, NeuralLinear, OnlineLearner, OnlineModel, OnlineParams, Uniform,
};
use crate::bandit::meta::{MetaConfig, initial_theta, meta_train};
use crate::bandit::posterior::Prior;
use crate::bandit::run::{self as bandit_run, RunParams};
use crate::error::Result;
use crate::estimator::{Contrastive, EstimatorSpec, Unrolled, Variant};
use crate::inner::GdParams;
use crate::linalg::Vector;
use crate::model::Mlp;
use crate::optimizer::Optimizer;
use crate::parallel::map_in_order;
use crate::problem::{ModulationSpec, SynapseSpec};
use std::path::PathBuf;

/// The budget of the job (full or `--quick`); the full one is shipped as a config in `configs/`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Protocol {
    pub net: Mlp,
    pub meta_steps: usize,
    pub meta_batch: usize,
    pub meta_lr: f64,
    pub support: usize,
    pub query: usize,
    pub free_steps: usize,
    pub nudged_steps: usize,
    /// Adam's step size in both contrastive phases.
    pub phase_step_size: f64,
    /// The contrastive rule's nudging strength for the complex synapse and the gain modulation.
    pub synapse_beta: f64,
    pub modulation_beta: f64,
    /// The gain modulation's pull toward its meta-learned initial fast parameters.
    pub modulation_strength: f64,
    /// MAML's inner loop: gradient steps and their size.
    pub maml_steps: usize,
    pub maml_step_size: f64,
    pub deltas: Vec<f64>,
    pub seeds: usize,
    pub run: RunParams,
    pub online: OnlineParams,
    /// NeuralLinear retrains its network this often (its posteriors every step).
    pub neural_linear_every: usize,
}

impl Protocol {
    pub fn new(quick: bool) -> Result<Self> {
        let adam = Optimizer::from_name("adam", 0.0)?;
        let full = Protocol {
            net: Mlp::parse("2-50-50-5")?,
            meta_steps: 150,
            meta_batch: 8,
            meta_lr: 3e-3,
            support: 512,
            query: 50,
            free_steps: 200,
            nudged_steps: 100,
            phase_step_size: 1e-3,
            synapse_beta: 0.3,
            modulation_beta: 1.0,
            modulation_strength: 1.0,
            maml_steps: 10,
            maml_step_size: 0.01,
            deltas: vec![0.5, 0.7, 0.9, 0.95, 0.99],
            seeds: 10,
            run: RunParams {
                steps: 4000,
                initial_pulls: 2,
            },
            online: OnlineParams {
                every: 50,
                updates: 50,
                batch: 256,
                step_size: 1e-3,
                optimizer: adam,
            },
            neural_linear_every: 20,
        };
        Ok(if quick {
            Protocol {
                net: Mlp::parse("2-8-8-5")?,
                meta_steps: 2,
                meta_batch: 2,
                support: 64,
                query: 16,
                free_steps: 20,
                nudged_steps: 10,
                deltas: vec![0.5, 0.95],
                seeds: 2,
                run: RunParams {
                    steps: 200,
                    ..full.run
                },
                online: OnlineParams {
                    updates: 10,
                    batch: 64,
                    ..full.online
                },
                ..full
            }
        } else {
            full
        })
    }

    /// The complex synapse's fixed strength: the paper's penalty `1000 mean_i (phi_i - omega_i)^2`
    /// written as `lambda/2 sum_i (phi_i - omega_i)^2`, so `lambda = 2000 / P`.
    pub fn synapse_strength(&self) -> f64 {
        2000.0 / self.net.param_count() as f64
    }

    fn adam(&self, steps: usize) -> Result<GdParams> {
        Ok(GdParams {
            step_size: Some(self.phase_step_size),
            max_steps: steps,
            optimizer: Optimizer::from_name("adam", 0.0)?,
            ..GdParams::default()
        })
    }

    /// The meta-learned models: name, model, estimator.
    pub fn meta_learners(&self) -> Result<Vec<(&'static str, OnlineModel, EstimatorSpec)>> {
        let contrastive = |beta| -> Result<EstimatorSpec> {
            Ok(EstimatorSpec::Contrastive(Contrastive {
                variant: Variant::Standard,
                beta,
                free: self.adam(self.free_steps)?,
                nudged: self.adam(self.nudged_steps)?,
            }))
        };
        Ok(vec![
            (
                "CML complex synapse",
                OnlineModel::Synapse(SynapseSpec {
                    net: self.net.clone(),
                    per_synapse: false,
                    strength: self.synapse_strength(),
                    fixed_strength: true,
                }),
                contrastive(self.synapse_beta)?,
            ),
            (
                "CML gain modulation",
                OnlineModel::Modulation(ModulationSpec {
                    net: self.net.clone(),
                    strength: self.modulation_strength,
                }),
                contrastive(self.modulation_beta)?,
            ),
            (
                "MAML",
                self.plain(),
                EstimatorSpec::Unrolled(Unrolled {
                    inner: GdParams {
                        step_size: Some(self.maml_step_size),
                        max_steps: self.maml_steps,
                        ..GdParams::default()
                    },
                    truncation: None,
                }),
            ),
        ])
    }

    /// A plain network: every weight fast, no pull (the synapse at strength 0).
    fn plain(&self) -> OnlineModel {
        OnlineModel::Synapse(SynapseSpec {
            net: self.net.clone(),
            per_synapse: false,
            strength: 0.0,
            fixed_strength: true,
        })
    }
}

/// Normalised cumulative regret of one agent at one delta, over seeds.
#[derive(Debug, Clone)]
pub struct Cell {
    pub per_seed: Vec<f64>,
    pub mean: f64,
    /// Standard error of the mean over seeds.
    pub se: f64,
}

/// One agent's lead over another at one delta, paired over seeds (same contexts and rewards).
#[derive(Debug, Clone)]
pub struct Lead {
    pub delta: f64,
    pub better: String,
    pub worse: String,
    /// Mean over seeds of (worse - better) normalised regret and its 95% t-interval half-width.
    pub mean: f64,
    pub ci95: f64,
}

#[derive(Debug, Clone)]
pub struct BanditResults {
    pub protocol: Protocol,
    pub agents: Vec<String>,
    /// `[agent][delta]`.
    pub cells: Vec<Vec<Cell>>,
    /// At each delta, the best meta-learned agent against the best baseline.
    pub leads: Vec<Lead>,
    /// Meta-training wall seconds per model (not reproducible; the write-up only).
    pub meta_seconds: Vec<(String, f64)>,
    pub eval_seconds: f64,
    /// The delta of the regret-vs-time figure.
    pub curve_delta: f64,
    /// Per agent: online retrainings rejected by the divergence rule, over all runs.
    pub rejected: Vec<usize>,
    /// Online retrainings per run of a network agent (NeuralLinear's differ).
    pub retrainings_per_run: usize,
    /// Meta-training runs that stopped early, and why.
    pub stopped: Vec<String>,
}

const BASELINES: usize = 4;
/// Stream offset of the evaluation seeds, apart from the meta-training seed.
const EVAL_SEED: u64 = 1000;

pub fn run(settings: &Settings, files: &mut Vec<PathBuf>) -> Result<BanditResults> {
    let protocol = Protocol::new(settings.quick())?;
    let learners = protocol.meta_learners()?;
    let mut meta_rows = Vec::new();
    let mut meta_seconds = Vec::new();
    let mut stopped = Vec::new();
    let mut trained: Vec<(String, OnlineModel, Vector)> = Vec::new();
    let mut meta_panel = Panel::new(
        "meta-training on wheel-bandit tasks",
        "meta-step",
        "query loss (masked MSE)",
        false,
        false,
    );
    for (i, (name, model, estimator)) in learners.iter().enumerate() {
        let config = MetaConfig {
            model: model.clone(),
            estimator: *estimator,
            meta_steps: protocol.meta_steps,
            meta_batch: protocol.meta_batch,
            meta_lr: protocol.meta_lr,
            support: protocol.support,
            query: protocol.query,
            seed: settings.seed,
        };
        let run = meta_train(&config)?;
        let (theta, log) = (run.theta, run.log);
        if let Some(reason) = run.stopped {
            stopped.push(format!("{name} stopped at {reason}"));
        }
        meta_seconds.push((name.to_string(), log.last().map_or(0.0, |s| s.seconds)));
        for s in &log {
            meta_rows.push(format!("{name},{},{:e}", s.step, s.query_loss));
        }
        meta_panel.series.push(Series::new(
            *name,
            running_mean(&log.iter().map(|s| s.query_loss).collect::<Vec<_>>()),
            BASELINES + i,
            Style::Line,
        ));
        trained.push((name.to_string(), model.clone(), theta));
    }
    write_csv(
        &settings.out.join("bandit_meta_training.csv"),
        "model,meta_step,query_loss",
        &meta_rows,
        files,
    )?;

    let mut agents: Vec<String> = [
        "uniform",
        "LinFullPost",
        "NeuralLinear",
        "greedy network, no meta-learning",
    ]
    .map(String::from)
    .to_vec();
    agents.extend(trained.iter().map(|t| t.0.clone()));
    let runs: Vec<(f64, u64)> = protocol
        .deltas
        .iter()
        .flat_map(|&d| (0..protocol.seeds as u64).map(move |s| (d, s)))
        .collect();
    let clock = std::time::Instant::now();
    // Per (delta, seed): every agent's cumulative regret curve.
    let curves = map_in_order(&runs, |&(delta, seed)| {
        let bandit = WheelBandit::new(delta)?;
        let run_seed = crate::rng::hash_words(&[settings.seed, EVAL_SEED, seed]);
        let plain = protocol.plain();
        let random_init = initial_theta(&plain, run_seed)?;
        let features = protocol.net.sizes[protocol.net.sizes.len() - 2];
        let mut list: Vec<Box<dyn Agent>> = vec![
            Box::new(Uniform),
            Box::new(LinFullPost::new(LINEAR_PRIOR)?),
            Box::new(NeuralLinear::new(
                OnlineLearner::new(
                    plain.clone(),
                    random_init.clone(),
                    OnlineParams {
                        every: protocol.neural_linear_every,
                        ..protocol.online
                    },
                )?,
                features,
                NEURAL_LINEAR_PRIOR,
            )?),
            Box::new(Greedy {
                learner: OnlineLearner::new(plain, random_init, protocol.online)?,
            }),
        ];
        for (_, model, theta) in &trained {
            list.push(Box::new(Greedy {
                learner: OnlineLearner::new(model.clone(), theta.clone(), protocol.online)?,
            }));
        }
        list.iter_mut()
            .map(|agent| {
                let regret = bandit_run::run(&bandit, agent.as_mut(), &protocol.run, run_seed)?.1;
                Ok((regret, agent.rejected_updates()))
            })
            .collect::<Result<Vec<(Vec<f64>, usize)>>>()
    })?;
    let rejected: Vec<usize> = (0..agents.len())
        .map(|a| curves.iter().map(|c| c[a].1).sum())
        .collect();
    let curves: Vec<Vec<Vec<f64>>> = curves
        .into_iter()
        .map(|c| c.into_iter().map(|(r, _)| r).collect())
        .collect();
    let eval_seconds = clock.elapsed().as_secs_f64();

    let steps = protocol.run.steps;
    let mut rows = Vec::new();
    let mut cells: Vec<Vec<Cell>> = vec![Vec::new(); agents.len()];
    for &delta in &protocol.deltas {
        let uniform_total = WheelBandit::new(delta)?.uniform_regret_per_step() * steps as f64;
        for (a, name) in agents.iter().enumerate() {
            let per_seed: Vec<f64> = runs
                .iter()
                .zip(&curves)
                .filter(|((d, _), _)| *d == delta)
                .map(|(_, c)| c[a][steps - 1] / uniform_total)
                .collect();
            for (seed, v) in per_seed.iter().enumerate() {
                rows.push(format!("{name},{delta},{seed},{:e},{v:e}", v * uniform_total));
            }
            let (mean, ci) = seed_mean_ci(&per_seed);
            cells[a].push(Cell {
                se: ci / t975(per_seed.len() - 1),
                per_seed,
                mean,
            });
        }
    }
    write_csv(
        &settings.out.join("bandit_regret.csv"),
        "agent,delta,seed,cumulative_regret,normalised_regret",
        &rows,
        files,
    )?;

    // At each delta: the best meta-learned agent against the best baseline, paired over seeds.
    let mut leads = Vec::new();
    for (d, &delta) in protocol.deltas.iter().enumerate() {
        let best = |range: std::ops::Range<usize>| {
            range
                .min_by(|&a, &b| cells[a][d].mean.total_cmp(&cells[b][d].mean))
                .expect("agents")
        };
        let (meta, base) = (best(BASELINES..agents.len()), best(0..BASELINES));
        let (better, worse) = if cells[meta][d].mean <= cells[base][d].mean {
            (meta, base)
        } else {
            (base, meta)
        };
        let diffs: Vec<f64> = cells[worse][d]
            .per_seed
            .iter()
            .zip(&cells[better][d].per_seed)
            .map(|(w, b)| w - b)
            .collect();
        let (mean, ci95) = seed_mean_ci(&diffs);
        leads.push(Lead {
            delta,
            better: agents[better].clone(),
            worse: agents[worse].clone(),
            mean,
            ci95,
        });
    }

    // Regret against time at one delta (the hardest shown in the paper's table with a visible
    // rim): mean cumulative regret over seeds with a +-1 standard error band.
    let curve_delta = protocol.deltas[protocol.deltas.len().saturating_sub(2)];
    let stride = (steps / 80).max(1);
    let mut time_rows = Vec::new();
    let mut time_panel = Panel::new(
        format!("wheel bandit, delta = {curve_delta}"),
        "step",
        "cumulative regret",
        false,
        false,
    );
    for (a, name) in agents.iter().enumerate() {
        let at_delta: Vec<&Vec<f64>> = runs
            .iter()
            .zip(&curves)
            .filter(|((d, _), _)| *d == curve_delta)
            .map(|(_, c)| &c[a])
            .collect();
        let mut points = Vec::new();
        let mut band = Vec::new();
        for t in (stride - 1..steps).step_by(stride) {
            let values: Vec<f64> = at_delta.iter().map(|c| c[t]).collect();
            let (mean, ci) = seed_mean_ci(&values);
            let se = ci / t975(values.len() - 1);
            time_rows.push(format!("{name},{},{mean:e},{se:e}", t + 1));
            points.push(((t + 1) as f64, mean));
            band.push(((t + 1) as f64, mean - se, mean + se));
        }
        let mut series = Series::new(name.clone(), points, a, Style::Line);
        series.band = band;
        time_panel.series.push(series);
    }
    write_csv(
        &settings.out.join("bandit_regret_vs_time.csv"),
        "agent,step,mean_cumulative_regret,standard_error",
        &time_rows,
        files,
    )?;
    save(
        settings,
        "bandit_regret",
        &Figure {
            panels: vec![time_panel, meta_panel],
            columns: 2,
        },
        files,
    )?;

    let retrainings_per_run = steps / protocol.online.every;
    let results = BanditResults {
        protocol,
        agents,
        cells,
        leads,
        meta_seconds,
        eval_seconds,
        curve_delta,
        rejected,
        retrainings_per_run,
        stopped,
    };
    write_table(settings, "bandit.md", &table(&results), files)?;
    Ok(results)
}

/// LinFullPost's prior (the bandit showdown's defaults for the linear agent).
pub const LINEAR_PRIOR: Prior = Prior {
    a0: 6.0,
    b0: 6.0,
    lambda: 0.25,
};
/// NeuralLinear's prior (the paper's code).
pub const NEURAL_LINEAR_PRIOR: Prior = Prior {
    a0: 12.0,
    b0: 30.0,
    lambda: 23.0,
};

/// The Markdown table: normalised cumulative regret, mean +- standard error over seeds.
pub fn table(r: &BanditResults) -> String {
    let p = &r.protocol;
    let mut t = format!(
        "# Wheel bandit: cumulative regret relative to the uniform policy\n\n\
         Generated by `cml figures`: {} contexts per run, {} seeds per delta (the same contexts and reward\n\
         noise for every agent of a seed); mean +- standard error over seeds of the cumulative regret divided\n\
         by the uniform policy's expected cumulative regret (lower is better; uniform = 1). Networks {}\n\
         (tanh); meta-training: {} meta-steps of {} tasks ({} support, {} query pulls, delta ~ U(0, 1)).\n\n| agent |",
        p.run.steps,
        p.seeds,
        p.net
            .sizes
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("-"),
        p.meta_steps,
        p.meta_batch,
        p.support,
        p.query
    );
    for d in &p.deltas {
        t.push_str(&format!(" delta = {d} |"));
    }
    t.push_str("\n|---|");
    t.push_str(&"---|".repeat(p.deltas.len()));
    t.push('\n');
    for (a, name) in r.agents.iter().enumerate() {
        t.push_str(&format!("| {name} |"));
        for c in &r.cells[a] {
            t.push_str(&format!(" {} +- {} |", num(c.mean), num(c.se)));
        }
        t.push('\n');
    }
    let rejected: Vec<String> = r
        .agents
        .iter()
        .zip(&r.rejected)
        .filter(|(_, n)| **n > 0)
        .map(|(a, n)| format!("{a} {n}"))
        .collect();
    t.push_str(&format!(
        "\nOnline retrainings rejected by the divergence rule (the agent kept its weights), over all {} runs \
         ({} retrainings per run for the greedy networks, {} for NeuralLinear): {}.\n",
        p.deltas.len() * p.seeds,
        r.retrainings_per_run,
        p.run.steps / p.neural_linear_every,
        super::joined_or_none(&rejected, ", ")
    ));
    t.push_str(&super::stopped_note(&r.stopped));
    t.push_str("\nBest meta-learned agent against the best non-meta-learned one, paired over seeds (95% t-interval):\n\n");
    for l in &r.leads {
        t.push_str(&format!("- delta = {}: {}\n", l.delta, lead_sentence(l)));
    }
    t
}

/// A verdict computed from the paired difference: significant only if the interval excludes 0.
pub fn lead_sentence(l: &Lead) -> String {
    let verdict = if l.mean - l.ci95 > 0.0 {
        "the interval excludes 0"
    } else {
        "the interval includes 0: no significant difference"
    };
    format!(
        "{} has lower mean regret than {}, by {} +- {} ({verdict})",
        l.better,
        l.worse,
        num(l.mean),
        num(l.ci95)
    )
}
