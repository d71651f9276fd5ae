//! Second-order autodiff against central finite differences of first-order gradients, for every
//! loss (and so every op family) the problems use.

mod common;

use cml::autodiff::{LossFn, dense_second_derivatives, ensure_second_order, gradients, hvp_and_mixed};
use cml::linalg::{Vector, to_dvector, to_tensor};
use cml::problem::{BilevelProblem, ProblemInstance, Quadratic, QuadraticSpec, phase_loss};
use cml::registry::draw_problem as build;
use common::{PROBLEMS, perturbed, rel, unit};

#[test]
fn second_order_mode_is_on_under_cargo() {
    ensure_second_order().expect(".cargo/config.toml sets CANDLE_GRAD_DO_NOT_DETACH");
}

/// `d/dh grad f(phi + h v)` at `h = 0` is `(H v, M v)`: the phi part is the HVP and the theta
/// part the mixed product (mixed partials commute). Central differences of the autodiff
/// gradient are an independent path to both.
fn check_products(
    f: &LossFn,
    phi: &candle_core::Tensor,
    theta: &candle_core::Tensor,
    v: &Vector,
    what: &str,
) {
    let (hv, mv) = hvp_and_mixed(f, phi, theta, &to_tensor(v).unwrap()).unwrap();
    let (hv, mv) = (to_dvector(&hv).unwrap(), to_dvector(&mv).unwrap());
    let h = 1e-5;
    let p = to_dvector(phi).unwrap();
    let at = |s: f64| gradients(f, &to_tensor(&(&p + v * s)).unwrap(), theta).unwrap();
    let (up, down) = (at(h), at(-h));
    let fd_hv = (to_dvector(&up.phi).unwrap() - to_dvector(&down.phi).unwrap()) / (2.0 * h);
    let fd_mv = (to_dvector(&up.theta).unwrap() - to_dvector(&down.theta).unwrap()) / (2.0 * h);
    assert!(
        rel(&hv, &fd_hv) < 1e-6,
        "{what}: HVP rel. error {:.3e}",
        rel(&hv, &fd_hv)
    );
    // The mixed product of L_out is zero where L_out's theta-dependence is separable.
    if fd_mv.norm() > 1e-9 {
        assert!(
            rel(&mv, &fd_mv) < 1e-6,
            "{what}: mixed rel. error {:.3e}",
            rel(&mv, &fd_mv)
        );
    } else {
        assert!(
            mv.norm() < 1e-9,
            "{what}: mixed product {:.3e} should vanish",
            mv.norm()
        );
    }
}

#[test]
fn hvp_and_mixed_products_match_finite_differences_on_every_problem() {
    for name in PROBLEMS {
        let p = build(name, 3).unwrap();
        // Away from any solution and away from theta's stored value: a generic point.
        let theta = perturbed(p.theta(), 0.3, 11);
        let phi = perturbed(&p.initial_phi(&theta).unwrap(), 1.0, 12);
        let v = unit(p.dims().phi, 13);
        let pr: &dyn ProblemInstance = p.as_ref();
        check_products(
            &|a: &_, b: &_| pr.inner_loss(a, b),
            &phi,
            &theta,
            &v,
            &format!("{name} inner"),
        );
        check_products(
            &|a: &_, b: &_| pr.outer_loss(a, b),
            &phi,
            &theta,
            &v,
            &format!("{name} outer"),
        );
        check_products(
            &phase_loss(pr, -0.3),
            &phi,
            &theta,
            &v,
            &format!("{name} phase beta=-0.3"),
        );
    }
}

#[test]
fn dense_second_derivatives_agree_with_single_products() {
    for name in PROBLEMS {
        let p = build(name, 5).unwrap();
        let theta = p.theta().clone();
        let phi = perturbed(&p.initial_phi(&theta).unwrap(), 1.0, 2);
        let f = phase_loss(p.as_ref(), 0.7);
        let d = dense_second_derivatives(&f, &phi, &theta).unwrap();
        let v = unit(p.dims().phi, 9);
        let (hv, mv) = hvp_and_mixed(&f, &phi, &theta, &to_tensor(&v).unwrap()).unwrap();
        assert!(
            rel(&(&d.hessian * &v), &to_dvector(&hv).unwrap()) < 1e-12,
            "{name}"
        );
        assert!(rel(&(&d.mixed * &v), &to_dvector(&mv).unwrap()) < 1e-12, "{name}");
    }
}

#[test]
fn quadratic_second_derivatives_are_the_defining_matrices() {
    // L_in = 1/2 phi^T A phi - phi^T (B theta + c): d2_{phi phi} = A, d2_{theta phi} = -B^T.
    let q = Quadratic::random(&QuadraticSpec::default(), 1).unwrap();
    let m = q.matrices();
    let theta = q.theta().clone();
    let phi = perturbed(&q.initial_phi(&theta).unwrap(), 1.0, 4);
    let d = dense_second_derivatives(&|a: &_, b: &_| q.inner_loss(a, b), &phi, &theta).unwrap();
    assert!((&d.hessian - m.a).amax() < 1e-12);
    assert!((&d.mixed + m.b.transpose()).amax() < 1e-12);
}
