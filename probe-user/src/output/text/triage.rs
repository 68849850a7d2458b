//! The triage table of the text summary: the processes that leak, the most urgent first (what
//! runs out first, then what grows fastest, then what is stuck most), how fast and since when,
//! and how long until their file descriptors or a destination's ephemeral ports run out.

use std::io::{self, Write};

use probe_common::TcpState;

use crate::{
    clock::WallClock,
    output::{
        escape::terminal,
        format::{about, per_minute, short_duration, time_of_day},
    },
    track::{
        Summary,
        triage::{Placement, PortReport, ProcessReport},
    },
};

/// Processes listed at most (the rest are counted).
const SHOWN: usize = 20;

/// Writes the table, when there is anything to tell: processes with stuck connections or a
/// file descriptor forecast, destinations whose ports run out.
pub fn write(out: &mut impl Write, summary: &Summary, clock: WallClock) -> io::Result<()> {
    let telling: Vec<&ProcessReport> = summary
        .processes
        .iter()
        .filter(|p| p.stuck > 0 || p.fd_exhaustion.is_some())
        .collect();
    if !telling.is_empty() {
        writeln!(out, "processes, most urgent first:")?;
        for report in telling.iter().take(SHOWN) {
            writeln!(out, "  {}", process_line(report, clock))?;
        }
        if telling.len() > SHOWN {
            writeln!(out, "  ... and {} more", telling.len() - SHOWN)?;
        }
    }
    let filling: Vec<&PortReport> = summary
        .ports
        .iter()
        .filter(|p| p.exhaustion.is_some())
        .collect();
    if !filling.is_empty() {
        writeln!(out, "ephemeral ports running out:")?;
        for report in filling.iter().take(SHOWN) {
            writeln!(out, "  {}", port_line(report))?;
        }
    }
    Ok(())
}

/// `pid 4242 (api) pod 9f1c2ab3 container 0b1c2d3e4f5a: 412 CLOSE_WAIT to 10.0.3.7:5432,
/// +38/min (12 readings over 1m05s) since 09:12:01; fds 3980 of 4096, +38/min (12 readings
/// over 1m05s): out in ~3m`, or `..., not growing since ...` for stuck connections that no
/// longer pile up. Each forecast says the rate it comes from.
pub fn process_line(report: &ProcessReport, clock: WallClock) -> String {
    let mut line = format!(
        "pid {} ({}){}",
        report.pid,
        terminal(&report.comm),
        placement(&report.placement)
    );
    match &report.worst {
        Some(worst) => {
            let to = if worst.state == TcpState::Listen {
                "on"
            } else {
                "to"
            };
            line.push_str(&format!(
                ": {} {} {to} {}",
                worst.count,
                worst.state.name(),
                worst.endpoint
            ));
            if report.stuck > worst.count {
                line.push_str(&format!(" ({} stuck in all)", report.stuck));
            }
            match (report.leak_per_min, report.leak_evidence) {
                (Some(rate), Some((readings, span))) => line.push_str(&format!(
                    ", +{}/min ({readings} readings over {})",
                    per_minute(rate),
                    short_duration(span)
                )),
                (Some(rate), None) => line.push_str(&format!(", +{}/min", per_minute(rate))),
                (None, _) => line.push_str(", not growing"),
            }
            if let Some(onset) = report.onset {
                let since = time_of_day(clock.to_system_time(onset));
                line.push_str(&if report.onset_estimated {
                    format!(" since {since} or before")
                } else {
                    format!(" since {since}")
                });
            }
        }
        None => line.push_str(&format!(": {} open connection(s)", report.open)),
    }
    match report.other_ends.as_slice() {
        [] => {}
        [one] => line.push_str(&format!(
            "; the other end held by pid {} ({})",
            one.pid,
            terminal(&one.comm)
        )),
        [first, rest @ ..] => line.push_str(&format!(
            "; the other ends held by pid {} ({}) and {} more process(es)",
            first.pid,
            terminal(&first.comm),
            rest.len()
        )),
    }
    if let (Some(open), Some(limit)) = (report.fds_open, report.fd_limit) {
        line.push_str(&format!("; fds {open} of {limit}"));
        if let (Some(left), Some((rate, readings, span))) = (report.fd_exhaustion, report.fd_growth)
        {
            line.push_str(&format!(
                ", +{}/min ({readings} readings over {}): out in {}",
                per_minute(rate),
                short_duration(span),
                about(left)
            ));
        }
    }
    line
}

fn port_line(report: &PortReport) -> String {
    let key = &report.key;
    let size = u32::from(report.range.1 - report.range.0) + 1;
    let mut line = format!(
        "to {}:{} from {}: {} of {} ports in use ({}-{})",
        key.daddr, key.dport, key.saddr, report.in_use, size, report.range.0, report.range.1
    );
    if let Some(left) = report.exhaustion {
        line.push_str(&format!(", connect() fails in {}", about(left)));
    }
    line
}

/// ` pod 9f1c2ab3 container 0b1c2d3e4f5a`: ids shortened as `docker ps` does.
pub fn placement(placement: &Placement) -> String {
    let mut text = String::new();
    if let Some(pod) = &placement.pod {
        text.push_str(&format!(" pod {}", &pod[..pod.len().min(8)]));
    }
    if let Some(container) = &placement.container {
        text.push_str(&format!(
            " container {}",
            &container[..container.len().min(12)]
        ));
    }
    text
}
