//! `cml grad`: one meta-gradient estimate beside the exact one.

use super::estimator_args::EstimatorArgs;
use crate::estimator::{Estimate, MetaGradientEstimator};
use crate::ground_truth::{GroundTruth, exact_meta_gradient};
use crate::inner::GdInfo;
use crate::linalg::{cosine, relative_error};
use crate::oracle::Cost;
use crate::problem;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct GradArgs {
    /// Problem name (quadratic, ridge, logistic) or the path of an instance file (.json).
    #[arg(long)]
    problem: String,
    #[command(flatten)]
    estimator: EstimatorArgs,
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
    linear_residual: Option<f64>,
    phases: Vec<GdInfo>,
    newton_iterations: usize,
    newton_grad_norm: f64,
    seconds_estimate: f64,
    seconds_exact: f64,
}

pub fn run(args: GradArgs) -> crate::Result<()> {
    // The exact reference needs second derivatives: fail before any work if they are off.
    crate::autodiff::ensure_second_order()?;
    let spec = args.estimator.spec()?;
    let estimator = spec.estimator();
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
        estimator,
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
        linear_residual: estimate.linear_residual,
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
        "cost        {} gradient evaluations, {} second-order products, {} floats kept",
        r.cost.gradient_evaluations, r.cost.second_order_products, r.cost.floats_kept
    );
    if let Some(res) = r.linear_residual {
        println!("residual    ||H v - d_phi L_out|| = {res:.3e}");
    }
    println!(
        "time        estimate {:.3} s, exact {:.3} s",
        r.seconds_estimate, r.seconds_exact
    );
}
