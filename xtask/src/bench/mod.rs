//! `cargo xtask bench`: what tracing costs the traced workload, measured side by side in one run.
//!
//! Configurations are interleaved round by round, and the workload runs alone before the first
//! tracer run of a round and after every one: each tracer run is reported as its ratio to the
//! mean of the runs alone on both sides of it (median and spread over the rounds). Each run of a
//! workload has a network namespace of its own (see [`netns`]). Absolute times on a shared
//! 2-core machine are noise: this one changes speed by about a fifth for tens of seconds at a
//! time. A run whose two neighbours alone differ by more than [`STEADY`] had the machine change
//! speed around it, and is left out of the ratios.

mod before;
mod netns;
mod procfs;
mod report;
mod scale;
mod workers;

use std::{fs, path::Path, thread, time::Duration};

use anyhow::{Context, Result};

use crate::{build, cmd::tool_exists};
use procfs::{BpfStats, measure_memory};
use report::{Measured, bcc_tcpstates_works, report};
use workers::{Sleeper, Tracer, Worker};

/// A tcpstates-style bpftrace script: every TCP transition, with the time spent in the old
/// state, printed (as bcc's and libbpf-tools' tcpstates do; it cannot filter by owner).
pub(super) const BPFTRACE_TCPSTATES: &str = r#"
tracepoint:sock:inet_sock_set_state /args->protocol == 6/ {
    $sk = args->skaddr;
    $us = @last[$sk] ? (nsecs - @last[$sk]) / 1000 : 0;
    printf("%d %s %d %d %d %d %d\n", pid, comm, args->sport, args->dport, args->oldstate, args->newstate, $us);
    if (args->newstate == 7) { delete(@last[$sk]); } else { @last[$sk] = nsecs; }
}"#;

/// How far apart (a share of their mean) the runs alone on both sides of a tracer run may be for
/// its ratio to count.
pub(super) const STEADY: f64 = 0.10;

/// probe's arguments for the classic tracepoint program (the default is the BTF one).
const CLASSIC: &[&str] = &["--attach", "tracepoint"];

/// probe's arguments to follow the process churn's clients.
const FOLLOW: &[&str] = &["--follow-forks"];

/// Client processes in a run of the process churn (each one connection): a few seconds.
const PROCESSES: usize = 1000;

/// Connections in a run of the Python churn: a few seconds of one CPython thread.
const PYTHON_CONNECTIONS: usize = 20_000;

/// What is measured, round after round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    /// The workload alone.
    Baseline,
    /// probe tracing the workload (every transition to userspace, stacks on).
    Probe,
    /// The same without stack capture.
    ProbeNoStacks,
    /// probe tracing the workload with the classic tracepoint program.
    ProbeClassic,
    /// probe with no target: every process of the host (the DaemonSet's mode).
    ProbeHostWide,
    /// probe tracing an unrelated idle process: in-kernel filtering only.
    ProbeIdle,
    /// The same with the classic tracepoint program.
    ProbeIdleClassic,
    /// [`Config::Probe`] with probe built from the `--before` revision.
    BeforeProbe,
    /// [`Config::ProbeHostWide`] with probe built from the `--before` revision.
    BeforeHostWide,
    /// [`Config::ProbeIdle`] with probe built from the `--before` revision.
    BeforeIdle,
    /// bpftrace with a tcpstates-style script.
    Bpftrace,
    /// The Go HTTP churn alone.
    GoBaseline,
    /// probe tracing the Go HTTP churn: its runtime uprobes on every dial.
    GoProbe,
    /// The same with stacks but without the uprobes.
    GoProbeNoHooks,
    /// The same without stacks, so without uprobes.
    GoProbeNoStacks,
    /// The process churn alone: a new process per connection.
    ProcessBaseline,
    /// probe following the process churn's children: every connect copies its user stack.
    ProcessProbe,
    /// The same without stacks, so without copies.
    ProcessProbeNoStacks,
    /// The Python churn alone: connections from CPython code.
    PythonBaseline,
    /// probe tracing the Python churn: the kernel program walks the interpreter's frames at
    /// every connect.
    PythonProbe,
    /// The same without stacks, so without the walk.
    PythonProbeNoStacks,
}

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::Baseline => "1. no tracer (baseline)",
            Config::Probe => "2. probe --pid WORKLOAD",
            Config::ProbeNoStacks => "2b. probe --pid WORKLOAD --no-stacks",
            Config::ProbeClassic => "2c. probe --pid WORKLOAD --attach tracepoint",
            Config::ProbeIdle => "3. probe --pid IDLE (unrelated)",
            Config::ProbeIdleClassic => "3b. probe --pid IDLE --attach tracepoint",
            Config::ProbeHostWide => "2d. probe host-wide (no target)",
            Config::BeforeProbe => "2 (before). probe --pid WORKLOAD",
            Config::BeforeHostWide => "2d (before). probe host-wide (no target)",
            Config::BeforeIdle => "3 (before). probe --pid IDLE (unrelated)",
            Config::Bpftrace => "4. bpftrace tcpstates-style script",
            Config::GoBaseline => "5. Go HTTP churn, no tracer (its baseline)",
            Config::GoProbe => "5a. probe --pid GO_CHURN (runtime uprobes)",
            Config::GoProbeNoHooks => "5b. probe --pid GO_CHURN --no-runtime-hooks",
            Config::GoProbeNoStacks => "5c. probe --pid GO_CHURN --no-stacks (no uprobes)",
            Config::ProcessBaseline => "6. process churn, no tracer (its baseline)",
            Config::ProcessProbe => {
                "6a. probe --pid CHURN --follow-forks (a stack copy per connect)"
            }
            Config::ProcessProbeNoStacks => "6b. probe --pid CHURN --follow-forks --no-stacks",
            Config::PythonBaseline => "7. Python churn, no tracer (its baseline)",
            Config::PythonProbe => "7a. probe --pid PY_CHURN (a CPython frame walk per connect)",
            Config::PythonProbeNoStacks => "7b. probe --pid PY_CHURN --no-stacks (no walk)",
        }
    }

    /// The workload alone that a run of this configuration is paired with.
    fn baseline(self) -> Config {
        match self {
            Config::GoBaseline
            | Config::GoProbe
            | Config::GoProbeNoHooks
            | Config::GoProbeNoStacks => Config::GoBaseline,
            Config::ProcessBaseline | Config::ProcessProbe | Config::ProcessProbeNoStacks => {
                Config::ProcessBaseline
            }
            Config::PythonBaseline | Config::PythonProbe | Config::PythonProbeNoStacks => {
                Config::PythonBaseline
            }
            _ => Config::Baseline,
        }
    }

    /// Whether this is a workload alone.
    fn is_baseline(self) -> bool {
        self.baseline() == self
    }
}

/// One measured run.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Run {
    /// Connections per second of the workload.
    rate: f64,
    /// Transitions the tracer delivered (lines it printed).
    transitions: u64,
    /// Events the tracer reported lost.
    lost: u64,
    /// Transition lines probe did not write for a reader that fell behind (the events were
    /// read and applied).
    lines_dropped: u64,
    /// The tracer's CPU time.
    cpu_seconds: f64,
    /// The tracer's peak resident memory, KiB.
    peak_rss_kib: u64,
    /// Runs of the tracer's BPF programs, and the time they took (kernel.bpf_stats_enabled).
    program_runs: u64,
    program_ns: u64,
    /// The workload's wall time, seconds.
    seconds: f64,
    /// Connections per second of the workload alone next to this run: the mean of the runs
    /// alone before and after it (its own rate for a run alone).
    paired_rate: f64,
    /// Whether the runs alone before and after it are within [`STEADY`] of each other.
    steady: bool,
}

/// Runs the benchmark and writes BENCHMARKS.md.
pub fn bench(
    rounds: usize,
    connections: usize,
    concurrency: usize,
    scale_sockets: usize,
    before_revision: Option<&str>,
) -> Result<()> {
    let earlier = before_revision.map(before::build).transpose()?;
    let built = build::all()?;
    let xtask = std::env::current_exe().context("cannot find the xtask binary")?;
    let bpftrace = tool_exists("bpftrace") || crate::toolchain::apt_install(&["bpftrace"]).is_ok();
    let bcc = bcc_tcpstates_works();
    let go_churn = workers::build_go_churn()?;
    let mut configs = vec![
        Config::Baseline,
        Config::Probe,
        Config::ProbeNoStacks,
        Config::ProbeClassic,
        Config::ProbeHostWide,
        Config::ProbeIdle,
        Config::ProbeIdleClassic,
    ];
    if earlier.is_some() {
        configs.extend([
            Config::BeforeProbe,
            Config::BeforeHostWide,
            Config::BeforeIdle,
        ]);
    }
    if bpftrace {
        configs.push(Config::Bpftrace);
    }
    configs.extend([
        Config::GoBaseline,
        Config::GoProbe,
        Config::GoProbeNoHooks,
        Config::GoProbeNoStacks,
        Config::ProcessBaseline,
        Config::ProcessProbe,
        Config::ProcessProbeNoStacks,
        Config::PythonBaseline,
        Config::PythonProbe,
        Config::PythonProbeNoStacks,
    ]);
    let probes = Probes {
        now: &built.probe,
        before: earlier.as_ref().map(|earlier| earlier.probe.as_path()),
    };
    let workloads = Workloads {
        xtask: &xtask,
        go_churn: &go_churn,
        connections,
        concurrency,
    };

    // First, on a quiet host: the sockets held for it are closed before the rounds.
    let scale = (scale_sockets > 0)
        .then(|| scale::measure_scale(&built.probe, &xtask, scale_sockets))
        .transpose()?;

    let mut runs: Vec<(usize, Config, Run)> = Vec::new();
    let tracers: Vec<Config> = configs
        .iter()
        .copied()
        .filter(|&config| !config.is_baseline())
        .collect();
    for round in 0..rounds {
        // Rotate the order each round, so no configuration always runs first or last.
        let mut order = tracers.clone();
        order.rotate_left(round % tracers.len());
        let measure_alone = |runs: &mut Vec<(usize, Config, Run)>, baseline: Config| {
            let mut run = measure(baseline, &probes, &workloads)
                .with_context(|| format!("round {round}, {}", baseline.label()))?;
            run.paired_rate = run.rate;
            run.steady = true;
            runs.push((round, baseline, run));
            anyhow::Ok(run)
        };
        // The run alone after one tracer run is the one before the next, of the same workload.
        let mut alone: Option<(Config, Run)> = None;
        for config in order {
            let baseline = config.baseline();
            let before = match alone {
                Some((kind, run)) if kind == baseline => run,
                _ => measure_alone(&mut runs, baseline)?,
            };
            let mut traced = measure(config, &probes, &workloads)
                .with_context(|| format!("round {round}, {}", config.label()))?;
            let after = measure_alone(&mut runs, baseline)?;
            traced.paired_rate = (before.rate + after.rate) / 2.0;
            traced.steady = (before.rate - after.rate).abs() <= STEADY * traced.paired_rate;
            eprintln!(
                "xtask: round {} {:<45} {:>8.0} conn/s (alone: {:.0} before, {:.0} after{}), {} transitions, {} lost",
                round + 1,
                config.label(),
                traced.rate,
                before.rate,
                after.rate,
                if traced.steady { "" } else { ": left out" },
                traced.transitions,
                traced.lost
            );
            runs.push((round, config, traced));
            alone = Some((baseline, after));
        }
    }
    // The kernel programs' own time per run, in a round of its own: kernel.bpf_stats_enabled
    // adds two clock reads to every run of every program, which the rounds above must not pay.
    let stats = BpfStats::enable();
    let mut timed: Vec<(Config, Run)> = Vec::new();
    for &config in &tracers {
        let run = measure(config, &probes, &workloads)
            .with_context(|| format!("timing round, {}", config.label()))?;
        timed.push((config, run));
    }
    drop(stats);
    let memory = measure_memory(&built.probe, &xtask, 100_000)?;
    let memory_before = earlier
        .as_ref()
        .map(|earlier| measure_memory(&earlier.probe, &xtask, 100_000))
        .transpose()?;
    let measured = Measured {
        runs: &runs,
        timed: &timed,
        memory: &memory,
        before: earlier
            .as_ref()
            .zip(memory_before.as_ref())
            .map(|(earlier, memory)| (earlier.revision.as_str(), memory)),
        scale: scale.as_ref(),
    };
    let report = report(measured, &configs, rounds, connections, concurrency, &bcc);
    println!("{report}");
    let path = build::workspace_root().join("BENCHMARKS.md");
    fs::write(&path, report).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

/// The probe binaries measured: this code's, and the `--before` revision's.
struct Probes<'a> {
    now: &'a Path,
    before: Option<&'a Path>,
}

/// The workloads' binaries and size.
struct Workloads<'a> {
    xtask: &'a Path,
    go_churn: &'a Path,
    connections: usize,
    concurrency: usize,
}

/// How long the kernel may take to free the network namespace of the run before (its tens of
/// thousands of TIME_WAIT sockets: about 60 ms of a kernel worker here), so that no run pays for it.
const TEARDOWN: Duration = Duration::from_millis(300);

fn measure(config: Config, probes: &Probes, workloads: &Workloads) -> Result<Run> {
    let probe = probes.now;
    let before = || {
        probes
            .before
            .context("a `before` configuration without --before")
    };
    let (connections, concurrency) = (workloads.connections, workloads.concurrency);
    thread::sleep(TEARDOWN);
    let (workload, connections) = match config.baseline() {
        Config::GoBaseline => (
            Worker::go_churn(workloads.go_churn, connections, concurrency)?,
            connections,
        ),
        Config::ProcessBaseline => (
            Worker::process_churn(workloads.xtask, PROCESSES)?,
            PROCESSES,
        ),
        Config::PythonBaseline => (
            Worker::python_churn(PYTHON_CONNECTIONS)?,
            PYTHON_CONNECTIONS,
        ),
        _ => (
            Worker::churn(workloads.xtask, connections, concurrency)?,
            connections,
        ),
    };
    let idle = Sleeper::start()?;
    let tracer = match config {
        Config::Baseline
        | Config::GoBaseline
        | Config::ProcessBaseline
        | Config::PythonBaseline => None,
        Config::ProcessProbe => Some(Tracer::probe(probe, workload.pid(), FOLLOW)?),
        Config::ProcessProbeNoStacks => Some(Tracer::probe(
            probe,
            workload.pid(),
            &["--follow-forks", "--no-stacks"],
        )?),
        Config::Probe | Config::GoProbe | Config::PythonProbe => {
            Some(Tracer::probe(probe, workload.pid(), &[])?)
        }
        Config::ProbeNoStacks | Config::GoProbeNoStacks | Config::PythonProbeNoStacks => {
            Some(Tracer::probe(probe, workload.pid(), &["--no-stacks"])?)
        }
        Config::GoProbeNoHooks => Some(Tracer::probe(
            probe,
            workload.pid(),
            &["--no-runtime-hooks"],
        )?),
        Config::ProbeClassic => Some(Tracer::probe(probe, workload.pid(), CLASSIC)?),
        Config::ProbeHostWide => Some(Tracer::host_wide(probe)?),
        Config::ProbeIdle => Some(Tracer::probe(probe, idle.pid(), &[])?),
        Config::ProbeIdleClassic => Some(Tracer::probe(probe, idle.pid(), CLASSIC)?),
        Config::BeforeProbe => Some(Tracer::probe(before()?, workload.pid(), &[])?),
        Config::BeforeHostWide => Some(Tracer::host_wide(before()?)?),
        Config::BeforeIdle => Some(Tracer::probe(before()?, idle.pid(), &[])?),
        Config::Bpftrace => Some(Tracer::bpftrace()?),
    };
    let rate = workload.run_churn()?;
    let mut run = Run {
        rate,
        seconds: connections as f64 / rate,
        ..Run::default()
    };
    if let Some(tracer) = tracer {
        tracer.stop(&mut run)?;
    }
    Ok(run)
}
