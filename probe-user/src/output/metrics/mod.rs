//! Prometheus metrics: what probe sees, as gauges, counters and histograms, served over HTTP
//! (`--metrics-addr`) for a fleet's existing monitoring.
//!
//! The sink updates the metrics as events come; the server ([`serve`]) only encodes them when
//! scraped.

mod exposition;
mod process;
mod serve;
mod web;

pub use process::Cardinality;
use process::ProcessMetrics;
pub use serve::{bind, spawn};
pub use web::{WebConfig, WebConfigError};

use std::{
    collections::BTreeMap,
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use probe_common::TcpState;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::Sink;
use crate::track::{Diagnosis, StateChange, StuckAlert, Summary, Timestamp};

/// Where `--metrics-addr` listens when only a port is given: loopback, never the network
/// unless the user names an address.
pub fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    let port_only = text.strip_prefix(':').unwrap_or(text);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    text.parse().map_err(|_| {
        format!(
            "`{text}` is not a listen address: give a port (9464, served on 127.0.0.1) or \
             ADDRESS:PORT (0.0.0.0:9464 to serve every interface)"
        )
    })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// A stuck connection's state and why it is stuck (the state itself for the kinds that are a
/// time in a state; RECEIVE_STALLED, SEND_STALLED, ACCEPT_QUEUE_FULL otherwise).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct StuckLabels {
    state: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    old: &'static str,
    new: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabel {
    first: &'static str,
}

/// Upper bounds of the time-in-state histogram, in seconds: 100us to about 1.8 hours.
fn state_duration_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 4.0, 13,
    ))
}

/// probe's metrics, registered under the `probe_` prefix.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    open: Family<StateLabel, Gauge>,
    processes: ProcessMetrics,
    stuck: Family<StuckLabels, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    stuck_alerts: Family<StuckLabels, Counter>,
    closed: Family<ClosedLabel, Counter>,
    lost_events: Counter,
    untracked_sockets: Counter,
    time_in_state: Family<StateLabel, Histogram, fn() -> Histogram>,
}

impl Metrics {
    /// Registers every metric; per-process ones as `cardinality` says.
    pub fn new(cardinality: Cardinality) -> Metrics {
        let mut registry = Registry::with_prefix("probe");
        let open = Family::<StateLabel, Gauge>::default();
        registry.register(
            "connections_open",
            "Open TCP connections of the traced processes, by state",
            open.clone(),
        );
        let processes = ProcessMetrics::register(&mut registry, cardinality);
        let stuck = Family::<StuckLabels, Gauge>::default();
        registry.register(
            "connections_stuck",
            "Open connections stuck past their threshold, by state and kind (the state, or RECEIVE_STALLED, SEND_STALLED, ACCEPT_QUEUE_FULL)",
            stuck.clone(),
        );
        let transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "transitions",
            "TCP state transitions of the traced processes' connections",
            transitions.clone(),
        );
        let stuck_alerts = Family::<StuckLabels, Counter>::default();
        registry.register(
            "stuck_alerts",
            "Connections flagged as stuck, by state and kind",
            stuck_alerts.clone(),
        );
        let closed = Family::<ClosedLabel, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections that reached CLOSE, by who closed first (local, remote, both) or how \
             they ended otherwise (reset, connect_failed)",
            closed.clone(),
        );
        let lost_events = Counter::default();
        registry.register(
            "lost_events",
            "Events the kernel could not deliver (ring buffer full: raise --ring-buffer-kib)",
            lost_events.clone(),
        );
        let untracked_sockets = Counter::default();
        registry.register(
            "untracked_sockets",
            "Sockets the kernel could not track (map full: raise --max-sockets)",
            untracked_sockets.clone(),
        );
        let time_in_state =
            Family::<StateLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                state_duration_buckets,
            );
        registry.register(
            "state_duration_seconds",
            "How long connections stayed in a state before leaving it",
            time_in_state.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            open,
            processes,
            stuck,
            transitions,
            stuck_alerts,
            closed,
            lost_events,
            untracked_sockets,
            time_in_state,
        }
    }

    /// The metrics in the text exposition format (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// Sets the gauges from the whole table, and the counters kept by the kernel and tracker.
    fn set_table(&self, table: &Summary) {
        let mut stuck: BTreeMap<StuckLabels, i64> = BTreeMap::new();
        for state in TcpState::ALL {
            let label = StateLabel {
                state: state.name(),
            };
            self.open
                .get_or_create(&label)
                .set(table.count(state) as i64);
            // Every state that can be stuck has a series, at 0 while nothing is.
            if let Some(kind) = Diagnosis::for_state(state) {
                stuck.insert(
                    StuckLabels {
                        state: state.name(),
                        kind: kind.key(),
                    },
                    0,
                );
            }
        }
        for open in &table.open {
            if let Some(kind) = open.stuck {
                let labels = StuckLabels {
                    state: open.connection.state.name(),
                    kind: kind.key(),
                };
                *stuck.entry(labels).or_insert(0) += 1;
            }
        }
        self.stuck.clear();
        for (labels, count) in stuck {
            self.stuck.get_or_create(&labels).set(count);
        }
        self.processes.set(table);
        let closed = table.closed;
        for (first, total) in [
            ("local", closed.local_first),
            ("remote", closed.remote_first),
            ("both", closed.simultaneous),
            ("reset", closed.reset),
            ("connect_failed", closed.connect_failed),
        ] {
            raise_to(&self.closed.get_or_create(&ClosedLabel { first }), total);
        }
        raise_to(&self.lost_events, table.losses.lost_events);
        raise_to(&self.untracked_sockets, table.losses.untracked_sockets);
    }
}

/// Brings a counter up to a total kept elsewhere.
fn raise_to(counter: &Counter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

impl Sink for Metrics {
    fn transition(&mut self, change: &StateChange) -> io::Result<()> {
        self.transitions
            .get_or_create(&TransitionLabels {
                old: change.old.name(),
                new: change.new.name(),
            })
            .inc();
        if let Some(lasted) = change.in_old {
            self.time_in_state
                .get_or_create(&StateLabel {
                    state: change.old.name(),
                })
                .observe(lasted.as_secs_f64());
        }
        Ok(())
    }

    fn stuck(&mut self, alert: &StuckAlert) -> io::Result<()> {
        self.stuck_alerts
            .get_or_create(&StuckLabels {
                state: alert.connection.state.name(),
                kind: alert.diagnosis.key(),
            })
            .inc();
        Ok(())
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.set_table(summary);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn wants_tick(&self, _now: Timestamp) -> bool {
        true
    }

    fn tick(&mut self, _now: Timestamp, table: &Summary) -> io::Result<()> {
        self.set_table(table);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use probe_common::TcpState::*;

    use super::*;
    use crate::track::{Endpoints, Owner};

    fn change(old: TcpState, new: TcpState, in_old_ms: Option<u64>) -> StateChange {
        StateChange {
            id: 1,
            cookie: None,
            inode: None,
            owner: Owner {
                pid: 7,
                comm: "client".into(),
            },
            endpoints: Endpoints::parse("127.0.0.1:5000", "127.0.0.1:80"),
            old,
            new,
            at: Timestamp::from_nanos(0),
            in_old: in_old_ms.map(Duration::from_millis),
            ending: None,
            closed_first: None,
            visited: Default::default(),
        }
    }

    /// Metrics after a connection went to CLOSE_WAIT and stayed there past the threshold.
    fn busy_metrics() -> Metrics {
        use probe_common::Attribution;

        use crate::track::{NoCodePaths, Thresholds, Tracker, Transition};
        let mut tracker = Tracker::new(Thresholds::default());
        let mut metrics = Metrics::new(Cardinality {
            pids: true,
            top: 20,
        });
        for (old, new, second) in [
            (Close, SynSent, 0),
            (SynSent, Established, 1),
            (Established, CloseWait, 2),
        ] {
            let change = tracker.apply(&Transition {
                sock_id: 1,
                cookie: None,
                pid: 7,
                at: Timestamp::from_nanos(second * 1_000_000_000),
                endpoints: Endpoints::parse("127.0.0.1:5000", "127.0.0.1:80"),
                old,
                new,
                attribution: Attribution::Known,
                stack: None,
                requested: None,
            });
            metrics.transition(&change).unwrap();
        }
        let later = Timestamp::from_nanos(60_000_000_000);
        for alert in tracker.due_stuck(later, &NoCodePaths) {
            metrics.stuck(&alert).unwrap();
        }
        let mut table = tracker.summary(later, &NoCodePaths, Default::default());
        table.add_triage(&crate::track::triage::Triage::default(), later);
        metrics.tick(later, &table).unwrap();
        metrics
    }

    #[test]
    fn gauges_follow_the_table() {
        let text = busy_metrics().encode();
        for series in [
            r#"probe_connections_open{state="CLOSE_WAIT"} 1"#,
            r#"probe_connections_open{state="ESTABLISHED"} 0"#,
            r#"probe_connections_stuck{state="CLOSE_WAIT",kind="CLOSE_WAIT"} 1"#,
            r#"probe_process_connections_open{comm="?",container="",pod="",pid="7",state="CLOSE_WAIT"} 1"#,
            r#"probe_process_connections_stuck{comm="?",container="",pod="",pid="7",state="CLOSE_WAIT"} 1"#,
            r#"probe_stuck_alerts_total{state="CLOSE_WAIT",kind="CLOSE_WAIT"} 1"#,
            r#"probe_connections_closed_total{first="local"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }

    #[test]
    fn the_alert_rules_and_the_dashboard_use_metrics_that_exist() {
        use std::{sync::Arc, time::Duration};

        use crate::track::triage::{PortKey, PortReport, ProcessReport};

        // Every family, the forecasts included (they exist only while something grows).
        let mut metrics = busy_metrics();
        let mut table = crate::track::Tracker::new(Default::default()).summary(
            Timestamp::from_nanos(0),
            &crate::track::NoCodePaths,
            Default::default(),
        );
        table.processes = vec![ProcessReport {
            pid: 7,
            comm: Arc::from("leaky"),
            placement: Default::default(),
            open: 3,
            counts: [(CloseWait, 3)].into_iter().collect(),
            stuck: 3,
            stuck_counts: [(CloseWait, 3)].into_iter().collect(),
            worst: None,
            leak_per_min: Some(3.0),
            onset: None,
            onset_estimated: false,
            fds_open: Some(100),
            fd_limit: Some(1024),
            fd_growth: Some((3.0, 10, Duration::from_secs(60))),
            fd_exhaustion: Some(Duration::from_secs(600)),
            leak_evidence: None,
            other_ends: Vec::new(),
            rank: crate::track::triage::Rank::FdsRunOut,
        }];
        table.ports = vec![PortReport {
            key: PortKey {
                netns: 1,
                saddr: "10.0.0.5".parse().unwrap(),
                daddr: "10.0.3.7".parse().unwrap(),
                dport: 5432,
            },
            in_use: 20_000,
            range: (32768, 60999),
            exhaustion: Some(Duration::from_secs(900)),
        }];
        metrics.tick(Timestamp::from_nanos(0), &table).unwrap();
        let exposed = metrics.encode();
        for (file, text) in [
            (
                "alerts.yaml",
                include_str!("../../../../deploy/alerts.yaml"),
            ),
            (
                "grafana-dashboard.json",
                include_str!("../../../../deploy/grafana-dashboard.json"),
            ),
        ] {
            let mut used = 0;
            for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("probe_") {
                    used += 1;
                    let family = ["_total", "_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|suffix| word.strip_suffix(suffix))
                        .unwrap_or(word);
                    assert!(
                        exposed.contains(&format!("# TYPE {family} ")),
                        "{file}: {word} is not a metric probe exposes:\n{exposed}"
                    );
                }
            }
            assert!(used >= 7, "{file} uses only {used} metrics");
        }
    }

    #[test]
    fn per_process_series_stay_bounded_and_name_what_outlives_a_pid() {
        use std::sync::Arc;

        use crate::track::triage::{Placement, ProcessReport};

        let report = |pid: u32, comm: &str, stuck: usize| ProcessReport {
            pid,
            comm: Arc::from(comm),
            placement: Placement {
                container: Some("0b1c2d3e4f5a6b7c".repeat(4)),
                ..Placement::default()
            },
            open: stuck + 1,
            counts: [(CloseWait, stuck), (Established, 1)].into_iter().collect(),
            stuck,
            stuck_counts: [(CloseWait, stuck)].into_iter().collect(),
            worst: None,
            leak_per_min: Some(stuck as f64),
            onset: None,
            onset_estimated: false,
            fds_open: Some(100),
            fd_limit: Some(1024),
            fd_growth: None,
            fd_exhaustion: None,
            leak_evidence: None,
            other_ends: Vec::new(),
            rank: crate::track::triage::Rank::Growing,
        };
        let mut metrics = Metrics::new(Cardinality {
            pids: false,
            top: 2,
        });
        let mut table = crate::track::Tracker::new(Default::default()).summary(
            Timestamp::from_nanos(0),
            &crate::track::NoCodePaths,
            Default::default(),
        );
        // Two workers of one name add up; the fourth name is the third group: "(other)".
        table.processes = vec![
            report(10, "nginx", 5),
            report(11, "nginx", 4),
            report(12, "api", 7),
            report(13, "cron", 1),
        ];
        metrics.tick(Timestamp::from_nanos(0), &table).unwrap();
        let text = metrics.encode();
        for series in [
            r#"probe_process_connections_stuck{comm="nginx",container="0b1c2d3e4f5a",pod="",pid="",state="CLOSE_WAIT"} 9"#,
            r#"probe_process_connections_stuck{comm="api",container="0b1c2d3e4f5a",pod="",pid="",state="CLOSE_WAIT"} 7"#,
            r#"probe_process_connections_stuck{comm="(other)",container="",pod="",pid="",state="CLOSE_WAIT"} 1"#,
            r#"probe_leak_rate_per_minute{comm="nginx",container="0b1c2d3e4f5a",pod="",pid=""} 9"#,
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
        assert_eq!(
            text.matches("probe_process_connections_stuck{").count(),
            3,
            "{text}"
        );
        assert!(!text.contains(r#"comm="cron""#), "{text}");
        // The groups kept are the most urgent (the triage's order), not the most stuck: a
        // small leak that will run out of descriptors first keeps its series.
        table.processes = vec![
            report(30, "leaker", 1),
            report(31, "stopped", 50),
            report(32, "idle", 40),
        ];
        metrics.tick(Timestamp::from_nanos(1), &table).unwrap();
        let text = metrics.encode();
        assert!(
            text.contains(r#"comm="leaker""#)
                && text.contains(r#"comm="stopped""#)
                && !text.contains(r#"comm="idle""#),
            "{text}"
        );
        // A name with control bytes is escaped in its label, as on a terminal.
        table.processes = vec![report(20, "\x1b]0;x\x07", 50)];
        metrics.tick(Timestamp::from_nanos(1), &table).unwrap();
        let text = metrics.encode();
        assert!(
            !text.contains(['\x1b', '\x07']) && text.contains("e]0;x"),
            "{text}"
        );
    }

    #[test]
    fn a_port_alone_means_loopback() {
        assert_eq!(
            parse_listen_address("9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            parse_listen_address(":9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            parse_listen_address("0.0.0.0:9464").unwrap(),
            "0.0.0.0:9464".parse().unwrap()
        );
        assert_eq!(
            parse_listen_address("[::1]:9464").unwrap(),
            "[::1]:9464".parse().unwrap()
        );
        assert!(parse_listen_address("localhost").is_err());
    }

    #[test]
    fn transitions_count_and_time_in_state_is_a_histogram() {
        let mut metrics = Metrics::new(Cardinality {
            pids: true,
            top: 20,
        });
        metrics.transition(&change(Close, SynSent, None)).unwrap();
        metrics
            .transition(&change(SynSent, Established, Some(2)))
            .unwrap();
        metrics
            .transition(&change(Established, CloseWait, Some(1500)))
            .unwrap();
        let text = metrics.encode();
        assert!(
            text.contains(r#"probe_transitions_total{old="SYN_SENT",new="ESTABLISHED"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"probe_state_duration_seconds_count{state="ESTABLISHED"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"probe_state_duration_seconds_bucket{le="1.6384",state="ESTABLISHED"} 1"#)
                || text.contains(
                    r#"probe_state_duration_seconds_bucket{le="1.6384000000000003",state="ESTABLISHED"} 1"#
                ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
