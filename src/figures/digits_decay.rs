//! The paper's §5.2 on the shipped handwritten digits: one weight-decay strength per parameter of
//! a tanh MLP classifier, meta-learned on the validation cross-entropy by the contrastive rule
//! and by CG, Neumann, T1-T2 and truncated BPTT, against a fixed decay and the best single decay
//! of a grid; final test accuracy after retraining on training + validation with the learned
//! strengths, over several seeds (docs/DIGITS.md §4).

use super::plot::{Figure, Panel, Series, Style};
use super::training::seed_mean_ci;
use super::weight_decay::decay_estimators;
use super::{Settings, save, write_csv, write_table};
use crate::digits::decay_classifier::Part;
use crate::digits::{DecayClassifier, Labelled, Standardiser, load_digits, split};
use crate::error::Result;
use crate::estimator::{Contrastive, EstimatorSpec, Variant};
use crate::executor::{Flow, MetaExecutor, OnFailure};
use crate::inner::{GdParams, InnerSolver, Phase};
use crate::linalg::{Vector, to_tensor};
use crate::model::Mlp;
use crate::oracle::Oracle;
use crate::parallel::map_in_order;
use crate::problem::{BilevelProblem, ProblemInstance};
use crate::rng::{hash_words, stream};
use std::path::PathBuf;

/// The budget of the job (full or `--quick`); the full one is shipped as a config in `configs/`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Protocol {
    pub net: Mlp,
    pub train: usize,
    pub validation: usize,
    pub seeds: usize,
    pub meta_steps: usize,
    pub eval_every: usize,
    pub meta_lr: f64,
    pub free_steps: usize,
    pub nudged_steps: usize,
    pub step_size: f64,
    pub initial_decay: f64,
    pub beta: f64,
    pub grid: Vec<f64>,
}

impl Protocol {
    pub fn new(quick: bool) -> Result<Self> {
        Ok(if quick {
            Protocol {
                net: Mlp::parse("64-8-10")?,
                train: 200,
                validation: 200,
                seeds: 2,
                meta_steps: 2,
                eval_every: 1,
                meta_lr: 0.05,
                free_steps: 30,
                nudged_steps: 10,
                step_size: 0.2,
                initial_decay: 1e-3,
                beta: 0.5,
                grid: vec![1e-4, 1e-2],
            }
        } else {
            Protocol {
                net: Mlp::parse("64-32-10")?,
                train: 600,
                validation: 600,
                seeds: 5,
                meta_steps: 100,
                eval_every: 10,
                meta_lr: 0.05,
                free_steps: 200,
                nudged_steps: 50,
                step_size: 0.2,
                initial_decay: 1e-3,
                beta: 0.5,
                grid: vec![1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
            }
        })
    }

    fn phase(&self, steps: usize) -> GdParams {
        GdParams {
            step_size: Some(self.step_size),
            max_steps: steps,
            ..GdParams::default()
        }
    }

    pub fn estimators(&self) -> Vec<(&'static str, EstimatorSpec)> {
        decay_estimators(
            Contrastive {
                variant: Variant::Standard,
                beta: self.beta,
                free: self.phase(self.free_steps),
                nudged: self.phase(self.nudged_steps),
            },
            20,
            self.step_size,
        )
    }
}

/// Validation cross-entropy during meta-training, and the final test metrics after retraining
/// on training + validation.
#[derive(Debug, Clone, Copy)]
pub struct Final {
    pub validation_ce: f64,
    pub test_ce: f64,
    pub test_accuracy: f64,
}

/// One method's results over seeds.
#[derive(Debug, Clone)]
pub struct MethodResult {
    pub method: String,
    pub per_seed: Vec<Final>,
}

impl MethodResult {
    /// Mean and 95% t-interval half-width over seeds of one metric.
    pub fn stat(&self, metric: impl Fn(&Final) -> f64) -> (f64, f64) {
        seed_mean_ci(&self.per_seed.iter().map(metric).collect::<Vec<_>>())
    }
}

#[derive(Debug, Clone)]
pub struct DigitsDecayResults {
    pub protocol: Protocol,
    pub methods: Vec<MethodResult>,
    /// The single decay chosen on validation, per seed.
    pub chosen_single: Vec<f64>,
}

/// One seed's data: standardised splits and the initial weights.
struct SeedData {
    train: Labelled,
    validation: Labelled,
    test: Labelled,
    phi_init: Vector,
}

fn seed_data(protocol: &Protocol, all: &Labelled, seed: u64) -> Result<SeedData> {
    let s = split(all, protocol.train, protocol.validation, seed)?;
    let st = Standardiser::fit(&s.train)?;
    Ok(SeedData {
        train: st.apply(&s.train),
        validation: st.apply(&s.validation),
        test: st.apply(&s.test),
        phi_init: protocol.net.init(&mut stream(seed, 1)),
    })
}

/// Trains from `phi_init` with strengths `theta` on `train` (the free phase) and returns the
/// weights.
fn fit(
    protocol: &Protocol,
    d: &SeedData,
    train: &Labelled,
    theta: &Vector,
) -> Result<(DecayClassifier, candle_core::Tensor)> {
    let p = DecayClassifier::new(
        protocol.net.clone(),
        train.clone(),
        d.validation.clone(),
        &d.phi_init,
        theta,
    )?;
    let t = to_tensor(theta)?;
    let phi = protocol
        .phase(protocol.free_steps)
        .solve(
            &Oracle::new(&p),
            &Phase::new(&p.initial_phi(&t)?, &t, 0.0, "adaptation"),
        )?
        .phi;
    Ok((p, phi))
}

/// Validation and test cross-entropy after training on the training rows with `theta`.
fn curve_point(protocol: &Protocol, d: &SeedData, theta: &Vector) -> Result<(f64, f64)> {
    let (p, phi) = fit(protocol, d, &d.train, theta)?;
    let test = Part::new(d.test.clone(), classes(protocol))?;
    Ok((
        p.validation.cross_entropy(&p.net, &phi)?.to_scalar::<f64>()?,
        test.cross_entropy(&p.net, &phi)?.to_scalar::<f64>()?,
    ))
}

fn classes(protocol: &Protocol) -> usize {
    *protocol.net.sizes.last().expect("an output layer")
}

/// Validation cross-entropy after training on the training rows with `theta`.
fn validation_ce(protocol: &Protocol, d: &SeedData, theta: &Vector) -> Result<f64> {
    Ok(curve_point(protocol, d, theta)?.0)
}

/// The final protocol: retrain on training + validation with `theta`, measure on test.
fn finish(protocol: &Protocol, d: &SeedData, theta: &Vector) -> Result<Final> {
    let validation_ce = validation_ce(protocol, d, theta)?;
    let (p, phi) = fit(protocol, d, &d.train.concat(&d.validation), theta)?;
    let test = crate::digits::decay_classifier::Part::new(
        d.test.clone(),
        *protocol.net.sizes.last().expect("sizes"),
    )?;
    Ok(Final {
        validation_ce,
        test_ce: test.cross_entropy(&p.net, &phi)?.to_scalar::<f64>()?,
        test_accuracy: test.accuracy(&p.net, &phi)?,
    })
}

pub fn run(settings: &Settings, files: &mut Vec<PathBuf>) -> Result<DigitsDecayResults> {
    let protocol = Protocol::new(settings.quick())?;
    let all = load_digits()?;
    let seeds: Vec<u64> = (0..protocol.seeds as u64)
        .map(|s| hash_words(&[settings.seed, 52, s]))
        .collect();
    let data: Vec<SeedData> = seeds
        .iter()
        .map(|&s| seed_data(&protocol, &all, s))
        .collect::<Result<_>>()?;
    let n = protocol.net.param_count();
    let theta0 = Vector::from_element(n, protocol.initial_decay.ln());
    let estimators = protocol.estimators();
    let units: Vec<(usize, usize)> = (0..estimators.len())
        .flat_map(|e| (0..data.len()).map(move |s| (e, s)))
        .collect();
    // Per (estimator, seed): the validation curve and the learned strengths.
    let runs = map_in_order(&units, |&(e, s)| {
        let d = &data[s];
        let mut curve = vec![(0, curve_point(&protocol, d, &theta0)?)];
        let mut run = MetaExecutor::new(theta0.clone(), protocol.meta_lr);
        run.run(
            protocol.meta_steps,
            OnFailure::Error,
            |_, theta| {
                let p = DecayClassifier::new(
                    protocol.net.clone(),
                    d.train.clone(),
                    d.validation.clone(),
                    &d.phi_init,
                    theta,
                )?;
                Ok((estimators[e].1.estimator().estimate(&p, p.theta())?.gradient, ()))
            },
            |run, ()| {
                if run.step % protocol.eval_every == 0 || run.step == protocol.meta_steps {
                    curve.push((run.step, curve_point(&protocol, d, &run.theta)?));
                }
                Ok(Flow::Continue)
            },
        )?;
        let theta = run.theta;
        Ok((curve, finish(&protocol, d, &theta)?))
    })?;
    // Baselines per seed: the initial decay, and the best single decay chosen on validation.
    let baselines = map_in_order(&data, |d| {
        let fixed = finish(&protocol, d, &theta0)?;
        let mut best = (f64::INFINITY, protocol.grid[0]);
        for &decay in &protocol.grid {
            let v = validation_ce(&protocol, d, &Vector::from_element(n, decay.ln()))?;
            if v < best.0 {
                best = (v, decay);
            }
        }
        Ok((
            fixed,
            finish(&protocol, d, &Vector::from_element(n, best.1.ln()))?,
            best.1,
        ))
    })?;

    let mut methods = vec![
        MethodResult {
            method: format!("fixed decay {}", protocol.initial_decay),
            per_seed: baselines.iter().map(|b| b.0).collect(),
        },
        MethodResult {
            method: "best single decay (grid, chosen on validation)".into(),
            per_seed: baselines.iter().map(|b| b.1).collect(),
        },
    ];
    let mut curve_rows = Vec::new();
    let panel = |what: &str| {
        Panel::new(
            format!("per-parameter weight decay, digits: {what}"),
            "meta-step",
            format!("{what} cross-entropy (mean over seeds)"),
            false,
            false,
        )
    };
    let (mut validation, mut test) = (panel("validation"), panel("test"));
    type Run = (Vec<(usize, (f64, f64))>, Final);
    for (e, (name, _)) in estimators.iter().enumerate() {
        let of_e: Vec<&Run> = units
            .iter()
            .zip(&runs)
            .filter(|((ei, _), _)| *ei == e)
            .map(|(_, r)| r)
            .collect();
        methods.push(MethodResult {
            method: name.to_string(),
            per_seed: of_e.iter().map(|r| r.1).collect(),
        });
        let (mut v_points, mut t_points) = (Vec::new(), Vec::new());
        for (k, &(step, _)) in of_e[0].0.iter().enumerate() {
            let values: Vec<(f64, f64)> = of_e.iter().map(|r| r.0[k].1).collect();
            for (s, (v, t)) in values.iter().enumerate() {
                curve_rows.push(format!("{name},{s},{step},{v:e},{t:e}"));
            }
            let n = values.len() as f64;
            v_points.push((step as f64, values.iter().map(|x| x.0).sum::<f64>() / n));
            t_points.push((step as f64, values.iter().map(|x| x.1).sum::<f64>() / n));
        }
        validation
            .series
            .push(Series::new(*name, v_points, e, Style::LinePoints));
        test.series
            .push(Series::new(*name, t_points, e, Style::LinePoints));
    }
    let flat = |v: f64| vec![(0.0, v), (protocol.meta_steps as f64, v)];
    // Short legend labels, so the legend stays beside the plot.
    for (i, (m, label)) in methods[..2]
        .iter()
        .zip(["fixed decay", "best single decay"])
        .enumerate()
    {
        validation.series.push(Series::new(
            label,
            flat(m.stat(|f| f.validation_ce).0),
            5 + i,
            Style::Dashed,
        ));
    }
    write_csv(
        &settings.out.join("digits_decay_curves.csv"),
        "estimator,seed,meta_step,validation_cross_entropy,test_cross_entropy",
        &curve_rows,
        files,
    )?;
    let mut final_rows = Vec::new();
    for m in &methods {
        for (s, f) in m.per_seed.iter().enumerate() {
            final_rows.push(format!(
                "{},{s},{:e},{:e},{:e}",
                m.method, f.validation_ce, f.test_ce, f.test_accuracy
            ));
        }
    }
    write_csv(
        &settings.out.join("digits_decay.csv"),
        "method,seed,validation_cross_entropy,test_cross_entropy,test_accuracy",
        &final_rows,
        files,
    )?;
    save(
        settings,
        "digits_decay",
        &Figure {
            panels: vec![validation, test],
            columns: 2,
        },
        files,
    )?;
    let results = DigitsDecayResults {
        protocol,
        methods,
        chosen_single: baselines.iter().map(|b| b.2).collect(),
    };
    write_table(settings, "digits_decay.md", &table(&results), files)?;
    Ok(results)
}

/// Test accuracy and cross-entropy per method, mean +- 95% t-interval over seeds.
pub fn table(r: &DigitsDecayResults) -> String {
    let p = &r.protocol;
    let mut t = format!(
        "# Per-parameter weight decay of a digit classifier\n\n\
         Generated by `cml figures`: network {} (tanh, softmax cross-entropy, {} parameters, one decay strength each),\n\
         {} training / {} validation / {} test images per seed (standardised on the training images), {} seeds.\n\
         {} meta-steps of Adam (lr {}) on the validation cross-entropy after {} gradient steps of size {}; then every\n\
         method retrains on training + validation with its strengths and is tested. Mean +- 95% t-interval over\n\
         seeds. Best single decay chosen per seed: {:?}.\n\n\
         | method | test accuracy | test cross-entropy | validation cross-entropy |\n|---|---|---|---|\n",
        p.net
            .sizes
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("-"),
        p.net.param_count(),
        p.train,
        p.validation,
        1797 - p.train - p.validation,
        p.seeds,
        p.meta_steps,
        p.meta_lr,
        p.free_steps,
        p.step_size,
        r.chosen_single
    );
    for m in &r.methods {
        let (a, ac) = m.stat(|f| f.test_accuracy);
        let (c, cc) = m.stat(|f| f.test_ce);
        let (v, vc) = m.stat(|f| f.validation_ce);
        t.push_str(&format!(
            "| {} | {:.2}% +- {:.2}% | {:.4} +- {:.4} | {:.4} +- {:.4} |\n",
            m.method,
            100.0 * a,
            100.0 * ac,
            c,
            cc,
            v,
            vc
        ));
    }
    t
}
