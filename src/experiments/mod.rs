//! `cml figures`: every figure and table of the write-up, from the same code paths as `sweep`
//! and `train`. Each figure is written as PNG and SVG beside the CSV it was drawn from; each
//! table as Markdown under `paper/`; the write-up `paper/README.md` is generated from the same
//! numbers, so none of its numbers can go stale.

/// A job's protocol at a scale (a [`Scale`]), as shipped in `configs/` and compiled in:
/// `configs/<file>.toml` at the default scale, `configs/quick/<file>.toml` and
/// `configs/paper/<file>.toml` at the others; with `default_at_paper`, the default's at the paper
/// scale (a job the paper gives no budgets for).
macro_rules! shipped_protocol {
    ($scale:expr, $file:literal) => {
        shipped_protocol!(@at $scale, $file, [concat!("paper/", $file)])
    };
    ($scale:expr, $file:literal, default_at_paper) => {
        shipped_protocol!(@at $scale, $file, [$file])
    };
    (@at $scale:expr, $file:literal, [$($paper:tt)+]) => {{
        let (path, text) = match $scale {
            $crate::run::units::Scale::Quick => (
                concat!("configs/quick/", $file, ".toml"),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/quick/", $file, ".toml")),
            ),
            $crate::run::units::Scale::Default => (
                concat!("configs/", $file, ".toml"),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/", $file, ".toml")),
            ),
            $crate::run::units::Scale::Paper => (
                concat!("configs/", $($paper)+, ".toml"),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/", $($paper)+, ".toml")),
            ),
        };
        $crate::protocol::shipped(path, text)
    }};
}

mod bandit;
pub mod bandit_meta;
mod compute;
mod digits_decay;
mod error_bar;
mod few_shot;

mod spiking;

mod searches;
mod theory;
mod training;
mod weight_decay;
mod writeup;

pub use training::{Chosen, figure_training_config};

use crate::error::Result;
use crate::io::write_atomically;
pub(crate) use crate::io::write_csv;
use crate::report::{plot, template};
pub(crate) use crate::{chain, choice, units};
use std::path::{Path, PathBuf};
use units::{Job, PaperBudgets, Whole};
pub use units::{PlanRow, Scale, Selection, Settings, SliceSummary, Stage};

/// What a job hands the write-up: its section's values.
pub(crate) type Section = template::Context;

/// The one registry of the write-up's jobs, in the order they run and report.
pub(crate) fn registry() -> Vec<&'static dyn Job<Section>> {
    vec![
        &THEORY,
        &COMPUTE,
        &training::TRAINING,
        &COST,
        &weight_decay::WEIGHT_DECAY,
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

static THEORY: Whole<Section> = Whole {
    name: "theory",
    about: "error vs beta (quadratic, complex synapse), best beta and error vs delta, slopes table",
    protocol: no_protocol,
    run: |s, f| Ok(writeup::theory_section(&theory::run(s, f)?)),
    at_report: None,
    paper: PaperBudgets::Default("the paper states no budgets for its bound; these grids are this testbed's"),
    configurable: false,
};
static COMPUTE: Whole<Section> = Whole {
    name: "compute",
    about: "error vs compute for every estimator on a complex-synapse problem, cheapest-setting table",
    protocol: no_protocol,
    run: |s, f| Ok(writeup::compute_section(&compute::run_compute(s, f)?)),
    at_report: None,
    paper: PaperBudgets::Default("a measurement of this testbed, not an experiment of the paper"),
    configurable: false,
};
static COST: Whole<Section> = Whole {
    name: "cost",
    about: "time and floats kept per meta-gradient vs K, cost table",
    protocol: no_protocol,
    run: |s, f| Ok(writeup::cost_section(&compute::run_cost(s, f)?)),
    // The allocator bench's file sits in the real output folder, not the unit's.
    at_report: Some(writeup::with_measured_memory),
    paper: PaperBudgets::Default("a measurement of this testbed, not an experiment of the paper"),
    configurable: false,
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
    let outcome = run_slice(settings, selection, (0, 1), &results, log)
        .and_then(|_| report(settings, selection, &results));
    let _ = std::fs::remove_dir_all(&results);
    outcome
}

/// Runs slice `slice` of the selected jobs' units into `results` ([`units::run_slice`]).
pub fn run_slice(
    settings: &Settings,
    selection: &Selection,
    slice: (usize, usize),
    results: &Path,
    log: &(dyn Fn(&str) + Sync),
) -> Result<SliceSummary> {
    plot::register_font()?;
    units::run_slice(&registry(), settings, selection, slice, results, log)
}

/// Every figure, table and (when everything is selected) the write-up, from the units stored
/// under `results` ([`units::report`]).
pub fn report(settings: &Settings, selection: &Selection, results: &Path) -> Result<Results> {
    plot::register_font()?;
    let reported = units::report(&registry(), settings, selection, results)?;
    let mut out = Results {
        sections: reported.sections,
        files: reported.files,
        unit_seconds: Some(reported.unit_seconds),
    };
    if selection.everything() {
        let path = settings.paper.join("README.md");
        write_atomically(&path, writeup::render(settings, &out)?.as_bytes())?;
        out.files.push(path);
    }
    Ok(out)
}

/// Every selected job's units and an estimate of their cost ([`units::plan`]).
pub fn plan(settings: &Settings, selection: &Selection, previous: Option<&Path>) -> Result<Vec<PlanRow>> {
    units::plan(&registry(), settings, selection, previous)
}

/// The full protocol at `scale` of each job that has one (the configurable jobs), dashes in the
/// name as underscores: the file name in `configs/` (`configs/quick/`, `configs/paper/` at those
/// scales, where the job ships one).
pub fn protocols(scale: Scale) -> Result<Vec<(String, serde_json::Value)>> {
    let settings = Settings::at(scale);
    registry()
        .into_iter()
        .filter(|j| j.configurable())
        .map(|j| Ok((j.name().replace('-', "_"), j.protocol(&settings)?)))
        .collect()
}

/// The arithmetic mean, summed in order.
pub(crate) fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Each distinct value once, in first-seen order, joined by "; " (a budget table's per-seed inner
/// work, the same on most seeds).
pub(crate) fn distinct_joined(values: &[String]) -> String {
    let mut distinct: Vec<&str> = Vec::new();
    for v in values {
        if !distinct.contains(&v.as_str()) {
            distinct.push(v);
        }
    }
    distinct.join("; ")
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

/// A job's table page rendered from its template (`src/experiments/tables/<name>`, where the
/// prose lives) with the values of `context`.
pub(crate) fn render_table(template: &str, name: &str, context: &template::Context) -> Result<String> {
    template::render(template, context).map_err(|reason| {
        crate::CmlError::invalid(
            format!("the table template (src/experiments/tables/{name})"),
            "a tag",
            reason,
        )
    })
}

/// What a table row of one paired comparison shows: `difference` and `ci95` (as `number` writes
/// them), the Holm-adjusted `p` and `equivalence_p`, and the `verdict`.
pub(crate) fn comparison_context(
    k: &crate::stats::Comparison,
    number: impl Fn(f64) -> String,
) -> template::Context {
    template::Context::new()
        .text("difference", number(k.mean))
        .text("ci95", number(k.ci95))
        .text("p", training::p_value(k.holm))
        .text("equivalence_p", training::p_value(k.equivalence_holm))
        .text("verdict", k.verdict.describe())
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
    #[test]
    fn every_configurable_protocol_passes_its_checks_and_survives_an_empty_change_at_every_scale() {
        // An empty change merges nothing and checks the protocol: the built-in protocols must
        // pass their own checks, and deserialising them back must give the same protocol.
        let configurable: Vec<&str> = registry()
            .iter()
            .filter(|j| j.configurable())
            .map(|j| j.name())
            .collect();
        assert_eq!(
            configurable,
            [
                "training",
                "weight-decay",
                "error-bar",
                "digits-decay",
                "few-shot",
                "bandit",
                "spiking"
            ]
        );
        for scale in [Scale::Quick, Scale::Default, Scale::Paper] {
            let plain = Settings::at(scale);
            for job in registry().into_iter().filter(|j| j.configurable()) {
                let changed = Settings {
                    protocols: vec![(job.name().to_string(), serde_json::json!({}))],
                    ..plain.clone()
                };
                assert_eq!(
                    job.protocol(&changed).unwrap(),
                    job.protocol(&plain).unwrap(),
                    "{} at {scale:?}",
                    job.name()
                );
            }
        }
        // The keys that only count units are keys of the protocol (a misspelt one would make
        // a run that adds seeds recompute the stored ones).
        for job in registry() {
            let default = Settings::at(Scale::Default);
            let protocol = job.protocol(&default).unwrap();
            for key in job.extent_keys() {
                assert!(
                    protocol.get(*key).is_some_and(|v| v.is_u64()),
                    "{} {key}",
                    job.name()
                );
            }
        }
        // A change is checked: two seeds at least, for an interval over seeds.
        let one_seed = Settings {
            protocols: vec![("few-shot".into(), serde_json::json!({"seeds": 1}))],
            ..Settings::at(Scale::Quick)
        };
        // The error bar takes new instance counts, and refuses a change to what records the code.
        let eb = |change: serde_json::Value| Settings {
            protocols: vec![("error-bar".into(), change)],
            ..one_seed.clone()
        };
        let counts = serde_json::json!({"instances": [["quadratic", 3], ["ridge", 1], ["logistic", 1], ["synapse", 1], ["modulation", 1]]});
        // 7 calibration instances and the quick scale's 5 fresh ones.
        assert_eq!(error_bar::ErrorBarJob.units(&eb(counts)).unwrap().len(), 12);
        let err = error_bar::ErrorBarJob
            .protocol(&eb(serde_json::json!({"betas": [0.1]})))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("error-bar protocol: betas = a changed value"),
            "{err}"
        );
        let err = few_shot::FEW_SHOT.protocol(&one_seed).unwrap_err().to_string();
        assert!(err.contains("few-shot protocol: seeds = 1: at least 2"), "{err}");
    }
}

#[cfg(test)]
mod paper_scale_tests {
    use super::*;
    use crate::units::{Stored, check_scale, fingerprint};
    use serde_json::Value;

    fn settings(scale: Scale) -> Settings {
        Settings::at(scale)
    }

    #[test]
    fn a_job_whose_paper_scale_is_its_default_shares_the_default_units() {
        let (paper, default) = (settings(Scale::Paper), settings(Scale::Default));
        for job in registry() {
            let (p, d) = (
                fingerprint(job, &paper).unwrap(),
                fingerprint(job, &default).unwrap(),
            );
            match job.paper_budgets() {
                // The same units: a default run's stored units count at the paper scale.
                PaperBudgets::Default(_) => assert_eq!(p, d, "{}", job.name()),
                // Its own budgets: a default unit is refused at the paper scale.
                PaperBudgets::Own => assert_ne!(p, d, "{}", job.name()),
                PaperBudgets::NotYet => {}
            }
        }
    }

    /// A job without paper budgets (every registered job has them now).
    struct Unscaled;

    impl Job<Section> for Unscaled {
        fn name(&self) -> &'static str {
            "unscaled"
        }
        fn about(&self) -> &'static str {
            "a job without paper budgets"
        }
        fn protocol(&self, _: &Settings) -> Result<Value> {
            Ok(Value::Null)
        }
        fn units(&self, _: &Settings) -> Result<Vec<String>> {
            Ok(vec!["all".into()])
        }
        fn run_unit(&self, _: &Settings, _: &str, _: &Path) -> Result<Value> {
            Ok(Value::Null)
        }
        fn report(&self, _: &Settings, _: &[Stored], _: &mut Vec<PathBuf>) -> Result<Section> {
            Ok(Section::default())
        }
    }

    #[test]
    fn the_paper_scale_of_a_job_without_budgets_is_refused_by_name() {
        static UNSCALED: Unscaled = Unscaled;
        let jobs = registry();
        assert!(jobs.iter().all(|j| j.paper_budgets() != PaperBudgets::NotYet));
        let err = check_scale(&jobs, &[&UNSCALED], &settings(Scale::Paper))
            .unwrap_err()
            .to_string();
        // The error names the job and the jobs that have paper budgets.
        assert!(
            err.contains("paper for unscaled") && err.contains("few-shot"),
            "{err}"
        );
        assert!(check_scale(&jobs, &[&UNSCALED], &settings(Scale::Default)).is_ok());
        assert!(check_scale(&jobs, &jobs, &settings(Scale::Paper)).is_ok());
    }
}
