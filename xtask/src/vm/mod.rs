//! `cargo xtask vm-test`: probe on a second kernel, per architecture. Boots Debian's stock
//! kernel (the `linux-image-amd64` or `linux-image-arm64` package: 6.1 on Debian 12) under qemu,
//! software-emulated, from an initramfs that holds busybox, the static probe binary and a static
//! leaking workload, and nothing else (no C library: a binary that needs one cannot start), and
//! checks inside that probe flags exactly the CLOSE_WAIT connections busybox's netstat shows, and
//! exits cleanly, with each of its kernel programs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    build::{self, Arch},
    cmd::{output_of, run, tool_exists},
    toolchain,
};

/// Connections the workload leaks inside the VM.
const LEAKED: usize = 4;
/// How long the workload holds its leaked connections, in seconds.
const HOLD_SECONDS: u32 = 8;

/// probe's kernel programs (`--attach`), each run through the scenario in the VM.
const PROGRAMS: [&str; 2] = ["btf", "tracepoint"];

/// The workload (see its header).
const LEAK_SOURCE: &str = include_str!("leak.c");

/// What the VM reported for one of probe's kernel programs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub arch: String,
    pub kernel: String,
    /// The kernel program probe attached (`--attach`).
    pub program: String,
    pub netstat_close_wait: usize,
    pub probe_stuck: usize,
    pub probe_exit: i32,
    /// The functions probe named for the first stuck connection, innermost first.
    pub opened_in: Vec<String>,
    pub summary: String,
}

/// How to boot one architecture's VM.
struct Machine {
    qemu: &'static str,
    qemu_package: &'static str,
    /// The machine and CPU options.
    board: &'static [&'static str],
    console: &'static str,
    /// The whole boot, scenario and power-off, at most (software emulation is slow, an
    /// emulated arm64 slower).
    timeout: Duration,
}

fn machine(arch: Arch) -> Machine {
    match arch {
        Arch::X86_64 => Machine {
            qemu: "qemu-system-x86_64",
            qemu_package: "qemu-system-x86",
            board: &["-accel", "tcg"],
            console: "ttyS0",
            timeout: Duration::from_secs(300),
        },
        Arch::Aarch64 => Machine {
            qemu: "qemu-system-aarch64",
            qemu_package: "qemu-system-arm",
            board: &["-accel", "tcg", "-machine", "virt", "-cpu", "cortex-a72"],
            console: "ttyAMA0",
            timeout: Duration::from_secs(600),
        },
    }
}

/// Boots each architecture's kernel with its static binary (from `cargo xtask dist`) and runs
/// the scenario with each kernel program; fails unless probe got it right every time.
pub fn vm_test(binaries: &[(Arch, PathBuf)]) -> Result<Vec<Verdict>> {
    let mut verdicts = Vec::new();
    for (arch, probe) in binaries {
        verdicts.extend(vm_test_on(*arch, probe)?);
    }
    Ok(verdicts)
}

/// Says what each VM found.
pub fn tell(verdicts: &[Verdict]) {
    for verdict in verdicts {
        eprintln!(
            "xtask: on {} Linux {}, probe (--attach {}) flagged {} CLOSE_WAIT connections, \
             opened in {}; netstat shows {}",
            verdict.arch,
            verdict.kernel,
            verdict.program,
            verdict.probe_stuck,
            verdict.opened_in.join(" <- "),
            verdict.netstat_close_wait
        );
    }
}

fn vm_test_on(arch: Arch, probe: &Path) -> Result<Vec<Verdict>> {
    let machine = machine(arch);
    for (tool, package) in [(machine.qemu, machine.qemu_package), ("cpio", "cpio")] {
        if !tool_exists(tool) {
            toolchain::apt_install(&[package])?;
        }
    }
    let dir = build::workspace_root()
        .join("target")
        .join("vm")
        .join(arch.debian());
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let debian = DebianPackages::new(arch, &dir)?;
    let kernel = debian.kernel()?;
    let busybox = debian.busybox()?;
    let leak = build_workload(arch, &dir)?;
    let initramfs = build_initramfs(&dir, &busybox, probe, &leak)?;
    let console = boot(&machine, &kernel, &initramfs)?;
    fs::write(dir.join("console.log"), &console).context("cannot save the console log")?;
    let log = dir.join("console.log");
    let mut verdicts = Vec::new();
    for program in PROGRAMS {
        let verdict = parse(&console, arch, program).with_context(|| {
            format!(
                "the {} VM did not finish the scenario ({program}); its console:\n{console}",
                arch.name()
            )
        })?;
        eprintln!("xtask: {verdict:#?}");
        ensure!(
            verdict.probe_exit == 0,
            "probe (--attach {program}) failed inside the {} VM ({}); console in {}",
            arch.name(),
            verdict.probe_exit,
            log.display()
        );
        ensure!(
            verdict.netstat_close_wait == LEAKED && verdict.probe_stuck == LEAKED,
            "inside the {} VM netstat shows {} CLOSE_WAIT connections and probe (--attach \
             {program}) flagged {} (both should be {LEAKED}); console in {}",
            arch.name(),
            verdict.netstat_close_wait,
            verdict.probe_stuck,
            log.display()
        );
        // The BTF program reads the user registers at the connect (per architecture) and
        // copies the stack, which probe unwinds with the workload's unwind tables: the
        // function that connects is named though the workload has no frame pointers.
        ensure!(
            program != "btf" || verdict.opened_in.iter().any(|name| name == "main"),
            "inside the {} VM probe (--attach btf) did not name the workload's main as the code \
             that opened the connections: {:?}; console in {}",
            arch.name(),
            verdict.opened_in,
            log.display()
        );
        verdicts.push(verdict);
    }
    Ok(verdicts)
}

/// Debian's packages for one architecture, downloaded (never installed) with package lists of
/// its own under `dir`, so the host's apt configuration is left as it is.
struct DebianPackages {
    arch: Arch,
    dir: PathBuf,
}

impl DebianPackages {
    fn new(arch: Arch, dir: &Path) -> Result<DebianPackages> {
        let packages = DebianPackages {
            arch,
            dir: dir.join("apt"),
        };
        for sub in ["lists/partial", "cache/archives/partial", "deb"] {
            fs::create_dir_all(packages.dir.join(sub))?;
        }
        Ok(packages)
    }

    /// apt-get or apt-cache, with this architecture's own lists.
    fn apt(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        let option = |name: &str, value: &Path| format!("{name}={}", value.display());
        command
            .arg("-o")
            .arg(format!("APT::Architecture={}", self.arch.debian()))
            .arg("-o")
            .arg(format!("APT::Architectures::={}", self.arch.debian()))
            .arg("-o")
            .arg(option("Dir::State::Lists", &self.dir.join("lists")))
            .arg("-o")
            .arg(option("Dir::Cache", &self.dir.join("cache")))
            .args(["-o", "Dir::State::status=/dev/null"]);
        command
    }

    /// Unpacks `package` (downloaded once) and returns where.
    fn unpacked(&self, package: &str) -> Result<PathBuf> {
        let unpacked = self.dir.join(package);
        if unpacked.exists() {
            return Ok(unpacked);
        }
        let downloads = self.dir.join("deb");
        let download = |packages: &DebianPackages| {
            run(packages
                .apt("apt-get")
                .args(["download", "-qq", package])
                .current_dir(&downloads))
        };
        if download(self).is_err() {
            run(self.apt("apt-get").args(["update", "-qq"]))?;
            download(self)?;
        }
        let deb = fs::read_dir(&downloads)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .find(|path| {
                path.file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with(&format!("{package}_")))
            })
            .context("apt-get download left no package")?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        Ok(unpacked)
    }

    /// The stock kernel's image: the package `linux-image-ARCH` depends on.
    fn kernel(&self) -> Result<PathBuf> {
        let meta = format!("linux-image-{}", self.arch.debian());
        let depends = match output_of(self.apt("apt-cache").args(["depends", &meta])) {
            Ok(depends) if depends.contains("Depends: ") => depends,
            _ => {
                run(self.apt("apt-get").args(["update", "-qq"]))?;
                output_of(self.apt("apt-cache").args(["depends", &meta]))?
            }
        };
        let package = depends
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Depends: "))
            .find(|name| name.starts_with("linux-image-"))
            .with_context(|| format!("apt-cache names no kernel package for {meta}"))?
            .to_string();
        let boot = self.unpacked(&package)?.join("boot");
        fs::read_dir(&boot)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .find(|path| {
                path.file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with("vmlinuz-"))
            })
            .with_context(|| format!("no vmlinuz in {}", boot.display()))
    }

    /// Debian's static busybox for this architecture.
    fn busybox(&self) -> Result<PathBuf> {
        let busybox = self.unpacked("busybox-static")?.join("bin/busybox");
        ensure!(busybox.exists(), "busybox-static has no bin/busybox");
        Ok(busybox)
    }
}

/// The workload, compiled static for `arch`, without frame pointers (as distributions build):
/// only an unwind from the registers the BTF program reads finds its `main`.
pub fn build_workload(arch: Arch, dir: &Path) -> Result<PathBuf> {
    let (compiler, package) = arch.c_compiler();
    if !tool_exists(compiler) {
        toolchain::apt_install(&[package])?;
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let source = dir.join("leak.c");
    fs::write(&source, LEAK_SOURCE)?;
    let binary = dir.join("leak");
    run(Command::new(compiler)
        .args([
            "-static",
            "-O2",
            "-fomit-frame-pointer",
            "-Wall",
            "-Werror",
            "-pthread",
        ])
        .arg("-o")
        .arg(&binary)
        .arg(&source))
    .context("cannot build the VM's workload")?;
    Ok(binary)
}

/// The VM's /init: mount what probe needs (not tracefs: probe mounts it itself), then for each
/// kernel program leak connections under probe, compare with netstat, report; power off.
fn init_script() -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
ip link set lo up
echo "VM-KERNEL $(uname -r)"
echo "VM-ARCH $(uname -m)"
scenario() {{
    /probe --json --attach $1 --close-wait-after 1s -- /leak {LEAKED} {HOLD_SECONDS} \
        > /tmp/probe.json 2> /tmp/probe.err &
    PROBE=$!
    # The leak starts once probe has attached, which takes seconds under software emulation
    # (the verifier's work is emulated too): netstat is read each second until it shows the
    # leak, for as long as the scenario holds it.
    n=0
    for i in 1 2 3 4 5 6 7 8 9 10 11 12; do
        sleep 1
        n=$(netstat -tn | grep -c CLOSE_WAIT)
        [ "$n" -ge {LEAKED} ] && break
    done
    echo "VM-$1-NETSTAT-CLOSE-WAIT $n"
    wait $PROBE
    echo "VM-$1-PROBE-EXIT $?"
    cat /tmp/probe.err
    echo "VM-$1-PROBE-STUCK $(grep -c '"type":"stuck"' /tmp/probe.json)"
    echo "VM-$1-OPENED-IN $(grep -m1 '"type":"stuck"' /tmp/probe.json | grep -o '"function":"[^"]*"' | cut -d'"' -f4 | tr '\n' ' ')"
    echo "VM-$1-SUMMARY $(grep '"type":"summary"' /tmp/probe.json | cut -c1-300)"
}}
for program in {programs}; do scenario $program; done
echo VM-DONE
poweroff -f
"#,
        programs = PROGRAMS.join(" ")
    )
}

/// An initramfs with busybox, probe and the workload, all static, and nothing else.
fn build_initramfs(dir: &Path, busybox: &Path, probe: &Path, workload: &Path) -> Result<PathBuf> {
    let root = dir.join("root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for sub in ["bin", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(root.join(sub))?;
    }
    fs::copy(busybox, root.join("bin/busybox")).context("cannot copy busybox")?;
    fs::copy(probe, root.join("probe")).context("cannot copy probe")?;
    fs::copy(workload, root.join("leak")).context("cannot copy the workload")?;
    let init = root.join("init");
    fs::write(&init, init_script())?;
    run(Command::new("chmod").args(["755"]).arg(&init))?;
    let image = dir.join("initramfs.cpio.gz");
    run(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find . | cpio --quiet -o -H newc | gzip -1 > {}",
            image.display()
        ))
        .current_dir(&root))?;
    Ok(image)
}

/// Boots the kernel with the initramfs; returns what it printed on the serial console.
fn boot(machine: &Machine, kernel: &Path, initramfs: &Path) -> Result<String> {
    // Software emulation: KVM, where /dev/kvm exists at all on these (nested) machines, can
    // hang the guest or abort qemu, and TCG boots the x86-64 kernel in about fifteen seconds.
    eprintln!(
        "xtask: booting {} under {} (software emulation)",
        kernel.display(),
        machine.qemu
    );
    let output = Command::new("timeout")
        .arg(machine.timeout.as_secs().to_string())
        .arg(machine.qemu)
        .args(machine.board)
        .args(["-m", "1024", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!("console={} panic=-1 loglevel=4", machine.console))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", machine.qemu))?;
    let console = String::from_utf8_lossy(&output.stdout).into_owned();
    if !console.contains("VM-DONE") {
        bail!(
            "the VM stopped ({}) before the scenario finished:\n{console}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(console)
}

/// What the console of `arch`'s VM says of the scenario run with `program`.
fn parse(console: &str, arch: Arch, program: &str) -> Result<Verdict> {
    let field = |name: &str| {
        console
            .lines()
            // The firmware's escape sequences can share a line with the first report.
            .find_map(|line| line.split_once(name).map(|(_, value)| value.trim()))
            .with_context(|| format!("no {name} line"))
    };
    let of_program = |name: &str| field(&format!("VM-{program}-{name} "));
    let reported = field("VM-ARCH ")?;
    ensure!(
        reported == arch.name(),
        "the VM booted for {} reports a {reported} machine",
        arch.name()
    );
    Ok(Verdict {
        arch: reported.to_string(),
        kernel: field("VM-KERNEL ")?.to_string(),
        program: program.to_string(),
        netstat_close_wait: of_program("NETSTAT-CLOSE-WAIT")?.parse()?,
        probe_stuck: of_program("PROBE-STUCK")?.parse()?,
        probe_exit: of_program("PROBE-EXIT")?.parse()?,
        opened_in: of_program("OPENED-IN")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect(),
        summary: of_program("SUMMARY")?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_lines_are_read_among_kernel_messages() {
        let console = "[    0.000000] Linux version 6.1.0-56-amd64\r\n\x1b[2JVM-KERNEL 6.1.0-56-amd64\r\n\
                       VM-ARCH x86_64\r\n\
                       VM-btf-NETSTAT-CLOSE-WAIT 4\r\n[    9.1] random: crng init done\r\n\
                       VM-btf-PROBE-EXIT 0\r\nVM-btf-PROBE-STUCK 4\r\nVM-btf-OPENED-IN __connect main \r\nVM-btf-SUMMARY {\"type\":\"summary\"}\r\n\
                       VM-tracepoint-NETSTAT-CLOSE-WAIT 0\r\nVM-DONE\r\n";
        assert_eq!(
            parse(console, Arch::X86_64, "btf").unwrap(),
            Verdict {
                arch: "x86_64".into(),
                kernel: "6.1.0-56-amd64".into(),
                program: "btf".into(),
                netstat_close_wait: 4,
                probe_stuck: 4,
                probe_exit: 0,
                opened_in: vec!["__connect".into(), "main".into()],
                summary: "{\"type\":\"summary\"}".into(),
            }
        );
        assert!(
            parse(console, Arch::X86_64, "tracepoint").is_err(),
            "its scenario did not finish"
        );
        assert!(parse("VM-KERNEL 6.1\n", Arch::X86_64, "btf").is_err());
        assert!(
            parse(console, Arch::Aarch64, "btf").is_err(),
            "an x86_64 machine's report is no arm64 verdict"
        );
    }
}
