//! The write-up's view of the validation searches and checkpoint choices (`crate::choice`): their
//! choices in a line, their grids as a Markdown table, the deployed checkpoints as a section.

use crate::choice::{CheckpointSpec, EdgeTrend, Search, whole_steps};

/// The choices of `searches` in one line for the write-up: `subject: setting value` each, an edge
/// choice flagged.
pub(super) fn chosen_values(searches: &[Search]) -> String {
    searches
        .iter()
        .map(|x| {
            format!(
                "{}: {} {}{}{}",
                x.model,
                x.setting,
                x.chosen,
                whole_steps_note(x),
                if let Some(t) = x.lower_edge_trend() {
                    format!(
                        " (at the lower edge of the extended grid, toward which the loss falls as {}^{:.1}, every smaller \
                         value together gaining {:.1e} by that trend: a limit at 0)",
                        x.setting, t.order, t.remaining
                    )
                } else if x.open_edge() {
                    " (at an edge of the extended grid)".into()
                } else if x.flat() {
                    " (every value scored alike)".into()
                } else {
                    String::new()
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A table's section on `beta` searches (`searches`, first column `column`) as `spec` ran them:
/// `meta_steps`, `validation_tasks`, `extensions` and the scores' `table`; `None` where the scale
/// has no such search or no unit of it was given.
pub(super) fn beta_search_context(
    spec: Option<&crate::choice::BetaSearchSpec>,
    searches: &[Search],
    column: &str,
) -> Option<crate::report::template::Context> {
    spec.filter(|_| !searches.is_empty()).map(|s| {
        crate::report::template::Context::new()
            .text("meta_steps", s.meta_steps)
            .text("validation_tasks", s.validation_tasks)
            .text("extensions", s.extensions)
            .text("table", table(searches, column))
    })
}

/// A table's note on the searches that score each value on several search streams, of the
/// whole-run searches `keys` of `protocol` (their `streams`, one where left out); `None` where
/// every one scores on one.
pub(super) fn pooled_context(
    protocol: &impl serde::Serialize,
    keys: &[&str],
) -> Option<crate::report::template::Context> {
    let protocol = serde_json::to_value(protocol).ok()?;
    let which: Vec<String> = keys
        .iter()
        .filter_map(|key| {
            let streams = protocol.get(key)?.get("streams")?.as_u64()?;
            (streams > 1).then(|| format!("`{key}` on {streams} streams"))
        })
        .collect();
    (!which.is_empty()).then(|| crate::report::template::Context::new().text("which", which.join(", ")))
}

/// The whole steps a budget search's choice runs (`None` for a search of another setting).
fn budget_steps(x: &Search) -> Option<usize> {
    (x.setting == "nudged_steps").then(|| whole_steps(x.chosen))
}

/// A budget runs whole steps: what an extension's fractional choice runs, in words (empty for a
/// whole number or another setting).
fn whole_steps_note(x: &Search) -> String {
    match budget_steps(x) {
        Some(1) if x.chosen != 1.0 => " (1 whole step)".to_string(),
        Some(n) if n as f64 != x.chosen => format!(" ({n} whole steps)"),
        _ => String::new(),
    }
}

/// The choices of `searches` in order for a table cell ("-" for none); a budget's fractional
/// choice names the whole steps it runs.
pub(super) fn chosen_cell<'a>(searches: impl IntoIterator<Item = &'a Search>) -> String {
    let chosen: Vec<String> = searches
        .into_iter()
        .map(|x| format!("{}{}", x.chosen, whole_steps_note(x)))
        .collect();
    if chosen.is_empty() {
        "-".into()
    } else {
        chosen.join(", ")
    }
}

/// The searches (of one setting) as a Markdown table (first column `column`), then a sentence per
/// subject that says whether its choice lies inside the grid.
pub(super) fn table(searches: &[Search], column: &str) -> String {
    let setting = searches.first().map_or("beta", |x| x.setting.as_str());
    let mut t = format!(
        "| {column} | {setting} | validation loss | minus the least (paired) | standard error | chosen |\n|---|---|---|---|---|---|\n"
    );
    for x in searches {
        for g in &x.grid {
            let chosen = if g.value == x.chosen { "yes" } else { "" };
            t.push_str(&match &g.failed {
                Some(why) => format!(
                    "| {} | {} | failed: {why} | - | - | {chosen} |\n",
                    x.model, g.value
                ),
                None => format!(
                    "| {} | {} | {} | {:.3e} | {:.3e} | {chosen} |\n",
                    x.model,
                    g.value,
                    super::num(g.validation_loss),
                    g.difference,
                    g.standard_error
                ),
            });
        }
    }
    for x in searches {
        // A subject that already says what it is ("seed 0") is not followed by the column's name.
        let subject = if x.model.starts_with(&format!("{column} ")) {
            x.model.clone()
        } else {
            format!("{} {column}", x.model)
        };
        let budget = budget_steps(x);
        t.push_str(&format!(
            "\n{subject}: {setting} = {}{}{}.",
            x.chosen,
            whole_steps_note(x),
            if let Some(trend) = x.lower_edge_trend() {
                format!(
                    " (at the lower edge of the extended grid; {}: the limit {setting} -> 0, not an optimum a \
                     longer grid would bracket)",
                    trend_words(&trend, setting)
                )
            } else if x.open_edge() {
                " (at an edge of the extended grid: the optimum may lie beyond it)".into()
            } else if x.flat() {
                ": every value scored alike, so the choice is the tie-break's and marks no optimum".into()
            } else if budget == Some(1) && x.grid.first().is_some_and(|g| g.value == x.chosen) {
                ", the grid's lower end: one step is the smallest budget there is".into()
            } else {
                ", inside the grid".into()
            }
        ));
    }
    t
}

/// The table's section on what each meta-learned run deployed: the checkpoints chosen on
/// validation tasks (`deployed`: name, seed, meta-step; `scored_by` says how a checkpoint is
/// scored, `csv` where the scores are), or the last meta-step without a choice.
pub(super) fn deployed_section<S: std::fmt::Display>(
    spec: Option<&CheckpointSpec>,
    deployed: &[(String, S, usize)],
    scored_by: &str,
    csv: &str,
) -> String {
    let Some(spec) = spec else {
        return "\n## The deployed meta-parameters\n\nThe last meta-step's (no checkpoint choice at this scale).\n".into();
    };
    let mut per_name: Vec<(&str, Vec<String>)> = Vec::new();
    for (name, seed, step) in deployed {
        let entry = format!("{step} (seed {seed})");
        match per_name.iter_mut().find(|(n, _)| n == name) {
            Some((_, steps)) => steps.push(entry),
            None => per_name.push((name, vec![entry])),
        }
    }
    let lines: Vec<String> = per_name
        .iter()
        .map(|(name, steps)| format!("- {name}: {}", steps.join(", ")))
        .collect();
    format!(
        "\n## The deployed meta-parameters, chosen on validation tasks\n\n\
         Each meta-learned run's checkpoints are its initialisation, every multiple of {} meta-steps and its last \
         completed meta-step; each is scored by {scored_by} on {} validation tasks of that seed's own stream, and the \
         least mean is deployed (ties to the later; `{csv}`). Deployed meta-steps:\n\n{}\n",
        spec.every,
        spec.validation_tasks,
        lines.join("\n")
    )
}

/// A table's closing sentence on its `searches`: how many chose at an open edge of the extended
/// grid, those whose loss falls toward a lower edge as a power of the value apart (a limit at 0,
/// [`Search::lower_edge_trend`]), and how many scored every value alike (each named with `subject
/// setting value`).
pub(super) fn edges_sentence<'a>(searches: impl IntoIterator<Item = &'a Search>) -> String {
    let searches: Vec<&Search> = searches.into_iter().collect();
    let named = |keep: &dyn Fn(&Search) -> bool| -> Vec<String> {
        searches
            .iter()
            .filter(|x| keep(x))
            .map(|x| match x.lower_edge_trend() {
                Some(t) => format!(
                    "{} {} {} ({})",
                    x.model,
                    x.setting,
                    x.chosen,
                    trend_words(&t, &x.setting)
                ),
                None => format!("{} {} {}", x.model, x.setting, x.chosen),
            })
            .collect()
    };
    let edges = named(&|x| x.open_edge() && x.lower_edge_trend().is_none());
    let limits = named(&|x| x.lower_edge_trend().is_some());
    let flat = named(&Search::flat);
    let mut out = format!(
        "\n{} of {} searches chose at an edge of the extended grid{}",
        edges.len() + limits.len(),
        searches.len(),
        if edges.is_empty() {
            String::new()
        } else {
            format!(" (the optimum may lie beyond it): {}", edges.join("; "))
        }
    );
    if !limits.is_empty() {
        out.push_str(&format!(
            "{}{} at a lower edge toward which the loss falls as a power of the value, a limit at 0 rather than an \
             optimum a longer grid would bracket: {}",
            if edges.is_empty() { ", " } else { "; " },
            limits.len(),
            limits.join("; ")
        ));
    }
    out.push('.');
    if !flat.is_empty() {
        out.push_str(&format!(
            " {} scored every value alike (the data that scored them could not tell them apart, so \
             the choice is the tie-break's, marks no optimum, and the grid was not extended): {}.",
            flat.len(),
            flat.join("; ")
        ));
    }
    out + "\n"
}

/// A [`EdgeTrend`] in words: the order the loss falls with toward the edge, and what every smaller
/// value would gain by it.
fn trend_words(t: &EdgeTrend, setting: &str) -> String {
    format!(
        "toward it the loss falls as {setting}^{:.1} (fitted on the four values nearest it), so every smaller \
         value together would gain {:.1e} by that trend",
        t.order, t.remaining
    )
}

/// How many times a grid may be extended, in words ("once", "3 times").
pub(super) fn times(n: usize) -> String {
    match n {
        1 => "once".to_string(),
        n => format!("{n} times"),
    }
}
