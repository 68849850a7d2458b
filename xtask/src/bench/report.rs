//! BENCHMARKS.md: the table, the method, the machine.

use std::{fmt::Write as _, fs, path::PathBuf, process::Command, thread};

use anyhow::Result;

use super::{Config, Run, procfs::Memory, scale::Scale};

/// Whether bcc's tcpstates runs on this kernel, and if not, why.
pub(super) fn bcc_tcpstates_works() -> Result<(), String> {
    let tool = PathBuf::from("/usr/sbin/tcpstates-bpfcc");
    if !tool.exists() && crate::toolchain::apt_install(&["bpfcc-tools"]).is_err() {
        return Err("bpfcc-tools could not be installed".into());
    }
    let output = Command::new("timeout")
        .args(["10", "/usr/sbin/tcpstates-bpfcc"])
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    match stderr.lines().find(|l| l.contains("kernel headers")) {
        Some(line) => Err(line.trim().to_string()),
        None if output.status.code() == Some(124) => Ok(()),
        None => Err(stderr
            .lines()
            .last()
            .unwrap_or("it failed")
            .trim()
            .to_string()),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Everything measured: the rounds, the timing round, the memory run.
pub(super) struct Measured<'a> {
    pub(super) runs: &'a [(usize, Config, Run)],
    pub(super) timed: &'a [(Config, Run)],
    pub(super) memory: &'a Memory,
    /// The `--before` revision and its memory run.
    pub(super) before: Option<(&'a str, &'a Memory)>,
    pub(super) scale: Option<&'a Scale>,
}

pub(super) fn report(
    measured: Measured,
    configs: &[Config],
    rounds: usize,
    connections: usize,
    concurrency: usize,
    bcc: &Result<(), String>,
) -> String {
    let Measured {
        runs,
        timed,
        memory,
        before,
        scale,
    } = measured;
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "What tracing costs a connection-churning workload, measured side by side in one run of `cargo xtask bench --rounds {rounds} --connections {connections} --concurrency {concurrency}`.\n"
    );
    let _ = writeln!(out, "Machine: {}.\n", machine());
    let _ = writeln!(
        out,
        "Workload: one process with a loopback server and {concurrency} client threads making {connections} connections (connect, one byte each way, client closes first), so every connection makes ten TCP state transitions of that process. Each client thread connects from a loopback address of its own (so the run never runs out of ephemeral ports), and each run of a workload has a network namespace of its own: it starts with no TIME_WAIT sockets and leaves none to the next run (in a shared one, runs alternated between making a TIME_WAIT socket per connection and, past the kernel's limit of them, none, at about half and full speed). The configurations run interleaved, {rounds} rounds, in a rotating order, and the workload runs alone before the first tracer run of a round and after every one. Ratio: a tracer run's rate over the mean of the runs alone just before and just after it, median over the rounds [min, max]. This shared machine still changes speed by about a fifth for tens of seconds at a time: a run whose two neighbours alone differ by more than {steady:.0}% had it change speed around it and is left out (the rounds kept are counted where some were). The baseline row's rate is the median of all the runs alone.\n",
        steady = super::STEADY * 100.0
    );
    let _ = writeln!(
        out,
        "| configuration | workload conn/s (median) | throughput vs baseline | transitions delivered/s | events lost | tracer CPU s per million transitions | kernel program ns per run | tracer peak RSS |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for &config in configs {
        let mine: Vec<&Run> = runs
            .iter()
            .filter(|(_, c, _)| *c == config)
            .map(|(_, _, run)| run)
            .collect();
        let mut rates: Vec<f64> = mine.iter().map(|r| r.rate).collect();
        let steady: Vec<&Run> = mine.iter().copied().filter(|run| run.steady).collect();
        // With every run left out, all of them, said so.
        let counted = if steady.is_empty() { &mine } else { &steady };
        let mut ratios: Vec<f64> = counted
            .iter()
            .map(|run| run.rate / run.paired_rate)
            .collect();
        let kept = match (steady.len(), mine.len()) {
            (kept, all) if kept == all => String::new(),
            (0, all) => format!(", all {all} rounds: none steady"),
            (kept, all) => format!(", {kept} of {all} rounds"),
        };
        let (low, high) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &r| (l.min(r), h.max(r)));
        let transitions: u64 = mine.iter().map(|r| r.transitions).sum();
        let seconds: f64 = mine.iter().map(|r| r.seconds).sum();
        let cpu: f64 = mine.iter().map(|r| r.cpu_seconds).sum();
        let lost: u64 = mine.iter().map(|r| r.lost).sum();
        let lines_dropped: u64 = mine.iter().map(|r| r.lines_dropped).sum();
        let lost = match lines_dropped {
            0 => lost.to_string(),
            dropped => format!("{lost} ({dropped} lines not written)"),
        };
        let rss = mine.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
        let (program_runs, program_ns) = timed
            .iter()
            .find(|(c, _)| *c == config)
            .map_or((0, 0), |(_, run)| (run.program_runs, run.program_ns));
        let tracer = !config.is_baseline();
        let dash = || "-".to_string();
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.3} [{:.3}, {:.3}{kept}] | {} | {} | {} | {} | {} |",
            config.label(),
            median(&mut rates),
            median(&mut ratios),
            low,
            high,
            if tracer {
                format!("{:.0}", transitions as f64 / seconds)
            } else {
                dash()
            },
            if tracer { lost } else { dash() },
            if tracer && transitions > 0 {
                format!("{:.2}", cpu / transitions as f64 * 1e6)
            } else {
                dash()
            },
            if program_runs > 0 {
                format!("{:.0}", program_ns as f64 / program_runs as f64)
            } else {
                dash()
            },
            if tracer {
                format!("{:.1} MiB", rss as f64 / 1024.0)
            } else {
                dash()
            },
        );
    }
    let per_connection = bytes_per_connection(memory);
    let _ = writeln!(
        out,
        "\nMemory with {} open connections tracked (both ends of {} loopback connections, held by processes that probe traces): probe's anonymous memory (its heap: RssAnon) {:.1} MiB, against {:.1} MiB when tracing an idle process: **{:.0} bytes per tracked connection**; {} events lost while they opened.\n",
        memory.connections,
        memory.connections / 2,
        memory.loaded_rss_kib as f64 / 1024.0,
        memory.idle_rss_kib as f64 / 1024.0,
        per_connection,
        memory.lost
    );
    if let Some((revision, memory)) = before {
        let _ = writeln!(
            out,
            "The same with probe built from {revision} (`--before`): {:.1} MiB against {:.1} MiB, **{:.0} bytes per tracked connection**; {} events lost.\n",
            memory.loaded_rss_kib as f64 / 1024.0,
            memory.idle_rss_kib as f64 / 1024.0,
            bytes_per_connection(memory),
            memory.lost
        );
    }
    if let Some(scale) = scale {
        let _ = writeln!(
            out,
            "At scale: probe host-wide (no target) started on a host holding {} open TCP sockets (both ends of {} loopback connections, in processes of their own) was tracing after **{:.2} s**, its anonymous memory then {:.1} MiB (kernel side attached and seeded, connection table not yet filled). Two minutes later (its stuck alerts for the connections idle since before it came, its socket-table refreshes) its anonymous memory between refreshes (the median of 20 readings over the last 20 s) was {:.1} MiB, **{:.0} bytes per socket** it follows, and its peak resident memory (VmHWM, a refresh's working memory included) {:.1} MiB, {:.0} bytes per socket; it took {:.1}% of one CPU over those two minutes; {} events lost.\n",
            scale.sockets,
            scale.sockets / 2,
            scale.attach.as_secs_f64(),
            scale.rss_kib as f64 / 1024.0,
            scale.steady_rss_kib as f64 / 1024.0,
            (scale.steady_rss_kib * 1024) as f64 / scale.sockets as f64,
            scale.peak_kib as f64 / 1024.0,
            (scale.peak_kib * 1024) as f64 / scale.sockets as f64,
            scale.steady_cpu * 100.0,
            scale.lost
        );
    }
    let _ = writeln!(out, "Notes:\n");
    let _ = writeln!(
        out,
        "- 2d runs probe with no target: it traces every process of the host (the DaemonSet's mode), the workload's transitions and everyone else's, keeping the triage (alerts, ranked table) without a line per transition; its transitions delivered/s counts the lines it printed."
    );
    let _ = writeln!(
        out,
        "- 5 is a second workload: a Go program whose HTTP client makes each request on a new connection (keep-alives off) against its own server, {concurrency} goroutines, {connections} requests; 5a, 5b and 5c are paired with it. With stacks on (5a) every dial also runs probe's uprobes on `net/http.(*Transport).queueForDial` and `dialConnFor`, which name the code that asked for the connection; 5b keeps the stacks without the uprobes (`--no-runtime-hooks`); 5c has neither."
    );
    let _ = writeln!(
        out,
        "- 6 is a third workload: a process that runs 1000 short-lived client processes one after the other (this benchmark's own binary, as a shell loop runs `curl`), each making one connection to the server in the parent and exiting; 6a and 6b follow its children (`--follow-forks`). Each connection is the first of its process, so with stacks on (6a) the kernel program copies the registers and 8 KiB of user stack at every connect, and probe unwinds every copy; 6b takes no stacks."
    );
    let _ = writeln!(
        out,
        "- 7 is a fourth workload: Debian's CPython (`/usr/bin/python3`, no flags) making 20,000 connections one after the other from a function a few calls deep, to a server thread in the same process. With stacks on (7a) the kernel program walks the interpreter's frames at every connect (finding the thread's state, reading each frame's code object and instruction, storing the stack once); 7b takes no stacks, so no walk."
    );
    let _ = writeln!(
        out,
        "- Kernel program ns per run: the average time of the tracer's BPF programs per run (all its programs), measured in one more run of each configuration with `kernel.bpf_stats_enabled` on; it is off during the rounds, because it adds two clock reads to every run of every program. For probe on an unrelated pid (3) every run is a transition it filters out; for (2) most runs deliver an event."
    );
    let _ = writeln!(
        out,
        "- probe (2) delivers only the workload's transitions and keeps the full model (lifecycles, deadlines, stacks on connects); bpftrace (4) prints every TCP transition of the host with the time in the old state, as tcpstates does, and keeps no model."
    );
    let _ = writeln!(
        out,
        "- probe attaches its BTF tracepoint program (`tp_btf`) by default: the kernel hands it the socket without filling a trace record, and it reads the socket's fields only for transitions it keeps. 2c and 3b run the classic tracepoint program (`--attach tracepoint`, for kernels without BTF), which copies the record the kernel fills for every transition."
    );
    if let Some((revision, _)) = before {
        let _ = writeln!(
            out,
            "- Rows marked (before) run probe built from {revision} (`cargo xtask bench --before {revision}`), in the same rounds as this code: the before and after of the changes since."
        );
    }
    let _ = writeln!(
        out,
        "- Transitions delivered/s is over the workload's run time; a tracer that keeps up delivers about ten per connection."
    );
    match bcc {
        Ok(()) => {
            let _ = writeln!(
                out,
                "- bcc's tcpstates runs on this kernel but is not part of this table."
            );
        }
        Err(why) => {
            let _ = writeln!(
                out,
                "- bcc's `tcpstates-bpfcc` (Debian bpfcc-tools) does not run on this kernel: \"{why}\" (bcc compiles its programs at start against kernel headers, which this kernel does not ship)."
            );
        }
    }
    out
}

/// probe's anonymous memory per tracked connection, over what it holds tracing an idle process.
fn bytes_per_connection(memory: &Memory) -> f64 {
    (memory.loaded_rss_kib.saturating_sub(memory.idle_rss_kib) * 1024) as f64
        / memory.connections as f64
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let memory = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024 / 1024);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {memory} GiB, Linux {}",
        kernel.trim()
    )
}
