//! The one registry of names: every problem, meta-training model and estimator that the command
//! line, configs, sweeps and figures can name, each mapped to what builds it. An unknown name is
//! refused with the list this registry holds, so help texts, errors and tests cannot drift from
//! what is accepted.

use crate::bandit::task::BanditTask;
use crate::digits::{ClassPool, DecayClassifier, Episode, META_TEST_DIGITS, load_digits};
use crate::error::{CmlError, Result};
use crate::estimator::error_bar::AutoBeta;
use crate::estimator::{
    Contrastive, EstimatorParams, EstimatorSpec, FirstOrder, FirstOrderRule, Implicit, LinearSolver, Unrolled,
};
use crate::linalg::Vector;
use crate::meta_training::ModelSpec;
use crate::mlp::Mlp;
use crate::problem::instance::{FiniteOrNot, InstanceReader};
use crate::problem::{
    DataLoss, InstanceFile, Modulation, ModulationSpec, Quadratic, QuadraticSpec, RegisteredProblem,
    RegularisedMlp, SinusoidTask, Synapse, SynapseSpec, WeightDecay, WeightDecaySpec,
};
use crate::rng::seeded;
use crate::spiking::{NetworkSpec, SpikingSynapse};

/// A problem: how to draw an instance from a seed (default sizes), and how to read one back from
/// an instance file.
pub struct ProblemEntry {
    pub name: &'static str,
    pub about: &'static str,
    pub draw: fn(u64) -> Result<Box<dyn RegisteredProblem>>,
    pub read: fn(InstanceReader) -> Result<Box<dyn RegisteredProblem>>,
}

/// Support and query points per task of the registry's few-shot problems.
pub const DEFAULT_SHOTS: usize = 10;
/// The initial weight-decay strength of the drawn `regularised-mlp` problem.
pub const INITIAL_DECAY: f64 = 1e-2;

pub const PROBLEMS: &[ProblemEntry] = &[
    ProblemEntry {
        name: "quadratic",
        about: "quadratic inner and outer losses, every constant of the bound known (MATH.md §5)",
        draw: |seed| Ok(Box::new(Quadratic::random(&QuadraticSpec::default(), seed)?)),
        read: |r| Ok(Box::new(Quadratic::from_instance(r)?)),
    },
    ProblemEntry {
        name: "ridge",
        about: "per-parameter weight decay of linear least squares",
        draw: |seed| {
            Ok(Box::new(WeightDecay::random(
                &WeightDecaySpec::new(DataLoss::Squared),
                seed,
            )?))
        },
        read: |r| Ok(Box::new(WeightDecay::from_instance(r, DataLoss::Squared)?)),
    },
    ProblemEntry {
        name: "logistic",
        about: "per-parameter weight decay of logistic regression",
        draw: |seed| {
            Ok(Box::new(WeightDecay::random(
                &WeightDecaySpec::new(DataLoss::Logistic),
                seed,
            )?))
        },
        read: |r| Ok(Box::new(WeightDecay::from_instance(r, DataLoss::Logistic)?)),
    },
    ProblemEntry {
        name: "synapse",
        about: "complex synapse, a 1-40-40-1 tanh MLP on one 10-shot sinusoid task",
        draw: |seed| {
            Ok(Box::new(Synapse::random(
                &SynapseSpec::default(),
                DEFAULT_SHOTS,
                seed,
            )?))
        },
        read: |r| Ok(Box::new(Synapse::<SinusoidTask>::from_instance(r)?)),
    },
    ProblemEntry {
        name: "modulation",
        about: "gain modulation (dual system), a 1-40-40-1 tanh MLP on one 10-shot sinusoid task",
        draw: |seed| {
            Ok(Box::new(Modulation::random(
                &ModulationSpec::default(),
                DEFAULT_SHOTS,
                seed,
            )?))
        },
        read: |r| Ok(Box::new(Modulation::<SinusoidTask>::from_instance(r)?)),
    },
    ProblemEntry {
        name: "regularised-mlp",
        about: "per-parameter weight decay of a 10-16-1 network on the diabetes data set",
        draw: draw_regularised_mlp,
        read: |r| Ok(Box::new(RegularisedMlp::from_instance(r)?)),
    },
    ProblemEntry {
        name: "decay-classifier",
        about: "per-parameter weight decay of a 64-8-10 network on 200 training and 200 validation digits \
                (the digit weight-decay job at its quick sizes)",
        draw: |seed| {
            Ok(Box::new(DecayClassifier::random(
                Mlp::parse("64-8-10")?,
                200,
                200,
                INITIAL_DECAY,
                seed,
            )?))
        },
        read: |r| Ok(Box::new(DecayClassifier::from_instance(r)?)),
    },
    ProblemEntry {
        name: "digits-synapse",
        about: "complex synapse with a fixed pull of 0.1, a 64-16-5 network on one 5-way 1-shot episode of the \
                meta-test digits, 15 queries per class (the few-shot job's task)",
        draw: draw_digits_synapse,
        read: |r| Ok(Box::new(Synapse::<Episode>::from_instance(r)?)),
    },
    ProblemEntry {
        name: "bandit-synapse",
        about: "complex synapse with a fixed pull of 2000/P, a 2-8-8-5 network regressing one wheel bandit's \
                rewards from 64 support and 16 query pulls (the bandit job's task at its quick sizes)",
        draw: draw_bandit_synapse,
        read: |r| Ok(Box::new(Synapse::<BanditTask>::from_instance(r)?)),
    },
    ProblemEntry {
        name: "bandit-modulation",
        about: "gain modulation with a pull of 1, a 2-8-8-5 network regressing one wheel bandit's rewards from 64 \
                support and 16 query pulls (the bandit job's task at its quick sizes)",
        draw: |seed| {
            let spec = ModulationSpec {
                net: Mlp::parse("2-8-8-5")?,
                strength: 1.0,
            };
            let mut rng = seeded(seed);
            let theta = spec.initial_theta(&mut rng)?;
            let task = BanditTask::sample(&mut rng, 64, 16)?;
            Ok(Box::new(Modulation::new(spec, task, &theta)?))
        },
        read: |r| Ok(Box::new(Modulation::<BanditTask>::from_instance(r)?)),
    },
    ProblemEntry {
        name: "spiking-synapse",
        about: "complex synapse on a recurrent spiking network (20 Poisson inputs, 20 LIF neurons, 10 steps; the \
                spiking job's constants) on one 10-shot sinusoid task, e-prop phases; its derivatives are a \
                surrogate's, so it has no exact reference",
        draw: |seed| {
            Ok(Box::new(SpikingSynapse::random(
                &spiking_network(),
                DEFAULT_SHOTS,
                crate::spiking::PULL_STRENGTH,
                seed,
            )?))
        },
        read: |r| Ok(Box::new(SpikingSynapse::from_instance(r)?)),
    },
];

/// The registry's spiking network: the spiking job's constants at a fifth of its widths and
/// half its steps, so that its instance files stay small and its phases cheap.
pub fn spiking_network() -> NetworkSpec {
    NetworkSpec {
        inputs: 20,
        neurons: 20,
        steps: 10,
        ..NetworkSpec::default()
    }
}

/// A complex synapse whose strength is fixed (theta is the consolidated weights alone), as the
/// few-shot and bandit jobs meta-train it.
fn fixed_synapse(net: &str, strength: impl Fn(&Mlp) -> f64) -> Result<SynapseSpec> {
    let net = Mlp::parse(net)?;
    Ok(SynapseSpec {
        strength: strength(&net),
        net,
        per_synapse: false,
        fixed_strength: true,
    })
}

fn draw_digits_synapse(seed: u64) -> Result<Box<dyn RegisteredProblem>> {
    let spec = fixed_synapse("64-16-5", |_| 0.1)?;
    let mut rng = seeded(seed);
    let theta = spec.initial_theta(&mut rng)?;
    let pool = ClassPool::upright(&load_digits()?, &META_TEST_DIGITS)?;
    let episode = pool.episode(&mut rng, META_TEST_DIGITS.len(), 1, 15)?;
    Ok(Box::new(Synapse::new(spec, episode, &theta)?))
}

fn draw_bandit_synapse(seed: u64) -> Result<Box<dyn RegisteredProblem>> {
    // The bandit job's pull, `1000 mean_i (phi_i - omega_i)^2` as `lambda/2 sum_i`.
    let spec = fixed_synapse("2-8-8-5", |net| 2000.0 / net.param_count() as f64)?;
    let mut rng = seeded(seed);
    let theta = spec.initial_theta(&mut rng)?;
    let task = BanditTask::sample(&mut rng, 64, 16)?;
    Ok(Box::new(Synapse::new(spec, task, &theta)?))
}

#[cfg(feature = "datasets")]
fn draw_regularised_mlp(seed: u64) -> Result<Box<dyn RegisteredProblem>> {
    Ok(Box::new(RegularisedMlp::diabetes(INITIAL_DECAY, seed)?))
}

#[cfg(not(feature = "datasets"))]
fn draw_regularised_mlp(_seed: u64) -> Result<Box<dyn RegisteredProblem>> {
    Err(CmlError::invalid(
        "problem",
        "regularised-mlp",
        "drawing it needs the diabetes data set: build with the `datasets` feature (on by default), or read an \
         instance file",
    ))
}

fn names<T>(entries: &[T], name: impl Fn(&T) -> &'static str) -> String {
    entries.iter().map(name).collect::<Vec<_>>().join(", ")
}

/// Every problem name, comma-separated.
pub fn problem_names() -> String {
    names(PROBLEMS, |p| p.name)
}

/// Draws the named problem with default sizes from `seed`.
pub fn draw_problem(name: &str, seed: u64) -> Result<Box<dyn RegisteredProblem>> {
    (problem_entry(name)?.draw)(seed)
}

fn problem_entry(name: &str) -> Result<&'static ProblemEntry> {
    PROBLEMS
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| CmlError::UnknownName {
            kind: "problem".into(),
            name: name.into(),
            allowed: format!("{} or the path of an instance file (.json)", problem_names()),
        })
}

/// Rebuilds a problem from an instance file's contents.
pub fn read_problem(file: &InstanceFile, source_name: &str) -> Result<Box<dyn RegisteredProblem>> {
    match PROBLEMS.iter().find(|p| p.name == file.problem) {
        Some(p) => (p.read)(file.reader(source_name)),
        None => Err(CmlError::Instance {
            source_name: source_name.into(),
            reason: format!(
                "unknown problem '{}'; allowed are {}",
                file.problem,
                problem_names()
            ),
        }),
    }
}

/// The same instance with its meta-parameters replaced by `theta`: through its instance file,
/// where every registered problem stores them as the array `theta`, so meta-training reaches
/// every problem of the registry without a constructor per problem.
pub fn with_theta(problem: &dyn RegisteredProblem, theta: &Vector) -> Result<Box<dyn RegisteredProblem>> {
    let mut file = problem.to_instance();
    let stored = file
        .arrays
        .iter_mut()
        .find(|a| a.name == "theta")
        .ok_or_else(|| CmlError::Instance {
            source_name: problem.name().into(),
            reason: "its instance file holds no array `theta`".into(),
        })?;
    if stored.values.len() != theta.len() {
        return Err(CmlError::invalid(
            "meta-parameters",
            theta.len(),
            format!(
                "{} entries for this {} instance",
                stored.values.len(),
                problem.name()
            ),
        ));
    }
    stored.values = theta.iter().map(|&v| FiniteOrNot(v)).collect();
    read_problem(&file, problem.name())
}

fn is_instance_file(spec: &str) -> bool {
    spec.ends_with(".json") || std::path::Path::new(spec).is_file()
}

/// A problem named on the command line: a registry name, or the path of an instance file.
pub fn resolve_problem(spec: &str, seed: u64) -> Result<Box<dyn RegisteredProblem>> {
    ProblemSource::parse(spec)?.build(seed)
}

/// [`resolve_problem`] with the seed its instance was drawn with: `seed` for a registry name, the
/// file's own (if it has one) for an instance file, which is read once.
pub fn resolve_problem_and_seed(spec: &str, seed: u64) -> Result<(Box<dyn RegisteredProblem>, Option<u64>)> {
    match ProblemSource::parse(spec)? {
        ProblemSource::InstanceFile(path) => {
            let file = InstanceFile::read(&path)?;
            Ok((read_problem(&file, &path.to_string_lossy())?, file.seed))
        }
        source => Ok((source.build(seed)?, Some(seed))),
    }
}

/// Where a sweep's problem instances come from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemSource {
    /// A registry name: one instance drawn per seed.
    Registry(String),
    /// An instance file: the same instance for every seed.
    InstanceFile(std::path::PathBuf),
    /// Built by the caller for each seed (`sweep::run_on`); the string only labels it.
    Custom(String),
}

impl ProblemSource {
    /// A problem as the command line names it: a registry name, or the path of an instance
    /// file. Unknown names are refused here, before any work.
    ///
    /// ```
    /// use cml::registry::ProblemSource;
    ///
    /// let source = ProblemSource::parse("quadratic")?;
    /// assert_eq!(source.build(0)?.dims(), source.build(0)?.dims());
    /// assert!(ProblemSource::parse("quadratc").is_err());
    /// # Ok::<(), cml::CmlError>(())
    /// ```
    pub fn parse(spec: &str) -> Result<Self> {
        if is_instance_file(spec) {
            return Ok(ProblemSource::InstanceFile(spec.into()));
        }
        problem_entry(spec)?;
        Ok(ProblemSource::Registry(spec.into()))
    }

    /// The instance of `seed`.
    pub fn build(&self, seed: u64) -> Result<Box<dyn RegisteredProblem>> {
        match self {
            ProblemSource::Registry(name) => draw_problem(name, seed),
            ProblemSource::InstanceFile(path) => {
                read_problem(&InstanceFile::read(path)?, &path.to_string_lossy())
            }
            ProblemSource::Custom(label) => Err(CmlError::invalid(
                "problem",
                label,
                "a problem built by the caller is run with sweep::run_on and its builder",
            )),
        }
    }
}

/// What the meta-training models are built from.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    pub net: Mlp,
    /// The initial strength of the pull toward the consolidated / initial values.
    pub strength: f64,
    /// Complex synapse: one strength per synapse (else one shared by all).
    pub per_synapse: bool,
}

/// A meta-training model (the paper's models of how a brain could meta-learn).
pub struct ModelEntry {
    pub name: &'static str,
    pub about: &'static str,
    pub build: fn(&ModelOptions) -> ModelSpec,
}

pub const MODELS: &[ModelEntry] = &[
    ModelEntry {
        name: "synapse",
        about: "complex synapse: fast weights pulled toward meta-learned consolidated values",
        build: |o| {
            ModelSpec::Synapse(SynapseSpec {
                net: o.net.clone(),
                per_synapse: o.per_synapse,
                strength: o.strength,
                fixed_strength: false,
            })
        },
    },
    ModelEntry {
        name: "modulation",
        about: "gain modulation (dual system): meta-learned weights, fast per-unit gains and shifts",
        build: |o| {
            ModelSpec::Modulation(ModulationSpec {
                net: o.net.clone(),
                strength: o.strength,
            })
        },
    },
];

/// Every meta-training model name, comma-separated.
pub fn model_names() -> String {
    names(MODELS, |m| m.name)
}

/// The named meta-training model.
pub fn model(name: &str, options: &ModelOptions) -> Result<ModelSpec> {
    match MODELS.iter().find(|m| m.name == name) {
        Some(m) => Ok((m.build)(options)),
        None => Err(CmlError::UnknownName {
            kind: "model".into(),
            name: name.into(),
            allowed: model_names(),
        }),
    }
}

/// A meta-gradient estimator: its parameters come from [`EstimatorParams`], each name using the
/// ones it needs.
pub struct EstimatorEntry {
    pub name: &'static str,
    pub about: &'static str,
    pub build: fn(&EstimatorParams) -> EstimatorSpec,
}

fn contrastive(p: &EstimatorParams) -> Contrastive {
    Contrastive {
        variant: p.variant,
        beta: p.beta,
        free: p.free,
        nudged: p.nudged,
    }
}

fn implicit(p: &EstimatorParams, solver: LinearSolver) -> EstimatorSpec {
    EstimatorSpec::Implicit(Implicit { solver, free: p.free })
}

/// The name of the contrastive rule with `beta` chosen by its error bar.
pub const CONTRASTIVE_AUTO: &str = AutoBeta::NAME;

pub const ESTIMATORS: &[EstimatorEntry] = &[
    EstimatorEntry {
        name: "contrastive",
        about: "the contrastive rule (variant, beta, free and nudged phases)",
        build: |p| EstimatorSpec::Contrastive(contrastive(p)),
    },
    EstimatorEntry {
        name: CONTRASTIVE_AUTO,
        about: "the contrastive rule with beta chosen by its error bar (as --beta auto: pilots from 0.01, --beta unused)",
        build: |p| EstimatorSpec::ContrastiveAutoBeta(AutoBeta::new(contrastive(p))),
    },
    EstimatorEntry {
        name: "implicit",
        about: "implicit differentiation, dense solve at the free solution",
        build: |p| implicit(p, LinearSolver::Dense),
    },
    EstimatorEntry {
        name: "cg",
        about: "implicit differentiation, conjugate gradient with solver-steps iterations",
        build: |p| {
            implicit(
                p,
                LinearSolver::ConjugateGradient {
                    steps: p.solver_steps,
                },
            )
        },
    },
    EstimatorEntry {
        name: "neumann",
        about: "implicit differentiation, Neumann series with solver-steps terms",
        build: |p| {
            implicit(
                p,
                LinearSolver::Neumann {
                    steps: p.solver_steps,
                    alpha: p.neumann_alpha,
                },
            )
        },
    },
    EstimatorEntry {
        name: "t1t2",
        about: "implicit differentiation with the Hessian replaced by the identity",
        build: |p| implicit(p, LinearSolver::Identity),
    },
    EstimatorEntry {
        name: "bptt",
        about: "backpropagation through all free-phase steps",
        build: |p| {
            EstimatorSpec::Unrolled(Unrolled {
                inner: p.free,
                truncation: None,
            })
        },
    },
    EstimatorEntry {
        name: "tbptt",
        about: "backpropagation through the last `truncation` free-phase steps",
        build: |p| {
            EstimatorSpec::Unrolled(Unrolled {
                inner: p.free,
                truncation: Some(p.truncation),
            })
        },
    },
    EstimatorEntry {
        name: "fomaml",
        about: "first-order MAML",
        build: |p| {
            EstimatorSpec::FirstOrder(FirstOrder {
                rule: FirstOrderRule::FirstOrderMaml,
                free: p.free,
            })
        },
    },
    EstimatorEntry {
        name: "reptile",
        about: "Reptile",
        build: |p| {
            EstimatorSpec::FirstOrder(FirstOrder {
                rule: FirstOrderRule::Reptile,
                free: p.free,
            })
        },
    },
];

/// Every estimator name, comma-separated.
pub fn estimator_names() -> String {
    names(ESTIMATORS, |e| e.name)
}

/// The named estimator with `params`, every parameter checked.
pub fn estimator(name: &str, params: &EstimatorParams) -> Result<EstimatorSpec> {
    let entry = ESTIMATORS
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| CmlError::UnknownName {
            kind: "estimator".into(),
            name: name.into(),
            allowed: estimator_names(),
        })?;
    let spec = (entry.build)(params);
    spec.validate()?;
    Ok(spec)
}
