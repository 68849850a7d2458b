//! `cargo xtask dist`: the release binary with its shell completions and man page, generated from
//! the command-line definition, in `target/dist/`.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::{build, cmd};

/// The shells clap_complete writes completions for, with their conventional file names.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "completions/probe.bash"),
    ("zsh", "completions/_probe"),
    ("fish", "completions/probe.fish"),
];

/// Builds probe and lays out `target/dist/`; returns the directory.
pub fn dist() -> Result<PathBuf> {
    let built = build::all()?;
    let dir = build::workspace_root().join("target").join("dist");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    fs::create_dir_all(dir.join("completions"))
        .and_then(|()| fs::create_dir_all(dir.join("man")))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    fs::copy(&built.probe, dir.join("probe")).context("cannot copy the probe binary")?;
    for (shell, file) in COMPLETIONS {
        let script =
            cmd::output_of(Command::new(&built.probe).args(["--generate-completions", shell]))?;
        fs::write(dir.join(file), script).with_context(|| format!("cannot write {file}"))?;
    }
    let man = cmd::output_of(Command::new(&built.probe).arg("--generate-man"))?;
    fs::write(dir.join("man/probe.1"), man).context("cannot write the man page")?;
    Ok(dir)
}
