//! The trials are listed by hand in `main.rs`: a test function left out of that list would
//! never run, silently. This check reads the test modules' sources and fails the run for any
//! test function (`pub fn NAME() -> TestResult`) the list does not name.

use std::{fs, path::Path};

/// The test functions defined in the modules beside `main.rs` and missing from `listed`, as
/// `module::name`.
pub fn unlisted(listed: &[&str]) -> Result<Vec<String>, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration");
    let entries = fs::read_dir(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let mut unlisted = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(module) = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .filter(|_| path.extension().is_some_and(|ext| ext == "rs"))
            .filter(|&stem| stem != "main")
        else {
            continue;
        };
        let source =
            fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))?;
        unlisted.extend(
            test_functions(&source)
                .filter(|name| !listed.contains(name))
                .map(|name| format!("{module}::{name}")),
        );
    }
    unlisted.sort();
    Ok(unlisted)
}

/// The names of the test functions `source` defines.
fn test_functions(source: &str) -> impl Iterator<Item = &str> {
    source.lines().filter_map(|line| {
        let signature = line.strip_prefix("pub fn ")?;
        let (name, rest) = signature.split_once('(')?;
        rest.contains("-> TestResult").then_some(name)
    })
}
