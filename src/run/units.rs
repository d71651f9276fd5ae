//! Experiments as independent units. Every job of `cml figures` lists its units (method x seed x
//! setting, or one unit for a job that is cheap or not yet split); a unit runs anywhere and
//! stores its rows as `RESULTS/<job>/<unit>.json`, with the files it wrote whole under
//! `RESULTS/<job>/<unit>/`. The report draws every figure, table and the write-up from those
//! files alone. So a run can be split into slices (a Slurm job array), resumed (a unit whose
//! file exists is not run again), and merged in any order: the outputs do not depend on where
//! or in which order the units ran. The jobs themselves live on the experiments floor: every
//! function here takes their registry, and `S` is what a job's report hands the write-up.

// The crate-internal helpers here serve the experiments, which only the `figures` feature builds.
#![cfg_attr(not(feature = "figures"), allow(dead_code))]

use crate::error::{CmlError, Result};
use crate::io::write_atomically;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Where a run writes and how much it runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub out: PathBuf,
    pub paper: PathBuf,
    pub scale: Scale,
    pub seed: u64,
    /// Changes to jobs' protocols (`--protocol JOB=FILE`): job name, the file's table
    /// ([`super::protocol::configured`]).
    pub protocols: Vec<(String, Value)>,
    /// A unit stored under another configuration is computed again, its old file kept under
    /// `<job>/stale/` (`--replace-stale`), rather than refused.
    pub replace_stale: bool,
}

impl Settings {
    /// The shipped protocols at `scale`, seed 0, writing nowhere: for what needs no output (unit
    /// lists, protocols, plans).
    pub fn at(scale: Scale) -> Self {
        Settings {
            out: PathBuf::new(),
            paper: PathBuf::new(),
            scale,
            seed: 0,
            protocols: Vec::new(),
            replace_stale: false,
        }
    }

    /// Smaller grids, fewer seeds and steps; the same code paths.
    pub fn quick(&self) -> bool {
        self.scale == Scale::Quick
    }
}

/// How much of each experiment to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// CI's: the same code paths on the smallest grids, under a minute for every job.
    Quick,
    /// What one 2-core workstation runs in the write-up's budget.
    Default,
    /// The paper's budgets, as docs/EXPERIMENTS.md records them; for a cluster.
    Paper,
}

impl Scale {
    pub const ALL: [Scale; 3] = [Scale::Quick, Scale::Default, Scale::Paper];

    pub fn name(self) -> &'static str {
        match self {
            Scale::Quick => "quick",
            Scale::Default => "default",
            Scale::Paper => "paper",
        }
    }

    pub fn parse(s: &str) -> Result<Scale> {
        Scale::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| CmlError::UnknownName {
                kind: "scale".into(),
                name: s.into(),
                allowed: "quick, default, paper".into(),
            })
    }
}

/// What a job runs at `--scale paper`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaperBudgets {
    /// The paper's budgets, as docs/EXPERIMENTS.md records them, each deviation stated.
    Own,
    /// The paper has no such experiment or states no budgets for it, so its paper scale is its
    /// default scale, for the reason given: the same units, stored and reused as the default's.
    Default(&'static str),
    /// The paper's experiment, whose budgets are not designed here yet: refused.
    NotYet,
}

impl PaperBudgets {
    /// The scale whose budgets `job` runs at `scale`.
    pub(crate) fn effective<S>(job: &dyn Job<S>, scale: Scale) -> Scale {
        match (scale, job.paper_budgets()) {
            (Scale::Paper, PaperBudgets::Default(_)) => Scale::Default,
            _ => scale,
        }
    }
}

/// One experiment of the write-up; `S` is what its report hands the write-up (its section).
pub trait Job<S>: Sync {
    /// The name `--only` takes.
    fn name(&self) -> &'static str;
    /// What it draws, for `--help` and `--plan`.
    fn about(&self) -> &'static str;
    /// What its paper scale runs (every job has quick and default).
    fn paper_budgets(&self) -> PaperBudgets {
        PaperBudgets::NotYet
    }
    /// Everything that fixes its outputs besides the unit's own name: a unit stored under
    /// another protocol is refused rather than merged.
    fn protocol(&self, settings: &Settings) -> Result<Value>;
    /// Its independent units, in the order the report reads them.
    fn units(&self, settings: &Settings) -> Result<Vec<String>>;
    /// Runs one unit. Files the unit writes whole go under `staging`.
    fn run_unit(&self, settings: &Settings, unit: &str, staging: &Path) -> Result<Value>;
    /// Figures, tables and the job's section of the write-up, from its units' stored rows.
    fn report(&self, settings: &Settings, units: &[Stored], files: &mut Vec<PathBuf>) -> Result<S>;
    /// Estimated seconds of each of `units` on one core, from a short timed run of each kind;
    /// `None` where the job has no calibration (see [`plan`]).
    fn calibrate(&self, _settings: &Settings, _units: &[String]) -> Result<Option<Vec<f64>>> {
        Ok(None)
    }
    /// Whether `unit` is a choice other units read (a validation search): `--stage choices` runs
    /// these, `--stage runs` the rest. Every job names them `choice` or `choice-...`.
    fn is_choice(&self, unit: &str) -> bool {
        unit == "choice" || unit.starts_with("choice-")
    }
    /// Whether `--protocol JOB=FILE` may change its protocol ([`super::protocol`]).
    fn configurable(&self) -> bool {
        false
    }
    /// Keys of its protocol that only say how many units it has (how many seeds), on which no
    /// unit's rows depend: a stored unit whose protocol differs only in them is this run's, so a
    /// run that adds seeds computes only the new seeds' units.
    fn extent_keys(&self) -> &'static [&'static str] {
        &[]
    }
    /// What `unit` reads of the job's validation searches ([`Reads`]); by default every key.
    fn reads(&self, _unit: &str) -> Reads {
        Reads::default()
    }
}

/// What a unit's rows depend on among its job's validation searches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reads {
    /// Keys of the protocol that its rows do not depend on, directly or through a choice the unit
    /// takes (a search only other units read): a stored unit whose protocol differs from this
    /// run's only in them (and in the extent keys) is this run's, so a run that adds such a
    /// search computes only the units that read it. Name a key here only where that holds.
    pub ignores: Vec<&'static str>,
    /// The search units whose choices it takes (its own, for a search unit), each with its
    /// protocol key: where this run's protocol differs from the stored one's only in those
    /// searches, the unit may still be this run's ([`same_reads`]).
    pub searches: Vec<(&'static str, String)>,
}

/// Whether a stored unit's fingerprint is `expected`, its protocol's `ignored` keys aside.
fn same_fingerprint(stored: &Value, expected: &Value, ignored: &[&str]) -> bool {
    stored == expected || without(stored, ignored) == without(expected, ignored)
}

/// `fingerprint` without its protocol's `ignored` keys.
fn without(fingerprint: &Value, ignored: &[&str]) -> Value {
    let mut f = fingerprint.clone();
    if let Some(protocol) = f.get_mut("protocol") {
        *protocol = without_keys(protocol, ignored);
    }
    f
}

/// `value` without the keys `keys`, where it is an object (a fingerprint, a protocol, a search's
/// section of it).
fn without_keys(value: &Value, keys: &[&str]) -> Value {
    let mut value = value.clone();
    if let Some(o) = value.as_object_mut() {
        o.retain(|k, _| !keys.contains(&k.as_str()));
    }
    value
}

/// An error unless every job whose protocol `settings` changes is a job of `registry` that takes
/// changes, and its changed protocol is valid (checked here, before any unit runs).
pub(crate) fn check_protocol_changes<S>(registry: &[&'static dyn Job<S>], settings: &Settings) -> Result<()> {
    for (name, _) in &settings.protocols {
        match registry.iter().find(|j| j.name() == name) {
            Some(job) if job.configurable() => {
                job.protocol(settings)?;
            }
            _ => {
                let allowed: Vec<&str> = registry
                    .iter()
                    .filter(|j| j.configurable())
                    .map(|j| j.name())
                    .collect();
                return Err(CmlError::UnknownName {
                    kind: "job for --protocol".into(),
                    name: name.clone(),
                    allowed: allowed.join(", "),
                });
            }
        }
    }
    Ok(())
}

/// Which units a run takes (`--stage`): the choices other units read, or the rest. A cluster
/// runs the choices as one job array and the rest as a second that starts when the first has
/// finished, so that no unit recomputes a choice another slice holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Choices,
    Runs,
}

impl Stage {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "choices" => Ok(Stage::Choices),
            "runs" => Ok(Stage::Runs),
            _ => Err(CmlError::UnknownName {
                kind: "stage".into(),
                name: s.into(),
                allowed: "choices, runs".into(),
            }),
        }
    }
}

/// The item of `items` (in unit order) whose unit name `name_of` gives is `unit`, or an error
/// naming the job's units.
pub(crate) fn lookup<T, S>(
    job: &dyn Job<S>,
    settings: &Settings,
    unit: &str,
    items: Vec<T>,
    name_of: impl Fn(&T) -> String,
) -> Result<T> {
    items
        .into_iter()
        .find(|item| name_of(item) == unit)
        .ok_or_else(|| CmlError::UnknownName {
            kind: format!("{} unit", job.name()),
            name: unit.into(),
            allowed: job.units(settings).map(|u| u.join(", ")).unwrap_or_default(),
        })
}

/// A unit as stored.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    pub job: String,
    pub unit: String,
    /// The job's protocol, scale, seed and crate version the unit ran under.
    pub fingerprint: Value,
    /// Wall seconds of the unit (not reproducible; `--plan` and the write-up quote it).
    pub seconds: f64,
    pub rows: Value,
    /// Of a search unit computed again in place of a stale one (`--replace-stale`): what it chose
    /// under each earlier configuration, so that a unit computed under one of them that took the
    /// same value is still this run's ([`same_reads`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<Earlier>,
    /// Where its files are (filled in when read, not stored).
    #[serde(skip)]
    pub staging: PathBuf,
}

/// A search unit's choice under an earlier configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Earlier {
    pub fingerprint: Value,
    /// `None` where the protocol had no such search for its subject.
    pub chosen: Option<f64>,
}

pub(crate) fn fingerprint<S>(job: &dyn Job<S>, settings: &Settings) -> Result<Value> {
    Ok(serde_json::json!({
        "job": job.name(),
        "scale": PaperBudgets::effective(job, settings.scale).name(),
        "seed": settings.seed,
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": job.protocol(settings)?,
    }))
}

/// Wall seconds of `work` (for the calibrations of `--plan`).
pub(crate) fn timed(work: impl FnOnce() -> Result<()>) -> Result<f64> {
    let clock = std::time::Instant::now();
    work()?;
    Ok(clock.elapsed().as_secs_f64())
}

/// The unit files of the units this process is running now, and a signal each time one ends:
/// a unit that needs another one's rows waits for it rather than computing them a second time
/// beside it (two workers starting a search and a run that needs it).
static RUNNING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static ENDED: std::sync::Condvar = std::sync::Condvar::new();

/// Marks the unit stored at `file` as running in this process until the guard drops.
struct Running(PathBuf);

/// Takes a unit for a worker, of those `files` lists (each unit's file and the files of the
/// searches it reads) and `taken` has not, and marks it running, in one step under the lock: a
/// unit picked later sees every unit picked before it as running, so a stale reader waits for the
/// search it reads instead of judging its old file. The first unit whose searches are neither
/// running nor waiting to be taken goes first, so that a worker does not idle on a reader while
/// other units are ready; where every unit left waits for one, the first is taken, and waits.
fn pick(taken: &Mutex<Vec<bool>>, files: &[(PathBuf, Vec<PathBuf>)]) -> Option<(usize, Running)> {
    let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    let mut taken = taken.lock().unwrap_or_else(|e| e.into_inner());
    let left: Vec<usize> = (0..files.len()).filter(|&j| !taken[j]).collect();
    let busy = |file: &PathBuf| running.contains(file) || left.iter().any(|&j| files[j].0 == *file);
    let k = left
        .iter()
        .copied()
        .find(|&j| files[j].1.iter().all(|f| *f == files[j].0 || !busy(f)))
        .or(left.first().copied())?;
    taken[k] = true;
    running.push(files[k].0.clone());
    Some((k, Running(files[k].0.clone())))
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = running.iter().position(|f| *f == self.0) {
            running.swap_remove(k);
        }
        ENDED.notify_all();
    }
}

thread_local! {
    /// Seconds this worker has waited for other units, left out of its unit's wall time.
    static WAITED: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

/// Waits while this process runs the unit stored at `file` (no wait for a unit another process,
/// a slice elsewhere, runs: that one is computed again, as where it is absent).
fn wait_while_running(file: &Path) {
    let clock = Instant::now();
    let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    while running.iter().any(|f| f == file) {
        running = ENDED.wait(running).unwrap_or_else(|e| e.into_inner());
    }
    WAITED.with(|w| w.set(w.get() + clock.elapsed().as_secs_f64()));
}

/// Another unit of `job`, stored beside the unit whose staging folder is `staging` (the same
/// results folder), if it is there and of this configuration: a unit may reuse a result another
/// unit computes, provided it would compute the same itself when it is absent. Where this
/// process is running that unit now, it waits for it to end first.
pub(crate) fn stored_beside<S>(
    job: &dyn Job<S>,
    settings: &Settings,
    staging: &Path,
    unit: &str,
) -> Result<Option<Stored>> {
    let Some(results) = staging.parent().and_then(Path::parent) else {
        return Ok(None);
    };
    wait_while_running(&unit_file(results, job.name(), unit));
    match find(results, job, unit, &fingerprint(job, settings)?)? {
        Found::Stored(stored) => Ok(Some(stored)),
        Found::Absent => Ok(None),
        // A stale unit another slice replaces: this unit computes what it needs itself, as where
        // it is absent.
        Found::Stale(..) if settings.replace_stale => Ok(None),
        Found::Stale(refused, _) => Err(refused),
    }
}

/// The rows another unit of `job` stores beside this one ([`stored_beside`]), decoded, or, where
/// it is not there, `compute()`: what that unit would have stored.
pub(crate) fn stored_beside_or<T: serde::de::DeserializeOwned, S>(
    job: &dyn Job<S>,
    settings: &Settings,
    staging: &Path,
    unit: &str,
    compute: impl FnOnce() -> Result<T>,
) -> Result<T> {
    match stored_beside(job, settings, staging, unit)? {
        Some(stored) => decode(&stored),
        None => compute(),
    }
}

fn unit_file(results: &Path, job: &str, unit: &str) -> PathBuf {
    results.join(job).join(format!("{unit}.json"))
}

fn staging(results: &Path, job: &str, unit: &str) -> PathBuf {
    results.join(job).join(unit)
}

/// Reads a stored unit: `Ok(None)` when absent, an error when unreadable or computed under
/// another fingerprint.
fn load<S>(results: &Path, job: &dyn Job<S>, unit: &str, expected: &Value) -> Result<Option<Stored>> {
    match find(results, job, unit, expected)? {
        Found::Stored(stored) => Ok(Some(stored)),
        Found::Absent => Ok(None),
        Found::Stale(refused, _) => Err(refused),
    }
}

/// A unit's file as [`find`] finds it.
enum Found {
    Absent,
    Stored(Stored),
    /// Computed under another configuration: the error that refuses it, and the unit as stored.
    Stale(CmlError, Box<Stored>),
}

/// Looks for a stored unit; an error when its file is unreadable.
fn find<S>(results: &Path, job: &dyn Job<S>, unit: &str, expected: &Value) -> Result<Found> {
    let path = unit_file(results, job.name(), unit);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Absent),
        Err(source) => {
            return Err(CmlError::Io {
                action: "cannot read",
                path,
                source,
            });
        }
    };
    let mut stored: Stored = serde_json::from_str(&text).map_err(|e| {
        CmlError::invalid(
            format!("unit file {}", path.display()),
            "unreadable",
            format!("a unit written by `cml figures --units` ({e})"),
        )
    })?;
    let reads = job.reads(unit);
    let ignored = [job.extent_keys(), &reads.ignores].concat();
    if !same_fingerprint(&stored.fingerprint, expected, &ignored)
        && !same_reads(results, job, &stored, expected, &ignored, &reads.searches)?
    {
        let differing: Vec<String> = ["job", "scale", "seed", "version", "protocol"]
            .iter()
            .filter(|k| stored.fingerprint.get(**k) != expected.get(**k))
            .map(|k| k.to_string())
            .collect();
        // Which of the protocol's keys differ (the unit's own ignored ones aside), so that a
        // user who changed a search knows which stored units read it.
        let keys = protocol_keys_that_differ(&stored.fingerprint, expected, &ignored);
        return Ok(Found::Stale(
            CmlError::invalid(
                format!("unit file {}", path.display()),
                format!(
                    "computed under another configuration ({} differ){}",
                    differing.join(", "),
                    if keys.is_empty() {
                        String::new()
                    } else {
                        format!(" in the protocol's {}", keys.join(", "))
                    }
                ),
                format!(
                    "units of this run (scale {}, seed {}); remove the file, use another --results folder, or run \
                 with --replace-stale",
                    settings_word(expected, "scale"),
                    settings_word(expected, "seed")
                ),
            ),
            Box::new(stored),
        ));
    }
    stored.staging = staging(results, job.name(), unit);
    Ok(Found::Stored(stored))
}

/// Whether `stored`, whose fingerprint differs from `expected` (the `ignored` keys aside) only in
/// searches it reads, holds what this run would compute. Each protocol key that differs must be
/// such a search, and pass one of two judgements (so a change of one search's allowance and
/// another's streams keeps a reader of both where each passes its own):
/// - [`same_end`]: only its `extensions` differ, and it ends the same under both allowances;
/// - [`same_choice`]: only its [`SEARCH_ONLY_FIELDS`] differ, `stored` does not run it, and it
///   chose under `stored`'s configuration the value it chooses now.
fn same_reads<S>(
    results: &Path,
    job: &dyn Job<S>,
    stored: &Stored,
    expected: &Value,
    ignored: &[&str],
    searches: &[(&'static str, String)],
) -> Result<bool> {
    let keys = protocol_keys_that_differ(&stored.fingerprint, expected, ignored);
    if keys.is_empty()
        || without_keys(&stored.fingerprint, &["protocol"]) != without_keys(expected, &["protocol"])
    {
        return Ok(false);
    }
    for key in keys {
        let read: Vec<&String> = searches
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, u)| u)
            .collect();
        let (then, now) = (
            &stored.fingerprint["protocol"][key.as_str()],
            &expected["protocol"][key.as_str()],
        );
        if read.is_empty() || !then.is_object() || !now.is_object() {
            return Ok(false);
        }
        if !(same_end(results, job, stored, expected, then, now, &read)?
            || same_choice(results, job, stored, expected, then, now, &read)?)
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One search key's judgement for [`same_reads`]: its sections `then` (under `stored`'s
/// configuration) and `now` differ only in `extensions`, and each search `read` of it ends the
/// same under both allowances, as [`same_under_both`] tells from its stored rows (`stored`'s own,
/// for a search unit; another search's unit file must itself be this run's). A search's extension
/// count changes nothing unless the search used it up.
fn same_end<S>(
    results: &Path,
    job: &dyn Job<S>,
    stored: &Stored,
    expected: &Value,
    then: &Value,
    now: &Value,
    read: &[&String],
) -> Result<bool> {
    let (Some(before), Some(after), Some(grid)) = (
        then["extensions"].as_u64(),
        now["extensions"].as_u64(),
        now["grid"].as_array(),
    ) else {
        return Ok(false);
    };
    if without_keys(then, &["extensions"]) != without_keys(now, &["extensions"]) {
        return Ok(false);
    }
    let grid: Vec<f64> = grid.iter().filter_map(Value::as_f64).collect();
    for name in read {
        let search: Option<crate::choice::Search> = if **name == stored.unit {
            decode(stored)?
        } else {
            match find(results, job, name, expected)? {
                Found::Stored(s) => decode(&s)?,
                Found::Absent | Found::Stale(..) => return Ok(false),
            }
        };
        if let Some(search) = search
            && !same_under_both(&search, &grid, before, after)
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The fields of a search's protocol key that decide only how it scores and which values it
/// tries: a unit that reads the search sees them through its choice alone.
const SEARCH_ONLY_FIELDS: [&str; 3] = ["grid", "extensions", "streams"];

/// One search key's judgement for [`same_reads`]: its sections `then` and `now` differ only in
/// [`SEARCH_ONLY_FIELDS`], `stored` reads its searches without running one, and each of them,
/// stored as this run's, chose under `stored`'s configuration ([`Earlier`]) the value it chooses
/// now: so `stored` took what this run takes.
fn same_choice<S>(
    results: &Path,
    job: &dyn Job<S>,
    stored: &Stored,
    expected: &Value,
    then: &Value,
    now: &Value,
    read: &[&String],
) -> Result<bool> {
    if without_keys(then, &SEARCH_ONLY_FIELDS) != without_keys(now, &SEARCH_ONLY_FIELDS)
        || read.contains(&&stored.unit)
    {
        return Ok(false);
    }
    for name in read {
        let Found::Stored(current) = find(results, job, name, expected)? else {
            return Ok(false);
        };
        let chosen = decode::<Option<crate::choice::Search>>(&current)?.map(|s| s.chosen);
        // The search as it stood under `stored`'s configuration (its own ignored keys aside).
        let its = job.reads(name);
        let its_ignored = [job.extent_keys(), &its.ignores].concat();
        let earlier = current
            .earlier
            .iter()
            .find(|e| same_fingerprint(&e.fingerprint, &stored.fingerprint, &its_ignored));
        if earlier.map(|e| e.chosen) != Some(chosen) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether a search, stored under either of two extension allowances, ends the same under both:
/// it extends its grid while its choice lies at an open edge, so one that stopped inside its grid
/// (or flat) after `u` extensions is the same search under any allowance of at least `u`; one that
/// ended at an edge used up its allowance, and another allowance changes it. `grid` is the
/// protocol's grid, from which the extensions used are counted (a stored grid that does not hold
/// it is not judged: not the same).
fn same_under_both(search: &crate::choice::Search, grid: &[f64], before: u64, now: u64) -> bool {
    let holds_grid = grid.iter().all(|v| search.grid.iter().any(|g| g.value == *v));
    let used = search.grid.len().saturating_sub(grid.len()) as u64;
    before == now || (holds_grid && !search.at_edge && used <= before.min(now))
}

/// Moves the stale unit file of `unit` (and its folder of files, if any) to `<job>/stale/`, so
/// that it is computed again as an absent one and the old rows are kept.
fn set_aside<S>(results: &Path, job: &dyn Job<S>, unit: &str) -> Result<()> {
    let aside = results.join(job.name()).join("stale");
    std::fs::create_dir_all(&aside).map_err(|source| CmlError::Io {
        action: "cannot create",
        path: aside.clone(),
        source,
    })?;
    let moves = [
        (
            unit_file(results, job.name(), unit),
            aside.join(format!("{unit}.json")),
        ),
        (staging(results, job.name(), unit), aside.join(unit)),
    ];
    for (from, to) in moves {
        if !from.exists() {
            continue;
        }
        if to.is_dir() {
            let _ = std::fs::remove_dir_all(&to);
        }
        std::fs::rename(&from, &to).map_err(|source| CmlError::Io {
            action: "cannot move aside",
            path: from.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The top-level protocol keys whose values differ between two fingerprints (`ignored` aside), in
/// order.
fn protocol_keys_that_differ(stored: &Value, expected: &Value, ignored: &[&str]) -> Vec<String> {
    let (Some(Value::Object(a)), Some(Value::Object(b))) = (stored.get("protocol"), expected.get("protocol"))
    else {
        return Vec::new();
    };
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| !ignored.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

fn settings_word(fingerprint: &Value, key: &str) -> String {
    fingerprint
        .get(key)
        .map_or(String::new(), |v| v.to_string().trim_matches('"').to_string())
}

/// Which jobs and units a run, report or plan covers.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// One job (`--only`), or every job.
    pub only: Option<String>,
    /// Units named `job/unit` (`--unit`), or every unit of the jobs.
    pub units: Vec<String>,
    /// One stage of the units (`--stage`), or both.
    pub stage: Option<Stage>,
}

impl Selection {
    /// Every unit of every job: only then is the write-up drawn.
    pub fn everything(&self) -> bool {
        self.only.is_none() && self.units.is_empty() && self.stage.is_none()
    }

    /// The selected units of `job`.
    fn of<S>(&self, job: &dyn Job<S>, settings: &Settings) -> Result<Vec<String>> {
        Ok(job
            .units(settings)?
            .into_iter()
            .filter(|u| self.units.is_empty() || self.units.contains(&format!("{}/{u}", job.name())))
            .filter(|u| match self.stage {
                None => true,
                Some(Stage::Choices) => job.is_choice(u),
                Some(Stage::Runs) => !job.is_choice(u),
            })
            .collect())
    }

    /// The selected jobs, with an error for an unknown job or a `--unit` that names no unit.
    fn jobs<S>(
        &self,
        registry: &[&'static dyn Job<S>],
        settings: &Settings,
    ) -> Result<Vec<&'static dyn Job<S>>> {
        let jobs = selected(registry, self.only.as_deref())?;
        for wanted in &self.units {
            let mut found = false;
            for job in &jobs {
                found |= job
                    .units(settings)?
                    .iter()
                    .any(|u| *wanted == format!("{}/{u}", job.name()));
            }
            if !found {
                return Err(CmlError::invalid(
                    "unit",
                    wanted,
                    format!(
                        "JOB/UNIT naming a unit of the selected jobs at scale {} (`cml figures --plan` lists the jobs; \
                         a job's units are the names its --units runs print, e.g. training/synapse-cg-seed0)",
                        settings.scale.name()
                    ),
                ));
            }
        }
        Ok(jobs
            .into_iter()
            .filter(|j| {
                self.units.is_empty()
                    || self
                        .units
                        .iter()
                        .any(|u| u.starts_with(&format!("{}/", j.name())))
            })
            .collect())
    }
}

/// The jobs `only` selects (all when `None`), or an error naming the allowed jobs.
pub(crate) fn selected<S>(
    registry: &[&'static dyn Job<S>],
    only: Option<&str>,
) -> Result<Vec<&'static dyn Job<S>>> {
    let jobs = registry.to_vec();
    if let Some(name) = only
        && !jobs.iter().any(|j| j.name() == name)
    {
        return Err(CmlError::UnknownName {
            kind: "figure job".into(),
            name: name.into(),
            allowed: jobs.iter().map(|j| j.name()).collect::<Vec<_>>().join(", "),
        });
    }
    Ok(jobs
        .into_iter()
        .filter(|j| only.is_none_or(|o| o == j.name()))
        .collect())
}

/// Refuses the paper scale for a job without one (rather than running its default budgets
/// under the paper's name).
pub(crate) fn check_scale<S>(
    registry: &[&'static dyn Job<S>],
    jobs: &[&'static dyn Job<S>],
    settings: &Settings,
) -> Result<()> {
    if settings.scale != Scale::Paper {
        return Ok(());
    }
    let without: Vec<&str> = jobs
        .iter()
        .filter(|j| j.paper_budgets() == PaperBudgets::NotYet)
        .map(|j| j.name())
        .collect();
    if without.is_empty() {
        return Ok(());
    }
    let with: Vec<&str> = registry
        .iter()
        .filter(|j| j.paper_budgets() != PaperBudgets::NotYet)
        .map(|j| j.name())
        .collect();
    Err(CmlError::invalid(
        "scale",
        format!("paper for {}", without.join(", ")),
        format!(
            "jobs with the paper's budgets: {} (select one with --only)",
            with.join(", ")
        ),
    ))
}

/// Every selected unit, in registry order: `(job, unit)`.
fn all_units<S>(
    jobs: &[&'static dyn Job<S>],
    selection: &Selection,
    settings: &Settings,
) -> Result<Vec<(&'static dyn Job<S>, String)>> {
    let mut out = Vec::new();
    for &job in jobs {
        for unit in selection.of(job, settings)? {
            out.push((job, unit));
        }
    }
    Ok(out)
}

/// What one slice did.
#[derive(Debug, Default)]
pub struct SliceSummary {
    pub ran: Vec<String>,
    pub skipped: Vec<String>,
    /// Units found stored under another configuration and computed again (`--replace-stale`).
    pub replaced: Vec<String>,
}

/// Runs slice `i` of `n` of the selected jobs' units (unit `k` of the list belongs to slice
/// `k mod n`, which spreads each job's units over the slices), skipping units already stored
/// under `results`. Units run in parallel over the cores, each stored as it finishes, so an
/// interrupted slice resumes where it stopped.
pub fn run_slice<S>(
    registry: &[&'static dyn Job<S>],
    settings: &Settings,
    selection: &Selection,
    slice: (usize, usize),
    results: &Path,
    log: &(dyn Fn(&str) + Sync),
) -> Result<SliceSummary> {
    crate::autodiff::ensure_second_order()?;
    let jobs = selection.jobs(registry, settings)?;
    check_scale(registry, &jobs, settings)?;
    check_protocol_changes(registry, settings)?;
    let units = all_units(&jobs, selection, settings)?;
    let threads = crate::parallel::available_threads();
    run_listed(settings, units, slice, results, log, threads)
}

/// Runs slice `slice` of `units` on up to `threads` workers, each taking the next unit ready ([`pick`]);
/// a unit that needs another one's rows while that one runs waits for it ([`stored_beside`]).
fn run_listed<S>(
    settings: &Settings,
    units: Vec<(&'static dyn Job<S>, String)>,
    slice: (usize, usize),
    results: &Path,
    log: &(dyn Fn(&str) + Sync),
    threads: usize,
) -> Result<SliceSummary> {
    let mut todo = Vec::new();
    let mut summary = SliceSummary::default();
    for (k, (job, unit)) in units.into_iter().enumerate() {
        if k % slice.1 != slice.0 {
            continue;
        }
        let print = format!("{}/{unit}", job.name());
        let expected = fingerprint(job, settings)?;
        match find(results, job, &unit, &expected)? {
            Found::Stored(_) => summary.skipped.push(print),
            Found::Absent => todo.push((job, unit, expected, print, false)),
            // Judged again when its turn comes: the searches it reads may by then have been
            // computed again and have chosen what it took ([`same_reads`]).
            Found::Stale(..) if settings.replace_stale => todo.push((job, unit, expected, print, true)),
            Found::Stale(refused, _) => return Err(refused),
        }
    }
    let taken = Mutex::new(vec![false; todo.len()]);
    let files: Vec<(PathBuf, Vec<PathBuf>)> = todo
        .iter()
        .map(|(job, unit, ..)| {
            let searches = job.reads(unit).searches;
            let file = |u: &str| unit_file(results, job.name(), u);
            (file(unit), searches.iter().map(|(_, s)| file(s)).collect())
        })
        .collect();
    let failures = Mutex::new(Vec::new());
    let ran = Mutex::new(Vec::new());
    let kept = Mutex::new(Vec::new());
    let replaced = Mutex::new(Vec::new());
    let threads = threads.clamp(1, todo.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let Some((k, _running)) = pick(&taken, &files) else {
                        break;
                    };
                    let (job, unit, expected, print, stale) = &todo[k];
                    let earlier = if *stale {
                        match replace(results, *job, unit, expected) {
                            Ok(None) => {
                                kept.lock().unwrap().push((k, print.clone()));
                                continue;
                            }
                            Ok(Some(earlier)) => {
                                replaced.lock().unwrap().push((k, print.clone()));
                                earlier
                            }
                            Err(e) => {
                                failures.lock().unwrap().push(format!("{print}: {e}"));
                                continue;
                            }
                        }
                    } else {
                        Vec::new()
                    };
                    log(&format!("{print}: running"));
                    match run_one(settings, results, *job, unit, expected, earlier) {
                        Ok(seconds) => {
                            log(&format!("{print}: done in {seconds:.1} s"));
                            ran.lock().unwrap().push((k, print.clone()));
                        }
                        Err(e) => failures.lock().unwrap().push(format!("{print}: {e}")),
                    }
                }
            });
        }
    });
    let in_order = |found: Mutex<Vec<(usize, String)>>| {
        let mut found = found.into_inner().unwrap();
        found.sort();
        found.into_iter().map(|(_, p)| p).collect::<Vec<_>>()
    };
    summary.skipped.extend(in_order(kept));
    summary.replaced = in_order(replaced);
    let failures = failures.into_inner().unwrap();
    if !failures.is_empty() {
        return Err(CmlError::invalid(
            "figure units",
            format!("{} failed", failures.len()),
            format!(
                "every unit to finish (the others are stored and are not run again): {}",
                failures.join("; ")
            ),
        ));
    }
    summary.ran = in_order(ran);
    Ok(summary)
}

/// A stale unit whose turn has come, under `--replace-stale`: `None` where it is this run's after
/// all (the searches it reads, waited for, chose again what it took), else its file set aside and
/// what it chose under its configuration and the earlier ones, for the unit computed in its place.
fn replace<S>(
    results: &Path,
    job: &dyn Job<S>,
    unit: &str,
    expected: &Value,
) -> Result<Option<Vec<Earlier>>> {
    for (_, search) in job.reads(unit).searches.iter().filter(|(_, s)| s != unit) {
        wait_while_running(&unit_file(results, job.name(), search));
    }
    let old = match find(results, job, unit, expected)? {
        Found::Stored(_) => return Ok(None),
        Found::Absent => return Ok(Some(Vec::new())),
        Found::Stale(_, old) => *old,
    };
    set_aside(results, job, unit)?;
    // Only a search's choice is what its readers take.
    let chosen = job
        .is_choice(unit)
        .then(|| serde_json::from_value::<Option<crate::choice::Search>>(old.rows.clone()).ok())
        .flatten();
    Ok(Some(match chosen {
        Some(search) => {
            let mut earlier = old.earlier;
            earlier.push(Earlier {
                fingerprint: old.fingerprint,
                chosen: search.map(|s| s.chosen),
            });
            earlier
        }
        None => Vec::new(),
    }))
}

fn run_one<S>(
    settings: &Settings,
    results: &Path,
    job: &dyn Job<S>,
    unit: &str,
    expected: &Value,
    earlier: Vec<Earlier>,
) -> Result<f64> {
    let dir = staging(results, job.name(), unit);
    // A unit interrupted mid-run left no unit file; its partial files go.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|source| CmlError::Io {
            action: "cannot clear",
            path: dir.clone(),
            source,
        })?;
    }
    let clock = Instant::now();
    WAITED.with(|w| w.set(0.0));
    let rows = job.run_unit(settings, unit, &dir)?;
    let stored = Stored {
        job: job.name().into(),
        unit: unit.into(),
        fingerprint: expected.clone(),
        // Its own work: the time spent waiting for another unit it needs is that unit's.
        seconds: clock.elapsed().as_secs_f64() - WAITED.with(|w| w.get()),
        rows,
        earlier,
        staging: PathBuf::new(),
    };
    let text = encode(&stored)?.to_string();
    // Written last and whole: a unit file exists only for a finished unit.
    // Its worker marks it running until this returns (`pick`).
    write_atomically(&unit_file(results, job.name(), unit), text.as_bytes())?;
    Ok(stored.seconds)
}

/// What the selected jobs' reports gave: each job's section, the files written, and the wall
/// seconds of the units, summed (units may have run in parallel or on other machines).
#[derive(Debug)]
pub struct Reported<S> {
    pub sections: Vec<(&'static str, S)>,
    pub files: Vec<PathBuf>,
    pub unit_seconds: f64,
}

/// Every selected job's figures, tables and section, from the units stored under `results`. A
/// missing unit, or one stored under another configuration, is an error that names it. With
/// `--unit`, a job reports from the units selected.
pub fn report<S>(
    registry: &[&'static dyn Job<S>],
    settings: &Settings,
    selection: &Selection,
    results: &Path,
) -> Result<Reported<S>> {
    let jobs = selection.jobs(registry, settings)?;
    check_scale(registry, &jobs, settings)?;
    check_protocol_changes(registry, settings)?;
    let mut out = Reported {
        sections: Vec::new(),
        files: Vec::new(),
        unit_seconds: 0.0,
    };
    let mut seconds = 0.0;
    for job in &jobs {
        let expected = fingerprint(*job, settings)?;
        let mut stored = Vec::new();
        let mut missing = Vec::new();
        for unit in selection.of(*job, settings)? {
            match load(results, *job, &unit, &expected)? {
                Some(s) => stored.push(s),
                None => missing.push(unit),
            }
        }
        if !missing.is_empty() {
            return Err(CmlError::invalid(
                format!("results folder {}", results.display()),
                format!(
                    "{} of the {} units of job {} missing: {}",
                    missing.len(),
                    missing.len() + stored.len(),
                    job.name(),
                    missing.join(", ")
                ),
                "every unit of the job (run the missing slices with `cml figures --units i/n --results DIR`)",
            ));
        }
        seconds += stored.iter().map(|s| s.seconds).sum::<f64>();
        let section = job.report(settings, &stored, &mut out.files)?;
        out.sections.push((job.name(), section));
    }
    out.unit_seconds = seconds;
    Ok(out)
}

/// One row of `--plan`.
#[derive(Debug, Clone)]
pub struct PlanRow {
    pub job: &'static str,
    pub units: usize,
    /// Estimated core-seconds of all its units, and how the estimate was made.
    pub seconds: Option<f64>,
    pub source: String,
}

/// Every selected job's units and an estimate of their cost: the seconds its units took in
/// `previous` (a results folder of the same configuration) where every one of them is there, else
/// a short timed calibration where the job has one, else unknown. At the paper scale, a job
/// without paper budgets is a row that says so.
pub fn plan<S>(
    registry: &[&'static dyn Job<S>],
    settings: &Settings,
    selection: &Selection,
    previous: Option<&Path>,
) -> Result<Vec<PlanRow>> {
    crate::autodiff::ensure_second_order()?;
    let jobs = selection.jobs(registry, settings)?;
    check_protocol_changes(registry, settings)?;
    let mut rows = Vec::new();
    for job in jobs {
        if settings.scale == Scale::Paper && job.paper_budgets() == PaperBudgets::NotYet {
            rows.push(PlanRow {
                job: job.name(),
                units: 0,
                seconds: None,
                source: "no paper-scale budgets yet (docs/EXPERIMENTS.md)".into(),
            });
            continue;
        }
        let units = selection.of(job, settings)?;
        // What the units took in `previous`, where every one of them is there: a measurement
        // beats a calibration's estimate.
        let mut measured = None;
        if let Some(dir) = previous {
            let expected = fingerprint(job, settings)?;
            let (mut total, mut found) = (0.0, 0);
            for unit in &units {
                if let Some(s) = load(dir, job, unit, &expected)? {
                    total += s.seconds;
                    found += 1;
                }
            }
            measured = Some((found, total, dir));
        }
        let (seconds, source) = match measured {
            Some((found, total, dir)) if found == units.len() => {
                (Some(total), format!("measured in {}", dir.display()))
            }
            _ => match (job.calibrate(settings, &units)?, measured) {
                (Some(each), _) => (Some(each.iter().sum()), "calibrated now".to_string()),
                (None, Some((found, _, dir))) => (
                    None,
                    format!("{found} of {} units in {}", units.len(), dir.display()),
                ),
                (None, None) => (
                    None,
                    "no calibration; give --results of an earlier run".to_string(),
                ),
            },
        };
        let source = match (settings.scale, job.paper_budgets()) {
            (Scale::Paper, PaperBudgets::Default(why)) => format!("{source}; the default's budgets ({why})"),
            _ => source,
        };
        rows.push(PlanRow {
            job: job.name(),
            units: units.len(),
            seconds,
            source,
        });
    }
    Ok(rows)
}

/// A job run as one unit: the code of a job not (yet) split, whose files are written whole in
/// the unit's folder and copied out at report time.
pub(crate) struct Whole<S> {
    pub name: &'static str,
    pub about: &'static str,
    pub protocol: fn(&Settings) -> Result<Value>,
    pub run: fn(&Settings, &mut Vec<PathBuf>) -> Result<S>,
    /// Adds what the section reads from the real output folder at report time.
    pub at_report: Option<fn(&Settings, S) -> S>,
    pub paper: PaperBudgets,
    /// Whether `--protocol` may change `protocol` (which then applies the changes).
    pub configurable: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(bound = "S: serde::Serialize + serde::de::DeserializeOwned")]
struct WholeRows<S> {
    section: S,
    /// Files in the order written: `(folder, name)` with folder "figures" or "paper".
    files: Vec<(String, String)>,
}

impl<S: serde::Serialize + serde::de::DeserializeOwned> Job<S> for Whole<S> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn about(&self) -> &'static str {
        self.about
    }

    fn paper_budgets(&self) -> PaperBudgets {
        self.paper
    }

    fn protocol(&self, settings: &Settings) -> Result<Value> {
        (self.protocol)(settings)
    }

    fn configurable(&self) -> bool {
        self.configurable
    }

    fn units(&self, _: &Settings) -> Result<Vec<String>> {
        Ok(vec!["all".into()])
    }

    fn run_unit(&self, settings: &Settings, _: &str, staging: &Path) -> Result<Value> {
        let inside = Settings {
            out: staging.join("figures"),
            paper: staging.join("paper"),
            ..settings.clone()
        };
        let mut written = Vec::new();
        let section = (self.run)(&inside, &mut written)?;
        let mut files = Vec::new();
        for path in written {
            let folder = if path.starts_with(&inside.paper) {
                "paper"
            } else {
                "figures"
            };
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push((folder.to_string(), name));
        }
        encode(&WholeRows { section, files })
    }

    fn report(&self, settings: &Settings, units: &[Stored], files: &mut Vec<PathBuf>) -> Result<S> {
        let stored = &units[0];
        let rows: WholeRows<S> = decode(stored)?;
        for (folder, name) in &rows.files {
            let from = stored.staging.join(folder).join(name);
            let to = if folder == "paper" {
                settings.paper.join(name)
            } else {
                settings.out.join(name)
            };
            let bytes = std::fs::read(&from).map_err(|source| CmlError::Io {
                action: "cannot read a unit's file",
                path: from.clone(),
                source,
            })?;
            write_atomically(&to, &bytes)?;
            files.push(to);
        }
        Ok(match self.at_report {
            Some(f) => f(settings, rows.section),
            None => rows.section,
        })
    }
}

/// A stored unit's rows as the job's own type.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(stored: &Stored) -> Result<T> {
    serde_json::from_value(stored.rows.clone()).map_err(|e| {
        CmlError::invalid(
            format!("rows of unit {}/{}", stored.job, stored.unit),
            "unreadable",
            format!("rows written by this version of cml ({e})"),
        )
    })
}

/// Rows as JSON.
pub(crate) fn encode<T: serde::Serialize>(rows: &T) -> Result<Value> {
    serde_json::to_value(rows).map_err(|e| CmlError::invalid("unit rows", "not serialisable", e.to_string()))
}

/// Serde for an `f64` that may be infinite or NaN (JSON has no such numbers, and serde_json would
/// write them as `null`, which does not read back): finite values as numbers, the others as the
/// strings `"inf"`, `"-inf"`, `"NaN"`, read back exactly. For rows of units with `#[serde(with)]`.
pub(crate) mod any_float {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        match *x {
            x if x.is_finite() => s.serialize_f64(x),
            x if x.is_nan() => s.serialize_str("NaN"),
            x if x > 0.0 => s.serialize_str("inf"),
            _ => s.serialize_str("-inf"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Number(f64),
            Word(String),
        }
        match Stored::deserialize(d)? {
            Stored::Number(x) => Ok(x),
            Stored::Word(w) => match w.as_str() {
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                "NaN" => Ok(f64::NAN),
                other => Err(serde::de::Error::custom(format!(
                    "'{other}' is not a number (allowed: a number, inf, -inf, NaN)"
                ))),
            },
        }
    }
}

/// [`any_float`] for `(step, value)` pairs: each stored as `[step, value]`.
pub(crate) mod any_float_pairs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Pair(usize, #[serde(with = "super::any_float")] f64);

    pub fn serialize<S: Serializer>(v: &[(usize, f64)], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|&(k, x)| Pair(k, x))
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(usize, f64)>, D::Error> {
        Ok(Vec::<Pair>::deserialize(d)?
            .into_iter()
            .map(|p| (p.0, p.1))
            .collect())
    }
}

#[cfg(test)]
mod any_float_tests {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Row {
        #[serde(with = "super::any_float")]
        x: f64,
    }

    #[test]
    fn every_float_survives_the_unit_file() {
        for x in [0.0, -1.5e-300, 3.0, f64::INFINITY, f64::NEG_INFINITY] {
            let text = serde_json::to_string(&Row { x }).unwrap();
            assert_eq!(serde_json::from_str::<Row>(&text).unwrap().x, x, "{text}");
        }
        let nan = serde_json::to_string(&Row { x: f64::NAN }).unwrap();
        assert!(serde_json::from_str::<Row>(&nan).unwrap().x.is_nan());
        // A null (what serde_json writes for a bare non-finite f64) is refused, not guessed.
        assert!(serde_json::from_str::<Row>("{\"x\":null}").is_err());
        assert!(serde_json::from_str::<Row>("{\"x\":\"big\"}").is_err());
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Pairs {
        #[serde(with = "super::any_float_pairs")]
        v: Vec<(usize, f64)>,
    }

    #[test]
    fn pairs_read_back_and_read_plain_numbers() {
        let v = vec![(0, 1.5), (10, f64::INFINITY)];
        let text = serde_json::to_string(&Pairs { v: v.clone() }).unwrap();
        assert_eq!(text, "{\"v\":[[0,1.5],[10,\"inf\"]]}");
        assert_eq!(serde_json::from_str::<Pairs>(&text).unwrap().v, v);
        // Pairs written as plain `(usize, f64)` tuples read the same.
        assert_eq!(
            serde_json::from_str::<Pairs>("{\"v\":[[0,2.0]]}").unwrap().v,
            vec![(0, 2.0)]
        );
    }
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    /// Two runs; `plain` does not read the protocol's `search` (absent unless given), `searched`
    /// does.
    struct PlainAndSearched;

    impl Job<()> for PlainAndSearched {
        fn name(&self) -> &'static str {
            "plain-and-searched"
        }
        fn about(&self) -> &'static str {
            "a unit that reads a search and one that does not"
        }
        fn protocol(&self, settings: &Settings) -> Result<Value> {
            let mut p = serde_json::json!({"steps": 3});
            if let Some((_, search)) = settings.protocols.first() {
                p["search"] = search.clone();
            }
            Ok(p)
        }
        fn units(&self, _: &Settings) -> Result<Vec<String>> {
            Ok(vec!["plain".into(), "searched".into()])
        }
        fn run_unit(&self, _: &Settings, unit: &str, _: &Path) -> Result<Value> {
            Ok(Value::from(unit))
        }
        fn report(&self, _: &Settings, _: &[Stored], _: &mut Vec<PathBuf>) -> Result<()> {
            Ok(())
        }
        fn reads(&self, unit: &str) -> Reads {
            Reads {
                ignores: if unit == "plain" {
                    vec!["search"]
                } else {
                    Vec::new()
                },
                searches: Vec::new(),
            }
        }
    }

    /// A search over [1, 2, 4] of a loss `(v - target)^2` (its protocol's `[s_search]`: grid,
    /// extensions, target) and a run that reads it.
    struct SearchAndRun;

    impl Job<()> for SearchAndRun {
        fn name(&self) -> &'static str {
            "search-and-run"
        }
        fn about(&self) -> &'static str {
            "a search whose allowance of extensions changes, and a run that reads it"
        }
        fn protocol(&self, settings: &Settings) -> Result<Value> {
            let (extensions, target, grid) = settings.protocols.first().map_or((1, 5.0, None), |(_, p)| {
                (p[0].as_u64().unwrap(), p[1].as_f64().unwrap(), p.get(2).cloned())
            });
            let grid = grid.unwrap_or(serde_json::json!([1.0, 2.0, 4.0]));
            Ok(serde_json::json!({"s_search": {"grid": grid, "extensions": extensions, "target": target}}))
        }
        fn units(&self, _: &Settings) -> Result<Vec<String>> {
            Ok(vec!["choice-s".into(), "run".into()])
        }
        fn run_unit(&self, settings: &Settings, unit: &str, _: &Path) -> Result<Value> {
            let search = toy_search(&self.protocol(settings)?["s_search"])?;
            Ok(if unit == "run" {
                Value::from(search.chosen)
            } else {
                encode(&Some(search))?
            })
        }
        fn report(&self, _: &Settings, _: &[Stored], _: &mut Vec<PathBuf>) -> Result<()> {
            Ok(())
        }
        fn reads(&self, _unit: &str) -> Reads {
            Reads {
                ignores: Vec::new(),
                searches: vec![("s_search", "choice-s".into())],
            }
        }
    }

    /// The search of a section `{grid, extensions, target}`: the value of its grid (extended as
    /// allowed) of least loss `(v - target)^2`.
    fn toy_search(section: &Value) -> Result<crate::choice::Search> {
        let target = section["target"].as_f64().unwrap();
        let grid: Vec<f64> = serde_json::from_value(section["grid"].clone()).unwrap();
        let extensions = section["extensions"].as_u64().unwrap() as usize;
        crate::choice::search("toy", "v", crate::choice::Ties::None, &grid, extensions, |v| {
            Ok((vec![(v - target).powi(2)], None))
        })
    }

    /// Two searches (the protocol's `s_search` and `t_search`, as [`toy_search`] takes them, given
    /// whole as the job's protocol change) and a run that reads both and takes their two choices.
    struct TwoSearchesAndRun;

    impl Job<()> for TwoSearchesAndRun {
        fn name(&self) -> &'static str {
            "two-searches-and-run"
        }
        fn about(&self) -> &'static str {
            "two searches, each changed its own way, and a run that reads both"
        }
        fn protocol(&self, settings: &Settings) -> Result<Value> {
            Ok(settings.protocols[0].1.clone())
        }
        fn units(&self, _: &Settings) -> Result<Vec<String>> {
            Ok(["choice-s", "choice-t", "run"].map(String::from).to_vec())
        }
        fn run_unit(&self, settings: &Settings, unit: &str, _: &Path) -> Result<Value> {
            let p = self.protocol(settings)?;
            Ok(match unit {
                "choice-s" => encode(&Some(toy_search(&p["s_search"])?))?,
                "choice-t" => encode(&Some(toy_search(&p["t_search"])?))?,
                _ => serde_json::json!([
                    toy_search(&p["s_search"])?.chosen,
                    toy_search(&p["t_search"])?.chosen
                ]),
            })
        }
        fn report(&self, _: &Settings, _: &[Stored], _: &mut Vec<PathBuf>) -> Result<()> {
            Ok(())
        }
        fn reads(&self, unit: &str) -> Reads {
            let s = ("s_search", "choice-s".to_string());
            let t = ("t_search", "choice-t".to_string());
            match unit {
                "choice-s" => Reads {
                    ignores: vec!["t_search"],
                    searches: vec![s],
                },
                "choice-t" => Reads {
                    ignores: vec!["s_search"],
                    searches: vec![t],
                },
                _ => Reads {
                    ignores: Vec::new(),
                    searches: vec![s, t],
                },
            }
        }
    }

    #[test]
    fn a_reader_of_two_searches_each_changed_its_own_way_is_kept_where_both_judgements_hold() {
        static JOB: TwoSearchesAndRun = TwoSearchesAndRun;
        let at = |s: (u64, [f64; 3]), t: [f64; 3]| Settings {
            protocols: vec![(
                JOB.name().into(),
                serde_json::json!({
                    "s_search": {"grid": s.1, "extensions": s.0, "target": 5.0},
                    "t_search": {"grid": t, "extensions": 1, "target": 7.0},
                }),
            )],
            replace_stale: true,
            ..Settings::at(Scale::Default)
        };
        let units = || {
            ["choice-s", "choice-t", "run"]
                .map(|u| (&JOB as &'static dyn Job<()>, u.to_string()))
                .to_vec()
        };
        let run =
            |settings: &Settings, dir: &Path| run_listed(settings, units(), (0, 1), dir, &|_| {}, 1).unwrap();
        let took = |dir: &Path| {
            let text = std::fs::read_to_string(dir.join("two-searches-and-run/run.json")).unwrap();
            serde_json::from_str::<Stored>(&text).unwrap().rows
        };
        let dir = tempfile::tempdir().unwrap();
        // s: target 5 on [1, 2, 4] (losses 16, 9, 1) ends at the upper edge, its one extension adds
        // 8 (loss 9) and it chooses 4 inside. t: target 7 on [2, 4, 8] (losses 25, 9, 1) ends at
        // the upper edge, the extension adds 16 (loss 81), and it chooses 8 inside.
        run(&at((1, [1.0, 2.0, 4.0]), [2.0, 4.0, 8.0]), dir.path());
        assert_eq!(took(dir.path()), serde_json::json!([4.0, 8.0]));
        // s allowed 2 extensions ends the same (it used 1); t on [4, 8, 16] (losses 9, 1, 81)
        // chooses 8 inside, without extending: t is computed again, and the run, which differs in
        // both keys, each through one judgement, is kept.
        let summary = run(&at((2, [1.0, 2.0, 4.0]), [4.0, 8.0, 16.0]), dir.path());
        assert_eq!(summary.ran, ["two-searches-and-run/choice-t"]);
        assert_eq!(
            summary.skipped,
            ["two-searches-and-run/choice-s", "two-searches-and-run/run"]
        );
        // s allowed none stops at the edge, 4: another search (it is computed again), but the
        // same choice, so the run is kept again.
        let summary = run(&at((0, [1.0, 2.0, 4.0]), [4.0, 8.0, 16.0]), dir.path());
        assert_eq!(summary.ran, ["two-searches-and-run/choice-s"]);
        assert_eq!(
            summary.skipped,
            ["two-searches-and-run/choice-t", "two-searches-and-run/run"]
        );
        // t on [0.5, 1, 2] (losses 42.25, 36, 25 up to the edge, 2; the extension adds 4, loss 9,
        // still at the edge) chooses 4: another choice, so the run is computed again and takes it.
        let summary = run(&at((0, [1.0, 2.0, 4.0]), [0.5, 1.0, 2.0]), dir.path());
        assert_eq!(
            summary.ran,
            ["two-searches-and-run/choice-t", "two-searches-and-run/run"]
        );
        assert_eq!(took(dir.path()), serde_json::json!([4.0, 4.0]));
    }

    #[test]
    fn a_changed_allowance_of_extensions_restales_only_the_searches_it_changes() {
        static JOB: SearchAndRun = SearchAndRun;
        let at = |extensions: u64, target: f64| Settings {
            protocols: vec![(JOB.name().into(), serde_json::json!([extensions, target]))],
            ..Settings::at(Scale::Default)
        };
        let units = || {
            JOB.units(&at(1, 5.0))
                .unwrap()
                .into_iter()
                .map(|u| (&JOB as &'static dyn Job<()>, u))
                .collect::<Vec<_>>()
        };
        let run = |settings: &Settings, dir: &Path| run_listed(settings, units(), (0, 1), dir, &|_| {}, 1);
        // Target 5: the loss 16, 9, 1 at 1, 2, 4 puts the choice at the upper edge; one
        // extension adds 8 (loss 9) and the choice, 4, lies inside: the search stops after 1
        // extension under any allowance of at least 1.
        let dir = tempfile::tempdir().unwrap();
        run(&at(1, 5.0), dir.path()).unwrap();
        for more in [2, 3] {
            let summary = run(&at(more, 5.0), dir.path()).unwrap();
            assert_eq!(summary.ran, Vec::<String>::new(), "allowance {more}");
            assert_eq!(summary.skipped.len(), 2);
        }
        // Allowed none, it would stop at the edge, 4: both the search and its reader are stale.
        let err = run(&at(0, 5.0), dir.path()).unwrap_err().to_string();
        assert!(err.contains("s_search") && err.contains("choice-s"), "{err}");
        // Target 100: the loss falls up to every edge, so the search uses up its allowance (8 at
        // 1, 16 at 2) and another allowance is another search; its reader goes with it.
        let dir = tempfile::tempdir().unwrap();
        run(&at(1, 100.0), dir.path()).unwrap();
        let err = run(&at(2, 100.0), dir.path()).unwrap_err().to_string();
        assert!(err.contains("choice-s"), "{err}");
        let replacing = Settings {
            replace_stale: true,
            ..at(2, 100.0)
        };
        let summary = run(&replacing, dir.path()).unwrap();
        assert_eq!(summary.replaced.len(), 2, "{summary:?}");
        // Another difference besides the allowance is a stale unit, as before.
        let dir = tempfile::tempdir().unwrap();
        run(&at(1, 5.0), dir.path()).unwrap();
        assert!(run(&at(2, 6.0), dir.path()).is_err());
    }

    #[test]
    fn a_search_computed_again_restales_only_the_readers_whose_choice_it_changes() {
        static JOB: SearchAndRun = SearchAndRun;
        let at = |grid: [f64; 3]| Settings {
            protocols: vec![(JOB.name().into(), serde_json::json!([1, 7.0, grid]))],
            replace_stale: true,
            ..Settings::at(Scale::Default)
        };
        let units = || {
            ["choice-s", "run"]
                .map(|u| (&JOB as &'static dyn Job<()>, u.to_string()))
                .to_vec()
        };
        let run = |settings: &Settings, dir: &Path| run_listed(settings, units(), (0, 1), dir, &|_| {}, 1);
        let took = |dir: &Path| {
            let text = std::fs::read_to_string(dir.join("search-and-run/run.json")).unwrap();
            serde_json::from_str::<Stored>(&text)
                .unwrap()
                .rows
                .as_f64()
                .unwrap()
        };
        // Target 7, loss (v - 7)^2: on [2, 4, 8] the losses 25, 9, 1 choose 8 at the upper edge;
        // the one extension adds 16 (loss 81), and 8 lies inside.
        let dir = tempfile::tempdir().unwrap();
        run(&at([2.0, 4.0, 8.0]), dir.path()).unwrap();
        assert_eq!(took(dir.path()), 8.0);
        // On [4, 8, 16] (losses 9, 1, 81) the search chooses 8 inside, without extending: it is
        // computed again, and the run, which took 8, is kept.
        let summary = run(&at([4.0, 8.0, 16.0]), dir.path()).unwrap();
        assert_eq!(summary.replaced, ["search-and-run/choice-s"]);
        assert_eq!(summary.ran, ["search-and-run/choice-s"]);
        assert_eq!(summary.skipped, ["search-and-run/run"]);
        // And again on [8, 16, 32] (losses 1, 81, 625: 8 at the lower edge, the extension adds
        // 4, loss 9): the run, computed two configurations back, is still kept.
        let summary = run(&at([8.0, 16.0, 32.0]), dir.path()).unwrap();
        assert_eq!(summary.skipped, ["search-and-run/run"]);
        // On [0.5, 1, 2] (losses 42.25, 36, 25: 2 at the upper edge; the extension adds 4, loss 9,
        // still at the edge) the search chooses 4: another choice, so the run is computed again
        // and takes it.
        let summary = run(&at([0.5, 1.0, 2.0]), dir.path()).unwrap();
        assert_eq!(
            summary.replaced,
            ["search-and-run/choice-s", "search-and-run/run"]
        );
        assert_eq!(took(dir.path()), 4.0);
        // A change of anything but the search's grid, allowance or streams (here the loss its
        // reader would see too) restales the reader, though the search chooses 4 again.
        let target = Settings {
            protocols: vec![(JOB.name().into(), serde_json::json!([1, 6.9, [0.5, 1.0, 2.0]]))],
            ..at([0.5, 1.0, 2.0])
        };
        let summary = run(&target, dir.path()).unwrap();
        assert_eq!(
            summary.replaced,
            ["search-and-run/choice-s", "search-and-run/run"]
        );
        assert_eq!(took(dir.path()), 4.0);
    }

    #[test]
    fn a_stale_unit_another_unit_reads_is_refused_unless_it_is_being_replaced() {
        static JOB: PlainAndSearched = PlainAndSearched;
        let dir = tempfile::tempdir().unwrap();
        let without = Settings::at(Scale::Default);
        let units = vec![(&JOB as &'static dyn Job<()>, "searched".to_string())];
        run_listed(&without, units, (0, 1), dir.path(), &|_| {}, 1).unwrap();
        // A unit of the changed run that reads `searched` from beside it (as a run unit reads a
        // search another slice holds): refused by default; with --replace-stale that slice sets it
        // aside and computes it again, so the reader computes what it needs itself, as where it is
        // absent.
        let with = Settings {
            protocols: vec![(JOB.name().into(), serde_json::json!([0.1, 0.3]))],
            ..without.clone()
        };
        let beside = dir.path().join(JOB.name()).join("plain");
        let err = stored_beside(&JOB, &with, &beside, "searched")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--replace-stale"), "{err}");
        let replacing = Settings {
            replace_stale: true,
            ..with.clone()
        };
        assert!(
            stored_beside(&JOB, &replacing, &beside, "searched")
                .unwrap()
                .is_none()
        );
        // The slice that holds it sets it aside and runs it again; the old file is kept.
        let units = vec![(&JOB as &'static dyn Job<()>, "searched".to_string())];
        let summary = run_listed(&replacing, units, (0, 1), dir.path(), &|_| {}, 1).unwrap();
        assert_eq!(summary.replaced, ["plain-and-searched/searched"]);
        assert_eq!(summary.ran, ["plain-and-searched/searched"]);
        assert!(dir.path().join(JOB.name()).join("stale/searched.json").exists());
        assert!(stored_beside(&JOB, &with, &beside, "searched").unwrap().is_some());
    }

    #[test]
    fn adding_a_search_recomputes_only_the_units_that_read_it() {
        static JOB: PlainAndSearched = PlainAndSearched;
        let dir = tempfile::tempdir().unwrap();
        let without = Settings::at(Scale::Default);
        let with = Settings {
            protocols: vec![(JOB.name().into(), serde_json::json!([0.1, 0.3]))],
            ..without.clone()
        };
        let listed = |settings: &Settings| -> Vec<(&'static dyn Job<()>, String)> {
            let units = JOB.units(settings).unwrap();
            units
                .into_iter()
                .map(|u| (&JOB as &'static dyn Job<()>, u))
                .collect()
        };
        let ran = run_listed(&without, listed(&without), (0, 1), dir.path(), &|_| {}, 1).unwrap();
        assert_eq!(ran.ran.len(), 2);
        // With the search: the plain unit is this run's, the searched one is refused, and a run
        // computes it alone.
        let expected = fingerprint(&JOB, &with).unwrap();
        assert!(load(dir.path(), &JOB, "plain", &expected).unwrap().is_some());
        let err = load(dir.path(), &JOB, "searched", &expected)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("computed under another configuration (protocol differ) in the protocol's search:"),
            "{err}"
        );
        std::fs::remove_file(unit_file(dir.path(), JOB.name(), "searched")).unwrap();
        let ran = run_listed(&with, listed(&with), (0, 1), dir.path(), &|_| {}, 1).unwrap();
        assert_eq!(ran.ran, ["plain-and-searched/searched"]);
        // Another change to the plain unit's own keys is still refused.
        let mut changed = fingerprint(&JOB, &with).unwrap();
        changed["protocol"]["steps"] = Value::from(4);
        let err = load(dir.path(), &JOB, "plain", &changed).unwrap_err().to_string();
        // The plain unit ignores the search, so only the steps are named.
        assert!(
            err.contains("(protocol differ) in the protocol's steps:"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod waiting_tests {
    use super::*;

    /// A search (a choice unit) that takes a second and two runs that need its rows: each run
    /// reports whether it found the search stored or had to compute it itself.
    struct SearchAndRuns;

    impl Job<()> for SearchAndRuns {
        fn name(&self) -> &'static str {
            "search-and-runs"
        }
        fn about(&self) -> &'static str {
            "a search and the runs that need it"
        }
        fn protocol(&self, _: &Settings) -> Result<Value> {
            Ok(Value::Null)
        }
        fn units(&self, _: &Settings) -> Result<Vec<String>> {
            Ok(vec!["choice".into(), "run-1".into(), "run-2".into()])
        }
        fn run_unit(&self, settings: &Settings, unit: &str, staging: &Path) -> Result<Value> {
            if unit == "choice" {
                // Long enough that the second worker starts a run while it is still going.
                std::thread::sleep(std::time::Duration::from_millis(1000));
                return Ok(Value::from("searched"));
            }
            let found = stored_beside_or::<String, ()>(self, settings, staging, "choice", || {
                Ok("computed again".into())
            })?;
            Ok(Value::from(found))
        }
        fn report(&self, _: &Settings, _: &[Stored], _: &mut Vec<PathBuf>) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_unit_that_needs_a_running_unit_waits_for_its_rows() {
        static JOB: SearchAndRuns = SearchAndRuns;
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings::at(Scale::Default);
        let units = JOB
            .units(&settings)
            .unwrap()
            .into_iter()
            .map(|u| (&JOB as &'static dyn Job<()>, u))
            .collect();
        // Two workers: one takes the search, the other run-1 at once, while the search runs.
        let summary = run_listed(&settings, units, (0, 1), dir.path(), &|_| {}, 2).unwrap();
        assert_eq!(summary.ran.len(), 3);
        for run in ["run-1", "run-2"] {
            let stored = load(dir.path(), &JOB, run, &fingerprint(&JOB, &settings).unwrap())
                .unwrap()
                .unwrap();
            // The search's rows, not a second computation of them.
            assert_eq!(stored.rows, Value::from("searched"), "{run}");
            // Its own wall time leaves out the wait (up to the search's 1 s): reading a stored
            // unit takes milliseconds.
            assert!(stored.seconds < 0.5, "{run}: {} s", stored.seconds);
        }
    }

    /// A search that takes a second, a run that reads it (and says so, `Job::reads`), and
    /// another unit listed after the run, which reports whether the search was still running
    /// when it started.
    struct SearchRunAndOther;

    static SEARCH_ENDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    impl Job<()> for SearchRunAndOther {
        fn name(&self) -> &'static str {
            "search-run-and-other"
        }
        fn about(&self) -> &'static str {
            "a search, its reader, and a unit that reads nothing"
        }
        fn protocol(&self, _: &Settings) -> Result<Value> {
            Ok(Value::Null)
        }
        fn units(&self, _: &Settings) -> Result<Vec<String>> {
            Ok(["choice", "run", "other"].map(String::from).to_vec())
        }
        fn run_unit(&self, settings: &Settings, unit: &str, staging: &Path) -> Result<Value> {
            use std::sync::atomic::Ordering::SeqCst;
            Ok(match unit {
                "choice" => {
                    std::thread::sleep(std::time::Duration::from_millis(1000));
                    SEARCH_ENDED.store(true, SeqCst);
                    Value::from("searched")
                }
                "run" => Value::from(stored_beside_or::<String, ()>(
                    self,
                    settings,
                    staging,
                    "choice",
                    || Ok("computed again".into()),
                )?),
                _ => Value::from(SEARCH_ENDED.load(SeqCst)),
            })
        }
        fn report(&self, _: &Settings, _: &[Stored], _: &mut Vec<PathBuf>) -> Result<()> {
            Ok(())
        }
        fn reads(&self, unit: &str) -> Reads {
            Reads {
                ignores: Vec::new(),
                searches: if unit == "run" {
                    vec![("search", "choice".into())]
                } else {
                    Vec::new()
                },
            }
        }
    }

    #[test]
    fn a_worker_takes_a_ready_unit_before_a_reader_of_a_running_search() {
        static JOB: SearchRunAndOther = SearchRunAndOther;
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings::at(Scale::Default);
        let units = ["choice", "run", "other"]
            .map(|u| (&JOB as &'static dyn Job<()>, u.to_string()))
            .to_vec();
        // Two workers: one takes the search; taking units in order, the other would take the run
        // and idle until the search ends, and only then the third unit. Taking the ready unit
        // first, the third runs while the search does.
        let summary = run_listed(&settings, units, (0, 1), dir.path(), &|_| {}, 2).unwrap();
        assert_eq!(summary.ran.len(), 3);
        let rows = |unit| {
            load(dir.path(), &JOB, unit, &fingerprint(&JOB, &settings).unwrap())
                .unwrap()
                .unwrap()
                .rows
        };
        assert_eq!(rows("other"), Value::from(false));
        // The run still reads the search's rows, not a second computation of them.
        assert_eq!(rows("run"), Value::from("searched"));
    }

    #[test]
    fn with_stages_no_slice_recomputes_a_choice_another_slice_holds() {
        static JOB: SearchAndRuns = SearchAndRuns;
        let settings = Settings::at(Scale::Default);
        let jobs: Vec<&'static dyn Job<()>> = vec![&JOB];
        let units = |stage| {
            let selection = Selection {
                only: None,
                units: Vec::new(),
                stage,
            };
            all_units(&jobs, &selection, &settings).unwrap()
        };
        let rows = |dir: &Path, unit: &str| {
            load(dir, &JOB, unit, &fingerprint(&JOB, &settings).unwrap())
                .unwrap()
                .unwrap()
                .rows
        };
        // The stages split the units: the choice, then the runs.
        let names = |stage| units(stage).into_iter().map(|u| u.1).collect::<Vec<_>>();
        assert_eq!(names(Some(Stage::Choices)), ["choice"]);
        assert_eq!(names(Some(Stage::Runs)), ["run-1", "run-2"]);
        // Two slices without stages: slice 1 holds run-1 (unit 1 of 3), the choice is slice 0's;
        // run first, slice 1 computes the choice again.
        let dir = tempfile::tempdir().unwrap();
        run_listed(&settings, units(None), (1, 2), dir.path(), &|_| {}, 1).unwrap();
        assert_eq!(rows(dir.path(), "run-1"), Value::from("computed again"));
        // With stages: both slices of the choices, then both slices of the runs, each run
        // reads the stored choice.
        let dir = tempfile::tempdir().unwrap();
        for stage in [Stage::Choices, Stage::Runs] {
            for k in [1, 0] {
                run_listed(&settings, units(Some(stage)), (k, 2), dir.path(), &|_| {}, 1).unwrap();
            }
        }
        for run in ["run-1", "run-2"] {
            assert_eq!(rows(dir.path(), run), Value::from("searched"), "{run}");
        }
    }
}
