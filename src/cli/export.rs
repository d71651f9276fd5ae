//! `cml export`: write a drawn problem instance to a JSON file.

use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    #[arg(long, help = format!("Problem name: {}", crate::registry::problem_names()))]
    problem: String,
    /// Seed of the random draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output file (written whole or not at all).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: ExportArgs) -> crate::Result<()> {
    let p = crate::registry::draw_problem(&args.problem, args.seed)?;
    let mut file = p.to_instance();
    file.seed = Some(args.seed);
    file.write(&args.out)?;
    let dims = p.dims();
    println!(
        "wrote {} instance (seed {}, {} fast parameters, {} meta-parameters) to {}",
        p.name(),
        args.seed,
        dims.phi,
        dims.theta,
        args.out.display()
    );
    Ok(())
}
