//! `cml figures`: every figure and table of the write-up, from the same code paths as `sweep`
//! and `train`. Each figure is written as PNG and SVG beside the CSV it was drawn from; each
//! table as Markdown under `paper/`; the write-up `paper/README.md` is generated from the same
//! numbers, so none of its numbers can go stale.

mod bandit;
mod compute;
mod digits_decay;
mod error_bar;
mod few_shot;
pub mod plot;
mod spiking;
mod template;
mod theory;
mod training;
mod weight_decay;
mod writeup;

pub use training::figure_training_config;

use crate::error::{CmlError, Result};
use crate::io::write_atomically;
use std::path::{Path, PathBuf};

/// Where and how much.
#[derive(Debug, Clone)]
pub struct Settings {
    pub out: PathBuf,
    pub paper: PathBuf,
    /// Smaller grids, fewer seeds and steps; the same code paths.
    pub quick: bool,
    pub seed: u64,
}

/// The jobs `--only` can name, in the order they run.
pub const JOBS: &[(&str, &str)] = &[
    (
        "theory",
        "error vs beta (quadratic, complex synapse), best beta and error vs delta, slopes table",
    ),
    (
        "compute",
        "error vs compute for every estimator on a complex-synapse problem, cheapest-setting table",
    ),
    (
        "training",
        "meta-training curves and example tasks for both models, final-loss table",
    ),
    ("cost", "time and floats kept per meta-gradient vs K, cost table"),
    (
        "weight-decay",
        "per-parameter weight decay learned on the diabetes data set, test-loss table",
    ),
    (
        "error-bar",
        "the contrastive estimate's error bar against the true error on every problem, beta auto against a grid",
    ),
    (
        "digits-decay",
        "per-parameter weight decay of a digit classifier: the contrastive rule against CG, Neumann, T1-T2, truncated BPTT",
    ),
    (
        "few-shot",
        "5-way 1- and 5-shot classification of rotated handwritten digits: the contrastive rule against MAML, first-order MAML, Reptile, iMAML",
    ),
    (
        "bandit",
        "wheel bandit: agents meta-learned by the contrastive rule and MAML against bandit baselines, regret table",
    ),
    (
        "spiking",
        "recurrent spiking network learning by e-prop: the contrastive rule against BPTT through learning, MSE table",
    ),
];

/// Everything the write-up quotes, filled in by the jobs that ran.
#[derive(Debug, Default)]
pub struct Results {
    pub theory: Option<theory::TheoryResults>,
    pub compute: Option<compute::ComputeResults>,
    pub training: Option<training::TrainingResults>,
    pub cost: Option<compute::CostResults>,
    pub weight_decay: Option<weight_decay::WeightDecayResults>,
    pub error_bar: Option<error_bar::CalibrationResults>,
    pub digits_decay: Option<digits_decay::DigitsDecayResults>,
    pub few_shot: Option<few_shot::FewShotResults>,
    pub bandit: Option<bandit::BanditResults>,
    pub spiking: Option<spiking::SpikingResults>,
    pub files: Vec<PathBuf>,
    /// Wall time of the jobs, quoted in the write-up.
    pub elapsed_seconds: Option<f64>,
}

pub fn run(settings: &Settings, only: Option<&str>, log: &mut dyn FnMut(&str)) -> Result<Results> {
    crate::autodiff::ensure_second_order()?;
    if let Some(name) = only
        && !JOBS.iter().any(|(n, _)| *n == name)
    {
        return Err(CmlError::UnknownName {
            kind: "figure job".into(),
            name: name.into(),
            allowed: JOBS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        });
    }
    plot::register_font()?;
    let clock = std::time::Instant::now();
    let wanted = |name: &str| only.is_none_or(|o| o == name);
    let mut results = Results::default();
    if wanted("theory") {
        log("theory: sweeps over beta and delta");
        results.theory = Some(theory::run(settings, &mut results.files)?);
    }
    if wanted("compute") {
        log("compute: every estimator against its cost");
        results.compute = Some(compute::run_compute(settings, &mut results.files)?);
    }
    if wanted("training") {
        log("training: meta-training both models with every estimator");
        results.training = Some(training::run(settings, &mut results.files)?);
    }
    if wanted("cost") {
        log("cost: time and memory as the inner loop grows");
        results.cost = Some(compute::run_cost(settings, &mut results.files)?);
    }
    if wanted("weight-decay") {
        log("weight-decay: per-parameter weight decay on a real data set");
        results.weight_decay = Some(weight_decay::run(settings, &mut results.files)?);
    }
    if wanted("error-bar") {
        log("error-bar: the error bar's calibration and beta auto");
        results.error_bar = Some(error_bar::run(settings, &mut results.files)?);
    }
    if wanted("digits-decay") {
        log("digits-decay: per-parameter weight decay of a digit classifier");
        results.digits_decay = Some(digits_decay::run(settings, &mut results.files)?);
    }
    if wanted("few-shot") {
        log("few-shot: few-shot classification of rotated digits");
        results.few_shot = Some(few_shot::run(settings, &mut results.files)?);
    }
    if wanted("bandit") {
        log("bandit: meta-learned bandit agents against the baselines on the wheel bandit");
        results.bandit = Some(bandit::run(settings, &mut results.files)?);
    }
    if wanted("spiking") {
        log("spiking: a spiking network learning by e-prop, meta-learned by the contrastive rule");
        results.spiking = Some(spiking::run(settings, &mut results.files)?);
    }
    results.elapsed_seconds = Some(clock.elapsed().as_secs_f64());
    if only.is_none() {
        let path = settings.paper.join("README.md");
        write_atomically(&path, writeup::render(settings, &results)?.as_bytes())?;
        results.files.push(path);
    }
    Ok(results)
}

/// The full protocol of each job that has one, as shipped in `configs/<job>.toml` (a test checks
/// that the files match what the jobs run).
pub fn protocols() -> Result<Vec<(&'static str, serde_json::Value)>> {
    let json = |v: std::result::Result<serde_json::Value, serde_json::Error>| {
        v.map_err(|e| CmlError::invalid("protocol", "not serialisable", e.to_string()))
    };
    Ok(vec![
        (
            "bandit",
            json(serde_json::to_value(bandit::Protocol::new(false)?))?,
        ),
        (
            "few_shot",
            json(serde_json::to_value(few_shot::Protocol::new(false)))?,
        ),
        (
            "digits_decay",
            json(serde_json::to_value(digits_decay::Protocol::new(false)?))?,
        ),
        (
            "spiking",
            json(serde_json::to_value(spiking::Protocol::new(false)))?,
        ),
    ])
}

/// Writes a CSV (header plus rows) whole or not at all, and records it.
pub(crate) fn write_csv(path: &Path, header: &str, rows: &[String], files: &mut Vec<PathBuf>) -> Result<()> {
    let mut text = format!("{header}\n");
    for r in rows {
        text.push_str(r);
        text.push('\n');
    }
    write_atomically(path, text.as_bytes())?;
    files.push(path.to_path_buf());
    Ok(())
}

/// Writes a Markdown table under `paper/` and records it.
pub(crate) fn write_table(
    settings: &Settings,
    name: &str,
    text: &str,
    files: &mut Vec<PathBuf>,
) -> Result<()> {
    let path = settings.paper.join(name);
    write_atomically(&path, text.as_bytes())?;
    files.push(path);
    Ok(())
}

/// Saves a figure as PNG and SVG and records both.
pub(crate) fn save(
    settings: &Settings,
    name: &str,
    figure: &plot::Figure,
    files: &mut Vec<PathBuf>,
) -> Result<()> {
    let stem = settings.out.join(name);
    figure.save(&stem)?;
    files.push(stem.with_extension("png"));
    files.push(stem.with_extension("svg"));
    Ok(())
}

/// A number for a table: 3 significant digits.
/// `items` joined by `sep`, or `none` when there are none (the tables' lists of exceptions).
pub(crate) fn joined_or_none<S: AsRef<str>>(items: &[S], sep: &str) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(sep)
    }
}

/// The tables' sentence on meta-training runs that stopped early (empty when none did).
pub(crate) fn stopped_note(stopped: &[String]) -> String {
    if stopped.is_empty() {
        String::new()
    } else {
        format!(
            "\nMeta-training stopped early (evaluated at its last completed meta-step): {}.\n",
            stopped.join("; ")
        )
    }
}

/// Which of `[above, below, neither]` a difference `mean +- half` (a confidence interval) is:
/// above 0, below 0, or an interval that contains 0.
pub(crate) fn interval_verdict(mean: f64, half: f64, words: [&'static str; 3]) -> &'static str {
    if mean - half > 0.0 {
        words[0]
    } else if mean + half < 0.0 {
        words[1]
    } else {
        words[2]
    }
}

pub(crate) fn num(v: f64) -> String {
    if v == 0.0 || (1e-2..1e4).contains(&v.abs()) {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

/// A running mean over the last 10 values, against their 1-based index (meta-batch losses are
/// noisy: each meta-step draws its own tasks).
pub(crate) fn running_mean(values: &[f64]) -> Vec<(f64, f64)> {
    (0..values.len())
        .map(|i| {
            let w = &values[i.saturating_sub(9)..=i];
            ((i + 1) as f64, w.iter().sum::<f64>() / w.len() as f64)
        })
        .collect()
}
