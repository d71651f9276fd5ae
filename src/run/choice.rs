//! Choices made on validation data (docs/PROTOCOL.md): a search over one setting (the nudging
//! strength `beta`, a meta-learning rate), each value scored by its per-task validation losses
//! (per episode, per image), chosen by the one-standard-error rule with paired differences (for
//! `beta`) or as the least loss; a choice at an edge of the grid extends it past that edge.

// The crate-internal helpers here serve the experiments, which only the `figures` feature builds.
#![cfg_attr(not(feature = "figures"), allow(dead_code))]

use crate::error::{CmlError, Result};
use crate::estimator::{Contrastive, EstimatorSpec};

/// The contrastive rule of `spec` at `beta` (any other estimator unchanged).
pub(crate) fn at_beta(spec: &EstimatorSpec, beta: f64) -> EstimatorSpec {
    match spec {
        EstimatorSpec::Contrastive(c) => EstimatorSpec::Contrastive(Contrastive { beta, ..*c }),
        other => *other,
    }
}

/// The contrastive rule of `spec` with `steps` in each nudged phase (any other estimator unchanged:
/// only the rule has a nudged phase).
pub(crate) fn at_nudged_steps(spec: &EstimatorSpec, steps: usize) -> EstimatorSpec {
    match spec {
        EstimatorSpec::Contrastive(c) => EstimatorSpec::Contrastive(Contrastive {
            nudged: crate::inner::GdParams {
                max_steps: steps,
                ..c.nudged
            },
            ..*c
        }),
        other => *other,
    }
}

/// A validation search of `beta` (docs/PROTOCOL.md): a short meta-training at each setting of
/// `grid` from an initialisation and task stream of the search's own, then the query loss after
/// adaptation on validation tasks of its own; a choice at an edge extends the grid at most
/// `extensions` times.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BetaSearchSpec {
    pub grid: Vec<f64>,
    pub extensions: usize,
    pub meta_steps: usize,
    pub validation_tasks: usize,
}

/// A validation search of an outer (meta-learning) step size: each value of `grid` (increasing)
/// scored by a whole meta-training (the job says from what and on which validation data); the
/// least mean validation loss wins ([`Ties::None`]), and a choice at an edge extends the grid at
/// most `extensions` times.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RateSearchSpec {
    pub grid: Vec<f64>,
    pub extensions: usize,
    /// The search streams each value is scored on (an initialisation, a task stream and
    /// validation tasks of the search's own each), their tasks' losses pooled ([`pooled`]), so
    /// that a choice does not rest on one draw. One, the default, is left out of the protocol, so
    /// that units stored before the field existed read as they were.
    #[serde(default = "one_stream", skip_serializing_if = "is_one_stream")]
    pub streams: u64,
}

fn one_stream() -> u64 {
    1
}

/// The `streams` of each of the searches `keys` of a protocol, left out at one
/// ([`crate::protocol::Checked::left_out_at_default`]).
pub(crate) fn streams_left_out(keys: &[&str]) -> Vec<(String, serde_json::Value)> {
    keys.iter()
        .map(|k| (format!("{k}.streams"), serde_json::Value::from(one_stream())))
        .collect()
}

fn is_one_stream(streams: &u64) -> bool {
    *streams == 1
}

impl RateSearchSpec {
    /// The seeds of the search's streams: the first is `words` hashed (the seed of a one-stream
    /// search), stream `s` after it hashes `s` as well.
    pub(crate) fn stream_seeds(&self, words: &[u64]) -> Vec<u64> {
        (0..self.streams)
            .map(|s| match s {
                0 => crate::rng::hash_words(words),
                s => crate::rng::hash_words(&[words, &[s]].concat()),
            })
            .collect()
    }
}

/// A value's score on every search stream (each `tasks` validation tasks): the per-task losses in
/// stream order. Where a stream fails, the value fails on all (every task infinite); with several
/// streams, its reason names the stream.
pub(crate) fn pooled<T>(
    streams: &[T],
    tasks: usize,
    score: impl Fn(&T) -> Result<(Vec<f64>, Option<String>)>,
) -> Result<(Vec<f64>, Option<String>)> {
    let mut losses = Vec::with_capacity(tasks * streams.len());
    for (s, stream) in streams.iter().enumerate() {
        match score(stream)? {
            (_, Some(why)) => {
                let why = if streams.len() > 1 {
                    format!("stream {s}: {why}")
                } else {
                    why
                };
                return Ok((vec![f64::INFINITY; tasks * streams.len()], Some(why)));
            }
            (l, None) => losses.extend(l),
        }
    }
    Ok((losses, None))
}

/// The validation searches of one meta-learning run (docs/PROTOCOL.md): its meta-learning rate
/// over `meta_lr` (the least validation loss), then, for the contrastive rule, `beta` over `beta`
/// at the chosen rate (the one-standard-error rule, ties to the larger); each value is a whole
/// meta-training scored at its deployed checkpoint, and the chosen run is the one deployed. A
/// choice at an edge extends its grid at most `extensions` times.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunSearch {
    pub meta_lr: Vec<f64>,
    pub beta: Vec<f64>,
    pub extensions: usize,
}

/// A meta-training run as a search scores it: its per-task validation losses at the deployed
/// checkpoint, and why it failed, if it did (its losses then count as infinite).
pub(crate) trait ScoredRun {
    fn validation(&self) -> &[f64];
    fn failed(&self) -> Option<&str>;
}

/// `spec` at the nudged budget that `searches` (a [`searched_run`]'s) chose, where they searched
/// one; `spec` itself otherwise. Only the budget: the inner work of the deployed run, whatever its
/// rate and `beta`.
pub(crate) fn at_chosen_nudged_steps(spec: &EstimatorSpec, searches: &[Search]) -> EstimatorSpec {
    match searches.iter().find(|x| x.setting == "nudged_steps") {
        Some(n) => at_nudged_steps(spec, whole_steps(n.chosen)),
        None => *spec,
    }
}

/// The run the searches of `grids` deploy for `spec` under `subject`, and those searches:
/// `train(meta_lr, spec)` makes one whole run. The rate search runs at `spec`; for the contrastive
/// rule, `beta`'s search then runs at the chosen rate, and last, where `nudged_steps` is given, the
/// nudged budget's at the chosen rate and `beta` ([`Ties::ToTheSmaller`]: a larger budget costs
/// more). Any other estimator gets the rate search alone. Every setting is trained once, whichever
/// search asks for it.
pub(crate) fn searched_run<T: ScoredRun>(
    subject: &str,
    grids: &RunSearch,
    nudged_steps: Option<&RateSearchSpec>,
    spec: &EstimatorSpec,
    mut train: impl FnMut(f64, &EstimatorSpec) -> Result<T>,
) -> Result<(Vec<Search>, T)> {
    // A run's key: its rate, and the rule's beta and nudged budget.
    type Key = (f64, Option<(f64, usize)>);
    let key_of = |meta_lr: f64, spec: &EstimatorSpec| -> Key {
        let rule = match spec {
            EstimatorSpec::Contrastive(c) => Some((c.beta, c.nudged.max_steps)),
            _ => None,
        };
        (meta_lr, rule)
    };
    let mut runs: Vec<(Key, T)> = Vec::new();
    let mut score = |meta_lr: f64, spec: &EstimatorSpec| -> Result<(Vec<f64>, Option<String>)> {
        let key = key_of(meta_lr, spec);
        let k = match runs.iter().position(|(k, _)| *k == key) {
            Some(k) => k,
            None => {
                runs.push((key, train(meta_lr, spec)?));
                runs.len() - 1
            }
        };
        let run = &runs[k].1;
        Ok(match run.failed() {
            Some(why) => (vec![f64::INFINITY; run.validation().len()], Some(why.to_string())),
            None => (run.validation().to_vec(), None),
        })
    };
    let rate = search_meta_lr(subject, &grids.meta_lr, grids.extensions, |lr| score(lr, spec))?;
    let meta_lr = rate.chosen;
    let mut searches = vec![rate];
    let mut chosen = *spec;
    if matches!(spec, EstimatorSpec::Contrastive(_)) {
        let beta = search_beta(subject, &grids.beta, grids.extensions, |b| {
            score(meta_lr, &at_beta(spec, b))
        })?;
        chosen = at_beta(spec, beta.chosen);
        searches.push(beta);
        if let Some(n) = nudged_steps {
            let at_beta = chosen;
            let budget = search(
                subject,
                "nudged_steps",
                Ties::ToTheSmaller,
                &n.grid,
                n.extensions,
                |steps| score(meta_lr, &at_nudged_steps(&at_beta, whole_steps(steps))),
            )?;
            chosen = at_nudged_steps(&at_beta, whole_steps(budget.chosen));
            searches.push(budget);
        }
    }
    let key = key_of(meta_lr, &chosen);
    let run = runs
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, run)| run)
        .expect("the chosen value's run");
    Ok((searches, run))
}

/// An inner step size chosen on validation data: `evaluate(step_size, k)` trains inner problem
/// `k` of `problems` (in the job's order) at `step_size` and gives its per-task validation losses;
/// a value fails where any problem's inner loop diverges or gives a non-finite validation loss (a
/// step size some baseline cannot use would not keep the methods matched), and is otherwise
/// scored by the losses of problem 0 (where meta-training starts). The least mean loss wins
/// ([`Ties::None`]); an edge choice extends the grid.
pub(crate) fn search_stable_step_size(
    subject: &str,
    spec: &RateSearchSpec,
    problems: &[String],
    mut evaluate: impl FnMut(f64, usize) -> Result<Vec<f64>>,
) -> Result<Search> {
    let score = |step_size: f64| -> Result<(Vec<f64>, Option<String>)> {
        let mut scored = None;
        for (k, problem) in problems.iter().enumerate() {
            let failed = |why: String| {
                (
                    vec![f64::INFINITY; scored.as_ref().map_or(1, Vec::len)],
                    Some(why),
                )
            };
            match evaluate(step_size, k) {
                Ok(validation) if validation.iter().all(|v| v.is_finite()) => {
                    scored.get_or_insert(validation);
                }
                Ok(_) => return Ok(failed(format!("a non-finite validation loss at {problem}"))),
                Err(CmlError::Diverged { .. }) => {
                    return Ok(failed(format!("the free phase diverged at {problem}")));
                }
                Err(e) => return Err(e),
            }
        }
        Ok((scored.expect("at least one problem"), None))
    };
    search(
        subject,
        "step_size",
        Ties::None,
        &spec.grid,
        spec.extensions,
        score,
    )
}

/// Which meta-step a run deploys, chosen on validation tasks: its initialisation, every `every`
/// meta-steps and its last completed meta-step are checkpoints, each scored by its validation
/// tasks' mean loss after the method's own adaptation ([`least_loss`] picks).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CheckpointSpec {
    pub every: usize,
    pub validation_tasks: usize,
}

impl CheckpointSpec {
    /// Whether completed meta-step `step` of `last` is a checkpoint (the initialisation, step 0,
    /// always is).
    pub fn keeps(&self, step: usize, last: usize) -> bool {
        step.is_multiple_of(self.every) || step == last
    }
}

/// A run's checkpoint as validation tasks chose it.
pub(crate) struct Chosen<T> {
    /// (meta-step, mean validation loss) of every checkpoint, in order.
    pub scores: Vec<(usize, f64)>,
    /// The deployed meta-step, its meta-parameters and its per-task validation losses.
    pub step: usize,
    pub theta: T,
    pub losses: Vec<f64>,
}

/// Scores the checkpoints `kept` (meta-step, meta-parameters; the initialisation first) of a run
/// whose last completed meta-step is `last` (a checkpoint too where the run stopped between
/// them) by `score`'s per-task validation losses, and deploys the least mean ([`least_loss`]).
pub(crate) fn choose_checkpoint<T: Clone>(
    mut kept: Vec<(usize, T)>,
    last: Option<(usize, &T)>,
    mut score: impl FnMut(&T) -> Result<Vec<f64>>,
) -> Result<Chosen<T>> {
    if let Some((step, theta)) = last.filter(|(step, _)| kept.last().is_some_and(|k| k.0 != *step)) {
        kept.push((step, theta.clone()));
    }
    let mut scores = Vec::new();
    let mut losses = Vec::new();
    for (step, theta) in &kept {
        let l = score(theta)?;
        scores.push((*step, l.iter().sum::<f64>() / l.len() as f64));
        losses.push(l);
    }
    let means: Vec<f64> = scores.iter().map(|c| c.1).collect();
    let best = least_loss(&means)
        .ok_or_else(|| CmlError::invalid("checkpoints", "none", "at least the initialisation"))?;
    let (step, theta) = kept.swap_remove(best);
    Ok(Chosen {
        scores,
        step,
        theta,
        losses: losses.swap_remove(best),
    })
}

/// The index of the least of `losses` (a non-finite loss counts as infinite; ties to the later:
/// the longer-trained checkpoint); `None` for no losses.
pub(crate) fn least_loss(losses: &[f64]) -> Option<usize> {
    let finite = |x: f64| if x.is_finite() { x } else { f64::INFINITY };
    (0..losses.len()).min_by(|&a, &b| finite(losses[a]).total_cmp(&finite(losses[b])).then(b.cmp(&a)))
}

/// One value of the search's setting, the validation loss it reached (the job's: query loss
/// after adaptation, error rate of the few-shot episodes, cross-entropy of the validation images;
/// mean over the validation tasks; infinite where that run failed, with the reason), and, against
/// the value with the least loss, the mean paired difference over the tasks and its standard error.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Score {
    /// The setting's value (`beta` in the units stored before other settings were searched).
    #[serde(alias = "beta")]
    pub value: f64,
    #[serde(with = "super::units::any_float")]
    pub validation_loss: f64,
    #[serde(with = "super::units::any_float")]
    pub difference: f64,
    #[serde(with = "super::units::any_float")]
    pub standard_error: f64,
    pub failed: Option<String>,
}

/// The search for one subject (a model, an agent, a method and seed): the setting searched, every
/// value tried, the chosen one, and whether it still lies at an edge after the extensions.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Search {
    pub model: String,
    /// The setting searched (`beta` where units stored before other settings were searched).
    #[serde(default = "beta_setting")]
    pub setting: String,
    /// The chosen value.
    #[serde(alias = "beta")]
    pub chosen: f64,
    pub grid: Vec<Score>,
    pub at_edge: bool,
}

fn beta_setting() -> String {
    "beta".to_string()
}

impl Search {
    /// Every value that trained scored the same mean loss, bit for bit: the search could not tell
    /// its values apart (every run deployed its untrained checkpoint, say), so its choice is the
    /// tie-break's, marks no optimum, and its grid is not extended.
    pub fn flat(&self) -> bool {
        flat(&self.grid)
    }

    /// The choice lies at an edge of the extended grid and the grid's scores are not flat: the
    /// optimum may lie beyond the edge. (Searches stored before [`Search::flat`] existed may carry
    /// `at_edge` on a flat grid.)
    pub fn open_edge(&self) -> bool {
        self.at_edge && !self.flat()
    }

    /// How the loss falls toward an open lower edge, where it falls like a power of the value.
    /// If `loss(v) = loss(0) + c v^p` on a geometric grid `v_k = v_0 r^k`, the loss rises away
    /// from the edge by increments `c v_0^p r^((k-1) p) (r^p - 1)`, each `r^p` times the one
    /// before; so from the four values nearest the edge (three increments), `r^p` is the
    /// geometric mean of the two increment ratios, `p = ln(r^p) / ln r`, and what every smaller
    /// value together could still gain, `c v_0^p`, is the first increment over `r^p - 1`.
    /// `None` unless the choice is the grid's smallest value at an open edge, the four values
    /// trained on a geometric grid, the increments grow, and their two ratios agree within 10%.
    pub fn lower_edge_trend(&self) -> Option<EdgeTrend> {
        let near: Vec<&Score> = self.grid.iter().take(4).collect();
        if !self.open_edge() || near.len() < 4 || near[0].value != self.chosen {
            return None;
        }
        if near
            .iter()
            .any(|g| g.failed.is_some() || !g.validation_loss.is_finite())
        {
            return None;
        }
        let r = near[1].value / near[0].value;
        let geometric = (2..4).all(|k| ((near[k].value / near[k - 1].value) / r - 1.0).abs() <= 1e-6);
        let step: Vec<f64> = (1..4)
            .map(|k| near[k].validation_loss - near[k - 1].validation_loss)
            .collect();
        let (q1, q2) = (step[1] / step[0], step[2] / step[1]);
        if !(r > 1.0 && geometric && step[0] > 0.0 && q1 > 1.0 && (q2 / q1 - 1.0).abs() <= 0.1) {
            return None;
        }
        let rp = (q1 * q2).sqrt();
        Some(EdgeTrend {
            order: rp.ln() / r.ln(),
            remaining: step[0] / (rp - 1.0),
        })
    }
}

/// How the loss falls toward a search's open lower edge ([`Search::lower_edge_trend`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdgeTrend {
    /// `p` in `loss(v) = loss(0) + c v^p` near the edge.
    pub order: f64,
    /// `c v_0^p`: what every value below the edge together could still gain, if the trend holds.
    pub remaining: f64,
}

fn flat(grid: &[Score]) -> bool {
    let mut trained = grid.iter().filter(|g| g.failed.is_none());
    match trained.next() {
        Some(first) => {
            let mut others = trained.peekable();
            others.peek().is_some()
                && others.all(|g| g.validation_loss.to_bits() == first.validation_loss.to_bits())
        }
        None => false,
    }
}

/// How the search chooses among values the validation tasks cannot tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ties {
    /// The largest value within one standard error of the least loss (paired over the tasks): for
    /// `beta`, whose estimate is less sensitive to unconverged phases when larger (the bound's
    /// `delta / beta` term).
    ToTheLarger,
    /// The least mean loss, ties or not: for a step size, where no direction is safer. Values with
    /// exactly equal losses (runs that all deploy their untrained checkpoint) go to the smallest.
    None,
    /// The smallest value within one standard error of the least loss (paired over the tasks): for
    /// a budget, where the smaller costs less and the validation tasks cannot tell them apart. A
    /// budget runs whole steps, at least one ([`whole_steps`]), so its lower edge closes at one
    /// step: no smaller budget exists to extend to, and a choice there is not at an edge.
    ToTheSmaller,
}

/// The one-standard-error rule with paired differences: the largest `beta` whose mean validation
/// loss exceeds the least one's by at most one standard error of their paired difference. Settings
/// the validation tasks cannot tell apart are ties, and a tie goes to the larger `beta`, whose
/// estimate is less sensitive to unconverged phases (the bound's `delta / beta` term). Fills in
/// each score's difference and standard error; returns the chosen index.
pub(crate) fn one_standard_error(grid: &mut [Score], per_task: &[Vec<f64>]) -> usize {
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
        .max_by(|&a, &b| grid[a].value.total_cmp(&grid[b].value))
        .unwrap_or(best)
}

/// The chosen index under `ties`; fills in each score's paired difference and standard error.
fn choose(ties: Ties, grid: &mut [Score], per_task: &[Vec<f64>]) -> usize {
    let larger = one_standard_error(grid, per_task);
    let least = (0..grid.len())
        .min_by(|&a, &b| grid[a].validation_loss.total_cmp(&grid[b].validation_loss))
        .expect("a grid");
    match ties {
        Ties::ToTheLarger => larger,
        Ties::None => least,
        // The differences and standard errors `one_standard_error` filled in, read the other way.
        Ties::ToTheSmaller => (0..grid.len())
            .filter(|&k| grid[k].failed.is_none() && grid[k].difference <= grid[k].standard_error)
            .min_by(|&a, &b| grid[a].value.total_cmp(&grid[b].value))
            .unwrap_or(least),
    }
}

/// The whole steps a searched budget `value` stands for (an extension of a grid of whole numbers
/// may make it fractional), at least 1.
pub(crate) fn whole_steps(value: f64) -> usize {
    value.round().max(1.0) as usize
}

/// Searches `grid` (increasing) of `beta` for `subject`, ties to the larger (see [`search`]).
pub(crate) fn search_beta(
    subject: &str,
    grid: &[f64],
    extensions: usize,
    score: impl FnMut(f64) -> Result<(Vec<f64>, Option<String>)>,
) -> Result<Search> {
    search(subject, "beta", Ties::ToTheLarger, grid, extensions, score)
}

/// Searches `grid` (increasing) of the outer (meta-learning) step size for `subject`: the least
/// mean validation loss wins (see [`search`]).
pub(crate) fn search_meta_lr(
    subject: &str,
    grid: &[f64],
    extensions: usize,
    score: impl FnMut(f64) -> Result<(Vec<f64>, Option<String>)>,
) -> Result<Search> {
    search(subject, "meta_lr", Ties::None, grid, extensions, score)
}

/// Searches `grid` (increasing) of `setting` for `subject`: `score(value)` gives the per-task
/// validation losses (the same tasks for every value) and, where the value failed, why (its losses
/// are then infinite). The choice follows `ties`; while it lies at an edge, the grid is extended
/// past that edge by the ratio of its two outermost values there, at most `extensions` times,
/// unless the scores are flat ([`Search::flat`]: no value beyond would be told apart either) or
/// the edge is closed (a budget of one step, [`Ties::ToTheSmaller`]). An error if every value
/// failed.
pub(crate) fn search(
    subject: &str,
    setting: &str,
    ties: Ties,
    grid: &[f64],
    extensions: usize,
    mut score: impl FnMut(f64) -> Result<(Vec<f64>, Option<String>)>,
) -> Result<Search> {
    let mut scored = |value: f64| -> Result<(Score, Vec<f64>)> {
        let (losses, failed) = score(value)?;
        let validation_loss = losses.iter().sum::<f64>() / losses.len() as f64;
        Ok((
            Score {
                value,
                validation_loss,
                difference: f64::NAN,
                standard_error: f64::NAN,
                failed,
            },
            losses,
        ))
    };
    let (mut scores, mut per_task): (Vec<Score>, Vec<Vec<f64>>) = grid
        .iter()
        .map(|&b| scored(b))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    // A budget of one step has no smaller budget beyond it.
    let closed_below = |value: f64| ties == Ties::ToTheSmaller && whole_steps(value) == 1;
    let mut chosen = choose(ties, &mut scores, &per_task);
    for _ in 0..extensions {
        let n = scores.len();
        if flat(&scores) {
            break;
        }
        let (value, at) = if chosen == 0 && !closed_below(scores[0].value) {
            (scores[0].value / (scores[1].value / scores[0].value), 0)
        } else if chosen == n - 1 {
            (
                scores[n - 1].value * (scores[n - 1].value / scores[n - 2].value),
                n,
            )
        } else {
            break;
        };
        // Rounded to 12 significant digits, so that 0.3 x 3 is 0.9 and not 0.8999999999999998.
        let value = format!("{value:.11e}").parse::<f64>().expect("a formatted float");
        let (g, l) = scored(value)?;
        scores.insert(at, g);
        per_task.insert(at, l);
        chosen = choose(ties, &mut scores, &per_task);
    }
    if scores.iter().all(|g| g.failed.is_some()) {
        return Err(CmlError::invalid(
            format!("the {setting} search of {subject}"),
            "every value failed",
            format!(
                "a grid with one value that trains ({})",
                scores[0].failed.clone().unwrap_or_default()
            ),
        ));
    }
    Ok(Search {
        model: subject.to_string(),
        setting: setting.to_string(),
        chosen: scores[chosen].value,
        at_edge: ((chosen == 0 && !closed_below(scores[0].value)) || chosen == scores.len() - 1)
            && !flat(&scores),
        grid: scores,
    })
}

/// The searches stored under `names` (a unit of a scale without a search stores none); units not
/// given are skipped (a report of part of a job).
pub(crate) fn stored(
    units: &[super::units::Stored],
    names: impl IntoIterator<Item = String>,
) -> Result<Vec<Search>> {
    let mut out = Vec::new();
    for name in names {
        if let Some(u) = units.iter().find(|u| u.unit == name) {
            out.extend(super::units::decode::<Option<Search>>(u)?);
        }
    }
    Ok(out)
}

/// The value the search unit `unit` of `job` chose: its stored rows where they are beside
/// `staging` (the unit's folder), else `search()` run here (units have no order); `None` where the
/// scale has no search.
pub(crate) fn chosen_value<S>(
    job: &dyn super::units::Job<S>,
    settings: &super::units::Settings,
    staging: &std::path::Path,
    unit: &str,
    search: impl FnOnce() -> Result<Option<Search>>,
) -> Result<Option<f64>> {
    Ok(
        super::units::stored_beside_or::<Option<Search>, S>(job, settings, staging, unit, search)?
            .map(|s| s.chosen),
    )
}

/// An error unless the value a unit ran with is its search's choice (units from one run).
/// A budget's choice counts in the whole steps a unit runs ([`whole_steps`]).
pub(crate) fn check_agrees(search: Option<&Search>, unit: &str, value: Option<f64>) -> Result<()> {
    let Some(search) = search else {
        return Ok(());
    };
    let chosen = match search.setting.as_str() {
        "nudged_steps" => whole_steps(search.chosen) as f64,
        _ => search.chosen,
    };
    match value {
        Some(b) if b != chosen => Err(CmlError::invalid(
            unit.to_string(),
            format!("{} {b}", search.setting),
            format!(
                "the choice unit's {} {chosen} (units from one run)",
                search.setting
            ),
        )),
        _ => Ok(()),
    }
}

/// The searches (of one setting) as CSV rows under
/// `column,<setting>,validation_loss,difference_to_least,standard_error,chosen`; no file where there
/// are none (a scale without a search, a report of part of a job).
pub(crate) fn write(
    path: &std::path::Path,
    column: &str,
    searches: &[Search],
    files: &mut Vec<std::path::PathBuf>,
) -> Result<()> {
    let Some(first) = searches.first() else {
        return Ok(());
    };
    let rows: Vec<String> = searches
        .iter()
        .flat_map(|x| {
            x.grid.iter().map(move |g| {
                format!(
                    "{},{:e},{:e},{:e},{:e},{}",
                    x.model,
                    g.value,
                    g.validation_loss,
                    g.difference,
                    g.standard_error,
                    g.value == x.chosen
                )
            })
        })
        .collect();
    crate::io::write_csv(
        path,
        &format!(
            "{column},{},validation_loss,difference_to_least,standard_error,chosen",
            first.setting
        ),
        &rows,
        files,
    )
}

/// A decay job's searches as CSVs in `out`: each seed's inner step size as
/// `<job>_step_size_choice.csv` (subjects `seed <s>`), then the meta-learning runs' searches as
/// `<job>_meta_lr_choice.csv`, `<job>_beta_choice.csv` and `<job>_nudged_steps_choice.csv`
/// (subjects the runs).
pub(crate) fn write_decay_searches(
    out: &std::path::Path,
    job: &str,
    step_sizes: &[Search],
    runs: &[Search],
    files: &mut Vec<std::path::PathBuf>,
) -> Result<()> {
    write(
        &out.join(format!("{job}_step_size_choice.csv")),
        "seed",
        step_sizes,
        files,
    )?;
    for setting in ["meta_lr", "beta", "nudged_steps"] {
        let of: Vec<Search> = runs.iter().filter(|x| x.setting == setting).cloned().collect();
        write(
            &out.join(format!("{job}_{setting}_choice.csv")),
            "run",
            &of,
            files,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_on_several_streams_pools_their_tasks_and_fails_where_any_stream_fails() {
        let spec = |streams| RateSearchSpec {
            grid: vec![1.0, 2.0],
            extensions: 0,
            streams,
        };
        // The first stream is the one-stream search's; the others are new, and distinct.
        let words = [7, 8000];
        let seeds = spec(3).stream_seeds(&words);
        assert_eq!(seeds[0], crate::rng::hash_words(&words));
        assert_eq!(spec(1).stream_seeds(&words), seeds[..1]);
        assert!(seeds[1] != seeds[0] && seeds[2] != seeds[1] && seeds[2] != seeds[0]);
        // Two tasks per stream: the losses in stream order.
        let ok = |s: &u64| Ok((vec![*s as f64, 10.0 * *s as f64], None));
        assert_eq!(
            pooled(&[1, 2, 3], 2, ok).unwrap(),
            (vec![1.0, 10.0, 2.0, 20.0, 3.0, 30.0], None)
        );
        // A failure on stream 1 of 3 fails all six tasks and names the stream; on one stream the
        // reason is the stream's own.
        let fails_on_2 = |s: &u64| {
            Ok(match s {
                2 => (vec![f64::INFINITY; 2], Some("diverged".to_string())),
                s => (vec![*s as f64; 2], None),
            })
        };
        let (losses, why) = pooled(&[1, 2, 3], 2, fails_on_2).unwrap();
        assert_eq!((losses.len(), why.as_deref()), (6, Some("stream 1: diverged")));
        assert!(losses.iter().all(|l| l.is_infinite()));
        assert_eq!(
            pooled(&[2], 2, fails_on_2).unwrap().1.as_deref(),
            Some("diverged")
        );
        // An error is the caller's, not a failed value.
        assert!(pooled(&[1], 2, |_| Err(CmlError::invalid("x", "y", "z"))).is_err());
        // One stream is left out of a stored protocol (units stored before the field read the
        // same); more are kept, and read back.
        let one = serde_json::to_value(spec(1)).unwrap();
        assert!(one.get("streams").is_none());
        let three: RateSearchSpec = serde_json::from_value(serde_json::to_value(spec(3)).unwrap()).unwrap();
        assert_eq!(three.streams, 3);
        let old: RateSearchSpec =
            serde_json::from_value(serde_json::json!({"grid": [1.0], "extensions": 0})).unwrap();
        assert_eq!(old.streams, 1);
    }

    #[test]
    fn the_least_loss_ties_to_the_later_and_ranks_non_finite_last() {
        // 2.0 at 1 and 3: the later; NaN and inf lose to any finite loss.
        assert_eq!(least_loss(&[3.0, 2.0, f64::NAN, 2.0, f64::INFINITY]), Some(3));
        assert_eq!(least_loss(&[f64::NAN, 5.0]), Some(1));
        // All non-finite: the last.
        assert_eq!(least_loss(&[f64::NAN, f64::INFINITY]), Some(1));
        assert_eq!(least_loss(&[]), None);
        let spec = CheckpointSpec {
            every: 10,
            validation_tasks: 1,
        };
        let kept: Vec<usize> = (1..=25).filter(|&s| spec.keeps(s, 25)).collect();
        assert_eq!(kept, vec![10, 20, 25]);
    }

    fn scores(losses: &[Vec<f64>]) -> Vec<Score> {
        [0.01, 0.1, 1.0]
            .iter()
            .zip(losses)
            .map(|(&value, l)| Score {
                value,
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
        let betas: Vec<f64> = s.grid.iter().map(|g| g.value).collect();
        assert_eq!(betas, vec![0.03, 0.1, 0.3, 0.9, 2.7]);
        assert_eq!((s.chosen, s.at_edge), (2.7, true));
        let rising = |beta: f64| Ok((vec![beta; 3], None));
        let s = search_beta("s", &[0.03, 0.1, 0.3], 1, rising).unwrap();
        assert_eq!((s.chosen, s.grid[0].value, s.at_edge), (0.009, 0.009, true));
    }

    #[test]
    fn flat_scores_stop_the_extension_and_mark_no_edge() {
        // Every value scores 0.5 on every task (as when each run deploys its initialisation): the
        // least-loss choice is the tie-break's, the smallest value 0.1, an edge, yet no value
        // beyond could be told apart, so the grid stays [0.1, 0.2, 0.4] despite 2 extensions
        // allowed, and the search is flat, not at an edge. A value that fails does not break the
        // flatness of the others; one that scores 0.5 + 1e-12 on one task does (mean differs), and
        // the grid then extends below 0.1, to 0.05, which ties with 0.1 and, the first of the
        // least, is chosen at the edge.
        let flat = |_: f64| Ok((vec![0.5; 3], None));
        let s = search("s", "meta_lr", Ties::None, &[0.1, 0.2, 0.4], 2, flat).unwrap();
        let values: Vec<f64> = s.grid.iter().map(|g| g.value).collect();
        assert_eq!(values, vec![0.1, 0.2, 0.4]);
        assert_eq!(
            (s.chosen, s.at_edge, s.flat(), s.open_edge()),
            (0.1, false, true, false)
        );
        let failing_top = |v: f64| {
            Ok(if v > 0.3 {
                (vec![f64::INFINITY; 3], Some("diverged".to_string()))
            } else {
                (vec![0.5; 3], None)
            })
        };
        let s = search("s", "meta_lr", Ties::None, &[0.1, 0.2, 0.4], 2, failing_top).unwrap();
        assert_eq!((s.grid.len(), s.flat(), s.at_edge), (3, true, false));
        let almost = |v: f64| Ok((vec![0.5, 0.5, if v < 0.15 { 0.5 } else { 0.5 + 1e-12 }], None));
        let s = search("s", "meta_lr", Ties::None, &[0.1, 0.2, 0.4], 1, almost).unwrap();
        assert_eq!(
            (s.grid[0].value, s.chosen, s.flat(), s.at_edge),
            (0.05, 0.05, false, true)
        );
        // A search stored with `at_edge` on a flat grid (before flatness was checked) has no open
        // edge.
        let stored = Search {
            at_edge: true,
            ..search("s", "meta_lr", Ties::None, &[0.1, 0.2, 0.4], 0, flat).unwrap()
        };
        assert!(!stored.open_edge());
    }

    #[test]
    fn a_step_size_that_diverges_on_any_problem_fails_and_ends_the_extension() {
        // Problem 0's loss falls as 1 / step size on 2 tasks, so the upper edge 0.4 wins and the
        // grid extends to 0.4 x 2 = 0.8, whose loop diverges on problem 1 (of curvature 3: a step
        // beyond 2 / 3): 0.8 fails with the problem named, and 0.4 stays chosen, no longer at an
        // edge. A step size that fails on problem 0 gives an infinite score too.
        let problems = ["decay 0".to_string(), "decay 1".to_string()];
        let spec = RateSearchSpec {
            grid: vec![0.1, 0.2, 0.4],
            extensions: 1,
            streams: 1,
        };
        let evaluate = |step: f64, k: usize| -> Result<Vec<f64>> {
            if step * [1.0, 3.0][k] > 2.0 {
                return Err(CmlError::Diverged {
                    phase: "free".into(),
                    step: 1,
                    reason: "a non-finite loss".into(),
                });
            }
            Ok(vec![1.0 / step; 2])
        };
        let s = search_stable_step_size("seed 0", &spec, &problems, evaluate).unwrap();
        let values: Vec<f64> = s.grid.iter().map(|g| g.value).collect();
        assert_eq!(values, vec![0.1, 0.2, 0.4, 0.8]);
        assert_eq!((s.chosen, s.at_edge), (0.4, false));
        assert_eq!(
            s.grid[3].failed.as_deref(),
            Some("the free phase diverged at decay 1")
        );
        assert_eq!(s.grid[3].validation_loss, f64::INFINITY);
        // Any other error is the caller's to see, not a failed value.
        let err = search_stable_step_size("seed 0", &spec, &problems, |_, _| {
            Err(CmlError::invalid("x", "y", "z"))
        });
        assert!(err.is_err());
    }

    #[test]
    fn without_ties_the_least_loss_wins_where_the_rule_would_take_a_larger_value() {
        // Values 1, 2, 4. Value 2 has the least mean loss, 1.0; value 4 differs from it by
        // (0.04, -0.02, 0.04, -0.02): mean 0.01, sample sd sqrt(4 x 0.03^2 / 3) = 0.03464, standard
        // error 0.01732, so within one: a tie that the rule gives to 4; value 1 is worse by 0.2 on
        // every task. Without ties, 2 is chosen, inside the grid.
        let losses = |v: f64| -> Vec<f64> {
            match v {
                1.0 => vec![1.2; 4],
                2.0 => vec![0.99, 1.01, 0.99, 1.01],
                _ => vec![1.03, 0.99, 1.03, 0.99],
            }
        };
        let grid = [1.0, 2.0, 4.0];
        let s = search("s", "meta_lr", Ties::None, &grid, 0, |v| Ok((losses(v), None))).unwrap();
        assert_eq!((s.chosen, s.at_edge, s.setting.as_str()), (2.0, false, "meta_lr"));
        approx::assert_relative_eq!(s.grid[2].difference, 0.01, epsilon = 1e-12);
        approx::assert_relative_eq!(s.grid[2].standard_error, 0.0012f64.sqrt() / 2.0, epsilon = 1e-12);
        let s = search("s", "beta", Ties::ToTheLarger, &grid, 0, |v| {
            Ok((losses(v), None))
        })
        .unwrap();
        assert_eq!((s.chosen, s.at_edge), (4.0, true));
    }

    #[test]
    fn ties_to_the_smaller_take_the_least_budget_the_tasks_cannot_tell_from_the_best() {
        // Budgets 1, 2, 4. Budget 2 is least (mean 1); budget 1 differs from it by
        // (0.11, -0.09, 0.11, -0.09): mean 0.01, sample sd sqrt(4 x 0.1^2 / 3) = 0.11547, standard
        // error 0.11547 / 2 = 0.05774 (= 0.2 / sqrt(12)), so within one: a tie, which goes
        // to the smaller, 1 (an edge of the grid, but a closed one: no budget is smaller than one
        // step). Budget 4 is worse by 1 on every task. Without ties, or with ties to the larger, 2
        // is chosen.
        let losses = |v: f64| -> Vec<f64> {
            match v {
                1.0 => vec![1.11, 0.91, 1.11, 0.91],
                2.0 => vec![1.0; 4],
                _ => vec![2.0; 4],
            }
        };
        let grid = [1.0, 2.0, 4.0];
        let run = |ties| search("s", "nudged_steps", ties, &grid, 0, |v| Ok((losses(v), None))).unwrap();
        let s = run(Ties::ToTheSmaller);
        assert_eq!((s.chosen, s.at_edge), (1.0, false));
        approx::assert_relative_eq!(s.grid[0].difference, 0.01, epsilon = 1e-12);
        approx::assert_relative_eq!(s.grid[0].standard_error, 0.2 / 12f64.sqrt(), epsilon = 1e-12);
        assert_eq!(run(Ties::None).chosen, 2.0);
        assert_eq!(run(Ties::ToTheLarger).chosen, 2.0);
    }

    #[test]
    fn a_loss_that_falls_as_a_power_toward_the_lower_edge_gives_its_order_and_what_is_left() {
        // loss(v) = 1 + 3 v^2 on every task, grid 0.001 x 2^k: the least is the smallest value,
        // an open edge (no extension allowed). The increments 3 (0.002^2 - 0.001^2) = 9e-6, then
        // 3.6e-5, 1.44e-4 grow by 4 = 2^2, so the order is 2, and every smaller value together
        // could gain 3 x 0.001^2 = 3e-6 (the first increment over 4 - 1).
        let grid = [0.001, 0.002, 0.004, 0.008, 0.016];
        let power = |v: f64| Ok((vec![1.0 + 3.0 * v * v; 2], None));
        let s = search("s", "beta", Ties::None, &grid, 0, power).unwrap();
        let t = s.lower_edge_trend().unwrap();
        approx::assert_relative_eq!(t.order, 2.0, max_relative = 1e-6);
        approx::assert_relative_eq!(t.remaining, 3e-6, max_relative = 1e-6);
        // Increments that do not grow by one ratio (a kink at the third value) give none.
        let kinked = |v: f64| Ok((vec![if v < 0.003 { 1.0 + v } else { 1.0 + 10.0 * v }; 2], None));
        let s = search("s", "beta", Ties::None, &grid, 0, kinked).unwrap();
        assert!(s.open_edge() && s.lower_edge_trend().is_none());
        // Nor does a choice inside the grid, or at its upper edge.
        let inside = |v: f64| Ok((vec![(v - 0.004).powi(2); 2], None));
        assert!(
            search("s", "beta", Ties::None, &grid, 0, inside)
                .unwrap()
                .lower_edge_trend()
                .is_none()
        );
        let rising = |v: f64| Ok((vec![-v; 2], None));
        let s = search("s", "beta", Ties::None, &grid, 0, rising).unwrap();
        assert!(s.open_edge() && s.lower_edge_trend().is_none());
    }

    #[test]
    fn a_budget_search_extends_down_to_one_step_and_no_further() {
        // The loss falls with the budget on every task (loss = budget), so each search chooses
        // its smallest value. From [3.125, 6.25, 12.5] with 5 extensions allowed, a budget search
        // extends to 1.5625 (2 steps), then 0.78125 (1 step), and stops there: a third would add
        // 0.390625, one step again. A step-size search (no ties) extends all 5 times.
        let grid = [3.125, 6.25, 12.5];
        let score = |v: f64| Ok((vec![whole_steps(v) as f64, whole_steps(v) as f64 + 0.5], None));
        let budget = search("s", "nudged_steps", Ties::ToTheSmaller, &grid, 5, score).unwrap();
        let values: Vec<f64> = budget.grid.iter().map(|g| g.value).collect();
        assert_eq!(values, [0.78125, 1.5625, 3.125, 6.25, 12.5]);
        assert_eq!(
            (budget.chosen, budget.at_edge, budget.open_edge()),
            (0.78125, false, false)
        );
        let rate = search("s", "meta_lr", Ties::None, &grid, 5, score).unwrap();
        assert_eq!((rate.grid.len(), rate.at_edge), (8, true));
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
