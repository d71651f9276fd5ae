//! Inner learning and problem instances.

mod common;

use approx::assert_relative_eq;
use cml::engine::EngineChoice;
use cml::inner::{GdParams, InnerSolver, NewtonParams, Phase, Termination};
use cml::linalg::{norm, to_dvector};
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
                let sol = params
                    .solve(&oracle, &Phase::new(&phi0, &theta, beta, "phase"))
                    .unwrap();
                let star = NewtonParams::default()
                    .solve(&oracle, &Phase::new(&phi0, &theta, beta, "phase"))
                    .unwrap()
                    .phi;
                let distance = norm(&(&sol.phi - &star).unwrap()).unwrap();
                let certified = sol.info.certified_distance.expect("curvature known");
                assert!(
                    distance <= certified * (1.0 + 1e-9),
                    "{name} beta {beta}: {distance} > {certified}"
                );
                assert_eq!(sol.info.steps, steps);
                assert_eq!(sol.info.gradient_evaluations, steps + 1);
                assert!(!sol.info.converged());
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
    let sol = params
        .solve(
            &oracle,
            &Phase::new(&p.initial_phi(&theta).unwrap(), &theta, 0.0, "free"),
        )
        .unwrap();
    assert!(sol.info.converged() && sol.info.grad_norm <= 1e-8);
    assert!(sol.info.steps < 100_000);
}

#[test]
fn every_solver_says_why_it_stopped() {
    // Each reason follows from the settings: a tolerance reached, a budget run out with no
    // tolerance, a budget run out above one, and Newton's step vanishing at machine precision.
    let p = build("logistic", 1).unwrap();
    let theta = p.theta().clone();
    let start = p.initial_phi(&theta).unwrap();
    let phase = Phase::new(&start, &theta, 0.1, "phase");
    let oracle = Oracle::new(p.as_ref());
    let run = |max_steps, tolerance| {
        GdParams {
            max_steps,
            tolerance,
            ..GdParams::default()
        }
        .solve(&oracle, &phase)
        .unwrap()
        .info
    };
    let reached = run(100_000, 1e-6);
    assert_eq!(reached.termination, Termination::Tolerance);
    assert!(reached.grad_norm <= 1e-6 && reached.steps < 100_000 && reached.converged());
    let budget = run(5, 0.0);
    assert_eq!(budget.termination, Termination::Budget);
    assert!(budget.steps == 5 && !budget.converged());
    let exceeded = run(5, 1e-6);
    assert_eq!(exceeded.termination, Termination::BudgetExceeded);
    assert!(exceeded.steps == 5 && exceeded.grad_norm > 1e-6 && !exceeded.converged());
    let newton = NewtonParams::default().solve(&oracle, &phase).unwrap().info;
    assert_eq!(newton.termination, Termination::Stationary);
    assert!(newton.converged() && newton.grad_norm <= 1e-10 && newton.steps < 50);
}

#[test]
fn an_observer_sees_every_iterate_a_step_is_taken_from() {
    // With a given step size alpha, iterate k + 1 is phi_k - alpha d_phi L_beta(phi_k); the
    // gradients are recomputed here by Candle autodiff, apart from the solver. The fast engine
    // shows the same iterates up to rounding.
    let p = build("ridge", 3).unwrap();
    let theta = p.theta().clone();
    let start = p.initial_phi(&theta).unwrap();
    let (alpha, beta, steps) = (0.01, 0.3, 4);
    let oracle = Oracle::new(p.as_ref());
    for engine in [EngineChoice::Candle, EngineChoice::Auto] {
        let params = GdParams {
            step_size: Some(alpha),
            max_steps: steps,
            engine,
            ..GdParams::default()
        };
        let mut seen = Vec::new();
        let end = params
            .solve_observed(
                &oracle,
                &Phase::new(&start, &theta, beta, "phase"),
                &mut |k, phi: &candle_core::Tensor| seen.push((k, to_dvector(phi).unwrap())),
            )
            .unwrap();
        assert_eq!(
            seen.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            (0..steps).collect::<Vec<_>>()
        );
        assert_eq!(seen[0].1, to_dvector(&start).unwrap());
        let mut next: Vec<_> = seen.iter().skip(1).map(|(_, phi)| phi.clone()).collect();
        next.push(to_dvector(&end.phi).unwrap());
        for ((_, phi), after) in seen.iter().zip(&next) {
            let grad = oracle
                .phase_phi_gradient(&cml::linalg::to_tensor(phi).unwrap(), &theta, beta)
                .unwrap();
            let expected = phi - to_dvector(&grad.phi).unwrap() * alpha;
            assert_relative_eq!(after, &expected, max_relative = 1e-12);
        }
    }
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
        let err = params
            .solve(&oracle, &Phase::new(&phi0, &theta, 0.0, "free"))
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
