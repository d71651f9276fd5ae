//! The `cml` binary: real output, and bad input as clear errors with a non-zero exit code.

mod common;

use common::{assert_error, cml, stderr};
use std::path::Path;
use std::process::{Command, Output};

/// Fails with exit code 1, a message containing every needle, no panic and no stdout.
fn assert_clean_error(o: &Output, needles: &[&str]) {
    assert_error(o, 1, needles);
    assert!(
        o.stdout.is_empty(),
        "printed a result: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn grad_prints_estimate_exact_error_and_costs_as_json() {
    let o = cml(&["grad", "--problem", "quadratic", "--beta", "0.001", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rel = v["exact"]["relative_error"].as_f64().unwrap();
    // Converged phases (|grad| <= 1e-12), standard variant: the error is the forward
    // difference's truncation, (beta / 2) ||F''(0)|| to first order, relative to ||F'(0)||;
    // F from the quadratic's closed form (theory module).
    use cml::problem::ProblemInstance;
    let q = cml::problem::Quadratic::random(&cml::problem::QuadraticSpec::default(), 0).unwrap();
    let theory = cml::bound::QuadraticTheory::new(&q, &cml::linalg::to_dvector(q.theta()).unwrap()).unwrap();
    let predicted = 0.001 / 2.0 * theory.derivative(2, 0.0).norm() / theory.derivative(1, 0.0).norm();
    approx::assert_relative_eq!(rel, predicted, max_relative = 0.1);
    // Free, nudged at beta, and the error bar's nudged phase at 2 beta.
    assert_eq!(v["phases"].as_array().unwrap().len(), 3);
    assert_eq!(v["phases"][2]["beta"].as_f64(), Some(0.002));
    // The estimate itself is first order; the bar's second-order products are its own.
    assert_eq!(v["cost"]["second_order_products"].as_u64(), Some(0));
    assert!(
        v["error_bar"]["extra_cost"]["second_order_products"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(v["estimate"].as_array().unwrap().len(), 5);
    // The estimate's seconds and the bar's are reported apart, and the bar's are its own field.
    let (estimate, bar) = (
        v["seconds_estimate"].as_f64().unwrap(),
        v["seconds_error_bar"].as_f64().unwrap(),
    );
    assert!(estimate > 0.0 && bar > 0.0, "estimate {estimate} s, bar {bar} s");
    assert_eq!(v["error_bar"]["seconds"].as_f64(), Some(bar));

    // Without a bar there are no bar seconds.
    let o = cml(&[
        "grad",
        "--problem",
        "quadratic",
        "--no-error-bar",
        "--no-exact",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["seconds_error_bar"].is_null());
    assert!(v["seconds_estimate"].as_f64().unwrap() > 0.0);
}

#[test]
fn grad_scales_the_error_bars_truncation_part_on_request() {
    // The same estimate twice, as computed and with --error-bar-scale 2.5 (the runs are
    // deterministic). The second bar must be 2.5 x the first's truncation part plus the first's
    // phase-precision part, which the scale leaves alone; the estimate itself is the same.
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "grad",
            "--problem",
            "quadratic",
            "--beta",
            "0.001",
            "--no-exact",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = cml(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (plain, scaled) = (run(&[]), run(&["--error-bar-scale", "2.5"]));
    let part = |v: &serde_json::Value, key: &str| v["error_bar"][key].as_f64().unwrap();
    let (truncation, precision) = (part(&plain, "truncation"), part(&plain, "phase_precision"));
    assert!(truncation > 0.0 && precision > 0.0, "{truncation} {precision}");
    approx::assert_relative_eq!(part(&plain, "bar"), truncation + precision, max_relative = 1e-12);
    approx::assert_relative_eq!(
        part(&scaled, "truncation"),
        2.5 * truncation,
        max_relative = 1e-12
    );
    approx::assert_relative_eq!(part(&scaled, "phase_precision"), precision, max_relative = 1e-12);
    approx::assert_relative_eq!(
        part(&scaled, "bar"),
        2.5 * truncation + precision,
        max_relative = 1e-12
    );
    assert_eq!(
        (
            part(&plain, "truncation_scale"),
            part(&scaled, "truncation_scale")
        ),
        (1.0, 2.5)
    );
    assert_eq!(plain["estimate"], scaled["estimate"]);
    // A scale that would shrink the bar, or none at all, is a clear error before any work.
    for bad in ["0.5", "NaN"] {
        let o = cml(&["grad", "--problem", "quadratic", "--error-bar-scale", bad]);
        assert_clean_error(&o, &["error-bar truncation scale", bad, "at least 1"]);
        // `cml sweep` takes the same flag (tests/sweep.rs checks what it does to the rows).
        let out = std::env::temp_dir().join(format!("cml-sweep-bad-scale-{bad}.csv"));
        let o = cml(&[
            "sweep",
            "--problem",
            "quadratic",
            "--error-bar-scale",
            bad,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_clean_error(&o, &["error-bar truncation scale", bad, "at least 1"]);
        assert!(!out.exists(), "no rows for a refused sweep");
    }
}

#[test]
fn second_order_mode_off_is_an_error_not_a_number() {
    let o = Command::new(env!("CARGO_BIN_EXE_cml"))
        .args(["grad", "--problem", "quadratic"])
        .env("CANDLE_GRAD_DO_NOT_DETACH", "0")
        .output()
        .unwrap();
    assert_clean_error(
        &o,
        &["second-order autodiff is off", "CANDLE_GRAD_DO_NOT_DETACH=1"],
    );
}

#[test]
fn bad_numbers_are_clear_errors() {
    for (args, needles) in [
        (vec!["--beta", "0"], vec!["invalid beta = 0", "non-zero"]),
        (vec!["--beta", "NaN"], vec!["invalid beta = NaN"]),
        (
            vec!["--free-steps", "0"],
            vec!["invalid free phase step budget = 0", ">= 1"],
        ),
        (
            vec!["--nudged-steps", "-3"],
            vec!["invalid nudged phase step budget = -3"],
        ),
        (
            vec!["--free-step-size", "1.0"],
            vec!["free phase diverged at step", "step size 1"],
        ),
        (
            vec!["--variant", "backwards"],
            vec!["unknown contrastive variant 'backwards'", "symmetric"],
        ),
        (
            vec!["--estimator", "magic"],
            vec!["unknown estimator 'magic'", "contrastive"],
        ),
    ] {
        let mut all = vec!["grad", "--problem", "quadratic"];
        all.extend(args);
        assert_clean_error(&cml(&all), &needles);
    }
    assert_clean_error(
        &cml(&["grad", "--problem", "nosuch"]),
        &["unknown problem 'nosuch'", "quadratic, ridge, logistic"],
    );
}

fn exported(dir: &Path, name: &str) -> serde_json::Value {
    let path = dir.join(format!("{name}.json"));
    let o = cml(&[
        "export",
        "--problem",
        name,
        "--seed",
        "3",
        "--out",
        path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn grad_on_file(dir: &Path, value: &serde_json::Value) -> Output {
    let path = dir.join("edited.json");
    std::fs::write(&path, serde_json::to_string(value).unwrap()).unwrap();
    cml(&["grad", "--problem", path.to_str().unwrap(), "--json"])
}

#[test]
fn an_exported_instance_gives_the_same_numbers_as_the_seed_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["quadratic", "ridge", "logistic"] {
        let file = exported(dir.path(), name);
        let from_file = grad_on_file(dir.path(), &file);
        let from_seed = cml(&["grad", "--problem", name, "--seed", "3", "--json"]);
        let pick = |o: &Output| {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            (v["estimate"].clone(), v["exact"]["exact"].clone())
        };
        assert_eq!(pick(&from_file), pick(&from_seed), "{name}");
    }
}

#[test]
fn bad_instance_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = exported(dir.path(), "quadratic");

    let mut nan = good.clone();
    nan["arrays"][1]["values"][2] = serde_json::Value::Null;
    assert_clean_error(
        &grad_on_file(dir.path(), &nan),
        &["array 'B' holds NaN at index 2", "finite"],
    );

    let mut shape = good.clone();
    shape["arrays"][1]["shape"] = serde_json::json!([9, 5]);
    shape["arrays"][1]["values"] = serde_json::json!(vec![0.5; 45]);
    assert_clean_error(
        &grad_on_file(dir.path(), &shape),
        &["array 'B' has shape [9, 5], expected [10, any]"],
    );

    let mut count = good.clone();
    count["arrays"][2]["values"] = serde_json::json!([1.0, 2.0]);
    assert_clean_error(
        &grad_on_file(dir.path(), &count),
        &["array 'c' has shape [10]", "holds 2 values"],
    );

    let mut stray = good.clone();
    stray["scalars"]["gama"] = serde_json::json!(0.1);
    assert_clean_error(&grad_on_file(dir.path(), &stray), &["unknown entries [\"gama\"]"]);

    let mut indefinite = good.clone();
    let n = 10;
    indefinite["arrays"][0]["values"] = serde_json::json!(
        (0..n * n)
            .map(|i| if i == 0 {
                -1.0
            } else if i % (n + 1) == 0 {
                1.0
            } else {
                0.0
            })
            .collect::<Vec<f64>>()
    );
    assert_clean_error(
        &grad_on_file(dir.path(), &indefinite),
        &["'A' must be positive definite"],
    );

    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{ not json").unwrap();
    assert_clean_error(
        &cml(&["grad", "--problem", garbage.to_str().unwrap()]),
        &["not a valid instance file"],
    );

    let missing = dir.path().join("missing.json");
    assert_clean_error(
        &cml(&["grad", "--problem", missing.to_str().unwrap()]),
        &["cannot read instance file", "missing.json"],
    );
}

#[test]
fn export_to_an_unwritable_path_is_an_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let target = blocker.join("inside.json"); // a folder that is a file
    let o = cml(&["export", "--problem", "ridge", "--out", target.to_str().unwrap()]);
    assert_clean_error(&o, &["cannot create the folder of"]);
    assert_eq!(std::fs::read_to_string(&blocker).unwrap(), "x");
}

#[test]
fn grad_reports_the_seed_an_instance_file_was_drawn_with() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r7.json");
    let path = path.to_str().unwrap();
    assert!(
        common::cml(&["export", "--problem", "ridge", "--seed", "7", "--out", path])
            .status
            .success()
    );
    // --seed is ignored for a file; the report carries the file's seed, 7, not the flag's default 0.
    let o = common::cml(&["grad", "--problem", path, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["seed"], 7);
}

#[test]
fn a_quick_figures_run_never_writes_over_the_committed_outputs() {
    // Without --out and --paper, --quick writes to figures-quick/ and figures-quick/paper/.
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_cml"))
        .args(["figures", "--quick", "--only", "cost"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(dir.path().join("figures-quick/cost_vs_k.csv").is_file());
    assert!(dir.path().join("figures-quick/paper/cost.md").is_file());
    assert!(!dir.path().join("figures").exists() && !dir.path().join("paper").exists());
}

#[test]
fn figures_out_holds_every_output_of_a_full_run_too() {
    // With --out and no --paper, a full run writes its tables under OUT/paper, never ./paper.
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_cml"))
        .args(["figures", "--only", "cost", "--out", "elsewhere"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(dir.path().join("elsewhere/cost_vs_k.csv").is_file());
    assert!(dir.path().join("elsewhere/paper/cost.md").is_file());
    assert!(!dir.path().join("figures").exists() && !dir.path().join("paper").exists());
}

#[test]
fn the_figures_help_names_every_job() {
    let o = common::cml(&["figures", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for (name, _) in cml::experiments::jobs() {
        assert!(
            help.contains(name),
            "`cml figures --help` does not name the job {name}"
        );
    }
}

#[test]
fn a_variant_without_an_error_bar_runs_by_default_and_says_why_it_has_none() {
    // The reference code's variant is biased at every beta, so Richardson cannot bound it: the
    // default run gives its estimate without a bar instead of refusing, and says so on stderr.
    let o = cml(&[
        "grad",
        "--problem",
        "quadratic",
        "--variant",
        "reference-code-symmetric",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["error_bar"].is_null() && v["seconds_error_bar"].is_null());
    assert!(stderr(&o).contains("no error bar"), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("inf"),
        "no warning built on an infinite best beta: {}",
        stderr(&o)
    );
    // Its estimate is the reference code's: about half a forward difference, so the relative
    // error is near 1/2 (docs/MATH.md; the quadratic's reference run gives 0.50).
    approx::assert_abs_diff_eq!(
        v["exact"]["relative_error"].as_f64().unwrap(),
        0.5,
        epsilon = 0.05
    );
}
