//! `cml figures`: regenerate every figure, table and the write-up, on one machine or as units
//! spread over a cluster and merged.

use crate::experiments::{self, Scale, Selection, Settings, Stage, run};
use crate::sweep::parse_shard;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct FiguresArgs {
    /// Folder for every output: the figures (PNG, SVG) and their CSVs, and the tables and the
    /// write-up under OUT/paper [default: the repository's figures/ and paper/; with --quick,
    /// figures-quick/ and figures-quick/paper/, so that a quick run never overwrites the committed
    /// full-run outputs].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Folder for the tables and the write-up instead [default: OUT/paper with --out or --quick,
    /// else paper].
    #[arg(long)]
    paper: Option<PathBuf>,
    /// Budgets: quick (CI's, under a minute), default (one 2-core workstation), paper (the
    /// paper's budgets, for a cluster; the default's for jobs the paper has no budgets for).
    #[arg(long, default_value = "default")]
    scale: String,
    /// Same as --scale quick.
    #[arg(long)]
    quick: bool,
    /// Run one job only: theory, compute, training, cost, weight-decay, error-bar, digits-decay,
    /// few-shot, bandit, spiking (the write-up needs all).
    #[arg(long)]
    only: Option<String>,
    /// Only this unit, named JOB/UNIT (e.g. training/synapse-cg-seed0; repeat for more): for a
    /// run, a report or a plan of part of a job. The write-up is drawn only when every unit is.
    #[arg(long = "unit", value_name = "JOB/UNIT")]
    unit: Vec<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run slice i of n (0-based) of the units and store them under --results, skipping units
    /// already there; inside a Slurm array job, the slice defaults to
    /// SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT.
    #[arg(long, requires = "results")]
    units: Option<String>,
    /// Only one stage of the units: `choices` (the validation searches other units read) or
    /// `runs` (the rest). A cluster runs the choices as one job array and the runs as a second
    /// that waits for it, so that no unit recomputes a choice another slice holds
    /// (scripts/slurm_figures.sh).
    #[arg(long, requires = "results", conflicts_with = "report")]
    stage: Option<String>,
    /// With --units: a unit stored under another configuration (after a change of --protocol,
    /// --seed or the code's version) is computed again, its old file moved to
    /// RESULTS/<job>/stale/, rather than refused. Each is judged again when its turn comes: one
    /// that differs only in the grid, allowance or streams of searches it reads is kept when those
    /// searches, computed again, chose what it took.
    #[arg(long, requires = "results", conflicts_with = "report")]
    replace_stale: bool,
    /// Folder of stored units: written by --units, read by --report and --plan.
    #[arg(long)]
    results: Option<PathBuf>,
    /// Draw every figure, table and the write-up from the units stored in this folder, without
    /// computing anything.
    #[arg(long, conflicts_with_all = ["units", "plan"])]
    report: Option<PathBuf>,
    /// Print every job's units and an estimate of their cost, from the units of an earlier run
    /// given with --results where all of a job's are there, else a short timed calibration, and
    /// run nothing.
    #[arg(long)]
    plan: bool,
    /// Change a job's protocol: the TOML file's keys replace the same keys of the scale's protocol
    /// (a shipped `configs/<job>.toml` shows them all; give only the keys that change). For
    /// training, weight-decay, digits-decay, few-shot, bandit and spiking, and the instance counts of
    /// error-bar; repeat for more jobs. Outputs go to
    /// figures-protocol/ unless --out says otherwise, so that the committed ones stay.
    #[arg(long = "protocol", value_name = "JOB=FILE")]
    protocol: Vec<String>,
}

/// The `--protocol JOB=FILE` changes: each job once, each file a TOML table.
fn protocol_changes(given: &[String]) -> crate::Result<Vec<(String, serde_json::Value)>> {
    let mut out: Vec<(String, serde_json::Value)> = Vec::new();
    for g in given {
        let Some((job, file)) = g.split_once('=') else {
            return Err(crate::CmlError::invalid(
                "--protocol",
                g,
                "JOB=FILE, e.g. few-shot=my_few_shot.toml",
            ));
        };
        if out.iter().any(|(j, _)| j == job) {
            return Err(crate::CmlError::invalid("--protocol", g, "one file per job"));
        }
        let path = std::path::Path::new(file);
        let text = std::fs::read_to_string(path).map_err(|source| crate::CmlError::Io {
            action: "cannot read protocol file",
            path: path.into(),
            source,
        })?;
        let table: toml::Table = text.parse().map_err(|e| crate::CmlError::Instance {
            source_name: format!("protocol file {file}"),
            reason: format!("not valid TOML: {e}"),
        })?;
        let value = serde_json::to_value(table).map_err(|e| crate::CmlError::Instance {
            source_name: format!("protocol file {file}"),
            reason: e.to_string(),
        })?;
        out.push((job.to_string(), value));
    }
    Ok(out)
}

pub fn run_cli(args: FiguresArgs) -> crate::Result<()> {
    let scale = if args.quick {
        Scale::Quick
    } else {
        Scale::parse(&args.scale)?
    };
    // The repository's own figures/ and paper/ only for a default-scale run with neither folder
    // given.
    let protocols = protocol_changes(&args.protocol)?;
    let (out, paper) = match (args.out, scale) {
        (Some(out), _) => (out.clone(), args.paper.unwrap_or_else(|| out.join("paper"))),
        (None, _) if !protocols.is_empty() => {
            let out = PathBuf::from("figures-protocol");
            (out.clone(), args.paper.unwrap_or_else(|| out.join("paper")))
        }
        (None, Scale::Default) => (
            PathBuf::from("figures"),
            args.paper.unwrap_or_else(|| PathBuf::from("paper")),
        ),
        (None, other) => {
            let out = PathBuf::from(format!("figures-{}", other.name()));
            (out.clone(), args.paper.unwrap_or_else(|| out.join("paper")))
        }
    };
    let settings = Settings {
        out,
        paper,
        scale,
        seed: args.seed,
        protocols,
        replace_stale: args.replace_stale,
    };
    let selection = Selection {
        only: args.only.clone(),
        units: args.unit.clone(),
        stage: args.stage.as_deref().map(Stage::parse).transpose()?,
    };
    let clock = Instant::now();
    let log = |msg: &str| eprintln!("[{:6.1} s] {msg}", clock.elapsed().as_secs_f64());
    if args.plan {
        return print_plan(&settings, &selection, args.results.as_deref());
    }
    let slice = match (
        &args.units,
        std::env::var("SLURM_ARRAY_TASK_ID"),
        std::env::var("SLURM_ARRAY_TASK_COUNT"),
    ) {
        (Some(s), _, _) => Some(parse_shard(s)?),
        (None, Ok(id), Ok(count)) if args.results.is_some() && args.report.is_none() => {
            Some(parse_shard(&format!("{id}/{count}"))?)
        }
        _ => None,
    };
    let results = if let Some(dir) = &args.report {
        experiments::report(&settings, &selection, dir)?
    } else if let Some(dir) = &args.results {
        let slice = slice.unwrap_or((0, 1));
        let summary = experiments::run_slice(&settings, &selection, slice, dir, &log)?;
        if !summary.replaced.is_empty() {
            println!(
                "replaced {} units stored under another configuration (the old files are in <job>/stale/): {}",
                summary.replaced.len(),
                summary.replaced.join(", ")
            );
        }
        println!(
            "slice {}/{}: ran {} units, {} already stored, in {}",
            slice.0,
            slice.1,
            summary.ran.len(),
            summary.skipped.len(),
            dir.display()
        );
        println!("done in {:.1} s", clock.elapsed().as_secs_f64());
        return Ok(());
    } else {
        run(&settings, &selection, &log)?
    };
    for f in &results.files {
        println!("wrote {}", f.display());
    }
    println!("done in {:.1} s", clock.elapsed().as_secs_f64());
    Ok(())
}

fn print_plan(
    settings: &Settings,
    selection: &Selection,
    previous: Option<&std::path::Path>,
) -> crate::Result<()> {
    let threads = crate::parallel::available_threads();
    let rows = experiments::plan(settings, selection, previous)?;
    println!(
        "plan for scale {} (seconds: wall time of the units on this machine, {threads} cores each; core-hours = seconds x {threads} / 3600)",
        settings.scale.name()
    );
    println!("| job | units | seconds | core-hours | estimate from |");
    println!("|---|---|---|---|---|");
    let mut total = 0.0;
    let mut unknown = Vec::new();
    for r in &rows {
        match r.seconds {
            Some(s) => {
                total += s;
                // Whole seconds for long jobs; three decimals for the quick scale's short ones.
                let seconds = if s >= 100.0 {
                    format!("{s:.0}")
                } else {
                    format!("{s:.3}")
                };
                println!(
                    "| {} | {} | {} | {:.2} | {} |",
                    r.job,
                    r.units,
                    seconds,
                    s * threads as f64 / 3600.0,
                    r.source
                );
            }
            None => {
                unknown.push(r.job);
                println!("| {} | {} | ? | ? | {} |", r.job, r.units, r.source);
            }
        }
    }
    println!(
        "| all{} | {} | {:.0} | {:.2} | |",
        if unknown.is_empty() {
            String::new()
        } else {
            format!(" but {}", unknown.join(", "))
        },
        rows.iter().map(|r| r.units).sum::<usize>(),
        total,
        total * threads as f64 / 3600.0
    );
    Ok(())
}
