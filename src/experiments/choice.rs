//! Choices made on validation data (docs/PROTOCOL.md): a search over the nudging strength `beta`,
//! each setting scored by its per-task validation losses, chosen by the one-standard-error rule
//! with paired differences; a choice at an edge of the grid extends it past that edge.

use crate::error::{CmlError, Result};
use crate::estimator::{Contrastive, EstimatorSpec};

/// The contrastive rule of `spec` at `beta` (any other estimator unchanged).
pub(super) fn at_beta(spec: &EstimatorSpec, beta: f64) -> EstimatorSpec {
    match spec {
        EstimatorSpec::Contrastive(c) => EstimatorSpec::Contrastive(Contrastive { beta, ..*c }),
        other => *other,
    }
}

/// A validation search of `beta` (docs/PROTOCOL.md): a short meta-training at each setting of
/// `grid` from an initialisation and task stream of the search's own, then the query loss after
/// adaptation on validation tasks of its own; a choice at an edge extends the grid at most
/// `extensions` times.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BetaSearchSpec {
    pub grid: Vec<f64>,
    pub extensions: usize,
    pub meta_steps: usize,
    pub validation_tasks: usize,
}

/// One setting of the search: `beta`, the validation loss after adaptation at the end of a short
/// meta-training (the job's: query loss, or error rate for the few-shot episodes; mean over the
/// validation tasks; infinite where that run failed, with the reason), and, against the setting
/// with the least loss, the mean paired difference over the tasks and its standard error.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BetaScore {
    pub beta: f64,
    #[serde(with = "super::units::any_float")]
    pub validation_loss: f64,
    #[serde(with = "super::units::any_float")]
    pub difference: f64,
    #[serde(with = "super::units::any_float")]
    pub standard_error: f64,
    pub failed: Option<String>,
}

/// The search for one subject (a model, an agent): every setting tried, the chosen `beta`, and
/// whether it still lies at an edge after the extensions.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BetaSearch {
    pub model: String,
    pub beta: f64,
    pub grid: Vec<BetaScore>,
    pub at_edge: bool,
}

/// The one-standard-error rule with paired differences: the largest `beta` whose mean validation
/// loss exceeds the least one's by at most one standard error of their paired difference. Settings
/// the validation tasks cannot tell apart are ties, and a tie goes to the larger `beta`, whose
/// estimate is less sensitive to unconverged phases (the bound's `delta / beta` term). Fills in
/// each score's difference and standard error; returns the chosen index.
pub(super) fn one_standard_error(grid: &mut [BetaScore], per_task: &[Vec<f64>]) -> usize {
    let best = (0..grid.len())
        .min_by(|&a, &b| grid[a].validation_loss.total_cmp(&grid[b].validation_loss))
        .expect("a grid");
    for (g, losses) in grid.iter_mut().zip(per_task) {
        if g.failed.is_some() {
            (g.difference, g.standard_error) = (f64::INFINITY, f64::NAN);
            continue;
        }
        let d: Vec<f64> = losses.iter().zip(&per_task[best]).map(|(a, b)| a - b).collect();
        let n = d.len() as f64;
        let mean = d.iter().sum::<f64>() / n;
        let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        (g.difference, g.standard_error) = (mean, (var / n).sqrt());
    }
    (0..grid.len())
        .filter(|&k| grid[k].failed.is_none() && grid[k].difference <= grid[k].standard_error)
        .max_by(|&a, &b| grid[a].beta.total_cmp(&grid[b].beta))
        .unwrap_or(best)
}

/// Searches `grid` (increasing) for `subject`: `score(beta)` gives the per-task validation losses
/// (the same tasks for every setting) and, where the setting failed, why (its losses are then
/// infinite). The choice is [`one_standard_error`]'s; while it lies at an edge, the grid is
/// extended past that edge by the ratio of its two outermost settings there, at most `extensions`
/// times. An error if every setting failed.
pub(super) fn search_beta(
    subject: &str,
    grid: &[f64],
    extensions: usize,
    score: impl Fn(f64) -> Result<(Vec<f64>, Option<String>)>,
) -> Result<BetaSearch> {
    let scored = |beta: f64| -> Result<(BetaScore, Vec<f64>)> {
        let (losses, failed) = score(beta)?;
        let validation_loss = losses.iter().sum::<f64>() / losses.len() as f64;
        Ok((
            BetaScore {
                beta,
                validation_loss,
                difference: f64::NAN,
                standard_error: f64::NAN,
                failed,
            },
            losses,
        ))
    };
    let (mut scores, mut per_task): (Vec<BetaScore>, Vec<Vec<f64>>) = grid
        .iter()
        .map(|&b| scored(b))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let mut chosen = one_standard_error(&mut scores, &per_task);
    for _ in 0..extensions {
        let n = scores.len();
        let (beta, at) = if chosen == 0 {
            (scores[0].beta / (scores[1].beta / scores[0].beta), 0)
        } else if chosen == n - 1 {
            (scores[n - 1].beta * (scores[n - 1].beta / scores[n - 2].beta), n)
        } else {
            break;
        };
        // Rounded to 12 significant digits, so that 0.3 x 3 is 0.9 and not 0.8999999999999998.
        let beta = format!("{beta:.11e}").parse::<f64>().expect("a formatted float");
        let (g, l) = scored(beta)?;
        scores.insert(at, g);
        per_task.insert(at, l);
        chosen = one_standard_error(&mut scores, &per_task);
    }
    if scores.iter().all(|g| g.failed.is_some()) {
        return Err(CmlError::invalid(
            format!("the beta search of {subject}"),
            "every setting failed",
            format!(
                "a grid with one setting that trains ({})",
                scores[0].failed.clone().unwrap_or_default()
            ),
        ));
    }
    Ok(BetaSearch {
        model: subject.to_string(),
        beta: scores[chosen].beta,
        at_edge: chosen == 0 || chosen == scores.len() - 1,
        grid: scores,
    })
}

/// The searches stored under `names` (a unit of a scale without a search stores none); units not
/// given are skipped (a report of part of a job).
pub(super) fn stored(
    units: &[super::units::Stored],
    names: impl IntoIterator<Item = String>,
) -> Result<Vec<BetaSearch>> {
    let mut out = Vec::new();
    for name in names {
        if let Some(u) = units.iter().find(|u| u.unit == name) {
            out.extend(super::units::decode::<Option<BetaSearch>>(u)?);
        }
    }
    Ok(out)
}

/// An error unless the `beta` a unit ran with is its search's choice (units from one run).
pub(super) fn check_agrees(search: Option<&BetaSearch>, unit: &str, beta: Option<f64>) -> Result<()> {
    match (search, beta) {
        (Some(search), Some(b)) if b != search.beta => Err(CmlError::invalid(
            unit.to_string(),
            format!("beta {b}"),
            format!("the choice unit's beta {} (units from one run)", search.beta),
        )),
        _ => Ok(()),
    }
}

/// The searches as CSV rows under `column,beta,validation_loss,difference_to_least,standard_error,chosen`;
/// no file where there are none (a scale without a search, a report of part of a job).
pub(super) fn write(
    path: &std::path::Path,
    column: &str,
    searches: &[BetaSearch],
    files: &mut Vec<std::path::PathBuf>,
) -> Result<()> {
    if searches.is_empty() {
        return Ok(());
    }
    let rows: Vec<String> = searches
        .iter()
        .flat_map(|x| {
            x.grid.iter().map(move |g| {
                format!(
                    "{},{:e},{:e},{:e},{:e},{}",
                    x.model,
                    g.beta,
                    g.validation_loss,
                    g.difference,
                    g.standard_error,
                    g.beta == x.beta
                )
            })
        })
        .collect();
    super::write_csv(
        path,
        &format!("{column},beta,validation_loss,difference_to_least,standard_error,chosen"),
        &rows,
        files,
    )
}

/// The searches as a Markdown table (first column `column`), then a sentence per subject that says
/// whether its choice lies inside the grid.
pub(super) fn table(searches: &[BetaSearch], column: &str) -> String {
    let mut t = format!(
        "| {column} | beta | validation loss | minus the least (paired) | standard error | chosen |\n|---|---|---|---|---|---|\n"
    );
    for x in searches {
        for g in &x.grid {
            let chosen = if g.beta == x.beta { "yes" } else { "" };
            t.push_str(&match &g.failed {
                Some(why) => format!(
                    "| {} | {} | failed: {why} | - | - | {chosen} |\n",
                    x.model, g.beta
                ),
                None => format!(
                    "| {} | {} | {} | {:.3e} | {:.3e} | {chosen} |\n",
                    x.model,
                    g.beta,
                    super::num(g.validation_loss),
                    g.difference,
                    g.standard_error
                ),
            });
        }
    }
    for x in searches {
        t.push_str(&format!(
            "\n{} {column}: beta = {}{}.",
            x.model,
            x.beta,
            if x.at_edge {
                " (at an edge of the extended grid: the optimum may lie beyond it)"
            } else {
                ", inside the grid"
            }
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(losses: &[Vec<f64>]) -> Vec<BetaScore> {
        [0.01, 0.1, 1.0]
            .iter()
            .zip(losses)
            .map(|(&beta, l)| BetaScore {
                beta,
                validation_loss: l.iter().sum::<f64>() / l.len() as f64,
                difference: f64::NAN,
                standard_error: f64::NAN,
                failed: None,
            })
            .collect()
    }

    #[test]
    fn a_choice_at_the_edge_extends_the_grid_by_its_ratio() {
        // The loss falls with beta on every task (1 / beta, no noise), so the largest setting
        // always wins: the grid is extended by its outermost ratio 0.3 / 0.1 = 3, twice, to 0.9
        // and 2.7 (not 0.8999999999999998), and the choice stays at the edge. A loss rising with
        // beta extends the lower edge by 0.1 / 0.03: 0.03 x 0.3 = 0.009.
        let falling = |beta: f64| Ok((vec![1.0 / beta; 3], None));
        let s = search_beta("s", &[0.03, 0.1, 0.3], 2, falling).unwrap();
        let betas: Vec<f64> = s.grid.iter().map(|g| g.beta).collect();
        assert_eq!(betas, vec![0.03, 0.1, 0.3, 0.9, 2.7]);
        assert_eq!((s.beta, s.at_edge), (2.7, true));
        let rising = |beta: f64| Ok((vec![beta; 3], None));
        let s = search_beta("s", &[0.03, 0.1, 0.3], 1, rising).unwrap();
        assert_eq!((s.beta, s.grid[0].beta, s.at_edge), (0.009, 0.009, true));
    }

    #[test]
    fn the_one_standard_error_rule_takes_the_largest_beta_the_tasks_cannot_tell_from_the_best() {
        // beta 0.01 is least (mean 1). beta 0.1 differs from it by (0.1, -0.1, 0.1, -0.1) + 0.01:
        // mean 0.01, sample sd 0.11547, standard error 0.05774, so within one: a tie. beta 1
        // differs by 1 on every task: mean 1, standard error 0: worse. The rule takes 0.1.
        let losses = vec![
            vec![1.0, 1.0, 1.0, 1.0],
            vec![1.11, 0.91, 1.11, 0.91],
            vec![2.0, 2.0, 2.0, 2.0],
        ];
        let mut grid = scores(&losses);
        assert_eq!(one_standard_error(&mut grid, &losses), 1);
        approx::assert_relative_eq!(grid[1].difference, 0.01, epsilon = 1e-12);
        approx::assert_relative_eq!(grid[1].standard_error, 0.2 / 12f64.sqrt(), epsilon = 1e-12);
        assert_eq!((grid[2].difference, grid[2].standard_error), (1.0, 0.0));
        // A consistent small loss (every task 0.001 worse) is not a tie: standard error 0.
        let losses = vec![vec![1.0; 4], vec![1.001; 4], vec![2.0; 4]];
        let mut grid = scores(&losses);
        assert_eq!(one_standard_error(&mut grid, &losses), 0);
        // A failed setting is never chosen.
        let losses = vec![vec![1.0; 4], vec![1.0; 4], vec![f64::INFINITY; 4]];
        let mut grid = scores(&losses);
        grid[2].failed = Some("diverged".into());
        assert_eq!(one_standard_error(&mut grid, &losses), 1);
    }
}
