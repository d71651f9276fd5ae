//! The error bound of MATH.md §3, checked as an inequality on random quadratic instances (where
//! every constant is computable), and the inner loop's convergence guarantees.

mod common;

use cml::bound::QuadraticTheory;
use cml::estimator::Variant;
use cml::ground_truth::exact_meta_gradient;
use cml::inner::{GdParams, InnerSolver, Phase};
use cml::linalg::{Vector, norm, to_dvector, to_tensor};
use cml::oracle::Oracle;
use cml::problem::{BilevelProblem, ClosedForm, ProblemInstance, Quadratic, QuadraticSpec};
use cml::rng::{normal_vector, seeded};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn spec() -> impl Strategy<Value = QuadraticSpec> {
    (
        2usize..12,
        1usize..6,
        1usize..8,
        0.1f64..2.0,
        1.0f64..20.0,
        0.0f64..1.0,
    )
        .prop_map(|(n, m, k, mu, cond, gamma)| QuadraticSpec {
            phi_dim: n,
            theta_dim: m,
            outer_dim: k,
            mu,
            smoothness: mu * cond,
            gamma,
        })
}

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..common::property_config(64)
    }
}

/// `g(b) = d_theta L_b(phi, theta)` by autodiff at the given phase point.
fn g(q: &Quadratic, phi: &Vector, b: f64) -> Vector {
    let oracle = Oracle::new(q);
    to_dvector(
        &oracle
            .phase_gradients(&to_tensor(phi).unwrap(), q.theta(), b)
            .unwrap()
            .theta,
    )
    .unwrap()
}

/// The estimate with every phase at `phi*_b + delta * direction(k, b)`.
fn estimate(q: &Quadratic, variant: Variant, beta: f64, perturb: impl Fn(usize, f64) -> Vector) -> Vector {
    let theta = to_dvector(q.theta()).unwrap();
    let mut k = 0;
    variant
        .combine(beta, |b| {
            let phi = q.phase_solution(&theta, b)? + perturb(k, b);
            k += 1;
            Ok(g(q, &phi, b))
        })
        .unwrap()
}

/// Rounding in `(g(beta) - g(0)) / beta`: a few ulps of `g` over `beta`.
fn rounding(q: &Quadratic, beta: f64) -> f64 {
    let theta = to_dvector(q.theta()).unwrap();
    1e3 * f64::EPSILON * g(q, &q.phase_solution(&theta, 0.0).unwrap(), 0.0).norm().max(1.0) / beta.abs()
}

/// The estimate with each phase moved by `delta` along the direction that moves
/// `g(b) = -B^T phi + ...` most (B's top left singular vector), with signs chosen so that every
/// phase's contribution adds up and aligns with the truncation error: the worst case.
fn worst_direction_estimate(
    q: &Quadratic,
    variant: Variant,
    beta: f64,
    delta: f64,
    exact: &Vector,
) -> Vector {
    let b_matrix = q.matrices().b.clone();
    let n = b_matrix.nrows();
    let svd = b_matrix.clone().svd(true, false);
    let top = svd.u.unwrap().column(svd.singular_values.imax()).into_owned();
    let truncation = estimate(q, variant, beta, |_, _| Vector::zeros(n)) - exact;
    let sigma = if truncation.dot(&(b_matrix.transpose() * &top)) >= 0.0 {
        -1.0
    } else {
        1.0
    };
    let stencil = variant.stencil();
    estimate(q, variant, beta, |k, _| {
        &top * (sigma * stencil[k].1.signum() * delta)
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn exact_phases_obey_the_truncation_bound(s in spec(), seed in any::<u64>(), frac in 0.01f64..1.0, negative in any::<bool>()) {
        let q = Quadratic::random(&s, seed).unwrap();
        let theory = QuadraticTheory::new(&q, &to_dvector(q.theta()).unwrap()).unwrap();
        let beta = frac * theory.constants().beta_max().min(1.0) * if negative { -1.0 } else { 1.0 };
        let exact = q.meta_gradient(&to_dvector(q.theta()).unwrap()).unwrap();
        for variant in Variant::ALL {
            let err = (estimate(&q, variant, beta, |_, _| Vector::zeros(s.phi_dim)) - &exact).norm();
            let bound = theory.bound(variant, beta, 0.0).total();
            prop_assert!(err <= bound * (1.0 + 1e-9) + rounding(&q, beta),
                "{}: error {err:.3e} > bound {bound:.3e} at beta {beta:.3e}", variant.name());
        }
    }

    #[test]
    fn phases_at_distance_delta_obey_the_full_bound(s in spec(), seed in any::<u64>(), frac in 0.01f64..1.0, log_delta in -9.0f64..-2.0) {
        let q = Quadratic::random(&s, seed).unwrap();
        let theta = to_dvector(q.theta()).unwrap();
        let theory = QuadraticTheory::new(&q, &theta).unwrap();
        let beta = frac * theory.constants().beta_max().min(1.0);
        let delta = 10f64.powf(log_delta);
        let exact = q.meta_gradient(&theta).unwrap();
        for variant in Variant::ALL {
            let bound = theory.bound(variant, beta, delta).total();
            let slack = rounding(&q, beta);
            // Random directions, independent per phase.
            let random = estimate(&q, variant, beta, |k, _| normal_vector(&mut seeded(seed ^ k as u64), s.phi_dim).normalize() * delta);
            let err = (random - &exact).norm();
            prop_assert!(err <= bound * (1.0 + 1e-9) + slack, "{} random: {err:.3e} > {bound:.3e}", variant.name());
            let err = (worst_direction_estimate(&q, variant, beta, delta, &exact) - &exact).norm();
            prop_assert!(err <= bound * (1.0 + 1e-9) + slack, "{} worst: {err:.3e} > {bound:.3e}", variant.name());
        }
    }

    #[test]
    fn gradient_descent_contracts_as_theory_says(s in spec(), seed in any::<u64>(), frac in -1.0f64..1.0, steps in 1usize..200) {
        let q = Quadratic::random(&s, seed).unwrap();
        let theta = to_dvector(q.theta()).unwrap();
        let theory = QuadraticTheory::new(&q, &theta).unwrap();
        let beta = frac * theory.constants().beta_max().min(1.0);
        let c = q.curvature(q.theta(), beta).unwrap().unwrap();
        let star = to_tensor(&q.phase_solution(&theta, beta).unwrap()).unwrap();
        let phi0 = q.initial_phi(q.theta()).unwrap();
        let params = GdParams { step_size: Some(1.0 / c.smoothness), max_steps: steps, tolerance: 0.0, ..GdParams::default() };
        let sol = params.solve(&Oracle::new(&q), &Phase::new(&phi0, q.theta(), beta, "phase")).unwrap();
        let distance = norm(&(&sol.phi - &star).unwrap()).unwrap();
        let start = norm(&(&phi0 - &star).unwrap()).unwrap();
        let rate = (1.0 - c.strong_convexity / c.smoothness).powi(steps as i32);
        prop_assert!(distance <= rate * start * (1.0 + 1e-9) + 1e-12, "{distance:.3e} > {rate:.3e} * {start:.3e}");
        // The certificate holds in exact arithmetic; the computed iterate and the closed-form
        // solution each carry rounding of a few ulp of |phi*| (a case with |phi*| = 53 and the
        // bound at 5e-15 measured a distance of 1.6e-14), hence the floor 4 eps |phi*|.
        let floor = 4.0 * f64::EPSILON * norm(&star).unwrap();
        prop_assert!(distance <= sol.info.grad_norm / c.strong_convexity * (1.0 + 1e-9) + 1e-14 + floor,
            "{distance:.3e} vs {:.3e}", sol.info.grad_norm / c.strong_convexity);
    }
}

#[test]
fn the_closed_form_f_matches_the_meta_gradient_and_finite_differences_of_itself() {
    // F'(0) is the meta-gradient (MATH.md §2); F'' and F''' are the derivatives of F' (checked by
    // central differences of the diagonalised closed form).
    for seed in 0..5 {
        let q = Quadratic::random(&QuadraticSpec::default(), seed).unwrap();
        let theta = to_dvector(q.theta()).unwrap();
        let t = QuadraticTheory::new(&q, &theta).unwrap();
        let exact = exact_meta_gradient(&q, q.theta()).unwrap().meta_gradient;
        assert!((t.derivative(1, 0.0) - &exact).norm() < 1e-10 * exact.norm());
        let h = 1e-5;
        for k in 1..3 {
            let fd = (t.derivative(k, 0.03 + h) - t.derivative(k, 0.03 - h)) / (2.0 * h);
            let next = t.derivative(k + 1, 0.03);
            assert!((fd - &next).norm() < 1e-6 * next.norm(), "seed {seed} order {k}");
        }
    }
}

#[test]
fn with_exact_phases_and_small_beta_the_truncation_bound_is_tight() {
    // As beta -> 0 the truncation error is c_p |F^(p+1)(0)| |beta|^p with c = 1/2 (standard),
    // 1/6 (symmetric) and 1/3 (second-order forward: the one-signed remainder kernel integrates to
    // beta^3 / 3), and the bound's sups shrink to |F^(p+1)(0)|: the ratio error / bound tends to 1.
    // A constant inflated by 3 (second-order forward's former `sup ||F'''||`) fails at 1/3.
    for seed in 0..8u64 {
        let q = Quadratic::random(&QuadraticSpec::default(), seed).unwrap();
        let theta = to_dvector(q.theta()).unwrap();
        let t = QuadraticTheory::new(&q, &theta).unwrap();
        let exact = q.meta_gradient(&theta).unwrap();
        let beta = 1e-3 * t.constants().beta_max().min(1.0);
        for variant in Variant::ALL {
            let err = (estimate(&q, variant, beta, |_, _| Vector::zeros(q.dims().phi)) - &exact).norm();
            let bound = t.bound(variant, beta, 0.0).total();
            let ratio = err / bound;
            assert!(
                (0.9..=1.0 + 1e-6).contains(&ratio),
                "{} seed {seed}: error / bound = {ratio:.4} (error {err:.3e}, bound {bound:.3e})",
                variant.name()
            );
        }
    }
}

#[test]
fn the_direct_term_coefficient_is_the_stencils_sum_of_weights_times_multiples() {
    // g(b) holds b d_theta L_out(phi_b): a phase error delta moves it by |m_k beta| C delta, weighted
    // |w_k| / |beta|: 1 x C (standard: |1 x 1|), 1 x C (symmetric: 1/2 + 1/2), 3 x C (second-order
    // forward: |2 x 1| + |-1/2 x 2|).
    let c = cml::bound::BoundConstants {
        mu: 1.0,
        smoothness: 1.0,
        mixed_norm: 1.0,
        outer_lipschitz: 1.0,
        direct_lipschitz: 2.0,
    };
    assert_eq!(c.direct_coefficient(Variant::Standard), 2.0);
    assert_eq!(c.direct_coefficient(Variant::Symmetric), 2.0);
    assert_eq!(c.direct_coefficient(Variant::SecondOrderForward), 6.0);
    assert_eq!(c.delta_coefficient(Variant::SecondOrderForward), 4.0);
}

#[test]
fn report_how_tight_the_bound_is_in_the_worst_direction() {
    // Printed with `cargo test --release --test theory -- --nocapture`: observed / bound at
    // delta = 1e-6 over 64 seeded instances, for beta at the predicted best and at 10x it.
    for variant in Variant::ALL {
        let mut ratios = Vec::new();
        for seed in 0..64u64 {
            let q = Quadratic::random(&QuadraticSpec::default(), seed).unwrap();
            let theta = to_dvector(q.theta()).unwrap();
            let t = QuadraticTheory::new(&q, &theta).unwrap();
            let exact = q.meta_gradient(&theta).unwrap();
            let delta = 1e-6;
            let (best, _) = t.best(variant, delta);
            for beta in [best, 10.0 * best] {
                let worst = worst_direction_estimate(&q, variant, beta, delta, &exact);
                let ratio = (worst - &exact).norm() / t.bound(variant, beta, delta).total();
                assert!(
                    ratio <= 1.0 + 1e-9,
                    "{} seed {seed}: ratio {ratio}",
                    variant.name()
                );
                ratios.push(ratio);
            }
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "bound tightness (observed / bound), {:<21} worst direction, delta 1e-6: min {:.3} median {:.3} max {:.3}",
            variant.name(),
            ratios[0],
            ratios[ratios.len() / 2],
            ratios[ratios.len() - 1]
        );
    }
}

/// The symmetric estimate's error with warm-started gradient-descent phases (docs/THEORY.md §2),
/// in closed form on the quadratic: with `M_b = I - alpha H_b`, `H_b = A + b C^T C`, a free phase
/// of `t0` steps ends at `phi*_0 + e0`, and a nudged phase of `t` steps from there ends at
/// `phi*_b + M_b^t (phi*_0 + e0 - phi*_b)`. As `beta -> 0`,
/// `(g(beta) - g(-beta)) / (2 beta) - F'(0) -> -B^T d/db [M_b^t (phi*_0 + e0 - phi*_b)]_{b=0}
///  = -B^T (-alpha sum_j M^j C^T C M^(t-1-j) e0 - M^t phi*'(0))`: independent of beta.
fn symmetric_gd_floor(q: &Quadratic, alpha: f64, t0: usize, t: usize) -> Vector {
    let m = q.matrices();
    let theta = to_dvector(q.theta()).unwrap();
    let n = m.a.nrows();
    let ctc = m.cm.transpose() * m.cm;
    let star0 = q.phase_solution(&theta, 0.0).unwrap();
    let iter = nalgebra::DMatrix::<f64>::identity(n, n) - m.a * alpha;
    let phi_init = to_dvector(&q.initial_phi(q.theta()).unwrap()).unwrap();
    let e0 = iter.pow(t0 as u32) * (&phi_init - &star0);
    // phi*'(0) = A^{-1} (C^T d - C^T C phi*_0), from (A + b C^T C) phi*_b = r + b C^T d.
    let dstar =
        m.a.clone()
            .cholesky()
            .unwrap()
            .solve(&(m.cm.transpose() * m.d - &ctc * &star0));
    let mut dm_e0 = Vector::zeros(n);
    for j in 0..t {
        dm_e0 += iter.pow(j as u32) * (&ctc * (iter.pow((t - 1 - j) as u32) * &e0)) * (-alpha);
    }
    -(m.b.transpose() * (dm_e0 - iter.pow(t as u32) * dstar))
}

#[test]
fn warm_started_symmetric_phases_leave_a_beta_independent_floor() {
    use cml::estimator::{Contrastive, MetaGradientEstimator};
    for seed in 0..4u64 {
        let q = Quadratic::random(&QuadraticSpec::default(), seed).unwrap();
        let theta = to_dvector(q.theta()).unwrap();
        let exact = q.meta_gradient(&theta).unwrap();
        let alpha = 1.0 / q.curvature(q.theta(), 0.0).unwrap().unwrap().smoothness;
        let (t0, t) = (40, 30);
        let floor = symmetric_gd_floor(&q, alpha, t0, t);
        let mut errors = Vec::new();
        for beta in [1e-3, 1e-4, 1e-5] {
            let phase = |steps| GdParams {
                step_size: Some(alpha),
                max_steps: steps,
                tolerance: 0.0,
                ..GdParams::default()
            };
            let c = Contrastive {
                variant: Variant::Symmetric,
                beta,
                free: phase(t0),
                nudged: phase(t),
            };
            let e = c.estimate(&q, q.theta()).unwrap().gradient - &exact;
            // The floor predicts the error vector itself, not only its size; beta^2 terms and
            // rounding (~1e-16 / beta) are far below it here.
            let gap = (&e - &floor).norm() / floor.norm();
            assert!(
                gap < 1e-3,
                "seed {seed} beta {beta}: error {:.4e}, predicted floor {:.4e}, gap {gap:.2e}",
                e.norm(),
                floor.norm()
            );
            errors.push(e.norm());
        }
        // Flat in beta: the delta / beta side of the bound does not appear.
        assert!(
            errors[0] / errors[2] < 1.01 && errors[2] / errors[0] < 1.01,
            "seed {seed}: {errors:?}"
        );
        // And it shrinks with the nudged budget at the contraction rate (the floor, not 1/beta).
        let longer = symmetric_gd_floor(&q, alpha, t0, t + 20);
        assert!(longer.norm() < floor.norm(), "seed {seed}");
    }
}
