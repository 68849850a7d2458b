//! `cargo xtask`: build, run, test and demo probe. One way to build: everything goes through here.

mod bench;
mod build;
mod cmd;
mod demo;
mod dist;
#[cfg(test)]
mod docs;
mod test;
mod toolchain;
mod vm;
mod workload;

use std::{ffi::OsString, net::SocketAddr, process::Command, time::Duration};

use anyhow::Result;
use build::Arch;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run, test and demo probe")]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the kernel program (installing its toolchain when needed) and the probe CLI.
    Build,
    /// Build, then run probe with these arguments (through sudo when not root).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Static binaries for x86_64 and aarch64 (with completions and man page), Debian packages,
    /// checksums and the image's build context, in target/dist/.
    Dist {
        /// Then install and remove the package with apt, and build and run the image with
        /// podman, here (root).
        #[arg(long)]
        check: bool,
    },
    /// Lints, unit tests, and the integration tests on the running kernel.
    Test,
    /// The leaking HTTP client, traced by probe, then its fix.
    Demo,
    /// probe on a second kernel: Debian's stock kernel booted under qemu, a leak inside.
    VmTest,
    /// What tracing costs a churning workload, against the alternatives; writes BENCHMARKS.md.
    Bench {
        /// Rounds of every configuration, interleaved.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
        rounds: u16,
        /// Connections the workload makes in each run.
        #[arg(long, default_value_t = 20_000)]
        connections: usize,
        /// Client threads (and server threads) of the workload.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// TCP sockets held open on the host while probe attaches to it host-wide (0: skip).
        #[arg(long, default_value_t = 1_000_000)]
        scale_sockets: usize,
        /// Also measure probe built from this git revision (rows marked "before"), in the same
        /// rounds as this code.
        #[arg(long, value_name = "REV")]
        before: Option<String>,
    },
    /// The benchmark's workload: waits for `go` on stdin, churns, prints `rate CONN_PER_S`.
    #[command(hide = true)]
    Churn {
        #[arg(long)]
        connections: usize,
        #[arg(long)]
        concurrency: usize,
    },
    /// The benchmark's process churn: waits for `go`, runs PROCESSES clients of one connection
    /// each, prints `rate CONN_PER_S`.
    #[command(hide = true)]
    ProcessChurn {
        #[arg(long)]
        processes: usize,
    },
    /// One connection to SERVER, a byte each way (a client of the process churn).
    #[command(hide = true)]
    ConnectOnce {
        #[arg(long)]
        server: std::net::SocketAddr,
    },
    /// Holds PAIRS loopback connections open until stdin closes (after `go`).
    #[command(hide = true)]
    HoldOpen {
        #[arg(long)]
        pairs: usize,
    },
    /// The demo's HTTP client (used by `demo`).
    #[command(hide = true)]
    DemoClient {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long, default_value_t = 6)]
        requests: usize,
        #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
        interval: Duration,
        #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
        hold: Duration,
        /// Close each connection after its response.
        #[arg(long)]
        fixed: bool,
    },
}

fn main() -> Result<()> {
    match Xtask::parse().task {
        Task::Build => {
            let built = build::all()?;
            eprintln!(
                "xtask: built {} (kernel objects {} and {})",
                built.probe.display(),
                built.objects.stacks.display(),
                built.objects.no_stacks.display()
            );
            Ok(())
        }
        Task::Run { args } => {
            let built = build::all()?;
            let mut command = if cmd::is_root() {
                Command::new(&built.probe)
            } else {
                let mut sudo = Command::new("sudo");
                sudo.arg(&built.probe);
                sudo
            };
            cmd::run(command.args(args))
        }
        Task::Dist { check } => {
            let dist = dist::dist()?;
            for (arch, binary) in &dist.binaries {
                eprintln!("xtask: {} (static, {})", binary.display(), arch.name());
            }
            for (_, package) in &dist.packages {
                eprintln!("xtask: {}", package.display());
            }
            eprintln!(
                "xtask: {}: the tarballs, SHA256SUMS, and the image's build context \
                 (docker build -f deploy/Dockerfile --platform linux/amd64 {})",
                dist.dir.display(),
                dist.dir.display()
            );
            if check {
                dist::check(&dist)?;
            }
            Ok(())
        }
        Task::Test => test::test(),
        Task::Demo => demo::demo(),
        Task::VmTest => {
            let binaries = Arch::ALL
                .into_iter()
                .map(|arch| build::static_probe(arch).map(|binary| (arch, binary)))
                .collect::<Result<Vec<_>>>()?;
            vm::vm_test(&binaries).map(|verdicts| vm::tell(&verdicts))
        }
        Task::Bench {
            rounds,
            connections,
            concurrency,
            scale_sockets,
            before,
        } => bench::bench(
            rounds.into(),
            connections,
            concurrency,
            scale_sockets,
            before.as_deref(),
        ),
        Task::Churn {
            connections,
            concurrency,
        } => {
            workload::wait_for_go()?;
            let rate = workload::churn(connections, concurrency)?;
            println!("rate {rate:.1}");
            Ok(())
        }
        Task::ProcessChurn { processes } => {
            workload::wait_for_go()?;
            let rate = workload::process_churn(processes)?;
            println!("rate {rate:.1}");
            Ok(())
        }
        Task::ConnectOnce { server } => workload::connect_once(server),
        Task::HoldOpen { pairs } => workload::hold_open(pairs),
        Task::DemoClient {
            server,
            requests,
            interval,
            hold,
            fixed,
        } => {
            let kind = if fixed {
                workload::ClientKind::Fixed
            } else {
                workload::ClientKind::Leaky
            };
            workload::client(server, requests, interval, hold, kind)
        }
    }
}
