//! `--before REV`: probe built from an earlier revision, measured in the same rounds as this
//! code, so that a change's before and after come from one run on one machine.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{build::workspace_root, cmd::run};

/// probe as built from an earlier revision.
pub(super) struct Before {
    /// The commit, abbreviated, for the report.
    pub(super) revision: String,
    /// Its `probe` binary.
    pub(super) probe: PathBuf,
}

/// Builds probe from `revision` (a commit of this repository) with that revision's own
/// `cargo xtask build`, in `target/bench/before/COMMIT` (kept, so a second bench reuses it).
pub(super) fn build(revision: &str) -> Result<Before> {
    let commit = commit_of(revision)?;
    let source = workspace_root()
        .join("target")
        .join("bench")
        .join("before")
        .join(&commit);
    let probe = source.join("target").join("release").join("probe");
    if !probe.exists() {
        extract(&commit, &source)?;
        eprintln!("xtask: building probe at {revision} ({commit}) for --before");
        let mut command = Command::new(env!("CARGO"));
        command
            .args(["xtask", "build"])
            .current_dir(&source)
            // Its --version then says `unknown`, not this checkout's revision.
            .env(
                "GIT_CEILING_DIRECTORIES",
                source.parent().unwrap_or(&source),
            );
        run(&mut command).with_context(|| format!("cannot build probe at {revision}"))?;
    }
    Ok(Before {
        revision: commit[..7].to_string(),
        probe,
    })
}

/// The full commit id `revision` names; an error says what to give instead.
fn commit_of(revision: &str) -> Result<String> {
    // `--end-of-options`: a revision that starts with `-` is a revision, not an option.
    let output = Command::new("git")
        .args(["rev-parse", "--verify", "--end-of-options"])
        .arg(format!("{revision}^{{commit}}"))
        .current_dir(workspace_root())
        .stderr(Stdio::null())
        .output()
        .context("cannot run git")?;
    let commit = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || commit.is_empty() {
        bail!(
            "--before {revision:?} names no commit here: give a commit, tag or branch of this repository"
        );
    }
    Ok(commit)
}

/// Writes the tree of `commit` to `into` (afresh).
fn extract(commit: &str, into: &Path) -> Result<()> {
    if into.exists() {
        fs::remove_dir_all(into).with_context(|| format!("cannot clear {}", into.display()))?;
    }
    fs::create_dir_all(into).with_context(|| format!("cannot create {}", into.display()))?;
    let mut archive = Command::new("git")
        .args(["archive", "--format=tar", commit])
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run git archive")?;
    let tar = archive
        .stdout
        .take()
        .context("no output from git archive")?;
    let status = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(into)
        .stdin(tar)
        .status()
        .context("cannot run tar")?;
    if !archive.wait()?.success() || !status.success() {
        bail!("cannot extract {commit} into {}", into.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_is_resolved_to_its_commit() {
        let head = commit_of("HEAD").unwrap();
        assert_eq!(head.len(), 40, "{head}");
        assert!(head.chars().all(|c| c.is_ascii_hexdigit()), "{head}");
        assert_eq!(commit_of(&head[..12]).unwrap(), head);
    }

    #[test]
    fn what_names_no_commit_is_refused_with_what_to_give() {
        for revision in ["no-such-revision", "--help", "HEAD:Cargo.toml", ""] {
            let error = commit_of(revision).unwrap_err().to_string();
            assert!(error.contains("names no commit"), "{revision:?}: {error}");
        }
    }
}
