//! The triage in the JSON summary: `processes` and `ports`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::track::triage::{PortReport, ProcessReport};

/// One process of the triage table.
#[derive(Serialize)]
pub struct ProcessRecord<'a> {
    pid: u32,
    comm: &'a str,
    container: Option<&'a str>,
    pod: Option<&'a str>,
    cgroup: Option<&'a str>,
    open: usize,
    counts: BTreeMap<&'static str, usize>,
    stuck: usize,
    /// The largest group of stuck connections: state, the endpoint they are known by (see
    /// [`crate::track::ConnectionView::known_by`]), count and its rate.
    worst: Option<WorstRecord>,
    /// Stuck connections per minute, by the trend over the run.
    leak_per_min: Option<f64>,
    /// When the oldest stuck connection entered its state (RFC 3339).
    onset: Option<String>,
    /// That connection predates probe: `onset` is the latest it can have been.
    onset_estimated: bool,
    fds_open: Option<u64>,
    fd_limit: Option<u64>,
    /// Seconds until no file descriptor is left, at the trend; null when not growing.
    fd_exhaustion_s: Option<f64>,
}

#[derive(Serialize)]
struct WorstRecord {
    state: &'static str,
    daddr: String,
    dport: u16,
    count: usize,
    per_minute: Option<f64>,
}

/// One destination's ephemeral ports.
#[derive(Serialize)]
pub struct PortRecord {
    saddr: String,
    daddr: String,
    dport: u16,
    in_use: u32,
    /// `ip_local_port_range`, inclusive.
    range: [u16; 2],
    /// Seconds until connect() to it fails, at the trend; null when not growing.
    exhaustion_s: Option<f64>,
}

/// `report` as a record; `onset` already formatted.
pub fn process(report: &ProcessReport, onset: Option<String>) -> ProcessRecord<'_> {
    ProcessRecord {
        pid: report.pid,
        comm: &report.comm,
        container: report.placement.container.as_deref(),
        pod: report.placement.pod.as_deref(),
        cgroup: report.placement.cgroup.as_deref(),
        open: report.open,
        counts: report
            .counts
            .iter()
            .map(|(state, n)| (state.name(), *n))
            .collect(),
        stuck: report.stuck,
        worst: report.worst.as_ref().map(|worst| WorstRecord {
            state: worst.state.name(),
            daddr: worst.endpoint.ip().to_string(),
            dport: worst.endpoint.port(),
            count: worst.count,
            per_minute: worst.per_minute.map(round),
        }),
        leak_per_min: report.leak_per_min.map(round),
        onset,
        onset_estimated: report.onset_estimated,
        fds_open: report.fds_open,
        fd_limit: report.fd_limit,
        fd_exhaustion_s: report.fd_exhaustion.map(|left| round(left.as_secs_f64())),
    }
}

/// `report` as a record.
pub fn port(report: &PortReport) -> PortRecord {
    PortRecord {
        saddr: report.key.saddr.to_string(),
        daddr: report.key.daddr.to_string(),
        dport: report.key.dport,
        in_use: report.in_use,
        range: [report.range.0, report.range.1],
        exhaustion_s: report.exhaustion.map(|left| round(left.as_secs_f64())),
    }
}

/// Two decimals are all a trend can claim.
fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
