//! A job's protocol changed by the user (`cml figures --protocol JOB=FILE`, docs/EXPERIMENTS.md):
//! the file's keys replace the same keys of the scale's protocol, nested tables key by key.
//! Only keys the protocol has, with values of the same kind, are taken, and the changed protocol
//! is checked (counts at least 1, step sizes positive, grids increasing) before any unit runs.
//! The changed protocol is the job's fingerprint, so units stored under another one are refused.

use crate::error::{CmlError, Result};
use serde_json::Value;

/// A protocol that can say whether its values make sense.
pub trait Checked: serde::Serialize + serde::de::DeserializeOwned {
    fn check(&self) -> Result<()>;
    /// Keys the protocol leaves out where they hold their default, so that units stored before
    /// the key existed read the same (`table.key`, and that default): a change may still set them.
    fn left_out_at_default() -> Vec<(String, Value)> {
        Vec::new()
    }
}

/// A job's protocol as shipped in `configs/` and compiled in: `text`, the file at `path`, parsed
/// and checked. That file is the only place its values are written; `tests/figures.rs` checks that
/// each shipped file holds every key of its protocol and no other, in canonical form.
#[cfg(feature = "figures")]
pub fn shipped<P: Checked>(path: &str, text: &str) -> Result<P> {
    let p: P =
        toml::from_str(text).map_err(|e| CmlError::invalid(path, "the shipped protocol", e.to_string()))?;
    p.check()?;
    Ok(p)
}

/// `base` (the scale's protocol of `job`) with `settings`' changes for `job` merged in and
/// checked; `base` unchanged where there are none.
pub fn configured<P: Checked>(job: &str, base: P, settings: &super::units::Settings) -> Result<P> {
    let Some((_, changes)) = settings.protocols.iter().find(|(j, _)| j == job) else {
        return Ok(base);
    };
    let mut full = super::units::encode(&base)?;
    for (path, default) in P::left_out_at_default() {
        let (table, key) = path.split_once('.').unwrap_or(("", &path));
        let at = if table.is_empty() {
            Some(&mut full)
        } else {
            full.get_mut(table)
        };
        if let Some(Value::Object(map)) = at {
            map.entry(key.to_string()).or_insert(default);
        }
    }
    let merged = merge(&format!("the {job} protocol"), full, changes)?;
    let p: P = serde_json::from_value(merged)
        .map_err(|e| CmlError::invalid(format!("the {job} protocol"), "the changed values", e.to_string()))?;
    p.check()?;
    Ok(p)
}

/// `base` with `changes` merged in: each key of `changes` must be a key of `base` (at that
/// depth), holding a value of the same kind (a table merges key by key; a whole number stays
/// whole and not negative; an array replaces the base's item by item, each item of the kind of
/// the base's item at its place, or of its first past its end; tables in an array merge).
pub fn merge(path: &str, mut base: Value, changes: &Value) -> Result<Value> {
    let Value::Object(changes) = changes else {
        return Err(CmlError::invalid(path, kind(changes), "a table of keys"));
    };
    let Value::Object(map) = &mut base else {
        return Err(CmlError::invalid(path, "a table", kind(&base)));
    };
    for (key, change) in changes {
        let at = format!("{path}: {key}");
        let Some(old) = map.get_mut(key) else {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
            return Err(CmlError::UnknownName {
                kind: format!("key of {path}"),
                name: key.clone(),
                allowed: keys.join(", "),
            });
        };
        *old = merged_value(&at, old, change)?;
    }
    Ok(base)
}

fn merged_value(at: &str, old: &Value, change: &Value) -> Result<Value> {
    match old {
        Value::Object(_) => merge(at, old.clone(), change),
        Value::Array(items) => {
            let Value::Array(new) = change else {
                return Err(CmlError::invalid(at, kind(change), "an array"));
            };
            // Item by item (a tuple's items differ in kind); an item past the base's takes the
            // kind of the base's first, or is taken whole where that is a table.
            new.iter()
                .enumerate()
                .map(|(k, v)| match (items.get(k), items.first()) {
                    (Some(old), _) => merged_value(&format!("{at}[{k}]"), old, v),
                    (None, Some(Value::Object(_))) | (None, None) => Ok(v.clone()),
                    (None, Some(first)) => merged_value(&format!("{at}[{k}]"), first, v),
                })
                .collect()
        }
        _ if same_kind(old, change) => Ok(change.clone()),
        _ => Err(CmlError::invalid(at, change, kind(old))),
    }
}

fn same_kind(old: &Value, change: &Value) -> bool {
    match old {
        Value::Number(n) if n.is_u64() => change.is_u64(),
        Value::Number(_) => change.is_number(),
        Value::Bool(_) => change.is_boolean(),
        Value::String(_) => change.is_string(),
        Value::Null => change.is_null(),
        _ => false,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Number(n) if n.is_u64() => "a whole number, not negative",
        Value::Number(_) => "a number",
        Value::Bool(_) => "true or false",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
        Value::Null => "nothing",
    }
}

/// The checks of a protocol's values; the first that fails is the error.
pub struct Checks {
    job: &'static str,
    first: Option<CmlError>,
}

impl Checks {
    pub fn new(job: &'static str) -> Self {
        Checks { job, first: None }
    }

    fn fail(&mut self, name: &str, value: impl ToString, allowed: &str) {
        if self.first.is_none() {
            self.first = Some(CmlError::invalid(
                format!("the {} protocol: {name}", self.job),
                value,
                allowed,
            ));
        }
    }

    /// A count: at least 1.
    pub fn count(&mut self, name: &str, n: usize) -> &mut Self {
        if n == 0 {
            self.fail(name, n, "at least 1");
        }
        self
    }

    /// A step size, strength or scale: finite and positive.
    pub fn positive(&mut self, name: &str, x: f64) -> &mut Self {
        if !(x.is_finite() && x > 0.0) {
            self.fail(name, x, "a finite number above 0");
        }
        self
    }

    /// Not negative (a decay of 0 is no decay).
    pub fn non_negative(&mut self, name: &str, x: f64) -> &mut Self {
        if !(x.is_finite() && x >= 0.0) {
            self.fail(name, x, "a finite number, 0 or above");
        }
        self
    }

    /// A search grid: at least `least` values, positive (or not negative where `zero` may start
    /// it), strictly increasing (an edge choice extends a grid past its outer values).
    pub fn grid(&mut self, name: &str, values: &[f64], least: usize, zero: bool) -> &mut Self {
        let allowed = format!(
            "at least {least} finite values, {}, strictly increasing",
            if zero { "0 or above" } else { "above 0" }
        );
        let sign_ok = |x: f64| x.is_finite() && (x > 0.0 || (zero && x == 0.0));
        if values.len() < least
            || !values.iter().all(|&x| sign_ok(x))
            || !values.windows(2).all(|w| w[0] < w[1])
        {
            self.fail(name, format!("{values:?}"), &allowed);
        }
        self
    }

    /// The network's layer sizes: at least an input and an output layer, none empty.
    pub fn sizes(&mut self, name: &str, sizes: &[usize]) -> &mut Self {
        if sizes.len() < 2 || sizes.contains(&0) {
            self.fail(
                name,
                format!("{sizes:?}"),
                "at least 2 layer sizes, each at least 1",
            );
        }
        self
    }

    /// Independent seeds: at least 2, for an interval over them.
    pub fn seeds(&mut self, name: &str, n: usize) -> &mut Self {
        self.that(n >= 2, name, n, "at least 2")
    }

    /// A `beta` search named `name` where there is one: its grid, short runs and validation tasks.
    pub fn beta_search(&mut self, name: &str, search: Option<&super::choice::BetaSearchSpec>) -> &mut Self {
        if let Some(b) = search {
            self.grid(&format!("{name}.grid"), &b.grid, 2, false)
                .count(&format!("{name}.meta_steps"), b.meta_steps)
                .count(&format!("{name}.validation_tasks"), b.validation_tasks);
        }
        self
    }

    /// A search named `name` where there is one, scored on one search stream: its grid.
    pub fn rate_search(&mut self, name: &str, search: Option<&super::choice::RateSearchSpec>) -> &mut Self {
        self.streamed_search(name, search, 1)
    }

    /// A search named `name` where there is one, whose values score on `streams` search streams
    /// ([`super::choice::pooled`]): its grid, and at least one stream.
    pub fn pooled_search(&mut self, name: &str, search: Option<&super::choice::RateSearchSpec>) -> &mut Self {
        self.streamed_search(name, search, u64::MAX)
    }

    fn streamed_search(
        &mut self,
        name: &str,
        search: Option<&super::choice::RateSearchSpec>,
        most: u64,
    ) -> &mut Self {
        let Some(r) = search else {
            return self;
        };
        let allowed = if most == 1 {
            "1 (this search scores on one stream)"
        } else {
            "at least 1"
        };
        self.grid(&format!("{name}.grid"), &r.grid, 2, false).that(
            (1..=most).contains(&r.streams),
            &format!("{name}.streams"),
            r.streams,
            allowed,
        )
    }

    /// A meta-learning run's searches named `name`: the rate's grid and `beta`'s.
    pub fn run_search(&mut self, name: &str, search: Option<&super::choice::RunSearch>) -> &mut Self {
        match search {
            Some(r) => self.grid(&format!("{name}.meta_lr"), &r.meta_lr, 2, false).grid(
                &format!("{name}.beta"),
                &r.beta,
                2,
                false,
            ),
            None => self,
        }
    }

    /// A checkpoint choice named `name` where there is one: its spacing and validation tasks.
    pub fn checkpoint(&mut self, name: &str, spec: Option<&super::choice::CheckpointSpec>) -> &mut Self {
        match spec {
            Some(k) => self
                .count(&format!("{name}.every"), k.every)
                .count(&format!("{name}.validation_tasks"), k.validation_tasks),
            None => self,
        }
    }

    /// Any other condition, stated as what is allowed.
    pub fn that(&mut self, ok: bool, name: &str, value: impl ToString, allowed: &str) -> &mut Self {
        if !ok {
            self.fail(name, value, allowed);
        }
        self
    }

    pub fn done(&mut self) -> Result<()> {
        self.first.take().map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_replace_keys_table_by_table_and_refuse_unknown_keys_and_other_kinds() {
        let base =
            json!({"seeds": 5, "lr": 0.1, "grid": [0.1, 0.2], "search": {"grid": [1.0], "extensions": 1}});
        let merged = merge(
            "p",
            base.clone(),
            &json!({"seeds": 3, "search": {"extensions": 2}}),
        )
        .unwrap();
        assert_eq!(
            merged,
            json!({"seeds": 3, "lr": 0.1, "grid": [0.1, 0.2], "search": {"grid": [1.0], "extensions": 2}})
        );
        // A float may be written as a whole number; a count may not be a fraction or negative.
        assert_eq!(
            merge("p", base.clone(), &json!({"lr": 1})).unwrap()["lr"],
            json!(1)
        );
        let err = merge("p", base.clone(), &json!({"seeds": -1}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("p: seeds") && err.contains("-1") && err.contains("whole number"),
            "{err}"
        );
        let err = merge("p", base.clone(), &json!({"seeds": 2.5}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("2.5"), "{err}");
        let err = merge("p", base.clone(), &json!({"grid": [0.1, "x"]}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("p: grid") && err.contains("a number"), "{err}");
        let err = merge("p", base.clone(), &json!({"search": {"grids": [1.0]}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("grids") && err.contains("extensions, grid"), "{err}");
        let err = merge("p", base, &json!({"seed": 1})).unwrap_err().to_string();
        assert!(
            err.contains("'seed'") && err.contains("grid, lr, search, seeds"),
            "{err}"
        );
        // A tuple keeps each item's kind: a count after a name.
        let base = json!({"instances": [["quadratic", 100], ["ridge", 100]]});
        let merged = merge(
            "p",
            base.clone(),
            &json!({"instances": [["quadratic", 3], ["ridge", 4]]}),
        )
        .unwrap();
        assert_eq!(merged, json!({"instances": [["quadratic", 3], ["ridge", 4]]}));
        let err = merge("p", base, &json!({"instances": [["quadratic", "3"]]}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("p: instances[0][1]") && err.contains("whole number"),
            "{err}"
        );
        // An array of tables merges item by item; an item past the base's is taken whole.
        let base = json!({"runs": [{"name": "a", "steps": 1}, {"name": "b", "steps": 2}]});
        let merged = merge(
            "p",
            base.clone(),
            &json!({"runs": [{}, {"steps": 5}, {"name": "c"}]}),
        )
        .unwrap();
        assert_eq!(
            merged,
            json!({"runs": [{"name": "a", "steps": 1}, {"name": "b", "steps": 5}, {"name": "c"}]})
        );
        let err = merge("p", base, &json!({"runs": [{"step": 5}]}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key of p: runs[0]") && err.contains("'step'"),
            "{err}"
        );
    }

    #[test]
    fn the_first_failed_check_names_the_value_and_what_is_allowed() {
        assert!(
            Checks::new("j")
                .count("seeds", 1)
                .positive("lr", 0.1)
                .grid("grid", &[0.0, 1.0], 2, true)
                .done()
                .is_ok()
        );
        let err = Checks::new("j")
            .count("seeds", 0)
            .positive("lr", -1.0)
            .done()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("j protocol: seeds") && err.contains("at least 1"),
            "{err}"
        );
        let err = Checks::new("j")
            .grid("grid", &[0.2, 0.1], 1, false)
            .done()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[0.2, 0.1]") && err.contains("strictly increasing"),
            "{err}"
        );
        let err = Checks::new("j")
            .positive("lr", f64::NAN)
            .done()
            .unwrap_err()
            .to_string();
        assert!(err.contains("NaN") && err.contains("above 0"), "{err}");
    }
}
