//! The inner optimisers: their update rules against hand-computed steps, both engines giving the
//! same estimates, a fresh state for every nudged phase, and BPTT refusing a rule it cannot
//! differentiate.

use approx::assert_relative_eq;
use cml::engine::EngineChoice;
use cml::estimator::{Contrastive, EstimatorSpec, MetaGradientEstimator, Unrolled, Variant};
use cml::inner::{GdParams, InnerSolver, Phase};
use cml::mlp::Mlp;
use cml::optimizer::{Optimizer, OptimizerState};
use cml::oracle::Oracle;
use cml::problem::ProblemInstance;
use cml::problem::{Synapse, SynapseSpec};
use cml::registry::draw_problem as build;

const ADAM: Optimizer = Optimizer::Adam {
    beta1: 0.9,
    beta2: 0.999,
    epsilon: 1e-8,
};

/// Two updates of a single coordinate from phi = 1 with gradients 2 then 1, step 0.1.
fn two_steps(rule: Optimizer) -> (f64, f64) {
    let mut state = OptimizerState::new(rule, 1);
    let mut phi = [1.0];
    state.apply(&mut phi, &[2.0], 0.1);
    let first = phi[0];
    state.apply(&mut phi, &[1.0], 0.1);
    (first, phi[0])
}

#[test]
fn each_rule_takes_the_steps_computed_by_hand() {
    // gd: 1 - 0.1 x 2 = 0.8, then 0.8 - 0.1 x 1 = 0.7.
    assert_eq!(two_steps(Optimizer::GradientDescent), (0.8, 0.7000000000000001));
    // momentum 0.5: v = 2, phi = 0.8; v = 0.5 x 2 + 1 = 2, phi = 0.6.
    let (a, b) = two_steps(Optimizer::Momentum { momentum: 0.5 });
    assert_relative_eq!(a, 0.8, max_relative = 1e-15);
    assert_relative_eq!(b, 0.6, max_relative = 1e-15);
    // Nesterov 0.5: v = 2, phi = 1 - 0.1 (2 + 0.5 x 2) = 0.7; v = 2, phi = 0.7 - 0.1 (1 + 1) = 0.5.
    let (a, b) = two_steps(Optimizer::Nesterov { momentum: 0.5 });
    assert_relative_eq!(a, 0.7, max_relative = 1e-15);
    assert_relative_eq!(b, 0.5, max_relative = 1e-15);
    // Adam: m = 0.2, s = 0.004, bias-corrected 2 and 4: phi = 1 - 0.1 x 2 / (2 + 1e-8).
    // Then m = 0.28, s = 0.004996, corrections 1 - 0.9^2 = 0.19 and 1 - 0.999^2 = 0.001999.
    let (a, b) = two_steps(ADAM);
    let first = 1.0 - 0.1 * 2.0 / (2.0 + 1e-8);
    assert_relative_eq!(a, first, max_relative = 1e-15);
    assert_relative_eq!(
        b,
        first - 0.1 * (0.28 / 0.19) / ((0.004996f64 / 0.001999).sqrt() + 1e-8),
        max_relative = 1e-12
    );
}

#[test]
fn bad_optimizer_settings_are_clear_errors() {
    let err = Optimizer::from_name("sgd", 0.9).unwrap_err().to_string();
    assert!(err.contains("sgd") && err.contains("nesterov"), "{err}");
    let err = Optimizer::from_name("momentum", 1.5).unwrap_err().to_string();
    assert!(err.contains("momentum") && err.contains("[0, 1)"), "{err}");
}

fn phase(optimizer: Optimizer, engine: EngineChoice, steps: usize) -> GdParams {
    GdParams {
        step_size: Some(if optimizer == ADAM { 1e-3 } else { 0.01 }),
        max_steps: steps,
        tolerance: 0.0,
        engine,
        optimizer,
        ..GdParams::default()
    }
}

#[test]
fn every_rule_gives_the_same_estimate_on_both_engines() {
    let spec = SynapseSpec {
        net: Mlp::parse("1-6-6-1").unwrap(),
        per_synapse: true,
        strength: 1.0,
        fixed_strength: false,
    };
    let p = Synapse::random(&spec, 10, 1).unwrap();
    for rule in [
        Optimizer::Momentum { momentum: 0.9 },
        Optimizer::Nesterov { momentum: 0.9 },
        ADAM,
    ] {
        let est = |engine| {
            Contrastive {
                variant: Variant::Symmetric,
                beta: 0.05,
                free: phase(rule, engine, 150),
                nudged: phase(rule, engine, 40),
            }
            .estimate(&p, p.theta())
            .unwrap()
            .gradient
        };
        let (fast, candle) = (est(EngineChoice::Fast), est(EngineChoice::Candle));
        let err = cml::linalg::relative_error(&fast, &candle);
        assert!(err < 1e-10, "{}: engines differ by {err:.3e}", rule.name());
    }
}

#[test]
fn every_nudged_phase_starts_with_a_fresh_optimizer_state() {
    // Adam's first step moves every coordinate by lr (m_hat / sqrt(s_hat) = g / |g|), whatever
    // came before; a state carried over from the free phase would not.
    let p = build("quadratic", 0).unwrap();
    let theta = p.theta();
    let oracle = Oracle::new(p.as_ref());
    let free = (phase(ADAM, EngineChoice::Auto, 300))
        .solve(
            &oracle,
            &Phase::new(&p.initial_phi(theta).unwrap(), theta, 0.0, "free phase"),
        )
        .unwrap();
    let nudged = (phase(ADAM, EngineChoice::Auto, 1))
        .solve(&oracle, &Phase::new(&free.phi, theta, 0.1, "nudged phase"))
        .unwrap();
    let moved = (&nudged.phi - &free.phi)
        .unwrap()
        .abs()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    for m in moved {
        assert_relative_eq!(m, 1e-3, max_relative = 1e-5);
    }
}

#[test]
fn momentum_reaches_a_tolerance_in_fewer_steps_than_gradient_descent() {
    // Spectrum [1, 10]: gradient descent at 1 / L contracts by 0.9 per step; heavy ball with
    // Polyak's step 4 / (sqrt(L) + sqrt(mu))^2 and momentum ((sqrt(10) - 1) / (sqrt(10) + 1))^2
    // by about (sqrt(10) - 1) / (sqrt(10) + 1) = 0.52.
    let p = build("quadratic", 0).unwrap();
    let theta = p.theta();
    let (r, polyak) = (10f64.sqrt(), 4.0 / (10f64.sqrt() + 1.0).powi(2));
    let steps = |optimizer, step: f64| {
        let params = GdParams {
            step_size: Some(step),
            max_steps: 10_000,
            tolerance: 1e-10,
            optimizer,
            ..GdParams::default()
        };
        let sol = params
            .solve(
                &Oracle::new(p.as_ref()),
                &Phase::new(&p.initial_phi(theta).unwrap(), theta, 0.0, "free phase"),
            )
            .unwrap();
        assert!(sol.info.converged());
        sol.info.steps
    };
    let momentum = ((r - 1.0) / (r + 1.0)).powi(2);
    let (gd, heavy) = (
        steps(Optimizer::GradientDescent, 0.1),
        steps(Optimizer::Momentum { momentum }, polyak),
    );
    assert!(heavy * 2 < gd, "momentum {heavy} steps, gradient descent {gd}");
}

#[test]
fn bptt_refuses_a_rule_it_cannot_differentiate() {
    let spec = EstimatorSpec::Unrolled(Unrolled {
        inner: GdParams {
            optimizer: ADAM,
            ..GdParams::default()
        },
        truncation: None,
    });
    let error = spec.validate().unwrap_err();
    let err = error.to_string();
    assert!(err.contains("adam") && err.contains("gradient-descent"), "{err}");
    assert!(cml::cli::remedy(&error).is_some_and(|r| r.contains("--free-optimizer gd")));
}
