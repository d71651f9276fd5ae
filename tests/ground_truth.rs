//! The exact references: Newton-solved phases and the implicit meta-gradient, against closed
//! forms and against finite differences of the meta-objective.

mod common;

use cml::ground_truth::exact_meta_gradient;
use cml::inner::{InnerSolver, NewtonParams, Phase};
use cml::linalg::{Vector, to_dvector, to_tensor};
use cml::oracle::Oracle;
use cml::problem::ProblemInstance;
use cml::registry::draw_problem as build;
use common::{central_difference, rel};

#[test]
fn newton_phase_solutions_match_the_closed_form() {
    for name in ["quadratic", "ridge"] {
        for seed in 0..3 {
            let p = build(name, seed).unwrap();
            let theta = p.theta().clone();
            let closed = p.closed_form().unwrap();
            for beta in [0.0, 0.5, -0.05] {
                let oracle = Oracle::new(p.as_ref());
                let (phi, info) = NewtonParams::default()
                    .solve(
                        &oracle,
                        &Phase::new(&p.initial_phi(&theta).unwrap(), &theta, beta, "phase"),
                    )
                    .map(|s| (s.phi, s.info))
                    .unwrap();
                let exact = closed.phase_solution(&to_dvector(&theta).unwrap(), beta).unwrap();
                let err = rel(&to_dvector(&phi).unwrap(), &exact);
                assert!(
                    err < 1e-12,
                    "{name} seed {seed} beta {beta}: {err:.3e} ({info:?})"
                );
            }
        }
    }
}

#[test]
fn exact_implicit_meta_gradient_matches_the_closed_form() {
    for name in ["quadratic", "ridge"] {
        for seed in 0..5 {
            let p = build(name, seed).unwrap();
            let theta = p.theta().clone();
            let truth = exact_meta_gradient(p.as_ref(), &theta).unwrap();
            let closed = p
                .closed_form()
                .unwrap()
                .meta_gradient(&to_dvector(&theta).unwrap())
                .unwrap();
            let err = rel(&truth.meta_gradient, &closed);
            assert!(err < 1e-10, "{name} seed {seed}: rel. error {err:.3e}");
        }
    }
}

/// `J(theta) = L_out(phi*(theta), theta)` with `phi*` by Newton.
fn meta_objective(p: &dyn ProblemInstance, theta: &Vector) -> f64 {
    let theta = to_tensor(theta).unwrap();
    let oracle = Oracle::new(p);
    let phi = NewtonParams::default()
        .solve(
            &oracle,
            &Phase::new(&p.initial_phi(&theta).unwrap(), &theta, 0.0, "phase"),
        )
        .unwrap()
        .phi;
    p.outer_loss(&phi, &theta).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn exact_implicit_meta_gradient_matches_finite_differences_on_logistic_regression() {
    for seed in 0..3 {
        let p = build("logistic", seed).unwrap();
        let theta = p.theta().clone();
        let truth = exact_meta_gradient(p.as_ref(), &theta).unwrap();
        // h = 1e-5: truncation ~h^2 J''' ~ 1e-10, rounding ~1e-16 / h ~ 1e-11.
        let fd = central_difference(
            |t| meta_objective(p.as_ref(), t),
            &to_dvector(&theta).unwrap(),
            1e-5,
        );
        let err = rel(&truth.meta_gradient, &fd);
        assert!(err < 1e-6, "seed {seed}: rel. error {err:.3e}");
    }
}

#[test]
fn exact_meta_gradient_of_the_quadratic_includes_the_direct_term() {
    // With gamma > 0 the direct term gamma * theta is part of dJ/dtheta; the finite difference
    // of J sees it too.
    let p = build("quadratic", 7).unwrap();
    let theta = p.theta().clone();
    let truth = exact_meta_gradient(p.as_ref(), &theta).unwrap();
    let fd = central_difference(
        |t| meta_objective(p.as_ref(), t),
        &to_dvector(&theta).unwrap(),
        1e-5,
    );
    assert!(rel(&truth.meta_gradient, &fd) < 1e-8);
}
