//! A job's chain of validation searches (docs/PROTOCOL.md). Each search chooses one setting of a
//! subject (a method in one setting of the job, with the protocol it runs) on validation data, in
//! order, at the choices of the searches before it; the subject's runs take every choice. Each
//! search of each subject is a unit of its own ([`crate::units`]), so that a cluster runs them
//! apart, and a unit that finds another's stored beside it reads its choice instead of searching
//! again. A job says what its searches are ([`Chain`]); the bookkeeping lives here once.

// The crate-internal helpers here serve the experiments, which only the `figures` feature builds.
#![cfg_attr(not(feature = "figures"), allow(dead_code))]

use crate::choice::Search;
use crate::error::Result;
use crate::units::{Job, Reads, Settings};

/// A job's searches, in the order they run.
pub(crate) trait Chain {
    /// What one search of the chain chooses (`beta`, the outer step size, ...).
    type Choice: Copy + PartialEq + 'static;
    /// What a search or a run starts from; each search's choice changes it ([`Chain::apply`]).
    type Subject: Clone;
    /// The choices, in the order their searches run.
    fn choices(&self) -> &'static [Self::Choice];
    /// The protocol key of the choice's search: of a subject's units, only those that take the
    /// choice read it.
    fn key(&self, choice: Self::Choice) -> &'static str;
    /// The unit of the choice's search for `subject`, where there is one (the protocol has the
    /// search and the subject takes the setting). Several subjects may share one unit; its
    /// first subject's earlier choices are the ones it reads.
    fn unit(&self, choice: Self::Choice, subject: &Self::Subject) -> Option<String>;
    /// Runs the choice's search for `subject`, as the choices before it set it.
    fn search(
        &self,
        settings: &Settings,
        choice: Self::Choice,
        subject: &Self::Subject,
    ) -> Result<Option<Search>>;
    /// `subject` at `value` of the choice.
    fn apply(&self, choice: Self::Choice, subject: Self::Subject, value: f64) -> Self::Subject;
    /// `subject` with what its searches take from outside the chain (a choice of another kind,
    /// which a unit of its own stores), read beside `staging` or made here; by default, as it is.
    fn prepared(
        &self,
        _settings: &Settings,
        _staging: &std::path::Path,
        subject: Self::Subject,
    ) -> Result<Self::Subject> {
        Ok(subject)
    }
}

/// Every search unit of `subjects`, in the order they run (choice by choice, then subject by
/// subject), each once: (the choice's index, the first subject that has it, unit).
pub(crate) fn search_units<C: Chain>(c: &C, subjects: &[C::Subject]) -> Vec<(usize, C::Subject, String)> {
    let mut out: Vec<(usize, C::Subject, String)> = Vec::new();
    for (k, &choice) in c.choices().iter().enumerate() {
        for s in subjects {
            if let Some(unit) = c.unit(choice, s).filter(|u| !out.iter().any(|o| o.2 == *u)) {
                out.push((k, s.clone(), unit));
            }
        }
    }
    out
}

/// The searches of `choices` among the stored `units` (a report of part of a job has some), in
/// unit order.
pub(crate) fn stored<C: Chain>(
    c: &C,
    units: &[crate::units::Stored],
    subjects: &[C::Subject],
    choices: &[C::Choice],
) -> Result<Vec<Search>> {
    let names = search_units(c, subjects)
        .into_iter()
        .filter(|u| choices.contains(&c.choices()[u.0]))
        .map(|u| u.2);
    crate::choice::stored(units, names)
}

/// The stored searches of each group of choices (a report of part of a job has some), each group
/// written as the CSV `(file, first column)` of `out` names ([`crate::choice::write`]; none where
/// the group has no search): the groups' searches, in the groups' order.
pub(crate) fn write_stored<C: Chain, const N: usize>(
    c: &C,
    units: &[crate::units::Stored],
    subjects: &[C::Subject],
    out: &std::path::Path,
    groups: [(&str, &str, &[C::Choice]); N],
    files: &mut Vec<std::path::PathBuf>,
) -> Result<[Vec<Search>; N]> {
    let mut written = Vec::new();
    for (file, column, choices) in groups {
        let searches = stored(c, units, subjects, choices)?;
        crate::choice::write(&out.join(file), column, &searches, files)?;
        written.push(searches);
    }
    Ok(written
        .try_into()
        .unwrap_or_else(|_| unreachable!("one group each")))
}

/// `subject` as the first `upto` choices set it, and the value each of them chose (`None` where it
/// does not search for the subject): each choice is its unit's, stored beside `staging`, or,
/// where that unit is not there (units have no order), its search run here.
pub(crate) fn settle<C: Chain, S>(
    c: &C,
    job: &dyn Job<S>,
    settings: &Settings,
    staging: &std::path::Path,
    upto: usize,
    subject: C::Subject,
) -> Result<(C::Subject, Vec<Option<f64>>)> {
    let mut subject = c.prepared(settings, staging, subject)?;
    let mut chosen = Vec::new();
    for &choice in &c.choices()[..upto] {
        let value = match c.unit(choice, &subject) {
            Some(unit) => crate::choice::chosen_value(job, settings, staging, &unit, || {
                c.search(settings, choice, &subject)
            })?,
            None => None,
        };
        if let Some(v) = value {
            subject = c.apply(choice, subject, v);
        }
        chosen.push(value);
    }
    Ok((subject, chosen))
}

/// The value one choice's search chose for `subject` (`None` where it has no such search): its
/// stored unit's, else searched here at the choices before it ([`settle`]). Where the unit is
/// stored, the earlier choices are not read: for a unit that takes one choice of another subject's
/// (a matched baseline's step size) and none of its earlier ones.
pub(crate) fn chosen<C: Chain, S>(
    c: &C,
    job: &dyn Job<S>,
    settings: &Settings,
    staging: &std::path::Path,
    subject: C::Subject,
    choice: C::Choice,
) -> Result<Option<f64>> {
    let Some(unit) = c.unit(choice, &subject) else {
        return Ok(None);
    };
    let k = c
        .choices()
        .iter()
        .position(|x| *x == choice)
        .expect("a choice of the chain");
    crate::choice::chosen_value(job, settings, staging, &unit, || {
        let (subject, _) = settle(c, job, settings, staging, k, subject)?;
        c.search(settings, choice, &subject)
    })
}

/// The rows of the search unit `unit`, where it is one of `subjects`' ([`search_units`]): its
/// subject as the choices before it set it ([`settle`]), searched.
pub(crate) fn run_search_unit<C: Chain, S>(
    c: &C,
    job: &dyn Job<S>,
    settings: &Settings,
    staging: &std::path::Path,
    unit: &str,
    subjects: &[C::Subject],
) -> Result<Option<serde_json::Value>> {
    let Some((k, subject, _)) = search_units(c, subjects).into_iter().find(|u| u.2 == unit) else {
        return Ok(None);
    };
    let (subject, _) = settle(c, job, settings, staging, k, subject)?;
    crate::units::encode(&c.search(settings, c.choices()[k], &subject)?).map(Some)
}

/// An error unless each value a run of `subject` took (`taken`, by choice) is its search's
/// choice, where that search's unit is among `units` (a report of units from one run).
pub(crate) fn check_taken<C: Chain>(
    c: &C,
    units: &[crate::units::Stored],
    subject: &C::Subject,
    taken: &[Option<f64>],
    unit: &str,
) -> Result<()> {
    for (&choice, &value) in c.choices().iter().zip(taken) {
        if let Some(name) = c.unit(choice, subject) {
            let search = crate::choice::stored(units, [name])?.pop();
            crate::choice::check_agrees(search.as_ref(), unit, value)?;
        }
    }
    Ok(())
}

/// What a unit reads of the chain: a search unit the searches of its own subject up to its own, a
/// run unit of `run_subject` every search of that subject; a unit of neither kind reads them all.
/// The keys of the searches it does not read are the ones it ignores.
pub(crate) fn reads<C: Chain>(
    c: &C,
    unit: &str,
    subjects: &[C::Subject],
    run_subject: Option<&C::Subject>,
) -> Reads {
    let units = search_units(c, subjects);
    let (upto, subject) = match units.iter().find(|u| u.2 == unit) {
        Some((k, s, _)) => (k + 1, s.clone()),
        None => match run_subject {
            Some(s) => (c.choices().len(), s.clone()),
            None => {
                return Reads {
                    ignores: Vec::new(),
                    searches: units
                        .into_iter()
                        .map(|(k, _, u)| (c.key(c.choices()[k]), u))
                        .collect(),
                };
            }
        },
    };
    let searches: Vec<(&'static str, String)> = c.choices()[..upto]
        .iter()
        .filter_map(|&choice| c.unit(choice, &subject).map(|u| (c.key(choice), u)))
        .collect();
    Reads {
        ignores: all_keys(c)
            .into_iter()
            .filter(|k| !searches.iter().any(|(read, _)| read == k))
            .collect(),
        searches,
    }
}

/// The keys of every search of the chain, each once, in order.
pub(crate) fn all_keys<C: Chain>(c: &C) -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = Vec::new();
    for &choice in c.choices() {
        if !keys.contains(&c.key(choice)) {
            keys.push(c.key(choice));
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::choice::Search;
    use crate::units::{Scale, Stored};
    use std::path::{Path, PathBuf};

    /// A toy chain: subjects `x` and `y` each with a running value; search `A` per subject, `B`
    /// one unit for both, `C` for `x` only. Each search chooses the subject's value plus its own
    /// weight (1, 10, 100), and a choice sets the value: so a choice shows which earlier choices
    /// its search saw.
    struct Toy;

    #[derive(Debug, Clone, PartialEq)]
    struct Subject {
        name: &'static str,
        value: f64,
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Choice {
        A,
        B,
        C,
    }

    impl Chain for Toy {
        type Choice = Choice;
        type Subject = Subject;
        fn choices(&self) -> &'static [Choice] {
            &[Choice::A, Choice::B, Choice::C]
        }
        fn key(&self, choice: Choice) -> &'static str {
            match choice {
                Choice::A => "a_search",
                Choice::B => "b_search",
                Choice::C => "c_search",
            }
        }
        fn unit(&self, choice: Choice, s: &Subject) -> Option<String> {
            match choice {
                Choice::A => Some(format!("a-{}", s.name)),
                Choice::B => Some("b".into()),
                Choice::C => (s.name == "x").then(|| "c-x".into()),
            }
        }
        fn search(&self, _: &Settings, choice: Choice, s: &Subject) -> Result<Option<Search>> {
            let weight = [1.0, 10.0, 100.0][self.choices().iter().position(|c| *c == choice).unwrap()];
            Ok(Some(Search {
                model: s.name.into(),
                setting: self.key(choice).into(),
                chosen: s.value + weight,
                grid: Vec::new(),
                at_edge: false,
            }))
        }
        fn apply(&self, _: Choice, s: Subject, value: f64) -> Subject {
            Subject { value, ..s }
        }
    }

    /// A job with no stored units, so that every choice is searched where it is needed.
    struct Empty;

    impl Job<()> for Empty {
        fn name(&self) -> &'static str {
            "toy"
        }
        fn about(&self) -> &'static str {
            "a toy chain"
        }
        fn protocol(&self, _: &Settings) -> Result<serde_json::Value> {
            Ok(serde_json::Value::Null)
        }
        fn units(&self, _: &Settings) -> Result<Vec<String>> {
            Ok(Vec::new())
        }
        fn run_unit(&self, _: &Settings, _: &str, _: &Path) -> Result<serde_json::Value> {
            Ok(serde_json::Value::Null)
        }
        fn report(&self, _: &Settings, _: &[Stored], _: &mut Vec<PathBuf>) -> Result<()> {
            Ok(())
        }
    }

    fn subjects() -> Vec<Subject> {
        ["x", "y"].map(|name| Subject { name, value: 0.0 }).to_vec()
    }

    #[test]
    fn the_searches_run_choice_by_choice_each_at_the_choices_before_it() {
        let units: Vec<(usize, String)> = search_units(&Toy, &subjects())
            .into_iter()
            .map(|(k, _, u)| (k, u))
            .collect();
        // A for each subject, then B once (its first subject's), then C for x alone.
        assert_eq!(
            units,
            [(0, "a-x"), (0, "a-y"), (1, "b"), (2, "c-x")].map(|(k, u)| (k, u.to_string()))
        );

        let staging = std::env::temp_dir()
            .join(format!("cml-chain-{}", std::process::id()))
            .join("toy/run");
        let settings = Settings::at(Scale::Quick);
        // y: A sees 0 and chooses 1; B sees A's 1 and chooses 11; C does not search for y.
        let (y, chosen) = settle(&Toy, &Empty, &settings, &staging, 3, subjects()[1].clone()).unwrap();
        assert_eq!((y.value, chosen), (11.0, vec![Some(1.0), Some(11.0), None]));
        // x: C sees B's 11 and chooses 111; settling only the first choice stops after A.
        let (x, chosen) = settle(&Toy, &Empty, &settings, &staging, 3, subjects()[0].clone()).unwrap();
        assert_eq!(
            (x.value, chosen),
            (111.0, vec![Some(1.0), Some(11.0), Some(111.0)])
        );
        let (x, chosen) = settle(&Toy, &Empty, &settings, &staging, 1, subjects()[0].clone()).unwrap();
        assert_eq!((x.value, chosen), (1.0, vec![Some(1.0)]));

        // One choice alone: searched at the choices before it where its unit is not stored; none
        // where the subject has no such search.
        let one =
            |s: usize, c| super::chosen(&Toy, &Empty, &settings, &staging, subjects()[s].clone(), c).unwrap();
        assert_eq!(one(0, Choice::C), Some(111.0));
        assert_eq!(one(1, Choice::B), Some(11.0));
        assert_eq!(one(1, Choice::C), None);
        // A search unit's rows: its search at the choices before it (C for x: 111).
        let rows = run_search_unit(&Toy, &Empty, &settings, &staging, "c-x", &subjects())
            .unwrap()
            .unwrap();
        assert_eq!(rows["chosen"], 111.0);
        assert!(
            run_search_unit(&Toy, &Empty, &settings, &staging, "x-seed0", &subjects())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_report_refuses_a_run_whose_value_is_not_its_searchs_choice() {
        // Stored searches: A of x chose 1, C of x chose a budget of 12.5 (a run takes 13 whole
        // steps); B's unit was not given.
        let stored = |unit: &str, setting: &str, chosen: f64| Stored {
            job: "toy".into(),
            unit: unit.into(),
            fingerprint: serde_json::Value::Null,
            seconds: 0.0,
            rows: serde_json::to_value(Some(Search {
                model: "x".into(),
                setting: setting.into(),
                chosen,
                grid: Vec::new(),
                at_edge: false,
            }))
            .unwrap(),
            earlier: Vec::new(),
            staging: PathBuf::new(),
        };
        let units = [stored("a-x", "a", 1.0), stored("c-x", "nudged_steps", 12.5)];
        let x = &subjects()[0];
        let check = |taken: [Option<f64>; 3]| check_taken(&Toy, &units, x, &taken, "toy unit x-seed0");
        check([Some(1.0), Some(5.0), Some(13.0)]).unwrap();
        // A value a run did not take is not checked.
        check([None, None, None]).unwrap();
        let err = check([Some(2.0), None, None]).unwrap_err().to_string();
        assert!(
            err.contains("toy unit x-seed0") && err.contains("a 2") && err.contains("a 1"),
            "{err}"
        );
        let err = check([None, None, Some(12.0)]).unwrap_err().to_string();
        assert!(err.contains("nudged_steps 13"), "{err}");
        // y has no C search, so its 12 steps are not C's to check.
        check_taken(&Toy, &units, &subjects()[1], &[Some(1.0), None, Some(12.0)], "y").unwrap();

        // The report's CSVs: a group of A and C holds both stored searches, in unit order (a-x
        // before c-x); B's group has none stored, so it is empty and writes no file.
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        let [ac, b] = write_stored(
            &Toy,
            &units,
            &subjects(),
            dir.path(),
            [
                ("ac.csv", "run", &[Choice::C, Choice::A]),
                ("b.csv", "run", &[Choice::B]),
            ],
            &mut files,
        )
        .unwrap();
        let chosen: Vec<f64> = ac.iter().map(|x| x.chosen).collect();
        assert_eq!((chosen, b.len()), (vec![1.0, 12.5], 0));
        assert_eq!(files, [dir.path().join("ac.csv")]);
        assert!(!dir.path().join("b.csv").exists());
    }

    #[test]
    fn a_unit_reads_the_searches_it_runs_after_and_ignores_the_other_keys() {
        let s = subjects();
        let reads = |unit: &str, run: Option<&Subject>| {
            let r = reads(&Toy, unit, &s, run);
            let searches: Vec<String> = r.searches.iter().map(|(k, u)| format!("{k}:{u}")).collect();
            (r.ignores, searches)
        };
        // A search reads its own and the earlier searches of its subject (B's unit is shared, its
        // first subject, x, the one whose earlier choices it reads).
        assert_eq!(
            reads("a-y", None),
            (vec!["b_search", "c_search"], vec!["a_search:a-y".to_string()])
        );
        assert_eq!(
            reads("b", None),
            (
                vec!["c_search"],
                vec!["a_search:a-x".to_string(), "b_search:b".into()]
            )
        );
        assert_eq!(reads("c-x", None).0, Vec::<&str>::new());
        assert_eq!(
            reads("c-x", None).1,
            ["a_search:a-x", "b_search:b", "c_search:c-x"]
        );
        // A run reads every search of its subject (C is x's alone).
        assert_eq!(
            reads("y-seed0", Some(&s[1])),
            (
                vec!["c_search"],
                vec!["a_search:a-y".to_string(), "b_search:b".into()]
            )
        );
        assert!(reads("x-seed0", Some(&s[0])).0.is_empty());
        // A unit of neither kind ignores nothing and reads every search.
        assert_eq!(
            reads("other", None),
            (
                vec![],
                vec!["a_search:a-x", "a_search:a-y", "b_search:b", "c_search:c-x"]
                    .into_iter()
                    .map(String::from)
                    .collect()
            )
        );
    }
}
