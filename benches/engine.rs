//! The fast engine against Candle and against JAX, measured side by side in one run: the
//! contrastive rule, BPTT and implicit CG, and what the error bar adds to an estimate; heap
//! allocations per inner step; meta-batch throughput on 1 and 2 threads.
//!
//!     taskset -c 0 cargo bench --bench engine            # one core, as the ratios assume
//!     cargo bench --bench engine                         # both cores (for the throughput)
//!     cargo bench --bench engine -- --quick              # fewer repeats
//!     cargo bench --bench engine -- --only eprop         # one section: contrastive, second-order,
//!                                                        # eprop, allocations or throughput
//!
//! The JAX side runs `benches/jax_estimators.py` with `$CML_BENCH_PYTHON` (default `python3`)
//! when that interpreter imports JAX, and is skipped with a message otherwise
//! (`python3 -m venv /tmp/jax && /tmp/jax/bin/pip install jax`, then
//! `CML_BENCH_PYTHON=/tmp/jax/bin/python cargo bench --bench engine`). Every ratio printed is of times measured in this run.

use cml::engine::EngineChoice;
use cml::estimator::{
    Contrastive, EstimatorSpec, Implicit, LinearSolver, MetaGradientEstimator, Unrolled, Variant,
};
use cml::inner::{GdParams, InnerSolver, Phase};
use cml::linalg::{Vector, relative_error};
use cml::meta_training::{ModelSpec, TrainConfig, meta_batch_gradient};
use cml::mlp::Mlp;
use cml::oracle::Oracle;
use cml::problem::{BilevelProblem, ProblemInstance, ToInstanceFile};
use cml::problem::{SinusoidTask, Synapse, SynapseSpec};
use std::alloc::{GlobalAlloc, Layout, System};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The workload: 1000 free steps, 2 x 250 nudged steps, step size 0.005, tolerance 0.
const FREE: usize = 1000;
const NUDGED: usize = 250;
const STEP_SIZE: f64 = 0.005;
const BETA: f64 = 0.01;

fn phase(steps: usize, engine: EngineChoice) -> GdParams {
    GdParams {
        step_size: Some(STEP_SIZE),
        max_steps: steps,
        tolerance: 0.0,
        engine,
        ..GdParams::default()
    }
}

fn symmetric(engine: EngineChoice) -> Contrastive {
    Contrastive {
        variant: Variant::Symmetric,
        beta: BETA,
        free: phase(FREE, engine),
        nudged: phase(NUDGED, engine),
    }
}

/// `cml export --problem synapse --seed 7` with other sizes: a seeded draw of the model.
fn synapse(sizes: &str, shots: usize) -> Synapse {
    let spec = SynapseSpec {
        net: Mlp::parse(sizes).unwrap(),
        per_synapse: true,
        strength: 1.0,
        fixed_strength: false,
    };
    Synapse::random(&spec, shots, 7).unwrap()
}

/// Best of `repeats` wall times of `f`, and its last output.
fn best_of<T>(repeats: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..repeats {
        let clock = Instant::now();
        let o = f();
        best = best.min(clock.elapsed().as_secs_f64());
        out = Some(o);
    }
    (best, out.expect("at least one repeat"))
}

/// Which JAX computation `benches/jax_estimators.py` runs, with its second budget (nudged steps,
/// or CG iterations; unused by BPTT).
#[derive(Clone, Copy)]
enum JaxEstimator {
    Contrastive,
    Bptt,
    Cg(usize),
}

/// The JAX time and estimate for the same instance and estimator, or why there is none. The
/// interpreter is `$CML_BENCH_PYTHON` (e.g. a virtual environment's, with JAX), else `python3`.
fn jax(p: &Synapse, estimator: JaxEstimator, repeats: usize) -> Result<(f64, Vector), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("instance.json");
    p.to_instance().write(&path).map_err(|e| e.to_string())?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/jax_estimators.py");
    let (name, second) = match estimator {
        JaxEstimator::Contrastive => ("contrastive", NUDGED),
        JaxEstimator::Bptt => ("bptt", 0),
        JaxEstimator::Cg(steps) => ("cg", steps),
    };
    let mut args = vec![path.display().to_string(), name.into()];
    args.extend([FREE, second].map(|s| s.to_string()));
    args.extend([STEP_SIZE, BETA].map(|s| s.to_string()));
    args.push(repeats.to_string());
    run_script(
        "CML_BENCH_PYTHON",
        "JAX",
        script,
        &args,
        "jax_seconds ",
        "estimate ",
    )
}

/// Runs a comparison script with the interpreter `$PYTHON_VAR` (default `python3`) and reads its
/// two output lines: `SECONDS_KEY s` and `VALUES_KEY v1 v2 ...`. A script that cannot import its
/// framework prints a line starting with `SKIP`, which becomes the error.
fn run_script(
    python_var: &str,
    framework: &str,
    script: &str,
    args: &[String],
    seconds_key: &str,
    values_key: &str,
) -> Result<(f64, Vector), String> {
    let python = std::env::var(python_var).unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| format!("{python} could not be started: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let why = stdout.lines().find(|l| l.starts_with("SKIP")).map(str::to_string);
        return Err(why.unwrap_or_else(|| {
            format!(
                "the {framework} script failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        }));
    }
    let field = |key: &str| stdout.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
    let seconds: f64 = field(seconds_key)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("no {seconds_key}line"))?;
    let values: Vec<f64> = field(values_key)
        .ok_or(format!("no {values_key}line"))?
        .split_whitespace()
        .map(|v| v.parse().map_err(|_| format!("bad number {v}")))
        .collect::<Result<_, _>>()?;
    Ok((seconds, Vector::from_vec(values)))
}

/// One row of a side-by-side table: the fast engine, Candle and JAX on the same estimate.
fn print_row(label: &str, t_fast: f64, t_candle: f64, jax: Result<(f64, Vector), String>, fast: &Vector) {
    match jax {
        Ok((t_jax, estimate)) => println!(
            "{label:<24} {:>12.2} {:>12.2} {:>12.2} {:>10.2} {:>10.3} {:>14.1e}",
            t_fast * 1e3,
            t_candle * 1e3,
            t_jax * 1e3,
            t_fast / t_jax,
            t_fast / t_candle,
            relative_error(fast, &estimate)
        ),
        Err(why) => {
            println!(
                "{label:<24} {:>12.2} {:>12.2} {:>12} {:>10} {:>10.3}",
                t_fast * 1e3,
                t_candle * 1e3,
                "-",
                "-",
                t_fast / t_candle
            );
            println!("  JAX: {why}");
        }
    }
}

fn table_header() {
    println!(
        "{:<24} {:>12} {:>12} {:>12} {:>10} {:>10} {:>14}",
        "instance (seed 7)", "fast ms", "candle ms", "jax ms", "fast/jax", "fast/cand", "|fast-jax|/|jax|"
    );
}

fn side_by_side(quick: bool) {
    let repeats = if quick { 3 } else { 10 };
    println!(
        "one symmetric contrastive meta-gradient: {FREE} free + 2 x {NUDGED} nudged steps, step size {STEP_SIZE}, beta {BETA}"
    );
    table_header();
    for (sizes, shots) in [("1-40-40-1", 10), ("1-70-70-1", 10), ("1-40-40-1", 64)] {
        let p = synapse(sizes, shots);
        let (t_fast, fast) = best_of(repeats, || {
            symmetric(EngineChoice::Fast).estimate(&p, p.theta()).unwrap()
        });
        let (t_candle, candle) = best_of(repeats.min(3), || {
            symmetric(EngineChoice::Candle).estimate(&p, p.theta()).unwrap()
        });
        assert!(
            relative_error(&fast.gradient, &candle.gradient) < 1e-9,
            "the engines disagree"
        );
        let label = format!("{sizes}, {shots} shots");
        print_row(
            &label,
            t_fast,
            t_candle,
            jax(&p, JaxEstimator::Contrastive, repeats),
            &fast.gradient,
        );
        let steps = (FREE + 1 + 2 * (NUDGED + 1)) as f64;
        println!(
            "  per gradient step: fast {:.2} us, candle {:.2} us",
            t_fast / steps * 1e6,
            t_candle / steps * 1e6
        );
    }
}

/// CG iterations of the implicit estimator in the side-by-side table.
const CG_STEPS: usize = 10;

/// The second-order estimators side by side: BPTT through the free phase's `FREE` steps, and
/// implicit CG (`FREE` free steps, then `CG_STEPS` iterations) on the fast engine, Candle and JAX;
/// then what the error bar adds to the contrastive estimate it qualifies.
fn second_order_side_by_side(quick: bool) {
    let repeats = if quick { 3 } else { 10 };
    let p = synapse("1-40-40-1", 10);
    let label = "1-40-40-1, 10 shots";
    println!("\nBPTT through {FREE} gradient steps of {STEP_SIZE}");
    table_header();
    let bptt = |engine| {
        EstimatorSpec::Unrolled(Unrolled {
            inner: phase(FREE, engine),
            truncation: None,
        })
    };
    let (t_fast, fast) = best_of(repeats, || {
        bptt(EngineChoice::Fast)
            .estimator()
            .estimate(&p, p.theta())
            .unwrap()
    });
    let (t_candle, candle) = best_of(repeats.min(2), || {
        bptt(EngineChoice::Candle)
            .estimator()
            .estimate(&p, p.theta())
            .unwrap()
    });
    assert!(
        relative_error(&fast.gradient, &candle.gradient) < 1e-9,
        "the engines disagree"
    );
    print_row(
        label,
        t_fast,
        t_candle,
        jax(&p, JaxEstimator::Bptt, repeats),
        &fast.gradient,
    );

    println!("\nimplicit CG: {FREE} free steps of {STEP_SIZE}, then {CG_STEPS} CG iterations");
    table_header();
    let cg = |engine| {
        EstimatorSpec::Implicit(Implicit {
            solver: LinearSolver::ConjugateGradient { steps: CG_STEPS },
            free: phase(FREE, engine),
        })
    };
    let (t_fast, fast) = best_of(repeats, || {
        cg(EngineChoice::Fast)
            .estimator()
            .estimate(&p, p.theta())
            .unwrap()
    });
    let (t_candle, candle) = best_of(repeats.min(3), || {
        cg(EngineChoice::Candle)
            .estimator()
            .estimate(&p, p.theta())
            .unwrap()
    });
    print_row(
        label,
        t_fast,
        t_candle,
        jax(&p, JaxEstimator::Cg(CG_STEPS), repeats),
        &fast.gradient,
    );
    // CG amplifies rounding by the Hessian's conditioning, so the engines agree here only to what
    // the solve allows; the test suite checks them on well-conditioned instances to 1e-10.
    println!(
        "  |fast - candle| / |candle| = {:.1e}{}",
        relative_error(&fast.gradient, &candle.gradient),
        fast.warnings.iter().map(|w| format!("; {w}")).collect::<String>()
    );

    println!(
        "\nthe error bar of the symmetric contrastive estimate ({FREE} + 2 x {NUDGED} steps, beta {BETA})"
    );
    for engine in [EngineChoice::Fast, EngineChoice::Candle] {
        let rule = symmetric(engine);
        let (t_estimate, _) = best_of(repeats, || rule.estimate(&p, p.theta()).unwrap());
        let (t_both, with_bar) = best_of(repeats.min(3), || {
            cml::estimator::error_bar::estimate_with_error_bar(&rule, &p, p.theta()).unwrap()
        });
        assert!(with_bar.error_bar.is_some(), "the bar was computed");
        println!(
            "  {:<7} estimate {:.2} ms, estimate + bar {:.2} ms: the bar adds {:.2}x the estimate (target <= 1.0)",
            engine.name(),
            t_estimate * 1e3,
            t_both * 1e3,
            (t_both - t_estimate) / t_estimate
        );
    }
}

/// The spiking job's inner phase: `EPROP_STEPS` gradient steps of `EPROP_LR` on the support loss
/// (configs/spiking.toml: 100 free steps of 0.001, pull strength 0.002, 10 shots).
const EPROP_STEPS: usize = 100;
const EPROP_LR: f64 = 0.001;
const EPROP_STRENGTH: f64 = 0.002;

/// One e-prop inner phase at the spiking job's sizes (100 inputs, 100 neurons, 20 steps, 10
/// shots): event-driven and dense on this engine, and the PyTorch formulation of the same
/// network (`benches/torch_eprop.py`, dense per-step tensor operations, one thread).
fn eprop_side_by_side(quick: bool) {
    use cml::spiking::{Accumulation, NetworkSpec, SpikingSynapse, SpikingTask, Surrogate};
    let repeats = if quick { 3 } else { 10 };
    let spec = NetworkSpec::default();
    let mut rng = cml::rng::seeded(7);
    let task = SpikingTask::sample(&mut rng, 10, &spec).unwrap();
    let omega = spec.initial_weights(&mut rng);
    let problem = |accumulation| {
        SpikingSynapse::new(&spec, &task, EPROP_STRENGTH, Surrogate::Eprop, &omega)
            .unwrap()
            .with_accumulation(accumulation)
    };
    let free = GdParams {
        divergence: cml::inner::Divergence::NonFinite,
        step_size: Some(EPROP_LR),
        ..phase(EPROP_STEPS, EngineChoice::Fast)
    };
    let run = |p: &SpikingSynapse| {
        let theta = p.theta();
        let phi0 = p.initial_phi(theta).unwrap();
        let end = free
            .solve(&Oracle::new(p), &Phase::new(&phi0, theta, 0.0, "free phase"))
            .unwrap();
        cml::linalg::to_dvector(&end.phi).unwrap()
    };
    let (events, dense) = (problem(Accumulation::EventDriven), problem(Accumulation::Dense));
    let (t_events, phi_events) = best_of(repeats, || run(&events));
    let (t_dense, phi_dense) = best_of(repeats, || run(&dense));
    let z = {
        let kernel =
            cml::spiking::SpikingKernel::new(&spec, task.support.clone(), task.query.clone()).unwrap();
        let mut b = kernel.buffers();
        kernel.run(&mut b, omega.as_slice(), 0.0, None);
        b.spikes().iter().filter(|&&z| z != 0.0).count() as f64 / b.spikes().len() as f64
    };
    println!(
        "\none e-prop inner phase: {EPROP_STEPS} gradient steps of {EPROP_LR}, 100 inputs, 100 neurons, 20 steps, 10 shots (seed 7; {:.1}% of neuron-steps spike at omega)",
        100.0 * z
    );
    println!(
        "  event-driven {:.2} ms, dense {:.2} ms: event-driven / dense {:.3}; end points differ by {:.1e} relative",
        t_events * 1e3,
        t_dense * 1e3,
        t_events / t_dense,
        relative_error(&phi_events, &phi_dense)
    );
    match torch_eprop(&spec, &task, &omega, repeats) {
        Ok((t_torch, phi)) => println!(
            "  PyTorch (CPU, float64, one thread) {:.2} ms: event-driven / PyTorch {:.3}; end points differ by {:.1e} relative",
            t_torch * 1e3,
            t_events / t_torch,
            relative_error(&phi_events, &phi)
        ),
        Err(why) => println!("  PyTorch: {why}"),
    }
}

/// The PyTorch time and end point of the same phase, or why there is none. The interpreter is
/// `$CML_TORCH_PYTHON` (e.g. a virtual environment's, with PyTorch), else `python3`.
fn torch_eprop(
    spec: &cml::spiking::NetworkSpec,
    task: &cml::spiking::SpikingTask,
    omega: &Vector,
    repeats: usize,
) -> Result<(f64, Vector), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("phase.json");
    let phase = serde_json::json!({
        "inputs": spec.inputs, "neurons": spec.neurons, "steps": spec.steps,
        "alpha": spec.alpha(), "kappa": spec.kappa(), "threshold": spec.threshold, "gamma": spec.gamma,
        "reset": spec.reset, "rate_strength": spec.rate_strength, "rate_target": spec.rate_target,
        "strength": EPROP_STRENGTH, "step_size": EPROP_LR, "gd_steps": EPROP_STEPS,
        "raster": task.support.raster, "targets": task.support.targets, "omega": omega.as_slice(),
    });
    assert!(spec.recurrent, "the script simulates a recurrent network");
    std::fs::write(&path, phase.to_string()).map_err(|e| e.to_string())?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/torch_eprop.py");
    let args = [path.display().to_string(), repeats.to_string()];
    run_script(
        "CML_TORCH_PYTHON",
        "PyTorch",
        script,
        &args,
        "torch_seconds ",
        "phi ",
    )
}

/// Heap allocations of one phase of `k` steps.
fn allocations(p: &dyn ProblemInstance, k: usize, engine: EngineChoice) -> usize {
    let theta = p.theta();
    let phi = p.initial_phi(theta).unwrap();
    let oracle = Oracle::new(p);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    (phase(k, engine))
        .solve(&oracle, &Phase::new(&phi, theta, BETA, "bench"))
        .unwrap();
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

fn allocations_per_step() {
    println!(
        "\nheap allocations per inner step (a phase of 2K steps minus one of K, over K; 1-40-40-1, nudged)"
    );
    let p = synapse("1-40-40-1", 10);
    for engine in [EngineChoice::Fast, EngineChoice::Candle] {
        allocations(&p, 10, engine); // one-time allocations (thread-locals, gemm's buffers)
        let (k1, k2) = (500, 1000);
        let (a1, a2) = (allocations(&p, k1, engine), allocations(&p, k2, engine));
        println!(
            "  {:<7} {a1} allocations for {k1} steps, {a2} for {k2}: {:.3} per step",
            engine.name(),
            (a2 as f64 - a1 as f64) / (k2 - k1) as f64
        );
    }
}

fn throughput(quick: bool) {
    let batch = 32;
    println!(
        "\nmeta-batch of {batch} tasks (symmetric contrastive, 1-40-40-1, 10 shots, {FREE} + 2 x {NUDGED} steps)"
    );
    let threads = cml::parallel::available_threads();
    if threads < 2 {
        println!("  only {threads} core available (taskset?): run without taskset for the 2-thread figure");
    }
    let model = ModelSpec::Synapse(SynapseSpec::default());
    let mut rng = cml::rng::seeded(1);
    let tasks: Vec<SinusoidTask> = (0..batch)
        .map(|_| SinusoidTask::sample(&mut rng, 10).unwrap())
        .collect();
    let theta = model.initial_theta(&mut cml::rng::seeded(0)).unwrap();
    let config = TrainConfig {
        model,
        shots: 10,
        estimator: EstimatorSpec::Contrastive(symmetric(EngineChoice::Auto)),
        meta_steps: 1,
        meta_batch: batch,
        meta_lr: 1e-3,
        eval_tasks: 1,
        eval_every: 1,
        seed: 0,
    };
    let repeats = if quick { 1 } else { 3 };
    let mut rates = Vec::new();
    for t in [1, 2.min(threads)] {
        let (secs, _) = best_of(repeats, || {
            meta_batch_gradient(&config, &tasks, &theta, t).unwrap()
        });
        let rate = batch as f64 / secs;
        println!("  {t} thread(s): {rate:.1} tasks/s");
        rates.push(rate);
    }
    println!(
        "  2 threads / 1 thread: {:.2}x (target >= 1.8)",
        rates[1] / rates[0]
    );
}

fn main() {
    // cargo bench passes `--bench`; our own flag is --quick.
    let quick = std::env::args().any(|a| a == "--quick");
    cml::tune_allocator();
    // `--only NAME` runs one section.
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    let sections: [(&str, &dyn Fn()); 5] = [
        ("contrastive", &|| side_by_side(quick)),
        ("second-order", &|| second_order_side_by_side(quick)),
        ("eprop", &|| eprop_side_by_side(quick)),
        ("allocations", &allocations_per_step),
        ("throughput", &|| throughput(quick)),
    ];
    if let Some(name) = only {
        assert!(
            sections.iter().any(|(n, _)| n == name),
            "--only takes one of: {}",
            sections.map(|(n, _)| n).join(", ")
        );
    }
    for (name, run) in sections {
        if only.is_none_or(|o| o == name) {
            run();
        }
    }
}
