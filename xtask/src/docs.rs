//! Docs that cannot rot: every source path the README and `docs/` name must exist. A path is a
//! word with a `/` (or a lone `*.rs` file name) whose first part is a folder or file of the
//! workspace, of a crate, or of a crate's `src/` (the README names paths under
//! `probe-user/src/` without that prefix); such a word that no longer exists under any of those
//! roots fails the test.

use std::{fs, path::Path};

use crate::build::workspace_root;

/// Where a path the docs name may start.
const ROOTS: [&str; 9] = [
    "",
    "probe-user",
    "probe-user/src",
    "probe-user/tests",
    "probe-ebpf",
    "probe-ebpf/src",
    "probe-common",
    "probe-common/src",
    "xtask/src",
];

/// The words of `text` that look like relative paths.
fn path_like(text: &str) -> Vec<&str> {
    text.split(|c: char| {
        c.is_whitespace() || matches!(c, '`' | '(' | ')' | '[' | ']' | ',' | ';' | '"' | '\'')
    })
    .map(|word| word.trim_end_matches([':', '.']))
    .filter(|word| word.contains('/') || word.ends_with(".rs"))
    .filter(|word| {
        word.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'))
    })
    .filter(|word| !word.starts_with(['/', '.']) && !word.starts_with("target/"))
    .collect()
}

/// Whether `word` names something under one of the roots, if it names anything there at
/// all: `None` when its first part exists under no root (not a path of ours).
fn resolves(root: &Path, word: &str) -> Option<bool> {
    let first = word.split('/').next().unwrap_or(word);
    let candidates: Vec<_> = ROOTS
        .iter()
        .map(|sub| root.join(sub))
        .filter(|base| {
            if word.contains('/') {
                base.join(first).exists()
            } else {
                true
            }
        })
        .collect();
    if candidates.is_empty() {
        return None;
    }
    Some(candidates.iter().any(|base| base.join(word).exists()))
}

#[test]
fn every_source_path_the_docs_name_exists() {
    let root = workspace_root();
    let mut documents = vec![root.join("README.md")];
    if let Ok(entries) = fs::read_dir(root.join("docs")) {
        documents.extend(
            entries
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "md")),
        );
    }
    let mut missing = Vec::new();
    for document in &documents {
        let text = fs::read_to_string(document).expect("a document of the workspace");
        for word in path_like(&text) {
            if resolves(&root, word) == Some(false) {
                missing.push(format!("{}: {word}", document.display()));
            }
        }
    }
    missing.dedup();
    assert!(
        missing.is_empty(),
        "the docs name paths that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn paths_are_told_from_words() {
    assert_eq!(
        path_like("see `track/table.rs`, [x](deploy/Dockerfile) and/or /proc/PID/fd, main.rs."),
        ["track/table.rs", "deploy/Dockerfile", "and/or", "main.rs"]
    );
    let root = workspace_root();
    assert_eq!(resolves(&root, "track/table.rs"), Some(true));
    assert_eq!(resolves(&root, "track/no_such_file.rs"), Some(false));
    assert_eq!(resolves(&root, "and/or"), None);
    assert_eq!(resolves(&root, "xtask/src/vm/leak.c"), Some(true));
}
