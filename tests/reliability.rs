//! Reliability: configs, determinism, safe outputs, resumable training, and bad input as clear
//! errors (message and exit code, no panic, nothing half-written).

mod common;

use candle_core::{Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use cml::adam::Adam;
use cml::linalg::{Vector, to_dvector, to_tensor};
use common::{assert_error, cml, stderr};
use proptest::prelude::*;
use std::path::Path;
use std::process::Output;

#[test]
fn our_adam_is_candle_nn_adamw_without_weight_decay() {
    let theta0 = Vector::from_fn(7, |i, _| (i as f64 - 3.0) * 0.3);
    let var = Var::from_tensor(&to_tensor(&theta0).unwrap()).unwrap();
    let mut theirs = AdamW::new(
        vec![var.clone()],
        ParamsAdamW {
            lr: 0.01,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let mut ours = Adam::new(0.01, 7);
    let mut theta = theta0;
    for step in 0..5 {
        let g = Vector::from_fn(7, |i, _| ((i * 7 + step * 3) % 5) as f64 - 2.0);
        theirs
            .backward_step(
                &(var.as_tensor() * to_tensor(&g).unwrap())
                    .unwrap()
                    .sum_all()
                    .unwrap(),
            )
            .unwrap();
        ours.update(&mut theta, &g);
        let t: Tensor = var.as_tensor().clone();
        assert_eq!(to_dvector(&t).unwrap(), theta, "step {step}");
    }
}

const TRAIN: &[&str] = &[
    "train",
    "--model",
    "synapse",
    "--net",
    "1-4-4-1",
    "--shots",
    "5",
    "--free-steps",
    "20",
    "--nudged-steps",
    "5",
    "--meta-steps",
    "5",
    "--meta-batch",
    "3",
    "--eval-tasks",
    "3",
    "--eval-every",
    "2",
    "--beta",
    "0.05",
    "--checkpoint-every",
    "1",
];

fn train(out: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&str> = TRAIN.to_vec();
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(extra);
    cml(&args)
}

#[test]
fn the_same_seed_gives_byte_identical_train_and_sweep_csvs() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    assert!(train(&a, &[]).status.success());
    assert!(train(&b, &[]).status.success());
    assert_eq!(
        std::fs::read(a.join("train.csv")).unwrap(),
        std::fs::read(b.join("train.csv")).unwrap()
    );
    let sweep = |out: &Path| {
        let o = cml(&[
            "sweep",
            "--problem",
            "ridge",
            "--estimators",
            "contrastive,cg",
            "--betas",
            "1e-4:1e-1:4",
            "--steps",
            "20,40",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(out).unwrap()
    };
    assert_eq!(
        sweep(&dir.path().join("s1.csv")),
        sweep(&dir.path().join("s2.csv"))
    );
}

#[test]
fn an_interrupted_and_resumed_run_writes_the_same_csv_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, parts) = (dir.path().join("whole"), dir.path().join("parts"));
    assert!(train(&whole, &[]).status.success());
    let stopped = train(&parts, &["--stop-after", "2"]);
    assert_error(&stopped, 130, &["interrupted after meta-step 2 of 5", "--resume"]);
    assert!(parts.join("checkpoint.json").is_file());
    let partial = std::fs::read_to_string(parts.join("train.csv")).unwrap();
    assert_eq!(partial.lines().count(), 1 + 3, "header and steps 0..=2");
    let resumed = train(&parts, &["--resume"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(
        std::fs::read(whole.join("train.csv")).unwrap(),
        std::fs::read(parts.join("train.csv")).unwrap()
    );
    assert_eq!(
        std::fs::read(whole.join("theta.json")).unwrap(),
        std::fs::read(parts.join("theta.json")).unwrap()
    );
    // Resuming with other settings is refused, naming what differs.
    let other = train(&parts, &["--resume", "--beta", "0.1"]);
    assert_error(&other, 1, &["different config", "estimator differs"]);
}

#[test]
fn a_config_file_sets_flags_and_the_command_line_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.toml");
    std::fs::write(&config, "model = \"synapse\"\nnet = \"1-4-4-1\"\nshots = 5\nfree_steps = 20\nnudged_steps = 5\nmeta_steps = 4\nmeta_batch = 2\neval_tasks = 2\nbeta = 0.05\n").unwrap();
    let out = dir.path().join("run");
    let o = cml(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--meta-steps",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let effective: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(effective["meta_steps"], 2, "the command line wins");
    assert_eq!(
        effective["meta_batch"], 2,
        "the file sets what the command line does not"
    );
    assert_eq!(effective["estimator"]["beta"], 0.05);

    let sweep_config = dir.path().join("sweep.toml");
    std::fs::write(
        &sweep_config,
        "problem = \"quadratic\"\nsteps = [20, 40]\nbetas = \"1e-3:1e-1:3\"\nvariants = \"standard\"\n",
    )
    .unwrap();
    let csv = dir.path().join("sweep.csv");
    let o = cml(&[
        "sweep",
        "--config",
        sweep_config.to_str().unwrap(),
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 1 + 2 * 3);
    assert!(dir.path().join("sweep.config.json").is_file());
}

#[test]
fn bad_config_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let cases = [
        (
            write("unknown.toml", "model = \"synapse\"\nbeta_max = 3\n"),
            1,
            vec!["unknown key 'beta_max'", "allowed are", "meta_steps"],
        ),
        (
            write("type.toml", "model = \"synapse\"\nmeta_steps = \"many\"\n"),
            2,
            vec!["invalid value 'many'", "--meta-steps"],
        ),
        (
            write("flag.toml", "model = \"synapse\"\nresume = 3\n"),
            1,
            vec!["key 'resume' must be true or false"],
        ),
        (
            write("table.toml", "model = \"synapse\"\n[estimator]\nbeta = 1\n"),
            1,
            vec!["key 'estimator' must be a number, a string or a list"],
        ),
        (write("broken.toml", "model = \n"), 1, vec!["not valid TOML"]),
    ];
    for (path, code, needles) in cases {
        assert_error(&cml(&["train", "--config", &path]), code, &needles);
    }
    assert_error(
        &cml(&["train", "--config", "/nonexistent/run.toml"]),
        1,
        &["cannot read config file", "/nonexistent/run.toml"],
    );
}

#[test]
fn more_bad_inputs_are_clear_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    assert_error(
        &cml(&["train", "--model", "neuron"]),
        1,
        &["unknown model 'neuron'", "synapse, modulation"],
    );
    assert_error(
        &cml(&["train", "--model", "synapse", "--meta-steps", "0"]),
        1,
        &["invalid meta steps = 0"],
    );
    assert_error(
        &cml(&["train", "--model", "synapse", "--net", "1-x-1"]),
        1,
        &["invalid network sizes = 1-x-1"],
    );
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let unwritable = blocker.join("run");
    assert_error(
        &cml(&[
            "train",
            "--model",
            "synapse",
            "--out",
            unwritable.to_str().unwrap(),
        ]),
        1,
        &["cannot create the folder of"],
    );
    assert_error(
        &cml(&["sweep", "--problem", "quadratic", "--betas", "0:1:3"]),
        1,
        &["invalid betas = 0:1:3", "LO:HI:N"],
    );
    assert_error(
        &cml(&["sweep", "--problem", "quadratic", "--shard", "3/2"]),
        1,
        &["invalid shard = 3/2"],
    );
    assert_error(
        &cml(&[
            "train",
            "--model",
            "synapse",
            "--out",
            dir.path().to_str().unwrap(),
            "--resume",
        ]),
        1,
        &["cannot read checkpoint"],
    );
    // An empty data set in an instance file.
    let path = dir.path().join("ridge.json");
    assert!(
        cml(&["export", "--problem", "ridge", "--out", path.to_str().unwrap()])
            .status
            .success()
    );
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["arrays"][0]["shape"] = serde_json::json!([0, 8]);
    v["arrays"][0]["values"] = serde_json::json!([]);
    v["arrays"][1]["shape"] = serde_json::json!([0]);
    v["arrays"][1]["values"] = serde_json::json!([]);
    std::fs::write(&path, v.to_string()).unwrap();
    assert_error(
        &cml(&["grad", "--problem", path.to_str().unwrap()]),
        1,
        &["array 'x_train' is empty"],
    );
}

#[test]
fn an_interrupted_write_leaves_the_previous_file_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.csv");
    cml::io::write_atomically(&path, b"old,complete\n").unwrap();
    let crash = || Err(std::io::Error::other("simulated crash before the rename"));
    let err = cml::io::write_atomically_with(&path, b"new,half", crash).unwrap_err();
    assert!(err.to_string().contains("simulated crash"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"old,complete\n");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temporary file left behind: {leftovers:?}");
}

fn args_strategy() -> impl Strategy<Value = Vec<String>> {
    let word = prop_oneof![
        Just("train".to_string()),
        Just("sweep".to_string()),
        Just("grad".to_string()),
        Just("--beta".to_string()),
        Just("--steps".to_string()),
        Just("--meta-steps".to_string()),
        Just("--config".to_string()),
        any::<f64>().prop_map(|x| x.to_string()),
        any::<i64>().prop_map(|x| x.to_string()),
        "[ -~]{0,12}",
    ];
    proptest::collection::vec(word, 0..8)
}

proptest! {
    #![proptest_config(common::property_config(256))]

    #[test]
    fn the_command_line_parser_never_panics(words in args_strategy()) {
        let mut args = vec![std::ffi::OsString::from("cml")];
        args.extend(words.into_iter().map(Into::into));
        let _ = cml::cli::parse(args);
    }

    #[test]
    fn the_config_parser_never_panics(body in "[ -~\n]{0,80}", key in "[a-z_]{1,12}", value in prop_oneof![
        any::<f64>().prop_map(|x| format!("{x:?}")), any::<i64>().prop_map(|x| x.to_string()),
        "\"[ -~]{0,10}\"", Just("true".to_string()), Just("[1, \"a\", 2.5]".to_string())]) {
        let dir = tempfile::tempdir().unwrap();
        for text in [body, format!("{key} = {value}\n")] {
            let path = dir.path().join("c.toml");
            std::fs::write(&path, &text).unwrap();
            for sub in ["train", "sweep"] {
                let args = vec!["cml".into(), sub.into(), "--config".into(), path.clone().into_os_string()];
                let _ = cml::cli::parse(args);
            }
        }
    }
}

#[test]
fn the_shipped_training_configs_are_the_figures_runs() {
    // Each configs/train_MODEL_ESTIMATOR.toml must give the same effective config as the figure
    // job's run with seed 0 (checked with one meta-step overridden on the command line), the
    // contrastive rule at the beta and nudged budget and each estimator at the outer and inner
    // step sizes the committed run's validation searches chose.
    let dir = tempfile::tempdir().unwrap();
    // The chosen value of `subject` in a committed search CSV (subject, value, ..., chosen).
    let chosen = |file: &str, subject: &str| -> f64 {
        let text = std::fs::read_to_string(format!("{}/figures/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let values: Vec<f64> = text
            .lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f[0] == subject && f[5] == "true")
            .map(|f| f[1].parse().unwrap())
            .collect();
        assert_eq!(values.len(), 1, "{subject}: {text}");
        values[0]
    };
    for model in ["synapse", "modulation"] {
        let beta = chosen("training_beta_choice.csv", model);
        for estimator in ["contrastive", "cg", "bptt", "fomaml", "reptile", "t1t2"] {
            let run = format!("{model}-{estimator}");
            let searched = cml::experiments::Chosen {
                beta: Some(beta),
                meta_lr: Some(chosen("training_meta_lr_choice.csv", &run)),
                step_size: Some(chosen("training_step_size_choice.csv", &run)),
                // Only the contrastive rule has a nudged phase (and a search of its budget).
                nudged_steps: (estimator == "contrastive")
                    .then(|| chosen("training_nudged_steps_choice.csv", &run) as usize),
            };
            let file = format!(
                "{}/configs/train_{model}_{estimator}.toml",
                env!("CARGO_MANIFEST_DIR")
            );
            let out = dir.path().join(format!("{model}_{estimator}"));
            let o = cml(&[
                "train",
                "--config",
                &file,
                "--meta-steps",
                "1",
                "--eval-tasks",
                "1",
                "--meta-batch",
                "1",
                "--out",
                out.to_str().unwrap(),
            ]);
            assert!(o.status.success(), "{file}: {}", stderr(&o));
            let mut shipped: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
            let mut figure = serde_json::to_value(
                cml::experiments::figure_training_config(
                    cml::experiments::Scale::Default,
                    0,
                    model,
                    estimator,
                    searched,
                )
                .unwrap(),
            )
            .unwrap();
            for v in [&mut shipped, &mut figure] {
                for key in ["meta_steps", "eval_tasks", "meta_batch"] {
                    v.as_object_mut().unwrap().remove(key);
                }
            }
            assert_eq!(shipped, figure, "{file}");
        }
    }
}

#[test]
fn the_shipped_sweep_config_reproduces_the_figure_data() {
    // configs/sweep_quadratic_steps.toml gives the gradient-descent rows of the committed
    // figures/error_vs_beta_quadratic.csv, row for row.
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("steps.csv");
    let o = cml(&[
        "sweep",
        "--config",
        &format!("{root}/configs/sweep_quadratic_steps.toml"),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ours = std::fs::read_to_string(&out).unwrap();
    let figure = std::fs::read_to_string(format!("{root}/figures/error_vs_beta_quadratic.csv")).unwrap();
    let n = ours.lines().count();
    assert!(n > 100);
    assert_eq!(
        ours.lines().collect::<Vec<_>>(),
        figure.lines().take(n).collect::<Vec<_>>()
    );
}

#[test]
fn unconverged_phases_and_a_far_beta_are_flagged() {
    let o = cml(&[
        "grad",
        "--problem",
        "quadratic",
        "--free-steps",
        "20",
        "--tolerance",
        "1e-6",
        "--json",
    ]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let warnings = v["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("the free phase (beta = 0) stopped at its budget of 20 steps")),
        "{warnings:?}"
    );
    assert!(stderr(&o).contains("warning: the free phase"));
    let far = cml(&[
        "grad",
        "--problem",
        "quadratic",
        "--beta",
        "1e-6",
        "--tolerance",
        "0",
        "--free-steps",
        "50",
        "--nudged-steps",
        "50",
    ]);
    assert!(
        stderr(&far).contains("times the bound's best beta"),
        "{}",
        stderr(&far)
    );
    // Converged phases (delta ~ 1e-12): the bound's best beta is about 1e-6.
    let fine = cml(&["grad", "--problem", "quadratic", "--beta", "1e-6"]);
    assert!(!stderr(&fine).contains("warning"), "{}", stderr(&fine));
}
