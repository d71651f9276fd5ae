//! criterion benchmarks: one inner gradient step, one Hessian-vector product, and one
//! meta-gradient per estimator on the complex-synapse model at two sizes and three K.
//!
//!     cargo bench --bench estimators

use cml::estimator::{Contrastive, EstimatorSpec, Implicit, LinearSolver, Unrolled, Variant};
use cml::inner::GdParams;
use cml::linalg::{Vector, to_tensor};
use cml::mlp::Mlp;
use cml::oracle::Oracle;
use cml::problem::{BilevelProblem, ProblemInstance};
use cml::problem::{Synapse, SynapseSpec};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::time::Duration;

/// 1-40-40-1 (1761 fast parameters) and 1-70-70-1 (5181, "about 5,000").
const SIZES: [&str; 2] = ["1-40-40-1", "1-70-70-1"];

/// Strength 10 keeps the inner Hessian positive definite even after few steps, which the
/// dense implicit solve needs (at strength 1 it is indefinite at the initial point).
fn synapse(sizes: &str) -> Synapse {
    let spec = SynapseSpec {
        net: Mlp::parse(sizes).unwrap(),
        per_synapse: true,
        strength: 10.0,
        fixed_strength: false,
    };
    Synapse::random(&spec, 10, 0).unwrap()
}

fn phase(k: usize) -> GdParams {
    GdParams {
        step_size: Some(0.005),
        max_steps: k,
        tolerance: 0.0,
        ..GdParams::default()
    }
}

fn primitives(c: &mut Criterion) {
    cml::tune_allocator();
    let mut g = c.benchmark_group("primitives");
    for sizes in SIZES {
        let p = synapse(sizes);
        let theta = p.theta().clone();
        let phi = p.initial_phi(&theta).unwrap();
        let oracle = Oracle::new(&p);
        // The same step on the fast first-order engine (docs/ENGINE.md): buffers made once.
        let fast = p.first_order().unwrap();
        let mut ws = fast.workspace(&theta.to_vec1::<f64>().unwrap()).unwrap();
        let mut phi_fast = phi.to_vec1::<f64>().unwrap();
        let mut grad = vec![0.0; phi_fast.len()];
        g.bench_function(BenchmarkId::new("inner_gradient_step_fast", sizes), |b| {
            b.iter(|| {
                fast.phase_gradient(&mut ws, &phi_fast, 0.0, &mut grad, None);
                for (p, g) in phi_fast.iter_mut().zip(&grad) {
                    *p -= 1e-9 * g; // a tiny step, so that the point stays put over the run
                }
            })
        });
        g.bench_function(BenchmarkId::new("inner_gradient_step", sizes), |b| {
            b.iter(|| {
                // As inside the inner loop on Candle: the fast-parameter gradient only.
                let gr = oracle.phase_phi_gradient(&phi, &theta, 0.0).unwrap();
                (&phi - (gr.phi * 0.005).unwrap()).unwrap()
            })
        });
        let v = to_tensor(&Vector::from_element(p.dims().phi, 1.0)).unwrap();
        g.bench_function(BenchmarkId::new("hessian_vector_product", sizes), |b| {
            b.iter(|| oracle.inner_hvp_and_mixed(&phi, &theta, &v).unwrap())
        });
    }
    g.finish();
}

fn meta_gradients(c: &mut Criterion) {
    let mut g = c.benchmark_group("meta_gradient");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(2));
    for sizes in SIZES {
        let p = synapse(sizes);
        for k in [10usize, 100, 1000] {
            let nudged = (k / 4).max(1);
            let specs = [
                (
                    "contrastive_standard",
                    EstimatorSpec::Contrastive(Contrastive {
                        variant: Variant::Standard,
                        beta: 0.01,
                        free: phase(k),
                        nudged: phase(nudged),
                    }),
                ),
                (
                    "contrastive_symmetric",
                    EstimatorSpec::Contrastive(Contrastive {
                        variant: Variant::Symmetric,
                        beta: 0.01,
                        free: phase(k),
                        nudged: phase(nudged),
                    }),
                ),
                (
                    "implicit_exact",
                    EstimatorSpec::Implicit(Implicit {
                        solver: LinearSolver::Dense,
                        free: phase(k),
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
                    "neumann",
                    EstimatorSpec::Implicit(Implicit {
                        solver: LinearSolver::Neumann {
                            steps: 10,
                            alpha: Some(0.005),
                        },
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
            ];
            for (name, spec) in specs {
                // The dense Hessian of the wide model is P double-backward passes per call.
                if name == "implicit_exact" && sizes == "1-70-70-1" && k > 10 {
                    continue;
                }
                g.bench_function(BenchmarkId::new(format!("{name}/{sizes}"), k), |b| {
                    b.iter(|| spec.estimator().estimate(&p, p.theta()).unwrap())
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, primitives, meta_gradients);
criterion_main!(benches);
