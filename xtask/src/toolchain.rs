//! Everything the kernel crate needs to build, set up on a fresh machine: a compiler whose LLVM
//! matches bpf-linker's, with the library source to `-Z build-std=core`, and bpf-linker itself.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::cmd::{is_root, output_of, run, tool_exists};

/// bpf-linker reads the compiler's LLVM bitcode with its own LLVM: the two must be the same major.
const LLVM_MAJOR: &str = "22";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_PACKAGE: &str = "llvm-22-dev";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// A nightly with LLVM 22 (rustc 1.97.0-nightly, e50aa6fba 2026-05-19), verified on these machines.
const PINNED_NIGHTLY: &str = "nightly-2026-05-20";

/// How to run cargo for the kernel crate.
pub struct EbpfCompiler {
    /// The cargo to run, and the arguments that go before the subcommand.
    program: String,
    prefix: Vec<String>,
    /// Extra environment (Debian's compiler needs RUSTC_BOOTSTRAP for `-Z build-std`).
    env: Vec<(&'static str, String)>,
    pub description: String,
    /// Whether `cargo clippy` works with this compiler (rustup's do; Debian's has no clippy).
    pub has_clippy: bool,
}

impl EbpfCompiler {
    /// A `cargo` command for this compiler.
    pub fn cargo(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.prefix);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }
}

/// Finds or installs a compiler for the kernel crate, and bpf-linker.
pub fn ensure() -> Result<EbpfCompiler> {
    let compiler = compiler()?;
    ensure_bpf_linker()?;
    Ok(compiler)
}

fn compiler() -> Result<EbpfCompiler> {
    if tool_exists("rustup") {
        for toolchain in ["nightly", PINNED_NIGHTLY] {
            if has_llvm_major(&mut rustup_rustc(toolchain)) {
                return rustup_compiler(toolchain);
            }
        }
        eprintln!(
            "xtask: installing {PINNED_NIGHTLY} (rustc with LLVM {LLVM_MAJOR}) and its rust-src"
        );
        let installed = run(Command::new("rustup").args([
            "toolchain",
            "install",
            PINNED_NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
        match installed {
            Ok(()) if has_llvm_major(&mut rustup_rustc(PINNED_NIGHTLY)) => {
                return rustup_compiler(PINNED_NIGHTLY);
            }
            Ok(()) => eprintln!("xtask: {PINNED_NIGHTLY} does not report LLVM {LLVM_MAJOR}"),
            Err(error) => eprintln!("xtask: {error:#}"),
        }
        eprintln!("xtask: falling back to Debian's rustc-web");
    }
    debian_compiler()
}

fn rustup_rustc(toolchain: &str) -> Command {
    let mut command = Command::new("rustup");
    command.args(["run", toolchain, "rustc", "-vV"]);
    command
}

/// Whether this `rustc -vV` command reports the LLVM major version bpf-linker uses.
fn has_llvm_major(rustc_version: &mut Command) -> bool {
    output_of(rustc_version).is_ok_and(|text| {
        text.lines()
            .any(|line| line.starts_with(&format!("LLVM version: {LLVM_MAJOR}.")))
    })
}

fn rustup_compiler(toolchain: &str) -> Result<EbpfCompiler> {
    let installed = output_of(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))?;
    let add = |component: &str| {
        eprintln!("xtask: adding {component} to {toolchain}");
        run(Command::new("rustup").args(["component", "add", component, "--toolchain", toolchain]))
    };
    let has = |component: &str| installed.lines().any(|line| line.starts_with(component));
    if !has("rust-src") {
        add("rust-src")?;
    }
    // Clippy lints the kernel crate too; a toolchain that cannot get it still builds.
    let has_clippy = has("clippy")
        || add("clippy")
            .map_err(|error| eprintln!("xtask: no clippy for the kernel crate: {error:#}"))
            .is_ok();
    Ok(EbpfCompiler {
        program: "rustup".into(),
        prefix: vec!["run".into(), toolchain.into(), "cargo".into()],
        env: Vec::new(),
        description: format!("rustup toolchain {toolchain}"),
        has_clippy,
    })
}

/// Debian's rustc-web (with LLVM 22) and the library source that matches it exactly.
fn debian_compiler() -> Result<EbpfCompiler> {
    const CARGO: &str = "/usr/bin/cargo";
    const RUSTC: &str = "/usr/bin/rustc";
    let version = || {
        let mut command = Command::new(RUSTC);
        command.arg("-vV");
        command
    };
    if !has_llvm_major(&mut version()) || !Path::new("/usr/lib/rustlib/src/rust/library").exists() {
        apt_install(&["rustc-web", "cargo-web", "rust-web-src"])?;
    }
    if !has_llvm_major(&mut version()) {
        bail!("{RUSTC} does not report LLVM {LLVM_MAJOR}: cannot build the kernel program");
    }
    Ok(EbpfCompiler {
        program: CARGO.into(),
        prefix: Vec::new(),
        env: vec![("RUSTC", RUSTC.into()), ("RUSTC_BOOTSTRAP", "1".into())],
        description: "Debian rustc-web".into(),
        has_clippy: false,
    })
}

fn ensure_bpf_linker() -> Result<()> {
    let current = output_of(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if current.trim() == format!("bpf-linker {BPF_LINKER_VERSION}") {
        return Ok(());
    }
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
        apt_install(&[LLVM_PACKAGE])?;
    }
    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (about a minute)"
    );
    run(Command::new("cargo").env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--no-default-features",
        "--features",
        &format!("llvm-{LLVM_MAJOR}"),
    ]))
    .context("cannot install bpf-linker")
}

/// Makes sure the host's Rust can build for `target` (its standard library, through rustup).
pub fn ensure_rust_target(target: &str) -> Result<()> {
    if !tool_exists("rustup") {
        // A compiler without rustup has the targets it was installed with; cargo says which
        // is missing.
        return Ok(());
    }
    let installed = output_of(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if installed.lines().any(|line| line.trim() == target) {
        return Ok(());
    }
    eprintln!("xtask: adding the Rust target {target}");
    run(Command::new("rustup").args(["target", "add", target]))
        .with_context(|| format!("cannot add the Rust target {target} with rustup"))
}

/// Installs Debian packages (through sudo when not root), refreshing the package lists once if
/// the first try fails.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    eprintln!("xtask: installing {}", packages.join(" "));
    let apt = |args: &[&str]| {
        let mut command = if is_root() {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("apt-get");
            sudo
        };
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut command)
    };
    let mut install = vec!["install", "-y", "-qq"];
    install.extend_from_slice(packages);
    if apt(&install).is_ok() {
        return Ok(());
    }
    apt(&["update", "-qq"])?;
    apt(&install).with_context(|| format!("cannot install {}", packages.join(" ")))
}
