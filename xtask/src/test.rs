//! `cargo xtask test`: lints, unit tests, and the integration tests that load the real program
//! into the running kernel (as root: through `sudo` when xtask itself is not root).

use std::process::Command;

use anyhow::{Context, Result};

use crate::{
    build,
    cmd::{is_root, run, tool_exists},
    dist, toolchain, vm,
};

/// Runs every check and test; fails on the first failure.
pub fn test() -> Result<()> {
    // `ss`, the independent oracle of the integration tests; tmux drives the live view,
    // Chromium renders the HTML report; nginx is the real pre-fork server of the ownership test;
    // prlimit lowers probe's fd limit in the metrics test; Prometheus (and promtool) scrapes
    // probe, loads the alert rules and runs their unit tests; openssl makes the certificates
    // of the TLS test, curl plays the clients it refuses; Go, gcc, node and a JDK build and
    // run the leaking clients whose code probe names.
    let tools = [
        ("ss", "iproute2"),
        ("tmux", "tmux"),
        ("chromium", "chromium"),
        ("nginx", "nginx"),
        ("prlimit", "util-linux"),
        ("prometheus", "prometheus"),
        ("promtool", "prometheus"),
        ("openssl", "openssl"),
        ("curl", "curl"),
        ("go", "golang-go"),
        ("gcc", "gcc"),
        ("node", "nodejs"),
        ("javac", "openjdk-17-jdk-headless"),
        ("jcmd", "openjdk-17-jdk-headless"),
    ];
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|(tool, _)| !tool_exists(tool))
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if !missing.is_empty() {
        toolchain::apt_install(&missing)?;
    }
    if tool_exists("rustup") {
        run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))?;
    }
    let objects = build::kernel_objects()?;

    run(build::host_cargo(&objects).args(["fmt", "--all", "--", "--check"]))
        .context("code is not formatted: run `cargo fmt --all`")?;
    run(build::host_cargo(&objects).args([
        "clippy",
        "--release",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy found problems")?;
    build::lint_kernel()?;

    let mut tests = build::host_cargo(&objects);
    tests
        .args(["test", "--release"])
        // The integration tests must run, not skip, here: lacking root or the embedded kernel
        // object is a failure. Only a kernel without BPF makes them skip (loudly).
        .env("PROBE_REQUIRE_INTEGRATION", "1");
    if !is_root() {
        tests.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E");
    }
    run(&mut tests).context("tests failed")?;

    // What ships: the static binaries of both architectures, each booted with Debian's stock
    // kernel for it under qemu with a leak inside; the Debian package and the image, tried here.
    let dist = dist::dist().context("cannot build the release artifacts")?;
    let verdicts = vm::vm_test(&dist.binaries).context("the second-kernel test failed")?;
    vm::tell(&verdicts);
    dist::check(&dist).context("the release artifacts do not work")
}
