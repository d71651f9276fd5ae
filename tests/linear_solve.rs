//! The linear solvers as `(matvec, b) -> (x, info)` against nalgebra's LU solve of the same
//! symmetric positive definite matrix, and their refusals.

use approx::assert_relative_eq;
use cml::linalg::Vector;
use cml::linear_solve::{conjugate_gradient, dense, identity, neumann};
use cml::rng::{normal_matrix, normal_vector, seeded};
use nalgebra::DMatrix;

/// `Q diag(spectrum) Q^T` with a random orthogonal `Q`.
fn spd(spectrum: &[f64], seed: u64) -> DMatrix<f64> {
    let n = spectrum.len();
    let q = normal_matrix(&mut seeded(seed), n, n).qr().q();
    &q * DMatrix::from_diagonal(&Vector::from_column_slice(spectrum)) * q.transpose()
}

fn reference(h: &DMatrix<f64>, b: &Vector) -> Vector {
    h.clone().lu().solve(b).unwrap()
}

#[test]
fn dense_and_n_steps_of_conjugate_gradient_solve_exactly() {
    let h = spd(&[0.5, 1.0, 2.0, 3.0, 7.0, 10.0], 1);
    let b = normal_vector(&mut seeded(2), 6);
    let x = reference(&h, &b);
    let (d, info) = dense(&h, &b, "H").unwrap();
    assert_relative_eq!(d, x, max_relative = 1e-12);
    assert_eq!(info.matvecs, 0);
    // CG terminates in at most n steps in exact arithmetic (n distinct eigenvalues).
    let (c, info) = conjugate_gradient(|v| Ok(&h * v), &b, 6).unwrap();
    assert_relative_eq!(c, x, max_relative = 1e-9);
    assert!(info.matvecs <= 6 && info.warning.is_none());
}

#[test]
fn neumann_converges_at_the_rate_of_its_spectrum() {
    // alpha = 1 / L: the error after k terms is `(I - alpha H)^(k+1) x`, at most
    // `(1 - mu / L)^(k+1) ||x||` (MATH.md §4).
    let (mu, l) = (1.0, 4.0);
    let h = spd(&[mu, 2.0, 3.0, l], 3);
    let b = normal_vector(&mut seeded(4), 4);
    let x = reference(&h, &b);
    for steps in [5, 20, 40] {
        let (v, info) = neumann(|v| Ok(&h * v), &b, steps, 1.0 / l).unwrap();
        assert_eq!(info.matvecs, steps);
        let bound = (1.0 - mu / l).powi(steps as i32 + 1) * x.norm();
        assert!((&v - &x).norm() <= bound * (1.0 + 1e-9), "{steps}");
    }
    let (v, _) = identity(&b);
    assert_eq!(v, b);
}

#[test]
fn indefinite_operators_are_refused_or_reported() {
    let h = spd(&[-1.0, 2.0, 3.0], 5);
    let b = normal_vector(&mut seeded(6), 3);
    assert!(
        dense(&h, &b, "the test matrix")
            .unwrap_err()
            .to_string()
            .contains("the test matrix")
    );
    // CG stops at the first direction of non-positive curvature and says so; on a generic b that
    // happens within n steps.
    let (_, info) = conjugate_gradient(|v| Ok(&h * v), &b, 3).unwrap();
    let warning = info.warning.expect("a warning");
    assert!(warning.contains("not positive definite"), "{warning}");
    assert!(neumann(|v| Ok(v.clone()), &b, 3, 0.0).is_err());
    assert!(neumann(|v| Ok(v.clone()), &b, 3, f64::NAN).is_err());
}
