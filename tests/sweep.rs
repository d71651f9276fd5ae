//! Small sweeps inside the test suite: the measured slopes of the error against theory
//! (MATH.md §3), and sharding.

mod common;

use cml::autodiff::dense_second_derivatives;
use cml::estimator::Variant;
use cml::fit::{fit_delta, fit_variant};
use cml::ground_truth::exact_meta_gradient;
use cml::linalg::spectrum_bounds;
use cml::mlp::Mlp;
use cml::problem::{BilevelProblem, ProblemInstance, ToInstanceFile, phase_loss};
use cml::problem::{Synapse, SynapseSpec};
use cml::sweep::{Budget, EstimatorGrid, ProblemSource, SweepConfig, SweepRow, parse_log_range, run};

fn config(
    problem: &str,
    estimators: &[&str],
    variants: &[Variant],
    betas: &str,
    budgets: Vec<Budget>,
) -> SweepConfig {
    let grid = EstimatorGrid {
        names: estimators.iter().map(|s| s.to_string()).collect(),
        variants: variants.to_vec(),
        betas: parse_log_range(betas).unwrap(),
        solver_steps: vec![10],
        neumann_alpha: None,
    };
    SweepConfig {
        problem: ProblemSource::parse(problem).unwrap(),
        seeds: vec![0],
        estimators: grid.specs().unwrap(),
        budgets,
        step_size: None,
        max_steps: 100_000,
        error_bars: false,
        error_bar_scale: 1.0,
    }
}

fn sweep(c: &SweepConfig) -> Vec<SweepRow> {
    run(c, (0, 1), &|| {}).unwrap()
}

fn assert_slopes(rows: &[SweepRow], variant: Variant, tolerance: f64, what: &str) {
    let f = fit_variant(rows, variant);
    let measured = [f.right, f.left, f.best_beta_vs_delta, f.best_error_vs_delta];
    let names = [
        "error~beta right",
        "error~beta left",
        "best beta~delta",
        "best error~delta",
    ];
    for ((m, t), name) in measured.iter().zip(f.theory).zip(names) {
        let m = m.unwrap_or_else(|| panic!("{what} {}: no {name} slope", variant.name()));
        assert!(
            approx::abs_diff_eq!(m, t, epsilon = tolerance),
            "{what} {}: {name} slope {m:.3}, theory {t:.3}",
            variant.name()
        );
    }
}

#[test]
fn gradient_descent_phases_give_the_standard_variant_its_theory_slopes() {
    // Equal step budgets for every phase, warm-started nudged phase: delta from 1e-3 to 1e-10.
    for (problem, steps) in [
        ("quadratic", [50, 80, 110, 140, 170]),
        ("logistic", [100, 150, 200, 250, 300]),
    ] {
        let budgets = steps.iter().map(|&s| Budget::Steps(s)).collect();
        let rows = sweep(&config(
            problem,
            &["contrastive"],
            &[Variant::Standard],
            "1e-8:1e-1:29",
            budgets,
        ));
        assert_slopes(&rows, Variant::Standard, 0.15, problem);
    }
}

#[test]
fn warm_started_symmetric_phases_show_the_flat_floor_not_delta_over_beta() {
    // docs/THEORY.md §2: with gradient-descent phases of equal budgets from the free solution,
    // the symmetric error is flat on the small-beta side (slope 0, not -1) and the best error
    // falls like delta (slope 1, not 2/3).
    let budgets = [50, 80, 110, 140, 170]
        .iter()
        .map(|&s| Budget::Steps(s))
        .collect();
    let rows = sweep(&config(
        "quadratic",
        &["contrastive"],
        &[Variant::Symmetric],
        "1e-8:1e-1:29",
        budgets,
    ));
    let f = fit_variant(&rows, Variant::Symmetric);
    let (left, best) = (f.left.unwrap(), f.best_error_vs_delta.unwrap());
    approx::assert_abs_diff_eq!(left, 0.0, epsilon = 0.15);
    approx::assert_abs_diff_eq!(best, 1.0, epsilon = 0.15);
}

#[test]
fn phases_at_distance_delta_give_both_variants_their_theory_slopes() {
    // Independent phase errors of size delta (the bound's model). With gradient-descent phases
    // of equal budgets the symmetric variant's errors cancel to first order instead (see docs/CLI.md, `cml sweep`).
    let deltas = || {
        [1e-10, 1e-9, 1e-8, 1e-7, 1e-6]
            .iter()
            .map(|&d| Budget::Delta(d))
            .collect()
    };
    for problem in ["quadratic", "logistic"] {
        let rows = sweep(&config(
            problem,
            &["contrastive", "implicit", "t1t2"],
            &[Variant::Standard, Variant::Symmetric],
            "1e-8:1e-1:29",
            deltas(),
        ));
        assert_slopes(&rows, Variant::Standard, 0.15, problem);
        assert_slopes(&rows, Variant::Symmetric, 0.15, problem);
        // Second-order forward reaches 2 beta, where the beta^3 term bends the right side above
        // beta ~ 1e-2 (slope 1.82 on [.., 1e-1]): its grid stops at 1e-2.
        let sof = sweep(&config(
            problem,
            &["contrastive"],
            &[Variant::SecondOrderForward],
            "1e-8:1e-2:25",
            deltas(),
        ));
        assert_slopes(&sof, Variant::SecondOrderForward, 0.15, problem);
        let implicit = fit_delta(&rows, "implicit").unwrap();
        assert!(
            approx::abs_diff_eq!(implicit.slope.unwrap(), 1.0, epsilon = 0.15),
            "{problem} implicit: {implicit:?}"
        );
        let t1t2 = fit_delta(&rows, "t1t2").unwrap();
        assert!(
            t1t2.floor > 1e-2 && approx::abs_diff_eq!(t1t2.slope.unwrap(), 0.0, epsilon = 0.15),
            "{problem} T1-T2: {t1t2:?}"
        );
    }
}

#[test]
fn the_complex_synapse_mlp_gives_the_theory_slopes_within_0_08() {
    // lambda = 20 per synapse on a 1-4-4-1 network (at lambda = 5 the Hessian at omega has a
    // negative eigenvalue, -4.2, on this task). Strong convexity is checked where it is
    // used: the Hessian of L_in has a positive smallest eigenvalue at the initial point and
    // at phi*, and Newton (which errors on saddles) solved every phase.
    let spec = SynapseSpec {
        net: Mlp::parse("1-4-4-1").unwrap(),
        per_synapse: true,
        strength: 20.0,
        fixed_strength: false,
    };
    let p = Synapse::random(&spec, 5, 2).unwrap();
    let theta = p.theta().clone();
    let star = exact_meta_gradient(&p, &theta).unwrap().phi_star;
    for (point, name) in [(p.initial_phi(&theta).unwrap(), "omega"), (star, "phi*")] {
        let h = dense_second_derivatives(&phase_loss(&p, 0.0), &point, &theta)
            .unwrap()
            .hessian;
        let (lo, _) = spectrum_bounds(&h);
        assert!(
            lo > 0.5,
            "L_in not strongly convex at {name}: smallest eigenvalue {lo}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synapse.json");
    p.to_instance().write(&path).unwrap();
    let deltas = [1e-10, 1e-9, 1e-8, 1e-7, 1e-6]
        .iter()
        .map(|&d| Budget::Delta(d))
        .collect();
    let rows = sweep(&config(
        path.to_str().unwrap(),
        &["contrastive"],
        &[Variant::Standard, Variant::Symmetric],
        "1e-8:1e-1:29",
        deltas,
    ));
    // 0.08 tells the symmetric rule's best-beta slope 1/3 from the standard rule's 1/2.
    assert_slopes(&rows, Variant::Standard, 0.08, "synapse");
    assert_slopes(&rows, Variant::Symmetric, 0.08, "synapse");
}

#[test]
fn shards_concatenate_to_the_full_sweep() {
    let c = config(
        "ridge",
        &["contrastive", "cg", "bptt"],
        &[Variant::Standard, Variant::Symmetric],
        "1e-4:1e-1:4",
        vec![Budget::Steps(20), Budget::Steps(40)],
    );
    let full: Vec<String> = sweep(&c).iter().map(SweepRow::csv).collect();
    for n in [2, 3, 7] {
        let parts: Vec<String> = (0..n)
            .flat_map(|i| run(&c, (i, n), &|| {}).unwrap())
            .map(|r| r.csv())
            .collect();
        assert_eq!(parts, full, "{n} shards");
    }
    assert_eq!(full.len(), 2 * (2 * 4 + 1 + 1));
}

#[test]
fn the_grid_runs_in_a_fixed_order_whatever_builds_it() {
    // Seeds, then budgets, then the estimators as listed: the contrastive rule one row per
    // variant and beta (variants outer), an estimator with solver steps one per count, any other
    // estimator one. The rows' name columns come from the typed estimators.
    let grid = EstimatorGrid {
        names: ["cg", "contrastive", "bptt", "tbptt"].map(String::from).to_vec(),
        variants: vec![Variant::Symmetric, Variant::Standard],
        betas: vec![0.1, 0.01],
        solver_steps: vec![3, 7],
        neumann_alpha: None,
    };
    let c = SweepConfig {
        problem: ProblemSource::parse("ridge").unwrap(),
        seeds: vec![2, 5],
        estimators: grid.specs().unwrap(),
        budgets: vec![Budget::Steps(4), Budget::Steps(9)],
        step_size: None,
        max_steps: 100_000,
        error_bars: false,
        error_bar_scale: 1.0,
    };
    let rows = sweep(&c);
    let got: Vec<String> = rows
        .iter()
        .map(|r| {
            let beta = r.beta.map_or("-".into(), |b| b.to_string());
            let k = r.solver_steps.map_or("-".into(), |k| k.to_string());
            format!(
                "{} {} {} {} {beta} {k}",
                r.seed,
                r.free_steps,
                r.estimator(),
                r.variant()
            )
        })
        .collect();
    let mut expected = Vec::new();
    for seed in [2, 5] {
        for steps in [4, 9] {
            for k in [3, 7] {
                expected.push(format!("{seed} {steps} cg cg - {k}"));
            }
            for v in ["symmetric", "standard"] {
                for b in [0.1, 0.01] {
                    expected.push(format!("{seed} {steps} contrastive {v} {b} -"));
                }
            }
            expected.push(format!("{seed} {steps} bptt bptt - -"));
            for k in [3, 7] {
                expected.push(format!("{seed} {steps} tbptt tbptt - {k}"));
            }
        }
    }
    assert_eq!(got, expected);
    // Bad names and empty axes are refused before any work, naming what is allowed.
    let bad = EstimatorGrid {
        names: vec!["contrastiv".into()],
        ..grid.clone()
    };
    let err = bad.specs().unwrap_err().to_string();
    assert!(err.contains("contrastiv") && err.contains("reptile"), "{err}");
    let empty = EstimatorGrid {
        betas: vec![],
        ..grid
    };
    let err = empty.specs().unwrap_err().to_string();
    assert!(err.contains("betas"), "{err}");
    let err = ProblemSource::parse("quadratc").unwrap_err().to_string();
    assert!(err.contains("quadratc") && err.contains("ridge"), "{err}");
}

#[test]
fn every_placed_phase_gets_its_own_direction() {
    use cml::sweep::placed_direction;
    // The old seed, (beta ^ b).rotate_left(7) ^ phase, was the same for the nudged phase b = beta
    // at every beta and every delta: directions that must be independent were identical.
    let n = 20;
    let base = placed_direction(0, 1e-8, 1e-3, 1e-3, 1, n);
    for (delta, beta, b, phase) in [
        (1e-8, 1e-2, 1e-2, 1),  // another beta, same place in the stencil
        (1e-6, 1e-3, 1e-3, 1),  // another delta
        (1e-8, 1e-3, -1e-3, 0), // the other nudged phase
        (1e-8, 1e-3, 0.0, 0),   // the free phase
    ] {
        let other = placed_direction(0, delta, beta, b, phase, n);
        // Independent unit vectors in 20 dimensions: |cos| is about 0.2; equal ones give 1.
        assert!(
            base.dot(&other).abs() < 0.9,
            "{delta} {beta} {b} {phase}: cos {}",
            base.dot(&other)
        );
    }
    // The same arguments give the same direction (a seed fixes every draw).
    assert_eq!(base, placed_direction(0, 1e-8, 1e-3, 1e-3, 1, n));
    assert_eq!(cml::rng::hash_words(&[1, 2]), cml::rng::hash_words(&[1, 2]));
    assert_ne!(cml::rng::hash_words(&[1, 2]), cml::rng::hash_words(&[2, 1]));
}

#[test]
fn a_delta_below_the_references_precision_is_refused_and_rows_report_it() {
    // Newton ends at |grad| around 1e-15 on the quadratic (mu = 1): a delta of 1e-16 cannot be
    // told from the reference's own error; 1e-10 can.
    let c = config(
        "quadratic",
        &["implicit"],
        &[Variant::Standard],
        "1e-2:1e-1:2",
        vec![Budget::Delta(1e-16)],
    );
    let err = run(&c, (0, 1), &|| {}).unwrap_err().to_string();
    assert!(err.contains("smallest delta") && err.contains("100x"), "{err}");
    let c = config(
        "quadratic",
        &["implicit"],
        &[Variant::Standard],
        "1e-2:1e-1:2",
        vec![Budget::Delta(1e-10)],
    );
    for r in sweep(&c) {
        assert!(r.reference_grad_norm.is_finite());
        assert!(r.reference_grad_norm <= 1e-12, "{r:?}");
        // The reference's precision, then the three error-bar columns (empty: placed phases).
        assert!(r.csv().ends_with(&format!("{:e},,,", r.reference_grad_norm)));
    }
}

#[test]
fn the_slurm_script_shards_merge_into_the_unsharded_sweep_byte_for_byte() {
    // The job-array script run by hand (the variables Slurm would set), then `cml sweep-merge`,
    // against one unsharded run of the same config.
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let config = dir.path().join("sweep.toml");
    std::fs::write(
        &config,
        "problem = \"quadratic\"\nestimators = \"contrastive,implicit\"\nvariants = \"standard,symmetric\"\nbetas = \"1e-4:1e-1:7\"\nsteps = [40, 80]\n",
    )
    .unwrap();
    let cml = env!("CARGO_BIN_EXE_cml");
    let whole = dir.path().join("whole.csv");
    let o = common::cml(&[
        "sweep",
        "--config",
        config.to_str().unwrap(),
        "--out",
        whole.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shards = dir.path().join("shards");
    for id in 0..3 {
        let o = std::process::Command::new("bash")
            .arg(format!("{root}/scripts/slurm_sweep.sh"))
            .args([config.to_str().unwrap(), shards.to_str().unwrap()])
            .env("SLURM_ARRAY_TASK_ID", id.to_string())
            .env("SLURM_ARRAY_TASK_COUNT", "3")
            .env("CML", cml)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "task {id}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let shard = |i: usize| {
        shards
            .join(format!("shard_{i}.csv"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let merged = dir.path().join("merged.csv");
    // Shards given out of order are put in order.
    let o = common::cml(&[
        "sweep-merge",
        "--out",
        merged.to_str().unwrap(),
        &shard(2),
        &shard(0),
        &shard(1),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&merged).unwrap(), std::fs::read(&whole).unwrap());
    // A missing shard, and a shard of another sweep, are refused by name.
    let o = common::cml(&[
        "sweep-merge",
        "--out",
        merged.to_str().unwrap(),
        &shard(0),
        &shard(1),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success() && err.contains("exactly once"), "{err}");
    let other = shards.join("shard_1.config.json");
    let text = std::fs::read_to_string(&other)
        .unwrap()
        .replace("quadratic", "ridge");
    std::fs::write(&other, text).unwrap();
    let o = common::cml(&[
        "sweep-merge",
        "--out",
        merged.to_str().unwrap(),
        &shard(0),
        &shard(1),
        &shard(2),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success() && err.contains("same sweep config"), "{err}");
}

#[test]
fn the_error_bar_scale_scales_the_bars_truncation_part_only() {
    // A sweep of one contrastive point with its error bar, as computed and with the truncation
    // part scaled by 2.5. The parts come from the bar computed directly at the same grid point
    // (the estimate with its bar, not the sweep): the plain row's bar must be
    // truncation + phase precision, the scaled one's 2.5 x truncation + phase precision, and every
    // other column the same. Both parts are nonzero, so scaling the whole bar would fail.
    let grid = EstimatorGrid {
        names: vec!["contrastive".into()],
        variants: vec![Variant::Standard],
        betas: vec![1e-3],
        solver_steps: vec![10],
        neumann_alpha: None,
    };
    let plain = SweepConfig {
        problem: ProblemSource::parse("quadratic").unwrap(),
        seeds: vec![0],
        estimators: grid.specs().unwrap(),
        budgets: vec![Budget::Steps(60)],
        step_size: None,
        max_steps: 100_000,
        error_bars: true,
        error_bar_scale: 1.0,
    };
    let scaled = SweepConfig {
        error_bar_scale: 2.5,
        ..plain.clone()
    };
    let (a, b) = (sweep(&plain), sweep(&scaled));
    let point = &plain.grid()[0];
    let cml::estimator::EstimatorSpec::Contrastive(rule) = &point.spec else {
        panic!("a contrastive point")
    };
    let p = plain.problem.build(0).unwrap();
    let bar = cml::estimator::error_bar::estimate_with_error_bar(rule, p.as_ref(), p.theta())
        .unwrap()
        .error_bar
        .unwrap();
    let (truncation, precision) = (bar.truncation, bar.phase_precision);
    assert!(truncation > 0.0 && precision > 0.0, "{truncation} {precision}");
    approx::assert_relative_eq!(
        a[0].error_bar.unwrap(),
        truncation + precision,
        max_relative = 1e-12
    );
    approx::assert_relative_eq!(
        b[0].error_bar.unwrap(),
        2.5 * truncation + precision,
        max_relative = 1e-12
    );
    let without_bar = |r: &SweepRow| SweepRow {
        error_bar: None,
        ..r.clone()
    };
    assert_eq!(without_bar(&a[0]).csv(), without_bar(&b[0]).csv());
    // A scale that would shrink the bar is refused before any work, naming the value.
    let shrink = SweepConfig {
        error_bar_scale: 0.5,
        ..plain
    };
    let message = run(&shrink, (0, 1), &|| {}).unwrap_err().to_string();
    assert!(
        message.contains("error-bar truncation scale") && message.contains("0.5"),
        "{message}"
    );
}
