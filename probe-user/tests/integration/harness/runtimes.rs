//! Real clients in other languages (Go, C, Rust, node, Java), built from `tests/fixtures/runtimes`
//! by their real toolchains into a test's own directory.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::{TempPath, ensure};

/// A fixture's source.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/runtimes")
        .join(name)
}

/// `program`, found in `PATH`, or what to install.
pub fn tool(program: &str, package: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            format!("{program} is not installed: install {package} (cargo xtask test does)")
        })
}

/// Runs a build step, its output in the error.
fn build(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    ensure(output.status.success(), || {
        format!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// `leaky.go` built with the Go toolchain into `dir` (its build cache kept in cargo's
/// scratch directory, so the standard library is compiled once, not by every run).
pub fn go_client(dir: &TempPath) -> Result<PathBuf, String> {
    go_build(dir, "leaky-go", &[])
}

/// `leaky.go` built as [`go_client`] does, with its symbol table stripped (`-ldflags=-s -w`),
/// as distributions ship Go programs.
pub fn stripped_go_client(dir: &TempPath) -> Result<PathBuf, String> {
    go_build(dir, "leaky-go-stripped", &["-ldflags=-s -w"])
}

fn go_build(dir: &TempPath, name: &str, flags: &[&str]) -> Result<PathBuf, String> {
    let go = tool("go", "golang-go")?;
    let binary = dir.0.join(name);
    build(
        Command::new(go)
            .arg("build")
            .args(flags)
            .arg("-o")
            .arg(&binary)
            .arg(".")
            .current_dir(fixture(""))
            .env(
                "GOCACHE",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-cache"),
            )
            .env("GOPATH", dir.0.join("go-path"))
            .env("GOFLAGS", "-buildvcs=false")
            .env("CGO_ENABLED", "0"),
    )?;
    Ok(binary)
}

/// `leaky.c` built with gcc and `flags` into `dir` as `name`.
pub fn c_client(dir: &TempPath, name: &str, flags: &[&str]) -> Result<PathBuf, String> {
    let gcc = tool("gcc", "gcc")?;
    let binary = dir.0.join(name);
    build(
        Command::new(gcc)
            .args(flags)
            .arg("-o")
            .arg(&binary)
            .arg(fixture("leaky.c")),
    )?;
    Ok(binary)
}

/// `leaky.rs` (crate `leaky`) built with `rustc -O` (a release build, without frame pointers)
/// into `dir` as `client-rs`, with the `rustc` of the toolchain that runs the tests.
pub fn rust_client(dir: &TempPath) -> Result<PathBuf, String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let binary = dir.0.join("client-rs");
    build(
        Command::new(rustc)
            .args([
                "-O",
                "--edition",
                "2021",
                "-C",
                "force-frame-pointers=no",
                "-o",
            ])
            .arg(&binary)
            .arg(fixture("leaky.rs")),
    )?;
    Ok(binary)
}

/// `Leaky.java` compiled into `dir` (the class path to run it from).
pub fn java_client(dir: &TempPath) -> Result<PathBuf, String> {
    let javac = tool("javac", "openjdk-17-jdk-headless")?;
    let classes = dir.0.join("classes");
    build(
        Command::new(javac)
            .arg("-d")
            .arg(&classes)
            .arg(fixture("Leaky.java")),
    )?;
    Ok(classes)
}

/// A CPython interpreter to run the Python fixture with.
pub struct Python {
    /// What the test calls it (`3.8`, `debian 3.11`).
    pub label: String,
    pub executable: PathBuf,
}

/// The CPython builds the tests run, as production runs them (no flags): pyenv's 3.8 to 3.13
/// (shared `libpython`, built by `pyenv install`) and Debian's own `/usr/bin/python3.11`
/// (static, stripped). Missing ones are an error that says how to install them.
pub fn pythons() -> Result<Vec<Python>, String> {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"));
    let mut found = Vec::new();
    for minor in 8..=13 {
        let versions = std::fs::read_dir(root.join("versions")).map_err(|e| {
            format!(
                "cannot list {}/versions ({e}): install pyenv",
                root.display()
            )
        })?;
        let version = versions
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(&format!("3.{minor}.")))
            .max()
            .ok_or_else(|| format!("no Python 3.{minor} in pyenv: `pyenv install 3.{minor}`"))?;
        found.push(Python {
            label: format!("pyenv {version}"),
            executable: root
                .join("versions")
                .join(&version)
                .join(format!("bin/python3.{minor}")),
        });
    }
    let debian = PathBuf::from("/usr/bin/python3.11");
    ensure(debian.is_file(), || {
        "no /usr/bin/python3.11: install python3.11".into()
    })?;
    found.push(Python {
        label: "debian 3.11".into(),
        executable: debian,
    });
    Ok(found)
}

/// The interpreter of a virtual environment of `python` with `requests` installed from the
/// registry (made once, in cargo's scratch directory), as services install their libraries.
pub fn python_with_requests(python: &Python) -> Result<PathBuf, String> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("python-venv-{}", python.label.replace(' ', "-")));
    let interpreter = venv.join("bin/python");
    let ready = venv.join("requests-installed");
    if ready.is_file() {
        return Ok(interpreter);
    }
    build(
        Command::new(&python.executable)
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    build(Command::new(&interpreter).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "requests",
    ]))?;
    std::fs::write(&ready, "").map_err(|e| e.to_string())?;
    Ok(interpreter)
}
