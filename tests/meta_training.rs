//! Meta-training lowers the meta-test loss after adaptation, for the contrastive rule and the
//! references, on both models.

use cml::estimator::{EstimatorParams, Variant};
use cml::inner::GdParams;
use cml::meta_training::{ModelSpec, TrainConfig, train};
use cml::mlp::Mlp;
use cml::problem::{ModulationSpec, SynapseSpec};

fn config(model: ModelSpec, estimator: &str) -> TrainConfig {
    let phase = GdParams {
        step_size: Some(0.005),
        max_steps: 100,
        tolerance: 0.0,
        ..GdParams::default()
    };
    let params = EstimatorParams {
        variant: Variant::Symmetric,
        beta: 0.05,
        free: phase,
        nudged: GdParams {
            max_steps: 20,
            ..phase
        },
        solver_steps: 10,
        neumann_alpha: None,
        truncation: 10,
    };
    TrainConfig {
        model,
        shots: 10,
        estimator: cml::registry::estimator(estimator, &params).unwrap(),
        meta_steps: 40,
        meta_batch: 4,
        meta_lr: 0.01,
        eval_tasks: 10,
        eval_every: 40,
        seed: 1,
    }
}

fn models() -> Vec<ModelSpec> {
    let net = Mlp::parse("1-16-16-1").unwrap();
    vec![
        ModelSpec::Synapse(SynapseSpec {
            net: net.clone(),
            per_synapse: true,
            strength: 10.0,
            fixed_strength: false,
        }),
        ModelSpec::Modulation(ModulationSpec { net, strength: 10.0 }),
    ]
}

#[test]
fn a_short_run_lowers_the_meta_test_loss_after_adaptation() {
    for model in models() {
        for estimator in ["contrastive", "cg", "bptt"] {
            let c = config(model.clone(), estimator);
            let run = train(&c, &mut |_| {}).unwrap_or_else(|e| panic!("{} {estimator}: {e}", model.name()));
            let first = run.steps.first().unwrap().evaluation.unwrap();
            let last = run.steps.last().unwrap().evaluation.unwrap();
            assert!(
                last.after < 0.9 * first.after,
                "{} {estimator}: meta-test loss after adaptation {:.4} -> {:.4}",
                model.name(),
                first.after,
                last.after
            );
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let c = config(models().remove(0), "contrastive");
    let c = TrainConfig {
        meta_steps: 3,
        eval_every: 1,
        ..c
    };
    let a = train(&c, &mut |_| {}).unwrap();
    let b = train(&c, &mut |_| {}).unwrap();
    assert_eq!(a.theta, b.theta);
    let strip = |r: &cml::meta_training::TrainResult| {
        r.steps
            .iter()
            .map(|s| (s.meta_train_loss, s.evaluation, s.estimate_norm, s.cost))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&a), strip(&b));
}
