//! Helpers shared by the integration tests: independent references (finite differences).
#![allow(dead_code)]

use candle_core::Tensor;
use cml::linalg::{Vector, to_dvector, to_tensor};
use cml::rng::{normal_vector, seeded};
use std::process::{Command, Output};

pub const PROBLEMS: [&str; 3] = ["quadratic", "ridge", "logistic"];

/// Central difference `(f(x + h e_j) - f(x - h e_j)) / 2h` for every coordinate `j`.
pub fn central_difference(f: impl Fn(&Vector) -> f64, x: &Vector, h: f64) -> Vector {
    Vector::from_fn(x.len(), |j, _| {
        let mut up = x.clone();
        let mut down = x.clone();
        up[j] += h;
        down[j] -= h;
        (f(&up) - f(&down)) / (2.0 * h)
    })
}

/// `x + scale * N(0, I)`, seeded.
pub fn perturbed(x: &Tensor, scale: f64, seed: u64) -> Tensor {
    let v = to_dvector(x).unwrap();
    to_tensor(&(&v + normal_vector(&mut seeded(seed), v.len()) * scale)).unwrap()
}

/// A seeded random unit vector.
pub fn unit(len: usize, seed: u64) -> Vector {
    normal_vector(&mut seeded(seed), len).normalize()
}

pub fn rel(a: &Vector, b: &Vector) -> f64 {
    (a - b).norm() / b.norm()
}

/// Runs the `cml` binary built for the tests.
pub fn cml(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cml"))
        .args(args)
        .output()
        .expect("binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails with exit code `code` and a message containing every needle, without a panic.
pub fn assert_error(o: &Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

/// A property test's configuration: `cases` cases drawn from a fixed seed, so that every run of
/// `cargo test` (CI's included) checks the same cases and a failure reproduces; set
/// `PROPTEST_RNG_SEED` to draw other cases.
pub fn property_config(cases: u32) -> proptest::test_runner::Config {
    let default = proptest::test_runner::Config::default();
    let rng_seed = if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
        default.rng_seed
    } else {
        proptest::test_runner::RngSeed::Fixed(20_261_206)
    };
    proptest::test_runner::Config {
        cases,
        rng_seed,
        ..default
    }
}
