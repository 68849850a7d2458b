//! probe attached to a host that already holds very many TCP sockets (the DaemonSet's mode on a
//! busy node): how long until it traces, what it keeps per socket, and what it costs once there.

use std::{path::Path, thread, time::Duration};

use anyhow::Result;

use super::{
    Run,
    procfs::{cpu_seconds, hold_connections, peak_rss_kib, status_kib},
    workers::Tracer,
};

/// How long probe may take to attach to such a host before the measurement gives up.
const ATTACH_WITHIN: Duration = Duration::from_secs(300);

/// How long probe's cost is watched once attached: its stuck alerts for the connections idle
/// since before it came, and its socket-table refreshes (which come further apart the longer
/// each takes: about one in this window at a million sockets).
const STEADY: Duration = Duration::from_secs(120);
/// Readings of probe's memory at the end of [`STEADY`], this far apart.
const READINGS: u32 = 20;
const READING_EVERY: Duration = Duration::from_secs(1);

/// What attaching to a host full of sockets cost.
pub(super) struct Scale {
    /// Sockets the holders kept open (both ends of each loopback connection).
    pub(super) sockets: usize,
    /// From probe's start to its "tracing".
    pub(super) attach: Duration,
    /// probe's anonymous memory when it says it is tracing (its kernel side attached and
    /// seeded, its connection table not filled yet), KiB.
    pub(super) rss_kib: u64,
    /// probe's anonymous memory at the end of [`STEADY`], every connection in its table, KiB.
    pub(super) steady_rss_kib: u64,
    /// probe's peak resident memory (VmHWM: its refreshes' working memory included), KiB.
    pub(super) peak_kib: u64,
    /// probe's CPU time per second over [`STEADY`] after attach, the host sitting still.
    pub(super) steady_cpu: f64,
    /// Events probe lost.
    pub(super) lost: u64,
}

/// Opens `sockets` loopback sockets in processes of their own, then attaches probe host-wide.
pub(super) fn measure_scale(probe: &Path, xtask: &Path, sockets: usize) -> Result<Scale> {
    let mut holders = hold_connections(xtask, sockets)?;
    eprintln!(
        "xtask: opening {} sockets in {} processes",
        holders.sockets,
        holders.workers.len()
    );
    holders.open()?;
    let tracer = Tracer::host_wide_within(probe, ATTACH_WITHIN)?;
    let attach = tracer.ready_after;
    let rss_kib = status_kib(tracer.pid(), "RssAnon:")?;
    let before = cpu_seconds(tracer.pid())?;
    thread::sleep(STEADY - READINGS * READING_EVERY);
    // A refresh holds a reading of the whole socket table for a moment (up to a tenth of
    // probe's time): one reading of its memory could land in it. The median of many is the
    // memory between refreshes; the peak says what a refresh adds.
    let mut readings = Vec::new();
    for _ in 0..READINGS {
        thread::sleep(READING_EVERY);
        readings.push(status_kib(tracer.pid(), "RssAnon:")?);
    }
    let steady_cpu = (cpu_seconds(tracer.pid())? - before) / STEADY.as_secs_f64();
    eprintln!("xtask: probe's RssAnon at the end of the two minutes, KiB: {readings:?}");
    readings.sort_unstable();
    let steady_rss_kib = readings[readings.len() / 2];
    let peak_kib = peak_rss_kib(tracer.pid())?;
    let mut run = Run::default();
    tracer.stop(&mut run)?;
    let sockets = holders.sockets;
    holders.finish()?;
    eprintln!(
        "xtask: attached to {sockets} sockets in {:.2} s, {rss_kib} KiB then {steady_rss_kib} KiB (peak {peak_kib} KiB), {steady_cpu:.3} CPU s/s",
        attach.as_secs_f64()
    );
    Ok(Scale {
        sockets,
        attach,
        rss_kib,
        steady_rss_kib,
        peak_kib,
        steady_cpu,
        lost: run.lost,
    })
}
