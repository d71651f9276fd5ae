//! Your own bilevel problem, outside the crate, through the public API: every estimator beside
//! the exact meta-gradient, then a sweep over `beta` and the slope fit against theory.
//!
//!     cargo run --release --example own_problem
//!
//! The problem: tune one ridge penalty per feature of a least-squares model on validation data.
//! `L_in(w, theta) = 1/(2n) ||X w - y||^2 + 1/2 sum_i exp(theta_i) w_i^2`,
//! `L_out(w) = 1/(2m) ||X_v w - y_v||^2`, starting from `w = 0`.

use candle_core::{Device, Tensor};
use cml::estimator::{Contrastive, EstimatorParams, EstimatorSpec, Variant};
use cml::fit::fit_variant;
use cml::ground_truth::exact_meta_gradient;
use cml::inner::GdParams;
use cml::linalg::{Vector, matrix_to_tensor, relative_error, to_dvector, to_tensor};
use cml::problem::{BilevelProblem, Curvature, Dims, ProblemInstance};
use cml::registry::ESTIMATORS;
use cml::rng::{normal_matrix, normal_vector, seeded};
use cml::sweep::{Budget, ProblemSource, SweepConfig, parse_log_range, run_on};
use nalgebra::DMatrix;

/// The user's problem: data and where to evaluate the meta-gradient.
struct TunedRidge {
    x: DMatrix<f64>,
    x_t: Tensor,
    y: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    theta: Tensor,
}

impl TunedRidge {
    /// 30 training and 30 validation rows of 5 features from a noisy linear teacher.
    fn random(seed: u64) -> cml::Result<Self> {
        let mut rng = seeded(seed);
        let teacher = normal_vector(&mut rng, 5);
        let mut split = |rows| -> cml::Result<(DMatrix<f64>, Tensor, Tensor)> {
            let x = normal_matrix(&mut rng, rows, 5);
            let y = &x * &teacher + normal_vector(&mut rng, rows) * 0.5;
            let yt = Tensor::from_slice(y.as_slice(), (rows, 1), &Device::Cpu)?;
            Ok((x.clone(), matrix_to_tensor(&x)?, yt))
        };
        let (x, x_t, y) = split(30)?;
        let (_, x_val, y_val) = split(30)?;
        Ok(TunedRidge {
            x,
            x_t,
            y,
            x_val,
            y_val,
            theta: to_tensor(&Vector::from_element(5, -1.0))?,
        })
    }
}

fn half_mse(x: &Tensor, y: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    (x.matmul(&w.unsqueeze(1)?)? - y)?.sqr()?.mean_all()? * 0.5
}

impl BilevelProblem for TunedRidge {
    fn dims(&self) -> Dims {
        Dims { phi: 5, theta: 5 }
    }
    fn inner_loss(&self, w: &Tensor, theta: &Tensor) -> candle_core::Result<Tensor> {
        let penalty = (theta.exp()? * w.sqr()?)?.sum_all()? * 0.5;
        half_mse(&self.x_t, &self.y, w)? + penalty?
    }
    fn outer_loss(&self, w: &Tensor, _theta: &Tensor) -> candle_core::Result<Tensor> {
        half_mse(&self.x_val, &self.y_val, w)
    }
    fn initial_phi(&self, _theta: &Tensor) -> cml::Result<Tensor> {
        Ok(Tensor::zeros(5, candle_core::DType::F64, &Device::Cpu)?)
    }
    /// Known curvature bounds (the Hessian of L_in is X^T X / n + diag(exp(theta))), so the phases
    /// get a step size and certified distances. The nudged loss adds beta X_v^T X_v / m: the
    /// factor 1.5 on the smoothness covers it for the betas used here.
    fn curvature(&self, theta: &Tensor, _beta: f64) -> cml::Result<Option<Curvature>> {
        let lambda = to_dvector(theta)?.map(f64::exp);
        let gram = self.x.transpose() * &self.x / self.x.nrows() as f64;
        let e = gram.symmetric_eigenvalues();
        Ok(Some(Curvature {
            strong_convexity: e.min() + lambda.min(),
            smoothness: 1.5 * (e.max() + lambda.max()),
        }))
    }
}

/// What sweeps and the applicability checks need beyond the losses: a name for the rows, and
/// the meta-parameters to evaluate at.
impl ProblemInstance for TunedRidge {
    fn name(&self) -> &'static str {
        "tuned-ridge"
    }
    fn theta(&self) -> &Tensor {
        &self.theta
    }
}

fn run() -> cml::Result<()> {
    let problem = TunedRidge::random(0)?;
    let exact = exact_meta_gradient(&problem, problem.theta())?.meta_gradient;
    println!("exact meta-gradient dJ/dtheta, first entry: {:+.6e}", exact[0]);
    let phase = GdParams {
        tolerance: 1e-12,
        max_steps: 100_000,
        ..GdParams::default()
    };
    let params = EstimatorParams {
        variant: Variant::Symmetric,
        beta: 1e-3,
        free: phase,
        nudged: phase,
        solver_steps: 5,
        neumann_alpha: None,
        truncation: 10,
    };
    for entry in ESTIMATORS {
        let name = entry.name;
        let spec = cml::registry::estimator(name, &params)?;
        if let Some(reason) = spec.inapplicable(&problem, problem.theta())? {
            println!("{name:<12} does not apply: {reason}");
            continue;
        }
        let e = spec.estimator().estimate(&problem, problem.theta())?;
        println!(
            "{name:<12} first entry {:+.6e}  relative error {:.2e}",
            e.gradient[0],
            relative_error(&e.gradient, &exact)
        );
    }
    // A sweep with phases placed at distance delta, on problems this program builds per seed:
    // the contrastive rule at 29 strengths per variant (the budget sets its phases).
    let betas = parse_log_range("1e-8:1e-1:29")?;
    let estimators = [Variant::Standard, Variant::Symmetric]
        .into_iter()
        .flat_map(|variant| {
            betas.iter().map(move |&beta| {
                EstimatorSpec::Contrastive(Contrastive {
                    variant,
                    beta,
                    free: GdParams::default(),
                    nudged: GdParams::default(),
                })
            })
        })
        .collect();
    let config = SweepConfig {
        problem: ProblemSource::Custom("tuned-ridge".into()),
        seeds: vec![0],
        estimators,
        budgets: [1e-10, 1e-9, 1e-8, 1e-7, 1e-6].map(Budget::Delta).to_vec(),
        step_size: None,
        max_steps: 100_000,
        error_bars: true,
        error_bar_scale: 1.0,
    };
    let rows = run_on(
        &config,
        (0, 1),
        &|seed| Ok(Box::new(TunedRidge::random(seed)?)),
        &|| {},
    )?;
    println!(
        "\nsweep: {} rows; slopes on log-log axes, measured (theory)",
        rows.len()
    );
    for variant in [Variant::Standard, Variant::Symmetric] {
        let f = fit_variant(&rows, variant);
        let measured = [f.right, f.left, f.best_beta_vs_delta, f.best_error_vs_delta];
        let shown: Vec<String> = measured
            .iter()
            .zip(f.theory)
            .map(|(m, t)| format!("{} ({t:+.2})", m.map_or("n/a".into(), |m| format!("{m:+.2}"))))
            .collect();
        println!("{:<10} {}", variant.name(), shown.join("  "));
        for (m, t) in measured.iter().zip(f.theory) {
            let m =
                m.ok_or_else(|| cml::CmlError::invalid("slope", "missing", "enough points on each side"))?;
            if (m - t).abs() > 0.15 {
                return Err(cml::CmlError::invalid(
                    "slope",
                    m,
                    format!("within 0.15 of theory {t}"),
                ));
            }
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // The exact reference needs second derivatives (docs/CANDLE.md); `cargo run` sets the
    // variable through .cargo/config.toml.
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[test]
fn the_own_problem_example_runs_and_its_slopes_agree_with_theory() {
    run().unwrap();
}
