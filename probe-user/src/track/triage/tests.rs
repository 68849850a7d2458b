//! The triage, fed made-up samples: forecasts that follow the trend, and the table's order.

use std::time::Duration;

use probe_common::TcpState;

use super::*;
use crate::track::{event::Endpoints, summary::tests::open as summary_open, time::Timestamp};

fn at(seconds: u64) -> Timestamp {
    Timestamp::from_nanos(seconds * 1_000_000_000)
}

/// A process that leaks 10 connections a second (each holding a descriptor), fds 100 + 10 a
/// second, limit 256.
fn leaking(triage: &mut Triage, pid: u32, second: u64) {
    let remote = "10.0.3.7:5432".parse().unwrap();
    triage.note_processes(
        at(second),
        &[ProcessSample {
            pid,
            comm: "leaker".into(),
            fds_open: 100 + 10 * second,
            fd_limit: Some(256),
            placement: Placement::default(),
        }],
    );
    let mut tally = StuckTally::default();
    tally.insert((pid, TcpState::CloseWait, remote), 10 * second as usize);
    triage.note_stuck(at(second), &tally);
}

#[test]
fn file_descriptors_run_out_at_the_rate_shown_beside_the_forecast() {
    let mut triage = Triage::default();
    // At 10 s, 200 open: 56 left at 10 a second, 5.6 s.
    for second in 0..=10 {
        leaking(&mut triage, 7, second);
    }
    let reports = triage.processes(&[], at(10));
    assert_eq!(reports.len(), 1);
    let left = reports[0].fd_exhaustion.unwrap();
    assert!((left.as_secs_f64() - 5.6).abs() < 0.01, "{left:?}");
    assert_eq!(reports[0].fds_open, Some(200));
    assert_eq!(reports[0].leak_per_min, Some(600.0));
    assert_eq!(
        reports[0].leak_evidence,
        // From the first stuck connection, at 1 s.
        Some((10, Duration::from_secs(9)))
    );
    assert_eq!(
        reports[0].fd_growth,
        Some((600.0, 11, Duration::from_secs(10)))
    );
    assert_eq!(reports[0].rank, Rank::FdsRunOut);
    // Asked 2 s after that sample (refreshes come seconds apart): 2 s less; none once past.
    let later = triage.processes(&[], at(12))[0].fd_exhaustion.unwrap();
    assert!((later.as_secs_f64() - 3.6).abs() < 0.01, "{later:?}");
    let past = triage.processes(&[], at(20))[0].fd_exhaustion;
    assert_eq!(past, Some(Duration::ZERO));
}

#[test]
fn a_process_whose_files_come_and_go_but_which_leaks_nothing_has_no_forecast() {
    let mut triage = Triage::default();
    // prometheus scraping: a few more descriptors now and then, none of them stuck.
    for second in 0..30 {
        triage.note_processes(
            at(second),
            &[ProcessSample {
                pid: 7,
                comm: "prometheus".into(),
                fds_open: 16 + second / 10,
                fd_limit: Some(1024),
                placement: Placement::default(),
            }],
        );
    }
    assert!(triage.processes(&[], at(30)).is_empty(), "nothing to show");
}

#[test]
fn a_growing_leak_ranks_above_a_bigger_one_that_stopped() {
    let mut triage = Triage::default();
    let burst_to = "10.0.3.7:80";
    let mut open: Vec<OpenConnection> = (0..150)
        .map(|id| summary_open(id, 1, TcpState::CloseWait, burst_to, Some(60)))
        .collect();
    for second in 0..=20 {
        triage.note_processes(
            at(second),
            &[ProcessSample {
                pid: 2,
                comm: "leaker".into(),
                fds_open: 100 + 10 * second,
                fd_limit: Some(4096),
                placement: Placement::default(),
            }],
        );
        // pid 1 leaked 150 in a burst before probe came, and no more since; pid 2 leaks 10
        // a second.
        let mut tally = StuckTally::default();
        tally.insert((1, TcpState::CloseWait, burst_to.parse().unwrap()), 150);
        tally.insert(
            (2, TcpState::CloseWait, "10.0.3.7:5432".parse().unwrap()),
            10 * second as usize,
        );
        triage.note_stuck(at(second), &tally);
    }
    open.extend(
        (1000..1200).map(|id| summary_open(id, 2, TcpState::CloseWait, "10.0.3.7:5432", Some(5))),
    );
    let processes = triage.processes(&open, at(20));
    let order: Vec<(u32, Rank)> = processes.iter().map(|p| (p.pid, p.rank)).collect();
    assert_eq!(order, [(2, Rank::FdsRunOut), (1, Rank::NotGrowing)]);
    let stopped = &processes[1];
    assert_eq!(
        (stopped.leak_per_min, stopped.fd_exhaustion, stopped.stuck),
        (None, None, 150),
        "a leak that stopped has no rate and no forecast"
    );
}

#[test]
fn a_process_no_longer_read_has_no_fd_forecast() {
    let mut triage = Triage::default();
    for second in 0..=10 {
        leaking(&mut triage, 7, second);
    }
    assert!(triage.processes(&[], at(10))[0].fd_exhaustion.is_some());
    // It exited: kept for its stuck connections, without a forecast counting down.
    triage.note_processes(at(11), &[]);
    let reports = triage.processes(&[], at(12));
    assert!(reports.iter().all(|report| report.fd_exhaustion.is_none()));
}

#[test]
fn a_steady_process_has_no_forecast() {
    let mut triage = Triage::default();
    for second in 0..10 {
        triage.note_processes(
            at(second),
            &[ProcessSample {
                pid: 7,
                comm: "leaker".into(),
                fds_open: 40,
                fd_limit: Some(1024),
                placement: Placement::default(),
            }],
        );
    }
    assert!(triage.processes(&[], at(10)).is_empty(), "nothing to show");
}

#[test]
fn leak_rates_come_from_the_stuck_counts_over_the_run() {
    let mut triage = Triage::default();
    let remote = "10.0.3.7:5432".parse().unwrap();
    for second in 0..60 {
        let mut tally = StuckTally::default();
        // 38 a minute to one database, for one process; none for the other.
        tally.insert(
            (1, TcpState::CloseWait, remote),
            (second * 38 / 60) as usize,
        );
        triage.note_stuck(at(second), &tally);
    }
    let rate = triage.group_rate(1, TcpState::CloseWait, remote).unwrap();
    assert!((rate - 38.0).abs() < 1.5, "{rate}");
    assert!(triage.group_rate(2, TcpState::CloseWait, remote).is_none());
}

#[test]
fn ports_toward_one_destination_run_out_at_the_trend() {
    let mut triage = Triage::default();
    // n sockets from 10.0.0.1 to 10.0.0.2:80, every other one in TIME_WAIT (which holds its
    // port all the same).
    let samples = |n: u16, first_state: TcpState| -> Vec<PortSample> {
        let mut counts = PortCounts::new((60_000, 60_199));
        for i in 0..n {
            let endpoints = Endpoints::parse(&format!("10.0.0.1:{}", 60_000 + i), "10.0.0.2:80");
            let state = if i % 2 == 0 {
                first_state
            } else {
                TcpState::Established
            };
            counts.count(state, endpoints.local, endpoints.remote);
        }
        counts.samples(1)
    };
    for second in 0..10u16 {
        let samples = samples(10 * second + 10, TcpState::TimeWait);
        triage.note_ports(at(u64::from(second)), &samples);
    }
    let reports = triage.ports(at(9));
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].in_use, 100);
    // 100 of 200 used, 10 more a second: 10 s left; 4 s later, 6.
    assert_eq!(reports[0].exhaustion, Some(Duration::from_secs(10)));
    assert_eq!(
        triage.ports(at(13))[0].exhaustion,
        Some(Duration::from_secs(6))
    );
    // A listener's port, or one outside the range, is no ephemeral port.
    assert!(samples(1, TcpState::Listen).is_empty());
    let mut outside = PortCounts::new((60_000, 60_199));
    let endpoints = Endpoints::parse("10.0.0.1:50000", "10.0.0.2:80");
    outside.count(TcpState::Established, endpoints.local, endpoints.remote);
    assert!(outside.samples(1).is_empty());
}
