//! `cml figures`: regenerate every figure, table and the write-up.

use crate::figures::{Settings, run};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct FiguresArgs {
    /// Folder for the figures (PNG, SVG) and their CSVs [default: figures; with --quick,
    /// figures-quick, so that a quick run never overwrites the committed full-run outputs].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Folder for the tables and the write-up [default: paper; with --quick, OUT/paper].
    #[arg(long)]
    paper: Option<PathBuf>,
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
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(if args.quick { "figures-quick" } else { "figures" }));
    let paper = args.paper.unwrap_or_else(|| {
        if args.quick {
            out.join("paper")
        } else {
            PathBuf::from("paper")
        }
    });
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
