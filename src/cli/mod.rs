//! The `cml` command line: one module per subcommand.

mod estimator_args;
mod export;
mod grad;
mod sweep;
mod train;

use clap::{Parser, Subcommand};
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
}

/// Parses the arguments, runs the command, and maps errors to exit code 1 (usage errors: 2).
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Grad(args) => grad::run(args),
        Command::Export(args) => export::run(args),
        Command::Train(args) => train::run(args),
        Command::Sweep(args) => sweep::run_cli(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
