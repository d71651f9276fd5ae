//! Error versus nudging strength and versus phase precision (MATH.md §3): the quadratic problem
//! (every constant known) and a small complex-synapse MLP.

use super::{Settings, save, write_csv, write_table};
use crate::bound::{QuadraticTheory, theory_slopes};
use crate::error::Result;
use crate::estimator::Variant;
use crate::fit::{DeltaFit, VariantFit, curves, fit_delta, fit_variant};
use crate::ground_truth::exact_meta_gradient;
use crate::linalg::{spectrum_bounds, to_dvector};
use crate::mlp::Mlp;
use crate::problem::{
    BilevelProblem, ProblemInstance, Quadratic, QuadraticSpec, SinusoidTask, ToInstanceFile, phase_loss,
};
use crate::problem::{Synapse, SynapseSpec};
use crate::report::plot::{Figure, Panel, Series, Style};
use crate::sweep::{
    self, Budget, CSV_HEADER, EstimatorGrid, ProblemBuilder, ProblemSource, SweepConfig, SweepRow,
};
use std::path::PathBuf;

/// One fitted variant: problem, how the phases were made inexact, the fit.
#[derive(Debug, Clone)]
pub struct FitRow {
    pub problem: String,
    pub phases: String,
    pub fit: VariantFit,
}

#[derive(Debug, Clone)]
pub struct TheoryResults {
    pub fits: Vec<FitRow>,
    pub implicit: Option<DeltaFit>,
    pub t1t2: Option<DeltaFit>,
    /// The complex-synapse instance's curvature at the initial point and at `phi*`.
    pub synapse_min_eigenvalue: f64,
    /// The reference code's defect beside the correct rules: per variant, the median relative
    /// error over the betas of the ablation figure.
    pub ablation: Vec<(Variant, f64)>,
}

const VARIANTS: [Variant; 2] = [Variant::Standard, Variant::Symmetric];

/// The named estimators over the figures' variants and betas.
fn estimators(settings: &Settings, names: &[&str]) -> EstimatorGrid {
    let n = if settings.quick() { 15 } else { 29 };
    EstimatorGrid {
        names: names.iter().map(|s| s.to_string()).collect(),
        variants: VARIANTS.to_vec(),
        betas: sweep::parse_log_range(&format!("1e-8:1e-1:{n}")).expect("a valid range"),
        solver_steps: vec![10],
        neumann_alpha: None,
    }
}

fn config(
    problem: ProblemSource,
    settings: &Settings,
    estimators: EstimatorGrid,
    budgets: Vec<Budget>,
    step_size: Option<f64>,
) -> Result<SweepConfig> {
    Ok(SweepConfig {
        problem,
        seeds: vec![settings.seed],
        estimators: estimators.specs()?,
        budgets,
        step_size,
        max_steps: 100_000,
        error_bars: false,
        error_bar_scale: 1.0,
    })
}

fn deltas(settings: &Settings) -> Vec<Budget> {
    let d: &[f64] = if settings.quick() {
        &[1e-10, 1e-8, 1e-6]
    } else {
        &[1e-10, 1e-9, 1e-8, 1e-7, 1e-6]
    };
    d.iter().map(|&d| Budget::Delta(d)).collect()
}

/// The small complex synapse of the figures, with its curvature at the initial point and at
/// `phi*` (`mu`, `smooth`) and the inner step size `0.5 / smooth`.
pub struct FigureSynapse {
    pub problem: Synapse<SinusoidTask>,
    pub mu: f64,
    pub smooth: f64,
    pub step: f64,
}

impl FigureSynapse {
    /// A sweep's problem: this instance for every seed (its file is written for users, not
    /// read back).
    pub fn build(&self, _seed: u64) -> Result<Box<dyn ProblemInstance>> {
        Ok(Box::new(self.problem.clone()))
    }
}

/// The small complex synapse of the figures and its inner-loop settings: 1-4-4-1, 5 shots,
/// `lambda = 20` per synapse (strongly convex where it is used, checked below). Writes its
/// instance file.
pub fn synapse_instance(settings: &Settings, files: &mut Vec<PathBuf>) -> Result<FigureSynapse> {
    let spec = SynapseSpec {
        net: Mlp::parse("1-4-4-1")?,
        per_synapse: true,
        strength: 20.0,
        fixed_strength: false,
    };
    let p = Synapse::random(&spec, 5, settings.seed + 2)?;
    let theta = p.theta().clone();
    let star = exact_meta_gradient(&p, &theta)?.phi_star;
    let (mut mu, mut smooth) = (f64::INFINITY, 0.0f64);
    for point in [p.initial_phi(&theta)?, star] {
        let h = crate::autodiff::dense_second_derivatives(&phase_loss(&p, 0.0), &point, &theta)?.hessian;
        let (lo, hi) = spectrum_bounds(&h);
        (mu, smooth) = (mu.min(lo), smooth.max(hi));
    }
    let path = settings.out.join("synapse_instance.json");
    p.to_instance().write(&path)?;
    files.push(path);
    Ok(FigureSynapse {
        problem: p,
        mu,
        smooth,
        step: 0.5 / smooth,
    })
}

fn error_panel(rows: &[SweepRow], variant: Variant, title: &str) -> Panel {
    let mut panel = Panel::new(
        title,
        "nudging strength beta",
        "|estimate - dJ/dtheta|",
        true,
        true,
    );
    let cs = curves(rows, variant);
    for (i, c) in cs.iter().enumerate() {
        let label = match c.free_steps {
            0 => format!("delta = {:.0e}", c.delta),
            t => format!("T = {t}, delta = {:.0e}", c.delta),
        };
        panel
            .series
            .push(Series::new(label, c.points.clone(), i, Style::LinePoints));
    }
    // Theory slopes, anchored at the ends of the curve with the largest delta.
    if let Some(c) = cs.iter().max_by(|a, b| a.delta.total_cmp(&b.delta)) {
        let [right, left, _, _] = theory_slopes(variant);
        let (b1, e1) = *c.points.last().expect("non-empty");
        let right_line = vec![(b1 / 100.0, e1 * 100f64.powf(-right)), (b1, e1)];
        panel.series.push(Series::new(
            format!("slope {right:+}"),
            right_line,
            6,
            Style::Dashed,
        ));
        let (b0, e0) = c.points[0];
        let left_line = vec![(b0, e0), (b0 * 100.0, e0 * 100f64.powf(left))];
        panel.series.push(Series::new(
            format!("slope {left:+}"),
            left_line,
            6,
            Style::Dashed,
        ));
    }
    panel
}

fn fit_rows(problem: &str, phases: &str, rows: &[SweepRow]) -> Vec<FitRow> {
    VARIANTS
        .iter()
        .map(|&v| FitRow {
            problem: problem.into(),
            phases: phases.into(),
            fit: fit_variant(rows, v),
        })
        .collect()
}

fn csv(rows: &[SweepRow]) -> Vec<String> {
    rows.iter().map(SweepRow::csv).collect()
}

/// The two sweeps behind one error-vs-beta figure, gradient-descent phases of the given step
/// budgets and phases placed at delta: writes `NAME.csv` and the figure, returns the fits and
/// the placed rows.
#[allow(clippy::too_many_arguments)]
fn error_vs_beta(
    settings: &Settings,
    files: &mut Vec<PathBuf>,
    (problem, build): (ProblemSource, &ProblemBuilder),
    label: &str,
    name: &str,
    steps: &[usize],
    step_size: Option<f64>,
    placed_estimators: &[&str],
) -> Result<(Vec<FitRow>, Vec<SweepRow>)> {
    let budgets = steps.iter().map(|&s| Budget::Steps(s)).collect();
    let gd = sweep::run_on(
        &config(
            problem.clone(),
            settings,
            estimators(settings, &["contrastive"]),
            budgets,
            step_size,
        )?,
        (0, 1),
        build,
        &|| {},
    )?;
    let placed = sweep::run_on(
        &config(
            problem,
            settings,
            estimators(settings, placed_estimators),
            deltas(settings),
            None,
        )?,
        (0, 1),
        build,
        &|| {},
    )?;
    let mut all = gd.clone();
    all.extend(placed.iter().cloned());
    write_csv(
        &settings.out.join(format!("{name}.csv")),
        CSV_HEADER,
        &csv(&all),
        files,
    )?;
    let mut panels = Vec::new();
    for (rows, phases) in [(&gd, "gradient descent"), (&placed, "placed at delta")] {
        for v in VARIANTS {
            panels.push(error_panel(rows, v, &format!("{label}, {}: {phases}", v.name())));
        }
    }
    save(settings, name, &Figure { panels, columns: 2 }, files)?;
    let mut fits = fit_rows(label, "gradient descent", &gd);
    fits.extend(fit_rows(label, "placed at delta", &placed));
    Ok((fits, placed))
}

pub fn run(settings: &Settings, files: &mut Vec<PathBuf>) -> Result<TheoryResults> {
    let steps: &[usize] = if settings.quick() {
        &[50, 110, 170]
    } else {
        &[50, 80, 110, 140, 170]
    };
    let quadratic = ProblemSource::Registry("quadratic".into());
    let (mut fits, placed) = error_vs_beta(
        settings,
        files,
        (quadratic.clone(), &|seed| Ok(quadratic.build(seed)?)),
        "quadratic",
        "error_vs_beta_quadratic",
        steps,
        None,
        &["contrastive", "implicit", "t1t2"],
    )?;
    // The complex synapse: budgets in units of its condition number.
    let synapse = synapse_instance(settings, files)?;
    let (mu, smooth, step) = (synapse.mu, synapse.smooth, synapse.step);
    let multiples: &[f64] = if settings.quick() {
        &[10.0, 22.0, 34.0]
    } else {
        &[10.0, 16.0, 22.0, 28.0, 34.0]
    };
    let syn_steps: Vec<usize> = multiples.iter().map(|k| (k * smooth / mu) as usize).collect();
    let (syn_fits, _) = error_vs_beta(
        settings,
        files,
        (ProblemSource::Custom("synapse".into()), &|seed| {
            synapse.build(seed)
        }),
        "complex synapse",
        "error_vs_beta_synapse",
        &syn_steps,
        Some(step),
        &["contrastive"],
    )?;
    fits.extend(syn_fits);

    best_beta_figure(settings, &placed, files)?;
    write_table(settings, "slopes.md", &slopes_table(&fits), files)?;
    let ablation = reference_code_ablation(settings, files)?;
    Ok(TheoryResults {
        fits,
        implicit: fit_delta(&placed, "implicit"),
        t1t2: fit_delta(&placed, "t1t2"),
        synapse_min_eigenvalue: mu,
        ablation,
    })
}

/// The authors' code's "symmetric" rule, whose `-beta` phase drops the outer loss, beside the
/// correct rules on the quadratic with converged gradient-descent phases (`|grad| <= 1e-12`), so
/// that only the rule differs: `reference_code_ablation.csv` and its figure.
fn reference_code_ablation(settings: &Settings, files: &mut Vec<PathBuf>) -> Result<Vec<(Variant, f64)>> {
    let variants = [
        Variant::Standard,
        Variant::Symmetric,
        Variant::ReferenceCodeSymmetric,
    ];
    let n = if settings.quick() { 7 } else { 13 };
    let grid = EstimatorGrid {
        variants: variants.to_vec(),
        betas: sweep::parse_log_range(&format!("1e-4:1e-1:{n}")).expect("a valid range"),
        ..estimators(settings, &["contrastive"])
    };
    let c = config(
        ProblemSource::Registry("quadratic".into()),
        settings,
        grid,
        vec![Budget::Tolerance(1e-12)],
        None,
    )?;
    let rows = sweep::run(&c, (0, 1), &|| {})?;
    write_csv(
        &settings.out.join("reference_code_ablation.csv"),
        CSV_HEADER,
        &csv(&rows),
        files,
    )?;
    let mut panel = Panel::new(
        "the reference code's symmetric rule (quadratic, converged phases)",
        "nudging strength beta",
        "relative error",
        true,
        true,
    );
    let mut medians = Vec::new();
    for (i, v) in variants.into_iter().enumerate() {
        let mut pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.variant() == v.name())
            .filter_map(|r| Some((r.beta?, r.rel_error)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut errors: Vec<f64> = pts.iter().map(|p| p.1).collect();
        errors.sort_by(f64::total_cmp);
        medians.push((v, errors[errors.len() / 2]));
        panel
            .series
            .push(Series::new(v.name(), pts, i, Style::LinePoints));
    }
    save(
        settings,
        "reference_code_ablation",
        &Figure {
            panels: vec![panel],
            columns: 1,
        },
        files,
    )?;
    Ok(medians)
}

/// Best beta and best error against delta, measured and predicted by the bound, and the
/// implicit estimators' error against delta.
fn best_beta_figure(settings: &Settings, placed: &[SweepRow], files: &mut Vec<PathBuf>) -> Result<()> {
    let q = Quadratic::random(&QuadraticSpec::default(), settings.seed)?;
    let theory = QuadraticTheory::new(&q, &to_dvector(q.theta())?)?;
    let mut beta_panel = Panel::new(
        "best beta vs delta (quadratic)",
        "phase precision delta",
        "best beta",
        true,
        true,
    );
    let mut error_panel = Panel::new(
        "best error vs delta (quadratic)",
        "phase precision delta",
        "best |error|",
        true,
        true,
    );
    let mut rows = Vec::new();
    for (i, v) in VARIANTS.into_iter().enumerate() {
        let mut measured = Vec::new();
        let mut predicted = Vec::new();
        for c in curves(placed, v) {
            let (b, e) = c.minimum();
            let (pb, pe) = theory.best(v, c.delta);
            rows.push(format!("{},{:e},{b:e},{e:e},{pb:e},{pe:e}", v.name(), c.delta));
            measured.push((c.delta, b, e));
            predicted.push((c.delta, pb, pe));
        }
        beta_panel.series.push(Series::new(
            format!("{} measured", v.name()),
            measured.iter().map(|m| (m.0, m.1)).collect(),
            i,
            Style::LinePoints,
        ));
        beta_panel.series.push(Series::new(
            format!("{} bound's optimum", v.name()),
            predicted.iter().map(|m| (m.0, m.1)).collect(),
            i,
            Style::Dashed,
        ));
        error_panel.series.push(Series::new(
            format!("{} measured", v.name()),
            measured.iter().map(|m| (m.0, m.2)).collect(),
            i,
            Style::LinePoints,
        ));
        error_panel.series.push(Series::new(
            format!("{} bound at optimum", v.name()),
            predicted.iter().map(|m| (m.0, m.2)).collect(),
            i,
            Style::Dashed,
        ));
    }
    let mut implicit_panel = Panel::new(
        "implicit estimators vs delta (quadratic)",
        "phase precision delta",
        "|estimate - dJ/dtheta|",
        true,
        true,
    );
    for (i, name) in ["implicit", "t1t2"].into_iter().enumerate() {
        let mut pts: Vec<(f64, f64)> = placed
            .iter()
            .filter(|r| r.estimator() == name)
            .filter_map(|r| r.measured_delta.map(|d| (d, r.abs_error)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let label = if name == "implicit" {
            "implicit (dense), slope +1 in theory"
        } else {
            "T1-T2: a floor"
        };
        implicit_panel
            .series
            .push(Series::new(label, pts, i + 2, Style::LinePoints));
    }
    write_csv(
        &settings.out.join("best_beta_vs_delta.csv"),
        "variant,delta,best_beta,best_error,bound_best_beta,bound_best_error",
        &rows,
        files,
    )?;
    save(
        settings,
        "best_beta_vs_delta",
        &Figure {
            panels: vec![beta_panel, error_panel, implicit_panel],
            columns: 3,
        },
        files,
    )
}

fn slopes_table(fits: &[FitRow]) -> String {
    let mut t = String::from(
        "# Slopes on log-log axes against theory\n\n\
         Generated by `cml figures`. Measured slope (theory in parentheses).\n\n\
         | problem | phases | variant | error vs beta, right | error vs beta, left | best beta vs delta | best error vs delta |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in fits {
        let f = &r.fit;
        let cell = |m: Option<f64>, th: f64| {
            format!("{} ({:+.2})", m.map_or("n/a".into(), |m| format!("{m:+.2}")), th)
        };
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.problem,
            r.phases,
            f.variant,
            cell(f.right, f.theory[0]),
            cell(f.left, f.theory[1]),
            cell(f.best_beta_vs_delta, f.theory[2]),
            cell(f.best_error_vs_delta, f.theory[3])
        ));
    }
    t
}
