//! `cml figures`: regenerate every figure, table and the write-up.

use crate::figures::{Settings, run};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct FiguresArgs {
    /// Folder for the figures (PNG, SVG) and their CSVs.
    #[arg(long, default_value = "figures")]
    out: PathBuf,
    /// Folder for the tables and the write-up.
    #[arg(long, default_value = "paper")]
    paper: PathBuf,
    /// Smaller grids, fewer seeds (same code paths).
    #[arg(long)]
    quick: bool,
    /// Run one job only: theory, compute, training, cost, weight-decay (the write-up needs all).
    #[arg(long)]
    only: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run_cli(args: FiguresArgs) -> crate::Result<()> {
    let settings = Settings {
        out: args.out,
        paper: args.paper,
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
