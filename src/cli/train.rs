//! `cml train`: meta-train a model on few-shot sinusoid regression and log every meta-step.

use super::estimator_args::{EstimatorArgs, at_least_one};
use crate::io::write_atomically;
use crate::meta_training::{Control, MetaStep, TrainConfig, TrainState, train_with};
use crate::mlp::Mlp;
use crate::{CmlError, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[arg(long, required_unless_present = "problem", conflicts_with = "problem",
          help = format!("Model on few-shot sinusoids: {}", crate::registry::model_names()))]
    model: Option<String>,
    /// Instead of a model: any registry problem, each task drawn from a fresh seed (or an instance
    /// file, the same instance every task), with the current meta-parameters; no checkpoints.
    #[arg(long, help = format!("Instead of --model: a problem ({}) or an instance file; each task is a fresh draw at the current meta-parameters", crate::registry::problem_names()))]
    pub problem: Option<String>,
    /// Network layer sizes.
    #[arg(long, default_value = "1-40-40-1", conflicts_with = "problem")]
    net: String,
    /// Support and query points per task.
    #[arg(
        long,
        default_value_t = 10,
        allow_hyphen_values = true,
        conflicts_with = "problem"
    )]
    shots: i64,
    /// Initial strength lambda of the pull toward the consolidated / initial values.
    #[arg(
        long,
        default_value_t = 1.0,
        allow_hyphen_values = true,
        conflicts_with = "problem"
    )]
    strength: f64,
    /// Synapse model: one strength shared by all synapses instead of one each.
    #[arg(long, conflicts_with = "problem")]
    shared_strength: bool,
    #[command(flatten)]
    pub estimator: EstimatorArgs,
    #[arg(long, default_value_t = 100, allow_hyphen_values = true)]
    pub meta_steps: i64,
    #[arg(long, default_value_t = 8, allow_hyphen_values = true)]
    pub meta_batch: i64,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3, allow_hyphen_values = true)]
    pub meta_lr: f64,
    /// Held-out tasks for the meta-test loss.
    #[arg(long, default_value_t = 20, allow_hyphen_values = true)]
    pub eval_tasks: i64,
    #[arg(long, default_value_t = 10, allow_hyphen_values = true)]
    pub eval_every: i64,
    /// With `--beta auto`: choose beta again every this many meta-steps, on the meta-batch's first
    /// task (docs/ERROR_BAR.md §4).
    #[arg(long, default_value_t = crate::estimator::error_bar::AUTO_RECHOOSE_EVERY as i64, allow_hyphen_values = true)]
    pub beta_every: i64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder: train.csv, timing.csv, config.json, theta.json, checkpoint.json.
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
    /// Write a checkpoint every this many meta-steps (0: only when interrupted).
    #[arg(long, default_value_t = 10, allow_hyphen_values = true)]
    checkpoint_every: i64,
    /// Continue from OUT/checkpoint.json (the config must be the same).
    #[arg(long, conflicts_with = "problem")]
    resume: bool,
    /// Stop after this meta-step as if interrupted (for testing resumption).
    #[arg(long, hide = true)]
    stop_after: Option<usize>,
    /// A TOML file of flags (keys are the flag names); flags on the command line override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl TrainArgs {
    fn config(&self) -> Result<TrainConfig> {
        let net = Mlp::parse(&self.net)?;
        let name = self.model.as_deref().ok_or_else(|| {
            CmlError::invalid(
                "model",
                "none",
                format!("--model {} or --problem", crate::registry::model_names()),
            )
        })?;
        let model = crate::registry::model(
            name,
            &crate::registry::ModelOptions {
                net,
                strength: self.strength,
                per_synapse: !self.shared_strength,
            },
        )?;
        // Without a step size every phase takes 1 / (2 L^) at its start (docs/STEP_SIZE.md): the
        // curvature grows as meta-training raises the strengths, so a fixed default diverges.
        let mut estimator = self.estimator.spec()?;
        let beta_every = at_least_one("beta every", self.beta_every)?;
        if let crate::estimator::EstimatorSpec::ContrastiveAutoBeta(auto) = &mut estimator {
            auto.rechoose_every = beta_every;
        }
        let config = TrainConfig {
            model,
            shots: at_least_one("shots", self.shots)?,
            estimator,
            meta_steps: at_least_one("meta steps", self.meta_steps)?,
            meta_batch: at_least_one("meta batch", self.meta_batch)?,
            meta_lr: self.meta_lr,
            eval_tasks: at_least_one("eval tasks", self.eval_tasks)?,
            eval_every: at_least_one("eval every", self.eval_every)?,
            seed: self.seed,
        };
        config.validate()?;
        Ok(config)
    }
}

pub const CSV_HEADER: &str = "step,meta_train_loss,test_loss_before,test_loss_after,estimate_norm,gradient_evaluations,second_order_products,floats_kept,warnings,beta";

/// One CSV row; empty fields where a step has no value (no evaluation at that step).
pub fn csv_row(s: &MetaStep) -> String {
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:e}"));
    format!(
        "{},{},{},{},{},{},{},{},{},{}",
        s.step,
        opt(s.meta_train_loss),
        opt(s.evaluation.map(|e| e.before)),
        opt(s.evaluation.map(|e| e.after)),
        opt(s.estimate_norm),
        s.cost.gradient_evaluations,
        s.cost.second_order_products,
        s.cost.floats_kept,
        s.warnings,
        opt(s.beta)
    )
}

const CHECKPOINT_FORMAT: &str = "cml-checkpoint";

/// The checkpoint file: the effective config and the state to continue from.
#[derive(serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    format: String,
    config: serde_json::Value,
    state: TrainState,
}

fn read_checkpoint(path: &Path, config: &serde_json::Value) -> Result<TrainState> {
    let text = std::fs::read_to_string(path).map_err(|source| CmlError::Io {
        action: "cannot read checkpoint (nothing to resume?)",
        path: path.into(),
        source,
    })?;
    let err = |reason: String| CmlError::Instance {
        source_name: path.display().to_string(),
        reason,
    };
    let c: Checkpoint =
        serde_json::from_str(&text).map_err(|e| err(format!("not a valid checkpoint: {e}")))?;
    if c.format != CHECKPOINT_FORMAT {
        return Err(err(format!(
            "format is '{}', expected '{CHECKPOINT_FORMAT}'",
            c.format
        )));
    }
    if &c.config != config {
        let differing: Vec<String> = config
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| c.config.get(k.as_str()) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        return Err(err(format!(
            "the checkpoint was written with a different config ({} differs); resume with the same flags",
            differing.join(", ")
        )));
    }
    Ok(c.state)
}

pub fn run(args: TrainArgs) -> Result<()> {
    crate::autodiff::ensure_second_order()?;
    if let Some(problem) = &args.problem {
        return super::train_problem::run(&args, problem, args.estimator.spec()?);
    }
    let config = args.config()?;
    if let Some(w) = crate::meta_training::check_applicable(&config, args.estimator.allow_inapplicable)? {
        eprintln!("warning: {w}");
    }
    let checkpoint_every = usize::try_from(args.checkpoint_every)
        .map_err(|_| CmlError::invalid("checkpoint every", args.checkpoint_every, "a whole number >= 0"))?;
    let out = &args.out;
    let config_value = serde_json::to_value(&config).expect("config serialises");
    let checkpoint_path = out.join("checkpoint.json");
    let resume = if args.resume {
        Some(read_checkpoint(&checkpoint_path, &config_value)?)
    } else {
        None
    };
    // Fail on an unwritable folder before any work.
    write_atomically(
        &out.join("config.json"),
        serde_json::to_string_pretty(&config).expect("config").as_bytes(),
    )?;

    // Ctrl-C asks the loop to stop after the current meta-step, with a checkpoint.
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    let stop_after = args.stop_after;
    let stop = move |step: usize| interrupted.load(Ordering::SeqCst) || stop_after == Some(step);

    let bar = ProgressBar::new(config.meta_steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} meta-steps, {elapsed} elapsed, ETA {eta} {msg}")
            .expect("template"),
    );
    bar.set_position(resume.as_ref().map_or(0, |s| s.step as u64));
    // Checkpoints written and the time they took (reported in the summary).
    let mut checkpoints = (0usize, 0.0f64);
    let mut write_checkpoint = |state: &TrainState| -> Result<()> {
        let clock = std::time::Instant::now();
        let c = Checkpoint {
            format: CHECKPOINT_FORMAT.into(),
            config: config_value.clone(),
            state: state.clone(),
        };
        write_atomically(
            &checkpoint_path,
            serde_json::to_string(&c).expect("checkpoint").as_bytes(),
        )?;
        checkpoints = (checkpoints.0 + 1, checkpoints.1 + clock.elapsed().as_secs_f64());
        Ok(())
    };
    let mut control = Control {
        resume,
        checkpoint_every,
        checkpoint: &mut write_checkpoint,
        stop: &stop,
    };
    let result = train_with(&config, &mut control, &mut |s| {
        if let Some(e) = s.evaluation {
            bar.set_message(format!("meta-test loss {:.4} -> {:.4}", e.before, e.after));
        }
        if s.step > 0 {
            bar.inc(1);
        }
    });
    bar.finish_and_clear();
    let result = result?;
    let mut csv = format!("{CSV_HEADER}\n");
    let mut timing = String::from("step,wall_seconds\n");
    for s in &result.steps {
        let _ = writeln!(csv, "{}", csv_row(s));
        let _ = writeln!(timing, "{},{:.6}", s.step, s.wall_seconds);
    }
    write_atomically(&out.join("train.csv"), csv.as_bytes())?;
    write_atomically(&out.join("timing.csv"), timing.as_bytes())?;
    if let Some(step) = result.interrupted_at {
        eprintln!(
            "interrupted after meta-step {step} of {}; checkpoint written to {}; continue with the same flags and --resume",
            config.meta_steps,
            checkpoint_path.display()
        );
        std::process::exit(130);
    }
    let theta: Vec<f64> = result.theta.iter().copied().collect();
    write_atomically(
        &out.join("theta.json"),
        serde_json::to_string(&theta).expect("theta").as_bytes(),
    )?;
    summary(&config, &result.steps, result.theta.len(), out);
    if checkpoints.0 > 0 {
        println!(
            "checkpoints {} written to {}, {:.1} ms each on average",
            checkpoints.0,
            checkpoint_path.display(),
            1e3 * checkpoints.1 / checkpoints.0 as f64
        );
    }
    Ok(())
}

fn summary(config: &TrainConfig, steps: &[MetaStep], theta_len: usize, out: &Path) {
    let first = steps
        .first()
        .and_then(|s| s.evaluation)
        .expect("step 0 is evaluated");
    let last = steps
        .iter()
        .rev()
        .find_map(|s| s.evaluation)
        .expect("the last step is evaluated");
    let cost = steps
        .iter()
        .fold(crate::oracle::Cost::default(), |c, s| c + s.cost);
    println!(
        "model       {} ({theta_len} meta-parameters)",
        config.model.name()
    );
    println!("estimator   {}", config.estimator.estimator().describe());
    println!(
        "meta-steps  {} x {} tasks, Adam lr {}, {} held-out tasks",
        config.meta_steps, config.meta_batch, config.meta_lr, config.eval_tasks
    );
    println!(
        "meta-test   query loss before adaptation {:.4} -> {:.4}",
        first.before, last.before
    );
    println!(
        "            query loss after adaptation  {:.4} -> {:.4}",
        first.after, last.after
    );
    println!(
        "cost        {} gradient evaluations, {} second-order products",
        cost.gradient_evaluations, cost.second_order_products
    );
    println!(
        "wall time   {:.1} s",
        steps.last().map_or(0.0, |s| s.wall_seconds)
    );
    println!(
        "wrote       {}/{{train.csv,timing.csv,config.json,theta.json}}",
        out.display()
    );
}
