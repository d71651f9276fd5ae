//! How wrong a contrastive estimate is, estimated from the estimate's own phases, and the
//! nudging strength chosen to make it small (`--beta auto`). docs/ERROR_BAR.md derives both and
//! says when they fail.
//!
//! The error of the estimate at `beta` splits as in MATH.md §3 into a truncation part (the
//! stencil's finite-difference error with exact phases, `~ a |beta|^p`) and a phase-precision
//! part (each phase's end point `phi^_b` is off its solution by `delta_b`, which moves
//! `g(b) = d_theta L_b(phi^_b)` by at most `||d2_{theta phi} L_b|| delta_b`). The bar is
//!
//! `bar = SAFETY ||est(2 beta) - est(beta)|| / (2^p - 1) + sum_k |w_k| K_k delta_k / |beta|`,
//!
//! Richardson's estimate of the truncation part (first derivatives only: the stencil again at
//! `2 beta`), with a safety factor, plus the phase-precision bound with `K_k` and `delta_k`
//! measured at each phase's end point.

use super::contrastive::PhaseRuns;
use super::{Contrastive, Estimate, EstimatorSpec, MetaGradientEstimator, Stage};
use crate::error::{CmlError, Result};
use crate::linalg::Vector;
use crate::oracle::{Cost, Oracle};
use crate::problem::BilevelProblem;
use crate::smoothness;
use candle_core::Tensor;

/// The Richardson difference estimates the truncation error to leading order; the factor covers
/// the next order and noise that happens to cancel it (docs/ERROR_BAR.md §2).
pub const RICHARDSON_SAFETY: f64 = 2.0;

/// Where a phase's distance to its solution came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DistanceSource {
    /// `||grad|| / mu` with the problem's own strong-convexity bound: a certificate.
    Certified,
    /// `||grad|| / mu^` with `mu^` the smallest Ritz value of the phase Hessian at the end point
    /// (Lanczos): an estimate, first order in the distance.
    Lanczos,
    /// The phase Hessian at the end point has a non-positive eigenvalue (Lanczos): the end point
    /// is no certified neighbourhood of a strict minimum, and the bar is unbounded.
    NotPositiveDefinite,
}

/// One phase of the stencil: how far it may be from its solution and how much that moves `g`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PhaseDistance {
    /// The strength the phase ran with.
    pub beta: f64,
    /// Its stencil weight `w_k`.
    pub weight: f64,
    pub grad_norm: f64,
    /// `mu` (certified) or `mu^` (Lanczos).
    pub strong_convexity: f64,
    pub source: DistanceSource,
    /// `delta_k = ||grad|| / mu` (infinite when not positive definite).
    pub distance: f64,
    /// `K_k = ||d2_{theta phi} L_b||` at the end point (power iteration).
    pub mixed_norm: f64,
}

/// The error bar of one contrastive estimate.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ErrorBar {
    /// The estimate's nudging strength.
    pub beta: f64,
    /// `truncation + phase_precision`: the estimated bound on `||estimate - dJ/dtheta||`
    /// (infinite when a phase's distance is unbounded).
    pub bar: f64,
    /// `truncation_scale * RICHARDSON_SAFETY * richardson_gap / (2^p - 1)`.
    pub truncation: f64,
    /// The factor the truncation part was scaled by beyond Richardson's safety factor: 1 as
    /// computed, more after [`ErrorBar::with_truncation_scaled`].
    pub truncation_scale: f64,
    /// `||est(2 beta) - est(beta)||`.
    pub richardson_gap: f64,
    /// `p`: the truncation error's order in `beta`.
    pub order: i32,
    /// `sum_k |w_k| K_k delta_k / |beta|`.
    pub phase_precision: f64,
    pub phases: Vec<PhaseDistance>,
    /// Gradient evaluations and second-order products spent on the bar (and the pilots of
    /// `--beta auto`) beyond the estimate itself.
    pub extra_cost: Cost,
    /// Wall-clock seconds spent on the bar beyond the estimate (with `--beta auto`: on every
    /// pilot's bar and phase-noise estimate; the pilots' own phases count as the estimate's).
    pub seconds: f64,
    /// The pilot rounds of `--beta auto`, when `beta` was chosen.
    pub auto_beta: Option<Vec<PilotRound>>,
}

impl ErrorBar {
    /// The bar with its truncation part scaled by `scale` (at least 1): `truncation` and `bar`
    /// grow, the phase-precision part stays. The error-bar job measures how often each scale
    /// covers the true error (docs/ERROR_BAR.md §5: the bar as computed covered 334 of 340 fresh
    /// instances, its truncation part scaled by 2.5 all 340). An error for a scale below 1 or not
    /// finite: that would shrink the bar below what the derivation supports.
    pub fn with_truncation_scaled(self, scale: f64) -> Result<Self> {
        check_truncation_scale(scale)?;
        let truncation = scale * self.truncation;
        Ok(ErrorBar {
            bar: scaled_bar(self.truncation, self.phase_precision, scale),
            truncation,
            truncation_scale: scale * self.truncation_scale,
            ..self
        })
    }

    /// One line: the bar, its parts and where the distances came from.
    pub fn describe(&self) -> String {
        let sources: Vec<&str> = self
            .phases
            .iter()
            .map(|p| match p.source {
                DistanceSource::Certified => "certified",
                DistanceSource::Lanczos => "Lanczos",
                DistanceSource::NotPositiveDefinite => "not positive definite",
            })
            .collect();
        let bar = if self.bar.is_finite() {
            format!("{:.3e}", self.bar)
        } else {
            "unbounded".into()
        };
        format!(
            "{bar} = truncation {:.3e} (Richardson, beta vs 2 beta, x{}) + phase precision {:.3e} \
             (distances: {})",
            self.truncation,
            RICHARDSON_SAFETY * self.truncation_scale,
            self.phase_precision,
            sources.join(", ")
        )
    }
}

/// A bar whose truncation part is scaled by `scale`: `scale * truncation + phase_precision` (the
/// error-bar job's coverage table and [`ErrorBar::with_truncation_scaled`] both use it).
pub fn scaled_bar(truncation: f64, phase_precision: f64, scale: f64) -> f64 {
    scale * truncation + phase_precision
}

/// An error unless `scale` is a finite factor of at least 1 (see
/// [`ErrorBar::with_truncation_scaled`]).
pub fn check_truncation_scale(scale: f64) -> Result<()> {
    if scale.is_finite() && scale >= 1.0 {
        return Ok(());
    }
    Err(CmlError::invalid(
        "error-bar truncation scale",
        scale,
        "a finite factor of at least 1 (1: the bar as computed; the error-bar job's fresh instances tested 2.5, \
         docs/ERROR_BAR.md section 5)",
    ))
}

fn cost_since(now: Cost, before: Cost) -> Cost {
    Cost {
        gradient_evaluations: now.gradient_evaluations - before.gradient_evaluations,
        second_order_products: now.second_order_products - before.second_order_products,
        floats_kept: now.floats_kept,
    }
}

/// The error bar of `estimate`, the stencil of `runs` at `beta` (docs/ERROR_BAR.md §1-3); runs
/// the stencil's phases at `2 beta` it still needs.
pub fn error_bar_at(runs: &mut PhaseRuns, beta: f64, estimate: &Vector) -> Result<ErrorBar> {
    let variant = runs.rule().variant;
    let order = variant.truncation_order();
    if order == 0 {
        return Err(CmlError::invalid(
            "contrastive variant",
            variant.name(),
            "an error bar needs a truncation error that vanishes with beta; the reference code's ablation is \
             biased by -F'(0)/2 at every beta",
        ));
    }
    let (before, clock) = (runs.oracle().cost(), std::time::Instant::now());
    let doubled = runs.estimate(2.0 * beta)?;
    let richardson_gap = (&doubled - estimate).norm();
    let truncation = RICHARDSON_SAFETY * richardson_gap / (2f64.powi(order) - 1.0);
    let mut phases = Vec::new();
    for &(multiple, weight) in variant.stencil() {
        phases.push(phase_distance(runs, multiple * beta, weight)?);
    }
    let phase_precision = phases
        .iter()
        .map(|p| p.weight.abs() * p.mixed_norm * p.distance)
        .sum::<f64>()
        / beta.abs();
    Ok(ErrorBar {
        beta,
        bar: truncation + phase_precision,
        truncation,
        truncation_scale: 1.0,
        richardson_gap,
        order,
        phase_precision,
        phases,
        extra_cost: cost_since(runs.oracle().cost(), before),
        seconds: clock.elapsed().as_secs_f64(),
        auto_beta: None,
    })
}

/// `delta_k` and `K_k` at the end point of the stencil's phase at `b`.
fn phase_distance(runs: &mut PhaseRuns, b: f64, weight: f64) -> Result<PhaseDistance> {
    let (oracle, theta) = (runs.oracle(), runs.theta());
    let solution = runs.solution(b)?;
    let (phi, run, grad_norm) = (solution.phi.clone(), solution.info.beta, solution.info.grad_norm);
    let certified = oracle
        .problem()
        .curvature(theta, run)?
        .map(|c| c.strong_convexity)
        .filter(|&mu| mu > 0.0);
    let (strong_convexity, source) = match certified {
        Some(mu) => (mu, DistanceSource::Certified),
        None => {
            let lowest = smoothness::smallest_curvature(oracle, &phi, theta, run)?;
            if lowest.value > 0.0 {
                (lowest.value, DistanceSource::Lanczos)
            } else {
                (lowest.value, DistanceSource::NotPositiveDefinite)
            }
        }
    };
    let distance = match source {
        DistanceSource::NotPositiveDefinite => f64::INFINITY,
        _ => grad_norm / strong_convexity,
    };
    let mixed_norm = smoothness::mixed_norm(oracle, &phi, theta, run)?;
    Ok(PhaseDistance {
        beta: run,
        weight,
        grad_norm,
        strong_convexity,
        source,
        distance,
        mixed_norm,
    })
}

/// Conjugate-gradient steps at most for the Newton step `H^{-1} grad` of [`phase_noise`].
pub const NOISE_CG_STEPS: usize = 50;

/// A first-order estimate (not a bound) of what the phases' inexactness actually adds to the
/// estimate at `beta`: `||sum_k w_k M_k e_k|| / |beta|` with `e_k = H_k^{-1} grad_k` the Newton
/// step at each phase's end point (CG on Hessian-vector products) and `M_k` the mixed matrix there
/// (docs/ERROR_BAR.md §4). Unlike the bound it keeps the signs, so phase errors that cancel
/// between phases count as cancelled. `None` where CG meets non-positive curvature.
pub fn phase_noise(runs: &mut PhaseRuns, beta: f64) -> Result<Option<f64>> {
    let variant = runs.rule().variant;
    let (oracle, theta) = (runs.oracle(), runs.theta());
    let mut total: Option<Vector> = None;
    for &(multiple, weight) in variant.stencil() {
        let solution = runs.solution(multiple * beta)?;
        let (phi, run) = (solution.phi.clone(), solution.info.beta);
        let grad = crate::linalg::to_dvector(&solution.gradients.phi)?;
        let steps = NOISE_CG_STEPS.min(grad.len());
        let matvec = |v: &Vector| -> Result<Vector> {
            crate::linalg::to_dvector(&oracle.phase_hvp(&phi, theta, run, &crate::linalg::to_tensor(v)?)?)
        };
        let (step, info) = crate::linear_solve::conjugate_gradient(matvec, &grad, steps)?;
        if info.warning.is_some() {
            return Ok(None);
        }
        let moved = crate::linalg::to_dvector(&oracle.phase_mixed_product(
            &phi,
            theta,
            run,
            &crate::linalg::to_tensor(&step)?,
        )?)? * weight;
        total = Some(match total {
            Some(t) => t + moved,
            None => moved,
        });
    }
    Ok(total.map(|t| t.norm() / beta.abs()))
}

/// Why a contrastive estimate of `spec` on `problem` gets no error bar, if it gets none: the one
/// place that decides, so no combination of options reaches the bar's refusal by default.
/// `None` also for the estimators that are not contrastive (no bar is expected of them).
/// `--beta auto` computes its bars itself (and is refused where they cannot exist).
pub fn no_error_bar(spec: &EstimatorSpec, problem: &dyn BilevelProblem) -> Option<String> {
    let EstimatorSpec::Contrastive(c) = spec else {
        return None;
    };
    if !c.has_error_bar() {
        return Some(
            "no error bar: this variant is biased at every beta (its truncation error does not vanish with beta), \
             so Richardson extrapolation cannot bound it"
                .into(),
        );
    }
    problem.surrogate_derivative().map(|reason| {
        format!(
            "no error bar: it needs second-order products of the inner loss, and on this problem {reason}"
        )
    })
}

/// The estimate of `spec`, with its error bar when `with_bar` asks for one and [`no_error_bar`]
/// gives no reason against it, the bar's truncation part scaled by `truncation_scale` (1: as
/// computed; [`ErrorBar::with_truncation_scaled`]). `cml grad` and `cml sweep` both estimate here,
/// so that their `--error-bar-scale` means the same.
pub fn estimate_with_error_bar_if_any(
    spec: &EstimatorSpec,
    problem: &dyn BilevelProblem,
    theta: &Tensor,
    with_bar: bool,
    truncation_scale: f64,
) -> Result<Estimate> {
    check_truncation_scale(truncation_scale)?;
    let mut estimate = match spec {
        EstimatorSpec::Contrastive(c) if with_bar && no_error_bar(spec, problem).is_none() => {
            estimate_with_error_bar(c, problem, theta)?
        }
        _ => spec.estimator().estimate(problem, theta)?,
    };
    estimate.error_bar = estimate
        .error_bar
        .map(|b| b.with_truncation_scaled(truncation_scale))
        .transpose()?;
    Ok(estimate)
}

/// The contrastive estimate of `rule` at its `beta`, with its error bar in
/// [`Estimate::error_bar`]. The estimate's cost is its own; the bar's is in
/// [`ErrorBar::extra_cost`], and its phases at `2 beta` follow the estimate's in the report.
pub fn estimate_with_error_bar(
    rule: &Contrastive,
    problem: &dyn BilevelProblem,
    theta: &Tensor,
) -> Result<Estimate> {
    rule.validate()?;
    let oracle = Oracle::with_engine(problem, rule.free.engine);
    let mut runs = PhaseRuns::start(rule, &oracle, theta)?;
    let gradient = runs.estimate(rule.beta)?;
    let cost = oracle.cost();
    let bar = error_bar_at(&mut runs, rule.beta, &gradient)?;
    let mut estimate = runs.finish(gradient, cost);
    estimate.error_bar = Some(bar);
    Ok(estimate)
}

/// Where `--beta auto` starts: a pilot strength; the rounds move it by up to [`MAX_MOVE`] each.
pub const AUTO_START: f64 = 1e-2;
/// The largest factor one pilot round moves `beta` by.
pub const MAX_MOVE: f64 = 1e3;
/// Pilots stop once the next is within this factor of one already run.
pub const STOP_FACTOR: f64 = 1.25;
/// Meta-training re-chooses `beta` every this many meta-steps by default.
pub const AUTO_RECHOOSE_EVERY: usize = 50;
/// Pilot rounds at most.
pub const AUTO_ROUNDS: usize = 5;

/// One pilot of `--beta auto`: the bar at one `beta`, or why the phases failed there.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PilotRound {
    pub beta: f64,
    pub bar: Option<f64>,
    pub truncation: Option<f64>,
    pub phase_precision: Option<f64>,
    /// [`phase_noise`]: the phase errors' estimated actual contribution.
    pub phase_noise: Option<f64>,
    /// What the choice minimises: `richardson_gap / (2^p - 1) + phase_noise` (the bar where the
    /// noise estimate is unavailable).
    pub estimated_error: Option<f64>,
    pub failure: Option<String>,
}

/// The contrastive rule with `beta` chosen to minimise its error bar (docs/ERROR_BAR.md §4).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct AutoBeta {
    /// The rule; its `beta` is the first pilot.
    pub rule: Contrastive,
    pub rounds: usize,
    /// Meta-training: choose `beta` again every this many meta-steps, on the meta-batch's first
    /// task; between choices every task runs the rule at the last chosen `beta`.
    pub rechoose_every: usize,
}

impl AutoBeta {
    /// Its registry name.
    pub const NAME: &'static str = "contrastive-auto";

    pub fn new(rule: Contrastive) -> Self {
        AutoBeta {
            rule: Contrastive {
                beta: AUTO_START,
                ..rule
            },
            rounds: AUTO_ROUNDS,
            rechoose_every: AUTO_RECHOOSE_EVERY,
        }
    }

    /// The rule at a chosen strength.
    pub fn at(&self, beta: f64) -> Contrastive {
        Contrastive { beta, ..self.rule }
    }

    pub fn validate(&self) -> Result<()> {
        self.rule.validate()?;
        if self.rounds == 0 {
            return Err(CmlError::invalid("auto-beta rounds", 0, "at least 1 pilot round"));
        }
        if self.rechoose_every == 0 {
            return Err(CmlError::invalid(
                "beta-every",
                0,
                "beta auto is chosen again every N >= 1 meta-steps",
            ));
        }
        if self.rule.variant.truncation_order() == 0 {
            return Err(CmlError::invalid(
                "contrastive variant",
                self.rule.variant.name(),
                "beta auto minimises an error bar, which the reference code's ablation (biased at every beta) \
                 does not have; use standard, symmetric or second-order-forward",
            ));
        }
        Ok(())
    }
}

/// The next pilot: the minimiser of `T (beta / beta_k)^p + D beta_k / beta`, the bar's parts at
/// `beta_k` extrapolated (truncation `~ beta^p`, phase precision `~ 1 / beta` with the distances
/// held fixed), moved by at most [`MAX_MOVE`].
pub fn next_pilot(beta: f64, truncation: f64, phase_precision: f64, order: i32) -> f64 {
    let factor = if truncation == 0.0 {
        MAX_MOVE
    } else if phase_precision == 0.0 {
        1.0 / MAX_MOVE
    } else {
        (phase_precision / (f64::from(order) * truncation)).powf(1.0 / f64::from(order + 1))
    };
    beta * factor.clamp(1.0 / MAX_MOVE, MAX_MOVE)
}

impl MetaGradientEstimator for AutoBeta {
    fn name(&self) -> &'static str {
        AutoBeta::NAME
    }

    /// The pilots' strengths are found as it runs: listed are the first pilot's phases.
    fn stages(&self) -> Vec<Stage> {
        let mut stages = self.rule.phase_stages(self.rule.beta);
        stages.push(Stage::ErrorBar);
        stages
    }

    fn has_error_bar(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("contrastive {} (beta = auto)", self.rule.variant.name())
    }

    fn estimate(&self, problem: &dyn BilevelProblem, theta: &Tensor) -> Result<Estimate> {
        self.validate()?;
        let oracle = Oracle::with_engine(problem, self.rule.free.engine);
        let mut runs = PhaseRuns::start(&self.rule, &oracle, theta)?;
        let mut pilots: Vec<PilotRound> = Vec::new();
        // The best pilot so far: its estimate, bar and estimated error.
        let mut best: Option<(Vector, ErrorBar, f64)> = None;
        let mut first_failure = None;
        let mut beta = self.rule.beta;
        let mut bar_seconds = 0.0;
        for _ in 0..self.rounds {
            let round = runs.estimate(beta).and_then(|est| {
                let clock = std::time::Instant::now();
                let bar = error_bar_at(&mut runs, beta, &est)?;
                let noise = if bar.bar.is_finite() {
                    phase_noise(&mut runs, beta)?
                } else {
                    None
                };
                bar_seconds += clock.elapsed().as_secs_f64();
                Ok((est, bar, noise))
            });
            let next = match round {
                Ok((est, bar, noise)) => {
                    // The point estimate of the error the choice minimises: the truncation part
                    // without its safety factor, plus the phase errors' estimated contribution
                    // (the bound's part where CG met negative curvature).
                    let truncation = bar.richardson_gap / (2f64.powi(bar.order) - 1.0);
                    let precision = noise.unwrap_or(bar.phase_precision);
                    let estimated = truncation + precision;
                    pilots.push(PilotRound {
                        beta,
                        bar: Some(bar.bar),
                        truncation: Some(bar.truncation),
                        phase_precision: Some(bar.phase_precision),
                        phase_noise: noise,
                        estimated_error: Some(estimated),
                        failure: None,
                    });
                    // An unbounded phase-precision part is unbounded at every beta.
                    let stop = !bar.bar.is_finite();
                    let next = match &best {
                        // Worse than the best pilot: the extrapolation from here is not to be
                        // trusted; bisect (in log beta) towards the best instead.
                        Some((_, b, e)) if estimated >= *e => (beta * b.beta).sqrt(),
                        _ => next_pilot(beta, truncation, precision, bar.order),
                    };
                    if best.as_ref().is_none_or(|(_, _, e)| estimated < *e) {
                        best = Some((est, bar, estimated));
                    }
                    if stop {
                        break;
                    }
                    next
                }
                // A pilot too strong for the phases to converge: try weaker nudging.
                Err(e @ CmlError::Diverged { .. }) => {
                    pilots.push(PilotRound {
                        beta,
                        bar: None,
                        truncation: None,
                        phase_precision: None,
                        phase_noise: None,
                        estimated_error: None,
                        failure: Some(e.to_string()),
                    });
                    first_failure.get_or_insert(e);
                    beta / 10.0
                }
                Err(e) => return Err(e),
            };
            // Converged: the next pilot is within a factor 1.25 of one already run (near the
            // optimum the estimated error changes by under 5% over that factor; docs/ERROR_BAR.md §4).
            if pilots
                .iter()
                .any(|p| (next / p.beta).abs().ln().abs() < STOP_FACTOR.ln())
            {
                break;
            }
            beta = next;
        }
        let Some((gradient, mut bar, _)) = best else {
            return Err(first_failure.expect("every round failed, so one failure was kept"));
        };
        // The pilots beyond the chosen estimate's own phases are the price of choosing.
        let chosen_phases = runs.stencil_gradient_evaluations(bar.beta);
        let total = oracle.cost();
        bar.extra_cost = Cost {
            gradient_evaluations: total.gradient_evaluations - chosen_phases,
            ..total
        };
        bar.seconds = bar_seconds;
        bar.auto_beta = Some(pilots);
        let mut estimate = runs.finish(gradient, total);
        estimate.error_bar = Some(bar);
        Ok(estimate)
    }
}
