//! The wheel bandit (docs/BANDIT.md): the environment against its definition and the uniform
//! policy's closed-form regret, the regret bookkeeping on scripted policies, the Bayesian linear
//! posterior against its closed form, and the contrastive meta-gradient of a bandit task against
//! the exact implicit meta-gradient (Candle).

use approx::{assert_abs_diff_eq, assert_relative_eq};
use cml::bandit::agents::Agent;
use cml::bandit::posterior::{LinearPosterior, Prior};
use cml::bandit::run::{RunParams, cumulative_regret, run};
use cml::bandit::{ARMS, BanditTask, Context, WheelBandit};
use cml::error::Result;
use cml::estimator::{Contrastive, MetaGradientEstimator, Variant};
use cml::ground_truth::exact_meta_gradient;
use cml::inner::GdParams;
use cml::linalg::relative_error;
use cml::mlp::Mlp;
use cml::problem::{BilevelProblem, Modulation, ModulationSpec, ProblemInstance, Synapse, SynapseSpec};
use cml::rng::{Rng, seeded};

/// Mean and standard error of the mean.
fn mean_and_se(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

#[test]
fn rewards_have_the_stated_means_and_noise() {
    // delta = 0.5. Inside (radius 0.2): arms 0-3 pay N(1, 0.05^2), arm 4 N(1.2, 0.05^2).
    // On the rim at (-0.6, 0.3) (quadrant x < 0, y >= 0: arm 1) arm 1 pays N(50, 0.01^2).
    let bandit = WheelBandit::new(0.5).unwrap();
    let cases: [(Context, [f64; ARMS], [f64; ARMS]); 2] = [
        ([0.1, -0.17], [1.0, 1.0, 1.0, 1.0, 1.2], [0.05; ARMS]),
        (
            [-0.6, 0.3],
            [1.0, 50.0, 1.0, 1.0, 1.2],
            [0.05, 0.01, 0.05, 0.05, 0.05],
        ),
    ];
    let mut rng = seeded(3);
    let n = 20_000;
    for (x, means, stds) in cases {
        for arm in 0..ARMS {
            let r: Vec<f64> = (0..n).map(|_| bandit.sample_reward(&x, arm, &mut rng)).collect();
            let (m, se) = mean_and_se(&r);
            // The sample mean within 4 standard errors; the sample std within 3% (its relative
            // standard error is 1 / sqrt(2n) = 0.5%).
            assert!((m - means[arm]).abs() < 4.0 * se, "{x:?} arm {arm}: mean {m}");
            let std = (se * (n as f64).sqrt()) / stds[arm];
            assert_relative_eq!(std, 1.0, max_relative = 0.03);
        }
    }
    assert!(WheelBandit::new(1.5).is_err() && WheelBandit::new(-0.1).is_err());
}

#[test]
fn contexts_are_uniform_in_the_unit_disk() {
    // P(||x|| < r) = r^2 and each quadrant has probability 1/4.
    let mut rng = seeded(5);
    let n = 100_000;
    let xs: Vec<Context> = (0..n).map(|_| WheelBandit::sample_context(&mut rng)).collect();
    assert!(xs.iter().all(|x| x[0].hypot(x[1]) <= 1.0));
    for r in [0.3, 0.7, 0.95] {
        let p = xs.iter().filter(|x| x[0].hypot(x[1]) < r).count() as f64 / n as f64;
        let se = (r * r * (1.0 - r * r) / n as f64).sqrt();
        assert!((p - r * r).abs() < 4.0 * se, "P(|x| < {r}) = {p}");
    }
    let first = xs.iter().filter(|x| x[0] >= 0.0 && x[1] >= 0.0).count() as f64 / n as f64;
    assert!((first - 0.25).abs() < 4.0 * (0.25 * 0.75 / n as f64).sqrt());
}

#[test]
fn the_uniform_policy_has_its_closed_form_regret() {
    // Closed form (docs/BANDIT.md §1): delta^2 * 0.16 + (1 - delta^2) * 39.16; against a Monte
    // Carlo run of the simulator with uniformly random arms.
    let mut rng = seeded(7);
    for delta in [0.0, 0.5, 0.9, 0.99] {
        let bandit = WheelBandit::new(delta).unwrap();
        let closed = delta * delta * 0.16 + (1.0 - delta * delta) * 39.16;
        assert_relative_eq!(bandit.uniform_regret_per_step(), closed, max_relative = 1e-12);
        let n = 200_000;
        let regrets: Vec<f64> = (0..n)
            .map(|_| {
                let x = WheelBandit::sample_context(&mut rng);
                let arm = rand::Rng::random_range(&mut rng, 0..ARMS);
                bandit.regret(&x, arm)
            })
            .collect();
        let (m, se) = mean_and_se(&regrets);
        assert!(
            (m - closed).abs() < 4.0 * se,
            "delta {delta}: Monte Carlo {m} +- {se}, closed form {closed}"
        );
    }
}

#[test]
fn regret_is_kept_per_step_and_accumulated() {
    // delta = 0.5. Arm 4 at the centre: best, 0. Arm 4 at (0.9, 0.1) (rim, quadrant arm 0):
    // 50 - 1.2 = 48.8. Arm 1 at (-0.9, 0.1) (rim, quadrant arm 1): 0. Arm 0 at (0, -0.6)
    // (rim, x >= 0 and y < 0: arm 3): 50 - 1 = 49. Arm 0 at (0.1, 0.1) (inside): 1.2 - 1 = 0.2.
    let bandit = WheelBandit::new(0.5).unwrap();
    let contexts = [[0.0, 0.0], [0.9, 0.1], [-0.9, 0.1], [0.0, -0.6], [0.1, 0.1]];
    let arms = [4, 4, 1, 0, 0];
    let expected = [0.0, 48.8, 48.8, 97.8, 98.0];
    let got = cumulative_regret(&bandit, &contexts, &arms);
    for (g, e) in got.iter().zip(expected) {
        assert_abs_diff_eq!(*g, e, epsilon = 1e-12);
    }
}

/// Always pulls one arm and records what it saw.
struct Scripted {
    arm: usize,
    seen: Vec<(Context, usize, f64)>,
}

impl Agent for Scripted {
    fn act(&mut self, _: &Context, _: &mut Rng) -> Result<usize> {
        Ok(self.arm)
    }

    fn observe(&mut self, x: &Context, arm: usize, reward: f64, _: &mut Rng) -> Result<()> {
        self.seen.push((*x, arm, reward));
        Ok(())
    }
}

#[test]
fn a_run_opens_round_robin_and_charges_each_pull_its_regret() {
    // After 2 round-robin pulls per arm the agent pulls arm 4 always: its regret is 0 inside the
    // disk of radius delta and 48.8 on the rim; the round robin's is computed from the geometry.
    let bandit = WheelBandit::new(0.7).unwrap();
    let params = RunParams {
        steps: 400,
        initial_pulls: 2,
    };
    let mut agent = Scripted { arm: 4, seen: vec![] };
    let (arms, regret) = run(&bandit, &mut agent, &params, 11).unwrap();
    assert_eq!(&arms[..10], &[0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
    assert!(arms[10..].iter().all(|&a| a == 4));
    let mut total = 0.0;
    for (t, (x, arm, reward)) in agent.seen.iter().enumerate() {
        let rim = x[0].hypot(x[1]) >= 0.7;
        let quadrant = match (x[0] >= 0.0, x[1] >= 0.0) {
            (true, true) => 0,
            (false, true) => 1,
            (false, false) => 2,
            (true, false) => 3,
        };
        let mean = |a: usize| {
            if rim && a == quadrant {
                50.0
            } else if a == 4 {
                1.2
            } else {
                1.0
            }
        };
        let best = if rim { 50.0 } else { 1.2 };
        total += best - mean(*arm);
        assert_abs_diff_eq!(regret[t], total, epsilon = 1e-9);
        // The observed reward is the pulled arm's, within 6 noise standard deviations.
        assert!(
            (reward - mean(*arm)).abs() < 0.3,
            "step {t}: reward {reward} for mean {}",
            mean(*arm)
        );
    }
    // The same seed gives the same run.
    let mut again = Scripted { arm: 4, seen: vec![] };
    assert_eq!(run(&bandit, &mut again, &params, 11).unwrap().1, regret);
}

#[test]
fn the_linear_posterior_matches_its_closed_form() {
    // One feature, rows x = (1, 2), rewards y = (1, 3), lambda = 1, a0 = 2, b0 = 3:
    // Lambda = 1 + 1 + 4 = 6, mu = (1 + 6) / 6 = 7/6, a = 2 + 2/2 = 3,
    // b = 3 + (1 + 9 - 6 (7/6)^2) / 2 = 3 + (10 - 49/6) / 2 = 3 + 11/12.
    let prior = Prior {
        a0: 2.0,
        b0: 3.0,
        lambda: 1.0,
    };
    let mut post = LinearPosterior::new(prior, 1).unwrap();
    post.add(&[1.0], 1.0);
    post.add(&[2.0], 3.0);
    let p = post.params().unwrap();
    assert_relative_eq!(p.mean[0], 7.0 / 6.0, max_relative = 1e-14);
    assert_relative_eq!(p.a, 3.0);
    assert_relative_eq!(p.b, 3.0 + 11.0 / 12.0, max_relative = 1e-14);
    // Thompson draws: E w = mu, Var w = E[sigma^2] / Lambda = b / (a - 1) / 6.
    let mut rng = seeded(1);
    let draws: Vec<f64> = (0..100_000).map(|_| p.sample(&mut rng)[0]).collect();
    let (m, se) = mean_and_se(&draws);
    assert!((m - 7.0 / 6.0).abs() < 4.0 * se);
    let var = se * se * draws.len() as f64;
    assert_relative_eq!(var, (3.0 + 11.0 / 12.0) / 2.0 / 6.0, max_relative = 0.03);
    // Two features: the posterior mean is the ridge solution (X^T X + lambda I)^-1 X^T y.
    let mut post = LinearPosterior::new(
        Prior {
            a0: 1.0,
            b0: 1.0,
            lambda: 0.5,
        },
        2,
    )
    .unwrap();
    let rows = [([1.0, 0.0], 2.0), ([0.0, 1.0], -1.0), ([1.0, 1.0], 0.5)];
    rows.iter().for_each(|(x, y)| post.add(x, *y));
    // X^T X + 0.5 I = [[2.5, 1], [1, 2.5]], X^T y = (2.5, -0.5); inverse = [[2.5, -1], [-1, 2.5]] / 5.25.
    let mu = post.params().unwrap().mean;
    assert_relative_eq!(mu[0], (2.5 * 2.5 + 0.5) / 5.25, max_relative = 1e-14);
    assert_relative_eq!(mu[1], (-2.5 - 2.5 * 0.5) / 5.25, max_relative = 1e-14);
    assert!(
        LinearPosterior::new(
            Prior {
                a0: 0.0,
                b0: 1.0,
                lambda: 1.0
            },
            1
        )
        .is_err()
    );
}

/// Phases run to their fixed point: gradient descent at `1 / (2 L_hat)` until the gradient
/// norm is 1e-10.
fn converged() -> GdParams {
    GdParams {
        max_steps: 200_000,
        tolerance: 1e-10,
        ..GdParams::default()
    }
}

#[test]
fn the_contrastive_estimate_of_a_bandit_task_matches_the_exact_implicit_meta_gradient() {
    // A 2-4-5 network with strength 3 per synapse on 12 support and 6 query pulls (delta drawn):
    // the inner loss is strongly convex near the solution, and with converged phases the
    // symmetric estimate's error is O(beta^2) (docs/MATH.md §2).
    let mut rng = seeded(21);
    let task = BanditTask::sample(&mut rng, 12, 6).unwrap();
    let net = Mlp::parse("2-4-5").unwrap();
    let spec = SynapseSpec {
        net: net.clone(),
        per_synapse: true,
        strength: 3.0,
        fixed_strength: false,
    };
    let theta = spec.initial_theta(&mut rng).unwrap();
    let synapse = Synapse::new(spec, task.clone(), &theta).unwrap();
    let fixed = SynapseSpec {
        net: net.clone(),
        per_synapse: false,
        strength: 3.0,
        fixed_strength: true,
    };
    let fixed_synapse = Synapse::new(
        fixed,
        task.clone(),
        &theta.rows(0, net.param_count()).into_owned(),
    )
    .unwrap();
    let spec = ModulationSpec {
        net: Mlp::parse("2-4-5").unwrap(),
        strength: 3.0,
    };
    let modulation = Modulation::new(spec.clone(), task, &spec.initial_theta(&mut rng).unwrap()).unwrap();
    let problems: [(&str, &dyn ProblemInstance); 3] = [
        ("synapse", &synapse),
        ("fixed-strength synapse", &fixed_synapse),
        ("modulation", &modulation),
    ];
    for (name, p) in problems {
        let exact = exact_meta_gradient(p, p.theta()).unwrap().meta_gradient;
        let symmetric = |beta: f64| {
            let e = Contrastive {
                variant: Variant::Symmetric,
                beta,
                free: converged(),
                nudged: converged(),
            }
            .estimate(p, p.theta())
            .unwrap();
            relative_error(&e.gradient, &exact)
        };
        let (err, err_coarser) = (symmetric(1e-3), symmetric(1e-2));
        assert!(err < 1e-4, "{name}: relative error {err:.2e} at beta = 1e-3");
        // The O(beta^2) truncation error: 100x smaller for a 10x smaller beta (30x asked, as
        // the phases' residual 1e-10 / beta adds a little).
        assert!(
            err_coarser > 30.0 * err,
            "{name}: {err_coarser:.2e} at 1e-2, {err:.2e} at 1e-3"
        );
        // Not vacuous: the meta-gradient is not zero, and a plain forward difference at a large
        // beta is visibly off.
        assert!(exact.norm() > 1e-3);
        let coarse = Contrastive {
            variant: Variant::Standard,
            beta: 1.0,
            free: converged(),
            nudged: converged(),
        }
        .estimate(p, p.theta())
        .unwrap();
        assert!(relative_error(&coarse.gradient, &exact) > 10.0 * err, "{name}");
    }
    // The fixed-strength model's meta-parameters are omega alone.
    assert_eq!(fixed_synapse.dims().theta, net.param_count());
}

#[test]
fn online_learners_refuse_an_empty_budget() {
    use cml::bandit::agents::{OnlineLearner, OnlineModel, OnlineParams};
    use cml::optimizer::Optimizer;
    let spec = SynapseSpec {
        net: Mlp::parse("2-3-5").unwrap(),
        per_synapse: false,
        strength: 0.0,
        fixed_strength: true,
    };
    let theta = spec.initial_theta(&mut seeded(1)).unwrap();
    let ok = OnlineParams {
        every: 10,
        updates: 5,
        batch: 8,
        step_size: 1e-3,
        optimizer: Optimizer::GradientDescent,
    };
    assert!(OnlineLearner::new(OnlineModel::Synapse(spec.clone()), theta.clone(), ok).is_ok());
    for bad in [
        OnlineParams { every: 0, ..ok },
        OnlineParams { batch: 0, ..ok },
        OnlineParams { updates: 0, ..ok },
        OnlineParams {
            step_size: -1.0,
            ..ok
        },
    ] {
        let err = OnlineLearner::new(OnlineModel::Synapse(spec.clone()), theta.clone(), bad)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("online training"), "{err}");
    }
}
