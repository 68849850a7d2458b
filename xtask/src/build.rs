//! Building the kernel object and the CLI that embeds it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{cmd::run, toolchain};

/// The kernel crate's target.
const BPF_TARGET: &str = "bpfel-unknown-none";

/// The two builds of the kernel program, both embedded into the CLI.
pub struct KernelObjects {
    /// With user stack capture (the default).
    pub stacks: PathBuf,
    /// Without: no stack map at all (`probe --no-stacks`).
    pub no_stacks: PathBuf,
}

/// Paths of what a build produced.
pub struct Built {
    pub objects: KernelObjects,
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

/// Builds both kernel objects, installing their toolchain when needed.
pub fn kernel_objects() -> Result<KernelObjects> {
    let compiler = toolchain::ensure()?;
    eprintln!(
        "xtask: building the kernel program with {}",
        compiler.description
    );
    Ok(KernelObjects {
        stacks: kernel_object(&compiler, "stacks", &[])?,
        no_stacks: kernel_object(&compiler, "no-stacks", &["--no-default-features"])?,
    })
}

/// Runs clippy on the kernel crate, for its own target (host clippy leaves it out), with the
/// workspace's lints; says so when the compiler has no clippy.
pub fn lint_kernel() -> Result<()> {
    let compiler = toolchain::ensure()?;
    if !compiler.has_clippy {
        eprintln!(
            "xtask: {} has no clippy: the kernel crate is not linted",
            compiler.description
        );
        return Ok(());
    }
    run(kernel_cargo(&compiler, "clippy", "clippy").args(["--", "-D", "warnings"]))
        .context("clippy found problems in the kernel crate")
}

fn kernel_object(
    compiler: &toolchain::EbpfCompiler,
    variant: &str,
    features: &[&str],
) -> Result<PathBuf> {
    run(kernel_cargo(compiler, "build", variant).args(features))
        .with_context(|| format!("cannot build the kernel program ({variant})"))?;
    Ok(kernel_target_dir(variant)
        .join(BPF_TARGET)
        .join("release")
        .join("probe"))
}

fn kernel_target_dir(variant: &str) -> PathBuf {
    workspace_root().join("target").join("ebpf").join(variant)
}

/// `cargo SUBCOMMAND` for the kernel crate, in a target directory of its own per `variant`.
fn kernel_cargo(compiler: &toolchain::EbpfCompiler, subcommand: &str, variant: &str) -> Command {
    // What aya-build passes: BTF for the kernel, debug info for BTF, and the arch cfg that
    // aya-ebpf's helpers expect.
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    let mut command = compiler.cargo();
    command
        .current_dir(workspace_root())
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .args([
            subcommand,
            "--package",
            "probe-ebpf",
            "--bins",
            "--release",
            "--target",
            BPF_TARGET,
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(kernel_target_dir(variant));
    command
}

/// A host `cargo` command in the workspace, with the kernel objects to embed.
pub fn host_cargo(objects: &KernelObjects) -> Command {
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(workspace_root())
        .env("PROBE_EBPF_OBJECT", &objects.stacks)
        .env("PROBE_EBPF_OBJECT_NO_STACKS", &objects.no_stacks);
    command
}

/// Builds everything: the kernel objects, then the release CLI that embeds them.
pub fn all() -> Result<Built> {
    let objects = kernel_objects()?;
    run(host_cargo(&objects).args(["build", "--release", "--package", "probe-user"]))
        .context("cannot build the probe CLI")?;
    Ok(Built {
        objects,
        probe: workspace_root()
            .join("target")
            .join("release")
            .join("probe"),
    })
}
