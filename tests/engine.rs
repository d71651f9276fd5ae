//! The fast first-order engine against Candle autodiff: the phase loss and both partial
//! derivatives of every network model (the spiking network's e-prop included) on random sizes,
//! data, `theta`, `phi` and `beta` of either sign; whole estimates through both engines; the
//! vectorised tanh against `f64::tanh`; and the meta-batch's independence of the thread count.

mod common;

use cml::autodiff::{gradients, hvp_and_mixed, mixed_transpose_product};
use cml::bandit::{ARMS, BanditTask};
use cml::digits::{DecayClassifier, Episode, Labelled};
use cml::engine::{EngineChoice, SecondOrderPhase, tanh};
use cml::estimator::{
    Contrastive, EstimatorSpec, FirstOrder, FirstOrderRule, Implicit, LinearSolver, MetaGradientEstimator,
    Unrolled, Variant,
};
use cml::inner::GdParams;
use cml::linalg::{Vector, to_dvector, to_tensor};
use cml::meta_training::{ModelSpec, TrainConfig, meta_batch_gradient};
use cml::mlp::Mlp;
use cml::problem::{BilevelProblem, ProblemInstance, RegularisedMlp, phase_loss};
use cml::problem::{Modulation, ModulationSpec, SinusoidTask, Synapse, SynapseSpec};
use cml::rng::{normal_vector, seeded};
use cml::spiking::{NetworkSpec, SpikingSynapse, SpikingTask, Surrogate};
use nalgebra::DMatrix;
use proptest::prelude::*;
use rand::Rng as _;

/// Agreement asked of the two engines on one evaluation: each entry within 1e-12 relative, or
/// within 1e-12 of the vector's largest entry (an entry that is zero up to cancellation has no
/// relative accuracy in either engine).
const ONE_EVALUATION: f64 = 1e-12;

/// The absolute accuracy of a cross-entropy gradient entry. The engines compute `softmax - t`
/// to absolute, not relative, accuracy (both terms are at most 1), so an entry whose terms cancel
/// to near 0 keeps an error of up to eps x c x |h| x |W| x rows: at most about
/// 2.2e-16 x 3 (|beta| <= 3 over >= 1 row) x 3 (|inputs|) x 16 (|W| at logit scale 40) x 12 rows
/// = 4e-13 in the tests below. A squared error has no such floor (its residuals carry their own
/// scale), so those tests use 0.
const CROSS_ENTROPY_FLOOR: f64 = 1e-12;

fn assert_vectors_agree(fast: &[f64], candle: &Vector, tol: f64, floor: f64, what: &str) {
    let fast = Vector::from_column_slice(fast);
    let scale = candle.amax().max(f64::MIN_POSITIVE);
    assert!(
        approx::relative_eq!(
            fast,
            *candle,
            epsilon = (tol * scale).max(floor),
            max_relative = tol
        ),
        "{what}: fast path differs from Candle autodiff by {:.3e} (max entry {scale:.3e})",
        (&fast - candle).amax()
    );
}

/// Evaluates `L_beta` and its gradients at `(phi, theta)` by both engines and compares them,
/// with and without the `theta` gradient (the inner loop asks for it only at a phase's end).
fn check_against_candle(problem: &dyn ProblemInstance, phi: &Vector, theta: &Vector, beta: f64) {
    check_against_candle_with(problem, phi, theta, beta, 0.0);
}

/// [`check_against_candle`] with an absolute floor on the gradients' agreement.
fn check_against_candle_with(
    problem: &dyn ProblemInstance,
    phi: &Vector,
    theta: &Vector,
    beta: f64,
    floor: f64,
) {
    check_first_order_against_candle(problem, phi, theta, beta, floor);
    if let Some(second) = problem.second_order() {
        check_second_order_against_candle(problem, second, phi, theta, beta, floor);
    }
}

/// The loss and both gradients only.
fn check_first_order_against_candle(
    problem: &dyn ProblemInstance,
    phi: &Vector,
    theta: &Vector,
    beta: f64,
    floor: f64,
) {
    let candle = gradients(
        &phase_loss(problem, beta),
        &to_tensor(phi).unwrap(),
        &to_tensor(theta).unwrap(),
    )
    .unwrap();
    let fast_model = problem
        .first_order()
        .expect("every network model has a fast path");
    let mut ws = fast_model.workspace(theta.as_slice()).unwrap();
    let (mut g_phi, mut g_theta) = (vec![f64::NAN; phi.len()], vec![f64::NAN; theta.len()]);
    let loss = fast_model.phase_gradient(&mut ws, phi.as_slice(), beta, &mut g_phi, Some(&mut g_theta));
    // `L_beta = L_in + beta L_out`: at beta < 0 the two terms can cancel to near 0 (a decay
    // classifier at beta = -2.41 gave -4.464006055e-6 against Candle's -4.464006056e-6), leaving
    // each engine the rounding of its terms, so the loss agrees to 1e-12 of the terms' size.
    let (phi_t, theta_t) = (to_tensor(phi).unwrap(), to_tensor(theta).unwrap());
    let term = |l: candle_core::Result<candle_core::Tensor>| l.unwrap().to_scalar::<f64>().unwrap().abs();
    let size =
        term(problem.inner_loss(&phi_t, &theta_t)) + beta.abs() * term(problem.outer_loss(&phi_t, &theta_t));
    assert!(
        (loss - candle.loss).abs() <= ONE_EVALUATION * size.max(candle.loss.abs()),
        "loss: fast {loss:e}, Candle {:e}, terms of size {size:e}",
        candle.loss
    );
    assert_vectors_agree(
        &g_phi,
        &to_dvector(&candle.phi).unwrap(),
        ONE_EVALUATION,
        floor,
        "d phi",
    );
    assert_vectors_agree(
        &g_theta,
        &to_dvector(&candle.theta).unwrap(),
        ONE_EVALUATION,
        floor,
        "d theta",
    );
    // The phi-only evaluation (reusing the workspace, as a phase does) gives the same numbers.
    let mut g_phi_only = vec![f64::NAN; phi.len()];
    let loss_only = fast_model.phase_gradient(&mut ws, phi.as_slice(), beta, &mut g_phi_only, None);
    assert_eq!(loss_only, loss);
    assert_eq!(g_phi_only, g_phi);
}

/// The hand-derived Hessian-vector, mixed and transposed mixed products against Candle's double
/// backward of the same phase loss, in random directions `v` (fast) and `u` (meta), on the
/// first-order pass's workspace (as an estimator reuses it between gradient steps and products).
fn check_second_order_against_candle(
    problem: &dyn ProblemInstance,
    second: &dyn SecondOrderPhase,
    phi: &Vector,
    theta: &Vector,
    beta: f64,
    floor: f64,
) {
    let mut rng = seeded(phi.len() as u64 ^ beta.to_bits());
    let v = normal_vector(&mut rng, phi.len());
    let u = normal_vector(&mut rng, theta.len());
    let (phi_t, theta_t) = (to_tensor(phi).unwrap(), to_tensor(theta).unwrap());
    let loss = phase_loss(problem, beta);
    let (candle_hv, candle_mixed) = hvp_and_mixed(&loss, &phi_t, &theta_t, &to_tensor(&v).unwrap()).unwrap();
    let candle_transpose = mixed_transpose_product(&loss, &phi_t, &theta_t, &to_tensor(&u).unwrap()).unwrap();

    let mut ws = second.workspace(theta.as_slice()).unwrap();
    let (mut hv, mut mixed) = (vec![f64::NAN; phi.len()], vec![f64::NAN; theta.len()]);
    second.hessian_vector_product(
        &mut ws,
        phi.as_slice(),
        beta,
        v.as_slice(),
        &mut hv,
        Some(&mut mixed),
    );
    assert_vectors_agree(
        &hv,
        &to_dvector(&candle_hv).unwrap(),
        ONE_EVALUATION,
        floor,
        "H v",
    );
    assert_vectors_agree(
        &mixed,
        &to_dvector(&candle_mixed).unwrap(),
        ONE_EVALUATION,
        floor,
        "M v",
    );
    // Without the mixed product (the cheaper call CG makes), H v is the same to the bit.
    let mut hv_only = vec![f64::NAN; phi.len()];
    second.hessian_vector_product(&mut ws, phi.as_slice(), beta, v.as_slice(), &mut hv_only, None);
    assert_eq!(hv_only, hv);
    let mut transpose = vec![f64::NAN; phi.len()];
    second.mixed_transpose_product(&mut ws, phi.as_slice(), beta, u.as_slice(), &mut transpose);
    assert_vectors_agree(
        &transpose,
        &to_dvector(&candle_transpose).unwrap(),
        ONE_EVALUATION,
        floor,
        "M^T u",
    );
}

/// Hidden layer sizes `[in=1, h..., out=1]`, one to three hidden layers of 1 to 12 units.
fn sinusoid_net() -> impl Strategy<Value = Mlp> {
    prop::collection::vec(1usize..=12, 1..=3).prop_map(|hidden| {
        let mut sizes = vec![1];
        sizes.extend(hidden);
        sizes.push(1);
        Mlp::new(sizes).unwrap()
    })
}

fn beta() -> impl Strategy<Value = f64> {
    // Either sign, and exactly zero (the free phase, which skips the query rows).
    prop_oneof![Just(0.0), -3.0..3.0f64]
}

proptest! {
    #![proptest_config(common::property_config(64))]

    #[test]
    fn synapse_fast_path_equals_candle_autodiff(
        net in sinusoid_net(), shots in 1usize..=8, per_synapse: bool, beta in beta(), seed: u64,
    ) {
        let spec = SynapseSpec { net: net.clone(), per_synapse, strength: 1.0, fixed_strength: false };
        let mut rng = seeded(seed);
        let mut theta = spec.initial_theta(&mut rng).unwrap();
        let p = net.param_count();
        // Strengths exp(rho) from e^-2 to e^2, one per synapse or shared.
        for r in theta.as_mut_slice()[p..].iter_mut() {
            *r = rng.random_range(-2.0..2.0);
        }
        let task = SinusoidTask::sample(&mut rng, shots).unwrap();
        let phi = Vector::from_column_slice(&theta.as_slice()[..p]) + normal_vector(&mut rng, p) * 0.3;
        let problem = Synapse::new(spec, task, &theta).unwrap();
        check_against_candle(&problem, &phi, &theta, beta);
    }

    #[test]
    fn modulation_fast_path_equals_candle_autodiff(
        net in sinusoid_net(), shots in 1usize..=8, strength in 0.1..10.0f64, beta in beta(), seed: u64,
    ) {
        prop_assume!(net.sizes.len() >= 3); // the model needs a hidden layer
        let spec = ModulationSpec { net, strength };
        let mut rng = seeded(seed);
        let theta0 = spec.initial_theta(&mut rng).unwrap();
        // Every slow weight and initial fast value moved off its initialisation (gains not 1).
        let theta = &theta0 + normal_vector(&mut rng, theta0.len()) * 0.3;
        let task = SinusoidTask::sample(&mut rng, shots).unwrap();
        let problem = Modulation::new(spec, task, &theta).unwrap();
        let n = problem.dims().phi;
        let phi = to_dvector(&problem.initial_phi(&to_tensor(&theta).unwrap()).unwrap()).unwrap()
            + normal_vector(&mut rng, n) * 0.3;
        check_against_candle(&problem, &phi, &theta, beta);
    }

    #[test]
    fn bandit_models_fast_path_equals_candle_autodiff(
        hidden in prop::collection::vec(1usize..=8, 1..=2), pulls in (1usize..=12, 1usize..=6),
        fixed_strength: bool, beta in beta(), seed: u64,
    ) {
        // The masked loss (only the pulled arm scored) of both network models on a bandit task.
        let mut sizes = vec![2];
        sizes.extend(hidden);
        sizes.push(ARMS);
        let net = Mlp::new(sizes).unwrap();
        let mut rng = seeded(seed);
        let task = BanditTask::sample(&mut rng, pulls.0, pulls.1).unwrap();
        let spec = SynapseSpec { net: net.clone(), per_synapse: true, strength: 0.7, fixed_strength };
        let theta = spec.initial_theta(&mut rng).unwrap();
        let p = net.param_count();
        let phi = Vector::from_column_slice(&theta.as_slice()[..p]) + normal_vector(&mut rng, p) * 0.3;
        let problem = Synapse::new(spec, task.clone(), &theta).unwrap();
        check_against_candle(&problem, &phi, &theta, beta);

        let spec = ModulationSpec { net, strength: 0.7 };
        let theta0 = spec.initial_theta(&mut rng).unwrap();
        let theta = &theta0 + normal_vector(&mut rng, theta0.len()) * 0.3;
        let problem = Modulation::new(spec, task, &theta).unwrap();
        let n = problem.dims().phi;
        let phi = to_dvector(&problem.initial_phi(&to_tensor(&theta).unwrap()).unwrap()).unwrap()
            + normal_vector(&mut rng, n) * 0.3;
        check_against_candle(&problem, &phi, &theta, beta);
    }

    #[test]
    fn cross_entropy_models_fast_path_equals_candle_autodiff(
        hidden in 1usize..=6, ways in 2usize..=5, rows in (1usize..=6, 1usize..=6),
        logit_scale in prop_oneof![Just(1.0), Just(40.0)], beta in beta(), seed: u64,
    ) {
        // The softmax cross-entropy of a few-shot episode (random 8x8 images), both models; at
        // logit scale 40 the shifted logsumexp is needed for finite numbers. There the softmax is
        // saturated, and its second derivative `p * (R y - p . R y)` cancels to near 0 in both
        // engines, leaving each with absolute rounding errors of `eps |R y|` that the R-operator
        // carries back through the weights: the second-order products are compared at logit
        // scale 1 only (at 40 they have been seen to differ by up to 4.5e-12 of the largest entry).
        let check = |problem: &dyn ProblemInstance, phi: &Vector, theta: &Vector| {
            if logit_scale == 1.0 {
                check_against_candle_with(problem, phi, theta, beta, CROSS_ENTROPY_FLOOR);
            } else {
                check_first_order_against_candle(problem, phi, theta, beta, CROSS_ENTROPY_FLOOR);
            }
        };
        let mut rng = seeded(seed);
        let mut part = |n: usize| {
            let x = normal_vector(&mut rng, n * 64).as_slice().to_vec();
            let labels = (0..n).map(|_| rng.random_range(0..ways)).collect();
            Labelled::new(64, x, labels).unwrap()
        };
        let episode = Episode { ways, support: part(rows.0), query: part(rows.1) };
        let net = Mlp::new(vec![64, hidden, ways]).unwrap();
        let spec = SynapseSpec { net: net.clone(), per_synapse: true, strength: 0.7, fixed_strength: false };
        let theta = spec.initial_theta(&mut rng).unwrap() * logit_scale;
        let p = net.param_count();
        let phi = Vector::from_column_slice(&theta.as_slice()[..p]) + normal_vector(&mut rng, p) * 0.3;
        let problem = Synapse::new(spec, episode.clone(), &theta).unwrap();
        check(&problem, &phi, &theta);

        let spec = ModulationSpec { net, strength: 0.7 };
        let theta0 = spec.initial_theta(&mut rng).unwrap();
        let theta = &theta0 + normal_vector(&mut rng, theta0.len()) * 0.3;
        let problem = Modulation::new(spec, episode, &theta).unwrap();
        let n = problem.dims().phi;
        let phi = to_dvector(&problem.initial_phi(&to_tensor(&theta).unwrap()).unwrap()).unwrap()
            + normal_vector(&mut rng, n) * 0.3;
        check(&problem, &phi, &theta);
    }

    #[test]
    fn decay_classifier_fast_path_equals_candle_autodiff(
        features in 1usize..=6, hidden in 1usize..=6, classes in 2usize..=4,
        rows in (1usize..=8, 1usize..=8), beta in beta(), seed: u64,
    ) {
        // Cross-entropy plus per-parameter decay, random strengths e^-3 .. e^1.
        let mut rng = seeded(seed);
        let mut part = |n: usize| {
            let x = normal_vector(&mut rng, n * features).as_slice().to_vec();
            let labels = (0..n).map(|_| rng.random_range(0..classes)).collect();
            Labelled::new(features, x, labels).unwrap()
        };
        let (train, validation) = (part(rows.0), part(rows.1));
        let net = Mlp::new(vec![features, hidden, classes]).unwrap();
        let p = net.param_count();
        let phi_init = net.init(&mut rng);
        let theta = Vector::from_fn(p, |_, _| rng.random_range(-3.0..1.0));
        let problem = DecayClassifier::new(net, train, validation, &phi_init, &theta).unwrap();
        let phi = &phi_init + normal_vector(&mut rng, p) * 0.5;
        check_against_candle_with(&problem, &phi, &theta, beta, CROSS_ENTROPY_FLOOR);
    }

    #[test]
    fn spiking_fast_path_equals_candle_autodiff(
        inputs in 2usize..=12, neurons in 1usize..=8, steps in 1usize..=12, shots in 1usize..=5,
        recurrent: bool, reset: bool, scale in 1.0..40.0f64, beta in beta(), seed: u64,
    ) {
        // e-prop on the fast path against autodiff of the Candle network with recurrent spikes
        // cut (docs/SPIKING.md §3), hard spikes, weights scaled up from the paper's initialisation
        // so that neurons fire.
        let spec = NetworkSpec {
            inputs, neurons, steps, recurrent, reset,
            tuning_variance: 0.01,
            rate_strength: 0.1,
            ..NetworkSpec::default()
        };
        let mut rng = seeded(seed);
        let task = SpikingTask::sample(&mut rng, shots, &spec).unwrap();
        let omega = spec.initial_weights(&mut rng) * scale;
        let problem = SpikingSynapse::new(&spec, &task, 0.3, Surrogate::Eprop, &omega).unwrap();
        let phi = &omega + normal_vector(&mut rng, omega.len()) * (0.05 * scale);
        check_against_candle(&problem, &phi, &omega, beta);
    }

    #[test]
    fn weight_decay_mlp_fast_path_equals_candle_autodiff(
        features in 1usize..=6, hidden in 1usize..=10, rows in (1usize..=12, 1usize..=12),
        beta in beta(), seed: u64,
    ) {
        let mut rng = seeded(seed);
        let (n_train, n_val) = rows;
        let n = n_train + n_val + 1;
        let x = DMatrix::from_fn(n, features, |_, _| rng.random_range(-2.0..2.0));
        let y = normal_vector(&mut rng, n);
        let problem = RegularisedMlp::from_data(&x, &y, (n_train, n_val, 1), hidden, 0.1, seed).unwrap();
        let dims = problem.dims();
        let theta = Vector::from_fn(dims.theta, |_, _| rng.random_range(-4.0..2.0));
        let phi = normal_vector(&mut rng, dims.phi);
        check_against_candle(&problem, &phi, &theta, beta);
    }
}

#[test]
fn vectorised_tanh_is_within_four_ulp_of_the_standard_library() {
    // Error budget (docs/ENGINE.md §2): expm1's polynomial and the sum 2^k p + (2^k - 1) carry
    // about 2 ulp, the quotient e / (e + 2) adds 2 roundings of 1/2 ulp and passes e's error on
    // at most once; the reference itself is within 1 ulp. So 4 ulp, not a fitted number.
    // A dense sweep of [-25, 25] (past the clamp at 20), plus tiny arguments where tanh(x) ~ x.
    let mut xs: Vec<f64> = (-500_000..=500_000).map(|i| i as f64 * 5e-5).collect();
    xs.extend((1..300).flat_map(|k| {
        let x = 10f64.powf(-(k as f64) / 10.0);
        [x, -x]
    }));
    let mut fast = xs.clone();
    cml::engine::tanh::tanh_in_place(&mut fast);
    let mut worst = (0u64, 0.0);
    for (&x, &t) in xs.iter().zip(&fast) {
        assert_eq!(t, tanh::tanh(x), "the slice and scalar forms differ at {x}");
        let reference = x.tanh();
        let ulps = (t.to_bits() as i64 - reference.to_bits() as i64).unsigned_abs();
        if ulps > worst.0 {
            worst = (ulps, x);
        }
    }
    assert!(
        worst.0 <= 4,
        "tanh is {} ulp off f64::tanh at x = {}",
        worst.0,
        worst.1
    );
    assert_eq!(tanh::tanh(0.0), 0.0);
    assert_eq!(tanh::tanh(1e3), 1.0);
    assert_eq!(tanh::tanh(-1e3), -1.0);
}

fn phases(
    engine: EngineChoice,
    free_steps: usize,
    nudged_steps: usize,
    step_size: f64,
) -> (GdParams, GdParams) {
    let free = GdParams {
        step_size: Some(step_size),
        max_steps: free_steps,
        tolerance: 0.0,
        engine,
        ..GdParams::default()
    };
    (
        free,
        GdParams {
            max_steps: nudged_steps,
            ..free
        },
    )
}

/// The estimators whose inner loops run on the chosen engine, at that engine.
fn estimators(engine: EngineChoice, step_size: f64) -> Vec<EstimatorSpec> {
    let (free, nudged) = phases(engine, 200, 60, step_size);
    let mut specs: Vec<EstimatorSpec> = Variant::ALL
        .into_iter()
        .map(|variant| {
            EstimatorSpec::Contrastive(Contrastive {
                variant,
                beta: 0.05,
                free,
                nudged,
            })
        })
        .collect();
    specs.extend(
        [FirstOrderRule::FirstOrderMaml, FirstOrderRule::Reptile]
            .map(|rule| EstimatorSpec::FirstOrder(FirstOrder { rule, free })),
    );
    // Second-order products on the chosen engine: every linear solver at the free solution, and
    // BPTT's reverse loop through all steps and through the last 50.
    for solver in [
        LinearSolver::ConjugateGradient { steps: 5 },
        LinearSolver::Neumann {
            steps: 5,
            alpha: Some(step_size),
        },
        LinearSolver::Identity,
        LinearSolver::Dense,
    ] {
        specs.push(EstimatorSpec::Implicit(Implicit { solver, free }));
    }
    for truncation in [None, Some(50)] {
        specs.push(EstimatorSpec::Unrolled(Unrolled {
            inner: free,
            truncation,
        }));
    }
    // The error bar's Hessian-vector and mixed products (phase noise, smoothness) choose beta.
    specs.push(
        EstimatorSpec::Contrastive(Contrastive {
            variant: Variant::Symmetric,
            beta: 0.05,
            free,
            nudged,
        })
        .with_auto_beta()
        .unwrap(),
    );
    specs
}

/// Every estimator through the fast path equals the same estimator through Candle to 1e-10
/// relative (hundreds of steps compound rounding differences of one evaluation, ~1e-15).
fn check_whole_estimates(problem: &dyn ProblemInstance, step_size: f64, zero_first_order: bool) {
    let theta = problem.theta();
    for (fast, candle) in estimators(EngineChoice::Fast, step_size)
        .iter()
        .zip(estimators(EngineChoice::Candle, step_size))
    {
        let what = fast.estimator().describe();
        let a = fast.estimator().estimate(problem, theta).unwrap();
        let b = candle.estimator().estimate(problem, theta).unwrap();
        assert_eq!(a.cost, b.cost, "{what}: both engines are charged the same work");
        assert_eq!(a.phases.len(), b.phases.len());
        let is_first_order = matches!(fast, EstimatorSpec::FirstOrder(_));
        if is_first_order && zero_first_order {
            // theta does not set the initialisation here, so both are zero by construction.
            assert_eq!(a.gradient.amax(), 0.0, "{what}");
            assert_eq!(b.gradient.amax(), 0.0, "{what}");
            continue;
        }
        assert!(
            b.gradient.amax() > 0.0,
            "{what}: a zero estimate compares nothing"
        );
        let err = cml::linalg::relative_error(&a.gradient, &b.gradient);
        assert!(
            err <= 1e-10,
            "{what}: fast and Candle estimates differ by {err:.3e} relative"
        );
    }
}

#[test]
fn every_estimate_on_the_synapse_is_the_same_through_both_engines() {
    let spec = SynapseSpec {
        net: Mlp::parse("1-8-8-1").unwrap(),
        per_synapse: true,
        strength: 1.0,
        fixed_strength: false,
    };
    check_whole_estimates(&Synapse::random(&spec, 10, 3).unwrap(), 0.01, false);
}

#[test]
fn every_estimate_on_the_modulation_model_is_the_same_through_both_engines() {
    let spec = ModulationSpec {
        net: Mlp::parse("1-8-8-1").unwrap(),
        strength: 1.0,
    };
    check_whole_estimates(&Modulation::random(&spec, 10, 3).unwrap(), 0.01, false);
}

#[test]
fn every_estimate_on_the_weight_decay_mlp_is_the_same_through_both_engines() {
    let mut rng = seeded(5);
    let x: DMatrix<f64> = DMatrix::from_fn(40, 3, |_, _| rng.random_range(-2.0..2.0));
    let y = Vector::from_fn(40, |i, _| x[(i, 0)].sin() + 0.1 * x[(i, 1)]);
    let problem = RegularisedMlp::from_data(&x, &y, (15, 15, 10), 6, 0.05, 5).unwrap();
    check_whole_estimates(&problem, 0.1, true);
}

#[test]
fn forcing_the_fast_engine_on_a_problem_without_one_is_a_clear_error() {
    let problem = cml::registry::draw_problem("quadratic", 0).unwrap();
    let (free, _) = phases(EngineChoice::Fast, 10, 10, 0.01);
    let error = FirstOrder {
        rule: FirstOrderRule::Reptile,
        free,
    }
    .estimate(problem.as_ref(), problem.theta())
    .unwrap_err();
    let err = error.to_string();
    assert!(err.contains("engine = fast") && err.contains("no fast"), "{err}");
    // The command line names the way out.
    assert!(cml::cli::remedy(&error).is_some_and(|r| r.contains("--engine candle")));
}

#[test]
fn a_meta_batch_gives_the_same_bits_on_one_two_and_three_threads() {
    let (free, nudged) = phases(EngineChoice::Auto, 60, 20, 0.005);
    for model in [
        ModelSpec::Synapse(SynapseSpec {
            net: Mlp::parse("1-12-12-1").unwrap(),
            per_synapse: true,
            strength: 1.0,
            fixed_strength: false,
        }),
        ModelSpec::Modulation(ModulationSpec {
            net: Mlp::parse("1-12-12-1").unwrap(),
            strength: 1.0,
        }),
    ] {
        let config = TrainConfig {
            model: model.clone(),
            shots: 10,
            estimator: EstimatorSpec::Contrastive(Contrastive {
                variant: Variant::Symmetric,
                beta: 0.1,
                free,
                nudged,
            }),
            meta_steps: 1,
            meta_batch: 7,
            meta_lr: 0.01,
            eval_tasks: 1,
            eval_every: 1,
            seed: 0,
        };
        let mut rng = seeded(11);
        let tasks: Vec<SinusoidTask> = (0..7)
            .map(|_| SinusoidTask::sample(&mut rng, 10).unwrap())
            .collect();
        let theta = model.initial_theta(&mut seeded(2)).unwrap();
        let one = meta_batch_gradient(&config, &tasks, &theta, 1).unwrap();
        assert!(one.mean.amax() > 0.0);
        for threads in [2, 3] {
            let many = meta_batch_gradient(&config, &tasks, &theta, threads).unwrap();
            assert_eq!(many, one, "{threads} threads changed the meta-batch result");
        }
    }
}

#[test]
fn the_engine_is_chosen_automatically_and_by_name() {
    assert_eq!(EngineChoice::default(), EngineChoice::Auto);
    for e in EngineChoice::ALL {
        assert_eq!(EngineChoice::parse(e.name()).unwrap(), e);
    }
    let err = EngineChoice::parse("jax").unwrap_err().to_string();
    assert!(err.contains("jax") && err.contains("auto, candle, fast"), "{err}");
}
