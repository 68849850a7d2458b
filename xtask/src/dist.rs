//! `cargo xtask dist`: what a responder copies to a sick host, in `target/dist/`:
//!
//! - `linux-amd64/` and `linux-arm64/`: one static `probe` per architecture (nothing to install
//!   beside it), with the shell completions and the man page, and each as a
//!   `probe-VERSION-linux-ARCH.tar.gz`;
//! - `probe_VERSION_ARCH.deb`: the Debian packages (built by cargo-deb);
//! - `SHA256SUMS` of all of these;
//! - the build context of `deploy/Dockerfile` (the image, `FROM scratch`).
//!
//! The architectures are named as Debian, OCI images and Prometheus's own releases name them.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, ensure};

use crate::{
    build::{self, Arch},
    cmd::{self, run, tool_exists},
    toolchain, vm,
};

/// The shells clap_complete writes completions for, with their conventional file names.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "completions/probe.bash"),
    ("zsh", "completions/_probe"),
    ("fish", "completions/probe.fish"),
];

/// cargo-deb, the Debian packager for cargo projects, at a version known to build here.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// What `dist` left.
pub struct Dist {
    pub dir: PathBuf,
    /// Per architecture: the static binary.
    pub binaries: Vec<(Arch, PathBuf)>,
    /// Per architecture: the Debian package.
    pub packages: Vec<(Arch, PathBuf)>,
}

/// The version being built (the CLI crate's).
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Builds every artifact and lays out `target/dist/`.
pub fn dist() -> Result<Dist> {
    let dir = build::workspace_root().join("target").join("dist");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let mut binaries = Vec::new();
    for arch in Arch::ALL {
        binaries.push((arch, build::static_probe(arch)?));
    }
    // The completions and the man page come from the command-line definition, the same on
    // every architecture: the host's binary writes them.
    let host = &binaries
        .iter()
        .find(|(arch, _)| *arch == Arch::host())
        .context("no binary was built for the host")?
        .1;
    let shared = dir.join("share");
    write_docs(host, &shared)?;

    let mut artifacts = Vec::new();
    let mut packages = Vec::new();
    let mut placed = Vec::new();
    for (arch, binary) in &binaries {
        let name = format!("linux-{}", arch.debian());
        let unpacked = dir.join(&name);
        copy_tree(&shared, &unpacked)?;
        let placed_binary = unpacked.join("probe");
        fs::copy(binary, &placed_binary)
            .with_context(|| format!("cannot copy {}", binary.display()))?;
        placed.push((*arch, placed_binary));
        artifacts.push(tarball(&dir, &name, *arch)?);
        let package = debian_package(*arch, &dir)?;
        artifacts.push(package.clone());
        packages.push((*arch, package));
    }
    write_checksums(&dir, &artifacts)?;
    Ok(Dist {
        dir,
        binaries: placed,
        packages,
    })
}

/// The completions and the man page, as `binary` writes them, under `into`.
fn write_docs(binary: &Path, into: &Path) -> Result<()> {
    fs::create_dir_all(into.join("completions"))
        .and_then(|()| fs::create_dir_all(into.join("man")))
        .with_context(|| format!("cannot create {}", into.display()))?;
    for (shell, file) in COMPLETIONS {
        let script = cmd::output_of(Command::new(binary).args(["--generate-completions", shell]))?;
        fs::write(into.join(file), script).with_context(|| format!("cannot write {file}"))?;
    }
    let man = cmd::output_of(Command::new(binary).arg("--generate-man"))?;
    fs::write(into.join("man/probe.1"), man).context("cannot write the man page")
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    run(Command::new("cp").arg("-r").arg(from).arg(to))
}

/// `probe-VERSION-linux-ARCH.tar.gz` of `dir/name`, whose top folder is named as the file.
fn tarball(dir: &Path, name: &str, arch: Arch) -> Result<PathBuf> {
    let top = format!("probe-{}-linux-{}", version(), arch.debian());
    let file = dir.join(format!("{top}.tar.gz"));
    run(Command::new("tar")
        .arg("-czf")
        .arg(&file)
        .arg("-C")
        .arg(dir)
        .arg(format!("--transform=s,^{name},{top},"))
        .arg(name))?;
    Ok(file)
}

/// The Debian package of `arch`'s static binary (cargo-deb, from `probe-user/Cargo.toml`'s
/// `[package.metadata.deb]`), moved into `dir`.
fn debian_package(arch: Arch, dir: &Path) -> Result<PathBuf> {
    ensure_cargo_deb()?;
    let output = cmd::output_of(
        Command::new(env!("CARGO"))
            .current_dir(build::workspace_root())
            .args(["deb", "--no-build", "--no-strip", "--package", "probe-user"])
            .args(["--target", &arch.target()]),
    )
    .with_context(|| format!("cargo-deb could not package probe for {}", arch.debian()))?;
    let built = PathBuf::from(
        output
            .lines()
            .rev()
            .find(|line| line.trim_end().ends_with(".deb"))
            .context("cargo-deb named no package")?
            .trim(),
    );
    let placed = dir.join(
        built
            .file_name()
            .context("cargo-deb's package has no file name")?,
    );
    fs::rename(&built, &placed).with_context(|| format!("cannot move {}", built.display()))?;
    Ok(placed)
}

fn ensure_cargo_deb() -> Result<()> {
    let version = cmd::output_of(Command::new(env!("CARGO")).args(["deb", "--version"]));
    if version.is_ok_and(|version| version.contains(CARGO_DEB_VERSION)) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-deb {CARGO_DEB_VERSION}");
    run(Command::new(env!("CARGO")).args([
        "install",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
        "cargo-deb",
    ]))
    .context("cannot install cargo-deb")
}

/// `SHA256SUMS` (as `sha256sum` writes and checks it) of `artifacts`, which lie in `dir`.
fn write_checksums(dir: &Path, artifacts: &[PathBuf]) -> Result<()> {
    if !tool_exists("sha256sum") {
        toolchain::apt_install(&["coreutils"])?;
    }
    let names: Vec<_> = artifacts
        .iter()
        .filter_map(|artifact| artifact.file_name())
        .collect();
    let sums = cmd::output_of(Command::new("sha256sum").args(&names).current_dir(dir))?;
    fs::write(dir.join("SHA256SUMS"), sums).context("cannot write SHA256SUMS")
}

/// Tries what `dist` left, on this machine: the host's Debian package installs with apt, puts a
/// working probe on the PATH with its man page and completions, and goes away with every file
/// when removed; the image builds from `target/dist`, and its probe, run as the DaemonSet runs
/// it, flags a leak of this host.
pub fn check(dist: &Dist) -> Result<()> {
    let (_, package) = dist
        .packages
        .iter()
        .find(|(arch, _)| *arch == Arch::host())
        .context("no package was built for the host")?;
    check_package(package)?;
    check_image(&dist.dir)
}

fn check_package(package: &Path) -> Result<()> {
    let apt = |args: &[&str]| {
        let mut command = Command::new("apt-get");
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    run(apt(&["install", "-y", "-qq"]).arg(package))
        .with_context(|| format!("apt cannot install {}", package.display()))?;
    let installed = cmd::output_of(Command::new("dpkg").args(["-L", "probe"]))?;
    let files: Vec<PathBuf> = installed
        .lines()
        .map(PathBuf::from)
        .filter(|path| path.is_file())
        .collect();
    let version = cmd::output_of(Command::new("/usr/bin/probe").arg("--version"));
    run(&mut apt(&["remove", "--purge", "-y", "-qq", "probe"]))
        .context("apt cannot remove probe")?;
    let version = version.context("the packaged probe does not run")?;
    ensure!(
        version.contains(&Arch::host().target()) && version.contains("static"),
        "the packaged probe says {version}"
    );
    for expected in [
        "/usr/bin/probe",
        "/usr/share/man/man1/probe.1.gz",
        "/usr/share/bash-completion/completions/probe",
        "/usr/share/zsh/vendor-completions/_probe",
        "/usr/share/fish/vendor_completions.d/probe.fish",
        "/usr/share/doc/probe/deploy/daemonset.yaml",
        "/usr/share/doc/probe/deploy/alerts.yaml",
    ] {
        ensure!(
            files.iter().any(|file| file == Path::new(expected)),
            "the package does not install {expected}: {files:?}"
        );
    }
    let left: Vec<_> = files.iter().filter(|file| file.exists()).collect();
    ensure!(left.is_empty(), "removing the package left {left:?}");
    eprintln!(
        "xtask: {} installed {} files ({}), and its removal took them all",
        package.display(),
        files.len(),
        version.trim()
    );
    Ok(())
}

/// The image tag the check builds.
const CHECK_IMAGE: &str = "localhost/probe:dist-check";
/// Connections the image check's workload leaks.
const IMAGE_LEAK: usize = 4;

/// Builds the image and runs its probe as the DaemonSet does (its capabilities only, a
/// read-only root, the host's processes and tracefs) on a leaking process of the host: it must
/// flag the CLOSE_WAIT connections `ss` shows.
fn check_image(context: &Path) -> Result<()> {
    for (tool, package) in [("podman", "podman"), ("runc", "runc"), ("ss", "iproute2")] {
        if !tool_exists(tool) {
            toolchain::apt_install(&[package])?;
        }
    }
    let dockerfile = build::workspace_root().join("deploy").join("Dockerfile");
    run(Command::new("podman")
        .args(["build", "--quiet", "--build-arg"])
        .arg(format!("TARGETARCH={}", Arch::host().debian()))
        .args(["-t", CHECK_IMAGE, "-f"])
        .arg(&dockerfile)
        .arg(context))
    .context("podman cannot build deploy/Dockerfile")?;
    let size = cmd::output_of(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Size}} bytes in {{len .RootFS.Layers}} layer(s)",
        CHECK_IMAGE,
    ]));
    let traced = trace_from_the_image();
    let _ = cmd::output_of(Command::new("podman").args(["rmi", "--force", CHECK_IMAGE]));
    let (flagged, shown) = traced?;
    ensure!(
        flagged == IMAGE_LEAK && shown == IMAGE_LEAK,
        "probe in the image flagged {flagged} CLOSE_WAIT connections and ss shows {shown} \
         (both should be {IMAGE_LEAK})"
    );
    eprintln!(
        "xtask: the image ({}) flagged the {flagged} CLOSE_WAIT connections ss shows",
        size.unwrap_or_default().trim()
    );
    Ok(())
}

/// Runs the image's probe on a leaking workload; returns how many connections it flagged and
/// how many CLOSE_WAIT connections `ss` showed of the workload meanwhile.
fn trace_from_the_image() -> Result<(usize, usize)> {
    let dir = build::workspace_root().join("target").join("dist-check");
    let workload = vm::build_workload(Arch::host(), &dir)?;
    let mut leak = Command::new(&workload)
        .args([IMAGE_LEAK.to_string().as_str(), "30"])
        .spawn()
        .context("cannot start the workload")?;
    let pid = leak.id().to_string();
    let traced = cmd::output_of(
        Command::new("podman")
            .args(["run", "--rm", "--runtime", "runc"])
            // crun, podman's default runtime, refuses this host's hybrid cgroups. podman
            // raises the limits on open files and processes to the most the host allows, which
            // a sandboxed host (as this CI's) refuses.
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            // What deploy/daemonset.yaml grants.
            .args(["--cap-drop", "ALL", "--cap-add"])
            .arg("BPF,PERFMON,SYS_ADMIN,SYS_PTRACE,DAC_READ_SEARCH,DAC_OVERRIDE")
            .args(["--security-opt", "seccomp=unconfined", "--read-only"])
            .args(["--pid", "host", "--network", "host"])
            .args(["--volume", "/sys/kernel/tracing:/sys/kernel/tracing:ro"])
            .arg(CHECK_IMAGE)
            .args([
                "--json",
                "--close-wait-after",
                "1s",
                "--duration",
                "6s",
                "--pid",
            ])
            .arg(&pid),
    );
    let sockets = cmd::output_of(Command::new("ss").args(["-tnpH", "state", "close-wait"]));
    let _ = leak.kill();
    let _ = leak.wait();
    let flagged = traced
        .context("the image's probe did not run")?
        .lines()
        .filter(|line| line.contains("\"type\":\"stuck\""))
        .count();
    let owner = format!("pid={pid},");
    let shown = sockets?
        .lines()
        .filter(|line| line.contains(&owner))
        .count();
    Ok((flagged, shown))
}
