//! Readings from /proc: CPU time, memory, and the BPF programs' own statistics.

use std::{fs, path::Path, thread, time::Duration};

use anyhow::{Context, Result};

use super::{
    Run,
    workers::{Sleeper, Tracer, Worker},
};

/// User plus system CPU time of `pid` so far.
/// Runs and run time of the BPF programs `pid` holds, from its fdinfo (zero unless
/// kernel.bpf_stats_enabled is on).
pub(super) fn bpf_program_stats(pid: u32) -> (u64, u64) {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (0, 0);
    };
    let mut totals = (0, 0);
    for entry in entries.flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        if !info.contains("prog_type:") {
            continue;
        }
        let value = |key: &str| -> u64 {
            info.lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        totals.0 += value("run_cnt:");
        totals.1 += value("run_time_ns:");
    }
    totals
}

/// Turns on the kernel's BPF program statistics for as long as it lives.
pub(super) struct BpfStats {
    before: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub(super) fn enable() -> BpfStats {
        let before = fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
        if fs::write(BPF_STATS, "1").is_err() {
            eprintln!("xtask: cannot turn on {BPF_STATS}: no kernel program times");
        }
        BpfStats { before }
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, self.before.trim());
    }
}

pub(super) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the parenthesised name: utime and stime are the 12th and 13th.
    let after_name = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / per_second)
}

/// Peak resident memory of `pid`, KiB.
pub(super) fn peak_rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM:")
}

pub(super) fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} for {pid}"))
}

/// probe's memory while it tracks `pairs * 2` open connections, against an idle probe.
pub(super) struct Memory {
    pub(super) connections: usize,
    pub(super) idle_rss_kib: u64,
    pub(super) loaded_rss_kib: u64,
    pub(super) lost: u64,
}

pub(super) fn measure_memory(probe: &Path, xtask: &Path, connections: usize) -> Result<Memory> {
    let idle_target = Sleeper::start()?;
    let idle = Tracer::probe(probe, idle_target.pid(), &[])?;
    thread::sleep(Duration::from_millis(500));
    // Anonymous memory only: probe's own heap, not the kernel ring buffer's pages mapped into it.
    let idle_rss_kib = status_kib(idle.pid(), "RssAnon:")?;
    idle.stop(&mut Run::default())?;

    let mut holders = hold_connections(xtask, connections)?;
    let mut args: Vec<String> = ["--max-sockets", "262144", "--established-after", "1h"]
        .map(String::from)
        .to_vec();
    for holder in &holders.workers {
        args.extend(["--pid".to_string(), holder.pid().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tracer = Tracer::probe(probe, holders.workers[0].pid(), &args)?;
    holders.open()?;
    // Let probe take in every transition.
    thread::sleep(Duration::from_secs(3));
    let loaded_rss_kib = status_kib(tracer.pid(), "RssAnon:")?;
    let mut run = Run::default();
    tracer.stop(&mut run)?;
    let lost = run.lost;
    let connections = holders.sockets;
    holders.finish()?;
    Ok(Memory {
        connections,
        idle_rss_kib,
        loaded_rss_kib,
        lost,
    })
}

/// Processes holding open loopback connections (both ends), told to open them by [`Holders::open`].
pub(super) struct Holders {
    pub(super) workers: Vec<Worker>,
    /// Sockets they hold once open: both ends of every connection.
    pub(super) sockets: usize,
}

/// Holders for at least `sockets` sockets, started but not yet connecting. One process may hold
/// only so many files: they are spread over as many holders as that takes, each with its own
/// listening ports (so no destination runs short of ephemeral ports).
pub(super) fn hold_connections(xtask: &Path, sockets: usize) -> Result<Holders> {
    let per_holder = (crate::workload::fd_hard_limit().saturating_sub(128) / 2).clamp(1, 50_000);
    let needed = (sockets / 2).div_ceil(per_holder);
    let hold = ["hold-open", "--pairs", &per_holder.to_string()].map(String::from);
    let workers = (0..needed)
        .map(|_| Worker::start(xtask, &hold, "a connection holder"))
        .collect::<Result<Vec<_>>>()?;
    Ok(Holders {
        workers,
        sockets: needed * per_holder * 2,
    })
}

impl Holders {
    /// Lets them all connect, and waits until every connection is open.
    pub(super) fn open(&mut self) -> Result<()> {
        for holder in &mut self.workers {
            holder.go()?;
        }
        for holder in &self.workers {
            let ready = holder.answer("a connection holder")?;
            eprintln!("xtask: holder {} {ready}", holder.pid());
        }
        Ok(())
    }

    /// Lets go of every connection.
    pub(super) fn finish(self) -> Result<()> {
        for holder in self.workers {
            holder.finish()?;
        }
        Ok(())
    }
}
