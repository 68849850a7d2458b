//! The triage in the JSON summary: `processes` and `ports`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    output::format::rank_reason,
    track::triage::{PortReport, ProcessReport},
};

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
    /// Stuck connections per minute, where they keep piling up; null where they do not.
    leak_per_min: Option<f64>,
    /// The readings that rate rests on, and the seconds they span.
    leak_readings: Option<usize>,
    leak_span_s: Option<f64>,
    /// The processes holding the other ends of its stuck connections, where those are traced
    /// too (a local server's workers): they are not counted stuck themselves.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    other_ends: Vec<OtherEndRecord<'a>>,
    /// Why the process is where it is in `processes` (ranked by urgency: what runs out first,
    /// then what grows fastest, then what is stuck most).
    rank_reason: String,
    /// When the oldest stuck connection entered its state (RFC 3339).
    onset: Option<String>,
    /// That connection predates probe: `onset` is the latest it can have been.
    onset_estimated: bool,
    fds_open: Option<u64>,
    fd_limit: Option<u64>,
    /// How fast the open file descriptors keep growing, per minute, and the readings and
    /// seconds that rests on; null where they do not.
    fd_growth_per_min: Option<f64>,
    fd_growth_readings: Option<usize>,
    fd_growth_span_s: Option<f64>,
    /// Seconds until no file descriptor is left, at `fd_growth_per_min`; null without it.
    fd_exhaustion_s: Option<f64>,
}

#[derive(Serialize)]
struct OtherEndRecord<'a> {
    pid: u32,
    comm: &'a str,
    connections: usize,
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
        leak_readings: report.leak_evidence.map(|(readings, _)| readings),
        leak_span_s: report
            .leak_evidence
            .map(|(_, span)| round(span.as_secs_f64())),
        rank_reason: rank_reason(report),
        other_ends: report
            .other_ends
            .iter()
            .map(|end| OtherEndRecord {
                pid: end.pid,
                comm: &end.comm,
                connections: end.connections,
            })
            .collect(),
        onset,
        onset_estimated: report.onset_estimated,
        fds_open: report.fds_open,
        fd_limit: report.fd_limit,
        fd_growth_per_min: report.fd_growth.map(|(rate, _, _)| round(rate)),
        fd_growth_readings: report.fd_growth.map(|(_, readings, _)| readings),
        fd_growth_span_s: report
            .fd_growth
            .map(|(_, _, span)| round(span.as_secs_f64())),
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
