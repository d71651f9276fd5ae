//! `cml grad`: one meta-gradient estimate beside the exact one.

use super::estimator_args::EstimatorArgs;
use crate::estimator::error_bar::{ErrorBar, estimate_with_error_bar_if_any, no_error_bar};
use crate::estimator::{Contrastive, Estimate, EstimatorSpec};
use crate::ground_truth::{exact_meta_gradient_at_phase_minimum, reference_free_phase};
use crate::inner::PhaseInfo;
use crate::linalg::{cosine, relative_error};
use crate::oracle::Cost;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct GradArgs {
    #[arg(long, help = format!("Problem name ({}) or an instance file (.json)", crate::registry::problem_names()))]
    problem: String,
    #[command(flatten)]
    estimator: EstimatorArgs,
    /// Seed of the problem draw (ignored for instance files).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Skip the exact reference (Newton on the dense Hessian): for large models, timing only.
    #[arg(long)]
    no_exact: bool,
    /// Skip the contrastive estimate's error bar (it costs the stencil's phases at 2 beta and a
    /// few dozen second-order products per phase; docs/ERROR_BAR.md).
    #[arg(long)]
    no_error_bar: bool,
    /// Scale the error bar's truncation part (Richardson's estimate) by this factor, at least 1:
    /// 1 is the bar as computed; 2.5 covered every one of the error-bar job's 340 fresh instances,
    /// where the bar as computed covered 334 (docs/ERROR_BAR.md section 5).
    #[arg(long, default_value_t = 1.0)]
    error_bar_scale: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct GradReport {
    problem: String,
    /// The draw's seed, or the instance file's (`null` for a file written without one).
    seed: Option<u64>,
    phi_dim: usize,
    theta_dim: usize,
    estimator: String,
    estimate: Vec<f64>,
    cost: Cost,
    phases: Vec<PhaseInfo>,
    linear_residual: Option<f64>,
    /// How far the estimate may be from the meta-gradient (contrastive estimates).
    error_bar: Option<ErrorBar>,
    warnings: Vec<String>,
    /// Wall-clock seconds of the estimate alone, without its error bar.
    seconds_estimate: f64,
    /// Wall-clock seconds of the error bar beyond the estimate (`null` without a bar).
    seconds_error_bar: Option<f64>,
    exact: Option<Comparison>,
}

/// The estimate against the exact meta-gradient at Newton's `phi*`.
#[derive(serde::Serialize)]
struct Comparison {
    exact: Vec<f64>,
    relative_error: f64,
    absolute_error: f64,
    cosine: f64,
    /// Whether the error bar is at least the absolute error (`null` without a bar).
    within_error_bar: Option<bool>,
    newton_iterations: usize,
    newton_grad_norm: f64,
    seconds_exact: f64,
}

pub fn run(args: GradArgs) -> crate::Result<()> {
    // The exact reference needs second derivatives: fail before any work if they are off.
    crate::autodiff::ensure_second_order()?;
    let spec = args.estimator.spec()?;
    let estimator = spec.estimator();
    // An instance file carries the seed it was drawn with (or none); the flag is ignored then.
    let (p, seed) = crate::registry::resolve_problem_and_seed(&args.problem, args.seed)?;
    let theta = p.theta().clone();

    let inapplicable = spec.check_applicable(p.as_ref(), &theta, args.estimator.allow_inapplicable)?;
    let clock = Instant::now();
    let mut estimate = estimate_with_error_bar_if_any(
        &spec,
        p.as_ref(),
        &theta,
        !args.no_error_bar,
        args.error_bar_scale,
    )?;
    if !args.no_error_bar {
        estimate.warnings.extend(no_error_bar(&spec, p.as_ref()));
    }
    estimate.warnings.extend(inapplicable);
    let seconds_error_bar = estimate.error_bar.as_ref().map(|b| b.seconds);
    let seconds_estimate = clock.elapsed().as_secs_f64() - seconds_error_bar.unwrap_or(0.0);
    let quadratic = (p.as_ref() as &dyn std::any::Any).downcast_ref::<crate::problem::Quadratic>();
    if let (EstimatorSpec::Contrastive(c), Some(q)) = (&spec, quadratic) {
        estimate.warnings.extend(beta_warning(q, c, &estimate)?);
    }
    // A problem whose derivatives are a surrogate's has no exact meta-gradient: said, not computed.
    let no_reference = p.surrogate_derivative();
    if let (false, Some(reason)) = (args.no_exact, no_reference) {
        let missing = crate::CmlError::NoExactReference {
            reason: reason.into(),
        };
        estimate.warnings.push(missing.to_string());
    }
    let exact = if args.no_exact || no_reference.is_some() {
        None
    } else {
        let clock = Instant::now();
        let truth = exact_meta_gradient_at_phase_minimum(p.as_ref(), &theta, &reference_free_phase())?;
        let absolute_error = (&estimate.gradient - &truth.meta_gradient).norm();
        Some(Comparison {
            relative_error: relative_error(&estimate.gradient, &truth.meta_gradient),
            absolute_error,
            within_error_bar: estimate.error_bar.as_ref().map(|b| absolute_error <= b.bar),
            cosine: cosine(&estimate.gradient, &truth.meta_gradient),
            exact: truth.meta_gradient.iter().copied().collect(),
            newton_iterations: truth.newton.steps,
            newton_grad_norm: truth.newton.grad_norm,
            seconds_exact: clock.elapsed().as_secs_f64(),
        })
    };
    let report = GradReport {
        problem: p.name().into(),
        seed,
        phi_dim: p.dims().phi,
        theta_dim: p.dims().theta,
        estimator: estimator.describe(),
        estimate: estimate.gradient.iter().copied().collect(),
        cost: estimate.cost,
        phases: estimate.phases,
        linear_residual: estimate.linear_residual,
        error_bar: estimate.error_bar,
        warnings: estimate.warnings,
        seconds_estimate,
        seconds_error_bar,
        exact,
    };
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
    } else {
        print_text(&report);
    }
    Ok(())
}

/// A vector on one line; long ones shortened to their first and last entries.
fn vector(v: &[f64]) -> String {
    let fmt = |x: &f64| format!("{x:+.6e}");
    if v.len() <= 10 {
        v.iter().map(fmt).collect::<Vec<_>>().join(" ")
    } else {
        let head: Vec<String> = v[..4].iter().map(fmt).collect();
        let tail: Vec<String> = v[v.len() - 2..].iter().map(fmt).collect();
        format!("{} ... {} ({} entries)", head.join(" "), tail.join(" "), v.len())
    }
}

fn print_text(r: &GradReport) {
    println!(
        "problem     {} ({} fast, {} meta-parameters)",
        r.problem, r.phi_dim, r.theta_dim
    );
    println!("estimator   {}", r.estimator);
    println!("phase       beta         steps   |grad|      certified delta  loss              engine");
    for (i, ph) in r.phases.iter().enumerate() {
        let certified = ph
            .certified_distance
            .map_or("unknown".to_string(), |d| format!("{d:.3e}"));
        println!(
            "{:<11} {:<+12.4e} {:<7} {:<11.3e} {:<16} {:<17.10e} {}",
            if i == 0 { "free" } else { "nudged" },
            ph.beta,
            ph.steps,
            ph.grad_norm,
            certified,
            ph.loss,
            ph.engine.name()
        );
    }
    for (i, ph) in r.phases.iter().enumerate() {
        println!(
            "{:<11} {:.4e} = {}",
            if i == 0 { "step size" } else { "" },
            ph.step_size,
            ph.step_size_rule.describe()
        );
    }
    println!("estimate    {}", vector(&r.estimate));
    if let Some(bar) = &r.error_bar {
        if let Some(pilots) = &bar.auto_beta {
            let tried: Vec<String> = pilots
                .iter()
                .map(|p| match (p.estimated_error, p.bar) {
                    (Some(e), Some(b)) => format!("{:.2e} (estimated error {e:.2e}, bar {b:.2e})", p.beta),
                    _ => format!("{:.2e} (phases diverged)", p.beta),
                })
                .collect();
            println!("beta auto   chose {:.4e}; pilots {}", bar.beta, tried.join(", "));
        }
        println!("error bar   {}", bar.describe());
        println!(
            "            (the bar cost {} gradient evaluations and {} second-order products)",
            bar.extra_cost.gradient_evaluations, bar.extra_cost.second_order_products
        );
    }
    if let Some(c) = &r.exact {
        println!("exact       {}", vector(&c.exact));
        println!(
            "            (Newton: {} iterations, final |grad| {:.1e})",
            c.newton_iterations, c.newton_grad_norm
        );
        println!("rel. error  {:.3e}", c.relative_error);
        match c.within_error_bar {
            Some(within) => println!(
                "abs. error  {:.3e} ({} the error bar)",
                c.absolute_error,
                if within { "within" } else { "OUTSIDE" }
            ),
            None => println!("abs. error  {:.3e}", c.absolute_error),
        }
        println!("cosine      {:.12}", c.cosine);
    }
    println!(
        "cost        {} gradient evaluations, {} second-order products, {} floats kept",
        r.cost.gradient_evaluations, r.cost.second_order_products, r.cost.floats_kept
    );
    if let Some(res) = r.linear_residual {
        println!("residual    ||H v - d_phi L_out|| = {res:.3e}");
    }
    let bar = r
        .seconds_error_bar
        .map(|s| format!(", error bar {s:.3} s"))
        .unwrap_or_default();
    let exact = r
        .exact
        .as_ref()
        .map(|c| format!(", exact {:.3} s", c.seconds_exact))
        .unwrap_or_default();
    println!("time        estimate {:.3} s{bar}{exact}", r.seconds_estimate);
}

/// On the quadratic problem the bound's constants are known: flag a `beta` more than ten times
/// away from the bound's best for the largest certified phase distance.
fn beta_warning(
    q: &crate::problem::Quadratic,
    c: &Contrastive,
    e: &Estimate,
) -> crate::Result<Option<String>> {
    let delta = e
        .phases
        .iter()
        .filter_map(|p| p.certified_distance)
        .fold(0.0f64, f64::max);
    // A variant biased at every beta has no best beta (the bound's optimum is infinite).
    if delta == 0.0 || c.variant.truncation_order() == 0 {
        return Ok(None);
    }
    let theta = crate::problem::ProblemInstance::theta(q);
    let theory = crate::bound::QuadraticTheory::new(q, &crate::linalg::to_dvector(theta)?)?;
    let (best, error) = theory.best(c.variant, delta);
    let ratio = c.beta.abs() / best;
    Ok((!(0.1..=10.0).contains(&ratio)).then(|| {
        format!(
            "beta = {} is {ratio:.1e} times the bound's best beta {best:.2e} for the certified phase distance \
             {delta:.2e} (best bound there {error:.2e})",
            c.beta
        )
    }))
}
