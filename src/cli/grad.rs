//! `cml grad`: one meta-gradient estimate beside the exact one.

use super::step_budget;
use crate::estimator::{
    Contrastive, Estimate, ImplicitDense, MetaGradientEstimator, Variant, unknown_estimator,
};
use crate::ground_truth::{GroundTruth, exact_meta_gradient};
use crate::inner::{GdInfo, GdParams};
use crate::linalg::{cosine, relative_error};
use crate::oracle::Cost;
use crate::problem;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct GradArgs {
    /// Problem name (quadratic, ridge, logistic) or the path of an instance file (.json).
    #[arg(long)]
    problem: String,
    /// Estimator: contrastive, or implicit (dense solve at the free phase's end point).
    #[arg(long, default_value = "contrastive")]
    estimator: String,
    /// Contrastive variant: standard, symmetric or second-order-forward.
    #[arg(long, default_value = "standard")]
    variant: String,
    /// Nudging strength beta (non-zero).
    #[arg(long, default_value_t = 1e-3, allow_hyphen_values = true)]
    beta: f64,
    /// Free-phase step budget.
    #[arg(long, default_value_t = 1000, allow_hyphen_values = true)]
    free_steps: i64,
    /// Step budget of each nudged phase.
    #[arg(long, default_value_t = 500, allow_hyphen_values = true)]
    nudged_steps: i64,
    /// Free-phase step size (default: 1 / smoothness of the inner loss).
    #[arg(long, allow_hyphen_values = true)]
    free_step_size: Option<f64>,
    /// Nudged-phase step size (default: 1 / smoothness of the nudged loss).
    #[arg(long, allow_hyphen_values = true)]
    nudged_step_size: Option<f64>,
    /// Stop a phase once its gradient norm is at most this.
    #[arg(long, default_value_t = 1e-12, allow_hyphen_values = true)]
    tolerance: f64,
    /// Seed of the problem draw (ignored for instance files).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct GradReport {
    problem: String,
    seed: u64,
    phi_dim: usize,
    theta_dim: usize,
    estimator: String,
    estimate: Vec<f64>,
    exact: Vec<f64>,
    relative_error: f64,
    absolute_error: f64,
    cosine: f64,
    cost: Cost,
    phases: Vec<GdInfo>,
    newton_iterations: usize,
    newton_grad_norm: f64,
    seconds_estimate: f64,
    seconds_exact: f64,
}

pub fn run(args: GradArgs) -> crate::Result<()> {
    // The exact reference needs second derivatives: fail before any work if they are off.
    crate::autodiff::ensure_second_order()?;
    let free = GdParams {
        step_size: args.free_step_size,
        max_steps: step_budget("free phase step budget", args.free_steps)?,
        tolerance: args.tolerance,
    };
    let nudged = GdParams {
        step_size: args.nudged_step_size,
        max_steps: step_budget("nudged phase step budget", args.nudged_steps)?,
        tolerance: args.tolerance,
    };
    let estimator: Box<dyn MetaGradientEstimator> = match args.estimator.as_str() {
        "contrastive" => {
            let c = Contrastive {
                variant: Variant::parse(&args.variant)?,
                beta: args.beta,
                free,
                nudged,
            };
            c.validate()?;
            Box::new(c)
        }
        "implicit" => Box::new(ImplicitDense { free }),
        other => return Err(unknown_estimator(other)),
    };
    let p = problem::resolve(&args.problem, args.seed)?;
    let theta = p.theta().clone();

    let clock = Instant::now();
    let estimate = estimator.estimate(p.as_ref(), &theta)?;
    let seconds_estimate = clock.elapsed().as_secs_f64();
    let clock = Instant::now();
    let truth = exact_meta_gradient(p.as_ref(), &theta)?;
    let seconds_exact = clock.elapsed().as_secs_f64();

    let report = report(
        &args,
        p.as_ref(),
        estimator.as_ref(),
        estimate,
        truth,
        seconds_estimate,
        seconds_exact,
    );
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

fn report(
    args: &GradArgs,
    p: &dyn problem::BilevelProblem,
    estimator: &dyn MetaGradientEstimator,
    estimate: Estimate,
    truth: GroundTruth,
    seconds_estimate: f64,
    seconds_exact: f64,
) -> GradReport {
    GradReport {
        problem: p.name().into(),
        seed: args.seed,
        phi_dim: p.dims().phi,
        theta_dim: p.dims().theta,
        estimator: estimator.describe(),
        relative_error: relative_error(&estimate.gradient, &truth.meta_gradient),
        absolute_error: (&estimate.gradient - &truth.meta_gradient).norm(),
        cosine: cosine(&estimate.gradient, &truth.meta_gradient),
        estimate: estimate.gradient.iter().copied().collect(),
        exact: truth.meta_gradient.iter().copied().collect(),
        cost: estimate.cost,
        phases: estimate.phases,
        newton_iterations: truth.newton.iterations,
        newton_grad_norm: truth.newton.grad_norm,
        seconds_estimate,
        seconds_exact,
    }
}

fn print_text(r: &GradReport) {
    let vector = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:+.6e}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "problem     {} ({} fast, {} meta-parameters)",
        r.problem, r.phi_dim, r.theta_dim
    );
    println!("estimator   {}", r.estimator);
    println!("phase       beta         steps   |grad|      certified delta  loss");
    for (i, ph) in r.phases.iter().enumerate() {
        let certified = ph
            .certified_distance
            .map_or("unknown".to_string(), |d| format!("{d:.3e}"));
        println!(
            "{:<11} {:<+12.4e} {:<7} {:<11.3e} {:<16} {:.10e}",
            if i == 0 { "free" } else { "nudged" },
            ph.beta,
            ph.steps,
            ph.grad_norm,
            certified,
            ph.loss
        );
    }
    println!("estimate    {}", vector(&r.estimate));
    println!("exact       {}", vector(&r.exact));
    println!(
        "            (Newton: {} iterations, final |grad| {:.1e})",
        r.newton_iterations, r.newton_grad_norm
    );
    println!("rel. error  {:.3e}", r.relative_error);
    println!("cosine      {:.12}", r.cosine);
    println!(
        "cost        {} gradient evaluations, {} second-order products",
        r.cost.gradient_evaluations, r.cost.second_order_products
    );
    println!(
        "time        estimate {:.3} s, exact {:.3} s",
        r.seconds_estimate, r.seconds_exact
    );
}
