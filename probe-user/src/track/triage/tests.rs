//! The triage, fed made-up samples: forecasts that follow the trend, and the table's order.

use std::time::{Duration, Instant};

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
    let reports = triage.processes(&[]);
    assert_eq!(reports.len(), 1);
    let left = reports[0].fd_exhaustion.unwrap();
    assert!((left.as_secs_f64() - 5.6).abs() < 0.01, "{left:?}");
    assert_eq!(reports[0].fds_open, Some(200));
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
    assert!(triage.processes(&[]).is_empty(), "nothing to show");
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
    let reports = triage.ports();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].in_use, 100);
    // 100 of 200 used, 10 more a second: 10 s left.
    assert_eq!(reports[0].exhaustion, Some(Duration::from_secs(10)));
    // A listener's port, or one outside the range, is no ephemeral port.
    assert!(samples(1, TcpState::Listen).is_empty());
    let mut outside = PortCounts::new((60_000, 60_199));
    let endpoints = Endpoints::parse("10.0.0.1:50000", "10.0.0.2:80");
    outside.count(TcpState::Established, endpoints.local, endpoints.remote);
    assert!(outside.samples(1).is_empty());
}

#[test]
fn time_wait_sockets_are_read_again_only_when_reading_them_is_cheap_enough() {
    let start = Instant::now();
    let mut time_wait = TimeWaitPorts::default();
    assert!(time_wait.due(start));
    // A few of them, read in 2 ms: again at any refresh 0.2 s apart.
    time_wait.read(start, Duration::from_millis(2), HashMap::new());
    assert!(!time_wait.due(start + Duration::from_millis(150)));
    assert!(time_wait.due(start + Duration::from_millis(200)));
    // 90,000 of them, read in 0.1 s: every 10 s, a hundredth of the time.
    time_wait.read(start, Duration::from_millis(100), HashMap::new());
    assert!(!time_wait.due(start + Duration::from_millis(2500)));
    assert!(time_wait.due(start + Duration::from_secs(10)));
    // Millions, read in 5 s: still every minute, when every one counted is gone.
    time_wait.read(start, Duration::from_secs(5), HashMap::new());
    assert!(!time_wait.due(start + Duration::from_secs(59)));
    assert!(time_wait.due(start + Duration::from_secs(60)));
}

#[test]
fn time_wait_counts_read_apart_add_to_the_others() {
    let range = (60_000, 60_199);
    let count = |counts: &mut PortCounts, n: u16, state: TcpState| {
        for i in 0..n {
            let endpoints = Endpoints::parse(&format!("10.0.0.1:{}", 60_000 + i), "10.0.0.2:80");
            counts.count(state, endpoints.local, endpoints.remote);
        }
    };
    let mut time_wait = PortCounts::new(range);
    count(&mut time_wait, 30, TcpState::TimeWait);
    let mut read = TimeWaitPorts::default();
    read.read(
        Instant::now(),
        Duration::ZERO,
        HashMap::from([(7, time_wait)]),
    );
    let mut live = PortCounts::new(range);
    count(&mut live, 20, TcpState::Established);
    live.add(read.counts(7).unwrap());
    let samples = live.samples(7);
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].in_use, 50);
    assert!(read.counts(8).is_none());
}
