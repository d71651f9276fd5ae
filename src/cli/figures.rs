//! `cml figures`: regenerate every figure, table and the write-up.

use crate::figures::{Settings, run};
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
    /// Smaller grids, fewer seeds (same code paths).
    #[arg(long)]
    quick: bool,
    /// Run one job only: theory, compute, training, cost, weight-decay, error-bar, digits-decay,
    /// few-shot, bandit, spiking (the write-up needs all).
    #[arg(long)]
    only: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run_cli(args: FiguresArgs) -> crate::Result<()> {
    // The repository's own figures/ and paper/ only for a full run with neither folder given.
    let (out, paper) = match (args.out, args.quick) {
        (Some(out), _) => (out.clone(), args.paper.unwrap_or_else(|| out.join("paper"))),
        (None, true) => {
            let out = PathBuf::from("figures-quick");
            (out.clone(), args.paper.unwrap_or_else(|| out.join("paper")))
        }
        (None, false) => (
            PathBuf::from("figures"),
            args.paper.unwrap_or_else(|| PathBuf::from("paper")),
        ),
    };
    let settings = Settings {
        out,
        paper,
        quick: args.quick,
        seed: args.seed,
    };
    let clock = Instant::now();
    let results = run(&settings, args.only.as_deref(), &mut |msg| {
        eprintln!("[{:6.1} s] {msg}", clock.elapsed().as_secs_f64())
    })?;
    for f in &results.files {
        println!("wrote {}", f.display());
    }
    println!("done in {:.1} s", clock.elapsed().as_secs_f64());
    Ok(())
}
