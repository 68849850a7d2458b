//! `cargo xtask vm-test`: probe on a second kernel. Boots Debian's stock kernel (the
//! `linux-image-amd64` package: 6.1 on Debian 12) under qemu, from an initramfs that holds
//! busybox, the probe binary and a leaking workload, and checks inside that probe flags exactly
//! the CLOSE_WAIT connections busybox's netstat shows, and exits cleanly.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    build,
    cmd::{output_of, run, tool_exists},
    toolchain,
};

/// Connections the workload leaks inside the VM.
const LEAKED: usize = 4;
/// The whole boot, scenario and power-off, at most (software emulation is slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// probe's kernel programs (`--attach`), each run through the scenario in the VM.
const PROGRAMS: [&str; 2] = ["btf", "tracepoint"];

/// What the VM reported for one of probe's kernel programs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub kernel: String,
    /// The kernel program probe attached (`--attach`).
    pub program: String,
    pub netstat_close_wait: usize,
    pub probe_stuck: usize,
    pub probe_exit: i32,
    pub summary: String,
}

/// Boots the second kernel and runs the scenario with each kernel program; fails unless probe
/// got it right every time.
pub fn vm_test() -> Result<Vec<Verdict>> {
    for (tool, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
        ("cpio", "cpio"),
    ] {
        if !tool_exists(tool) {
            toolchain::apt_install(&[package])?;
        }
    }
    let built = build::all()?;
    let dir = build::workspace_root().join("target").join("vm");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let kernel = fetch_kernel(&dir)?;
    let xtask = std::env::current_exe().context("cannot find the xtask binary")?;
    let initramfs = build_initramfs(&dir, &built.probe, &xtask)?;
    let console = boot(&kernel, &initramfs)?;
    fs::write(dir.join("console.log"), &console).context("cannot save the console log")?;
    let mut verdicts = Vec::new();
    for program in PROGRAMS {
        let verdict = parse(&console, program).with_context(|| {
            format!("the VM did not finish the scenario ({program}); its console:\n{console}")
        })?;
        eprintln!("xtask: {verdict:#?}");
        ensure!(
            verdict.probe_exit == 0,
            "probe (--attach {program}) failed inside the VM ({}); console in \
             target/vm/console.log",
            verdict.probe_exit
        );
        ensure!(
            verdict.netstat_close_wait == LEAKED && verdict.probe_stuck == LEAKED,
            "inside the VM netstat shows {} CLOSE_WAIT connections and probe (--attach \
             {program}) flagged {} (both should be {LEAKED}); console in target/vm/console.log",
            verdict.netstat_close_wait,
            verdict.probe_stuck
        );
        verdicts.push(verdict);
    }
    Ok(verdicts)
}

/// Downloads Debian's current stock kernel package and unpacks its image; returns its path.
fn fetch_kernel(dir: &Path) -> Result<PathBuf> {
    let depends = output_of(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    let package = depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|name| name.starts_with("linux-image-"))
        .context("apt-cache names no kernel package for linux-image-amd64")?
        .to_string();
    let unpacked = dir.join(&package);
    let boot = unpacked.join("boot");
    if !boot.exists() {
        let downloads = dir.join("deb");
        fs::create_dir_all(&downloads)?;
        if run(Command::new("apt-get")
            .args(["download", &package])
            .current_dir(&downloads))
        .is_err()
        {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            run(Command::new("apt-get")
                .args(["download", &package])
                .current_dir(&downloads))?;
        }
        let deb = fs::read_dir(&downloads)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .find(|path| {
                path.file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with(&package))
            })
            .context("apt-get download left no package")?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    }
    fs::read_dir(&boot)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz in {}", boot.display()))
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
scenario() {{
    /probe --json --attach $1 --close-wait-after 1s -- /xtask leak-scenario \
        --connections {LEAKED} --hold 8s > /tmp/probe.json 2> /tmp/probe.err &
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
    echo "VM-$1-SUMMARY $(grep '"type":"summary"' /tmp/probe.json | cut -c1-300)"
}}
for program in {programs}; do scenario $program; done
echo VM-DONE
poweroff -f
"#,
        programs = PROGRAMS.join(" ")
    )
}

/// An initramfs with busybox, probe, xtask (the workload) and their shared libraries.
fn build_initramfs(dir: &Path, probe: &Path, xtask: &Path) -> Result<PathBuf> {
    let root = dir.join("root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for sub in ["bin", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(root.join(sub))?;
    }
    let busybox = output_of(Command::new("sh").args(["-c", "command -v busybox"]))?;
    fs::copy(busybox.trim(), root.join("bin/busybox")).context("cannot copy busybox")?;
    fs::copy(probe, root.join("probe")).context("cannot copy probe")?;
    fs::copy(xtask, root.join("xtask")).context("cannot copy xtask")?;
    for binary in [probe, xtask] {
        for library in shared_libraries(binary)? {
            let target = root.join(library.strip_prefix("/").unwrap_or(&library));
            fs::create_dir_all(target.parent().expect("a library path has a parent"))?;
            fs::copy(&library, &target)
                .with_context(|| format!("cannot copy {}", library.display()))?;
        }
    }
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

/// The shared libraries `binary` loads (with the dynamic loader), from `ldd`.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let listing = output_of(Command::new("ldd").arg(binary))?;
    Ok(listing
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|word| word.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect())
}

/// Boots the kernel with the initramfs; returns what it printed on the serial console.
fn boot(kernel: &Path, initramfs: &Path) -> Result<String> {
    // Software emulation: KVM, where /dev/kvm exists at all on these (nested) machines, can
    // hang the guest or abort qemu, and TCG boots this kernel in about fifteen seconds.
    eprintln!(
        "xtask: booting {} under qemu (software emulation)",
        kernel.display()
    );
    let output = Command::new("timeout")
        .arg(BOOT_TIMEOUT.as_secs().to_string())
        .args([
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-smp",
            "2",
        ])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run qemu-system-x86_64")?;
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

/// Reads the VM's report lines.
/// What the console says of the scenario run with `program`.
fn parse(console: &str, program: &str) -> Result<Verdict> {
    let field = |name: &str| {
        console
            .lines()
            // The firmware's escape sequences can share a line with the first report.
            .find_map(|line| line.split_once(name).map(|(_, value)| value.trim()))
            .with_context(|| format!("no {name} line"))
    };
    let of_program = |name: &str| field(&format!("VM-{program}-{name} "));
    Ok(Verdict {
        kernel: field("VM-KERNEL ")?.to_string(),
        program: program.to_string(),
        netstat_close_wait: of_program("NETSTAT-CLOSE-WAIT")?.parse()?,
        probe_stuck: of_program("PROBE-STUCK")?.parse()?,
        probe_exit: of_program("PROBE-EXIT")?.parse()?,
        summary: of_program("SUMMARY")?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_lines_are_read_among_kernel_messages() {
        let console = "[    0.000000] Linux version 6.1.0-56-amd64\r\n\x1b[2JVM-KERNEL 6.1.0-56-amd64\r\n\
                       VM-btf-NETSTAT-CLOSE-WAIT 4\r\n[    9.1] random: crng init done\r\n\
                       VM-btf-PROBE-EXIT 0\r\nVM-btf-PROBE-STUCK 4\r\nVM-btf-SUMMARY {\"type\":\"summary\"}\r\n\
                       VM-tracepoint-NETSTAT-CLOSE-WAIT 0\r\nVM-DONE\r\n";
        assert_eq!(
            parse(console, "btf").unwrap(),
            Verdict {
                kernel: "6.1.0-56-amd64".into(),
                program: "btf".into(),
                netstat_close_wait: 4,
                probe_stuck: 4,
                probe_exit: 0,
                summary: "{\"type\":\"summary\"}".into(),
            }
        );
        assert!(
            parse(console, "tracepoint").is_err(),
            "its scenario did not finish"
        );
        assert!(parse("VM-KERNEL 6.1\n", "btf").is_err());
    }
}
