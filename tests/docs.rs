//! The documentation a user reads first: the README is a front door of at most 200 lines, and
//! every relative link in it and in `docs/` points at a file that exists.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The targets of the Markdown links `[text](target)` in `text` that are not web addresses or
/// anchors within the page, without their `#anchor` part.
fn relative_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    for (i, _) in text.match_indices("](") {
        let rest = &text[i + 2..];
        let Some(end) = rest.find(')') else { continue };
        let target = &rest[..end];
        if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
            continue;
        }
        let path = target.split('#').next().unwrap_or(target);
        if !path.is_empty() && !path.contains("{{") {
            links.push(path.to_string());
        }
    }
    links
}

fn broken_links(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let dir = file.parent().unwrap();
    relative_links(&text)
        .into_iter()
        .filter(|link| !dir.join(link).exists())
        .map(|link| format!("{}: {link}", file.display()))
        .collect()
}

#[test]
fn the_link_reader_finds_relative_links_and_skips_the_rest() {
    let text = "see [a](docs/A.md#x), [web](https://example.org), [top](#top) and [b](../b.rs)";
    assert_eq!(relative_links(text), vec!["docs/A.md", "../b.rs"]);
}

#[test]
fn the_readme_is_at_most_200_lines() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 200,
        "README.md has {lines} lines; the manual belongs in docs/"
    );
}

#[test]
fn every_relative_link_of_the_readme_and_docs_resolves() {
    let mut files = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let broken: Vec<String> = files.iter().flat_map(|f| broken_links(f)).collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
