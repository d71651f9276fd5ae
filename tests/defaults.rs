//! Defaults a newcomer meets (docs/STEP_SIZE.md): the power-iteration step size against the
//! dense Hessian's spectrum, the divergence rule on a real blow-up and on the late wiggle that
//! used to stop `cml train`, and estimators refused where their assumptions fail.

use approx::assert_relative_eq;
use cml::autodiff::dense_second_derivatives;
use cml::estimator::{EstimatorSpec, FirstOrder, FirstOrderRule, Implicit, LinearSolver};
use cml::inner::{Divergence, DivergenceRule, GdParams, InnerSolver, Phase, StepSizeRule};
use cml::mlp::Mlp;
use cml::oracle::Oracle;
use cml::problem::{BilevelProblem, ProblemInstance, phase_loss};
use cml::problem::{Modulation, ModulationSpec, Synapse, SynapseSpec};
use cml::registry::draw_problem as build;
use cml::smoothness;

/// Largest eigenvalue magnitude of the phase loss's Hessian, from the dense matrix.
fn dense_largest_curvature(p: &dyn ProblemInstance, beta: f64) -> f64 {
    let theta = p.theta();
    let phi = p.initial_phi(theta).unwrap();
    let d = dense_second_derivatives(&phase_loss(p, beta), &phi, theta).unwrap();
    d.hessian.symmetric_eigenvalues().amax()
}

#[test]
fn power_iteration_finds_the_known_smoothness_of_the_quadratic_from_below() {
    // The quadratic's Hessian has its spectrum evenly on [1, 10] (docs/PROBLEMS.md), so L = 10
    // exactly; the second eigenvalue 9 makes power iteration converge at rate 0.9 per product.
    let p = build("quadratic", 3).unwrap();
    let theta = p.theta();
    let known = p.curvature(theta, 0.0).unwrap().unwrap().smoothness;
    assert_relative_eq!(known, 10.0, max_relative = 1e-12);
    let e = smoothness::estimate(
        &Oracle::new(p.as_ref()),
        &p.initial_phi(theta).unwrap(),
        theta,
        0.0,
    )
    .unwrap();
    assert!(
        e.largest_curvature <= known * (1.0 + 1e-12),
        "{e:?} above L = {known}"
    );
    // The default step 1 / (2 L^) is stable while L^ > L / 4; power iteration does far better.
    assert!(e.largest_curvature >= 0.8 * known, "{e:?} far below L = {known}");
}

#[test]
fn power_iteration_on_the_network_models_matches_the_dense_spectrum() {
    let net = Mlp::parse("1-8-8-1").unwrap();
    let synapse = Synapse::random(
        &SynapseSpec {
            net: net.clone(),
            per_synapse: true,
            strength: 1.0,
            fixed_strength: false,
        },
        10,
        4,
    )
    .unwrap();
    let modulation = Modulation::random(&ModulationSpec { net, strength: 1.0 }, 10, 4).unwrap();
    for p in [&synapse as &dyn ProblemInstance, &modulation] {
        for beta in [0.0, 0.5, -0.5] {
            let exact = dense_largest_curvature(p, beta);
            let theta = p.theta();
            let e =
                smoothness::estimate(&Oracle::new(p), &p.initial_phi(theta).unwrap(), theta, beta).unwrap();
            assert!(
                e.largest_curvature <= exact * (1.0 + 1e-9) && e.largest_curvature >= 0.5 * exact,
                "{}: power iteration {e:?}, dense {exact}",
                p.name()
            );
        }
    }
}

#[test]
fn without_a_step_size_a_network_phase_uses_power_iteration_and_says_so() {
    let p = Synapse::random(&SynapseSpec::default(), 10, 0).unwrap();
    let theta = p.theta();
    let oracle = Oracle::new(&p);
    let params = GdParams {
        max_steps: 200,
        tolerance: 0.0,
        ..GdParams::default()
    };
    let sol = params
        .solve(
            &oracle,
            &Phase::new(&p.initial_phi(theta).unwrap(), theta, 0.0, "free phase"),
        )
        .unwrap();
    let StepSizeRule::PowerIteration {
        largest_curvature,
        iterations,
        safety,
        halvings: 0,
    } = sol.info.step_size_rule
    else {
        panic!(
            "expected the power-iteration rule, got {:?}",
            sol.info.step_size_rule
        );
    };
    assert_eq!(safety, smoothness::SAFETY);
    assert_relative_eq!(
        sol.info.step_size,
        1.0 / (safety * largest_curvature),
        max_relative = 1e-15
    );
    // Every Hessian-vector product is charged; the loss went down.
    assert_eq!(oracle.cost().second_order_products, iterations);
    let start = cml::problem::phase_loss(&p, 0.0)(&p.initial_phi(theta).unwrap(), theta).unwrap();
    assert!(sol.info.loss < start.to_scalar::<f64>().unwrap());
}

#[test]
fn a_default_step_that_diverges_on_the_way_is_halved_and_reported() {
    // Network curvature grows along the path, so 1 / (2 L^) from the start can diverge later
    // (the default `cml train --model synapse` met this). Find such a draw among the first seeds.
    let params = GdParams {
        max_steps: 1000,
        tolerance: 0.0,
        ..GdParams::default()
    };
    let found = (0..40u64).find_map(|seed| {
        let p = Synapse::random(&SynapseSpec::default(), 10, seed).unwrap();
        let theta = p.theta().clone();
        let phi0 = p.initial_phi(&theta).unwrap();
        let sol = params
            .solve(&Oracle::new(&p), &Phase::new(&phi0, &theta, 0.0, "free phase"))
            .unwrap();
        match sol.info.step_size_rule {
            StepSizeRule::PowerIteration {
                largest_curvature,
                halvings,
                ..
            } if halvings > 0 => Some((p, phi0, sol, largest_curvature, halvings)),
            _ => None,
        }
    });
    let (p, phi0, sol, l_hat, halvings) = found.expect("some draw needs a halved step");
    let theta = p.theta();
    assert_relative_eq!(
        sol.info.step_size,
        1.0 / (2.0 * l_hat * 2f64.powi(halvings as i32)),
        max_relative = 1e-15
    );
    // The step one halving earlier does diverge (checked independently, as a given step size).
    let longer = GdParams {
        step_size: Some(2.0 * sol.info.step_size),
        ..params
    };
    let err = longer
        .solve(&Oracle::new(&p), &Phase::new(&phi0, theta, 0.0, "free phase"))
        .unwrap_err();
    assert!(err.to_string().contains("diverged"), "{err}");
    assert!(sol.info.loss.is_finite());
}

#[test]
fn a_step_size_far_above_two_over_l_is_divergence_and_the_command_line_names_the_flag() {
    // Quadratic with L = 10: a step of 0.5 multiplies the top mode by |1 - 5| = 4 each step.
    let p = build("quadratic", 0).unwrap();
    let theta = p.theta();
    let params = GdParams {
        step_size: Some(0.5),
        max_steps: 100,
        tolerance: 0.0,
        ..GdParams::default()
    };
    let error = params
        .solve(
            &Oracle::new(p.as_ref()),
            &Phase::new(&p.initial_phi(theta).unwrap(), theta, 0.0, "free phase"),
        )
        .unwrap_err();
    let err = error.to_string();
    assert!(err.contains("free phase diverged at step"), "{err}");
    // The library names the setting, the command line the flag that sets it.
    assert!(!err.contains("--"), "{err}");
    assert!(cml::cli::remedy(&error).is_some_and(|r| r.contains("--free-step-size")));
    // Geometric growth by 16x per step in the loss crosses the 10% line within a few steps.
    let step: usize = err
        .split("at step ")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(step <= 5, "{err}");
}

#[test]
fn a_phase_that_only_refuses_non_finite_losses_runs_through_a_rise_and_stops_at_overflow() {
    // The same blow-up (step 0.5 on the quadratic with L = 10: the top mode grows 4x per step,
    // the loss 16x). With `Divergence::NonFinite` a 10-step phase completes with the risen loss
    // (what an e-prop phase with a fresh Adam state needs, docs/SPIKING.md §4); a long one still
    // stops once the loss overflows (16^k passes f64's range well before 600 steps).
    let p = build("quadratic", 0).unwrap();
    let theta = p.theta();
    let run = |max_steps| {
        let params = GdParams {
            step_size: Some(0.5),
            max_steps,
            divergence: Divergence::NonFinite,
            ..GdParams::default()
        };
        params.solve(
            &Oracle::new(p.as_ref()),
            &Phase::new(&p.initial_phi(theta).unwrap(), theta, 0.0, "free phase"),
        )
    };
    let start = p
        .inner_loss(&p.initial_phi(theta).unwrap(), theta)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let short = run(10).unwrap();
    assert!(
        short.info.loss > 1e6 * start.abs().max(1e-3),
        "{} from {start}",
        short.info.loss
    );
    let err = run(600).unwrap_err().to_string();
    assert!(
        err.contains("diverged") && (err.contains("inf") || err.contains("NaN")),
        "{err}"
    );
}

#[test]
fn the_late_wiggle_that_stopped_cml_train_is_a_recorded_rise_not_divergence() {
    // The nudged phase that killed the default `cml train --model synapse`: start 5.072662,
    // down to 5.069046, then up by 2.3e-5 (the old rule stopped at a rise of 1e-8 relative, or
    // ten rises in a row).
    let mut rule = DivergenceRule::new(5.072662);
    let mut losses = vec![5.0710, 5.0695, 5.069046];
    losses.extend((1..=10).map(|i| 5.069046 + 2.3e-6 * i as f64));
    for (k, &l) in losses.iter().enumerate() {
        rule.observe(k + 1, l).unwrap();
    }
    let rises = rule.rises().expect("the rises are recorded");
    assert_eq!(rises.count, 10);
    assert_relative_eq!(rises.largest, 2.3e-6, max_relative = 1e-6);
}

#[test]
fn the_divergence_line_is_ten_percent_of_the_loss_scale_above_the_start() {
    // Scale max(|L0|, L0 - min L) = 2 here, so the line is 1 + 0.2 = 1.2.
    let mut rule = DivergenceRule::new(1.0);
    rule.observe(1, -1.0).unwrap();
    rule.observe(2, 1.19).unwrap();
    let err = rule.observe(3, 1.21).unwrap_err();
    assert!(err.contains("1.21") && err.contains("above its start"), "{err}");
    assert!(DivergenceRule::new(1.0).observe(1, f64::NAN).is_err());
    assert!(DivergenceRule::new(1.0).observe(1, f64::INFINITY).is_err());
    // Rounding-level rises are not rises.
    let mut quiet = DivergenceRule::new(3.0);
    quiet.observe(1, 2.0).unwrap();
    quiet.observe(2, 2.0 + 1e-13).unwrap();
    assert_eq!(quiet.rises(), None);
}

fn first_order(rule: FirstOrderRule) -> EstimatorSpec {
    EstimatorSpec::FirstOrder(FirstOrder {
        rule,
        free: GdParams {
            max_steps: 20,
            ..GdParams::default()
        },
    })
}

#[test]
fn first_order_rules_are_refused_where_theta_does_not_set_the_initialisation() {
    for name in ["quadratic", "ridge", "logistic"] {
        let p = build(name, 0).unwrap();
        for rule in [FirstOrderRule::FirstOrderMaml, FirstOrderRule::Reptile] {
            let spec = first_order(rule);
            let error = spec.check_applicable(p.as_ref(), p.theta(), false).unwrap_err();
            let err = error.to_string();
            assert!(err.contains("initialisation") && !err.contains("--"), "{err}");
            assert!(cml::cli::remedy(&error).is_some_and(|r| r.contains("--allow-inapplicable")));
            let warning = spec.check_applicable(p.as_ref(), p.theta(), true).unwrap();
            assert!(warning.is_some_and(|w| w.contains(name)));
            // And indeed: Reptile's estimate there is exactly zero.
            if rule == FirstOrderRule::Reptile {
                let e = spec.estimator().estimate(p.as_ref(), p.theta()).unwrap();
                assert_eq!(e.gradient.amax(), 0.0);
            }
        }
    }
    for name in ["synapse", "modulation"] {
        let p = build(name, 0).unwrap();
        for rule in [FirstOrderRule::FirstOrderMaml, FirstOrderRule::Reptile] {
            assert_eq!(
                first_order(rule).inapplicable(p.as_ref(), p.theta()).unwrap(),
                None,
                "{name}"
            );
        }
    }
}

#[test]
fn the_dense_implicit_solve_is_refused_above_its_size_limit() {
    let wide = SynapseSpec {
        net: Mlp::parse("1-70-70-1").unwrap(),
        per_synapse: true,
        strength: 1.0,
        fixed_strength: false,
    };
    let p = Synapse::random(&wide, 10, 0).unwrap();
    assert!(p.dims().phi > cml::estimator::DENSE_SOLVE_LIMIT);
    let dense = EstimatorSpec::Implicit(Implicit {
        solver: LinearSolver::Dense,
        free: GdParams::default(),
    });
    let reason = dense.inapplicable(&p, p.theta()).unwrap().expect("refused");
    assert!(reason.contains("5181") && reason.contains("cg"), "{reason}");
    let cg = EstimatorSpec::Implicit(Implicit {
        solver: LinearSolver::ConjugateGradient { steps: 5 },
        free: GdParams::default(),
    });
    assert_eq!(cg.inapplicable(&p, p.theta()).unwrap(), None);
}
