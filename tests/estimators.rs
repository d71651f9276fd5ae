//! Every reference estimator against an independent reference: closed forms, finite
//! differences, or another estimator that is exact in that limit.

mod common;

use cml::autodiff::gradients;
use cml::estimator::{
    Contrastive, FirstOrder, FirstOrderRule, Implicit, LinearSolver, MetaGradientEstimator, Unrolled, Variant,
};
use cml::ground_truth::exact_meta_gradient;
use cml::inner::{GdParams, InnerSolver, NewtonParams, Phase};
use cml::linalg::{Vector, relative_error, to_dvector, to_tensor};
use cml::mlp::Mlp;
use cml::oracle::Oracle;
use cml::problem::{BilevelProblem, ProblemInstance, Quadratic, QuadraticSpec};
use cml::problem::{Modulation, ModulationSpec, Synapse, SynapseSpec};
use cml::registry::draw_problem as build;
use common::{central_difference, unit};
use nalgebra::DMatrix;

fn gd(steps: usize, tolerance: f64) -> GdParams {
    GdParams {
        step_size: None,
        max_steps: steps,
        tolerance,
        ..GdParams::default()
    }
}

fn fixed(step_size: f64, steps: usize, tolerance: f64) -> GdParams {
    GdParams {
        step_size: Some(step_size),
        max_steps: steps,
        tolerance,
        ..GdParams::default()
    }
}

fn small_synapse(per_synapse: bool, strength: f64, seed: u64) -> Synapse {
    let spec = SynapseSpec {
        net: Mlp::parse("1-4-4-1").unwrap(),
        per_synapse,
        strength,
        fixed_strength: false,
    };
    Synapse::random(&spec, 5, seed).unwrap()
}

fn small_modulation(strength: f64, seed: u64) -> Modulation {
    Modulation::random(
        &ModulationSpec {
            net: Mlp::parse("1-4-4-1").unwrap(),
            strength,
        },
        5,
        seed,
    )
    .unwrap()
}

#[test]
fn bptt_matches_the_closed_form_unrolled_gradient_on_the_quadratic() {
    // phi_K = sum_{j<K} (I - aA)^j a (B theta + c) from phi_0 = 0, so
    // d phi_K / d theta = sum_{j<K} (I - aA)^j a B and
    // dJ_K/dtheta = gamma theta + (d phi_K/d theta)^T C^T (C phi_K - d).
    let q = Quadratic::random(&QuadraticSpec::default(), 8).unwrap();
    let m = q.matrices();
    let theta = to_dvector(q.theta()).unwrap();
    let (alpha, k) = (0.07, 40);
    let n = m.a.nrows();
    let step = DMatrix::identity(n, n) - m.a * alpha;
    let mut power = DMatrix::identity(n, n);
    let mut jacobian = DMatrix::zeros(n, m.b.ncols());
    for _ in 0..k {
        jacobian += &power * m.b * alpha;
        power = &step * power;
    }
    let phi_k =
        &jacobian * &theta + (DMatrix::identity(n, n) - &power) * m.a.clone().try_inverse().unwrap() * m.c;
    let closed = theta.clone() * m.gamma + jacobian.transpose() * m.cm.transpose() * (m.cm * &phi_k - m.d);
    let bptt = Unrolled {
        inner: fixed(alpha, k, 0.0),
        truncation: None,
    }
    .estimate(&q, q.theta())
    .unwrap();
    assert_eq!(bptt.phases[0].steps, k);
    let err = relative_error(&bptt.gradient, &closed);
    assert!(err < 1e-10, "rel. error {err:.3e}");
    assert!(relative_error(&to_dvector(&bptt.adapted_phi).unwrap(), &phi_k) < 1e-12);
}

#[test]
fn bptt_matches_finite_differences_through_the_inner_loop_on_a_synapse() {
    for per_synapse in [true, false] {
        let p = small_synapse(per_synapse, 0.5, 1);
        let inner = fixed(0.05, 30, 0.0);
        let bptt = Unrolled {
            inner,
            truncation: None,
        }
        .estimate(&p, p.theta())
        .unwrap();
        // theta -> L_out(phi_K(theta), theta), phi_K by the same 30 gradient steps.
        let objective = |t: &Vector| {
            let theta = to_tensor(t).unwrap();
            let oracle = Oracle::new(&p);
            let end = inner
                .solve(
                    &oracle,
                    &Phase::new(&p.initial_phi(&theta).unwrap(), &theta, 0.0, "fd"),
                )
                .unwrap();
            p.outer_loss(&end.phi, &theta)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let fd = central_difference(objective, &to_dvector(p.theta()).unwrap(), 1e-5);
        let err = relative_error(&bptt.gradient, &fd);
        assert!(err < 1e-6, "per_synapse {per_synapse}: rel. error {err:.3e}");
    }
}

#[test]
fn truncated_bptt_over_all_steps_equals_bptt_and_fewer_steps_differ() {
    let p = small_synapse(true, 0.5, 2);
    let inner = fixed(0.05, 25, 0.0);
    let full = Unrolled {
        inner,
        truncation: None,
    }
    .estimate(&p, p.theta())
    .unwrap();
    let same = Unrolled {
        inner,
        truncation: Some(25),
    }
    .estimate(&p, p.theta())
    .unwrap();
    let short = Unrolled {
        inner,
        truncation: Some(5),
    }
    .estimate(&p, p.theta())
    .unwrap();
    assert!(relative_error(&same.gradient, &full.gradient) < 1e-14);
    assert!(relative_error(&short.gradient, &full.gradient) > 1e-3);
    // Memory: the stored iterates are what grows.
    assert!(short.cost.floats_kept < full.cost.floats_kept);
    assert_eq!(full.cost.second_order_products, 25);
    assert_eq!(short.cost.second_order_products, 5);
}

#[test]
fn bptt_approaches_the_exact_implicit_meta_gradient_as_k_grows() {
    for name in ["quadratic", "logistic"] {
        let p = build(name, 3).unwrap();
        let exact = exact_meta_gradient(p.as_ref(), p.theta()).unwrap().meta_gradient;
        let errors: Vec<f64> = [10, 20, 40, 80, 160, 320, 640]
            .iter()
            .map(|&k| {
                let e = Unrolled {
                    inner: gd(k, 0.0),
                    truncation: None,
                }
                .estimate(p.as_ref(), p.theta())
                .unwrap();
                relative_error(&e.gradient, &exact)
            })
            .collect();
        // Falling until rounding (1e-12) is reached.
        assert!(
            errors.windows(2).all(|w| w[1] < w[0] || w[1] < 1e-12),
            "{name}: {errors:?}"
        );
        assert!(*errors.last().unwrap() < 1e-6, "{name}: {errors:?}");
    }
}

fn implicit(p: &dyn ProblemInstance, solver: LinearSolver) -> cml::estimator::Estimate {
    Implicit {
        solver,
        free: gd(100_000, 1e-13),
    }
    .estimate(p, p.theta())
    .unwrap()
}

#[test]
fn conjugate_gradient_with_dimension_steps_is_the_exact_implicit_gradient() {
    for seed in 0..3 {
        let p = build("quadratic", seed).unwrap();
        let exact = exact_meta_gradient(p.as_ref(), p.theta()).unwrap().meta_gradient;
        let cg = implicit(
            p.as_ref(),
            LinearSolver::ConjugateGradient { steps: p.dims().phi },
        );
        assert!(relative_error(&cg.gradient, &exact) < 1e-8);
        assert!(cg.linear_residual.unwrap() < 1e-8);
        let few = implicit(p.as_ref(), LinearSolver::ConjugateGradient { steps: 2 });
        assert!(
            relative_error(&few.gradient, &exact) > 1e-4,
            "2 CG steps cannot solve a 10-d system"
        );
    }
}

#[test]
fn neumann_error_decays_at_the_rate_its_alpha_predicts() {
    // v_k - v = -(I - aH)^{k+1} H^{-1} b: the error shrinks by rho = max_i |1 - a lambda_i| per
    // term once the slowest eigen-direction dominates. Spectrum of A: 1, 2, ..., 10.
    let p = build("quadratic", 4).unwrap();
    let dense = implicit(p.as_ref(), LinearSolver::Dense).gradient;
    for (alpha, rho) in [(0.1, 0.9), (0.15, 0.85), (0.19, 0.9)] {
        // alpha = 0.19: |1 - 1.9| = 0.9 at lambda = 10 ties |1 - 0.19| = 0.81 at lambda = 1.
        let err = |k| {
            (implicit(
                p.as_ref(),
                LinearSolver::Neumann {
                    steps: k,
                    alpha: Some(alpha),
                },
            )
            .gradient
                - &dense)
                .norm()
        };
        let ratio = err(70) / err(60);
        let predicted = f64::powi(rho, 10);
        approx::assert_relative_eq!(ratio, predicted, max_relative = 0.02);
    }
}

#[test]
fn t1t2_is_exact_when_the_inner_hessian_is_the_identity_and_biased_otherwise() {
    let identity = Quadratic::random(
        &QuadraticSpec {
            mu: 1.0,
            smoothness: 1.0,
            ..Default::default()
        },
        2,
    )
    .unwrap();
    let exact = exact_meta_gradient(&identity, identity.theta())
        .unwrap()
        .meta_gradient;
    let t1t2 = implicit(&identity, LinearSolver::Identity);
    assert!(relative_error(&t1t2.gradient, &exact) < 1e-10);
    assert!(t1t2.linear_residual.unwrap() < 1e-10);

    let p = build("quadratic", 2).unwrap();
    let exact = exact_meta_gradient(p.as_ref(), p.theta()).unwrap().meta_gradient;
    assert!(relative_error(&implicit(p.as_ref(), LinearSolver::Identity).gradient, &exact) > 1e-2);
}

/// The contrastive estimate with every phase solved by Newton.
fn contrastive_newton(p: &dyn ProblemInstance, variant: Variant, beta: f64) -> Vector {
    let theta = p.theta().clone();
    let oracle = Oracle::new(p);
    let start = p.initial_phi(&theta).unwrap();
    let free = NewtonParams::default()
        .solve(&oracle, &Phase::new(&start, &theta, 0.0, "phase"))
        .unwrap()
        .phi;
    variant
        .combine(beta, |b| {
            let phi = NewtonParams::default()
                .solve(&oracle, &Phase::new(&free, &theta, b, "phase"))?
                .phi;
            to_dvector(&oracle.phase_gradients(&phi, &theta, b)?.theta)
        })
        .unwrap()
}

#[test]
fn implicit_bptt_and_contrastive_agree_on_the_synapse_and_modulation_models() {
    let problems: Vec<Box<dyn ProblemInstance>> = vec![
        Box::new(small_synapse(true, 2.0, 3)),
        Box::new(small_synapse(false, 2.0, 3)),
        Box::new(small_modulation(1.0, 3)),
    ];
    for p in &problems {
        let p = p.as_ref();
        let exact = exact_meta_gradient(p, p.theta()).unwrap().meta_gradient;
        let bptt = Unrolled {
            inner: fixed(0.02, 20_000, 1e-13),
            truncation: None,
        }
        .estimate(p, p.theta())
        .unwrap();
        let cml = contrastive_newton(p, Variant::Symmetric, 1e-3);
        for (what, g) in [("BPTT", &bptt.gradient), ("contrastive", &cml)] {
            let err = relative_error(g, &exact);
            assert!(err < 1e-5, "{} {what}: rel. error {err:.3e}", p.name());
        }
    }
}

#[test]
fn the_direct_term_matters_on_the_modulation_model() {
    // L_out depends on the slow weights, so dJ/dtheta = d_theta L_out + indirect. Directional
    // finite differences of J(theta) = L_out(phi*(theta), theta) see the full gradient; the
    // gradient without the direct term misses it detectably.
    let p = small_modulation(1.0, 5);
    let truth = exact_meta_gradient(&p, p.theta()).unwrap();
    let direct = to_dvector(
        &Oracle::new(&p)
            .outer_gradients(&truth.phi_star, p.theta())
            .unwrap()
            .theta,
    )
    .unwrap();
    let without = &truth.meta_gradient - &direct;
    let theta = to_dvector(p.theta()).unwrap();
    let objective = |t: &Vector| {
        let t = to_tensor(t).unwrap();
        let phi = NewtonParams::default()
            .solve(&Oracle::new(&p), &Phase::new(&truth.phi_star, &t, 0.0, "phase"))
            .unwrap()
            .phi;
        p.outer_loss(&phi, &t).unwrap().to_scalar::<f64>().unwrap()
    };
    for seed in 0..3 {
        let u = unit(theta.len(), seed);
        let h = 1e-5;
        let fd = (objective(&(&theta + &u * h)) - objective(&(&theta - &u * h))) / (2.0 * h);
        let with_term = truth.meta_gradient.dot(&u);
        assert!(
            (with_term - fd).abs() < 1e-6 * truth.meta_gradient.norm(),
            "{with_term} vs {fd}"
        );
    }
    assert!(
        direct.norm() > 0.05 * truth.meta_gradient.norm(),
        "direct term too small to matter"
    );
    assert!(relative_error(&without, &truth.meta_gradient) > 0.05);
}

#[test]
fn the_generic_contrastive_estimate_is_the_local_synapse_rule() {
    // MATH.md §2: d_omega L_in = -lambda (phi - omega) and d_rho L_in = 1/2 lambda (phi - omega)^2,
    // so the standard estimate is -(lambda / beta)(phi_beta - phi_0) for omega and
    // (lambda / 2 beta) ((phi_beta - omega)^2 - (phi_0 - omega)^2) for rho (summed when shared).
    for per_synapse in [true, false] {
        let p = small_synapse(per_synapse, 0.7, 4);
        let phase = fixed(0.05, 200, 0.0);
        let beta = 0.01;
        let est = Contrastive {
            variant: Variant::Standard,
            beta,
            free: phase,
            nudged: phase,
        };
        let generic = est.estimate(&p, p.theta()).unwrap().gradient;

        let oracle = Oracle::new(&p);
        let theta = p.theta();
        let omega = to_dvector(&p.initial_phi(theta).unwrap()).unwrap();
        let free = phase
            .solve(
                &oracle,
                &Phase::new(&p.initial_phi(theta).unwrap(), theta, 0.0, "free"),
            )
            .unwrap();
        let nudged = phase
            .solve(&oracle, &Phase::new(&free.phi, theta, beta, "nudged"))
            .unwrap();
        let (phi0, phib) = (to_dvector(&free.phi).unwrap(), to_dvector(&nudged.phi).unwrap());
        let lambda = to_dvector(&p.strengths(theta).unwrap()).unwrap();
        let lam = |i: usize| if per_synapse { lambda[i] } else { lambda[0] };
        let n = omega.len();
        let d_omega = Vector::from_fn(n, |i, _| -lam(i) / beta * (phib[i] - phi0[i]));
        let d_rho_each = Vector::from_fn(n, |i, _| {
            lam(i) / (2.0 * beta) * ((phib[i] - omega[i]).powi(2) - (phi0[i] - omega[i]).powi(2))
        });
        let d_rho = if per_synapse {
            d_rho_each
        } else {
            Vector::from_element(1, d_rho_each.sum())
        };
        let local = Vector::from_iterator(n + d_rho.len(), d_omega.iter().chain(d_rho.iter()).copied());
        let err = relative_error(&generic, &local);
        assert!(err < 1e-9, "per_synapse {per_synapse}: rel. error {err:.3e}");
    }
}

#[test]
fn first_order_baselines_follow_their_definitions_on_the_synapse() {
    // omega is the initialisation, rho is not: FO-MAML gives (d_phi L_out(phi_0), 0) and
    // Reptile (omega - phi_0, 0).
    let p = small_synapse(true, 1.0, 6);
    let free = fixed(0.05, 100, 0.0);
    let theta = p.theta();
    let phi0 = free
        .solve(
            &Oracle::new(&p),
            &Phase::new(&p.initial_phi(theta).unwrap(), theta, 0.0, "f"),
        )
        .unwrap()
        .phi;
    let outer = gradients(&|a: &_, b: &_| p.outer_loss(a, b), &phi0, theta).unwrap();
    let n = p.dims().phi;
    let pad = |v: Vector| Vector::from_iterator(2 * n, v.iter().copied().chain(std::iter::repeat_n(0.0, n)));
    let omega = to_dvector(&p.initial_phi(theta).unwrap()).unwrap();
    for (rule, expected) in [
        (
            FirstOrderRule::FirstOrderMaml,
            pad(to_dvector(&outer.phi).unwrap()),
        ),
        (FirstOrderRule::Reptile, pad(&omega - to_dvector(&phi0).unwrap())),
    ] {
        let e = FirstOrder { rule, free }.estimate(&p, theta).unwrap();
        assert!(relative_error(&e.gradient, &expected) < 1e-12, "{rule:?}");
        assert_eq!(e.cost.second_order_products, 0);
    }
}

#[test]
fn every_estimator_name_builds_and_reports_its_cost() {
    let p = build("ridge", 0).unwrap();
    let params = cml::estimator::EstimatorParams {
        variant: Variant::Symmetric,
        beta: 1e-3,
        free: gd(300, 0.0),
        nudged: gd(100, 0.0),
        solver_steps: 5,
        neumann_alpha: None,
        truncation: 7,
    };
    // Which estimator ran, told by its description and its second-order products (ridge has 8
    // fast parameters; the free phase takes 300 steps; solver steps 5, truncation 7): a swap of
    // two names (cg and neumann, say) fails here. `contrastive-auto` spends second-order products
    // on its error bars (power iterations for the mixed-derivative norm), a number the pilots set:
    // `None` asks only for some.
    let expected: [(&str, &str, Option<usize>); 10] = [
        ("contrastive", "contrastive symmetric (beta = 0.001)", Some(0)),
        ("contrastive-auto", "contrastive symmetric (beta = auto)", None),
        ("implicit", "dense solve", Some(8)),
        ("cg", "CG (5 steps)", Some(6)),
        ("neumann", "Neumann (5 terms", Some(6)),
        ("t1t2", "T1-T2", Some(1)),
        ("bptt", "BPTT (K = 300)", Some(300)),
        ("tbptt", "last 7 of K = 300", Some(7)),
        ("fomaml", "first-order MAML", Some(0)),
        ("reptile", "Reptile", Some(0)),
    ];
    assert_eq!(cml::registry::ESTIMATORS.len(), expected.len());
    for (entry, (want, describes, products)) in cml::registry::ESTIMATORS.iter().zip(expected) {
        let name = entry.name;
        assert_eq!(name, want);
        let spec = cml::registry::estimator(name, &params).unwrap();
        let described = spec.estimator().describe();
        assert!(described.contains(describes), "{name} runs as {described:?}");
        let e = spec.estimator().estimate(p.as_ref(), p.theta()).unwrap();
        assert!(e.gradient.iter().all(|x| x.is_finite()), "{name}");
        match products {
            Some(n) => assert_eq!(e.cost.second_order_products, n, "{name}: {:?}", e.cost),
            None => assert!(e.cost.second_order_products > 0, "{name}: {:?}", e.cost),
        }
        assert!(
            e.cost.gradient_evaluations >= 301 && e.cost.floats_kept > 0,
            "{name}: {:?}",
            e.cost
        );
    }
    let err = cml::registry::estimator("magic", &params)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown estimator 'magic'") && err.contains("tbptt"),
        "{err}"
    );
}

#[test]
fn the_gradient_descent_contrastive_estimator_matches_the_exact_meta_gradient_on_both_networks() {
    // The estimator users run (gradient-descent phases, default power-iteration step sizes, the
    // fast engine), not a Newton-phase stand-in, against the implicit meta-gradient at Newton's
    // phi*. Strength 20 makes L_in strongly convex there (as in the slope tests). Phases stop at
    // |grad| <= 1e-10, so delta <= 1e-10 / mu; with beta = 1e-3 the symmetric bound is
    // A3 beta^2 + K delta / beta, about 1e-6 + 1e-7 relative: 1e-4 leaves room for constants.
    let phase = GdParams {
        tolerance: 1e-10,
        max_steps: 200_000,
        ..GdParams::default()
    };
    let contrastive = Contrastive {
        variant: Variant::Symmetric,
        beta: 1e-3,
        free: phase,
        nudged: phase,
    };
    for p in [
        &small_synapse(true, 20.0, 2) as &dyn ProblemInstance,
        &small_modulation(20.0, 2),
    ] {
        let exact = exact_meta_gradient(p, p.theta()).unwrap().meta_gradient;
        let e = contrastive.estimate(p, p.theta()).unwrap();
        assert!(
            e.phases.iter().all(|ph| ph.converged()),
            "{}: {:?}",
            p.name(),
            e.phases
        );
        let rel = cml::linalg::relative_error(&e.gradient, &exact);
        assert!(rel < 1e-4, "{}: relative error {rel:.3e}", p.name());
    }
}
