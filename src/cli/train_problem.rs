//! `cml train --problem NAME`: meta-training on any problem of the registry. Each task is the
//! problem drawn from a fresh seed (an instance file: the same instance every task) at the current
//! meta-parameters (`registry::with_theta`); the meta-test is the outer loss after adaptation (the
//! estimator's free phase) on held-out draws. The run is one [`TaskMetaTraining`], the executor
//! the figure jobs use.

use super::estimator_args::at_least_one;
use super::train::TrainArgs;
use crate::estimator::EstimatorSpec;
use crate::inner::{InnerSolver, Phase};
use crate::io::write_atomically;
use crate::linalg::{Vector, to_dvector};
use crate::meta_training::{EVAL_TASKS, TaskMetaTraining};
use crate::oracle::Oracle;
use crate::problem::ProblemInstance;
use crate::registry::{ProblemSource, with_theta};
use crate::rng::stream;
use crate::{CmlError, Result};
use rand::Rng as _;
use std::fmt::Write as _;
use std::sync::Mutex;

/// The outer loss after adapting `problem` with `estimator`'s free phase from its initial point.
fn adapted_outer_loss(estimator: &EstimatorSpec, problem: &dyn ProblemInstance) -> Result<f64> {
    let theta = problem.theta();
    let start = problem.initial_phi(theta)?;
    let phi = estimator
        .free_phase()
        .solve(
            &Oracle::new(problem),
            &Phase::new(&start, theta, 0.0, "adaptation"),
        )?
        .phi;
    Ok(problem.outer_loss(&phi, theta)?.to_scalar::<f64>()?)
}

pub(super) fn run(args: &TrainArgs, problem: &str, mut estimator: EstimatorSpec) -> Result<()> {
    let source = ProblemSource::parse(problem)?;
    let meta_steps = at_least_one("meta steps", args.meta_steps)?;
    let meta_batch = at_least_one("meta batch", args.meta_batch)?;
    let eval_tasks = at_least_one("eval tasks", args.eval_tasks)?;
    let eval_every = at_least_one("eval every", args.eval_every)?;
    if let EstimatorSpec::ContrastiveAutoBeta(auto) = &mut estimator {
        auto.rechoose_every = at_least_one("beta every", args.beta_every)?;
    }
    estimator.validate()?;
    // The initial meta-parameters are those of the instance drawn from the run's seed.
    let first = source.build(args.seed)?;
    if let Some(w) =
        estimator.check_applicable(first.as_ref(), first.theta(), args.estimator.allow_inapplicable)?
    {
        eprintln!("warning: {w}");
    }
    let theta0 = to_dvector(first.theta())?;
    let config = serde_json::json!({
        "problem": source,
        "estimator": estimator.estimator().describe(),
        "meta_steps": meta_steps,
        "meta_batch": meta_batch,
        "meta_lr": args.meta_lr,
        "eval_tasks": eval_tasks,
        "eval_every": eval_every,
        "seed": args.seed,
    });
    let out = &args.out;
    // Fail on an unwritable folder before any work.
    write_atomically(
        &out.join("config.json"),
        serde_json::to_string_pretty(&config).expect("config").as_bytes(),
    )?;

    let at = |task_seed: &u64, theta: &Vector| -> Result<Box<dyn ProblemInstance>> {
        Ok(with_theta(source.build(*task_seed)?.as_ref(), theta)?)
    };
    let mut held_out_rng = stream(args.seed, EVAL_TASKS);
    let held_out: Vec<u64> = (0..eval_tasks).map(|_| held_out_rng.random()).collect();
    let evaluate = |theta: &Vector| -> Result<f64> {
        let mut total = 0.0;
        for seed in &held_out {
            total += adapted_outer_loss(&estimator, at(seed, theta)?.as_ref())?;
        }
        Ok(total / held_out.len() as f64)
    };
    let evaluations = Mutex::new(vec![(0, evaluate(&theta0)?)]);
    let observe = |step: usize, theta: &Vector| -> Result<()> {
        if step.is_multiple_of(eval_every) || step == meta_steps {
            let loss = evaluate(theta)?;
            evaluations.lock().expect("not poisoned").push((step, loss));
        }
        Ok(())
    };
    let run = TaskMetaTraining {
        estimator: &estimator,
        meta_steps,
        meta_batch,
        meta_lr: args.meta_lr,
        seed: args.seed,
        sample: &|rng| Ok(rng.random::<u64>()),
        problem: &at,
        observe: Some(&observe),
    }
    .run(theta0)?;
    let evaluations = evaluations.into_inner().expect("not poisoned");

    let mut csv = String::from("step,meta_train_loss,test_loss_after\n");
    let mut timing = String::from("step,wall_seconds\n");
    let held_out_at = |step: usize| {
        evaluations
            .iter()
            .find(|e| e.0 == step)
            .map_or(String::new(), |e| format!("{:e}", e.1))
    };
    let _ = writeln!(csv, "0,,{}", held_out_at(0));
    for s in &run.log {
        let _ = writeln!(csv, "{},{:e},{}", s.step, s.query_loss, held_out_at(s.step));
        let _ = writeln!(timing, "{},{:.6}", s.step, s.seconds);
    }
    write_atomically(&out.join("train.csv"), csv.as_bytes())?;
    write_atomically(&out.join("timing.csv"), timing.as_bytes())?;
    let theta: Vec<f64> = run.theta.iter().copied().collect();
    write_atomically(
        &out.join("theta.json"),
        serde_json::to_string(&theta).expect("theta").as_bytes(),
    )?;
    let (first_loss, last_loss) = (evaluations[0], *evaluations.last().expect("step 0"));
    println!("problem     {} ({} meta-parameters)", first.name(), theta.len());
    println!("estimator   {}", estimator.estimator().describe());
    println!(
        "meta-steps  {} of {meta_steps} x {meta_batch} tasks, Adam lr {}, {eval_tasks} held-out tasks",
        run.log.len(),
        args.meta_lr
    );
    println!(
        "meta-test   outer loss after adaptation {:.4} (step 0) -> {:.4} (step {})",
        first_loss.1, last_loss.1, last_loss.0
    );
    println!(
        "wrote       {}/{{train.csv,timing.csv,config.json,theta.json}}",
        out.display()
    );
    match run.stopped {
        None => Ok(()),
        Some(reason) => Err(CmlError::invalid(
            "meta-training",
            reason,
            "every meta-step's estimate to succeed: lower --meta-lr or set the phases' step sizes \
             (--free-step-size, --nudged-step-size); the completed steps are in train.csv",
        )),
    }
}
