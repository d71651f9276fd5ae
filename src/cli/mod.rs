//! The `cml` command line: one module per subcommand.

mod config;
mod estimator_args;
mod export;
mod figures;
mod grad;
mod sweep;
mod sweep_merge;
mod train;
mod train_problem;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "cml",
    version,
    about = "A testbed for the contrastive meta-learning rule"
)]
#[command(allow_negative_numbers = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Estimate the meta-gradient of one problem instance and compare it with the exact one.
    Grad(grad::GradArgs),
    /// Write a problem instance (every array and scalar it is built from) to a JSON file.
    Export(export::ExportArgs),
    /// Meta-train the synapse or modulation model on few-shot sinusoid regression.
    Train(train::TrainArgs),
    /// Run a grid of estimator settings against the exact meta-gradient and fit slopes.
    Sweep(sweep::SweepArgs),
    /// Merge the shards of one sweep (`cml sweep --shard i/n`) into the unsharded sweep's CSV.
    SweepMerge(sweep_merge::SweepMergeArgs),
    /// Regenerate every figure, table and the write-up (the main job).
    Figures(figures::FiguresArgs),
}

/// Why the command line could not be read.
#[derive(Debug)]
pub enum ParseFailure {
    /// The --config file (unknown key, wrong kind of value, unreadable).
    Config(crate::CmlError),
    /// clap's own: syntax, a value of the wrong type, --help, --version.
    Clap(clap::Error),
}

/// Reads the arguments (program name first), with a --config file spliced in.
pub fn parse(args: Vec<std::ffi::OsString>) -> Result<Cli, ParseFailure> {
    // Later occurrences of a flag override earlier ones: that is how command-line flags
    // override a --config file's (spliced in before them).
    let command = Cli::command().mut_subcommands(|s| s.args_override_self(true));
    let args = config::expand(&command, args).map_err(ParseFailure::Config)?;
    command
        .try_get_matches_from(args)
        .and_then(|m| Cli::from_arg_matches(&m))
        .map_err(ParseFailure::Clap)
}

/// Parses the arguments, runs the command, and maps errors to exit code 1 (usage errors: 2).
pub fn run() -> ExitCode {
    let cli = match parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(ParseFailure::Config(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        Err(ParseFailure::Clap(e)) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Grad(args) => grad::run(args),
        Command::Export(args) => export::run(args),
        Command::Train(args) => train::run(args),
        Command::Sweep(args) => sweep::run_cli(args),
        Command::SweepMerge(args) => sweep_merge::run(args),
        Command::Figures(args) => figures::run_cli(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match remedy(&e) {
                Some(remedy) => eprintln!("error: {e}; {remedy}"),
                None => eprintln!("error: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// What to do about an error, in the command line's flags: the library's errors name the
/// parameter and the reason, never a flag, so that they read right outside this command line.
pub fn remedy(e: &crate::CmlError) -> Option<&'static str> {
    use crate::CmlError as E;
    Some(match e {
        E::MetaStep { source, .. } => return remedy(source),
        E::Inapplicable { .. } => "pass --allow-inapplicable to run it anyway (with a warning)",
        E::NoExactReference { .. } => {
            "cml sweep measures every estimate against the exact meta-gradient, so it cannot run here; \
             cml grad --problem (which skips the reference) and cml train --problem can"
        }
        E::Diverged { phase, .. } if phase.starts_with("nudged") => {
            "set it with --nudged-step-size (--step-size in cml sweep)"
        }
        E::Diverged { phase, .. } if phase.starts_with("free") => {
            "set it with --free-step-size (--step-size in cml sweep)"
        }
        E::NotPositiveDefinite { what, .. } if what == crate::implicit_function::INNER_HESSIAN => {
            "try a larger --strength (cml train: the pull toward theta), more --free-steps, or --estimator cg, \
             which stops at negative curvature with a warning"
        }
        E::InvalidParameter { name, value, .. } if name == "engine" && value == "fast" => {
            "use --engine candle or auto"
        }
        E::InvalidParameter { name, .. } if name == crate::estimator::UNROLLED_OPTIMIZER => {
            "use --free-optimizer gd"
        }
        _ => return None,
    })
}
