//! `cml figures`: every figure and table of the write-up, from the same code paths as `sweep`
//! and `train`. Each figure is written as PNG and SVG beside the CSV it was drawn from; each
//! table as Markdown under `paper/`; the write-up `paper/README.md` is generated from the same
//! numbers, so none of its numbers can go stale.

mod bandit;
pub mod bandit_meta;
mod choice;
mod compute;
mod digits_decay;
mod error_bar;
mod few_shot;

mod spiking;

mod theory;
mod training;
pub mod units;
mod weight_decay;
mod writeup;

pub use training::figure_training_config;

use crate::error::{CmlError, Result};
use crate::io::write_atomically;
use crate::report::{plot, template};
use std::path::{Path, PathBuf};
use units::{Job, PaperBudgets, Whole};
pub use units::{Scale, Selection};

/// Where and how much.
#[derive(Debug, Clone)]
pub struct Settings {
    pub out: PathBuf,
    pub paper: PathBuf,
    pub scale: Scale,
    pub seed: u64,
}

impl Settings {
    /// Smaller grids, fewer seeds and steps; the same code paths.
    pub fn quick(&self) -> bool {
        self.scale == Scale::Quick
    }
}

/// The one registry of the write-up's jobs, in the order they run and report.
pub(crate) fn registry() -> Vec<&'static dyn Job> {
    vec![
        &THEORY,
        &COMPUTE,
        &training::TRAINING,
        &COST,
        &WEIGHT_DECAY,
        &error_bar::ErrorBarJob,
        &digits_decay::DIGITS_DECAY,
        &few_shot::FEW_SHOT,
        &bandit::BANDIT,
        &spiking::SPIKING,
    ]
}

/// The jobs `--only` can name, with what each draws, in the order they run.
pub fn jobs() -> Vec<(&'static str, &'static str)> {
    registry().iter().map(|j| (j.name(), j.about())).collect()
}

fn no_protocol(_: &Settings) -> Result<serde_json::Value> {
    Ok(serde_json::Value::Null)
}

static THEORY: Whole = Whole {
    name: "theory",
    about: "error vs beta (quadratic, complex synapse), best beta and error vs delta, slopes table",
    protocol: no_protocol,
    run: |s, f| Ok(writeup::theory_section(&theory::run(s, f)?)),
    at_report: None,
    paper: PaperBudgets::Default("the paper states no budgets for its bound; these grids are this testbed's"),
};
static COMPUTE: Whole = Whole {
    name: "compute",
    about: "error vs compute for every estimator on a complex-synapse problem, cheapest-setting table",
    protocol: no_protocol,
    run: |s, f| Ok(writeup::compute_section(&compute::run_compute(s, f)?)),
    at_report: None,
    paper: PaperBudgets::Default("a measurement of this testbed, not an experiment of the paper"),
};
static COST: Whole = Whole {
    name: "cost",
    about: "time and floats kept per meta-gradient vs K, cost table",
    protocol: no_protocol,
    run: |s, f| Ok(writeup::cost_section(&compute::run_cost(s, f)?)),
    // The allocator bench's file sits in the real output folder, not the unit's.
    at_report: Some(writeup::with_measured_memory),
    paper: PaperBudgets::Default("a measurement of this testbed, not an experiment of the paper"),
};
static WEIGHT_DECAY: Whole = Whole {
    name: "weight-decay",
    about: "per-parameter weight decay learned on the diabetes data set, test-loss table",
    protocol: no_protocol,
    run: |s, f| Ok(writeup::weight_decay_section(&weight_decay::run(s, f)?)),
    at_report: None,
    paper: PaperBudgets::Default(
        "this testbed's small problem; the paper's weight-decay experiment is digits-decay",
    ),
};

/// What a run wrote, with each job's section of the write-up.
#[derive(Debug, Default)]
pub struct Results {
    pub(crate) sections: Vec<(&'static str, template::Context)>,
    pub files: Vec<PathBuf>,
    /// Wall seconds of the units, summed (units may have run in parallel or on other machines).
    pub unit_seconds: Option<f64>,
}

/// Plain `cml figures`: every unit of the selected jobs on this machine, in parallel over the
/// cores, then the report. The units go to a folder of their own under the system's temporary
/// folder, removed once the report is written; `--results` keeps them (see [`units`]).
pub fn run(settings: &Settings, selection: &Selection, log: &(dyn Fn(&str) + Sync)) -> Result<Results> {
    let results = std::env::temp_dir().join(format!("cml-figures-{}", std::process::id()));
    let outcome = units::run_slice(settings, selection, (0, 1), &results, log)
        .and_then(|_| units::report(settings, selection, &results));
    let _ = std::fs::remove_dir_all(&results);
    outcome
}

/// The full protocol of each job that has one, as shipped in `configs/<job>.toml` (a test checks
/// that the files match what the jobs run).
pub fn protocols() -> Result<Vec<(String, serde_json::Value)>> {
    /// The jobs whose protocol ships as `configs/<job>.toml` (dashes as underscores).
    const SHIPPED: [&str; 4] = ["bandit", "few-shot", "digits-decay", "spiking"];
    let settings = Settings {
        out: PathBuf::new(),
        paper: PathBuf::new(),
        scale: Scale::Default,
        seed: 0,
    };
    registry()
        .into_iter()
        .filter(|j| SHIPPED.contains(&j.name()))
        .map(|j| Ok((j.name().replace('-', "_"), j.protocol(&settings)?)))
        .collect()
}

/// The arithmetic mean, summed in order.
pub(crate) fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Writes a CSV (header plus rows) whole or not at all, and records it.
pub(crate) fn write_csv(path: &Path, header: &str, rows: &[String], files: &mut Vec<PathBuf>) -> Result<()> {
    // Fields are not quoted: a row whose field count differs from the header's (a name with a
    // comma) would shift its columns, so it is an error before anything is written.
    let columns = header.split(',').count();
    if let Some(bad) = rows.iter().find(|r| r.split(',').count() != columns) {
        return Err(CmlError::invalid(
            format!("a row of {}", path.display()),
            bad,
            format!("{columns} comma-separated fields, as in the header {header}"),
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_row_with_a_stray_comma_is_an_error_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        let mut files = Vec::new();
        let rows = vec!["a,1".to_string(), "greedy, no meta,2".to_string()];
        let err = write_csv(&path, "agent,value", &rows, &mut files)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("greedy, no meta,2") && err.contains("2 comma-separated fields"),
            "{err}"
        );
        assert!(!path.exists() && files.is_empty());
        write_csv(&path, "agent,value", &rows[..1], &mut files).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "agent,value\na,1\n");
    }
}
