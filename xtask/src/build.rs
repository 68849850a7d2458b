//! Building the kernel object and the CLI that embeds it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{cmd::run, toolchain};

/// The kernel crate's target.
const BPF_TARGET: &str = "bpfel-unknown-none";

/// Paths of what a build produced.
pub struct Built {
    /// The kernel object, embedded into the CLI.
    pub object: PathBuf,
    /// The `probe` binary.
    pub probe: PathBuf,
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

/// Builds the kernel object, installing its toolchain when needed.
pub fn kernel_object() -> Result<PathBuf> {
    let compiler = toolchain::ensure()?;
    let root = workspace_root();
    let target_dir = root.join("target").join("ebpf");
    eprintln!(
        "xtask: building the kernel program with {}",
        compiler.description
    );
    // What aya-build passes: BTF for the kernel, debug info for BTF, and the arch cfg that
    // aya-ebpf's helpers expect.
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    run(compiler
        .cargo()
        .current_dir(&root)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .args([
            "build",
            "--package",
            "probe-ebpf",
            "--bins",
            "--release",
            "--target",
            BPF_TARGET,
        ])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir))
    .context("cannot build the kernel program")?;
    Ok(target_dir.join(BPF_TARGET).join("release").join("probe"))
}

/// A host `cargo` command in the workspace, with the kernel object to embed.
pub fn host_cargo(object: &Path) -> Command {
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(workspace_root())
        .env("PROBE_EBPF_OBJECT", object);
    command
}

/// Builds everything: the kernel object, then the release CLI that embeds it.
pub fn all() -> Result<Built> {
    let object = kernel_object()?;
    run(host_cargo(&object).args(["build", "--release", "--package", "probe-user"]))
        .context("cannot build the probe CLI")?;
    Ok(Built {
        object,
        probe: workspace_root()
            .join("target")
            .join("release")
            .join("probe"),
    })
}
