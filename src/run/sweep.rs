//! Sweeps: a grid of estimator settings run against the exact meta-gradient, one tidy row per
//! run. Grid points run in parallel; rows come out in grid order, and `shard i/n` runs the
//! i-th contiguous block of the grid, so shards concatenate to the full sweep.

use crate::error::{CmlError, Result};
use crate::estimator::error_bar::AUTO_START;
use crate::estimator::{EstimatorParams, EstimatorSpec, Variant};
use crate::ground_truth::{
    distance_to_phase_solution, exact_meta_gradient_at_phase_minimum, reference_free_phase,
};
use crate::implicit_function::implicit_meta_gradient;
use crate::inner::{GdParams, InnerSolver, NewtonParams, Phase};
use crate::linalg::{Vector, cosine, relative_error, to_dvector, to_tensor};
use crate::oracle::Oracle;
use crate::parallel::map_in_order_with_progress;
use crate::problem::ProblemInstance;
pub use crate::registry::ProblemSource;
use crate::rng::{normal_vector, stream};
use candle_core::Tensor;

/// How long the inner phases run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum Budget {
    /// A fixed number of steps for the free and every nudged phase (no early stop).
    Steps(usize),
    /// Run until the gradient norm is at most this (within `max_steps`).
    Tolerance(f64),
    /// No learning: every phase is placed at exactly this distance from its Newton-solved
    /// solution, in an independent random direction (the model of MATH.md §3). Contrastive and
    /// implicit estimators only; cost columns then count the Newton solves.
    Delta(f64),
}

/// Everything a sweep runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SweepConfig {
    /// Where each seed's instance comes from.
    pub problem: ProblemSource,
    pub seeds: Vec<u64>,
    /// The estimators in grid order, each with its parameters; every budget replaces their
    /// phases (see [`EstimatorSpec::with_phases`]). [`EstimatorGrid`] builds them from names.
    pub estimators: Vec<EstimatorSpec>,
    pub budgets: Vec<Budget>,
    /// Inner step size (`None`: `1 / L` where known).
    pub step_size: Option<f64>,
    /// Step cap for tolerance budgets.
    pub max_steps: usize,
    /// Give every contrastive row learnt by phases its error bar (docs/ERROR_BAR.md); the bar's
    /// own cost goes to its columns, not to the estimate's.
    pub error_bars: bool,
    /// The factor the bars' truncation part is scaled by, at least 1 (1: as computed;
    /// [`crate::estimator::error_bar::ErrorBar::with_truncation_scaled`]). Left out of the
    /// effective config at 1, so that configs written before the scale existed read the same.
    #[serde(skip_serializing_if = "is_one")]
    pub error_bar_scale: f64,
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

/// Estimators named as on the command line, expanded into [`EstimatorSpec`] values in a fixed
/// order: per name, the contrastive rule one per variant and beta (variants outer), `--beta
/// auto` one per variant, an estimator with solver steps (CG, Neumann, truncated BPTT) one per
/// count, any other one.
///
/// ```
/// use cml::estimator::Variant;
/// use cml::sweep::EstimatorGrid;
///
/// let grid = EstimatorGrid {
///     names: vec!["contrastive".into(), "cg".into(), "t1t2".into()],
///     variants: vec![Variant::Standard, Variant::Symmetric],
///     betas: vec![1e-3, 1e-2],
///     solver_steps: vec![5, 20],
///     neumann_alpha: None,
/// };
/// let specs = grid.specs()?;
/// let names: Vec<&str> = specs.iter().map(|s| s.estimator().name()).collect();
/// // 2 variants x 2 betas, then one CG per solver-step count, then T1-T2.
/// assert_eq!(names, ["contrastive"; 4].into_iter().chain(["cg", "cg", "t1t2"]).collect::<Vec<_>>());
/// assert_eq!(specs[5].solver_steps(), Some(20));
/// # Ok::<(), cml::CmlError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EstimatorGrid {
    pub names: Vec<String>,
    pub variants: Vec<Variant>,
    pub betas: Vec<f64>,
    /// CG iterations / Neumann terms / truncated-BPTT steps.
    pub solver_steps: Vec<usize>,
    /// Neumann step (`None`: `1 / L` where known).
    pub neumann_alpha: Option<f64>,
}

impl EstimatorGrid {
    /// The estimators, every name and parameter checked.
    pub fn specs(&self) -> Result<Vec<EstimatorSpec>> {
        nonempty("estimators", self.names.len())?;
        let spec = |name: &str, variant, beta, steps| {
            let params = EstimatorParams {
                variant,
                beta,
                free: GdParams::default(),
                nudged: GdParams::default(),
                solver_steps: steps,
                neumann_alpha: self.neumann_alpha,
                truncation: steps,
            };
            crate::registry::estimator(name, &params)
        };
        let mut specs = Vec::new();
        for name in &self.names {
            let name = name.trim();
            // Built once with placeholders to learn which axes the estimator takes.
            let probe = spec(name, Variant::Standard, AUTO_START, 1)?;
            match probe {
                EstimatorSpec::Contrastive(_) => {
                    nonempty("variants", self.variants.len())?;
                    nonempty("betas", self.betas.len())?;
                    for &b in &self.betas {
                        if !b.is_finite() || b == 0.0 {
                            return Err(CmlError::invalid("beta", b, "finite and non-zero"));
                        }
                    }
                    for &v in &self.variants {
                        for &b in &self.betas {
                            specs.push(spec(name, v, b, 1)?);
                        }
                    }
                }
                EstimatorSpec::ContrastiveAutoBeta(_) => {
                    nonempty("variants", self.variants.len())?;
                    for &v in &self.variants {
                        specs.push(spec(name, v, AUTO_START, 1)?);
                    }
                }
                _ if probe.solver_steps().is_some() => {
                    nonempty("solver steps", self.solver_steps.len())?;
                    for &k in &self.solver_steps {
                        specs.push(spec(name, Variant::Standard, AUTO_START, k)?);
                    }
                }
                _ => specs.push(probe),
            }
        }
        Ok(specs)
    }
}

fn nonempty(name: &str, len: usize) -> Result<()> {
    if len == 0 {
        Err(CmlError::invalid(name, "an empty list", "at least one value"))
    } else {
        Ok(())
    }
}

impl SweepConfig {
    /// Refuses (or, with `allow`, lists as warnings) the estimators that do not apply to the
    /// sweep's problem (see [`EstimatorSpec::inapplicable`]), before any work.
    pub fn check_applicable(&self, allow: bool) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for point in self.grid() {
            if seen.insert(point.name()) {
                let p = self.problem.build(point.seed)?;
                warnings.extend(point.spec.check_applicable(p.as_ref(), p.theta(), allow)?);
            }
        }
        Ok(warnings)
    }
}

/// One grid point: an estimator with its phases set by the budget, on one seed's instance.
#[derive(Debug, Clone, PartialEq)]
pub struct GridPoint {
    pub seed: u64,
    pub budget: Budget,
    pub spec: EstimatorSpec,
}

impl GridPoint {
    /// The estimator's registry name (the rows' `estimator` column).
    pub fn name(&self) -> &'static str {
        self.spec.estimator().name()
    }

    /// The nudging strength of a contrastive point (`None` for `--beta auto` and the others).
    pub fn beta(&self) -> Option<f64> {
        match &self.spec {
            EstimatorSpec::Contrastive(c) => Some(c.beta),
            _ => None,
        }
    }
}

/// The contrastive rule with `beta` chosen by its error bar (`--beta auto`) runs one row per
/// variant, whose `beta` column is the chosen strength.
pub use crate::registry::CONTRASTIVE_AUTO as AUTO_BETA;

/// One run's results: a CSV row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SweepRow {
    pub problem: String,
    pub seed: u64,
    /// The estimator with the parameters it ran with (the `estimator` and `variant` columns).
    pub spec: EstimatorSpec,
    pub beta: Option<f64>,
    pub free_steps: usize,
    pub nudged_steps: Option<usize>,
    pub tolerance: f64,
    pub solver_steps: Option<usize>,
    /// `max_phases ||phi^_b - phi*_b||`, `phi*_b` by Newton.
    /// Empty where Newton cannot find a phase's solution from its end point (a phase loss that
    /// is not convex there).
    pub measured_delta: Option<f64>,
    /// `max_phases ||grad|| / mu_b`, where `mu_b` is known.
    pub certified_delta: Option<f64>,
    pub abs_error: f64,
    pub rel_error: f64,
    pub cosine: f64,
    pub gradient_evaluations: usize,
    pub second_order_products: usize,
    pub floats_kept: usize,
    /// `||d_phi L_in||` at the Newton-solved `phi*` of the exact reference.
    pub reference_grad_norm: f64,
    /// The contrastive estimate's error bar (infinite: unbounded), where computed.
    pub error_bar: Option<f64>,
    /// What the bar cost beyond the estimate.
    pub error_bar_gradient_evaluations: Option<usize>,
    pub error_bar_second_order_products: Option<usize>,
}

pub const CSV_HEADER: &str = "problem,seed,estimator,variant,beta,free_steps,nudged_steps,tolerance,solver_steps,measured_delta,certified_delta,abs_error,rel_error,cosine,gradient_evaluations,second_order_products,floats_kept,reference_grad_norm,error_bar,error_bar_gradient_evaluations,error_bar_second_order_products";

impl SweepRow {
    pub fn csv(&self) -> String {
        let f = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:e}"));
        let u = |v: Option<usize>| v.map_or(String::new(), |v| v.to_string());
        format!(
            "{},{},{},{},{},{},{},{:e},{},{},{},{:e},{:e},{:e},{},{},{},{:e},{},{},{}",
            self.problem,
            self.seed,
            self.estimator(),
            self.variant(),
            f(self.beta),
            self.free_steps,
            u(self.nudged_steps),
            self.tolerance,
            u(self.solver_steps),
            f(self.measured_delta),
            f(self.certified_delta),
            self.abs_error,
            self.rel_error,
            self.cosine,
            self.gradient_evaluations,
            self.second_order_products,
            self.floats_kept,
            self.reference_grad_norm,
            f(self.error_bar),
            u(self.error_bar_gradient_evaluations),
            u(self.error_bar_second_order_products),
        )
    }

    /// The estimator's registry name (the `estimator` column).
    pub fn estimator(&self) -> &'static str {
        self.spec.estimator().name()
    }

    /// The contrastive variant, or the estimator's name for the others (the `variant` column).
    pub fn variant(&self) -> &'static str {
        self.spec
            .contrastive_rule()
            .map_or(self.estimator(), |c| c.variant.name())
    }

    /// Total work: gradient evaluations plus second-order products.
    pub fn total_cost(&self) -> usize {
        self.gradient_evaluations + self.second_order_products
    }
}

/// Parses `i/n` (0-based shard `i` of `n`).
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad = || CmlError::invalid("shard", s, "i/n with 0 <= i < n, e.g. 0/4");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// Parses `LO:HI:N`: `N` values spaced evenly in log between `LO` and `HI` (both > 0).
pub fn parse_log_range(s: &str) -> Result<Vec<f64>> {
    let bad = || {
        CmlError::invalid(
            "betas",
            s,
            "LO:HI:N with 0 < LO <= HI and N >= 1, e.g. 1e-4:1e-1:13",
        )
    };
    let parts: Vec<&str> = s.split(':').collect();
    let [lo, hi, n] = parts.as_slice() else {
        return Err(bad());
    };
    let (lo, hi): (f64, f64) = (lo.parse().map_err(|_| bad())?, hi.parse().map_err(|_| bad())?);
    let n: usize = n.parse().map_err(|_| bad())?;
    if !(lo > 0.0 && hi >= lo && hi.is_finite()) || n == 0 {
        return Err(bad());
    }
    Ok((0..n)
        .map(|i| {
            if n == 1 {
                lo
            } else {
                lo * (hi / lo).powf(i as f64 / (n - 1) as f64)
            }
        })
        .collect())
}

impl SweepConfig {
    pub fn validate(&self) -> Result<()> {
        nonempty("seeds", self.seeds.len())?;
        nonempty("estimators", self.estimators.len())?;
        nonempty("budgets", self.budgets.len())?;
        crate::estimator::error_bar::check_truncation_scale(self.error_bar_scale)?;
        for budget in &self.budgets {
            match *budget {
                Budget::Steps(0) => return Err(CmlError::invalid("steps", 0, "a step budget must be >= 1")),
                Budget::Tolerance(t) if !(t.is_finite() && t > 0.0) => {
                    return Err(CmlError::invalid("tolerance", t, "finite and > 0"));
                }
                Budget::Delta(d) if !(d.is_finite() && d >= 0.0) => {
                    return Err(CmlError::invalid("delta", d, "finite and >= 0"));
                }
                _ => {}
            }
        }
        // Every parameter is checked once before any work.
        for point in self.grid() {
            point.spec.validate()?;
        }
        Ok(())
    }

    /// The grid in its fixed order: seed, budget, estimator.
    pub fn grid(&self) -> Vec<GridPoint> {
        let mut grid = Vec::new();
        for &seed in &self.seeds {
            for &budget in &self.budgets {
                for spec in &self.estimators {
                    grid.push(GridPoint {
                        seed,
                        budget,
                        spec: spec.with_phases(self.phase(budget)),
                    });
                }
            }
        }
        grid
    }

    fn phase(&self, budget: Budget) -> GdParams {
        let (max_steps, tolerance) = match budget {
            Budget::Steps(n) => (n, 0.0),
            Budget::Tolerance(t) => (self.max_steps, t),
            Budget::Delta(_) => (1, 0.0),
        };
        GdParams {
            step_size: self.step_size,
            max_steps,
            tolerance,
            ..GdParams::default()
        }
    }
}

/// Runs the grid points of `shard` (`(0, 1)`: all), calling `done` after each.
pub fn run(config: &SweepConfig, shard: (usize, usize), done: &(dyn Fn() + Sync)) -> Result<Vec<SweepRow>> {
    run_on(config, shard, &|seed| Ok(config.problem.build(seed)?), done)
}

/// Builds the instance of a seed.
pub type ProblemBuilder<'a> = dyn Fn(u64) -> Result<Box<dyn ProblemInstance>> + 'a;

/// [`run`] on problems the caller builds, one per seed: a problem defined outside the crate gets
/// sweeps too (`config.problem` is then a [`ProblemSource::Custom`] label; rows carry the
/// problem's `name()`).
pub fn run_on(
    config: &SweepConfig,
    shard: (usize, usize),
    build: &ProblemBuilder,
    done: &(dyn Fn() + Sync),
) -> Result<Vec<SweepRow>> {
    config.validate()?;
    let grid = config.grid();
    let (i, n) = shard;
    let points = &grid[i * grid.len() / n..(i + 1) * grid.len() / n];
    // The exact reference once per seed, for the seeds this shard needs.
    let mut seeds: Vec<u64> = points.iter().map(|p| p.seed).collect();
    seeds.dedup();
    let references = seeds
        .iter()
        .map(|&seed| {
            let p = build(seed)?;
            let truth = exact_meta_gradient_at_phase_minimum(p.as_ref(), p.theta(), &reference_free_phase())?;
            check_reference_precision(config, p.as_ref(), seed, truth.newton.grad_norm)?;
            let reference = Reference {
                exact: truth.meta_gradient,
                grad_norm: truth.newton.grad_norm,
            };
            Ok((seed, (p, reference)))
        })
        .collect::<Result<std::collections::BTreeMap<u64, (Box<dyn ProblemInstance>, Reference)>>>()?;
    map_in_order_with_progress(
        points,
        |point| {
            let (p, reference) = &references[&point.seed];
            run_point(config, point, p.as_ref(), reference)
        },
        done,
    )
}

/// The exact meta-gradient of one seed's instance, and how precisely its `phi*` was solved.
struct Reference {
    exact: Vector,
    grad_norm: f64,
}

/// Placed-at-`delta` phases are measured against Newton's `phi*`: its own distance to the true
/// solution (`||grad|| / mu`, or `||grad||` where `mu` is unknown) must be at least 100x below
/// the smallest `delta`, or the smallest rows measure the reference, not the estimator.
fn check_reference_precision(
    config: &SweepConfig,
    p: &dyn ProblemInstance,
    seed: u64,
    grad_norm: f64,
) -> Result<()> {
    let smallest = config
        .budgets
        .iter()
        .filter_map(|b| if let Budget::Delta(d) = b { Some(*d) } else { None })
        .fold(f64::INFINITY, f64::min);
    if !smallest.is_finite() {
        return Ok(());
    }
    let mu = p.curvature(p.theta(), 0.0)?.map_or(1.0, |c| c.strong_convexity);
    let distance = grad_norm / mu;
    if distance > smallest / 100.0 {
        return Err(CmlError::invalid(
            "smallest delta",
            smallest,
            format!(
                "the exact reference of seed {seed} is solved only to {distance:.3e} (Newton's final |grad| {grad_norm:.3e}), \
                 and a delta must be at least 100x that; use deltas >= {:.1e}",
                100.0 * distance
            ),
        ));
    }
    Ok(())
}

fn run_point(
    config: &SweepConfig,
    point: &GridPoint,
    p: &dyn ProblemInstance,
    reference: &Reference,
) -> Result<SweepRow> {
    let spec = point.spec;
    if let Budget::Delta(delta) = point.budget {
        return run_perturbed(point, delta, p, reference);
    }
    let theta = p.theta();
    let estimate = crate::estimator::error_bar::estimate_with_error_bar_if_any(
        &spec,
        p,
        theta,
        config.error_bars,
        config.error_bar_scale,
    )?;
    // The estimate's own phases: with an error bar, the free phase and the stencil at the
    // estimate's beta (not the bar's phases at 2 beta, nor the pilots of beta auto, which may
    // run where the phase loss is not convex).
    let own: Vec<usize> = match (&spec, &estimate.error_bar) {
        (EstimatorSpec::Contrastive(c), Some(bar))
        | (
            EstimatorSpec::ContrastiveAutoBeta(crate::estimator::error_bar::AutoBeta { rule: c, .. }),
            Some(bar),
        ) => {
            let wanted: Vec<f64> = c.variant.stencil().iter().map(|(m, _)| m * bar.beta).collect();
            (0..estimate.phases.len())
                .filter(|&i| i == 0 || wanted.contains(&estimate.phases[i].beta))
                .collect()
        }
        _ => (0..estimate.phases.len()).collect(),
    };
    let mut measured_delta = Some(0.0f64);
    for &i in &own {
        let (info, phi) = (&estimate.phases[i], &estimate.phase_points[i]);
        match distance_to_phase_solution(p, phi, theta, info.beta) {
            Ok(d) => measured_delta = measured_delta.map(|m| m.max(d)),
            // No solution near the end point to measure against: the column stays empty.
            Err(CmlError::NotConverged { .. } | CmlError::NotPositiveDefinite { .. }) => {
                measured_delta = None
            }
            Err(e) => return Err(e),
        }
    }
    let certified_delta = own
        .iter()
        .map(|&i| estimate.phases[i].certified_distance)
        .try_fold(0.0f64, |acc, d| d.map(|d| acc.max(d)));
    let phase = config.phase(point.budget);
    let inner = Inner {
        free_steps: estimate.phases[0].steps,
        nudged_steps: own.get(1).map(|&i| estimate.phases[i].steps),
        tolerance: phase.tolerance,
        measured_delta,
        certified_delta,
    };
    let bar = estimate.error_bar.as_ref();
    let mut row = row(point, p, inner, &estimate.gradient, reference, estimate.cost);
    if let EstimatorSpec::ContrastiveAutoBeta(_) = spec {
        row.beta = bar.map(|b| b.beta);
    }
    row.error_bar = bar.map(|b| b.bar);
    row.error_bar_gradient_evaluations = bar.map(|b| b.extra_cost.gradient_evaluations);
    row.error_bar_second_order_products = bar.map(|b| b.extra_cost.second_order_products);
    Ok(row)
}

/// How inexact the phases of one run were.
struct Inner {
    free_steps: usize,
    nudged_steps: Option<usize>,
    tolerance: f64,
    measured_delta: Option<f64>,
    certified_delta: Option<f64>,
}

/// One CSV row from a run's estimate.
fn row(
    point: &GridPoint,
    p: &dyn ProblemInstance,
    inner: Inner,
    gradient: &Vector,
    reference: &Reference,
    cost: crate::oracle::Cost,
) -> SweepRow {
    let exact = &reference.exact;
    SweepRow {
        problem: p.name().into(),
        seed: point.seed,
        spec: point.spec,
        beta: point.beta(),
        free_steps: inner.free_steps,
        nudged_steps: inner.nudged_steps,
        tolerance: inner.tolerance,
        solver_steps: point.spec.solver_steps(),
        measured_delta: inner.measured_delta,
        certified_delta: inner.certified_delta,
        abs_error: (gradient - exact).norm(),
        rel_error: relative_error(gradient, exact),
        cosine: cosine(gradient, exact),
        gradient_evaluations: cost.gradient_evaluations,
        second_order_products: cost.second_order_products,
        floats_kept: cost.floats_kept,
        reference_grad_norm: reference.grad_norm,
        error_bar: None,
        error_bar_gradient_evaluations: None,
        error_bar_second_order_products: None,
    }
}

/// A grid point with phases at exactly `delta` from their solutions (see [`Budget::Delta`]).
/// The unit direction along which a phase is placed at distance `delta` from its solution: a
/// seeded draw from a stream named by a hash of `(delta, beta, b, phase)`, so that every phase
/// of every grid point gets its own (an XOR of the words gave every nudged phase `b = +-beta`
/// the same stream at every `beta` and `delta`).
pub fn placed_direction(seed: u64, delta: f64, beta: f64, b: f64, phase: u64, n: usize) -> Vector {
    let purpose = crate::rng::hash_words(&[delta.to_bits(), beta.to_bits(), b.to_bits(), phase]);
    normal_vector(&mut stream(seed, purpose), n).normalize()
}

fn run_perturbed(
    point: &GridPoint,
    delta: f64,
    p: &dyn ProblemInstance,
    reference: &Reference,
) -> Result<SweepRow> {
    let theta = p.theta();
    let oracle = Oracle::new(p);
    let start = p.initial_phi(theta)?;
    let newton = NewtonParams::default();
    let free = newton
        .solve(&oracle, &Phase::new(&start, theta, 0.0, "free phase"))?
        .phi;
    // One independent direction per phase, fixed by the seed, beta and the phase's place.
    let mut phase_index = 0;
    let mut perturbed = |b: f64| -> Result<Tensor> {
        let star = if b == 0.0 {
            free.clone()
        } else {
            newton
                .solve(&oracle, &Phase::new(&free, theta, b, "nudged phase"))?
                .phi
        };
        let u = placed_direction(
            point.seed,
            delta,
            point.beta().unwrap_or(0.0),
            b,
            phase_index,
            p.dims().phi,
        );
        phase_index += 1;
        Ok((star + to_tensor(&(u * delta))?)?)
    };
    let gradient = match &point.spec {
        EstimatorSpec::Contrastive(c) => c.variant.combine(c.beta, |b| {
            let b = c.variant.phase_beta(b);
            let phi = perturbed(b)?;
            to_dvector(&oracle.phase_gradients(&phi, theta, b)?.theta)
        })?,
        EstimatorSpec::Implicit(i) => {
            implicit_meta_gradient(&oracle, &perturbed(0.0)?, theta, i.solver)?.gradient
        }
        _ => {
            return Err(CmlError::invalid(
                "estimator with a delta budget",
                point.name(),
                "delta budgets apply to contrastive and implicit estimators (implicit, cg, neumann, t1t2)",
            ));
        }
    };
    let inner = Inner {
        free_steps: 0,
        nudged_steps: None,
        tolerance: 0.0,
        measured_delta: Some(delta),
        certified_delta: None,
    };
    Ok(row(point, p, inner, &gradient, reference, oracle.cost()))
}
