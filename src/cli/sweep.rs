//! `cml sweep`: run a grid of settings against the exact meta-gradient, write a tidy CSV, and
//! print slope fits against theory and the cheapest setting per accuracy.

use crate::estimator::Variant;
use crate::fit::{cheapest, fit_delta, fit_variant};
use crate::io::write_atomically;
use crate::sweep::{
    AUTO_BETA, Budget, CSV_HEADER, EstimatorGrid, ProblemSource, SweepConfig, parse_log_range, parse_shard,
    run,
};
use crate::{CmlError, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    #[arg(long, help = format!("Problem name ({}) or an instance file (.json)", crate::registry::problem_names()))]
    problem: String,
    /// Run estimators whose assumptions do not hold for the problem, with a warning.
    #[arg(long)]
    allow_inapplicable: bool,
    /// Comma-separated seeds.
    #[arg(long, default_value = "0")]
    seeds: String,
    #[arg(long, default_value = "contrastive", help = format!(
        "Comma-separated estimators: {} (contrastive-auto: beta chosen by the error bar, one row per variant \
         whose beta column is the choice)",
        crate::registry::estimator_names()
    ))]
    estimators: String,
    /// Comma-separated contrastive variants.
    #[arg(long, default_value = "standard,symmetric")]
    variants: String,
    /// Nudging strengths LO:HI:N, log-spaced.
    #[arg(long, default_value = "1e-6:1e-1:21")]
    betas: String,
    /// Comma-separated step budgets (each phase runs exactly this many steps).
    #[arg(long, conflicts_with = "tolerances")]
    steps: Option<String>,
    /// Comma-separated gradient-norm tolerances (instead of --steps).
    #[arg(long, conflicts_with = "deltas")]
    tolerances: Option<String>,
    /// Comma-separated distances: place every phase at exactly this distance from its
    /// Newton-solved solution, in independent random directions (instead of learning).
    #[arg(long, conflicts_with = "steps")]
    deltas: Option<String>,
    /// Comma-separated CG iterations / Neumann terms / truncated-BPTT steps.
    #[arg(long, default_value = "10")]
    solver_steps: String,
    /// Inner step size. Default: 1 / L where the smoothness L is known, else 1 / (2 L^) with L^ by
    /// power iteration at each phase's start.
    #[arg(long, allow_hyphen_values = true)]
    step_size: Option<f64>,
    /// Neumann step alpha. Default: 1 / L where the smoothness L is known, else 1 / (2 L^) with L^
    /// by power iteration at the free solution.
    #[arg(long, allow_hyphen_values = true)]
    neumann_alpha: Option<f64>,
    /// Step cap for tolerance budgets.
    #[arg(long, default_value_t = 100_000)]
    max_steps: usize,
    /// Skip the error bar of contrastive rows (it costs the stencil's phases at 2 beta and a few
    /// dozen second-order products per phase; docs/ERROR_BAR.md).
    #[arg(long)]
    no_error_bar: bool,
    /// Scale each error bar's truncation part (Richardson's estimate) by this factor, at least 1,
    /// as `cml grad --error-bar-scale` does (docs/ERROR_BAR.md section 5).
    #[arg(long, default_value_t = 1.0)]
    error_bar_scale: f64,
    /// Run only part i/n of the grid (contiguous blocks: shards concatenate to the full sweep).
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// Output CSV (the effective config goes beside it, as OUT.config.json).
    #[arg(long, default_value = "sweep.csv")]
    out: PathBuf,
    /// A TOML file of flags (keys are the flag names); flags on the command line override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn list<T: std::str::FromStr>(name: &str, s: &str, allowed: &str) -> Result<Vec<T>> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<T>()
                .map_err(|_| CmlError::invalid(name, x, allowed))
        })
        .collect()
}

impl SweepArgs {
    /// The estimators as named on the command line, with the axes they expand over.
    pub fn estimator_grid(&self) -> Result<EstimatorGrid> {
        Ok(EstimatorGrid {
            names: self.estimators.split(',').map(|s| s.trim().to_string()).collect(),
            variants: self
                .variants
                .split(',')
                .map(|s| Variant::parse(s.trim()))
                .collect::<Result<_>>()?,
            betas: parse_log_range(&self.betas)?,
            solver_steps: list::<i64>("solver steps", &self.solver_steps, "whole numbers >= 1")?
                .into_iter()
                .map(|n| super::estimator_args::at_least_one("solver steps", n))
                .collect::<Result<_>>()?,
            neumann_alpha: self.neumann_alpha,
        })
    }

    /// The sweep of these flags, its estimators expanded from `named`.
    pub fn config(&self, named: &EstimatorGrid) -> Result<SweepConfig> {
        let budgets = match (&self.steps, &self.tolerances) {
            _ if self.deltas.is_some() => list::<f64>(
                "deltas",
                self.deltas.as_deref().unwrap_or_default(),
                "numbers >= 0, comma-separated",
            )?
            .into_iter()
            .map(Budget::Delta)
            .collect(),
            (Some(s), None) => list::<i64>("steps", s, "whole numbers >= 1, comma-separated")?
                .into_iter()
                .map(|n| super::estimator_args::at_least_one("steps", n).map(Budget::Steps))
                .collect::<Result<_>>()?,
            (None, Some(t)) => list::<f64>("tolerances", t, "numbers > 0, comma-separated")?
                .into_iter()
                .map(Budget::Tolerance)
                .collect(),
            _ => vec![Budget::Steps(100), Budget::Steps(200), Budget::Steps(400)],
        };
        Ok(SweepConfig {
            problem: ProblemSource::parse(&self.problem)?,
            seeds: list("seeds", &self.seeds, "whole numbers, comma-separated")?,
            estimators: named.specs()?,
            budgets,
            step_size: self.step_size,
            max_steps: self.max_steps,
            error_bars: !self.no_error_bar,
            error_bar_scale: self.error_bar_scale,
        })
    }
}

pub fn run_cli(args: SweepArgs) -> Result<()> {
    crate::autodiff::ensure_second_order()?;
    let named = args.estimator_grid()?;
    let config = args.config(&named)?;
    config.validate()?;
    for w in config.check_applicable(args.allow_inapplicable)? {
        eprintln!("warning: {w}");
    }
    let shard = parse_shard(&args.shard)?;
    let effective = serde_json::json!({ "sweep": &config, "shard": &args.shard });
    let config_path = args.out.with_extension("config.json");
    write_atomically(
        &config_path,
        serde_json::to_string_pretty(&effective)
            .expect("config")
            .as_bytes(),
    )?;
    let total = config.grid().len();
    let bar = ProgressBar::new(((shard.0 + 1) * total / shard.1 - shard.0 * total / shard.1) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} runs, {elapsed} elapsed, ETA {eta}")
            .expect("template"),
    );
    let rows = run(&config, shard, &|| bar.inc(1))?;
    bar.finish_and_clear();
    let mut csv = format!("{CSV_HEADER}\n");
    for r in &rows {
        csv.push_str(&r.csv());
        csv.push('\n');
    }
    write_atomically(&args.out, csv.as_bytes())?;
    println!(
        "wrote {} rows (shard {}) to {}",
        rows.len(),
        args.shard,
        args.out.display()
    );

    if named.names.iter().any(|e| e == "contrastive") {
        println!("\nslopes on log-log axes, measured (theory)");
        println!(
            "variant               error~beta right   error~beta left   best beta~delta   best error~delta"
        );
        let show = |v: Option<f64>, t: f64| {
            format!(
                "{:>7} ({:+.2})",
                v.map_or("n/a".into(), |v| format!("{v:+.2}")),
                t
            )
        };
        for &v in &named.variants {
            let f = fit_variant(&rows, v);
            println!(
                "{:<21} {:<18} {:<17} {:<17} {}",
                f.variant,
                show(f.right, f.theory[0]),
                show(f.left, f.theory[1]),
                show(f.best_beta_vs_delta, f.theory[2]),
                show(f.best_error_vs_delta, f.theory[3])
            );
        }
    }
    for r in rows.iter().filter(|r| r.estimator() == AUTO_BETA) {
        let budget = if r.tolerance > 0.0 {
            format!("tolerance {:.0e}", r.tolerance)
        } else {
            format!("{} free steps", r.free_steps)
        };
        let bar = match r.error_bar {
            Some(b) if b.is_finite() => format!("{b:.3e}"),
            Some(_) => "unbounded (a phase Hessian is not positive definite at its end point)".into(),
            None => "-".into(),
        };
        println!(
            "{AUTO_BETA} {:<10} seed {} {budget}: chose beta {}, abs. error {:.3e}, error bar {bar}",
            r.variant(),
            r.seed,
            r.beta.map_or("-".into(), |b| format!("{b:.3e}")),
            r.abs_error,
        );
    }
    for e in named
        .names
        .iter()
        .filter(|e| *e != "contrastive" && *e != AUTO_BETA)
    {
        if let Some(f) = fit_delta(&rows, e) {
            println!(
                "{e:<21} error~delta slope {} (implicit theory +1), smallest relative error {:.3e}",
                f.slope.map_or("n/a".into(), |s| format!("{s:+.2}")),
                f.floor
            );
        }
    }
    for threshold in [1e-3, 1e-6] {
        println!(
            "\ncheapest setting reaching relative error {threshold:e} (gradient evaluations + products)"
        );
        for (label, row) in cheapest(&rows, threshold) {
            match row {
                Some(r) => println!(
                    "{label:<32} {:>8}  (free steps {}, beta {}, solver steps {}, rel. error {:.2e})",
                    r.total_cost(),
                    r.free_steps,
                    r.beta.map_or("-".into(), |b| format!("{b:.2e}")),
                    r.solver_steps.map_or("-".into(), |k| k.to_string()),
                    r.rel_error
                ),
                None => println!("{label:<32} not reached"),
            }
        }
    }
    Ok(())
}
