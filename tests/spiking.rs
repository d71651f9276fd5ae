//! The spiking network of the paper's §5.4 and its e-prop learning rule (docs/SPIKING.md):
//! the simulation on a case computed by hand, the input code against its definition, e-prop
//! against Candle autodiff (the same network with recurrent spikes cut, and surrogate BPTT
//! where e-prop must equal it), and the contrastive estimate against finite differences of a
//! meta-objective that has a derivative.

mod common;

use approx::assert_relative_eq;
use cml::autodiff::gradients;
use cml::engine::FirstOrderPhase;
use cml::estimator::{Contrastive, MetaGradientEstimator, Variant};
use cml::inner::{GdParams, InnerSolver, Phase};
use cml::linalg::{Vector, relative_error, to_dvector, to_tensor};
use cml::oracle::Oracle;
use cml::problem::{BilevelProblem, ProblemInstance, phase_loss};
use cml::rng::seeded;
use cml::spiking::{
    Accumulation, NetworkSpec, Samples, Spike, SpikeInputs, SpikingKernel, SpikingNet, SpikingSynapse,
    SpikingTask, Surrogate,
};

/// One input neuron, two LIF neurons, three steps.
fn hand_spec() -> NetworkSpec {
    NetworkSpec {
        inputs: 1,
        neurons: 2,
        steps: 3,
        ..NetworkSpec::default()
    }
}

#[test]
fn the_simulation_matches_a_case_computed_by_hand() {
    // W_in = [0.15, 0.05], W_rec = [[0, 0], [0.2, 0]] (neuron 0 drives neuron 1), W_out = [1, 2],
    // input spikes x = (1, 0, 1); threshold 0.1, a = k = exp(-1/30), v_0 = 0:
    //   t=1: v = (0.15, 0.05)                              z = (1, 0)   y1 = 1
    //   t=2: v0 = 0.15a - 0.1 = 0.0451 (reset)             z = (0, 1)   y2 = k + 2
    //        v1 = 0.05a + 0.2 = 0.2484
    //   t=3: v0 = a(0.15a - 0.1) + 0.15 = 0.1936           z = (1, 1)   y3 = k(k + 2) + 3
    //        v1 = a(0.05a + 0.2) - 0.1 + 0.05 = 0.1902
    // prediction = (y1 + y2 + y3) / 3 = (6 + 3k + k^2) / 3; rate 4 spikes / 6 = 2/3.
    let spec = hand_spec();
    let a = (-1.0f64 / 30.0).exp();
    let w = [0.15, 0.05, 0.0, 0.0, 0.2, 0.0, 1.0, 2.0];
    assert_eq!(spec.param_count(), w.len());
    let raster = vec![1.0, 0.0, 1.0];
    let target = 0.5;
    let samples = || Samples {
        raster: raster.clone(),
        targets: vec![target],
    };
    let kernel = SpikingKernel::new(&spec, samples(), samples()).unwrap();
    let mut buffers = kernel.buffers();
    let losses = kernel.run(&mut buffers, &w, 0.0, None);
    let expected = (6.0 + 3.0 * a + a * a) / 3.0;
    assert_relative_eq!(buffers.predictions()[0], expected, max_relative = 1e-14);
    assert_eq!(buffers.spikes()[..6], [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    assert_relative_eq!(
        losses.support_mse,
        (expected - target).powi(2),
        max_relative = 1e-13
    );
    assert_relative_eq!(losses.rate, 2.0 / 3.0, max_relative = 1e-15);
    // The membrane values of the derivation, which decide the spikes, are not near threshold.
    let (v0_3, v1_3) = (a * (0.15 * a - 0.1) + 0.15, a * (0.05 * a + 0.2) - 0.05);
    assert!(v0_3 > 0.1 && v1_3 > 0.1 && 0.15 * a - 0.1 < 0.1 && 0.05 * a + 0.2 > 0.1);
    // The Candle path runs the same network.
    let net = SpikingNet { spec: spec.clone() };
    let inputs = SpikeInputs::new(&spec, &raster).unwrap();
    let p = net
        .predict(
            &to_tensor(&Vector::from_row_slice(&w)).unwrap(),
            &inputs,
            Surrogate::Bptt,
        )
        .unwrap();
    assert_relative_eq!(
        p.output.flatten_all().unwrap().to_vec1::<f64>().unwrap()[0],
        expected,
        max_relative = 1e-14
    );
    assert_relative_eq!(
        p.rate.to_scalar::<f64>().unwrap(),
        2.0 / 3.0,
        max_relative = 1e-15
    );
}

#[test]
fn the_pseudo_derivative_and_the_smooth_step_have_their_stated_shapes() {
    // gamma max(0, 1 - |v - thr| / thr) with thr = 0.1, gamma = 0.3: 0.3 at threshold, 0.15
    // halfway to 0 or 0.2, 0 beyond.
    let spec = NetworkSpec::default();
    for (v, z, psi) in [
        (0.1, 0.0, 0.3),
        (0.05, 0.0, 0.15),
        (0.15, 1.0, 0.15),
        (0.2, 1.0, 0.0),
        (-0.3, 0.0, 0.0),
    ] {
        let (zz, pp) = spec.spike(v);
        assert_eq!(zz, z, "spike at v = {v}");
        assert_relative_eq!(pp, psi, max_relative = 1e-12);
    }
    // The soft step's derivative is its pseudo-derivative's shape / thr: check by central
    // differences (h = 1e-6, error O(h^2) away from the kinks at v = 0, 0.1, 0.2).
    let soft = NetworkSpec {
        spike: Spike::Soft,
        ..NetworkSpec::default()
    };
    for v in [-0.05, 0.03, 0.07, 0.13, 0.19, 0.4] {
        let h = 1e-6;
        let fd = (soft.spike(v + h).0 - soft.spike(v - h).0) / (2.0 * h);
        assert!(
            (fd - soft.spike(v).1).abs() < 1e-6,
            "v = {v}: {fd} against {}",
            soft.spike(v).1
        );
    }
    assert_eq!(soft.spike(-1.0).0, 0.0);
    assert_eq!(soft.spike(1.0).0, 1.0);
}

#[test]
fn the_population_code_fires_at_its_tuning_curves() {
    // x = -5 + 10 i / 99 sits on centre i: rate 1 there, exp(-(1/99)^2 / (2 * 2e-4)) = 0.7748
    // one centre away; the Bernoulli frequencies over 4000 steps within 4 standard errors.
    let spec = NetworkSpec {
        steps: 4000,
        ..NetworkSpec::default()
    };
    let x = -5.0 + 10.0 * 40.0 / 99.0;
    let rates = spec.input_rates(x, (-5.0, 5.0));
    assert_relative_eq!(rates[40], 1.0, max_relative = 1e-12);
    let neighbour = (-(1.0f64 / 99.0).powi(2) / 4e-4).exp();
    assert_relative_eq!(rates[41], neighbour, max_relative = 1e-12);
    assert_relative_eq!(rates[39], neighbour, max_relative = 1e-12);
    assert_relative_eq!(
        rates[50],
        (-(10.0f64 / 99.0).powi(2) / 4e-4).exp(),
        max_relative = 1e-12
    );
    let raster = spec.encode(&mut seeded(5), &[x], (-5.0, 5.0));
    for i in [38, 39, 40, 41, 42] {
        let freq = (0..spec.steps).map(|t| raster[t * 100 + i]).sum::<f64>() / spec.steps as f64;
        let se = (rates[i] * (1.0 - rates[i]) / spec.steps as f64).sqrt().max(1e-3);
        assert!(
            (freq - rates[i]).abs() < 4.0 * se,
            "input {i}: {freq} against {}",
            rates[i]
        );
    }
    assert!(raster.iter().all(|&s| s == 0.0 || s == 1.0));
}

/// A task and a synapse on a small recurrent network with weights large enough to spike.
fn small_problem(
    spec: &NetworkSpec,
    seed: u64,
    surrogate: Surrogate,
    rec_scale: f64,
) -> (SpikingSynapse, Vector) {
    let mut rng = seeded(seed);
    let task = SpikingTask::sample(&mut rng, 6, spec).unwrap();
    let mut omega = spec.initial_weights(&mut rng) * 30.0;
    let layout = spec.layout();
    for k in layout.recurrent.0..layout.recurrent.1 {
        omega[k] *= rec_scale;
    }
    let p = SpikingSynapse::new(spec, &task, 0.3, surrogate, &omega).unwrap();
    // phi away from omega, so the pull's gradient is not zero either.
    let phi = omega.map(|w| w * 1.1 + 0.001);
    (p, phi)
}

fn small_spec() -> NetworkSpec {
    NetworkSpec {
        inputs: 20,
        neurons: 12,
        steps: 15,
        tuning_variance: 4e-3,
        rate_strength: 0.1,
        ..NetworkSpec::default()
    }
}

fn fast_gradient(p: &SpikingSynapse, phi: &Vector, beta: f64) -> (f64, Vector, Vector) {
    let mut ws = p.workspace(to_dvector(p.theta()).unwrap().as_slice()).unwrap();
    let (mut g, mut gt) = (vec![0.0; phi.len()], vec![0.0; phi.len()]);
    let loss = p.phase_gradient(&mut ws, phi.as_slice(), beta, &mut g, Some(&mut gt));
    (loss, Vector::from_vec(g), Vector::from_vec(gt))
}

#[test]
fn eprop_equals_autodiff_of_the_network_with_recurrent_spikes_cut() {
    // For any weights: e-prop's eligibility traces compute exactly the gradient of the network
    // whose recurrent spikes enter the next step as constants (docs/SPIKING.md §3).
    let spec = small_spec();
    for (seed, beta) in [(1, 0.0), (2, 0.7), (3, -0.4)] {
        let (p, phi) = small_problem(&spec, seed, Surrogate::Eprop, 30.0);
        let (loss, g, gt) = fast_gradient(&p, &phi, beta);
        let reference = gradients(&phase_loss(&p, beta), &to_tensor(&phi).unwrap(), p.theta()).unwrap();
        assert_relative_eq!(loss, reference.loss, max_relative = 1e-12);
        let (gr, gtr) = (
            to_dvector(&reference.phi).unwrap(),
            to_dvector(&reference.theta).unwrap(),
        );
        assert!(
            relative_error(&g, &gr) < 1e-11,
            "seed {seed}: {:.2e}",
            relative_error(&g, &gr)
        );
        assert!(relative_error(&gt, &gtr) < 1e-12);
        // Not vacuous: spikes happened and the surrogate carried gradient to the input weights.
        let losses = p.losses(phi.as_slice());
        assert!(losses.rate > 0.01 && losses.rate < 0.99, "rate {}", losses.rate);
        let input_block = g.rows(0, spec.neurons * spec.inputs);
        assert!(input_block.norm() > 1e-3 * g.norm());
    }
}

#[test]
fn eprop_equals_surrogate_bptt_without_recurrent_weights_and_only_there() {
    // With W_rec = 0 no spike reaches another neuron, so cutting the recurrent spikes changes
    // nothing: e-prop = BPTT through the same surrogate network, for every weight block
    // (W_rec's gradient included). With W_rec != 0 they differ, which shows the check can fail.
    let spec = small_spec();
    for rec_scale in [0.0, 30.0] {
        let (p, phi) = small_problem(&spec, 7, Surrogate::Bptt, rec_scale);
        let mut phi = phi;
        if rec_scale == 0.0 {
            let l = spec.layout();
            phi.rows_mut(l.recurrent.0, l.recurrent.1 - l.recurrent.0)
                .fill(0.0);
        }
        let (p_eprop, _) = small_problem(&spec, 7, Surrogate::Eprop, rec_scale);
        let (_, g, _) = fast_gradient(&p_eprop, &phi, 0.5);
        let bptt = gradients(&phase_loss(&p, 0.5), &to_tensor(&phi).unwrap(), p.theta()).unwrap();
        let err = relative_error(&g, &to_dvector(&bptt.phi).unwrap());
        if rec_scale == 0.0 {
            assert!(err < 1e-11, "W_rec = 0: relative difference {err:.2e}");
        } else {
            assert!(
                err > 1e-3,
                "W_rec != 0: e-prop should be approximate, difference {err:.2e}"
            );
        }
    }
}

#[test]
fn the_contrastive_estimate_matches_finite_differences_of_the_meta_objective() {
    // The smooth network (soft spikes, no reset, no recurrence) has a differentiable
    // meta-objective J(omega) = L_out(phi*(omega)), and e-prop is its exact gradient there, so
    // the inner e-prop loop has a fixed point phi* and the symmetric contrastive estimate must
    // match central differences of J (each J from an inner loop run to ||grad|| < 1e-12).
    let spec = NetworkSpec {
        inputs: 4,
        neurons: 3,
        steps: 5,
        tuning_variance: 0.05,
        recurrent: false,
        reset: false,
        spike: Spike::Soft,
        rate_strength: 0.01,
        ..NetworkSpec::default()
    };
    let mut rng = seeded(11);
    let task = SpikingTask::sample(&mut rng, 5, &spec).unwrap();
    let omega = spec.initial_weights(&mut rng) * 20.0;
    let strength = 1.0;
    let problem =
        |omega: &Vector| SpikingSynapse::new(&spec, &task, strength, Surrogate::Eprop, omega).unwrap();
    let solve = GdParams {
        step_size: Some(0.2),
        max_steps: 200_000,
        tolerance: 1e-12,
        ..GdParams::default()
    };
    let meta_objective = |omega: &Vector| {
        let p = problem(omega);
        let phi = solve
            .solve(
                &Oracle::new(&p),
                &Phase::new(p.theta(), p.theta(), 0.0, "free phase"),
            )
            .unwrap()
            .phi;
        p.losses(to_dvector(&phi).unwrap().as_slice()).query_mse
    };
    let h = 1e-5;
    let fd = Vector::from_iterator(
        omega.len(),
        (0..omega.len()).map(|k| {
            let mut up = omega.clone();
            up[k] += h;
            let mut down = omega.clone();
            down[k] -= h;
            (meta_objective(&up) - meta_objective(&down)) / (2.0 * h)
        }),
    );
    let p = problem(&omega);
    let estimate = |variant, beta| {
        Contrastive {
            variant,
            beta,
            free: solve,
            nudged: solve,
        }
        .estimate(&p, p.theta())
        .unwrap()
        .gradient
    };
    assert!(
        fd.norm() > 1e-3,
        "a meta-gradient that is not zero: {:.2e}",
        fd.norm()
    );
    // Measured: 1.3e-5 at beta 1e-3, 1.3e-7 at 1e-4 (the O(beta^2) truncation error; the finite
    // differences' own error is about h^2 = 1e-10).
    let (err, err_finer) = (
        relative_error(&estimate(Variant::Symmetric, 1e-3), &fd),
        relative_error(&estimate(Variant::Symmetric, 1e-4), &fd),
    );
    assert!(
        err_finer < 1e-6,
        "symmetric, beta 1e-4: relative error {err_finer:.2e}"
    );
    assert!(
        err > 50.0 * err_finer,
        "O(beta^2): {err:.2e} at 1e-3, {err_finer:.2e} at 1e-4"
    );
    // The standard (forward) difference is O(beta): 10x per decade.
    let forward = |b| relative_error(&estimate(Variant::Standard, b), &fd);
    let ratio = forward(1e-3) / forward(1e-4);
    assert!((5.0..20.0).contains(&ratio), "O(beta): ratio {ratio:.1}");
    // Where theory says the estimate must be off, it is: the reference code's half-forward
    // difference is biased by about half the meta-gradient.
    let defect = estimate(Variant::ReferenceCodeSymmetric, 1e-3);
    assert_relative_eq!(relative_error(&defect, &fd), 0.5, max_relative = 0.05);
    // This network's derivatives are true ones, so it has an exact reference (Newton, then the
    // implicit meta-gradient through Candle's second derivatives), and it agrees with the
    // finite differences to their own precision.
    assert_eq!(p.surrogate_derivative(), None);
    let exact = cml::ground_truth::exact_meta_gradient(&p, p.theta()).unwrap();
    let err_exact = relative_error(&exact.meta_gradient, &fd);
    assert!(
        err_exact < 1e-6,
        "exact reference: relative error {err_exact:.2e}"
    );
}

#[test]
fn the_spiking_network_has_an_exact_reference_only_where_its_derivatives_are_true() {
    // docs/SPIKING.md §3: Heaviside spikes (a pseudo-derivative), the reset held constant, and
    // e-prop's cut recurrent spikes each make the gradient a surrogate's; only soft spikes
    // without reset, and without recurrence or with the recurrent spikes kept (BPTT), are exact.
    let smooth = NetworkSpec {
        recurrent: false,
        reset: false,
        spike: Spike::Soft,
        ..small_spec()
    };
    let cases = [
        (smooth.clone(), Surrogate::Eprop, true),
        (
            NetworkSpec {
                recurrent: true,
                ..smooth.clone()
            },
            Surrogate::Eprop,
            false,
        ),
        (
            NetworkSpec {
                recurrent: true,
                ..smooth.clone()
            },
            Surrogate::Bptt,
            true,
        ),
        (
            NetworkSpec {
                reset: true,
                ..smooth.clone()
            },
            Surrogate::Eprop,
            false,
        ),
        (
            NetworkSpec {
                spike: Spike::Heaviside,
                ..smooth.clone()
            },
            Surrogate::Eprop,
            false,
        ),
    ];
    for (spec, surrogate, exact) in cases {
        let (p, _) = small_problem(&spec, 3, surrogate, 1.0);
        assert_eq!(
            p.surrogate_derivative().is_none(),
            exact,
            "{spec:?} {surrogate:?}"
        );
    }
    // The registry's network (the paper's): refused at once, by reason, not after a Newton solve.
    let registered = cml::registry::draw_problem("spiking-synapse", 0).unwrap();
    let err = cml::ground_truth::exact_meta_gradient(registered.as_ref(), registered.theta()).unwrap_err();
    assert!(matches!(err, cml::CmlError::NoExactReference { .. }), "{err}");
    assert!(err.to_string().contains("pseudo-derivative"), "{err}");
    // And every estimator that needs second-order products is refused there, naming the stage.
    let spec = cml::estimator::EstimatorSpec::Implicit(cml::estimator::Implicit {
        solver: cml::estimator::LinearSolver::ConjugateGradient { steps: 10 },
        free: GdParams::default(),
    });
    let reason = spec
        .inapplicable(registered.as_ref(), registered.theta())
        .unwrap()
        .unwrap();
    assert!(
        reason.contains("linear solve") && reason.contains("spiking-synapse"),
        "{reason}"
    );
    // Its phases stop only at a non-finite loss, and the loss's rises along the surrogate
    // gradient are reported as such, not as a hint that the step size is too large.
    let phase = |steps| GdParams {
        max_steps: steps,
        ..GdParams::default()
    };
    let estimate = Contrastive {
        variant: Variant::Standard,
        beta: 1e-3,
        free: phase(300),
        nudged: phase(100),
    }
    .estimate(registered.as_ref(), registered.theta())
    .unwrap();
    let rises: Vec<&String> = estimate
        .warnings
        .iter()
        .filter(|w| w.contains("loss rose"))
        .collect();
    assert!(!rises.is_empty(), "{:?}", estimate.warnings);
    for w in rises {
        assert!(w.contains("need not lower") && !w.contains("curvature"), "{w}");
    }
}

#[test]
fn a_spiking_instance_file_rebuilds_the_same_problem_and_refuses_a_bad_spike() {
    let p = cml::registry::draw_problem("spiking-synapse", 4).unwrap();
    let file = p.to_instance();
    let back = cml::registry::read_problem(&file, "f.json").unwrap();
    // Two paths that must agree: the same losses and the same e-prop gradient, bit for bit, at
    // a point away from theta, and the same instance file again.
    let phi = to_dvector(p.theta()).unwrap().map(|w| w * 1.3 + 0.01);
    let (phi_t, theta) = (to_tensor(&phi).unwrap(), p.theta());
    for beta in [0.0, 0.5] {
        let loss = |q: &dyn cml::problem::BilevelProblem| {
            phase_loss(q, beta)(&phi_t, theta)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        assert_eq!(loss(p.as_ref()), loss(back.as_ref()));
    }
    let grad = |q: &dyn cml::problem::BilevelProblem| {
        let fast = q.first_order().unwrap();
        let mut ws = fast.workspace(to_dvector(theta).unwrap().as_slice()).unwrap();
        let mut g = vec![0.0; phi.len()];
        fast.phase_gradient(&mut ws, phi.as_slice(), 0.5, &mut g, None);
        g
    };
    assert_eq!(grad(p.as_ref()), grad(back.as_ref()));
    assert_eq!(back.to_instance(), file);
    // A raster entry that is not a spike (0 or 1), and a yes-or-no setting that is neither.
    let mut bad = file.clone();
    let raster = bad.arrays.iter_mut().find(|a| a.name == "raster_query").unwrap();
    raster.values[3] = cml::problem::instance::FiniteOrNot(0.5);
    let err = cml::registry::read_problem(&bad, "f.json")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("query spike raster entry = 0.5"), "{err}");
    let mut bad = file.clone();
    bad.scalars
        .insert("reset".into(), cml::problem::instance::FiniteOrNot(2.0));
    let err = cml::registry::read_problem(&bad, "f.json")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("'reset' is 2") && err.contains("f.json"), "{err}");
}

proptest::proptest! {
    #![proptest_config(common::property_config(48))]

    /// The event-driven e-prop (a backward filter of the learning signal added at each spike)
    /// sums the same products as the dense path (traces at every step, dense products) in
    /// another order: equal to 1e-12 of the largest entry, for hard and soft spikes, with and
    /// without recurrence and reset, in the free and nudged phases.
    #[test]
    fn event_driven_eprop_equals_the_dense_path(
        inputs in 2usize..=16, neurons in 1usize..=10, steps in 1usize..=16, shots in 1usize..=4,
        recurrent: bool, reset: bool, soft: bool, scale in 5.0..60.0f64,
        beta in proptest::prop_oneof![proptest::strategy::Just(0.0), -2.0..2.0f64], seed: u64,
    ) {
        let spec = NetworkSpec {
            inputs, neurons, steps, recurrent, reset,
            spike: if soft { Spike::Soft } else { Spike::Heaviside },
            tuning_variance: 0.01,
            rate_strength: 0.1,
            ..NetworkSpec::default()
        };
        let mut rng = seeded(seed);
        let task = SpikingTask::sample(&mut rng, shots, &spec).unwrap();
        let w = spec.initial_weights(&mut rng) * scale;
        let kernel = |accumulation| {
            SpikingKernel::new(&spec, task.support.clone(), task.query.clone())
                .unwrap()
                .with_accumulation(accumulation)
        };
        let mut grads = Vec::new();
        for accumulation in [Accumulation::EventDriven, Accumulation::Dense] {
            let k = kernel(accumulation);
            let mut b = k.buffers();
            let mut g = vec![f64::NAN; spec.param_count()];
            let losses = k.run(&mut b, w.as_slice(), beta, Some(&mut g));
            grads.push((losses, Vector::from_vec(g)));
        }
        let ((l_event, g_event), (l_dense, g_dense)) = (&grads[0], &grads[1]);
        // The simulation is shared (the query's loss is NaN, not computed, in the free phase).
        proptest::prop_assert_eq!(format!("{l_event:?}"), format!("{l_dense:?}"));
        let scale = g_dense.amax();
        proptest::prop_assert!(g_event.iter().all(|v| v.is_finite()));
        proptest::prop_assert!(
            (g_event - g_dense).amax() <= 1e-12 * scale,
            "event-driven and dense e-prop differ by {:.3e} (largest entry {scale:.3e})",
            (g_event - g_dense).amax()
        );
    }
}

#[test]
fn the_event_driven_test_sees_spikes_and_nonzero_gradients() {
    // The property above compares something: on a typical draw the network spikes and every
    // weight block's gradient is nonzero.
    let spec = NetworkSpec {
        inputs: 12,
        neurons: 8,
        steps: 12,
        tuning_variance: 0.01,
        rate_strength: 0.1,
        ..NetworkSpec::default()
    };
    let mut rng = seeded(4);
    let task = SpikingTask::sample(&mut rng, 3, &spec).unwrap();
    let w = spec.initial_weights(&mut rng) * 30.0;
    let k = SpikingKernel::new(&spec, task.support.clone(), task.query.clone()).unwrap();
    let mut b = k.buffers();
    let mut g = vec![0.0; spec.param_count()];
    k.run(&mut b, w.as_slice(), 0.5, Some(&mut g));
    assert!(b.spikes().contains(&1.0), "no neuron spiked");
    let layout = spec.layout();
    for (name, (from, to)) in [
        ("input", layout.input),
        ("recurrent", layout.recurrent),
        ("output", layout.output),
    ] {
        assert!(
            g[from..to].iter().any(|&v| v != 0.0),
            "the {name} weights' gradient is zero"
        );
    }
}
