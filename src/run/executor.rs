//! The meta-training executor: the one outer loop of the crate, in the style of argmin's
//! executor. The caller supplies the meta-gradient of a meta-step (`estimate`) and watches the
//! run (`observe`); the executor owns `theta`, the one Adam and the step count, checks every
//! estimate, and applies the divergence policy. Sinusoid training (`cml train`), the bandit and
//! few-shot digit jobs and both weight-decay jobs all run through it, so a checkpoint (theta,
//! Adam's moments, the step) means the same thing everywhere.

use crate::adam::Adam;
use crate::error::{CmlError, Result};
use crate::linalg::Vector;

/// What the executor does when a meta-step's estimate fails (an error, e.g. an inner phase that
/// diverged) or is not finite. Either way the update is not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Return the error, naming the meta-step.
    Error,
    /// End the run there with [`Ending::Failed`] (theta of the last completed step kept).
    Stop,
}

/// What an observer asks for after a meta-step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// Every meta-step ran.
    Completed,
    /// The observer asked to stop after this meta-step.
    Stopped { step: usize },
    /// This meta-step's estimate failed (only with [`OnFailure::Stop`]).
    Failed { step: usize, reason: String },
}

/// The state of a meta-training run: everything needed to continue it exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaExecutor {
    pub theta: Vector,
    pub adam: Adam,
    /// Meta-steps completed.
    pub step: usize,
}

impl MetaExecutor {
    /// A fresh run from `theta0` with Adam of step size `meta_lr` (candle-nn's defaults otherwise).
    pub fn new(theta0: Vector, meta_lr: f64) -> Self {
        let adam = Adam::new(meta_lr, theta0.len());
        MetaExecutor {
            theta: theta0,
            adam,
            step: 0,
        }
    }

    /// A run continued from a checkpoint after `step` completed meta-steps.
    pub fn resume(theta: Vector, adam: Adam, step: usize) -> Self {
        MetaExecutor { theta, adam, step }
    }

    /// Runs meta-steps `step + 1 ..= meta_steps`. Each calls `estimate(step, theta)` for the
    /// meta-gradient and whatever the caller logs beside it, updates theta with Adam, then calls
    /// `observe(self, logged)`, which may stop the run.
    pub fn run<E>(
        &mut self,
        meta_steps: usize,
        on_failure: OnFailure,
        mut estimate: impl FnMut(usize, &Vector) -> Result<(Vector, E)>,
        mut observe: impl FnMut(&Self, E) -> Result<Flow>,
    ) -> Result<Ending> {
        for step in self.step + 1..=meta_steps {
            let estimated = estimate(step, &self.theta).and_then(|(gradient, logged)| {
                if gradient.iter().all(|g| g.is_finite()) {
                    Ok((gradient, logged))
                } else {
                    Err(CmlError::invalid(
                        "meta-gradient estimate",
                        "non-finite",
                        "finite values",
                    ))
                }
            });
            let (gradient, logged) = match (estimated, on_failure) {
                (Ok(e), _) => e,
                (Err(e), OnFailure::Error) => {
                    return Err(CmlError::MetaStep {
                        step,
                        source: Box::new(e),
                    });
                }
                (Err(e), OnFailure::Stop) => {
                    return Ok(Ending::Failed {
                        step,
                        reason: e.to_string(),
                    });
                }
            };
            self.adam.update(&mut self.theta, &gradient);
            self.step = step;
            if observe(self, logged)? == Flow::Stop {
                return Ok(Ending::Stopped { step });
            }
        }
        Ok(Ending::Completed)
    }
}

/// A meta-training run evaluated at its checkpoints ([`run_evaluated`]).
#[derive(Debug, Clone)]
pub struct Evaluated<E> {
    /// (meta-step, evaluation, theta) at meta-step 0 (the initialisation), every `every`
    /// meta-steps and the last, in order.
    pub points: Vec<(usize, E, Vector)>,
    /// Why the run ended early, naming the meta-step (only with [`OnFailure::Stop`]).
    pub failed: Option<String>,
}

/// A fresh run of `meta_steps` from `theta0` with Adam at `meta_lr`, `gradient(theta)` giving each
/// meta-step's estimate, evaluated by `evaluate(theta)` at its initialisation, every `every`
/// meta-steps and the last. Under [`OnFailure::Stop`] an evaluation that fails after a meta-step
/// (strengths whose training loop diverges) ends the run as failed, like an estimate that fails;
/// the initialisation's evaluation must succeed.
pub fn run_evaluated<E>(
    theta0: Vector,
    meta_lr: f64,
    meta_steps: usize,
    every: usize,
    on_failure: OnFailure,
    mut gradient: impl FnMut(&Vector) -> Result<Vector>,
    mut evaluate: impl FnMut(&Vector) -> Result<E>,
) -> Result<Evaluated<E>> {
    let mut points = vec![(0, evaluate(&theta0)?, theta0.clone())];
    let mut evaluation_failed = None;
    let ending = MetaExecutor::new(theta0, meta_lr).run(
        meta_steps,
        on_failure,
        |_, theta| Ok((gradient(theta)?, ())),
        |run, ()| {
            if run.step.is_multiple_of(every) || run.step == meta_steps {
                match evaluate(&run.theta) {
                    Ok(e) => points.push((run.step, e, run.theta.clone())),
                    Err(e) if on_failure == OnFailure::Stop => {
                        evaluation_failed = Some(format!("meta-step {}: {e}", run.step));
                        return Ok(Flow::Stop);
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(Flow::Continue)
        },
    )?;
    let failed = match ending {
        Ending::Failed { step, reason } => Some(format!("meta-step {step}: {reason}")),
        _ => evaluation_failed,
    };
    Ok(Evaluated { points, failed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    /// The meta-gradient of `1/2 |theta - c|^2`.
    fn pull(c: f64) -> impl FnMut(usize, &Vector) -> Result<(Vector, ())> {
        move |_, theta| Ok((theta.map(|t| t - c), ()))
    }

    #[test]
    fn the_first_step_moves_every_coordinate_by_the_step_size() {
        // Adam's first step: m_hat = g, v_hat = g^2, so theta moves by lr g / (|g| + eps),
        // with g = theta - c = 2 and -3 here.
        let mut run = MetaExecutor::new(Vector::from_vec(vec![3.0, -2.0]), 0.1);
        let ending = run
            .run(1, OnFailure::Error, pull(1.0), |_, ()| Ok(Flow::Continue))
            .unwrap();
        assert_eq!(ending, Ending::Completed);
        assert_eq!(run.step, 1);
        assert_relative_eq!(run.theta[0], 3.0 - 0.1 * 2.0 / (2.0 + 1e-8), max_relative = 1e-15);
        assert_relative_eq!(
            run.theta[1],
            -2.0 + 0.1 * 3.0 / (3.0 + 1e-8),
            max_relative = 1e-15
        );
    }

    #[test]
    fn a_resumed_run_continues_bit_for_bit() {
        let theta0 = Vector::from_vec(vec![3.0, -2.0, 0.5]);
        let mut whole = MetaExecutor::new(theta0.clone(), 0.05);
        whole
            .run(7, OnFailure::Error, pull(1.0), |_, ()| Ok(Flow::Continue))
            .unwrap();
        let mut first = MetaExecutor::new(theta0, 0.05);
        let stop_at_3 = |run: &MetaExecutor, ()| Ok(if run.step == 3 { Flow::Stop } else { Flow::Continue });
        let ending = first.run(7, OnFailure::Error, pull(1.0), stop_at_3).unwrap();
        assert_eq!(ending, Ending::Stopped { step: 3 });
        let mut resumed = MetaExecutor::resume(first.theta.clone(), first.adam.clone(), first.step);
        let mut seen = Vec::new();
        let ending = resumed
            .run(7, OnFailure::Error, pull(1.0), |run, ()| {
                seen.push(run.step);
                Ok(Flow::Continue)
            })
            .unwrap();
        assert_eq!(ending, Ending::Completed);
        assert_eq!(seen, vec![4, 5, 6, 7]);
        assert_eq!(resumed, whole);
    }

    /// A gradient that turns non-finite at meta-step 3.
    fn nan_at_3(step: usize, theta: &Vector) -> Result<(Vector, ())> {
        let scale = if step == 3 { f64::NAN } else { 1.0 };
        Ok((theta.map(|t| t * scale), ()))
    }

    #[test]
    fn a_failed_estimate_stops_or_errs_without_updating() {
        let theta0 = Vector::from_vec(vec![1.0]);
        let mut two = MetaExecutor::new(theta0.clone(), 0.1);
        two.run(2, OnFailure::Error, nan_at_3, |_, ()| Ok(Flow::Continue))
            .unwrap();

        let mut stop = MetaExecutor::new(theta0.clone(), 0.1);
        let ending = stop
            .run(5, OnFailure::Stop, nan_at_3, |_, ()| Ok(Flow::Continue))
            .unwrap();
        match ending {
            Ending::Failed { step, reason } => {
                assert_eq!(step, 3);
                assert!(reason.contains("non-finite"), "{reason}");
            }
            other => panic!("expected a failure at meta-step 3, got {other:?}"),
        }
        // Theta and Adam stay those of the last completed step.
        assert_eq!(stop, two);

        let mut error = MetaExecutor::new(theta0, 0.1);
        let err = error
            .run(5, OnFailure::Error, nan_at_3, |_, ()| Ok(Flow::Continue))
            .unwrap_err()
            .to_string();
        assert!(err.contains("meta-step 3") && err.contains("non-finite"), "{err}");
        assert_eq!(error, two);
    }

    #[test]
    fn an_evaluated_run_keeps_its_checkpoints_and_a_failed_evaluation_ends_it_under_stop() {
        // 5 meta-steps evaluated every 2: the initialisation, 2, 4 and the last, 5; each point's
        // theta is the executor's after that step (compared with a plain run of as many steps).
        let theta0 = Vector::from_vec(vec![3.0]);
        let run = run_evaluated(
            theta0.clone(),
            0.1,
            5,
            2,
            OnFailure::Error,
            |t| Ok(t.map(|x| x - 1.0)),
            |t| Ok(t[0]),
        )
        .unwrap();
        let steps: Vec<usize> = run.points.iter().map(|p| p.0).collect();
        assert_eq!(steps, vec![0, 2, 4, 5]);
        assert!(run.failed.is_none());
        for (step, value, theta) in &run.points {
            let mut plain = MetaExecutor::new(theta0.clone(), 0.1);
            plain
                .run(*step, OnFailure::Error, pull(1.0), |_, ()| Ok(Flow::Continue))
                .unwrap();
            assert_eq!((theta, *value), (&plain.theta, plain.theta[0]));
        }
        // An evaluation that fails at meta-step 4 ends the run there under Stop, named, with the
        // earlier checkpoints kept; under Error it is the caller's error.
        let failing = |t: &Vector| {
            if t[0] < 2.65 {
                Err(CmlError::invalid("evaluation", "diverged", "a finite loss"))
            } else {
                Ok(t[0])
            }
        };
        // Adam moves theta by about 0.1 a step: 2.8 after 2 steps, 2.6 after 4.
        let stopped = run_evaluated(
            theta0.clone(),
            0.1,
            5,
            2,
            OnFailure::Stop,
            |t| Ok(t.map(|x| x - 1.0)),
            failing,
        )
        .unwrap();
        assert_eq!(stopped.points.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 2]);
        let why = stopped.failed.unwrap();
        assert!(
            why.starts_with("meta-step 4: ") && why.contains("diverged"),
            "{why}"
        );
        assert!(
            run_evaluated(
                theta0,
                0.1,
                5,
                2,
                OnFailure::Error,
                |t| Ok(t.map(|x| x - 1.0)),
                failing
            )
            .is_err()
        );
    }
}
