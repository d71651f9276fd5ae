//! The contrastive estimator converges to the exact meta-gradient at the order theory says
//! (MATH.md §3): O(beta) for the standard variant, O(beta^2) for the symmetric and the
//! second-order forward ones, when the phases are solved exactly.

mod common;

use approx::assert_relative_eq;
use cml::estimator::{Contrastive, MetaGradientEstimator, Variant};
use cml::ground_truth::exact_meta_gradient;
use cml::inner::{GdParams, InnerSolver, NewtonParams, Phase};
use cml::linalg::{Vector, to_dvector, to_tensor};
use cml::oracle::Oracle;
use cml::problem::ProblemInstance;
use cml::registry::draw_problem as build;
use common::PROBLEMS;

/// The variant's stencil applied to `g(b) = d_theta L_b(phi*_b)` with every phase solved by
/// Newton to machine precision (`delta = 0` up to rounding).
fn exact_phase_estimate(p: &dyn ProblemInstance, variant: Variant, beta: f64) -> Vector {
    let theta = p.theta().clone();
    let oracle = Oracle::new(p);
    let start = p.initial_phi(&theta).unwrap();
    variant
        .combine(beta, |b| {
            let phi = NewtonParams::default()
                .solve(&oracle, &Phase::new(&start, &theta, b, "phase"))?
                .phi;
            to_dvector(&oracle.phase_gradients(&phi, &theta, b)?.theta)
        })
        .unwrap()
}

#[test]
fn halving_beta_halves_the_standard_error_and_quarters_the_second_order_errors() {
    for name in PROBLEMS {
        let p = build(name, 1).unwrap();
        let exact = exact_meta_gradient(p.as_ref(), p.theta()).unwrap().meta_gradient;
        for (variant, betas, expected) in [
            (Variant::Standard, [4e-3, 2e-3, 1e-3], 1.8..=2.2),
            (Variant::Symmetric, [4e-2, 2e-2, 1e-2], 3.5..=4.5),
            (Variant::SecondOrderForward, [4e-3, 2e-3, 1e-3], 3.5..=4.5),
        ] {
            let errors: Vec<f64> = betas
                .iter()
                .map(|&b| (exact_phase_estimate(p.as_ref(), variant, b) - &exact).norm())
                .collect();
            for w in errors.windows(2) {
                let ratio = w[0] / w[1];
                assert!(
                    expected.contains(&ratio),
                    "{name} {}: errors {errors:?}, ratio {ratio:.3} not in {expected:?}",
                    variant.name()
                );
            }
        }
    }
}

#[test]
fn the_first_order_term_of_the_standard_error_matches_the_closed_form_slope() {
    // Quadratic: F(b) = -B^T phi*_b + b gamma theta, so F''(0) = -B^T phi''(0) with
    // phi'(0) = A^{-1}(C^T d - C^T C phi*_0), phi''(0) = -2 A^{-1} C^T C phi'(0), and the
    // standard estimate is F'(0) + beta/2 F''(0) + O(beta^2).
    let q = cml::problem::Quadratic::random(&Default::default(), 2).unwrap();
    let p: &dyn ProblemInstance = &q;
    let m = q.matrices();
    let theta = to_dvector(p.theta()).unwrap();
    let phi0 = p.closed_form().unwrap().phase_solution(&theta, 0.0).unwrap();
    let a_inv = m.a.clone().try_inverse().unwrap();
    let g = m.cm.transpose() * m.cm;
    let d1 = &a_inv * (m.cm.transpose() * m.d - &g * &phi0);
    let d2 = -2.0 * &a_inv * &g * &d1;
    let f2 = -(m.b.transpose() * d2);
    let exact = exact_meta_gradient(p, p.theta()).unwrap().meta_gradient;
    let beta = 1e-4;
    let error = exact_phase_estimate(p, Variant::Standard, beta) - exact;
    let predicted = &f2 * (beta / 2.0);
    assert!(
        (&error - &predicted).norm() < 1e-3 * predicted.norm(),
        "{error} vs {predicted}"
    );
}

#[test]
fn with_gradient_descent_phases_the_error_falls_as_the_step_budget_grows() {
    // At fixed beta the error is (beta term) + (delta / beta term); more steps shrink delta, so
    // the error falls until it reaches the exact-phase error at that beta (the beta floor).
    let beta = 1e-3;
    for name in PROBLEMS {
        let p = build(name, 4).unwrap();
        let exact = exact_meta_gradient(p.as_ref(), p.theta()).unwrap().meta_gradient;
        for variant in Variant::ALL {
            let floor = (exact_phase_estimate(p.as_ref(), variant, beta) - &exact).norm();
            // The two error terms are vectors and can partly cancel, so near the floor the error
            // may dip a little below it before settling.
            let near_floor = |e: f64| (e - floor).abs() <= 0.1 * floor;
            let errors: Vec<f64> = [10, 20, 40, 80, 160, 320, 640]
                .iter()
                .map(|&steps| {
                    let phase = GdParams {
                        step_size: None,
                        max_steps: steps,
                        tolerance: 0.0,
                        ..GdParams::default()
                    };
                    let est = Contrastive {
                        variant,
                        beta,
                        free: phase,
                        nudged: phase,
                    };
                    (est.estimate(p.as_ref(), p.theta()).unwrap().gradient - &exact).norm()
                })
                .collect();
            let what = format!("{name} {}: errors {errors:?}, floor {floor:.3e}", variant.name());
            let reached = errors.iter().position(|&e| near_floor(e)).expect(&what);
            assert!(
                errors[..=reached].windows(2).all(|w| w[1] < w[0]),
                "{what}: not falling"
            );
            assert!(
                errors[reached..].iter().all(|&e| near_floor(e)),
                "{what}: left the floor"
            );
            assert!(
                errors[0] > 10.0 * floor,
                "{what}: the smallest budget should be far from the floor"
            );
        }
    }
}

#[test]
fn a_well_converged_estimate_equals_the_exact_phase_estimate() {
    // Gradient descent run to its tolerance and Newton solve the same phases: the two paths to
    // the estimate agree to delta / beta.
    for name in PROBLEMS {
        let p = build(name, 6).unwrap();
        let phase = GdParams {
            step_size: None,
            max_steps: 100_000,
            tolerance: 1e-12,
            ..GdParams::default()
        };
        for variant in Variant::ALL {
            let est = Contrastive {
                variant,
                beta: 1e-2,
                free: phase,
                nudged: phase,
            };
            let e = est.estimate(p.as_ref(), p.theta()).unwrap();
            assert!(e.phases.iter().all(|ph| ph.converged()));
            let reference = exact_phase_estimate(p.as_ref(), variant, 1e-2);
            let gap = (&e.gradient - &reference).norm();
            assert!(gap < 1e-7, "{name} {}: gap {gap:.3e}", variant.name());
        }
    }
}

#[test]
fn costs_count_every_gradient_evaluation_of_every_phase() {
    let p = build("quadratic", 0).unwrap();
    let phase = GdParams {
        step_size: None,
        max_steps: 25,
        tolerance: 0.0,
        ..GdParams::default()
    };
    for (variant, nudged_phases) in [
        (Variant::Standard, 1),
        (Variant::Symmetric, 2),
        (Variant::SecondOrderForward, 2),
    ] {
        let e = Contrastive {
            variant,
            beta: 0.1,
            free: phase,
            nudged: phase,
        }
        .estimate(p.as_ref(), p.theta())
        .unwrap();
        // 25 steps need 26 gradient evaluations (the last one gives g(beta) and the final norm).
        assert_eq!(e.phases.len(), 1 + nudged_phases);
        assert_eq!(e.cost.gradient_evaluations, 26 * (1 + nudged_phases));
        assert_eq!(
            e.cost.second_order_products, 0,
            "the rule uses no second derivatives"
        );
    }
}

#[test]
fn beta_zero_nan_and_infinity_are_errors() {
    let p = build("quadratic", 0).unwrap();
    for beta in [0.0, f64::NAN, f64::INFINITY] {
        let est = Contrastive {
            variant: Variant::Standard,
            beta,
            free: GdParams::default(),
            nudged: GdParams::default(),
        };
        let err = est.estimate(p.as_ref(), p.theta()).unwrap_err().to_string();
        assert!(err.contains("invalid beta"), "{err}");
    }
}

#[test]
fn a_diverging_step_size_is_an_error_naming_the_step() {
    let p = build("quadratic", 0).unwrap(); // smoothness 10: step 0.5 > 2/10 diverges
    let free = GdParams {
        step_size: Some(0.5),
        max_steps: 100,
        tolerance: 0.0,
        ..GdParams::default()
    };
    let est = Contrastive {
        variant: Variant::Standard,
        beta: 0.1,
        free,
        nudged: GdParams::default(),
    };
    let err = est.estimate(p.as_ref(), p.theta()).unwrap_err().to_string();
    assert!(err.contains("free phase diverged at step"), "{err}");
    assert!(err.contains("step size 0.5"), "{err}");
}

#[test]
fn the_reference_codes_symmetric_rule_estimates_half_the_meta_gradient() {
    // Its -beta phase drops the outer loss, so with converged phases it returns
    // (F(beta) - F(0)) / (2 beta) = F'(0) / 2 + O(beta): relative error 1/2, and half of the
    // standard (forward-difference) estimate up to rounding (docs/THEORY.md §3).
    let p = build("quadratic", 1).unwrap();
    let theta = to_dvector(p.theta()).unwrap();
    let exact = p.closed_form().unwrap().meta_gradient(&theta).unwrap();
    let phase = GdParams {
        tolerance: 1e-12,
        max_steps: 100_000,
        ..GdParams::default()
    };
    let run = |variant| {
        Contrastive {
            variant,
            beta: 1e-4,
            free: phase,
            nudged: phase,
        }
        .estimate(p.as_ref(), p.theta())
        .unwrap()
    };
    let defect = run(Variant::ReferenceCodeSymmetric);
    let standard = run(Variant::Standard);
    let rel = cml::linalg::relative_error(&defect.gradient, &exact);
    approx::assert_abs_diff_eq!(rel, 0.5, epsilon = 1e-3);
    assert!(cml::linalg::relative_error(&(&defect.gradient * 2.0), &standard.gradient) < 1e-6);
    // It ran a phase at beta = 0 (the dropped outer loss), not at -beta.
    assert_eq!(
        defect.phases.iter().map(|ph| ph.beta).collect::<Vec<_>>(),
        vec![0.0, 0.0, 1e-4]
    );
    assert_eq!(
        Variant::parse("reference-code-symmetric").unwrap(),
        Variant::ReferenceCodeSymmetric
    );
    assert!(!Variant::ALL.contains(&Variant::ReferenceCodeSymmetric));
}

#[test]
fn the_rule_runs_on_any_inner_solver() {
    // With damped Newton as the inner solver of both phases, every phase is solved to machine
    // precision, so the estimate is the stencil of g(b) = d_theta L_b at the closed-form phase
    // solutions phi*_b (MATH.md §5), computed here without any solver.
    for name in ["quadratic", "ridge"] {
        let p = build(name, 4).unwrap();
        let theta = p.theta().clone();
        let oracle = Oracle::new(p.as_ref());
        let closed = p.closed_form().unwrap();
        for variant in Variant::ALL {
            let beta = 0.05;
            let rule = Contrastive {
                variant,
                beta,
                free: NewtonParams::default(),
                nudged: NewtonParams::default(),
            };
            let estimate = rule.estimate(p.as_ref(), &theta).unwrap();
            let expected = variant
                .combine(beta, |b| {
                    let phi = closed.phase_solution(&to_dvector(&theta)?, b)?;
                    to_dvector(&oracle.phase_gradients(&to_tensor(&phi)?, &theta, b)?.theta)
                })
                .unwrap();
            assert_relative_eq!(estimate.gradient, expected, max_relative = 1e-9);
            assert!(estimate.phases.iter().all(|ph| ph.converged()));
        }
    }
}
