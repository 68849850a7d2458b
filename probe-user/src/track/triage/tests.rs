//! The triage, fed made-up samples: forecasts that follow the trend, and the table's order.

use std::time::Duration;

use probe_common::TcpState;

use super::*;
use crate::track::{event::Endpoints, time::Timestamp};

fn at(seconds: u64) -> Timestamp {
    Timestamp::from_nanos(seconds * 1_000_000_000)
}

#[test]
fn file_descriptors_run_out_when_the_trend_says() {
    let mut triage = Triage::default();
    // 10 fds a second from 100, limit 256: at 10 s, 200 open, 5.6 s left.
    for second in 0..=10 {
        triage.note_processes(
            at(second),
            &[ProcessSample {
                pid: 7,
                comm: "leaker".into(),
                fds_open: 100 + 10 * second,
                fd_limit: Some(256),
                placement: Placement::default(),
            }],
        );
    }
    let reports = triage.processes(&[], at(10));
    assert_eq!(reports.len(), 1);
    let left = reports[0].fd_exhaustion.unwrap();
    assert!((left.as_secs_f64() - 5.6).abs() < 0.01, "{left:?}");
    assert_eq!(reports[0].fds_open, Some(200));
    // Asked 2 s after that sample (refreshes come seconds apart): 2 s less; none once past.
    let later = triage.processes(&[], at(12))[0].fd_exhaustion.unwrap();
    assert!((later.as_secs_f64() - 3.6).abs() < 0.01, "{later:?}");
    let past = triage.processes(&[], at(20))[0].fd_exhaustion;
    assert_eq!(past, Some(Duration::ZERO));
}

#[test]
fn a_process_no_longer_read_has_no_fd_forecast() {
    let mut triage = Triage::default();
    let sample = |fds_open| ProcessSample {
        pid: 7,
        comm: "leaker".into(),
        fds_open,
        fd_limit: Some(256),
        placement: Placement::default(),
    };
    let mut tally = StuckTally::default();
    tally.insert(
        (7, TcpState::CloseWait, "10.0.3.7:5432".parse().unwrap()),
        3,
    );
    for second in 0..=10 {
        triage.note_processes(at(second), &[sample(100 + 10 * second)]);
        triage.note_stuck(at(second), &tally);
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
