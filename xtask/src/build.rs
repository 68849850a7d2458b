//! Building the kernel object and the CLI that embeds it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{
    cmd::{run, tool_exists},
    toolchain,
};

/// The kernel crate's target.
const BPF_TARGET: &str = "bpfel-unknown-none";

/// A CPU architecture probe is built for. The kernel program is built once per architecture:
/// the user registers it reads sit in a different `pt_regs` on each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// Every architecture `cargo xtask dist` builds for.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The architecture xtask runs on.
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// Rust's (and the kernel program's `bpf_target_arch`) name of it.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Debian's name of it.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The Rust target the CLI is built for (glibc, linked statically: see `static_probe`).
    pub fn target(self) -> String {
        format!("{}-unknown-linux-gnu", self.name())
    }

    /// The C compiler (and linker) for this architecture, with the Debian package that has
    /// it: the host's own gcc, or a cross compiler.
    pub fn c_compiler(self) -> (&'static str, &'static str) {
        match (self, self == Arch::host()) {
            (_, true) => ("gcc", "gcc"),
            (Arch::X86_64, false) => ("x86_64-linux-gnu-gcc", "gcc-x86-64-linux-gnu"),
            (Arch::Aarch64, false) => ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
        }
    }
}

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

/// Builds both kernel objects for the host, installing their toolchain when needed.
pub fn kernel_objects() -> Result<KernelObjects> {
    kernel_objects_for(Arch::host())
}

/// Builds both kernel objects for `arch`.
pub fn kernel_objects_for(arch: Arch) -> Result<KernelObjects> {
    let compiler = toolchain::ensure()?;
    eprintln!(
        "xtask: building the kernel program for {} with {}",
        arch.name(),
        compiler.description
    );
    Ok(KernelObjects {
        stacks: kernel_object(&compiler, arch, "stacks", &[])?,
        no_stacks: kernel_object(&compiler, arch, "no-stacks", &["--no-default-features"])?,
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
    for arch in Arch::ALL {
        run(kernel_cargo(&compiler, "clippy", arch, "clippy").args(["--", "-D", "warnings"]))
            .with_context(|| {
                format!(
                    "clippy found problems in the kernel crate ({})",
                    arch.name()
                )
            })?;
    }
    Ok(())
}

fn kernel_object(
    compiler: &toolchain::EbpfCompiler,
    arch: Arch,
    variant: &str,
    features: &[&str],
) -> Result<PathBuf> {
    run(kernel_cargo(compiler, "build", arch, variant).args(features)).with_context(|| {
        format!(
            "cannot build the kernel program ({}, {variant})",
            arch.name()
        )
    })?;
    Ok(kernel_target_dir(arch, variant)
        .join(BPF_TARGET)
        .join("release")
        .join("probe"))
}

fn kernel_target_dir(arch: Arch, variant: &str) -> PathBuf {
    workspace_root()
        .join("target")
        .join("ebpf")
        .join(arch.name())
        .join(variant)
}

/// `cargo SUBCOMMAND` for the kernel crate built for `arch`, in a target directory of its own
/// per architecture and `variant`.
fn kernel_cargo(
    compiler: &toolchain::EbpfCompiler,
    subcommand: &str,
    arch: Arch,
    variant: &str,
) -> Command {
    // What aya-build passes: BTF for the kernel, debug info for BTF, and the arch cfg that
    // aya-ebpf's helpers (and `probe-ebpf/src/arch.rs`) expect.
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{}\"", arch.name()),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
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
        .arg(kernel_target_dir(arch, variant));
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

/// Builds the CLI for `arch` as one static executable (the C library linked in), with that
/// architecture's kernel objects embedded; returns its path.
///
/// glibc, linked statically, rather than musl: probe tunes and trims glibc's allocator
/// (`mallopt`, `malloc_trim`) to keep its memory at its connection table's size, which musl's
/// allocator cannot do, and probe uses nothing of glibc that a static link breaks (no name
/// service lookups, no `dlopen`: the link gives no warning).
pub fn static_probe(arch: Arch) -> Result<PathBuf> {
    let target = arch.target();
    toolchain::ensure_rust_target(&target)?;
    let objects = kernel_objects_for(arch)?;
    let mut cargo = host_cargo(&objects);
    // RUSTFLAGS, not the target's own variable: with `--target`, cargo applies RUSTFLAGS to
    // what it builds for the target only, never to build scripts and proc-macros (which cannot
    // be static), even when the target is the host.
    cargo.env("RUSTFLAGS", "-C target-feature=+crt-static");
    if arch != Arch::host() {
        let (compiler, package) = arch.c_compiler();
        if !tool_exists(compiler) {
            toolchain::apt_install(&[package])?;
        }
        let linker = format!(
            "CARGO_TARGET_{}_LINKER",
            target.to_uppercase().replace('-', "_")
        );
        cargo.env(linker, compiler);
        cargo.env(format!("CC_{}", target.replace('-', "_")), compiler);
    }
    eprintln!("xtask: building the static CLI for {target}");
    run(cargo.args([
        "build",
        "--release",
        "--package",
        "probe-user",
        "--target",
        &target,
    ]))
    .with_context(|| format!("cannot build the static probe for {target}"))?;
    Ok(workspace_root()
        .join("target")
        .join(&target)
        .join("release")
        .join("probe"))
}
