//! The crate's layering, read from its sources. The sources sit on five floors, one folder each:
//! `core` (problems, solvers, estimators, references, engine), `run` (registry, sweeps,
//! meta-training, statistics, experiments as units and their validation searches), `report` (plots, the write-up's template), `experiments` (the
//! figure jobs and the write-up) and `cli`. No module imports one on a floor above its own, and
//! no module imports a module that (directly or through others) imports it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The floors, bottom first.
const FLOORS: [&str; 5] = ["core", "run", "report", "experiments", "cli"];

/// Folders whose every file is one module of its own (the crate re-exports them by name).
const SPLIT_FLOORS: [&str; 2] = ["core", "run"];

/// `crate::name` paths in `text`, including the names of `crate::{a, b::c}` groups; a path
/// through a split floor (`crate::core::linalg`) names the module inside it.
fn crate_references(text: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let name = |path: &str| -> String {
        let first = ident(path);
        match path[first.len()..].strip_prefix("::") {
            Some(rest) if SPLIT_FLOORS.contains(&first.as_str()) => ident(rest),
            _ => first,
        }
    };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let n = name(item.trim());
                if !n.is_empty() {
                    refs.insert(n);
                }
            }
        } else {
            refs.insert(name(rest));
        }
    }
    refs
}

/// A source file's module and floor: `src/core/estimator/mod.rs` is `estimator` on `core`,
/// `src/experiments/bandit.rs` is `experiments` on `experiments`; `None` for the crate root.
fn module_of(src: &Path, file: &Path) -> Option<(String, &'static str)> {
    let parts: Vec<String> = file
        .strip_prefix(src)
        .unwrap()
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    let floor = FLOORS.iter().find(|f| **f == parts[0])?;
    if SPLIT_FLOORS.contains(floor) {
        (parts[1] != "mod").then(|| (parts[1].clone(), *floor))
    } else {
        Some((parts[0].clone(), *floor))
    }
}

/// The modules, each with its floor and the modules it references.
fn modules() -> BTreeMap<String, (&'static str, BTreeSet<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut modules: BTreeMap<String, (&'static str, BTreeSet<String>)> = BTreeMap::new();
    for f in &files {
        if let Some((module, floor)) = module_of(&src, f) {
            modules.entry(module).or_insert((floor, BTreeSet::new()));
        }
    }
    for f in &files {
        let Some((from, _)) = module_of(&src, f) else {
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for to in crate_references(&text) {
            if to != from && modules.contains_key(&to) {
                modules.get_mut(&from).unwrap().1.insert(to);
            }
        }
    }
    modules
}

/// The graph of modules: module -> modules it references.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    modules().into_iter().map(|(m, (_, deps))| (m, deps)).collect()
}

/// Every module reachable from `start`.
fn reachable(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![start.to_string()];
    while let Some(m) = stack.pop() {
        for next in &graph[&m] {
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    seen
}

#[test]
fn the_reference_parser_sees_groups_and_paths() {
    let refs = crate_references(
        "use crate::{error::Result, linalg};\nlet x = crate::rng::seeded(1);\nuse crate::core::oracle::Oracle;\nuse crate::report::plot;",
    );
    assert_eq!(
        refs,
        ["error", "linalg", "oracle", "report", "rng"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let graph = module_graph();
    assert!(
        graph.contains_key("estimator") && graph.contains_key("problem"),
        "{graph:?}"
    );
    let cycles: Vec<String> = graph
        .keys()
        .filter(|m| reachable(&graph, m).contains(*m))
        .map(|m| {
            let back: Vec<&String> = graph[m]
                .iter()
                .filter(|n| reachable(&graph, n).contains(m))
                .collect();
            format!("{m} -> {back:?} -> {m}")
        })
        .collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

#[test]
fn no_import_runs_up_the_floors() {
    let modules = &modules();
    let floor = |m: &str| FLOORS.iter().position(|f| *f == modules[m].0).unwrap();
    // Every floor holds something, and the modules the crate is known by sit where they belong.
    for (module, expected) in [
        ("estimator", "core"),
        ("problem", "core"),
        ("registry", "run"),
        ("executor", "run"),
        ("report", "report"),
        ("experiments", "experiments"),
        ("cli", "cli"),
    ] {
        assert_eq!(modules[module].0, expected, "{module}");
    }
    let upward: Vec<String> = modules
        .iter()
        .flat_map(|(m, (f, deps))| {
            deps.iter()
                .filter(|d| floor(d) > floor(m))
                .map(move |d| format!("{m} ({f}) imports {d} ({})", modules[d.as_str()].0))
        })
        .collect();
    assert!(upward.is_empty(), "imports up the floors: {upward:#?}");
}

#[test]
fn the_ground_truth_does_not_import_an_estimator() {
    // The exact reference must not depend on what it is the reference for.
    let graph = module_graph();
    assert!(
        !reachable(&graph, "ground_truth").contains("estimator"),
        "{:?}",
        graph["ground_truth"]
    );
}
