//! The write-up, `paper/README.md`: the prose is the template `writeup.md`, and this module fills
//! in the numbers measured by the same run that wrote the tables, so every number in it is one
//! that was measured (see `template.rs` for the template's few rules).

use super::{Results, Settings, num};
use crate::error::{CmlError, Result};
use crate::fit::VariantFit;
use crate::report::template::{self, Context};
use crate::stats::{Comparison, Verdict};

const TEMPLATE: &str = include_str!("writeup.md");

fn slopes(f: &VariantFit) -> [Option<f64>; 4] {
    [f.right, f.left, f.best_beta_vs_delta, f.best_error_vs_delta]
}

/// Largest distance of the measured slopes from theory (`None` when a slope is missing).
fn worst_gap(f: &VariantFit) -> Option<f64> {
    slopes(f)
        .iter()
        .zip(f.theory)
        .map(|(m, t)| m.map(|m| (m - t).abs()))
        .try_fold(0.0f64, |a, g| g.map(|g| a.max(g)))
}

fn fmt_slopes(f: &VariantFit) -> String {
    slopes(f)
        .iter()
        .zip(f.theory)
        .map(|(m, t)| format!("{} (theory {t:+.2})", signed(*m)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn signed(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:+.2}"))
}

pub fn render(settings: &Settings, r: &Results) -> Result<String> {
    let figures = format!(
        "../{}",
        settings
            .out
            .file_name()
            .map_or("figures".into(), |n| n.to_string_lossy().into_owned())
    );
    let context = Context::new()
        .text("figures", figures)
        .text("quick_flag", if settings.quick() { " --quick" } else { "" })
        .text("seed", settings.seed)
        .flag("quick", settings.quick());
    // The ledger of the paper's claims: the rows every job's section contributes, in job order.
    let ledger: Vec<Context> = r
        .sections
        .iter()
        .flat_map(|(_, c)| c.items("ledger").iter().cloned())
        .collect();
    let mut context = context.list("ledger", ledger);
    // Every job's section, or an empty list (left out) for a job that did not run.
    for job in super::registry() {
        let key = job.name().replace('-', "_");
        let section = r
            .sections
            .iter()
            .find(|(n, _)| *n == job.name())
            .map(|(_, c)| c.clone());
        context = context.section_named(key, section);
    }
    let context = context.section(
        "elapsed",
        r.unit_seconds
            .map(|secs| Context::new().text("seconds", format!("{secs:.0}"))),
    );
    template::render(TEMPLATE, &context).map_err(|reason| {
        CmlError::invalid(
            "the write-up template (src/experiments/writeup.md)",
            "a tag",
            reason,
        )
    })
}

/// One row of the ledger of the paper's claims: the claim, the table holding the evidence, the
/// test, and the verdict computed from the data.
fn ledger_row(claim: String, evidence: &str, test: &str, verdict: String) -> Context {
    Context::new()
        .text("claim", claim)
        .text("evidence", evidence)
        .text("test", test)
        .text("verdict", verdict)
}

/// A comparison of the rule (first) with a reference (second) as a claim's verdict: *matches*
/// where the equivalence test holds (saying which way a significant difference inside the margin
/// goes), *outperforms* or *underperforms* by the sign of a difference
/// (`lower_is_better` for losses and regrets), *inconclusive* otherwise.
fn claim_verdict(verdict: Verdict, mean: f64, lower_is_better: bool) -> &'static str {
    match verdict {
        Verdict::Equivalent => "matches",
        Verdict::EquivalentYetDiffers if (mean < 0.0) == lower_is_better => {
            "matches, significantly better inside the margin"
        }
        Verdict::EquivalentYetDiffers => "matches, significantly worse inside the margin",
        Verdict::Differs if (mean < 0.0) == lower_is_better => "outperforms",
        Verdict::Differs => "underperforms",
        Verdict::Inconclusive => "inconclusive",
    }
}

pub(super) fn theory_section(t: &super::theory::TheoryResults) -> Context {
    let claims = t
        .fits
        .iter()
        .map(|row| {
            let verdict = match worst_gap(&row.fit) {
                Some(g) if g <= 0.15 => format!("**agrees** (every slope within {} of theory)", num(g)),
                Some(g) => format!("**differs** (largest gap {})", num(g)),
                None => "**not measurable** (too few points on one side)".into(),
            };
            Context::new()
                .text("problem", &row.problem)
                .text("phases", &row.phases)
                .text("variant", &row.fit.variant)
                .text("verdict", verdict)
                .text("slopes", fmt_slopes(&row.fit))
        })
        .collect();
    let implicit = match (&t.implicit, &t.t1t2) {
        (Some(i), Some(t1)) => Some(
            Context::new()
                .text("slope", signed(i.slope))
                .text("t1t2_floor", num(t1.floor)),
        ),
        _ => None,
    };
    // The bound's orders, where its model holds: the quadratic with phases placed at delta.
    let mut ledger: Vec<Context> = t
        .fits
        .iter()
        .filter(|row| row.problem == "quadratic" && row.phases == "placed at delta")
        .map(|row| {
            let verdict = match worst_gap(&row.fit) {
                Some(g) if g <= 0.15 => format!("agrees (every slope within {} of theory)", num(g)),
                Some(g) => format!("differs (largest gap {})", num(g)),
                None => "inconclusive (too few points on one side)".into(),
            };
            ledger_row(
                format!(
                    "The error bound's orders in beta and delta, {} variant",
                    row.fit.variant
                ),
                "slopes.md",
                "log-log slopes within 0.15 of theory",
                verdict,
            )
        })
        .collect();
    if let Some(defect) = t
        .ablation
        .iter()
        .find(|(v, _)| *v == crate::estimator::Variant::ReferenceCodeSymmetric)
    {
        let e = defect.1;
        ledger.push(ledger_row(
            "The reference code's -beta phase (without the outer loss) estimates half the meta-gradient"
                .into(),
            "reference_code_ablation.csv",
            "median relative error within 0.05 of 1/2",
            if (e - 0.5).abs() <= 0.05 {
                format!("confirmed (median relative error {e:.3})")
            } else {
                format!("not confirmed (median relative error {e:.3})")
            },
        ));
    }
    Context::new()
        .list("ledger", ledger)
        .text("synapse_min_eigenvalue", num(t.synapse_min_eigenvalue))
        .list("claims", claims)
        .section("implicit", implicit)
        .section("symmetric_floor", symmetric_floor(&t.fits))
        .section("ablation", ablation(&t.ablation))
}

pub(super) fn compute_section(c: &super::compute::ComputeResults) -> Context {
    let cheapest = c
        .cheapest
        .iter()
        .map(|ch| {
            Context::new()
                .text("threshold", format!("{:e}", ch.threshold))
                .text("label", &ch.label)
                .text(
                    "work",
                    ch.row.as_ref().map_or("not reached on this grid".into(), |row| {
                        format!("{} units of work", row.total_cost())
                    }),
                )
        })
        .collect();
    Context::new().list("cheapest", cheapest)
}

pub(super) fn training_section(t: &super::training::TrainingResults) -> Context {
    let finals = t
        .finals
        .iter()
        .map(|f| {
            let significant = f.improvement_holm < super::training::ALPHA;
            let verdict = match (significant, f.improvement > 0.0) {
                (true, true) => "lower than its matched baseline (Holm-adjusted p below 0.05)",
                (true, false) => "**higher** than its matched baseline (Holm-adjusted p below 0.05)",
                (false, _) => "not distinguishable from its matched baseline after Holm's correction",
            };
            let stopped = if f.diverged.is_empty() {
                String::new()
            } else {
                format!(
                    " (an inner phase diverged and stopped the run: {})",
                    f.diverged.join("; ")
                )
            };
            Context::new()
                .text("model", &f.model)
                .text("estimator", &f.estimator)
                .text("mean", num(f.mean))
                .text("ci95", num(f.ci95))
                .text("initial", num(f.initial_mean))
                .text("improvement", num(f.improvement))
                .text("improvement_ci95", num(f.improvement_ci95))
                .text("verdict", verdict)
                .text("stopped", stopped)
        })
        .collect();
    let listed = |wanted: fn(Verdict) -> bool| -> Vec<String> {
        t.differences
            .iter()
            .filter(|d| wanted(d.verdict))
            .map(|d| {
                format!(
                    "{}: {} vs {} ({} ± {}, margin ± {})",
                    d.model,
                    d.first,
                    d.second,
                    num(d.mean),
                    num(d.ci95),
                    num(d.margin)
                )
            })
            .collect()
    };
    let differing = listed(|v| v == Verdict::Differs);
    let equivalent = listed(Verdict::is_equivalent);
    // The rule against each reference, per model: lower final loss is better.
    let rule = super::training::ESTIMATORS[0].1;
    let ledger: Vec<Context> = t
        .differences
        .iter()
        .filter(|d| d.first == rule)
        .map(|d| {
            let verdict = claim_verdict(d.verdict, d.mean, true);
            ledger_row(
                format!(
                    "Sinusoid regression, {} model: the rule matches or outperforms {}",
                    d.model, d.second
                ),
                "final_loss.md",
                "paired t-test and TOST over seeds, Holm-corrected",
                format!(
                    "{verdict} (difference {} ± {}, margin ± {})",
                    num(d.mean),
                    num(d.ci95),
                    num(d.margin)
                ),
            )
        })
        .collect();
    Context::new()
        .text("seeds", t.seeds)
        .text("net", &t.net)
        .text("meta_steps", t.meta_steps)
        .text("meta_batch", t.meta_batch)
        .text("free_steps", t.free_steps)
        .text("nudged_steps", t.nudged_steps)
        .text("test_tasks", t.test_tasks)
        .text("validation_tasks", t.validation_tasks)
        .list("finals", finals)
        .text("differing", differing.len())
        .text("pairs", t.differences.len())
        .text("differences", super::joined_or_none(&differing, "; "))
        .text("equivalent_count", equivalent.len())
        .text("equivalent", super::joined_or_none(&equivalent, "; "))
        .text("margin", super::training::EQUIVALENCE_MARGIN)
        .list("ledger", ledger)
        .text("choices", super::training::choices_sentence(t))
        .text(
            "paper_scale",
            format!(
                "{:.0}",
                (2000.0 * 25.0) / (t.meta_steps as f64 * t.meta_batch as f64)
            ),
        )
}

/// Growth from the smallest to the largest `K`, judged between the two largest (a fixed
/// overhead dominates small `K`): `(K, contrastive, BPTT)` at the first, second-to-last and
/// last `K`.
fn growth(
    first: (usize, usize, usize),
    before_last: (usize, usize, usize),
    last: (usize, usize, usize),
) -> Context {
    Context::new()
        .text("k_first", first.0)
        .text("k_before_last", before_last.0)
        .text("k_last", last.0)
        .text("contrastive_first", first.1)
        .text("contrastive_last", last.1)
        .text("bptt_first", first.2)
        .text("bptt_last", last.2)
        .text(
            "contrastive_growth",
            growth_verdict(before_last.0, last.0, before_last.1, last.1),
        )
        .text(
            "bptt_growth",
            growth_verdict(before_last.0, last.0, before_last.2, last.2),
        )
}

pub(super) fn cost_section(c: &super::compute::CostResults) -> Context {
    // `(K, floats)` at the first, second-to-last and last `K` of an estimator.
    let floats = |name: &str| -> Option<[(usize, usize); 3]> {
        let rows: Vec<_> = c.rows.iter().filter(|r| r.estimator == name).collect();
        let n = rows.len();
        let (a, b) = (rows.get(n.checked_sub(2)?)?, rows.last()?);
        Some([
            (rows.first()?.k, rows.first()?.floats_kept),
            (a.k, a.floats_kept),
            (b.k, b.floats_kept),
        ])
    };
    let floats = match (floats("contrastive"), floats("bptt")) {
        (Some(cm), Some(bp)) => Some(growth(
            (cm[0].0, cm[0].1, bp[0].1),
            (cm[1].0, cm[1].1, bp[1].1),
            (cm[2].0, cm[2].1, bp[2].1),
        )),
        _ => None,
    };
    Context::new().section("floats", floats)
}

/// The cost section with the allocator bench's measurements, read from the output folder.
pub(super) fn with_measured_memory(settings: &Settings, section: Context) -> Context {
    let (memory, missing) = match measured_memory(&settings.out) {
        Ok(m) => (Some(m), None),
        Err(why) => (None, Some(Context::new().text("why", why))),
    };
    section
        .section("memory", memory)
        .section("memory_missing", missing)
}

pub(super) fn weight_decay_section(w: &super::weight_decay::WeightDecayResults) -> Context {
    let losses: Vec<String> = w
        .methods
        .iter()
        .map(|m| {
            let (e, h) = m.stat(|l| l.test);
            format!("{} {} +- {}", m.method, num(e), num(h))
        })
        .collect();
    let verdicts: Vec<String> = w
        .comparisons
        .iter()
        .map(|c| {
            let k = &c.comparison;
            format!(
                "{} vs {} {} ± {} ({})",
                c.first,
                c.second,
                num(k.mean),
                num(k.ci95),
                k.verdict.describe()
            )
        })
        .collect();
    let ledger = rule_rows(&w.comparisons, "Diabetes weight decay", "weight_decay.md", |k| {
        format!(
            "{} (test loss difference {} ± {}, margin ± {})",
            claim_verdict(k.verdict, k.mean, true),
            num(k.mean),
            num(k.ci95),
            num(k.margin)
        )
    });
    // Searches are named "<method> seed <s>" (the step-size searches "seed <s>").
    let chosen = |setting: &str, prefix: &str| -> Vec<f64> {
        w.searches
            .iter()
            .chain(&w.step_sizes)
            .filter(|x| x.setting == setting && x.model.starts_with(prefix))
            .map(|x| x.chosen)
            .collect()
    };
    let rates: Vec<String> = w.methods[2..]
        .iter()
        .map(|m| {
            format!(
                "{} {:?}",
                m.method,
                chosen("meta_lr", &format!("{} seed ", m.method))
            )
        })
        .collect();
    let edges = w
        .searches
        .iter()
        .chain(&w.step_sizes)
        .filter(|x| x.open_edge())
        .count();
    let choices = format!(
        "inner step size per seed {:?}; meta-learning rate per seed: {}; the contrastive rule's beta per seed \
         {:?} and nudged steps per seed {:?}; {edges} of {} searches at an edge of the extended grid",
        chosen("step_size", "seed "),
        rates.join(", "),
        chosen("beta", ""),
        chosen("nudged_steps", ""),
        w.searches.len() + w.step_sizes.len()
    );
    Context::new()
        .list("ledger", ledger)
        .text("choices", choices)
        .text("meta_steps", w.protocol.meta_steps)
        .text("seeds", w.protocol.seeds)
        .text("losses", losses.join("; "))
        .text("verdicts", verdicts.join("; "))
}

/// The error bar's calibration (docs/ERROR_BAR.md), with the targets as verdicts.
pub(super) fn error_bar_section(e: &super::error_bar::CalibrationResults) -> Context {
    let t = &e.total;
    let verdict = |ok: bool| if ok { "meets" } else { "misses" };
    let per_problem: Vec<String> = e
        .rows
        .iter()
        .map(|r| format!("{} {} / {}", r.problem, num(r.coverage), num(r.median_ratio)))
        .collect();
    // Per problem, what the instances' interval says about coverage of at least 0.9.
    let per_problem_instances: Vec<String> = e
        .rows
        .iter()
        .map(|r| {
            let (lo, hi) = r.instance_interval;
            let word = if lo >= 0.9 {
                "at least 0.9"
            } else if hi < 0.9 {
                "below 0.9"
            } else {
                "not established"
            };
            format!(
                "{} {word} ({} of {}, [{lo:.3}, {hi:.3}])",
                r.problem, r.instances_covered, r.instances
            )
        })
        .collect();
    let fresh = e.fresh.as_ref().map(|f| {
        let (lo, hi) = f.interval_scaled;
        Context::new()
            .text("factor", f.factor)
            .text("instances", f.instances)
            .text("covered_as_computed", f.covered_as_computed)
            .text("covered_scaled", f.covered_scaled)
            .text("interval", format!("[{lo:.3}, {hi:.3}]"))
            .text("median_as_computed", num(f.median_ratio_as_computed))
            .text("median_scaled", num(f.median_ratio_scaled))
            .text(
                "verdict",
                if lo >= 0.9 {
                    "established"
                } else if hi < 0.9 {
                    "refuted"
                } else {
                    "not established"
                },
            )
    });
    Context::new()
        .section("fresh", fresh)
        .text("instances_per_problem", &e.instances_per_problem)
        .text("cases", t.cases)
        .text("coverage", num(t.coverage))
        .text("coverage_verdict", verdict(t.coverage >= 0.9))
        .text("instances", t.instances)
        .text("instances_covered", t.instances_covered)
        .text(
            "instance_interval",
            format!("[{:.3}, {:.3}]", t.instance_interval.0, t.instance_interval.1),
        )
        .text(
            "instance_verdict",
            if t.instance_interval.0 >= 0.9 {
                "established: the interval lies above 0.9"
            } else {
                "not established at this number of instances: the interval reaches below 0.9"
            },
        )
        .text("median_ratio", num(t.median_ratio))
        .text("ratio_verdict", verdict(t.median_ratio <= 10.0))
        .text("per_problem", per_problem.join("; "))
        .text("per_problem_instances", per_problem_instances.join("; "))
        .text("unbounded", t.unbounded)
        .text("auto_runs", t.auto_runs)
        .text("auto_median_ratio", num(t.auto_median_ratio))
        .text("auto_verdict", verdict(t.auto_median_ratio <= 3.0))
        .text("auto_within_3x", num(t.auto_within_3x))
        .text("auto_cost_ratio", num(t.auto_cost_ratio))
}

/// Runs that stopped early, for the sections that list them.
fn stopped(runs: &[String]) -> Option<Context> {
    (!runs.is_empty()).then(|| Context::new().text("which", runs.join("; ")))
}

/// The wheel bandit (docs/BANDIT.md): the regret table's gist and the paired verdicts.
pub(super) fn bandit_section(b: &super::bandit::BanditResults) -> Context {
    let p = &b.protocol;
    let meta: Vec<String> = b
        .meta_seconds
        .iter()
        .map(|(n, t)| format!("{n} {t:.0} s"))
        .collect();
    // One ledger row per meta-learned agent and reference, the verdict at every delta; then one
    // per deployment against its matched baseline.
    let mut ledger = Vec::new();
    let mut gains = Vec::new();
    for (family, claim, is_matched) in [
        (&b.comparisons, "matches or outperforms", false),
        (&b.matched, "outperforms its matched baseline,", true),
    ] {
        for (agent, reference, verdicts) in verdicts_by_pair(family) {
            ledger.push(ledger_row(
                format!("Wheel bandit, {agent}: {claim} {reference}"),
                "bandit.md",
                "paired t-test and TOST over meta-training seeds, Holm-corrected",
                verdicts.clone(),
            ));
            if is_matched {
                gains.push(format!("{agent} ({})", verdicts.replace("; ", ", ")));
            }
        }
    }
    let matched = (!b.matched.is_empty()).then(|| {
        Context::new()
            .text("count", b.matched.len())
            .text("gains", gains.join("; "))
    });
    let counts = |wanted: fn(Verdict) -> bool| {
        b.comparisons
            .iter()
            .filter(|c| wanted(c.comparison.verdict))
            .count()
    };
    let runs = p.deltas.len() * p.meta_seeds * p.runs_per_seed;
    let paper_ratio = (80_000.0 * 50.0) / (p.run.steps * p.meta_seeds * p.runs_per_seed) as f64;
    Context::new()
        .list("ledger", ledger)
        .text("curve_delta", b.curve_delta)
        .text("seeds", p.meta_seeds)
        .text("runs_per_seed", p.runs_per_seed)
        .text("meta_steps", p.meta_steps)
        .text("meta_batch", p.meta_batch)
        .text("contexts", p.run.steps)
        .text("maml_steps", p.maml_steps)
        .text("maml_step_size", b.maml_step_size())
        .text(
            "step_size",
            match b.step_size_searches.as_slice() {
                [] => format!(
                    "the contrastive phases' {}, MAML's {}, not searched",
                    p.phase_step_size, p.maml_step_size
                ),
                s => super::searches::chosen_values(s),
            },
        )
        .text(
            "nudged_steps",
            match b.nudged_steps_searches.as_slice() {
                [] if p.per_learner.is_some() => "each agent's own, the paper's code's, not searched".into(),
                [] => format!("{} Adam steps, not searched", p.nudged_steps),
                s => super::searches::chosen_values(s),
            },
        )
        .text(
            "beta",
            match b.searches.as_slice() {
                [] => "the paper's code's, not searched".to_string(),
                s => super::searches::chosen_values(s),
            },
        )
        .text(
            "meta_lr",
            match b.rate_searches.as_slice() {
                [] if p.per_learner.is_some() => "each agent's own, the paper's code's, not searched".into(),
                [] => format!("{} for every agent, not searched", p.meta_lr),
                s => super::searches::chosen_values(s),
            },
        )
        .list(
            "deltas",
            p.deltas.iter().map(|d| Context::new().text("delta", d)).collect(),
        )
        .list("agents", super::bandit::agent_rows(b))
        .section("stopped", stopped(&b.stopped))
        .section("matched", matched)
        .text("comparisons", b.comparisons.len())
        .text("differs", counts(|v| v == Verdict::Differs))
        .text("matches", counts(Verdict::is_equivalent))
        .text("inconclusive", counts(|v| v == Verdict::Inconclusive))
        .text("meta_seconds", meta.join(", "))
        .text("runs", runs)
        .text("agent_count", b.agents.len())
        .text("eval_seconds", format!("{:.0}", b.eval_seconds))
        .text("paper_ratio", format!("{paper_ratio:.0}"))
        .text(
            "paper_hours",
            format!("{:.1}", b.eval_seconds * paper_ratio / 3600.0),
        )
}

/// Per (agent, reference) of a bandit family, in order: the claim's verdict at every delta.
fn verdicts_by_pair(family: &[super::bandit::BanditComparison]) -> Vec<(&str, &str, String)> {
    let mut pairs: Vec<(&str, &str, String)> = Vec::new();
    for c in family {
        let k = &c.comparison;
        let verdict = format!("delta {}: {}", c.delta, claim_verdict(k.verdict, k.mean, true));
        match pairs.iter_mut().find(|p| p.0 == c.agent && p.1 == c.reference) {
            Some(p) => p.2 = format!("{}; {verdict}", p.2),
            None => pairs.push((&c.agent, &c.reference, verdict)),
        }
    }
    pairs
}

/// The ledger rows of a weight-decay family: the rule's comparisons (those whose first method is
/// the family's first, the contrastive rule), each with `verdict` of its comparison.
fn rule_rows(
    comparisons: &[super::weight_decay::DecayComparison],
    benchmark: &str,
    evidence: &str,
    verdict: impl Fn(&Comparison) -> String,
) -> Vec<Context> {
    let rule = comparisons.first().map(|c| c.first.as_str());
    comparisons
        .iter()
        .filter(|c| Some(c.first.as_str()) == rule)
        .map(|c| {
            ledger_row(
                format!("{benchmark}: the rule matches or outperforms {}", c.second),
                evidence,
                "paired t-test and TOST over seeds, Holm-corrected",
                verdict(&c.comparison),
            )
        })
        .collect()
}

/// Per-parameter weight decay of the digit classifier (docs/DIGITS.md §4).
pub(super) fn digits_decay_section(d: &super::digits_decay::DigitsDecayResults) -> Context {
    let accuracies: Vec<String> = d
        .methods
        .iter()
        .map(|m| {
            let (a, c) = m.stat(|f| f.test_accuracy);
            format!("{} {:.2}% +- {:.2}%", m.method, 100.0 * a, 100.0 * c)
        })
        .collect();
    // The family of paired comparisons (docs/PROTOCOL.md): every verdict Holm-corrected.
    let verdicts: Vec<String> = d
        .comparisons
        .iter()
        .map(|c| {
            let k = &c.comparison;
            format!(
                "{} vs {} {:+.2} ± {:.2} points ({})",
                c.first,
                c.second,
                100.0 * k.mean,
                100.0 * k.ci95,
                k.verdict.describe()
            )
        })
        .collect();
    let ledger = rule_rows(&d.comparisons, "Digit weight decay", "digits_decay.md", |k| {
        format!(
            "{} (test accuracy difference {:+.2} ± {:.2} points, margin ± {:.1})",
            claim_verdict(k.verdict, k.mean, false),
            100.0 * k.mean,
            100.0 * k.ci95,
            100.0 * k.margin
        )
    });
    Context::new()
        .list("ledger", ledger)
        .text("seeds", d.protocol.seeds)
        .text("accuracies", accuracies.join("; "))
        .text("verdicts", verdicts.join("; "))
        .text(
            "grid",
            format!(
                "{:?}, chosen per seed {:?}{}",
                d.protocol.grid,
                d.chosen_single,
                super::digits_decay::grid_edge_flag(&d.protocol.grid, &d.chosen_single)
            ),
        )
        .text("choices", super::digits_decay::choices_summary(d))
}

/// Few-shot digit classification (docs/DIGITS.md §3).
pub(super) fn few_shot_section(f: &super::few_shot::FewShotResults) -> Context {
    let p = &f.protocol;
    let points = |x: f64| format!("{:.1}", 100.0 * x);
    let methods = f
        .rows
        .iter()
        .map(|m| {
            let significant = m.gain_holm < super::training::ALPHA;
            let verdict = match (significant, m.gain > 0.0) {
                (true, true) => "above its matched baseline",
                (true, false) => "**below** its matched baseline",
                (false, _) => "not distinguishable from its matched baseline",
            };
            Context::new()
                .text("name", m.method)
                .text("shots", m.shots)
                .text("mean", points(m.mean))
                .text("ci95", points(m.ci95))
                .text("baseline", points(m.baseline_mean))
                .text("gain", points(m.gain))
                .text("gain_ci95", points(m.gain_ci95))
                .text("verdict", verdict)
        })
        .collect();
    let ledger = f
        .comparisons
        .iter()
        .map(|c| {
            let k = &c.comparison;
            let verdict = claim_verdict(k.verdict, k.mean, false);
            ledger_row(
                format!(
                    "Few-shot digits, 5-way {}-shot: the rule matches or outperforms {}",
                    c.shots, c.reference
                ),
                "few_shot.md",
                if f.searches.is_empty() {
                    "paired t-test and TOST over seeds, Holm-corrected"
                } else {
                    "paired t-test and TOST over seeds, Holm-corrected; the rule at its searched beta (what that \
                     beta estimates against the exact meta-gradient: docs/DIGITS.md §3)"
                },
                format!(
                    "{verdict} (accuracy difference {} ± {} points, margin ± {})",
                    points(k.mean),
                    points(k.ci95),
                    points(k.margin)
                ),
            )
        })
        .collect();
    let seeds = f.rows.iter().map(|m| m.per_seed.len()).max().unwrap_or(0);
    Context::new()
        .list("ledger", ledger)
        .text("meta_steps", p.meta_steps)
        .text("meta_batch", p.meta_batch)
        .text("test_episodes", p.test_episodes)
        .text("seeds", seeds)
        .text("train_classes", super::few_shot::classes(&f.meta_train_classes))
        .text(
            "validation_classes",
            super::few_shot::classes(&f.validation_classes),
        )
        .text("test_digits", format!("{:?}", crate::digits::META_TEST_DIGITS))
        .text("validation_episodes", p.validation_episodes)
        .text("checkpoints", format!("{:?}", p.checkpoints()))
        .text(
            "beta",
            match f.searches.as_slice() {
                [] => format!("beta = {}, the paper's code's", p.beta),
                s => super::searches::chosen_values(s),
            },
        )
        .text(
            "meta_lr",
            match f.rate_searches.as_slice() {
                [] => format!("Adam at {}, not searched", p.meta_lr),
                s => super::searches::chosen_values(s),
            },
        )
        .text(
            "strength",
            match f.strength_searches.as_slice() {
                [] => format!("{} (1-shot: {}), not searched", p.strength, p.strength_at(1)),
                s => super::searches::chosen_values(s),
            },
        )
        .text(
            "sgd_step",
            match f.sgd_step_searches.as_slice() {
                [] => format!("{}, not searched", p.maml_step_size),
                s => super::searches::chosen_values(s),
            },
        )
        .text(
            "phase_step",
            match f.phase_step_searches.as_slice() {
                [] => format!("{}, the paper's, not searched", super::few_shot::PHASE_STEP_SIZE),
                s => super::searches::chosen_values(s),
            },
        )
        .text(
            "nudged_steps",
            match f.nudged_steps_searches.as_slice() {
                [] => format!("{} steps, not searched", p.nudged_steps),
                s => super::searches::chosen_values(s),
            },
        )
        .list("methods", methods)
        .section("stopped", stopped(&f.stopped))
}

pub(super) fn spiking_section(r: &super::spiking::SpikingResults) -> Result<Context> {
    // The job's table without its title, so the numbers are written once.
    let table = super::spiking::table(r)?;
    let body = table.split_once("\n\n").map_or(table.as_str(), |(_, rest)| rest);
    let cos = r.choice.cosine();
    let mut ledger = vec![ledger_row(
        "Spiking network: the rule runs where it estimates the meta-gradient (halves of the symmetric estimate agree)".into(),
        "spiking.md",
        &format!("mean cosine of the halves on validation tasks at least {}", super::spiking::REGIME_COSINE),
        if cos >= super::spiking::REGIME_COSINE {
            format!("confirmed (cosine {cos:.3} at beta = {})", r.choice.beta)
        } else {
            format!("not confirmed (best cosine {cos:.3} at beta = {})", r.choice.beta)
        },
    )];
    for (reference, k) in r
        .comparisons
        .iter()
        .filter(|c| c.0.starts_with("BPTT") || c.0.starts_with("truncated"))
    {
        let verdict = claim_verdict(k.verdict, k.mean, true);
        ledger.push(ledger_row(
            format!("Spiking network: the rule matches or outperforms {reference}"),
            "spiking.md",
            "paired t-test and TOST over seeds, Holm-corrected",
            format!(
                "{verdict} (MSE difference {} ± {}, margin ± {})",
                num(k.mean),
                num(k.ci95),
                num(k.margin)
            ),
        ));
    }
    Ok(Context::new().list("ledger", ledger).text("table", body))
}

/// How a quantity grows from `k0` to `k1` steps, judged by its log-log slope with a margin of 0.1:
/// flat (|slope| <= 0.1), linear (|slope - 1| <= 0.1), or the slope itself.
fn growth_verdict(k0: usize, k1: usize, v0: usize, v1: usize) -> String {
    if k1 <= k0 || v0 == 0 {
        return "growth not measurable".into();
    }
    let slope = (v1 as f64 / v0 as f64).ln() / (k1 as f64 / k0 as f64).ln();
    if slope.abs() <= 0.1 {
        format!("flat: log-log slope {slope:+.2}, within 0.1 of 0")
    } else if (slope - 1.0).abs() <= 0.1 {
        format!("linear in K: log-log slope {slope:+.2}, within 0.1 of 1")
    } else {
        format!("log-log slope {slope:+.2}")
    }
}

/// The peak bytes measured by the counting-allocator bench, from the CSV it writes beside the
/// figures (`cargo bench --bench memory`; not rerun here, timings are not reproducible), or
/// why there are none.
fn measured_memory(out: &std::path::Path) -> std::result::Result<Context, String> {
    let Ok(csv) = std::fs::read_to_string(out.join("memory_vs_k.csv")) else {
        return Err("run `cargo bench --bench memory` (it writes `memory_vs_k.csv`)".into());
    };
    let rows: Vec<(String, usize, usize)> = csv
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((
                f.first()?.to_string(),
                f.get(1)?.parse().ok()?,
                f.get(2)?.parse().ok()?,
            ))
        })
        .collect();
    // (K, bytes) at the smallest and the two largest K.
    let span = |name: &str| {
        let r: Vec<_> = rows.iter().filter(|r| r.0 == name).collect();
        let n = r.len();
        Some([
            (r.first()?.1, r.first()?.2),
            (r.get(n.checked_sub(2)?)?.1, r.get(n - 2)?.2),
            (r.last()?.1, r.last()?.2),
        ])
    };
    match (span("contrastive"), span("bptt")) {
        (Some(c), Some(b)) => Ok(growth(
            (c[0].0, c[0].1, b[0].1),
            (c[1].0, c[1].1, b[1].1),
            (c[2].0, c[2].1, b[2].1),
        )),
        _ => Err("`memory_vs_k.csv` lacks the contrastive or BPTT rows".into()),
    }
}

/// What gradient-descent phases of equal budgets did to the symmetric variant's `delta / beta`
/// side, from the measured left slopes (docs/THEORY.md §2), with a margin of 0.15.
fn symmetric_floor(fits: &[crate::experiments::theory::FitRow]) -> Option<Context> {
    let gd: Vec<_> = fits
        .iter()
        .filter(|r| r.phases == "gradient descent" && r.fit.variant == "symmetric")
        .collect();
    if gd.is_empty() {
        return None;
    }
    let parts: Vec<String> = gd
        .iter()
        .map(|r| match r.fit.left {
            Some(l) if l.abs() <= 0.15 => {
                format!("{}: flat (left slope {l:+.2}, within 0.15 of 0)", r.problem)
            }
            Some(l) if (l + 1.0).abs() <= 0.15 => {
                format!("{}: the bound's -1 (left slope {l:+.2})", r.problem)
            }
            Some(l) => format!(
                "{}: left slope {l:+.2}, between the floor's 0 and the bound's -1",
                r.problem
            ),
            None => format!("{}: left slope not measurable", r.problem),
        })
        .collect();
    Some(Context::new().text("sides", parts.join("; ")))
}

/// The reference code's defect against the correct rules, from the measured median relative
/// errors. Its estimate is `(g(beta) - g_0) / (2 beta)`, half a forward difference, so its
/// relative error should sit near 1/2 whatever `beta` (docs/THEORY.md §3); the verdict takes a
/// margin of 0.05 around 1/2.
fn ablation(ablation: &[(crate::estimator::Variant, f64)]) -> Option<Context> {
    if ablation.is_empty() {
        return None;
    }
    let list: Vec<String> = ablation
        .iter()
        .map(|(v, e)| format!("{} {e:.3e}", v.name()))
        .collect();
    let defect = ablation
        .iter()
        .find(|(v, _)| *v == crate::estimator::Variant::ReferenceCodeSymmetric)
        .map(|(_, e)| *e);
    let verdict = match defect {
        Some(e) if (e - 0.5).abs() <= 0.05 => format!(
            "the defect's error is {e:.3}, within 0.05 of the 1/2 that half a forward difference predicts: it estimates \
             half the meta-gradient at every `beta`"
        ),
        Some(e) => format!("the defect's error is {e:.3}, not the predicted 1/2 (within 0.05)"),
        None => "the defect was not run".into(),
    };
    Some(
        Context::new()
            .text("medians", list.join(", "))
            .text("verdict", verdict),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claims_verdict_says_which_way_a_difference_inside_the_margin_goes() {
        // The digit job's rule against truncated BPTT: accuracy (higher is better) 0.34 points
        // lower, significant and inside the margin: worse. The sinusoid rule against Reptile:
        // final loss (lower is better) 0.245 lower: better.
        assert_eq!(
            claim_verdict(Verdict::EquivalentYetDiffers, -0.34, false),
            "matches, significantly worse inside the margin"
        );
        assert_eq!(
            claim_verdict(Verdict::EquivalentYetDiffers, -0.245, true),
            "matches, significantly better inside the margin"
        );
        assert_eq!(claim_verdict(Verdict::Equivalent, -0.245, true), "matches");
        assert_eq!(claim_verdict(Verdict::Differs, -0.245, true), "outperforms");
        assert_eq!(claim_verdict(Verdict::Differs, -0.34, false), "underperforms");
    }

    /// The registry and the template name the same jobs: a job without a section would render
    /// nothing, and a section without a job would never render.
    #[test]
    fn every_registered_job_has_one_template_section() {
        for job in super::super::registry() {
            let key = job.name().replace('-', "_");
            let open = format!("{{{{#{key}}}}}");
            let close = format!("{{{{/{key}}}}}");
            assert_eq!(TEMPLATE.matches(&open).count(), 1, "{open} in writeup.md");
            assert_eq!(TEMPLATE.matches(&close).count(), 1, "{close} in writeup.md");
        }
    }
}
