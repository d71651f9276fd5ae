//! Slopes on log-log axes from sweep rows, against the theory of MATH.md §3.

use crate::bound::theory_slopes;
use crate::estimator::Variant;
use crate::sweep::SweepRow;
use std::collections::BTreeMap;

/// Least-squares slope of `y` on `x`; `None` with fewer than 3 points.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// One error-versus-beta curve: one seed, one inner budget.
#[derive(Debug, Clone)]
pub struct Curve {
    /// `(beta, abs_error)`, sorted by beta.
    pub points: Vec<(f64, f64)>,
    /// Median measured delta over the curve.
    pub delta: f64,
    /// The free phase's step budget (0 for phases placed at delta).
    pub free_steps: usize,
}

impl Curve {
    /// The minimum, refined by a parabola through the grid minimum and its neighbours in
    /// log-log coordinates: `(beta*, error*)`.
    pub fn minimum(&self) -> (f64, f64) {
        let logs: Vec<(f64, f64)> = self.points.iter().map(|(b, e)| (b.ln(), e.ln())).collect();
        let i = (0..logs.len())
            .min_by(|&a, &b| logs[a].1.total_cmp(&logs[b].1))
            .expect("non-empty");
        if i == 0 || i + 1 == logs.len() {
            return self.points[i];
        }
        let ((x0, y0), (x1, y1), (x2, y2)) = (logs[i - 1], logs[i], logs[i + 1]);
        let denom = (x0 - x1) * (x0 - x2) * (x1 - x2);
        let a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom;
        let b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom;
        let c = (x1 * x2 * (x1 - x2) * y0 + x2 * x0 * (x2 - x0) * y1 + x0 * x1 * (x0 - x1) * y2) / denom;
        if a <= 0.0 {
            return self.points[i];
        }
        let x = -b / (2.0 * a);
        (x.exp(), (a * x * x + b * x + c).exp())
    }
}

/// Groups the contrastive rows of one variant into curves (one per seed and budget).
pub fn curves(rows: &[SweepRow], variant: Variant) -> Vec<Curve> {
    let mut groups: BTreeMap<(u64, usize, u64), Vec<&SweepRow>> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.estimator() == "contrastive" && r.variant() == variant.name())
    {
        // One curve per seed and budget (steps, tolerance, or placed delta).
        let delta_key = if r.free_steps == 0 {
            r.measured_delta.map_or(u64::MAX, f64::to_bits)
        } else {
            0
        };
        groups
            .entry((r.seed, r.free_steps, r.tolerance.to_bits() ^ delta_key))
            .or_default()
            .push(r);
    }
    groups
        .into_values()
        .map(|g| {
            let mut points: Vec<(f64, f64)> = g
                .iter()
                .map(|r| (r.beta.expect("contrastive rows have beta").abs(), r.abs_error))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut deltas: Vec<f64> = g.iter().filter_map(|r| r.measured_delta).collect();
            deltas.sort_by(f64::total_cmp);
            Curve {
                points,
                delta: deltas.get(deltas.len() / 2).copied().unwrap_or(f64::NAN),
                free_steps: g[0].free_steps,
            }
        })
        .collect()
}

/// Fitted slopes for one contrastive variant, beside theory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VariantFit {
    pub variant: String,
    /// Error vs beta, right of the minimum (beta >= 10 beta*).
    pub right: Option<f64>,
    /// Error vs beta, left of the minimum (beta <= beta* / 10).
    pub left: Option<f64>,
    pub best_beta_vs_delta: Option<f64>,
    pub best_error_vs_delta: Option<f64>,
    /// Theory, in the same order.
    pub theory: [f64; 4],
}

/// Mean of the available values.
fn mean(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

pub fn fit_variant(rows: &[SweepRow], variant: Variant) -> VariantFit {
    let curves = curves(rows, variant);
    let side = |c: &Curve, right: bool| {
        let (beta_min, _) = c.minimum();
        let pts: Vec<(f64, f64)> = c
            .points
            .iter()
            .filter(|(b, _)| {
                if right {
                    *b >= 10.0 * beta_min
                } else {
                    *b <= beta_min / 10.0
                }
            })
            .map(|(b, e)| (b.ln(), e.ln()))
            .collect();
        slope(&pts)
    };
    let minima: Vec<(f64, f64, f64)> = curves
        .iter()
        .map(|c| {
            let (b, e) = c.minimum();
            (c.delta.ln(), b.ln(), e.ln())
        })
        .collect();
    VariantFit {
        variant: variant.name().into(),
        right: mean(curves.iter().map(|c| side(c, true))),
        left: mean(curves.iter().map(|c| side(c, false))),
        best_beta_vs_delta: slope(&minima.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>()),
        best_error_vs_delta: slope(&minima.iter().map(|m| (m.0, m.2)).collect::<Vec<_>>()),
        theory: theory_slopes(variant),
    }
}

/// Error versus measured delta for a non-contrastive estimator.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeltaFit {
    pub estimator: String,
    /// Slope of log error on log delta (implicit: 1 in theory).
    pub slope: Option<f64>,
    /// Smallest relative error reached (T1-T2: a floor that does not vanish).
    pub floor: f64,
}

pub fn fit_delta(rows: &[SweepRow], estimator: &str) -> Option<DeltaFit> {
    let rows: Vec<&SweepRow> = rows.iter().filter(|r| r.estimator() == estimator).collect();
    if rows.is_empty() {
        return None;
    }
    let pts: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| r.measured_delta.map(|d| (d, r.abs_error)))
        .filter(|&(d, e)| d > 0.0 && e > 0.0)
        .map(|(d, e)| (d.ln(), e.ln()))
        .collect();
    Some(DeltaFit {
        estimator: estimator.into(),
        slope: slope(&pts),
        floor: rows.iter().map(|r| r.rel_error).fold(f64::INFINITY, f64::min),
    })
}

/// The cheapest row (least gradient evaluations plus products) of each estimator label
/// reaching `rel_error <= threshold`.
pub fn cheapest(rows: &[SweepRow], threshold: f64) -> BTreeMap<String, Option<SweepRow>> {
    let mut out: BTreeMap<String, Option<SweepRow>> = BTreeMap::new();
    for r in rows {
        let label = if r.estimator().starts_with("contrastive") {
            format!("{} {}", r.estimator(), r.variant())
        } else {
            r.estimator().to_string()
        };
        let entry = out.entry(label).or_default();
        if r.rel_error <= threshold
            && entry
                .as_ref()
                .is_none_or(|best| r.total_cost() < best.total_cost())
        {
            *entry = Some(r.clone());
        }
    }
    out
}
