//! The paper's §5.5 on a smaller budget: the networks of greedy bandit agents meta-learned
//! across wheel-bandit tasks (the contrastive rule on the complex synapse and on the gain
//! modulation, and MAML), then run online against the non-meta-learned agents; cumulative regret
//! relative to the uniform policy (docs/BANDIT.md).

use super::chain::Chain;
use super::choice::{BetaSearchSpec, CheckpointSpec, RateSearchSpec, Search, Ties, at_beta, whole_steps};
use super::training::{ALPHA, t975};
use super::units::Scale;
use super::{Settings, num, running_mean, save, write_csv, write_table};
use crate::bandit::WheelBandit;
use crate::bandit::agents::{
    Agent, Greedy, LinFullPost, NeuralLinear, OnlineLearner, OnlineModel, OnlineParams, Uniform,
};
use crate::bandit::posterior::Prior;
use crate::bandit::run::{self as bandit_run, RunParams};
use crate::error::Result;
use crate::estimator::{Contrastive, EstimatorSpec, Unrolled, Variant};
use crate::experiments::bandit_meta::{MetaConfig, initial_theta, meta_train};
use crate::inner::GdParams;
use crate::linalg::Vector;
use crate::mlp::Mlp;
use crate::optimizer::Optimizer;
use crate::parallel::map_in_order;
use crate::problem::{ModulationSpec, SynapseSpec};
use crate::report::plot::{Figure, Panel, Series, Style};
use crate::report::template::Context;
use crate::stats::{self, Comparison};
use std::path::PathBuf;

/// The budget of the job (full or `--quick`); the full one is shipped as a config in `configs/`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
    /// The contrastive rule's nudging strength for the complex synapse and the gain modulation
    /// where neither a search (`beta_search`) nor an agent's own budget sets it.
    pub synapse_beta: f64,
    pub modulation_beta: f64,
    /// The gain modulation's pull toward its meta-learned initial fast parameters.
    pub modulation_strength: f64,
    /// MAML's inner loop: gradient steps and their size.
    pub maml_steps: usize,
    pub maml_step_size: f64,
    pub deltas: Vec<f64>,
    /// Independent meta-training seeds, and evaluation runs per seed and delta.
    pub meta_seeds: usize,
    pub runs_per_seed: usize,
    pub run: RunParams,
    pub online: OnlineParams,
    /// NeuralLinear retrains its network this often (its posteriors every step).
    pub neural_linear_every: usize,
    /// Each meta-learned agent's own budgets where they are not the shared ones above (the
    /// paper's code sets them per agent), in [`Protocol::meta_learners`] order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_learner: Option<Vec<LearnerBudget>>,
    /// The contrastive agents' `beta`, chosen on validation tasks (quick and default scales; the
    /// paper scale takes the paper's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta_search: Option<BetaSearchSpec>,
    /// Each meta-learned agent's outer Adam step size, chosen on validation tasks (the contrastive
    /// agents at their searched `beta`; quick and default scales, the paper scale takes the
    /// paper's per agent): a whole meta-training at each value from an initialisation and task
    /// stream of the search's own, scored by the validation tasks' query loss after the agent's
    /// own adaptation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta_lr_search: Option<RateSearchSpec>,
    /// The contrastive agents' phase step size (`phase_step_size`, both phases), chosen on
    /// validation tasks after the outer step size's search and at its choice, as that search
    /// chooses (quick and default scales; the paper scale takes each agent's own phases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_step_size_search: Option<RateSearchSpec>,
    /// MAML's inner step size (`maml_step_size`: meta-training, its own deployment and that
    /// deployment's matched baseline), chosen as `phase_step_size_search` chooses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maml_step_size_search: Option<RateSearchSpec>,
    /// The contrastive agents' nudged budget (`nudged_steps`), chosen on validation tasks last, at
    /// every earlier choice, as `phase_step_size_search` chooses but with ties to the smaller
    /// budget (the smallest within one standard error of the least loss: a larger one costs more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nudged_steps_search: Option<RateSearchSpec>,
    /// Which meta-step a meta-learned agent deploys, chosen on validation tasks (quick and
    /// default scales; the paper's code deploys the last, and so does the paper scale).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSpec>,
}

/// The whole-run searches of the protocol, which may score on several search streams.
const POOLED: [&str; 4] = [
    "meta_lr_search",
    "phase_step_size_search",
    "maml_step_size_search",
    "nudged_steps_search",
];

impl crate::protocol::Checked for Protocol {
    fn left_out_at_default() -> Vec<(String, serde_json::Value)> {
        super::choice::streams_left_out(&POOLED)
    }

    fn check(&self) -> Result<()> {
        let mut c = crate::protocol::Checks::new("bandit");
        c.sizes("net.sizes", &self.net.sizes)
            .count("meta_steps", self.meta_steps)
            .count("meta_batch", self.meta_batch)
            .positive("meta_lr", self.meta_lr)
            .count("support", self.support)
            .count("query", self.query)
            .count("free_steps", self.free_steps)
            .count("nudged_steps", self.nudged_steps)
            .positive("phase_step_size", self.phase_step_size)
            .positive("synapse_beta", self.synapse_beta)
            .positive("modulation_beta", self.modulation_beta)
            .positive("modulation_strength", self.modulation_strength)
            .count("maml_steps", self.maml_steps)
            .positive("maml_step_size", self.maml_step_size)
            .that(
                !self.deltas.is_empty() && self.deltas.iter().all(|d| (0.0..1.0).contains(d)),
                "deltas",
                format!("{:?}", self.deltas),
                "at least one, each in [0, 1)",
            )
            .seeds("meta_seeds", self.meta_seeds)
            .count("runs_per_seed", self.runs_per_seed)
            .count("run.steps", self.run.steps)
            .count("online.every", self.online.every)
            .count("online.updates", self.online.updates)
            .count("online.batch", self.online.batch)
            .positive("online.step_size", self.online.step_size)
            .count("neural_linear_every", self.neural_linear_every);
        c.beta_search("beta_search", self.beta_search.as_ref())
            .pooled_search("meta_lr_search", self.meta_lr_search.as_ref())
            .pooled_search("phase_step_size_search", self.phase_step_size_search.as_ref())
            .pooled_search("maml_step_size_search", self.maml_step_size_search.as_ref())
            .pooled_search("nudged_steps_search", self.nudged_steps_search.as_ref());
        // The searches set the shared phases; budgets of the agents' own set theirs.
        for (key, search) in [
            ("phase_step_size_search", self.phase_step_size_search.is_some()),
            ("nudged_steps_search", self.nudged_steps_search.is_some()),
        ] {
            c.that(
                !search || self.per_learner.is_none(),
                key,
                "a search beside per_learner budgets (whose phases it would not set)",
                &format!("no {key} where per_learner sets the phases"),
            );
        }
        c.checkpoint("checkpoint", self.checkpoint.as_ref());
        const AGENTS: [&str; 3] = ["CML complex synapse", "CML gain modulation", "MAML"];
        for (k, b) in self.per_learner.iter().flatten().enumerate() {
            let contrastive = b.name.starts_with("CML");
            c.that(
                AGENTS.contains(&b.name.as_str()),
                &format!("per_learner[{k}].name"),
                &b.name,
                &format!("one of {}", AGENTS.join(", ")),
            )
            .that(
                !contrastive || (b.free.is_some() && b.nudged.is_some()),
                &format!("per_learner[{k}] ({})", b.name),
                "no free or nudged phase",
                "a contrastive agent's free and nudged phases",
            )
            .count(&format!("per_learner[{k}].meta_steps"), b.meta_steps)
            .count(&format!("per_learner[{k}].meta_batch"), b.meta_batch)
            .positive(&format!("per_learner[{k}].meta_lr"), b.meta_lr)
            .positive(&format!("per_learner[{k}].online.step_size"), b.online.step_size);
        }
        c.done()
    }
}

/// One meta-learned agent's budgets: its meta-training, its contrastive phases (none for MAML)
/// and its online loop.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LearnerBudget {
    pub name: String,
    pub meta_steps: usize,
    pub meta_batch: usize,
    pub meta_lr: f64,
    pub beta: Option<f64>,
    pub free: Option<GdParams>,
    pub nudged: Option<GdParams>,
    pub online: OnlineParams,
}

impl Protocol {
    /// The budgets of the scale, as shipped: `configs/quick/bandit.toml`, `configs/bandit.toml` or
    /// the paper's `configs/paper/bandit.toml`.
    pub fn at(scale: Scale) -> Result<Self> {
        shipped_protocol!(scale, "bandit")
    }

    /// The protocol of `settings`' scale with the user's changes (`--protocol bandit=FILE`).
    pub fn of(settings: &Settings) -> Result<Self> {
        crate::protocol::configured("bandit", Self::at(settings.scale)?, settings)
    }

    /// The budgets of the meta-learned agent `name`: its own where the protocol sets them, else
    /// the shared ones.
    fn budget_of(&self, name: &str) -> Result<LearnerBudget> {
        if let Some(b) = self.per_learner.iter().flatten().find(|b| b.name == name) {
            return Ok(b.clone());
        }
        Ok(LearnerBudget {
            name: "shared".into(),
            meta_steps: self.meta_steps,
            meta_batch: self.meta_batch,
            meta_lr: self.meta_lr,
            beta: None,
            free: Some(self.adam(self.free_steps)?),
            nudged: Some(self.adam(self.nudged_steps)?),
            online: self.online,
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
        let contrastive = |name: &str, beta: f64| -> Result<EstimatorSpec> {
            let b = self.budget_of(name)?;
            let phases = b.free.zip(b.nudged).expect("a contrastive agent's phases");
            Ok(EstimatorSpec::Contrastive(Contrastive {
                variant: Variant::Standard,
                beta: b.beta.unwrap_or(beta),
                free: phases.0,
                nudged: phases.1,
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
                contrastive("CML complex synapse", self.synapse_beta)?,
            ),
            (
                "CML gain modulation",
                OnlineModel::Modulation(ModulationSpec {
                    net: self.net.clone(),
                    strength: self.modulation_strength,
                }),
                contrastive("CML gain modulation", self.modulation_beta)?,
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

    /// This protocol with the inner step size of the meta-learned agent `name` at `step_size`: the
    /// shared phases' for a contrastive agent, MAML's loop's for MAML.
    fn at_step_size(&self, name: &str, step_size: f64) -> Self {
        if name == MAML_OWN {
            Protocol {
                maml_step_size: step_size,
                ..self.clone()
            }
        } else {
            Protocol {
                phase_step_size: step_size,
                ..self.clone()
            }
        }
    }

    /// This protocol with the contrastive agents' shared nudged phases at `steps` steps.
    fn at_nudged_steps(&self, steps: usize) -> Self {
        Protocol {
            nudged_steps: steps,
            ..self.clone()
        }
    }

    /// The inner step-size search of the meta-learned agent `name`, if the protocol has one.
    fn step_size_search_of(&self, name: &str) -> Option<&RateSearchSpec> {
        if name == MAML_OWN {
            self.maml_step_size_search.as_ref()
        } else {
            self.phase_step_size_search.as_ref()
        }
    }

    /// How the meta-learned agent `name` is deployed, each deployment labelled: with its budget's
    /// online loop; MAML also with the inner loop it was meta-trained through, under its own name.
    fn deployments(&self, name: &str) -> Result<Vec<(String, OnlineParams)>> {
        let online = self.budget_of(name)?.online;
        Ok(if name == MAML_OWN {
            vec![
                (
                    MAML_OWN.into(),
                    OnlineParams {
                        updates: self.maml_steps,
                        step_size: self.maml_step_size,
                        optimizer: Optimizer::GradientDescent,
                        ..online
                    },
                ),
                (MAML_COMMON.into(), online),
            ]
        } else {
            vec![(name.to_string(), online)]
        })
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

/// Normalised cumulative regret of one agent at one delta, over meta-training seeds (each the
/// mean over that seed's evaluation runs).
#[derive(Debug, Clone)]
pub struct Cell {
    pub per_seed: Vec<f64>,
    pub mean: f64,
    /// Half-width of the 95% t-interval over meta-training seeds.
    pub ci95: f64,
}

/// A meta-learned agent against a reference at one delta, paired over meta-training seeds.
#[derive(Debug, Clone)]
pub struct BanditComparison {
    pub delta: f64,
    pub agent: String,
    pub reference: String,
    /// Of (agent - reference) normalised regret: negative favours the agent.
    pub comparison: Comparison,
}

#[derive(Debug, Clone)]
pub struct BanditResults {
    pub protocol: Protocol,
    pub agents: Vec<String>,
    /// `[agent][delta]`.
    pub cells: Vec<Vec<Cell>>,
    pub comparisons: Vec<BanditComparison>,
    /// Each meta-learned deployment against its matched baseline ([`TWINS`]), one family.
    pub matched: Vec<BanditComparison>,
    /// Meta-training wall seconds per model, mean over seeds (not reproducible).
    pub meta_seconds: Vec<(String, f64)>,
    /// Evaluation wall seconds, summed over the units (not reproducible).
    pub eval_seconds: f64,
    /// The delta of the regret-vs-time figure.
    pub curve_delta: f64,
    /// Per agent: online retrainings rejected by the divergence rule, over all runs.
    pub rejected: Vec<usize>,
    /// Online retrainings per run of a network agent (NeuralLinear's differ).
    pub retrainings_per_run: usize,
    /// Meta-training runs that stopped early, and why.
    pub stopped: Vec<String>,
    /// The contrastive agents' beta searches (none at the paper scale).
    pub searches: Vec<Search>,
    /// The meta-learned agents' outer step-size searches (none at the paper scale).
    pub rate_searches: Vec<Search>,
    /// The meta-learned agents' inner step-size searches (none at the paper scale).
    pub step_size_searches: Vec<Search>,
    /// The contrastive agents' nudged budget searches (none at the paper scale).
    pub nudged_steps_searches: Vec<Search>,
    /// (model, seed, meta-step) each meta-training run deployed, where validation tasks chose it.
    pub deployed: Vec<(String, usize, usize)>,
}

impl BanditResults {
    /// MAML's inner step size as its search chose it, if it was searched.
    pub fn maml_step_search(&self) -> Option<&Search> {
        self.step_size_searches.iter().find(|x| x.model == MAML_OWN)
    }

    /// The step size MAML's inner loop ran: its search's choice, else the protocol's.
    pub fn maml_step_size(&self) -> f64 {
        self.maml_step_search()
            .map_or(self.protocol.maml_step_size, |x| x.chosen)
    }
}

/// Stream offsets of the evaluation runs and of the meta-training seeds.
const EVAL_SEED: u64 = 1000;
const META_SEED: u64 = 2000;
/// The non-meta-learned agents, evaluated together in one unit per seed.
const BASELINE_AGENTS: [&str; 4] = [
    "uniform",
    "LinFullPost",
    "NeuralLinear",
    "greedy network without meta-learning",
];
const BASELINES: &str = "baselines";
/// MAML deployed as it was meta-trained, and with the online loop the other networks use.
const MAML_OWN: &str = "MAML";
const MAML_COMMON: &str = "MAML (common online loop)";

/// Each meta-learned deployment's matched baseline: the same model, deployed with the same online
/// loop from the initialisation its meta-training started from, not meta-learned. MAML with the
/// common loop has the greedy network for its twin (the plain model, that loop, a random
/// initialisation).
const TWINS: [(&str, &str); 4] = [
    ("CML complex synapse", "complex synapse without meta-learning"),
    ("CML gain modulation", "gain modulation without meta-learning"),
    (MAML_OWN, "network without meta-learning (MAML's loop)"),
    (MAML_COMMON, "greedy network without meta-learning"),
];

/// The untrained twin of the deployment `agent` (see [`TWINS`]).
fn twin_of(agent: &str) -> Option<&'static str> {
    TWINS.iter().find(|(a, _)| *a == agent).map(|(_, t)| *t)
}

/// The meta-training seed of seed index `m` (the same for every model).
fn meta_seed(settings: &Settings, m: usize) -> u64 {
    crate::rng::hash_words(&[settings.seed, META_SEED, m as u64])
}

/// Two agents' normalised regrets are equivalent within this fraction of their mean (fixed before
/// any run; docs/PROTOCOL.md).
pub const EQUIVALENCE_MARGIN: f64 = 0.1;

/// The job: one unit per meta-learned model and meta-training seed (meta-training, then its
/// agents' runs on that seed's evaluation runs), and one per seed for the baselines.
pub(super) struct Bandit;
pub(super) static BANDIT: Bandit = Bandit;

fn key(name: &str) -> String {
    name.to_lowercase().replace(' ', "-")
}

fn unit_name(key: &str, seed: usize) -> String {
    format!("{key}-seed{seed}")
}

/// Every unit: (model key or `baselines`, meta-training seed index).
fn unit_list(p: &Protocol) -> Result<Vec<(String, usize)>> {
    let mut keys: Vec<String> = p.meta_learners()?.iter().map(|l| key(l.0)).collect();
    keys.push(BASELINES.into());
    Ok(keys
        .iter()
        .flat_map(|k| (0..p.meta_seeds).map(move |m| (k.clone(), m)))
        .collect())
}

/// The job's validation searches, in the order they run (docs/PROTOCOL.md): the contrastive
/// agents' `beta`, every meta-learned agent's outer step size, the inner step sizes (the
/// contrastive agents' phases', MAML's loop's: one unit name, two protocol keys) and the
/// contrastive agents' nudged budget.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Choice {
    Beta,
    MetaLr,
    PhaseStep,
    MamlStep,
    NudgedSteps,
}

/// A meta-learned agent, with the protocol and what the searches so far chose for it.
#[derive(Debug, Clone)]
struct Subject {
    p: Protocol,
    name: &'static str,
    contrastive: bool,
    beta: Option<f64>,
    meta_lr: Option<f64>,
    step_size: Option<f64>,
    nudged_steps: Option<usize>,
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
            Choice::PhaseStep,
            Choice::MamlStep,
            Choice::NudgedSteps,
        ]
    }

    fn key(&self, choice: Choice) -> &'static str {
        match choice {
            Choice::Beta => "beta_search",
            Choice::MetaLr => "meta_lr_search",
            Choice::PhaseStep => "phase_step_size_search",
            Choice::MamlStep => "maml_step_size_search",
            Choice::NudgedSteps => "nudged_steps_search",
        }
    }

    fn unit(&self, choice: Choice, s: &Subject) -> Option<String> {
        let p = &s.p;
        let (searched, takes, prefix) = match choice {
            Choice::Beta => (p.beta_search.is_some(), s.contrastive, "choice-"),
            Choice::MetaLr => (p.meta_lr_search.is_some(), true, "choice-meta-lr-"),
            Choice::PhaseStep => (
                p.step_size_search_of(s.name).is_some(),
                s.contrastive,
                STEP_SIZE_UNIT,
            ),
            Choice::MamlStep => (
                p.step_size_search_of(s.name).is_some(),
                !s.contrastive,
                STEP_SIZE_UNIT,
            ),
            Choice::NudgedSteps => (p.nudged_steps_search.is_some(), s.contrastive, NUDGED_STEPS_UNIT),
        };
        (searched && takes).then(|| format!("{prefix}{}", key(s.name)))
    }

    fn search(&self, settings: &Settings, choice: Choice, s: &Subject) -> Result<Option<Search>> {
        let (p, name) = (&s.p, s.name);
        match choice {
            Choice::Beta => choose_beta(settings, p, name).map(Some),
            Choice::MetaLr => choose_meta_lr(settings, p, name, s.beta),
            Choice::PhaseStep | Choice::MamlStep => choose_step_size(settings, p, name, s.beta, s.meta_lr),
            Choice::NudgedSteps => choose_nudged_steps(settings, p, name, s.beta, s.meta_lr, s.step_size),
        }
    }

    fn apply(&self, choice: Choice, s: Subject, value: f64) -> Subject {
        match choice {
            Choice::Beta => Subject {
                beta: Some(value),
                ..s
            },
            Choice::MetaLr => Subject {
                meta_lr: Some(value),
                ..s
            },
            Choice::PhaseStep | Choice::MamlStep => Subject {
                step_size: Some(value),
                ..s
            },
            Choice::NudgedSteps => Subject {
                nudged_steps: Some(whole_steps(value)),
                ..s
            },
        }
    }
}

/// Every meta-learned agent, unsearched.
fn subjects(p: &Protocol) -> Result<Vec<Subject>> {
    Ok(p.meta_learners()?
        .into_iter()
        .map(|(name, _, spec)| Subject {
            p: p.clone(),
            name,
            contrastive: matches!(spec, EstimatorSpec::Contrastive(_)),
            beta: None,
            meta_lr: None,
            step_size: None,
            nudged_steps: None,
        })
        .collect())
}

/// The prefix of an inner step-size search's unit name.
const STEP_SIZE_UNIT: &str = "choice-step-size-";

/// The prefix of a nudged budget search's unit name.
const NUDGED_STEPS_UNIT: &str = "choice-nudged-steps-";

/// Stream words of the searches' own seeds (initialisation, task stream, validation tasks).
const CHOICE: u64 = 4000;
const RATE_CHOICE: u64 = 5000;
const STEP_SIZE_CHOICE: u64 = 7000;
const NUDGED_STEPS_CHOICE: u64 = 8000;
/// Stream word of each meta-training seed's validation tasks (the checkpoint choice).
const CHECKPOINT: u64 = 6000;

/// Chooses the contrastive agent `name`'s `beta` on validation tasks (`super::choice`): from an
/// initialisation and task stream of the search's own, a short meta-training at each setting,
/// then each validation task's query loss after the agent's free phase.
fn choose_beta(settings: &Settings, p: &Protocol, name: &str) -> Result<Search> {
    let search = p.beta_search.as_ref().expect("a search at this scale");
    let (_, model, spec) = p
        .meta_learners()?
        .into_iter()
        .find(|l| l.0 == name)
        .expect("a contrastive agent");
    let free = adaptation(&spec);
    let seed = crate::rng::hash_words(&[settings.seed, CHOICE]);
    let validation = validation_tasks(p, seed, search.validation_tasks)?;
    let budget = p.budget_of(name)?;
    let score = |beta: f64| -> Result<(Vec<f64>, Option<String>)> {
        let run = meta_train(
            &MetaConfig {
                model: model.clone(),
                estimator: at_beta(&spec, beta),
                meta_steps: search.meta_steps,
                meta_batch: budget.meta_batch,
                meta_lr: budget.meta_lr,
                support: p.support,
                query: p.query,
                seed,
            },
            None,
        );
        let theta = match run {
            Ok(r) if r.stopped.is_none() => r.theta,
            Ok(r) => return Ok((vec![f64::INFINITY; validation.len()], r.stopped)),
            // A setting whose meta-training fails is the worst of the grid.
            Err(e) => return Ok((vec![f64::INFINITY; validation.len()], Some(e.to_string()))),
        };
        Ok((validation_losses(&model, &free, &theta, &validation)?, None))
    };
    super::choice::search_beta(name, &search.grid, search.extensions, score)
}

/// The `n` validation tasks of a search seeded `seed` (its own stream: no reported seed's tasks).
fn validation_tasks(p: &Protocol, seed: u64, n: usize) -> Result<Vec<crate::bandit::task::BanditTask>> {
    let mut rng = crate::rng::stream(seed, 1);
    (0..n)
        .map(|_| crate::bandit::task::BanditTask::sample(&mut rng, p.support, p.query))
        .collect()
}

/// Each validation task's query loss after adapting the agent `model` at `theta` with `adapt` (a
/// diverging adaptation scores its start).
fn validation_losses(
    model: &OnlineModel,
    adapt: &GdParams,
    theta: &Vector,
    validation: &[crate::bandit::task::BanditTask],
) -> Result<Vec<f64>> {
    use crate::inner::InnerSolver;
    map_in_order(validation, |task| {
        let problem = crate::bandit::agents::build(model, task.clone(), theta)?;
        let t = problem.theta();
        let start = problem.initial_phi(t)?;
        let phi = match adapt.solve(
            &crate::oracle::Oracle::new(problem.as_ref()),
            &crate::inner::Phase::new(&start, t, 0.0, "adaptation"),
        ) {
            Ok(s) => s.phi,
            Err(crate::CmlError::Diverged { .. }) => start,
            Err(e) => return Err(e),
        };
        Ok(problem.outer_loss(&phi, t)?.to_scalar::<f64>()?)
    })
}

/// The inner loop an agent adapts with: the contrastive rule's free phase, MAML's unrolled loop.
fn adaptation(spec: &EstimatorSpec) -> GdParams {
    match spec {
        EstimatorSpec::Contrastive(c) => c.free,
        EstimatorSpec::Unrolled(u) => u.inner,
        other => unreachable!("no bandit agent is meta-learned by {other:?}"),
    }
}

/// Chooses the meta-learned agent `name`'s outer Adam step size on validation tasks
/// ([`RateSearchSpec`], [`whole_run_search`]; the contrastive agents at `beta`, their search's
/// choice; the same search stream for every agent). `None` where the protocol has no search.
fn choose_meta_lr(
    settings: &Settings,
    p: &Protocol,
    name: &str,
    beta: Option<f64>,
) -> Result<Option<Search>> {
    let Some(search) = &p.meta_lr_search else {
        return Ok(None);
    };
    whole_run_search(
        settings,
        p,
        name,
        beta,
        (RATE_CHOICE, "meta_lr", Ties::None),
        search,
        |meta_lr| (p.clone(), meta_lr),
    )
    .map(Some)
}

/// Chooses the meta-learned agent `name`'s inner step size on validation tasks (the contrastive
/// agents' phases', MAML's loop's; [`whole_run_search`] on a search stream of its own), at `beta`
/// and at the outer step size `meta_lr`, both their searches' choices. `None` where the protocol
/// has no such search.
fn choose_step_size(
    settings: &Settings,
    p: &Protocol,
    name: &str,
    beta: Option<f64>,
    meta_lr: Option<f64>,
) -> Result<Option<Search>> {
    let Some(search) = p.step_size_search_of(name) else {
        return Ok(None);
    };
    let meta_lr = meta_lr.map_or_else(|| p.budget_of(name).map(|b| b.meta_lr), Ok)?;
    whole_run_search(
        settings,
        p,
        name,
        beta,
        (STEP_SIZE_CHOICE, "step_size", Ties::None),
        search,
        |step_size| (p.at_step_size(name, step_size), meta_lr),
    )
    .map(Some)
}

/// Chooses the contrastive agent `name`'s nudged budget on validation tasks ([`whole_run_search`]
/// on a search stream of its own, ties to the smaller budget), at `beta`, at the outer step size
/// `meta_lr` and at the phases' step size `step_size`, all their searches' choices. `None` where
/// the protocol has no such search.
fn choose_nudged_steps(
    settings: &Settings,
    p: &Protocol,
    name: &str,
    beta: Option<f64>,
    meta_lr: Option<f64>,
    step_size: Option<f64>,
) -> Result<Option<Search>> {
    let Some(search) = &p.nudged_steps_search else {
        return Ok(None);
    };
    let meta_lr = meta_lr.map_or_else(|| p.budget_of(name).map(|b| b.meta_lr), Ok)?;
    let at_step = step_size.map_or_else(|| p.clone(), |s| p.at_step_size(name, s));
    whole_run_search(
        settings,
        p,
        name,
        beta,
        (NUDGED_STEPS_CHOICE, "nudged_steps", Ties::ToTheSmaller),
        search,
        |steps| (at_step.at_nudged_steps(whole_steps(steps)), meta_lr),
    )
    .map(Some)
}

/// A search of one setting (`search`, named `word.1`) of the meta-learned agent `name` (the
/// contrastive agents at `beta`): on each search stream (an initialisation and task stream of the
/// search's own, seeded by `word.0`, no reported seed's; their tasks pooled), a whole
/// meta-training at each value, with the
/// protocol and outer step size `at(value)` gives, scored by each validation task's query loss
/// (of the search's own stream) after the agent's own adaptation, from the checkpoint those tasks
/// choose ([`train_checkpointed`]). A run that stops early fails its value; the choice follows
/// `word.2` (the least mean loss, or for a budget the smallest within one standard error of it),
/// and a choice at an edge extends the grid.
fn whole_run_search(
    settings: &Settings,
    p: &Protocol,
    name: &str,
    beta: Option<f64>,
    word: (u64, &str, Ties),
    search: &RateSearchSpec,
    at: impl Fn(f64) -> (Protocol, f64),
) -> Result<Search> {
    // As many validation tasks as the beta search scores (both run at the same scales).
    let tasks = p
        .beta_search
        .as_ref()
        .map(|b| b.validation_tasks)
        .ok_or_else(|| {
            crate::CmlError::invalid(
                "bandit protocol",
                format!("a {} search without a beta search", word.1),
                "both or neither",
            )
        })?;
    // Each search stream: its seed and validation tasks.
    let streams = search
        .stream_seeds(&[settings.seed, word.0])
        .into_iter()
        .map(|seed| Ok((seed, validation_tasks(p, seed, tasks)?)))
        .collect::<Result<Vec<_>>>()?;
    let score = |value: f64| -> Result<(Vec<f64>, Option<String>)> {
        let (p, meta_lr) = at(value);
        let (_, model, spec) = p
            .meta_learners()?
            .into_iter()
            .find(|l| l.0 == name)
            .expect("a meta-learned agent");
        let budget = p.budget_of(name)?;
        super::choice::pooled(&streams, tasks, |(seed, validation)| {
            let config = MetaConfig {
                model: model.clone(),
                estimator: beta.map_or(spec, |b| at_beta(&spec, b)),
                meta_steps: budget.meta_steps,
                meta_batch: budget.meta_batch,
                meta_lr,
                support: p.support,
                query: p.query,
                seed: *seed,
            };
            // Each value's run deploys its checkpoint as a reported run does, on these same tasks.
            match train_checkpointed(&p, &config, validation) {
                Ok(c) if c.run.stopped.is_none() => Ok((c.chosen.losses, None)),
                Ok(c) => Ok((vec![f64::INFINITY; tasks], c.run.stopped)),
                Err(e) => Ok((vec![f64::INFINITY; tasks], Some(e.to_string()))),
            }
        })
    };
    super::choice::search(name, word.1, word.2, &search.grid, search.extensions, score)
}

/// A meta-training run and the meta-parameters it deploys (without a checkpoint choice: the
/// last completed meta-step, and no checkpoint scores).
struct Checkpointed {
    run: crate::meta_training::TaskMetaRun,
    chosen: super::choice::Chosen<Vector>,
}

/// Meta-trains as `config` says and deploys the checkpoint ([`CheckpointSpec`]) with the least
/// mean query loss on `validation` after the agent's own adaptation (a non-finite mean counts as
/// infinite; ties to the later). Without a checkpoint choice in `p`, the last completed meta-step
/// is deployed. A run that stops early keeps the checkpoints it reached.
fn train_checkpointed(
    p: &Protocol,
    config: &MetaConfig,
    validation: &[crate::bandit::task::BanditTask],
) -> Result<Checkpointed> {
    let adapt = adaptation(&config.estimator);
    let Some(spec) = &p.checkpoint else {
        let run = meta_train(config, None)?;
        let validation = validation_losses(&config.model, &adapt, &run.theta, validation)?;
        let chosen = super::choice::Chosen {
            scores: Vec::new(),
            step: run.log.last().map_or(0, |s| s.step),
            theta: run.theta.clone(),
            losses: validation,
        };
        return Ok(Checkpointed { run, chosen });
    };
    let kept = std::sync::Mutex::new(vec![(0, initial_theta(&config.model, config.seed)?)]);
    let keep = |step: usize, theta: &Vector| -> Result<()> {
        if spec.keeps(step, config.meta_steps) {
            kept.lock()
                .expect("no panic while kept")
                .push((step, theta.clone()));
        }
        Ok(())
    };
    let run = meta_train(config, Some(&keep))?;
    let kept = kept.into_inner().expect("no panic while kept");
    let chosen =
        super::choice::choose_checkpoint(kept, run.log.last().map(|l| (l.step, &run.theta)), |theta| {
            validation_losses(&config.model, &adapt, theta, validation)
        })?;
    Ok(Checkpointed { run, chosen })
}

/// One agent's runs in one unit.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct AgentRuns {
    agent: String,
    /// Final cumulative regret, `[delta][run]`.
    regret: Vec<Vec<f64>>,
    /// Cumulative regret every `stride` steps at the figure's delta, `[run][point]`.
    curve: Vec<Vec<f64>>,
    rejected: usize,
}

/// What a unit leaves for the report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct UnitRows {
    /// The contrastive agent's `beta`, as its search chose it.
    #[serde(default)]
    beta: Option<f64>,
    /// The agent's outer step size, as its search chose it (none without a search).
    #[serde(default)]
    meta_lr: Option<f64>,
    /// The agent's inner step size, as its search chose it; for the baselines, MAML's (its matched
    /// twin adapts with it). None without a search.
    #[serde(default)]
    step_size: Option<f64>,
    /// The contrastive agent's nudged budget, as its search chose it (none without a search).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nudged_steps: Option<usize>,
    agents: Vec<AgentRuns>,
    /// (meta-step, query loss) of meta-training (empty for the baselines).
    meta_log: Vec<(usize, f64)>,
    /// (meta-step, mean validation loss) of each checkpoint, and the deployed meta-step (none
    /// for the baselines).
    #[serde(default, with = "super::units::any_float_pairs")]
    checkpoints: Vec<(usize, f64)>,
    #[serde(default)]
    deployed_step: Option<usize>,
    stopped: Option<String>,
    meta_seconds: f64,
    eval_seconds: f64,
}

impl Protocol {
    /// The evaluation runs of meta-training seed `m`: their seeds.
    fn run_seeds(&self, settings: &Settings, m: usize) -> Vec<u64> {
        (0..self.runs_per_seed)
            .map(|r| crate::rng::hash_words(&[settings.seed, EVAL_SEED, (m * self.runs_per_seed + r) as u64]))
            .collect()
    }

    fn curve_delta(&self) -> f64 {
        self.deltas[self.deltas.len().saturating_sub(2)]
    }

    fn stride(&self) -> usize {
        (self.run.steps / 80).max(1)
    }
}

impl super::units::Job<super::Section> for Bandit {
    fn name(&self) -> &'static str {
        "bandit"
    }

    fn about(&self) -> &'static str {
        "wheel bandit: agents meta-learned by the contrastive rule and MAML against bandit baselines, regret table"
    }

    fn protocol(&self, settings: &Settings) -> Result<serde_json::Value> {
        super::units::encode(&Protocol::of(settings)?)
    }

    fn configurable(&self) -> bool {
        true
    }

    fn extent_keys(&self) -> &'static [&'static str] {
        // Each seed's units draw from that seed alone.
        &["meta_seeds"]
    }

    fn units(&self, settings: &Settings) -> Result<Vec<String>> {
        let p = Protocol::of(settings)?;
        // The searches first, in the order they run, so that the agents' units find them stored.
        Ok(super::chain::search_units(&Searches, &subjects(&p)?)
            .into_iter()
            .map(|(_, _, u)| u)
            .chain(unit_list(&p)?.iter().map(|(k, m)| unit_name(k, *m)))
            .collect())
    }

    fn run_unit(
        &self,
        settings: &Settings,
        unit: &str,
        staging: &std::path::Path,
    ) -> Result<serde_json::Value> {
        let p = Protocol::of(settings)?;
        let subjects = subjects(&p)?;
        if let Some(rows) =
            super::chain::run_search_unit(&Searches, self, settings, staging, unit, &subjects)?
        {
            return Ok(rows);
        }
        let (k, m) = super::units::lookup(self, settings, unit, unit_list(&p)?, |(k, m)| unit_name(k, *m))?;
        let agent = if k == BASELINES { key(MAML_OWN) } else { k.clone() };
        let subject = subjects
            .into_iter()
            .find(|s| key(s.name) == agent)
            .expect("a model of the unit list");
        if k == BASELINES {
            // The matched baseline of MAML's own deployment adapts at MAML's chosen step size.
            let chosen = super::chain::chosen(&Searches, self, settings, staging, subject, Choice::MamlStep)?;
            let at = chosen.map_or_else(|| p.clone(), |size| p.at_step_size(MAML_OWN, size));
            return super::units::encode(&UnitRows {
                step_size: chosen,
                ..run_unit(settings, &at, &k, m, None, None)?
            });
        }
        let all = Searches.choices().len();
        let (s, _) = super::chain::settle(&Searches, self, settings, staging, all, subject)?;
        let at = s
            .step_size
            .map_or_else(|| p.clone(), |size| p.at_step_size(s.name, size));
        let at = match s.nudged_steps {
            Some(n) => at.at_nudged_steps(n),
            None => at,
        };
        super::units::encode(&UnitRows {
            step_size: s.step_size,
            nudged_steps: s.nudged_steps,
            ..run_unit(settings, &at, &k, m, s.beta, s.meta_lr)?
        })
    }

    fn reads(&self, unit: &str) -> super::units::Reads {
        // Of the searches' keys, a unit reads those of the searches it (or its search) runs after;
        // the baselines' unit reads MAML's (MAML's matched twin adapts at its chosen step size).
        let Ok(p) = Protocol::at(Scale::Default) else {
            return Default::default();
        };
        let Ok(subjects) = subjects(&p) else {
            return Default::default();
        };
        let agent = unit.split_once("-seed").map(|(k, _)| k);
        let agent = if agent == Some(BASELINES) {
            Some(key(MAML_OWN))
        } else {
            agent.map(String::from)
        };
        let run = subjects.iter().find(|s| Some(key(s.name)) == agent);
        super::chain::reads(&Searches, unit, &subjects, run)
    }

    fn report(
        &self,
        settings: &Settings,
        units: &[super::units::Stored],
        files: &mut Vec<PathBuf>,
    ) -> Result<crate::report::template::Context> {
        Ok(super::writeup::bandit_section(&report(settings, units, files)?))
    }

    fn paper_budgets(&self) -> super::units::PaperBudgets {
        super::units::PaperBudgets::Own
    }

    fn calibrate(&self, settings: &Settings, units: &[String]) -> Result<Option<Vec<f64>>> {
        calibrate(settings, units)
    }
}

/// Online updates a calibration times per retraining (the cost is linear in them).
const TIMED_UPDATES: usize = 10;
/// Stream of the calibration's task and minibatch.
const CALIBRATION: u64 = 3000;

/// Estimated wall seconds of each of `units` at the paper scale: one timed estimate of each
/// meta-learned agent on one task at its initial meta-parameters, times its meta-steps and
/// meta-batch; one timed retraining (on a full minibatch, [`TIMED_UPDATES`] updates scaled to the
/// agent's) times the retrainings of every evaluation run. Per-step predictions and posterior
/// updates are left out. Both spread over the cores. `None` at the other scales, whose measured
/// runs (`--results`) give their cost.
fn calibrate(settings: &Settings, units: &[String]) -> Result<Option<Vec<f64>>> {
    use crate::bandit::agents::build;
    use crate::bandit::task::BanditTask;
    if settings.scale != Scale::Paper {
        return Ok(None);
    }
    let p = Protocol::of(settings)?;
    let mut rng = crate::rng::stream(settings.seed, CALIBRATION);
    let task = BanditTask::sample(&mut rng, p.support, p.query)?;
    let minibatch = BanditTask::sample(&mut rng, p.online.batch, 1)?;
    use super::units::timed;
    // One retraining of `model` from `theta` by `online`.
    let retraining =
        |model: &OnlineModel, theta: &crate::linalg::Vector, online: &OnlineParams| -> Result<f64> {
            let problem = build(model, minibatch.clone(), theta)?;
            let t = crate::linalg::to_tensor(theta)?;
            let start = problem.initial_phi(&t)?;
            let gd = GdParams {
                step_size: Some(online.step_size),
                max_steps: TIMED_UPDATES,
                tolerance: 0.0,
                optimizer: online.optimizer,
                divergence: crate::inner::Divergence::NonFinite,
                ..GdParams::default()
            };
            let oracle = crate::oracle::Oracle::new(problem.as_ref());
            let phase = crate::inner::Phase::new(&start, &t, 0.0, "online training");
            let secs = timed(|| {
                use crate::inner::InnerSolver;
                gd.solve(&oracle, &phase).map(|_| ())
            })?;
            Ok(secs * online.updates as f64 / TIMED_UPDATES as f64)
        };
    let threads = crate::parallel::available_threads() as f64;
    let runs = (p.deltas.len() * p.runs_per_seed) as f64;
    let mut per_key = Vec::new();
    for (name, model, estimator) in p.meta_learners()? {
        let b = p.budget_of(name)?;
        let theta = initial_theta(&model, settings.seed)?;
        let problem = build(&model, task.clone(), &theta)?;
        let estimate = timed(|| {
            estimator
                .estimator()
                .estimate(problem.as_ref(), problem.theta())
                .map(|_| ())
        })?;
        let retrainings = (p.run.steps / b.online.every) as f64;
        let mut evaluation = retrainings * retraining(&model, &theta, &b.online)?;
        if name == MAML_OWN {
            let own = OnlineParams {
                updates: p.maml_steps,
                step_size: p.maml_step_size,
                optimizer: Optimizer::GradientDescent,
                ..b.online
            };
            evaluation += retrainings * retraining(&model, &theta, &own)?;
        }
        let meta = (b.meta_steps * b.meta_batch) as f64 * estimate;
        per_key.push((key(name), (meta + runs * evaluation) / threads));
    }
    let plain = p.plain();
    let theta = initial_theta(&plain, settings.seed)?;
    let neural_linear = OnlineParams {
        every: p.neural_linear_every,
        ..p.online
    };
    let baselines = runs
        * ((p.run.steps / p.neural_linear_every) as f64 * retraining(&plain, &theta, &neural_linear)?
            + (p.run.steps / p.online.every) as f64 * retraining(&plain, &theta, &p.online)?)
        / threads;
    units
        .iter()
        .map(|unit| {
            let (k, _) =
                super::units::lookup(&BANDIT, settings, unit, unit_list(&p)?, |(k, m)| unit_name(k, *m))?;
            Ok(per_key
                .iter()
                .find(|(key, _)| *key == k)
                .map_or(baselines, |(_, s)| *s))
        })
        .collect::<Result<Vec<f64>>>()
        .map(Some)
}

/// The agents of a unit, built fresh for one evaluation run (each learns online).
type AgentList = Vec<(String, Box<dyn Agent>)>;

fn run_unit(
    settings: &Settings,
    p: &Protocol,
    k: &str,
    m: usize,
    beta: Option<f64>,
    meta_lr: Option<f64>,
) -> Result<UnitRows> {
    let plain = p.plain();
    let mut meta_log = Vec::new();
    let (mut stopped, mut meta_seconds) = (None, 0.0);
    let (mut checkpoints, mut deployed_step) = (Vec::new(), None);
    // The agents of one run, given its seed: the baselines, or the model meta-trained from `m`.
    let make: Box<dyn Fn(u64) -> Result<AgentList> + Sync> = if k == BASELINES {
        let features = p.net.sizes[p.net.sizes.len() - 2];
        let plain = plain.clone();
        let online = p.online;
        let every = p.neural_linear_every;
        // The matched baselines: each meta-learned model at the initialisation its seed-`m`
        // meta-training starts from, deployed as that agent is (the greedy network is the twin of
        // MAML's common-loop deployment).
        let mut twins = Vec::new();
        for (name, model, _) in p.meta_learners()? {
            let theta0 = initial_theta(&model, meta_seed(settings, m))?;
            for (label, loop_) in p.deployments(name)? {
                if let Some(twin) = twin_of(&label).filter(|t| *t != BASELINE_AGENTS[3]) {
                    twins.push((twin, model.clone(), theta0.clone(), loop_));
                }
            }
        }
        Box::new(move |run_seed| {
            let random_init = initial_theta(&plain, run_seed)?;
            let mut agents: AgentList = vec![
                (BASELINE_AGENTS[0].into(), Box::new(Uniform) as Box<dyn Agent>),
                (
                    BASELINE_AGENTS[1].into(),
                    Box::new(LinFullPost::new(LINEAR_PRIOR)?),
                ),
                (
                    BASELINE_AGENTS[2].into(),
                    Box::new(NeuralLinear::new(
                        OnlineLearner::new(
                            plain.clone(),
                            random_init.clone(),
                            OnlineParams { every, ..online },
                        )?,
                        features,
                        NEURAL_LINEAR_PRIOR,
                    )?),
                ),
                (
                    BASELINE_AGENTS[3].into(),
                    Box::new(Greedy {
                        learner: OnlineLearner::new(plain.clone(), random_init, online)?,
                    }),
                ),
            ];
            for (twin, model, theta0, loop_) in &twins {
                agents.push((
                    twin.to_string(),
                    Box::new(Greedy {
                        learner: OnlineLearner::new(model.clone(), theta0.clone(), *loop_)?,
                    }),
                ));
            }
            Ok(agents)
        })
    } else {
        let (name, model, estimator) = p
            .meta_learners()?
            .into_iter()
            .find(|l| key(l.0) == k)
            .expect("a model of the unit list");
        let budget = p.budget_of(name)?;
        // The seed's own validation tasks choose its checkpoint (none without a choice).
        let validation = match &p.checkpoint {
            Some(c) => validation_tasks(
                p,
                crate::rng::hash_words(&[settings.seed, CHECKPOINT, m as u64]),
                c.validation_tasks,
            )?,
            None => Vec::new(),
        };
        let trained = train_checkpointed(
            p,
            &MetaConfig {
                model: model.clone(),
                estimator: beta.map_or(estimator, |b| at_beta(&estimator, b)),
                meta_steps: budget.meta_steps,
                meta_batch: budget.meta_batch,
                meta_lr: meta_lr.unwrap_or(budget.meta_lr),
                support: p.support,
                query: p.query,
                seed: meta_seed(settings, m),
            },
            &validation,
        )?;
        let run = &trained.run;
        stopped = run
            .stopped
            .clone()
            .map(|r| format!("{name} (seed {m}) stopped at {r}"));
        meta_seconds = run.log.last().map_or(0.0, |s| s.seconds);
        meta_log = run.log.iter().map(|s| (s.step, s.query_loss)).collect();
        checkpoints = trained.chosen.scores;
        deployed_step = Some(trained.chosen.step);
        let theta = trained.chosen.theta;
        let deployments = p.deployments(name)?;
        Box::new(move |_| {
            deployments
                .iter()
                .map(|(label, online)| {
                    Ok((
                        label.clone(),
                        Box::new(Greedy {
                            learner: OnlineLearner::new(model.clone(), theta.clone(), *online)?,
                        }) as Box<dyn Agent>,
                    ))
                })
                .collect()
        })
    };
    let clock = std::time::Instant::now();
    let runs: Vec<(usize, u64)> = (0..p.deltas.len())
        .flat_map(|d| p.run_seeds(settings, m).into_iter().map(move |s| (d, s)))
        .collect();
    // Per (delta, run): every agent's (name, cumulative regret curve, rejected retrainings).
    let results = map_in_order(&runs, |&(d, run_seed)| {
        let bandit = WheelBandit::new(p.deltas[d])?;
        make(run_seed)?
            .into_iter()
            .map(|(name, mut agent)| {
                let regret = bandit_run::run(&bandit, agent.as_mut(), &p.run, run_seed)?.1;
                Ok((name, regret, agent.rejected_updates()))
            })
            .collect::<Result<Vec<(String, Vec<f64>, usize)>>>()
    })?;
    let names: Vec<String> = results
        .first()
        .map(|r| r.iter().map(|a| a.0.clone()).collect())
        .unwrap_or_default();
    let curve_d = p
        .deltas
        .iter()
        .position(|&d| d == p.curve_delta())
        .expect("a delta");
    let agents = names
        .iter()
        .enumerate()
        .map(|(a, name)| {
            let mut regret = vec![Vec::new(); p.deltas.len()];
            let (mut curve, mut rejected) = (Vec::new(), 0);
            for (&(d, _), r) in runs.iter().zip(&results) {
                let series = &r[a].1;
                regret[d].push(series[p.run.steps - 1]);
                rejected += r[a].2;
                if d == curve_d {
                    curve.push(
                        (p.stride() - 1..p.run.steps)
                            .step_by(p.stride())
                            .map(|t| series[t])
                            .collect(),
                    );
                }
            }
            AgentRuns {
                agent: name.clone(),
                regret,
                curve,
                rejected,
            }
        })
        .collect();
    Ok(UnitRows {
        beta,
        meta_lr,
        step_size: None,
        nudged_steps: None,
        agents,
        meta_log,
        checkpoints,
        deployed_step,
        stopped,
        meta_seconds,
        eval_seconds: clock.elapsed().as_secs_f64(),
    })
}

fn report(
    settings: &Settings,
    units: &[super::units::Stored],
    files: &mut Vec<PathBuf>,
) -> Result<BanditResults> {
    let protocol = Protocol::of(settings)?;
    let p = &protocol;
    let learners = p.meta_learners()?;
    let subjects = subjects(p)?;
    // Every stored unit, in unit order, with its seed index.
    let mut stored: Vec<(String, usize, UnitRows)> = Vec::new();
    for (k, m) in unit_list(p)? {
        if let Some(u) = units.iter().find(|u| u.unit == unit_name(&k, m)) {
            let rows: UnitRows = super::units::decode(u)?;
            let unit = format!("bandit unit {}", unit_name(&k, m));
            // The baselines' unit takes MAML's choices (its matched twin's step size).
            let agent = if k == BASELINES { key(MAML_OWN) } else { k.clone() };
            if let Some(subject) = subjects.iter().find(|s| key(s.name) == agent) {
                let (step, nudged) = (rows.step_size, rows.nudged_steps.map(|n| n as f64));
                let taken = [rows.beta, rows.meta_lr, step, step, nudged];
                super::chain::check_taken(&Searches, units, subject, &taken, &unit)?;
            }
            stored.push((k, m, rows));
        }
    }
    // The searches, where their units were given, written after the runs' checks.
    let [searches, rate_searches, step_size_searches, nudged_steps_searches] = super::chain::write_stored(
        &Searches,
        units,
        &subjects,
        &settings.out,
        [
            ("bandit_beta_choice.csv", "agent", &[Choice::Beta]),
            ("bandit_meta_lr_choice.csv", "agent", &[Choice::MetaLr]),
            (
                "bandit_step_size_choice.csv",
                "agent",
                &[Choice::PhaseStep, Choice::MamlStep],
            ),
            ("bandit_nudged_steps_choice.csv", "agent", &[Choice::NudgedSteps]),
        ],
        files,
    )?;
    let mut agents: Vec<String> = BASELINE_AGENTS.map(String::from).to_vec();
    agents.extend(
        TWINS
            .iter()
            .map(|(_, t)| t.to_string())
            .filter(|t| !agents.contains(t))
            .collect::<Vec<_>>(),
    );
    for (name, _, _) in &learners {
        agents.push(name.to_string());
        if *name == MAML_OWN {
            agents.push(MAML_COMMON.into());
        }
    }
    // Only agents some stored unit ran (a report of part of the job).
    agents.retain(|a| {
        stored
            .iter()
            .any(|(_, _, u)| u.agents.iter().any(|r| &r.agent == a))
    });
    let runs_of = |agent: &str| -> Vec<(usize, &AgentRuns)> {
        stored
            .iter()
            .flat_map(|(_, m, u)| u.agents.iter().filter(|r| r.agent == agent).map(move |r| (*m, r)))
            .collect()
    };
    let steps = p.run.steps;
    let mut rows = Vec::new();
    let mut cells: Vec<Vec<Cell>> = vec![Vec::new(); agents.len()];
    for (d, &delta) in p.deltas.iter().enumerate() {
        let uniform_total = WheelBandit::new(delta)?.uniform_regret_per_step() * steps as f64;
        for (a, name) in agents.iter().enumerate() {
            let mut per_seed = Vec::new();
            for (m, r) in runs_of(name) {
                for (k, v) in r.regret[d].iter().enumerate() {
                    rows.push(format!("{name},{delta},{m},{k},{v:e},{:e}", v / uniform_total));
                }
                per_seed.push(r.regret[d].iter().sum::<f64>() / r.regret[d].len() as f64 / uniform_total);
            }
            let (mean, ci95) = stats::mean_interval(&per_seed, 0.95);
            cells[a].push(Cell { per_seed, mean, ci95 });
        }
    }
    write_csv(
        &settings.out.join("bandit_regret.csv"),
        "agent,delta,seed,run,cumulative_regret,normalised_regret",
        &rows,
        files,
    )?;
    // Each meta-learned agent against each non-uniform reference at each delta: one family.
    let references: Vec<usize> = (1..agents.len())
        .filter(|&a| BASELINE_AGENTS.contains(&agents[a].as_str()) || agents[a] == MAML_OWN)
        .collect();
    let mut pairs = Vec::new();
    for (a, agent) in agents.iter().enumerate().filter(|(_, n)| n.starts_with("CML")) {
        for &r in &references {
            for d in 0..p.deltas.len() {
                pairs.push((a, r, d, agent));
            }
        }
    }
    let comparisons = compare(p, &agents, &cells, &pairs);
    // Each meta-learned deployment against its matched baseline at each delta: a second family.
    let mut matched_pairs = Vec::new();
    for (a, agent) in agents.iter().enumerate() {
        let Some(r) = twin_of(agent).and_then(|t| agents.iter().position(|n| n == t)) else {
            continue;
        };
        for d in 0..p.deltas.len() {
            matched_pairs.push((a, r, d, agent));
        }
    }
    let matched = compare(p, &agents, &cells, &matched_pairs);

    // Regret against time at one delta: per seed the mean over its runs, then the mean over
    // seeds with a +-1 standard error band.
    let curve_delta = p.curve_delta();
    let stride = p.stride();
    let mut time_rows = Vec::new();
    let mut time_panel = Panel::new(
        format!("wheel bandit, delta = {curve_delta}"),
        "step",
        "cumulative regret",
        false,
        false,
    );
    for (a, name) in agents.iter().enumerate() {
        let per_seed: Vec<Vec<f64>> = runs_of(name)
            .iter()
            .map(|(_, r)| {
                let n = r.curve.len() as f64;
                (0..r.curve[0].len())
                    .map(|t| r.curve.iter().map(|c| c[t]).sum::<f64>() / n)
                    .collect()
            })
            .collect();
        let (mut points, mut band) = (Vec::new(), Vec::new());
        for t in 0..per_seed.first().map_or(0, Vec::len) {
            let values: Vec<f64> = per_seed.iter().map(|c| c[t]).collect();
            let (mean, ci) = stats::mean_interval(&values, 0.95);
            let se = ci / t975(values.len().saturating_sub(1).max(1));
            let step = (t + 1) * stride;
            time_rows.push(format!("{name},{step},{mean:e},{se:e}"));
            points.push((step as f64, mean));
            band.push((step as f64, mean - se, mean + se));
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
    // Meta-training: per model, the mean over seeds of each seed's running mean.
    let mut meta_rows = Vec::new();
    let mut meta_panel = Panel::new(
        "meta-training on wheel-bandit tasks",
        "meta-step",
        "query loss (masked MSE, mean over seeds)",
        false,
        false,
    );
    let mut meta_seconds = Vec::new();
    let mut stopped = Vec::new();
    let (mut checkpoint_rows, mut deployed) = (Vec::new(), Vec::new());
    for (i, (name, _, _)) in learners.iter().enumerate() {
        let of_model: Vec<&UnitRows> = stored
            .iter()
            .filter(|(k, _, _)| *k == key(name))
            .map(|s| &s.2)
            .collect();
        if of_model.is_empty() {
            continue;
        }
        for (m, u) in stored
            .iter()
            .filter(|(k, _, _)| *k == key(name))
            .map(|s| (s.1, &s.2))
        {
            for (step, loss) in &u.meta_log {
                meta_rows.push(format!("{name},{m},{step},{loss:e}"));
            }
            for (step, loss) in &u.checkpoints {
                let chosen = u.deployed_step == Some(*step);
                checkpoint_rows.push(format!("{name},{m},{step},{loss:e},{chosen}"));
            }
            if let Some(step) = u.deployed_step.filter(|_| !u.checkpoints.is_empty()) {
                deployed.push((name.to_string(), m, step));
            }
        }
        stopped.extend(of_model.iter().filter_map(|u| u.stopped.clone()));
        meta_seconds.push((
            name.to_string(),
            of_model.iter().map(|u| u.meta_seconds).sum::<f64>() / of_model.len() as f64,
        ));
        let steps = of_model.iter().map(|u| u.meta_log.len()).min().unwrap_or(0);
        let smoothed: Vec<Vec<(f64, f64)>> = of_model
            .iter()
            .map(|u| running_mean(&u.meta_log[..steps].iter().map(|s| s.1).collect::<Vec<_>>()))
            .collect();
        let line: Vec<(f64, f64)> = (0..steps)
            .map(|k| {
                (
                    smoothed[0][k].0,
                    smoothed.iter().map(|s| s[k].1).sum::<f64>() / smoothed.len() as f64,
                )
            })
            .collect();
        meta_panel
            .series
            .push(Series::new(*name, line, BASELINE_AGENTS.len() + i, Style::Line));
    }
    write_csv(
        &settings.out.join("bandit_meta_training.csv"),
        "model,seed,meta_step,query_loss",
        &meta_rows,
        files,
    )?;
    if p.checkpoint.is_some() {
        write_csv(
            &settings.out.join("bandit_checkpoints.csv"),
            "model,seed,meta_step,validation_loss,deployed",
            &checkpoint_rows,
            files,
        )?;
    }
    save(
        settings,
        "bandit_regret",
        &Figure {
            panels: vec![time_panel, meta_panel],
            columns: 2,
        },
        files,
    )?;
    let rejected = agents
        .iter()
        .map(|a| runs_of(a).iter().map(|(_, r)| r.rejected).sum())
        .collect();
    let results = BanditResults {
        retrainings_per_run: steps / p.online.every,
        eval_seconds: stored.iter().map(|s| s.2.eval_seconds).sum(),
        protocol,
        agents,
        cells,
        comparisons,
        matched,
        meta_seconds,
        curve_delta,
        rejected,
        stopped,
        searches,
        rate_searches,
        step_size_searches,
        nudged_steps_searches,
        deployed,
    };
    write_table(settings, "bandit.md", &table(&results)?, files)?;
    Ok(results)
}

/// One Holm family of paired comparisons, (agent, reference, delta index) each: the agent's
/// normalised regret minus the reference's over meta-training seeds, equivalence within
/// [`EQUIVALENCE_MARGIN`] of their mean.
fn compare(
    p: &Protocol,
    agents: &[String],
    cells: &[Vec<Cell>],
    pairs: &[(usize, usize, usize, &String)],
) -> Vec<BanditComparison> {
    let diffs: Vec<Vec<f64>> = pairs
        .iter()
        .map(|&(a, r, d, _)| {
            cells[a][d]
                .per_seed
                .iter()
                .zip(&cells[r][d].per_seed)
                .map(|(x, y)| x - y)
                .collect()
        })
        .collect();
    let margins: Vec<f64> = pairs
        .iter()
        .map(|&(a, r, d, _)| EQUIVALENCE_MARGIN * 0.5 * (cells[a][d].mean + cells[r][d].mean))
        .collect();
    pairs
        .iter()
        .zip(stats::compare_family(&diffs, &margins, ALPHA))
        .map(|(&(_, r, d, agent), comparison)| BanditComparison {
            delta: p.deltas[d],
            agent: agent.clone(),
            reference: agents[r].clone(),
            comparison,
        })
        .collect()
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

/// The Markdown tables: normalised cumulative regret over meta-training seeds, then the
/// meta-learned agents against the references.
pub fn table(r: &BanditResults) -> Result<String> {
    let p = &r.protocol;
    let rejected: Vec<String> = r
        .agents
        .iter()
        .zip(&r.rejected)
        .filter(|(_, n)| **n > 0)
        .map(|(a, n)| format!("{a} {n}"))
        .collect();
    // Where agents have budgets of their own (the paper scale), they replace the shared ones.
    let own_budgets = p.per_learner.as_ref().map(|own| {
        let own: Vec<String> = own
            .iter()
            .map(|b| {
                format!(
                    "{}: {} meta-steps of {} tasks, meta lr {}, online {} updates of {} every {} steps",
                    b.name,
                    b.meta_steps,
                    b.meta_batch,
                    b.meta_lr,
                    b.online.updates,
                    b.online.step_size,
                    b.online.every
                )
            })
            .collect();
        Context::new().text("budgets", own.join("; "))
    });
    let matched = (!r.matched.is_empty()).then(|| {
        Context::new()
            .text("count", r.matched.len())
            .list("rows", comparison_rows(&r.matched))
    });
    let grids = |s: Option<&RateSearchSpec>| {
        s.map_or("none: no search".into(), |s| {
            format!(
                "{:?}, extended at most {}",
                s.grid,
                super::searches::times(s.extensions)
            )
        })
    };
    let searched = |spec: bool, searches: &[Search]| (spec && !searches.is_empty()).then(Context::new);
    let context = Context::new()
        .text("contexts", p.run.steps)
        .text("seeds", p.meta_seeds)
        .text("runs_per_seed", p.runs_per_seed)
        .text("net", &p.net)
        .text("meta_steps", p.meta_steps)
        .text("meta_batch", p.meta_batch)
        .text("support", p.support)
        .text("query", p.query)
        .text("maml_steps", p.maml_steps)
        .text("maml_step_size", r.maml_step_size())
        .flag("maml_searched", r.maml_step_search().is_some())
        .section("own_budgets", own_budgets)
        .list(
            "deltas",
            p.deltas.iter().map(|d| Context::new().text("delta", d)).collect(),
        )
        .list("agents", agent_rows(r))
        .text("runs", p.deltas.len() * p.meta_seeds * p.runs_per_seed)
        .text("retrainings", r.retrainings_per_run)
        .text("neural_linear_retrainings", p.run.steps / p.neural_linear_every)
        .text("rejected", super::joined_or_none(&rejected, ", "))
        .text("stopped", super::stopped_note(&r.stopped))
        .text("comparison_count", r.comparisons.len())
        .text("margin", EQUIVALENCE_MARGIN)
        .text("alpha", ALPHA)
        .list("comparisons", comparison_rows(&r.comparisons))
        .section("matched", matched)
        .text(
            "deployed",
            super::searches::deployed_section(
                p.checkpoint.as_ref(),
                &r.deployed,
                "the query loss after the agent's own adaptation",
                "bandit_checkpoints.csv",
            )
            .trim_end_matches('\n'),
        )
        .flag("no_beta_search", p.beta_search.is_none())
        .section(
            "beta_search",
            super::searches::beta_search_context(p.beta_search.as_ref(), &r.searches, "agent"),
        )
        .section("pooled", super::searches::pooled_context(p, &POOLED))
        .flag(
            "no_meta_lr_search",
            p.meta_lr_search.is_none() || p.beta_search.is_none(),
        )
        .section(
            "meta_lr_search",
            p.meta_lr_search
                .as_ref()
                .zip(p.beta_search.as_ref())
                .filter(|_| !r.rate_searches.is_empty())
                .map(|(s, beta)| {
                    Context::new()
                        .text("validation_tasks", beta.validation_tasks)
                        .text("extensions", s.extensions)
                        .text("table", super::searches::table(&r.rate_searches, "agent"))
                }),
        )
        .text("phase_step_size", p.phase_step_size)
        .text("protocol_maml_step_size", p.maml_step_size)
        .section(
            "step_size_search",
            searched(
                p.phase_step_size_search.is_some() || p.maml_step_size_search.is_some(),
                &r.step_size_searches,
            )
            .map(|c| {
                c.text("phase_grid", grids(p.phase_step_size_search.as_ref()))
                    .text("maml_grid", grids(p.maml_step_size_search.as_ref()))
                    .text("table", super::searches::table(&r.step_size_searches, "agent"))
            }),
        )
        .text("nudged_steps", p.nudged_steps)
        .section(
            "nudged_steps_search",
            p.nudged_steps_search
                .as_ref()
                .filter(|_| !r.nudged_steps_searches.is_empty())
                .map(|s| {
                    Context::new()
                        .text("extensions", super::searches::times(s.extensions))
                        .text("table", super::searches::table(&r.nudged_steps_searches, "agent"))
                }),
        );
    super::render_table(include_str!("tables/bandit.md"), "bandit.md", &context)
}

/// The regret table's rows: each agent's `name` and its `cells`, one per delta (`mean`, `ci95`);
/// the table page and the write-up show the same rows.
pub(super) fn agent_rows(r: &BanditResults) -> Vec<Context> {
    r.agents
        .iter()
        .zip(&r.cells)
        .map(|(name, cells)| {
            let cells = cells
                .iter()
                .map(|c| Context::new().text("mean", num(c.mean)).text("ci95", num(c.ci95)))
                .collect();
            Context::new().text("name", name).list("cells", cells)
        })
        .collect()
}

/// The table rows of one family of comparisons.
fn comparison_rows(comparisons: &[BanditComparison]) -> Vec<Context> {
    comparisons
        .iter()
        .map(|c| {
            super::comparison_context(&c.comparison, num)
                .text("delta", c.delta)
                .text("agent", &c.agent)
                .text("reference", &c.reference)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_paper_scale_the_table_says_each_setting_is_the_agents_own() {
        // The paper scale runs no search (each agent has the budgets of the paper's code): each
        // search section of the table's template takes its text for a scale without one, with the
        // protocol's values (a misnamed tag would be an error here; the quick and default runs
        // never render these sections).
        let p = Protocol::at(Scale::Paper).unwrap();
        let r = BanditResults {
            protocol: p.clone(),
            agents: Vec::new(),
            cells: Vec::new(),
            comparisons: Vec::new(),
            matched: Vec::new(),
            meta_seconds: Vec::new(),
            eval_seconds: 0.0,
            curve_delta: p.curve_delta(),
            rejected: Vec::new(),
            retrainings_per_run: 1,
            stopped: Vec::new(),
            searches: Vec::new(),
            rate_searches: Vec::new(),
            step_size_searches: Vec::new(),
            nudged_steps_searches: Vec::new(),
            deployed: Vec::new(),
        };
        let t = table(&r).unwrap();
        for sentence in [
            "## The contrastive agents' nudging strength\n\nThe paper's code's".to_string(),
            "## The outer step size\n\nEach agent's own, the paper's code's (no search at this scale)."
                .into(),
            format!(
                "The contrastive phases' Adam at {}, MAML's {} gradient steps of {} (no search at this scale).",
                p.phase_step_size, p.maml_steps, p.maml_step_size
            ),
            format!(
                "The contrastive agents' nudged phases run {} Adam steps each (no search at this scale).",
                p.nudged_steps
            ),
            " Each agent's own budgets: CML complex synapse: ".into(),
        ] {
            assert!(t.contains(&sentence), "{sentence}\n{t}");
        }
        assert!(!t.contains("chosen on validation tasks"), "{t}");
    }

    #[test]
    fn a_phase_step_size_or_nudged_budget_search_beside_budgets_of_the_agents_own_is_refused() {
        use crate::protocol::Checked;
        // The paper scale's agents bring their own phases, which the search (of the shared
        // phase_step_size) would not set: refused, naming the key. MAML's search sets the shared
        // maml_step_size, which MAML runs at every scale, so it stays allowed there.
        let default = Protocol::at(Scale::Default).unwrap();
        let refused = Protocol {
            phase_step_size_search: default.phase_step_size_search.clone(),
            ..Protocol::at(Scale::Paper).unwrap()
        };
        let err = refused.check().unwrap_err().to_string();
        assert!(err.contains("phase_step_size_search"), "{err}");
        // So is the nudged budget's search, which sets the shared nudged_steps.
        let refused = Protocol {
            nudged_steps_search: default.nudged_steps_search.clone(),
            ..Protocol::at(Scale::Paper).unwrap()
        };
        let err = refused.check().unwrap_err().to_string();
        assert!(err.contains("nudged_steps_search"), "{err}");
        let allowed = Protocol {
            maml_step_size_search: default.maml_step_size_search.clone(),
            ..Protocol::at(Scale::Paper).unwrap()
        };
        allowed.check().unwrap();
        default.check().unwrap();
    }

    #[test]
    fn each_unit_reads_the_inner_step_size_searches_its_runs_use() {
        use super::super::units::Job;
        // Written out from what each unit runs: the phases' step size enters the contrastive
        // agents' searches and runs; MAML's enters its search, its runs and the baselines (the
        // twin of MAML's own deployment); the beta and outer step-size searches precede both. The
        // outer step size's search enters every unit but the beta searches, which precede it. The
        // nudged budget searches run last, at the phases' chosen step size, and the nudged budget
        // enters only them and the contrastive agents' runs.
        let settings = Settings::at(Scale::Default);
        let units = BANDIT.units(&settings).unwrap();
        // 2 beta, 3 outer and 3 inner step-size, 2 nudged budget searches; 4 x 10 seeds.
        assert_eq!(units.len(), 10 + 4 * 10);
        for unit in units {
            let reads = |k: &str| !BANDIT.reads(&unit).ignores.contains(&k);
            let contrastive_run = unit.starts_with("cml-") && unit.contains("-seed");
            let nudged = unit.starts_with("choice-nudged-steps-cml-") || contrastive_run;
            assert_eq!(reads("nudged_steps_search"), nudged, "{unit}");
            let phases = unit.starts_with("choice-step-size-cml-") || nudged;
            let maml = unit == "choice-step-size-maml"
                || unit.starts_with("maml-seed")
                || unit.starts_with("baselines-seed");
            assert_eq!(reads("phase_step_size_search"), phases, "{unit}");
            assert_eq!(reads("maml_step_size_search"), maml, "{unit}");
            let beta_search = unit.starts_with("choice-cml-");
            assert_eq!(reads("meta_lr_search"), !beta_search, "{unit}");
            // The contrastive agents' units, and only theirs, run at their searched beta.
            assert_eq!(reads("beta_search"), unit.contains("cml-"), "{unit}");
        }
    }

    #[test]
    fn the_paper_scale_takes_the_authors_settings() {
        // The authors' wheel-bandit configs (docs/EXPERIMENTS.md, "The bandit job at the paper's
        // budgets"): [100, 100] networks; 64 training tasks repeated 100 times in one pass, so
        // 6400 tasks: complex synapse 8 per meta-step (800 steps), outer Adam 0.03, beta 0.3, free
        // 250 Adam steps of 1e-4, nudged 100 of 0.03, online Adam 1e-4, 250 updates every 50;
        // gain modulation 16 per step (400), beta 10, free 1000 SGD steps of 3e-4, nudged 100 of
        // 1e-4, online Nesterov 1e-4, 500 updates every 100; MAML 32 per step (200), outer Adam
        // 0.1, 10 SGD steps of 0.01, online SGD 1e-3, 100 updates every 100; batches of 512,
        // 80,000 contexts, 50 seeds.
        let p = Protocol::at(Scale::Paper).unwrap();
        assert_eq!(p.net.sizes, vec![2, 100, 100, 5]);
        assert_eq!(
            (p.run.steps, p.meta_seeds, p.support, p.query),
            (80_000, 50, 512, 50)
        );
        let expect = [
            (
                "CML complex synapse",
                800,
                8,
                0.03,
                0.3,
                250,
                1e-4,
                100,
                0.03,
                (50, 250, 1e-4),
            ),
            (
                "CML gain modulation",
                400,
                16,
                0.03,
                10.0,
                1000,
                3e-4,
                100,
                1e-4,
                (100, 500, 1e-4),
            ),
        ];
        let learners = p.meta_learners().unwrap();
        for (name, steps, batch, lr, beta, free, free_lr, nudged, nudged_lr, online) in expect {
            let b = p.budget_of(name).unwrap();
            assert_eq!(
                b.meta_steps * b.meta_batch,
                6400,
                "{name}: one pass over 6400 tasks"
            );
            assert_eq!(
                (b.meta_steps, b.meta_batch, b.meta_lr),
                (steps, batch, lr),
                "{name}"
            );
            assert_eq!(
                (b.online.every, b.online.updates, b.online.step_size),
                online,
                "{name}"
            );
            assert_eq!(b.online.batch, 512);
            let (_, _, spec) = learners.iter().find(|l| l.0 == name).unwrap();
            let EstimatorSpec::Contrastive(c) = spec else {
                panic!("{name}: the contrastive rule")
            };
            assert_eq!(c.beta, beta, "{name}");
            assert_eq!(
                (c.free.max_steps, c.free.step_size),
                (free, Some(free_lr)),
                "{name}"
            );
            assert_eq!(
                (c.nudged.max_steps, c.nudged.step_size),
                (nudged, Some(nudged_lr)),
                "{name}"
            );
        }
        let maml = p.budget_of("MAML").unwrap();
        assert_eq!((maml.meta_steps, maml.meta_batch, maml.meta_lr), (200, 32, 0.1));
        assert_eq!((p.maml_steps, p.maml_step_size), (10, 0.01));
        assert_eq!(
            (maml.online.every, maml.online.updates, maml.online.step_size),
            (100, 100, 1e-3)
        );
        // The default protocol is unchanged by the paper's field: its units stay valid.
        let default = serde_json::to_value(Protocol::at(Scale::Default).unwrap()).unwrap();
        assert!(default.get("per_learner").is_none());
        assert_eq!(
            Protocol::at(Scale::Default)
                .unwrap()
                .budget_of("MAML")
                .unwrap()
                .meta_steps,
            150
        );
    }
}
