//! Peak memory and time per meta-gradient as the inner loop grows, measured with a counting
//! global allocator; plus the cost targets of the performance issue, printed as ratios.
//!
//!     cargo bench --bench memory             # K up to 10,000 (about a minute)
//!     cargo bench --bench memory -- --quick  # K up to 1,000
//!
//! Writes `figures/memory_vs_k.csv` (estimator, K, peak bytes, seconds).

use cml::estimator::{Contrastive, EstimatorSpec, Implicit, LinearSolver, Unrolled, Variant};
use cml::inner::{GdParams, InnerSolver, Phase};
use cml::mlp::Mlp;
use cml::oracle::Oracle;
use cml::parallel::map_in_order;
use cml::problem::{BilevelProblem, ProblemInstance};
use cml::problem::{Synapse, SynapseSpec};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak bytes allocated above what was live before, and seconds, of `f`.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, f64) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let clock = Instant::now();
    let out = f();
    let secs = clock.elapsed().as_secs_f64();
    (out, PEAK.load(Ordering::Relaxed) - base, secs)
}

fn synapse(sizes: &str, shots: usize) -> Synapse {
    let spec = SynapseSpec {
        net: Mlp::parse(sizes).unwrap(),
        per_synapse: true,
        strength: 1.0,
        fixed_strength: false,
    };
    Synapse::random(&spec, shots, 0).unwrap()
}

fn phase(k: usize) -> GdParams {
    GdParams {
        step_size: Some(0.005),
        max_steps: k,
        tolerance: 0.0,
        ..GdParams::default()
    }
}

/// Seconds per inner gradient step on `L_beta`, from a run of `k` steps (best of three).
fn step_time(p: &dyn ProblemInstance, k: usize, beta: f64) -> f64 {
    let theta = p.theta();
    let phi = p.initial_phi(theta).unwrap();
    (0..3)
        .map(|_| {
            let clock = Instant::now();
            (phase(k))
                .solve(&Oracle::new(p), &Phase::new(&phi, theta, beta, "bench"))
                .unwrap();
            clock.elapsed().as_secs_f64() / (k + 1) as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    // cargo bench passes `--bench`; our own flag is --quick.
    let quick = std::env::args().any(|a| a == "--quick");
    cml::tune_allocator();
    let ks: &[usize] = if quick {
        &[10, 100, 1000]
    } else {
        &[10, 100, 1000, 10_000]
    };
    let p = synapse("1-40-40-1", 10);
    let mut csv = String::from("estimator,k,peak_bytes,seconds\n");
    println!("peak memory per meta-gradient, complex synapse 1-40-40-1 (1761 fast parameters), 10 shots");
    println!(
        "{:<12} {:>6} {:>14} {:>10}",
        "estimator", "K", "peak bytes", "seconds"
    );
    let mut peaks: std::collections::BTreeMap<&str, Vec<(usize, usize)>> = Default::default();
    // Warm-up: one-time allocations (thread-locals, caches) are not the estimators' memory.
    cml::estimator::MetaGradientEstimator::estimate(
        &Contrastive {
            variant: Variant::Standard,
            beta: 0.01,
            free: phase(5),
            nudged: phase(5),
        },
        &p,
        p.theta(),
    )
    .unwrap();
    for &k in ks {
        let specs = [
            (
                "contrastive",
                EstimatorSpec::Contrastive(Contrastive {
                    variant: Variant::Standard,
                    beta: 0.01,
                    free: phase(k),
                    nudged: phase(k),
                }),
            ),
            (
                "bptt",
                EstimatorSpec::Unrolled(Unrolled {
                    inner: phase(k),
                    truncation: None,
                }),
            ),
            (
                "tbptt",
                EstimatorSpec::Unrolled(Unrolled {
                    inner: phase(k),
                    truncation: Some(10),
                }),
            ),
            (
                "cg",
                EstimatorSpec::Implicit(Implicit {
                    solver: LinearSolver::ConjugateGradient { steps: 10 },
                    free: phase(k),
                }),
            ),
            (
                "t1t2",
                EstimatorSpec::Implicit(Implicit {
                    solver: LinearSolver::Identity,
                    free: phase(k),
                }),
            ),
        ];
        for (name, spec) in specs {
            let (_, peak, secs) = measure(|| spec.estimator().estimate(&p, p.theta()).unwrap());
            println!("{name:<12} {k:>6} {peak:>14} {secs:>10.3}");
            csv.push_str(&format!("{name},{k},{peak},{secs:.6}\n"));
            peaks.entry(name).or_default().push((k, peak));
        }
    }
    std::fs::create_dir_all("figures").unwrap();
    cml::io::write_atomically(std::path::Path::new("figures/memory_vs_k.csv"), csv.as_bytes()).unwrap();

    println!("\ntargets");
    let c = &peaks["contrastive"];
    let (lo, hi) = (c.first().unwrap(), c.last().unwrap());
    println!(
        "contrastive peak memory K = {} -> {}: {} -> {} bytes, ratio {:.3} (target: within 10%, i.e. <= 1.10)",
        lo.0,
        hi.0,
        lo.1,
        hi.1,
        hi.1 as f64 / lo.1 as f64
    );
    let b = &peaks["bptt"];
    for w in b.windows(2) {
        println!(
            "bptt peak memory K = {} -> {}: ratio {:.2} for a {}x longer loop (linear: about {})",
            w[0].0,
            w[1].0,
            w[1].1 as f64 / w[0].1 as f64,
            w[1].0 / w[0].0,
            w[1].0 / w[0].0
        );
    }

    // Nothing beyond running learning twice: time / (free steps x one free step + nudged steps
    // x one nudged step); a nudged step also evaluates the outer loss, so it costs more.
    let k = 1000;
    let (t_free, t_nudged) = (step_time(&p, k, 0.0), step_time(&p, k, 0.01));
    let est = Contrastive {
        variant: Variant::Standard,
        beta: 0.01,
        free: phase(k),
        nudged: phase(k),
    };
    let t_cml = (0..3)
        .map(|_| {
            let clock = Instant::now();
            cml::estimator::MetaGradientEstimator::estimate(&est, &p, p.theta()).unwrap();
            clock.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    println!(
        "contrastive meta-gradient at K = {k}: {t_cml:.4} s = {:.3} x (K free steps of {:.1} us + K nudged steps of {:.1} us) (target <= 1.1)",
        t_cml / ((k + 1) as f64 * (t_free + t_nudged)),
        t_free * 1e6,
        t_nudged * 1e6
    );

    // One inner step at about 1,350 parameters, batch 64, against JAX's 47 us (CANDLE.md).
    let jax = synapse("1-35-35-1", 64);
    let t = step_time(&jax, 500, 0.0);
    println!(
        "inner step, synapse 1-35-35-1 ({} parameters), batch 64: {:.1} us = {:.2} x JAX's 47 us (target <= 1.5)",
        jax.dims().phi,
        t * 1e6,
        t * 1e6 / 47.0
    );

    // Meta-batch throughput: one contrastive meta-gradient per task, tasks over the cores.
    for batch in [1usize, 8, 32] {
        let tasks: Vec<Synapse> = (0..batch as u64)
            .map(|s| Synapse::random(&SynapseSpec::default(), 10, s).unwrap())
            .collect();
        let est = Contrastive {
            variant: Variant::Standard,
            beta: 0.01,
            free: phase(100),
            nudged: phase(25),
        };
        let clock = Instant::now();
        map_in_order(&tasks, |t| {
            cml::estimator::MetaGradientEstimator::estimate(&est, t, t.theta())
        })
        .unwrap();
        let secs = clock.elapsed().as_secs_f64();
        println!(
            "meta-batch {batch:>2}: {:.1} tasks/s (contrastive, 100 free + 25 nudged steps, 1-40-40-1)",
            batch as f64 / secs
        );
    }
}
