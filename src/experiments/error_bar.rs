//! Calibration of the contrastive estimate's error bar (docs/ERROR_BAR.md): on random instances
//! of every problem, at several nudging strengths and phase precisions, the bar against the true
//! error (exact meta-gradient by Newton and a dense solve); and `--beta auto` against the best
//! strength of a grid.

use super::{Settings, num, save, write_csv, write_table};
use crate::error::{CmlError, Result};
use crate::estimator::contrastive::PhaseRuns;
use crate::estimator::error_bar::{AutoBeta, DistanceSource, RICHARDSON_SAFETY, error_bar_at, scaled_bar};
use crate::estimator::{Contrastive, MetaGradientEstimator, Variant};
use crate::ground_truth::exact_meta_gradient_at_phase_minimum;
use crate::inner::GdParams;
use crate::linalg::Vector;
use crate::oracle::Oracle;
use crate::report::plot::{Figure, Panel, Series, Style};
use crate::report::template::Context;
use std::path::PathBuf;

/// The problems calibrated, in table order.
const PROBLEMS: [&str; 5] = ["quadratic", "ridge", "logistic", "synapse", "modulation"];
const VARIANTS: [Variant; 2] = [Variant::Standard, Variant::Symmetric];
/// Phase precisions: gradient-norm tolerances, from loose to tight.
const TOLERANCES: [f64; 3] = [1e-3, 1e-5, 1e-8];
const BETAS: [f64; 3] = [1e-3, 1e-2, 1e-1];
/// Factors the report scales the bar's truncation part by, to show what a larger Richardson
/// safety factor would have covered (1: the bar as computed).
const TRUNCATION_FACTORS: [f64; 5] = [1.0, 1.1, 1.5, 2.0, 2.5];
/// The strengths `--beta auto` is compared with: 13 from 1e-6 to 1.
fn grid() -> Vec<f64> {
    (0..13).map(|i| 10f64.powf(-6.0 + 0.5 * f64::from(i))).collect()
}
/// The precision of the `--beta auto` comparison.
const AUTO_TOLERANCE: f64 = 1e-8;

/// One calibration case.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Case {
    problem: String,
    seed: u64,
    variant: Variant,
    #[serde(with = "super::units::any_float")]
    beta: f64,
    #[serde(with = "super::units::any_float")]
    tolerance: f64,
    #[serde(with = "super::units::any_float")]
    error: f64,
    #[serde(with = "super::units::any_float")]
    bar: f64,
    #[serde(with = "super::units::any_float")]
    truncation: f64,
    #[serde(with = "super::units::any_float")]
    phase_precision: f64,
    source: String,
    bar_gradient_evaluations: usize,
    bar_second_order_products: usize,
    /// `||est(4 beta) - est(2 beta)|| / ||est(2 beta) - est(beta)||`, which is `2^p` in the
    /// stencil's asymptotic regime (docs/ERROR_BAR.md §5.1); NaN where a phase at `2 beta` or
    /// `4 beta` diverged.
    #[serde(with = "super::units::any_float")]
    order_ratio: f64,
}

impl Case {
    /// Whether the order check would flag this case: the observed ratio outside
    /// `[2^p / 2, 2 * 2^p]`, or not measurable.
    fn order_flagged(&self) -> bool {
        let expected = 2f64.powi(self.variant.truncation_order());
        !(self.order_ratio >= expected / 2.0 && self.order_ratio <= 2.0 * expected)
    }
}

/// `--beta auto` on one instance beside the grid.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct AutoCase {
    problem: String,
    seed: u64,
    variant: Variant,
    #[serde(with = "super::units::any_float")]
    chosen: f64,
    #[serde(with = "super::units::any_float")]
    error: f64,
    #[serde(with = "super::units::any_float")]
    bar: f64,
    /// The grid's best strength and its true error.
    #[serde(with = "super::units::any_float")]
    best_beta: f64,
    #[serde(with = "super::units::any_float")]
    best_error: f64,
    /// Gradient evaluations of the auto run, and of one plain estimate at the chosen strength.
    gradient_evaluations: usize,
    plain_gradient_evaluations: usize,
    second_order_products: usize,
}

/// Per problem: coverage and sharpness of the bar, and how `--beta auto` did.
#[derive(Debug, Clone)]
pub struct CalibrationRow {
    pub problem: String,
    pub cases: usize,
    /// Fraction of cases with the true error at most the bar.
    pub coverage: f64,
    /// Instances (independent draws), those whose every case is covered, and the Clopper-Pearson
    /// 95% interval of that proportion: the cases of one instance are correlated, the instances
    /// are not.
    pub instances: usize,
    pub instances_covered: usize,
    pub instance_interval: (f64, f64),
    /// Median of bar / true error.
    pub median_ratio: f64,
    /// Cases with an unbounded bar (not positive definite at a phase end point).
    pub unbounded: usize,
    /// `--beta auto`: runs, and median of (error at the chosen beta) / (best error on the grid).
    pub auto_runs: usize,
    pub auto_median_ratio: f64,
    /// Fraction of auto runs within 3x of the grid's best error.
    pub auto_within_3x: f64,
    /// Mean gradient evaluations of an auto run over those of one estimate at its beta.
    pub auto_cost_ratio: f64,
}

#[derive(Debug, Clone)]
pub struct CalibrationResults {
    pub rows: Vec<CalibrationRow>,
    /// Over every problem.
    pub total: CalibrationRow,
    /// Instances drawn per problem, e.g. `quadratic 100, ..., synapse 20`.
    pub instances_per_problem: String,
    /// The safety factor the calibration instances chose, tested on fresh instances (none
    /// without fresh units).
    pub fresh: Option<FreshTest>,
}

/// The held-out test of the safety factor.
#[derive(Debug, Clone)]
pub struct FreshTest {
    pub factor: f64,
    pub instances: usize,
    /// Instances covered by the bar as computed and by the bar with the truncation part scaled.
    pub covered_as_computed: usize,
    pub covered_scaled: usize,
    /// Clopper-Pearson 95% interval of the scaled bar's coverage per instance.
    pub interval_scaled: (f64, f64),
    pub median_ratio_as_computed: f64,
    pub median_ratio_scaled: f64,
}

fn phase(tolerance: f64, quick: bool) -> GdParams {
    GdParams {
        max_steps: if quick { 20_000 } else { 100_000 },
        tolerance,
        ..GdParams::default()
    }
}

fn rule(variant: Variant, beta: f64, tolerance: f64, quick: bool) -> Contrastive {
    Contrastive {
        variant,
        beta,
        free: phase(tolerance, quick),
        nudged: phase(tolerance, quick),
    }
}

fn source_name(bar: &crate::estimator::error_bar::ErrorBar) -> &'static str {
    let sources: Vec<DistanceSource> = bar.phases.iter().map(|p| p.source).collect();
    if sources.contains(&DistanceSource::NotPositiveDefinite) {
        "not-positive-definite"
    } else if sources.contains(&DistanceSource::Lanczos) {
        "lanczos"
    } else {
        "certified"
    }
}

/// Every case of one instance: the bar at each strength and precision, then auto on the grid.
///
/// The phases of one variant at one precision do not depend on `beta` (the free phase) or
/// depend on it only through the strength they run at (each nudged phase starts from the free
/// solution), so one [`PhaseRuns`] per variant and precision serves every strength, the bar's
/// `2 beta` and the order check's `2 beta` and `4 beta`: each estimate is the one a fresh run
/// gives, bit for bit, without running its free phase again. The bar's extra cost stays its own:
/// no phase it runs has been run for an earlier strength (`2 beta` and `4 beta` of one strength
/// are none of the others' `beta`, `2 beta` or `4 beta`).
fn calibrate(problem: &'static str, seed: u64, quick: bool) -> Result<(Vec<Case>, Vec<AutoCase>)> {
    let p = crate::registry::draw_problem(problem, seed)?;
    let theta = p.theta().clone();
    // Scored at the minimum the phases reach (docs/ERROR_BAR.md §5.1): on 2 of the first 20
    // synapse instances Newton from the initial phi reached another stationary point, 0.7 away.
    let exact = exact_meta_gradient_at_phase_minimum(
        p.as_ref(),
        &theta,
        &phase(TOLERANCES[TOLERANCES.len() - 1], quick),
    )?
    .meta_gradient;
    let error = |g: &Vector| (g - &exact).norm();
    let mut cases = Vec::new();
    for variant in VARIANTS {
        // Run precision by precision, stored strength by strength (the cases' order).
        let mut block = Vec::new();
        for (t, tolerance) in TOLERANCES.into_iter().enumerate() {
            let rule = rule(variant, BETAS[0], tolerance, quick);
            let oracle = Oracle::with_engine(p.as_ref(), rule.free.engine);
            // A free phase that diverges leaves no case at this precision, as a diverging nudged
            // phase leaves none at its strength: neither is a case of the bar.
            let mut runs = match PhaseRuns::start(&rule, &oracle, &theta) {
                Err(CmlError::Diverged { .. }) => continue,
                other => other?,
            };
            for (b, beta) in BETAS.into_iter().enumerate() {
                let estimate = runs
                    .estimate(beta)
                    .and_then(|g| Ok((error_bar_at(&mut runs, beta, &g)?, g)));
                let (bar, gradient) = match estimate {
                    Err(CmlError::Diverged { .. }) => continue,
                    other => other?,
                };
                let mut at = |k: f64| -> Result<Option<Vector>> {
                    match runs.estimate(k * beta) {
                        Ok(g) => Ok(Some(g)),
                        Err(CmlError::Diverged { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                };
                let order_ratio = match (at(2.0)?, at(4.0)?) {
                    (Some(g2), Some(g4)) => (&g4 - &g2).norm() / (&g2 - &gradient).norm(),
                    _ => f64::NAN,
                };
                let case = Case {
                    problem: problem.into(),
                    seed,
                    variant,
                    beta,
                    tolerance,
                    error: error(&gradient),
                    bar: bar.bar,
                    truncation: bar.truncation,
                    phase_precision: bar.phase_precision,
                    source: source_name(&bar).into(),
                    bar_gradient_evaluations: bar.extra_cost.gradient_evaluations,
                    bar_second_order_products: bar.extra_cost.second_order_products,
                    order_ratio,
                };
                block.push(((b, t), case));
            }
        }
        block.sort_by_key(|(at, _)| *at);
        cases.extend(block.into_iter().map(|(_, case)| case));
    }
    let mut autos = Vec::new();
    for variant in VARIANTS {
        let base = rule(variant, 1e-3, AUTO_TOLERANCE, quick);
        let auto = AutoBeta::new(base).estimate(p.as_ref(), &theta)?;
        let bar = auto.error_bar.as_ref().expect("auto reports its bar");
        let mut best = (f64::NAN, f64::INFINITY);
        // The grid's strengths share one free phase (see above).
        let oracle = Oracle::with_engine(p.as_ref(), base.free.engine);
        let mut runs = PhaseRuns::start(&base, &oracle, &theta)?;
        for beta in grid() {
            match runs.estimate(beta) {
                Ok(g) if error(&g) < best.1 => best = (beta, error(&g)),
                Ok(_) | Err(CmlError::Diverged { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let plain = Contrastive {
            beta: bar.beta,
            ..base
        }
        .estimate(p.as_ref(), &theta)?;
        autos.push(AutoCase {
            problem: problem.into(),
            seed,
            variant,
            chosen: bar.beta,
            error: error(&auto.gradient),
            bar: bar.bar,
            best_beta: best.0,
            best_error: best.1,
            gradient_evaluations: auto.cost.gradient_evaluations,
            plain_gradient_evaluations: plain.cost.gradient_evaluations,
            second_order_products: auto.cost.second_order_products,
        });
    }
    Ok((cases, autos))
}

/// Coverage and sharpness of the bar with its truncation part scaled by a factor.
struct Scaled {
    misses: usize,
    cases: usize,
    instances: usize,
    instances_covered: usize,
    networks: usize,
    networks_covered: usize,
    median_ratio: f64,
    p90_ratio: f64,
}

impl Scaled {
    fn of(cases: &[Case], factor: f64) -> Self {
        let bar = |c: &Case| scaled_bar(c.truncation, c.phase_precision, factor);
        let covered = |c: &Case| c.error <= bar(c);
        let mut instances: Vec<(&str, u64, bool)> = Vec::new();
        for c in cases {
            match instances.iter_mut().find(|i| i.0 == c.problem && i.1 == c.seed) {
                Some(i) => i.2 &= covered(c),
                None => instances.push((&c.problem, c.seed, covered(c))),
            }
        }
        let networks: Vec<_> = instances
            .iter()
            .filter(|i| i.0 == "synapse" || i.0 == "modulation")
            .collect();
        let ratios: Vec<f64> = cases
            .iter()
            .filter(|c| bar(c).is_finite() && c.error > 0.0)
            .map(|c| bar(c) / c.error)
            .collect();
        Scaled {
            misses: cases.iter().filter(|c| !covered(c)).count(),
            cases: cases.len(),
            instances: instances.len(),
            instances_covered: instances.iter().filter(|i| i.2).count(),
            networks: networks.len(),
            networks_covered: networks.iter().filter(|i| i.2).count(),
            median_ratio: quantile(ratios.clone(), 0.5),
            p90_ratio: quantile(ratios, 0.9),
        }
    }
}

/// The factor the calibration instances choose: the least of [`TRUNCATION_FACTORS`] that covers
/// every one of them, else the largest.
fn chosen_factor(calibration: &[Case]) -> f64 {
    TRUNCATION_FACTORS
        .into_iter()
        .find(|&f| {
            let s = Scaled::of(calibration, f);
            s.instances_covered == s.instances
        })
        .unwrap_or(TRUNCATION_FACTORS[TRUNCATION_FACTORS.len() - 1])
}

/// The job's table page: coverage and sharpness per problem (`rows`, then the total), the order
/// check, the truncation part scaled by each factor, and the chosen factor on the `fresh` cases.
fn table<'a>(
    cases: &[Case],
    fresh: &[Case],
    rows: impl Iterator<Item = &'a CalibrationRow>,
    instances_per_problem: &str,
    chosen_factor: f64,
    drawn: &FreshInstances,
) -> Result<String> {
    let rows = rows
        .map(|r| {
            Context::new()
                .text("problem", &r.problem)
                .text("cases", r.cases)
                .text("coverage", num(r.coverage))
                .text("covered", r.instances_covered)
                .text("instances", r.instances)
                .text("low", format!("{:.3}", r.instance_interval.0))
                .text("high", format!("{:.3}", r.instance_interval.1))
                .text("median", num(r.median_ratio))
                .text("unbounded", r.unbounded)
                .text("auto_runs", r.auto_runs)
                .text("auto_median", num(r.auto_median_ratio))
                .text("auto_within_3x", num(r.auto_within_3x))
                .text("auto_cost", num(r.auto_cost_ratio))
        })
        .collect();
    let problems = || PROBLEMS.iter().copied().chain(std::iter::once("all"));
    let of = |name: &str| -> Vec<&Case> {
        cases
            .iter()
            .filter(|c| name == "all" || c.problem == name)
            .collect()
    };
    // Sharpness at each phase precision: how far above the true error the bar sits.
    let sharpness = problems()
        .flat_map(|name| {
            let own = of(name);
            TOLERANCES.map(|tolerance| {
                let ratios: Vec<f64> = own
                    .iter()
                    .filter(|c| c.tolerance == tolerance && c.bar.is_finite() && c.error > 0.0)
                    .map(|c| c.bar / c.error)
                    .collect();
                Context::new()
                    .text("problem", name)
                    .text("tolerance", format!("{tolerance:e}"))
                    .text("cases", ratios.len())
                    .text("median", num(quantile(ratios.clone(), 0.5)))
                    .text("p90", num(quantile(ratios, 0.9)))
            })
        })
        .collect();
    // The order check (docs/ERROR_BAR.md §5.1), measured, not applied: how many misses it would
    // flag, and how many covered cases it would flag as well (false alarms).
    let order_check = problems()
        .map(|name| {
            let (missed, covered): (Vec<&Case>, Vec<&Case>) =
                of(name).into_iter().partition(|c| c.error > c.bar);
            let flagged = |v: &[&Case]| v.iter().filter(|c| c.order_flagged()).count();
            Context::new()
                .text("problem", name)
                .text("misses", missed.len())
                .text("misses_flagged", flagged(&missed))
                .text("covered", covered.len())
                .text("covered_flagged", flagged(&covered))
        })
        .collect();
    // The bar with its truncation part scaled by `factor`, on `cases`.
    let scaled = |cases: &[Case], factor: f64| {
        let s = Scaled::of(cases, factor);
        let (low, high) = crate::stats::clopper_pearson(s.instances_covered, s.instances, 0.95);
        Context::new()
            .text("factor", factor)
            .text("misses", s.misses)
            .text("cases", s.cases)
            .text("covered", s.instances_covered)
            .text("instances", s.instances)
            .text("low", format!("{low:.3}"))
            .text("high", format!("{high:.3}"))
            .text("networks_covered", s.networks_covered)
            .text("networks", s.networks)
            .text("median", num(s.median_ratio))
            .text("p90", num(s.p90_ratio))
    };
    // What a larger Richardson safety factor would have covered, measured on these cases
    // themselves: a factor read off this table is fitted to them; the fresh instances test the one
    // the rule chooses.
    let factors = TRUNCATION_FACTORS.iter().map(|&f| scaled(cases, f)).collect();
    let fresh_section = (!fresh.is_empty()).then(|| {
        let all_covered = {
            let s = Scaled::of(cases, chosen_factor);
            s.instances_covered == s.instances
        };
        Context::new()
            .text(
                "chosen",
                if all_covered {
                    format!("{chosen_factor}")
                } else {
                    format!("{chosen_factor}, the largest: no factor of the table covers them all")
                },
            )
            .text("per_problem", counts_text(&drawn.per_problem))
            .text("seeds_from", drawn.seeds_from)
            .list(
                "bars",
                [("as computed", 1.0), ("truncation part scaled", chosen_factor)]
                    .map(|(label, f)| scaled(fresh, f).text("label", label))
                    .to_vec(),
            )
    });
    let context = Context::new()
        .text("instances_per_problem", instances_per_problem)
        .text("betas", format!("{BETAS:?}"))
        .text("tolerances", format!("{TOLERANCES:?}"))
        .text("auto_tolerance", format!("{AUTO_TOLERANCE:e}"))
        .list("rows", rows)
        .list("sharpness", sharpness)
        .list("order_check", order_check)
        .text("safety", RICHARDSON_SAFETY)
        .list("factors", factors)
        .section("fresh", fresh_section);
    super::render_table(include_str!("tables/error_bar.md"), "error_bar.md", &context)
}

fn median(v: Vec<f64>) -> f64 {
    quantile(v, 0.5)
}

/// The `q`-quantile by linear interpolation between order statistics (NaN for no values).
fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let position = q * (v.len() - 1) as f64;
    let (below, above) = (position.floor() as usize, position.ceil() as usize);
    v[below] + (v[above] - v[below]) * (position - below as f64)
}

fn summarise(name: &str, cases: &[&Case], autos: &[&AutoCase]) -> CalibrationRow {
    let n = cases.len().max(1) as f64;
    let covered = cases.iter().filter(|c| c.error <= c.bar).count() as f64;
    let ratios: Vec<f64> = autos.iter().map(|a| a.error / a.best_error).collect();
    let mut instances: Vec<(&str, u64)> = cases.iter().map(|c| (c.problem.as_str(), c.seed)).collect();
    instances.dedup();
    let instances_covered = instances
        .iter()
        .filter(|i| {
            cases
                .iter()
                .filter(|c| (c.problem.as_str(), c.seed) == **i)
                .all(|c| c.error <= c.bar)
        })
        .count();
    CalibrationRow {
        problem: name.into(),
        cases: cases.len(),
        coverage: covered / n,
        instances: instances.len(),
        instances_covered,
        instance_interval: crate::stats::clopper_pearson(instances_covered, instances.len(), 0.95),
        median_ratio: median(cases.iter().map(|c| c.bar / c.error).collect()),
        unbounded: cases.iter().filter(|c| !c.bar.is_finite()).count(),
        auto_runs: autos.len(),
        auto_median_ratio: median(ratios.clone()),
        auto_within_3x: ratios.iter().filter(|&&r| r <= 3.0).count() as f64 / autos.len().max(1) as f64,
        auto_cost_ratio: autos
            .iter()
            .map(|a| a.gradient_evaluations as f64 / a.plain_gradient_evaluations as f64)
            .sum::<f64>()
            / autos.len().max(1) as f64,
    }
}

/// A log-log scatter of `(x, y)` points, one series per problem, with the lines `y = x` and
/// `y = factor x` dashed: `labels` are the title and the axes, `lines` the two lines' labels and
/// the factor.
fn comparison_panel(labels: [&str; 3], points: &[(&str, (f64, f64))], lines: (&str, &str, f64)) -> Panel {
    let [title, x_label, y_label] = labels;
    let mut panel = Panel::new(title, x_label, y_label, true, true);
    for (i, &name) in PROBLEMS.iter().enumerate() {
        let own: Vec<(f64, f64)> = points
            .iter()
            .filter(|(p, _)| *p == name)
            .map(|(_, xy)| *xy)
            .collect();
        panel.series.push(Series::new(name, own, i, Style::Points));
    }
    let (lo, hi) = points
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), (_, (x, y))| {
            (lo.min(*x).min(*y), hi.max(*x).max(*y))
        });
    let (equal, scaled, factor) = lines;
    if lo < hi {
        panel
            .series
            .push(Series::new(equal, vec![(lo, lo), (hi, hi)], 6, Style::Dashed));
        panel.series.push(Series::new(
            scaled,
            vec![(lo, factor * lo), (hi / factor, hi)],
            7,
            Style::Dashed,
        ));
    }
    panel
}

/// Instances drawn per problem: at least 100 where an instance costs seconds, 20 for the
/// networks (an exact reference is a Newton solve on 1761 parameters).
fn instances(quick: bool) -> Vec<(&'static str, u64)> {
    PROBLEMS
        .iter()
        .map(|&p| {
            let n = match (quick, p) {
                (true, _) => 1,
                (false, "synapse" | "modulation") => 20,
                (false, _) => 100,
            };
            (p, n)
        })
        .collect()
}

/// Where the fresh instances' seeds start (past the run's seed): none is a calibration instance.
const FRESH: u64 = 1000;

/// The job's protocol (`configs/error_bar.toml`). `--protocol error-bar=FILE` may change how many
/// instances are drawn per problem, for the calibration and for the fresh test, and where the
/// fresh instances' seeds start; the other fields record what the code does and take no other
/// values.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Protocol {
    /// Calibration instances per problem, in table order.
    pub instances: Vec<(String, u64)>,
    pub fresh_instances: FreshInstances,
    pub factor_rule: String,
    pub variants: Vec<Variant>,
    pub betas: Vec<f64>,
    pub tolerances: Vec<f64>,
    pub auto_tolerance: f64,
    pub auto_grid: Vec<f64>,
    pub max_steps: usize,
    pub order_check: String,
    pub reference: String,
}

/// Instance counts as the tables say them: "quadratic 100, ridge 100, ...".
fn counts_text(counts: &[(String, u64)]) -> String {
    counts
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fresh instances that test the safety factor: per problem, and the seed they start from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FreshInstances {
    pub per_problem: Vec<(String, u64)>,
    pub seeds_from: u64,
}

impl Protocol {
    pub fn new(quick: bool) -> Self {
        let counts: Vec<(String, u64)> = instances(quick)
            .into_iter()
            .map(|(p, n)| (p.to_string(), n))
            .collect();
        Protocol {
            instances: counts.clone(),
            fresh_instances: FreshInstances {
                per_problem: counts,
                seeds_from: FRESH,
            },
            factor_rule: "the least factor of the scaled-truncation table that covers every calibration instance, tested on the fresh instances".into(),
            variants: VARIANTS.to_vec(),
            betas: BETAS.to_vec(),
            tolerances: TOLERANCES.to_vec(),
            auto_tolerance: AUTO_TOLERANCE,
            auto_grid: grid(),
            max_steps: phase(AUTO_TOLERANCE, quick).max_steps,
            order_check: "estimates at 2 beta and 4 beta".into(),
            reference: "Newton from the initial phi where the inner loss has a curvature bound, else from a free phase's end point at the tightest tolerance".into(),
        }
    }

    /// The protocol of `settings`' scale with the user's changes (`--protocol error-bar=FILE`).
    pub fn of(settings: &Settings) -> Result<Self> {
        let built_in = Self::new(settings.quick());
        let p = crate::protocol::configured("error-bar", built_in.clone(), settings)?;
        // Only the instances may change; the rest records what the code does.
        let records = |q: &Protocol| Protocol {
            instances: Vec::new(),
            fresh_instances: FreshInstances {
                per_problem: Vec::new(),
                seeds_from: 0,
            },
            ..q.clone()
        };
        if records(&p) != records(&built_in) {
            let (changed, built) = (super::units::encode(&p)?, super::units::encode(&built_in)?);
            let keys: Vec<&String> = changed
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| !k.contains("instances") && built.get(*k) != Some(*v))
                .map(|(k, _)| k)
                .collect();
            let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
            return Err(crate::CmlError::invalid(
                format!("the error-bar protocol: {}", keys.join(", ")),
                "a changed value",
                "the code's own: only instances and fresh_instances may change (the rest records what the job does)",
            ));
        }
        Ok(p)
    }

    /// Every instance, calibration then fresh: (problem, index, fresh).
    fn units(&self) -> Vec<(&'static str, u64, bool)> {
        let named = |list: &[(String, u64)], fresh: bool| -> Vec<(&'static str, u64, bool)> {
            list.iter()
                .flat_map(|(p, n)| {
                    let p = *PROBLEMS.iter().find(|q| *q == p).expect("a checked problem name");
                    (0..*n).map(move |s| (p, s, fresh))
                })
                .collect()
        };
        let mut out = named(&self.instances, false);
        out.extend(named(&self.fresh_instances.per_problem, true));
        out
    }
}

impl crate::protocol::Checked for Protocol {
    fn check(&self) -> Result<()> {
        let names = |list: &[(String, u64)]| list.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
        let all: Vec<String> = PROBLEMS.iter().map(|p| p.to_string()).collect();
        let most = self.instances.iter().map(|(_, n)| *n).max().unwrap_or(0);
        let mut c = crate::protocol::Checks::new("error-bar");
        c.that(
            names(&self.instances) == all && self.instances.iter().all(|(_, n)| *n >= 1),
            "instances",
            format!("{:?}", self.instances),
            &format!("at least 1 instance of each of {}, in that order", all.join(", ")),
        )
        .that(
            names(&self.fresh_instances.per_problem) == all
                && self.fresh_instances.per_problem.iter().all(|(_, n)| *n >= 1),
            "fresh_instances.per_problem",
            format!("{:?}", self.fresh_instances.per_problem),
            &format!("at least 1 instance of each of {}, in that order", all.join(", ")),
        )
        // A fresh instance must not be a calibration instance.
        .that(
            self.fresh_instances.seeds_from >= most,
            "fresh_instances.seeds_from",
            self.fresh_instances.seeds_from,
            &format!("at least the most calibration instances of a problem, {most}"),
        );
        c.done()
    }
}

/// The units: one per calibration instance, `{problem}-seed{s}` (the instance is drawn from the
/// run's seed plus `s`), then one per fresh instance, `{problem}-fresh{s}` (drawn from the run's
/// seed plus the protocol's `fresh_instances.seeds_from` plus `s`): they test the safety factor the
/// calibration instances choose.
fn unit_list(settings: &Settings) -> Result<Vec<(&'static str, u64, bool)>> {
    Ok(Protocol::of(settings)?.units())
}

fn unit_name(problem: &str, s: u64, fresh: bool) -> String {
    if fresh {
        format!("{problem}-fresh{s}")
    } else {
        format!("{problem}-seed{s}")
    }
}

/// What one unit stores.
#[derive(serde::Serialize, serde::Deserialize)]
struct InstanceRows {
    cases: Vec<Case>,
    autos: Vec<AutoCase>,
}

pub(crate) struct ErrorBarJob;

impl super::units::Job<super::Section> for ErrorBarJob {
    fn name(&self) -> &'static str {
        "error-bar"
    }

    fn paper_budgets(&self) -> super::units::PaperBudgets {
        super::units::PaperBudgets::Default("the error bar is this testbed's, not the paper's")
    }

    fn about(&self) -> &'static str {
        "the contrastive estimate's error bar against the true error on every problem, beta auto against a grid"
    }

    fn protocol(&self, settings: &Settings) -> Result<serde_json::Value> {
        super::units::encode(&Protocol::of(settings)?)
    }

    fn configurable(&self) -> bool {
        true
    }

    fn units(&self, settings: &Settings) -> Result<Vec<String>> {
        Ok(unit_list(settings)?
            .iter()
            .map(|(p, s, fresh)| unit_name(p, *s, *fresh))
            .collect())
    }

    fn run_unit(&self, settings: &Settings, unit: &str, _: &std::path::Path) -> Result<serde_json::Value> {
        let (problem, s, fresh) =
            super::units::lookup(self, settings, unit, unit_list(settings)?, |(p, s, f)| {
                unit_name(p, *s, *f)
            })?;
        let from = Protocol::of(settings)?.fresh_instances.seeds_from;
        let seed = settings.seed + if fresh { from + s } else { s };
        let (cases, autos) = calibrate(problem, seed, settings.quick())?;
        super::units::encode(&InstanceRows { cases, autos })
    }

    fn report(
        &self,
        settings: &Settings,
        units: &[super::units::Stored],
        files: &mut Vec<PathBuf>,
    ) -> Result<crate::report::template::Context> {
        // The fresh instances' `--beta auto` runs are not reported: the comparison is the
        // calibration instances' (they run as a calibration unit does, one code path).
        let (mut cases, mut autos, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
        for stored in units {
            let rows: InstanceRows = super::units::decode(stored)?;
            if stored.unit.contains("-fresh") {
                fresh.extend(rows.cases);
            } else {
                cases.extend(rows.cases);
                autos.extend(rows.autos);
            }
        }
        Ok(super::writeup::error_bar_section(&report(
            settings, &cases, &autos, &fresh, files,
        )?))
    }
}

fn report(
    settings: &Settings,
    cases: &[Case],
    autos: &[AutoCase],
    fresh: &[Case],
    files: &mut Vec<PathBuf>,
) -> Result<CalibrationResults> {
    let protocol = Protocol::of(settings)?;
    let instances_per_problem = counts_text(&protocol.instances);
    let case_rows = |cases: &[Case]| -> Vec<String> {
        cases
            .iter()
            .map(|c| {
                format!(
                    "{},{},{},{:e},{:e},{:e},{:e},{:e},{:e},{},{},{},{:e}",
                    c.problem,
                    c.seed,
                    c.variant.name(),
                    c.beta,
                    c.tolerance,
                    c.error,
                    c.bar,
                    c.truncation,
                    c.phase_precision,
                    c.source,
                    c.bar_gradient_evaluations,
                    c.bar_second_order_products,
                    c.order_ratio
                )
            })
            .collect()
    };
    const CASE_HEADER: &str = "problem,seed,variant,beta,tolerance,abs_error,error_bar,truncation,phase_precision,distances,bar_gradient_evaluations,bar_second_order_products,order_ratio";
    write_csv(
        &settings.out.join("error_bar_calibration.csv"),
        CASE_HEADER,
        &case_rows(cases),
        files,
    )?;
    write_csv(
        &settings.out.join("error_bar_fresh.csv"),
        CASE_HEADER,
        &case_rows(fresh),
        files,
    )?;
    let auto_rows: Vec<String> = autos
        .iter()
        .map(|a| {
            format!(
                "{},{},{},{:e},{:e},{:e},{:e},{:e},{},{},{}",
                a.problem,
                a.seed,
                a.variant.name(),
                a.chosen,
                a.error,
                a.bar,
                a.best_beta,
                a.best_error,
                a.gradient_evaluations,
                a.plain_gradient_evaluations,
                a.second_order_products
            )
        })
        .collect();
    write_csv(
        &settings.out.join("beta_auto.csv"),
        "problem,seed,variant,chosen_beta,abs_error,error_bar,grid_best_beta,grid_best_error,gradient_evaluations,plain_gradient_evaluations,second_order_products",
        &auto_rows,
        files,
    )?;

    let rows: Vec<CalibrationRow> = PROBLEMS
        .iter()
        .map(|&name| {
            let c: Vec<&Case> = cases.iter().filter(|c| c.problem == name).collect();
            let a: Vec<&AutoCase> = autos.iter().filter(|a| a.problem == name).collect();
            summarise(name, &c, &a)
        })
        .collect();
    let total = summarise(
        "all",
        &cases.iter().collect::<Vec<_>>(),
        &autos.iter().collect::<Vec<_>>(),
    );
    let chosen_factor = chosen_factor(cases);
    let table = table(
        cases,
        fresh,
        rows.iter().chain(std::iter::once(&total)),
        &instances_per_problem,
        chosen_factor,
        &protocol.fresh_instances,
    )?;
    write_table(settings, "error_bar.md", &table, files)?;

    let scatter = comparison_panel(
        [
            "error bar against the true error",
            "|estimate - dJ/dtheta|",
            "error bar",
        ],
        &cases
            .iter()
            .filter(|c| c.bar.is_finite() && c.error > 0.0)
            .map(|c| (c.problem.as_str(), (c.error, c.bar)))
            .collect::<Vec<_>>(),
        ("bar = error", "bar = 10 x error", 10.0),
    );
    let auto_panel = comparison_panel(
        [
            "beta auto against the grid's best",
            "grid's best error",
            "error at the chosen beta",
        ],
        &autos
            .iter()
            .filter(|a| a.best_error > 0.0)
            .map(|a| (a.problem.as_str(), (a.best_error, a.error)))
            .collect::<Vec<_>>(),
        ("equal", "3 x", 3.0),
    );
    save(
        settings,
        "error_bar_calibration",
        &Figure {
            panels: vec![scatter, auto_panel],
            columns: 2,
        },
        files,
    )?;
    let fresh = (!fresh.is_empty()).then(|| {
        let (plain, scaled) = (Scaled::of(fresh, 1.0), Scaled::of(fresh, chosen_factor));
        FreshTest {
            factor: chosen_factor,
            instances: scaled.instances,
            covered_as_computed: plain.instances_covered,
            covered_scaled: scaled.instances_covered,
            interval_scaled: crate::stats::clopper_pearson(scaled.instances_covered, scaled.instances, 0.95),
            median_ratio_as_computed: plain.median_ratio,
            median_ratio_scaled: scaled.median_ratio,
        }
    });
    Ok(CalibrationResults {
        rows,
        total,
        instances_per_problem,
        fresh,
    })
}
