//! Inner learning and problem instances.

mod common;

use cml::ground_truth::{NewtonParams, solve_phase};
use cml::inner::{GdParams, gradient_descent};
use cml::linalg::norm;
use cml::oracle::Oracle;
use cml::problem::InstanceFile;
use cml::registry::{draw_problem as build, read_problem as from_instance};
use common::{PROBLEMS, perturbed};

#[test]
fn gradient_descent_reports_a_certified_distance_that_bounds_the_true_one() {
    // ||phi - phi*|| <= ||grad|| / mu (MATH.md §3), checked against Newton's phi*.
    for name in PROBLEMS {
        let p = build(name, 2).unwrap();
        let theta = p.theta().clone();
        for beta in [0.0, 0.2, -0.01] {
            for steps in [5, 50] {
                let oracle = Oracle::new(p.as_ref());
                let phi0 = p.initial_phi(&theta).unwrap();
                let params = GdParams {
                    step_size: None,
                    max_steps: steps,
                    tolerance: 0.0,
                    ..GdParams::default()
                };
                let sol = gradient_descent(&oracle, &phi0, &theta, beta, &params, "phase").unwrap();
                let (star, _) = solve_phase(&oracle, &phi0, &theta, beta, NewtonParams::default()).unwrap();
                let distance = norm(&(&sol.phi - &star).unwrap()).unwrap();
                let certified = sol.info.certified_distance.expect("curvature known");
                assert!(
                    distance <= certified * (1.0 + 1e-9),
                    "{name} beta {beta}: {distance} > {certified}"
                );
                assert_eq!(sol.info.steps, steps);
                assert_eq!(sol.info.gradient_evaluations, steps + 1);
                assert!(!sol.info.converged);
                // The reported loss and gradient norm are those of the returned point.
                let g = oracle.phase_gradients(&sol.phi, &theta, beta).unwrap();
                assert_eq!(g.loss, sol.info.loss);
                assert_eq!(norm(&g.phi).unwrap(), sol.info.grad_norm);
            }
        }
    }
}

#[test]
fn gradient_descent_stops_at_its_tolerance() {
    let p = build("logistic", 0).unwrap();
    let theta = p.theta().clone();
    let oracle = Oracle::new(p.as_ref());
    let params = GdParams {
        step_size: None,
        max_steps: 100_000,
        tolerance: 1e-8,
        ..GdParams::default()
    };
    let sol = gradient_descent(
        &oracle,
        &p.initial_phi(&theta).unwrap(),
        &theta,
        0.0,
        &params,
        "free",
    )
    .unwrap();
    assert!(sol.info.converged && sol.info.grad_norm <= 1e-8);
    assert!(sol.info.steps < 100_000);
}

#[test]
fn zero_step_budget_and_bad_step_sizes_are_errors() {
    let p = build("quadratic", 0).unwrap();
    let theta = p.theta().clone();
    let oracle = Oracle::new(p.as_ref());
    let phi0 = p.initial_phi(&theta).unwrap();
    for (params, needle) in [
        (
            GdParams {
                step_size: None,
                max_steps: 0,
                tolerance: 0.0,
                ..GdParams::default()
            },
            "step budget = 0",
        ),
        (
            GdParams {
                step_size: Some(-1.0),
                max_steps: 5,
                tolerance: 0.0,
                ..GdParams::default()
            },
            "step size = -1",
        ),
        (
            GdParams {
                step_size: Some(f64::NAN),
                max_steps: 5,
                tolerance: 0.0,
                ..GdParams::default()
            },
            "step size = NaN",
        ),
    ] {
        let err = gradient_descent(&oracle, &phi0, &theta, 0.0, &params, "free")
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn instances_round_trip_through_json_and_give_the_same_losses() {
    for name in PROBLEMS {
        let p = build(name, 9).unwrap();
        let text = serde_json::to_string(&p.to_instance()).unwrap();
        let file = InstanceFile::parse(&text, "memory").unwrap();
        let q = from_instance(&file, "memory").unwrap();
        assert_eq!(q.dims(), p.dims());
        let theta = perturbed(p.theta(), 0.1, 1);
        let phi = perturbed(&p.initial_phi(&theta).unwrap(), 1.0, 2);
        for (a, b) in [
            (
                p.inner_loss(&phi, &theta).unwrap(),
                q.inner_loss(&phi, &theta).unwrap(),
            ),
            (
                p.outer_loss(&phi, &theta).unwrap(),
                q.outer_loss(&phi, &theta).unwrap(),
            ),
        ] {
            assert_eq!(
                a.to_scalar::<f64>().unwrap(),
                b.to_scalar::<f64>().unwrap(),
                "{name}"
            );
        }
        assert_eq!(q.to_instance(), p.to_instance());
    }
}

#[test]
fn the_same_seed_draws_the_same_instance_and_another_seed_does_not() {
    for name in PROBLEMS {
        assert_eq!(
            build(name, 5).unwrap().to_instance(),
            build(name, 5).unwrap().to_instance()
        );
        assert_ne!(
            build(name, 5).unwrap().to_instance(),
            build(name, 6).unwrap().to_instance()
        );
    }
}

#[test]
fn quadratic_spectrum_is_the_one_asked_for() {
    let p = build("quadratic", 3).unwrap();
    let c = p.curvature(p.theta(), 0.0).unwrap().unwrap();
    approx::assert_abs_diff_eq!(c.strong_convexity, 1.0, epsilon = 1e-12);
    approx::assert_abs_diff_eq!(c.smoothness, 10.0, epsilon = 1e-12);
}
