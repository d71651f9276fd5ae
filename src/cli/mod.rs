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
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
