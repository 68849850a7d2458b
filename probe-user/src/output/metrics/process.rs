//! Per-process metrics, with their cardinality under control: a fleet scrapes every node, and a
//! series per pid would grow without bound as processes come and go. By default a process is
//! named by what outlives it (its name, container and pod; processes that share them add up),
//! the pid only with `--metrics-pids`; and only the `top` most urgent groups (the triage's
//! order: descriptors that run out first, then growing leaks, then the most stuck) get series
//! of their own, the rest add up under `comm="(other)"`. With N traced groups, these families hold at most top+1 series per state,
//! plus one per forecast.

use std::collections::BTreeMap;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::track::{Summary, triage::ProcessReport};

/// The labels that name a process (or a group of processes) in the metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ProcessLabels {
    pub comm: String,
    /// The container id (12 digits), empty outside containers.
    pub container: String,
    /// The pod uid, empty outside Kubernetes.
    pub pod: String,
    /// The pid, empty unless `--metrics-pids`.
    pub pid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessStateLabels {
    #[prometheus(flatten)]
    process: ProcessLabels,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    saddr: String,
    daddr: String,
    dport: u16,
}

/// How the per-process families are labelled and bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cardinality {
    /// A `pid` label on every per-process series.
    pub pids: bool,
    /// Groups with series of their own; the rest add up under `(other)`.
    pub top: usize,
}

/// The per-process and per-destination families.
#[derive(Clone)]
pub struct ProcessMetrics {
    cardinality: Cardinality,
    open: Family<ProcessStateLabels, Gauge>,
    stuck: Family<ProcessStateLabels, Gauge>,
    leak_rate: Family<ProcessLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    fds_open: Family<ProcessLabels, Gauge>,
    fd_exhaustion: Family<ProcessLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    ports_in_use: Family<PortLabels, Gauge>,
    port_exhaustion: Family<PortLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

/// One group's figures, summed over its processes.
#[derive(Default)]
struct Group {
    open: BTreeMap<&'static str, i64>,
    stuck: BTreeMap<&'static str, i64>,
    leak_rate: Option<f64>,
    fds_open: Option<i64>,
    fd_exhaustion: Option<f64>,
}

impl ProcessMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &mut Registry, cardinality: Cardinality) -> ProcessMetrics {
        let metrics = ProcessMetrics {
            cardinality,
            open: Family::default(),
            stuck: Family::default(),
            leak_rate: Family::default(),
            fds_open: Family::default(),
            fd_exhaustion: Family::default(),
            ports_in_use: Family::default(),
            port_exhaustion: Family::default(),
        };
        registry.register(
            "process_connections_open",
            "Open TCP connections, by process (name, container, pod) and state",
            metrics.open.clone(),
        );
        registry.register(
            "process_connections_stuck",
            "Connections past their state's threshold, by process and state",
            metrics.stuck.clone(),
        );
        registry.register(
            "leak_rate_per_minute",
            "Stuck connections per minute, by process: the trend over the run (Theil-Sen)",
            metrics.leak_rate.clone(),
        );
        registry.register(
            "process_fds_open",
            "Open file descriptors, by process",
            metrics.fds_open.clone(),
        );
        registry.register(
            "fd_exhaustion_seconds",
            "Seconds until the process has no file descriptor left at the trend over the run \
             (only while the count grows)",
            metrics.fd_exhaustion.clone(),
        );
        registry.register(
            "ports_in_use",
            "Ephemeral ports in use toward one destination (TIME_WAIT included)",
            metrics.ports_in_use.clone(),
        );
        registry.register(
            "port_exhaustion_seconds",
            "Seconds until connect() to the destination fails with EADDRNOTAVAIL at the trend \
             over the run (only while the count grows)",
            metrics.port_exhaustion.clone(),
        );
        metrics
    }

    /// Rebuilds every series from the table (processes come and go: exited ones disappear).
    pub fn set(&self, table: &Summary) {
        let groups = self.groups(&table.processes);
        for family in [&self.open, &self.stuck] {
            family.clear();
        }
        for family in [&self.leak_rate, &self.fd_exhaustion] {
            family.clear();
        }
        self.fds_open.clear();
        for (labels, group) in &groups {
            for (state, count) in &group.open {
                self.open
                    .get_or_create(&with_state(labels, state))
                    .set(*count);
            }
            for (state, count) in &group.stuck {
                self.stuck
                    .get_or_create(&with_state(labels, state))
                    .set(*count);
            }
            if let Some(rate) = group.leak_rate {
                self.leak_rate.get_or_create(labels).set(rate);
            }
            if let Some(fds) = group.fds_open {
                self.fds_open.get_or_create(labels).set(fds);
            }
            if let Some(left) = group.fd_exhaustion {
                self.fd_exhaustion.get_or_create(labels).set(left);
            }
        }
        self.ports_in_use.clear();
        self.port_exhaustion.clear();
        for report in table.ports.iter().take(self.cardinality.top) {
            let labels = PortLabels {
                saddr: report.key.saddr.to_string(),
                daddr: report.key.daddr.to_string(),
                dport: report.key.dport,
            };
            self.ports_in_use
                .get_or_create(&labels)
                .set(i64::from(report.in_use));
            if let Some(left) = report.exhaustion {
                self.port_exhaustion
                    .get_or_create(&labels)
                    .set(left.as_secs_f64());
            }
        }
    }

    /// The processes grouped by their labels: the `top` groups, the most urgent first (the
    /// triage's order, in which `processes` come: a group ranks as its most urgent process),
    /// and the rest under `(other)`.
    fn groups(&self, processes: &[ProcessReport]) -> Vec<(ProcessLabels, Group)> {
        let mut by_labels: BTreeMap<ProcessLabels, (usize, Group)> = BTreeMap::new();
        for (rank, report) in processes.iter().enumerate() {
            let (_, group) = by_labels
                .entry(self.labels(report))
                .or_insert_with(|| (rank, Group::default()));
            add(group, report);
        }
        let mut ranked: Vec<(usize, ProcessLabels, Group)> = by_labels
            .into_iter()
            .map(|(labels, (rank, group))| (rank, labels, group))
            .collect();
        ranked.sort_by_key(|(rank, _, _)| *rank);
        let mut groups: Vec<(ProcessLabels, Group)> = ranked
            .into_iter()
            .map(|(_, labels, group)| (labels, group))
            .collect();
        if groups.len() > self.cardinality.top {
            let rest = groups.split_off(self.cardinality.top);
            let mut other = Group::default();
            for (_, group) in rest {
                merge(&mut other, group);
            }
            groups.push((
                ProcessLabels {
                    comm: "(other)".into(),
                    container: String::new(),
                    pod: String::new(),
                    pid: String::new(),
                },
                other,
            ));
        }
        groups
    }

    fn labels(&self, report: &ProcessReport) -> ProcessLabels {
        let placement = &report.placement;
        ProcessLabels {
            // The process chose its name: its control bytes are shown escaped, as on a
            // terminal (a dashboard, `curl`, or a log of the scrape shows them too).
            comm: crate::output::escape::terminal(&report.comm).into_owned(),
            container: placement
                .container
                .as_deref()
                .map(|id| id[..id.len().min(12)].to_string())
                .unwrap_or_default(),
            pod: placement.pod.clone().unwrap_or_default(),
            pid: if self.cardinality.pids {
                report.pid.to_string()
            } else {
                String::new()
            },
        }
    }
}

fn with_state(labels: &ProcessLabels, state: &'static str) -> ProcessStateLabels {
    ProcessStateLabels {
        process: labels.clone(),
        state,
    }
}

/// Adds one process to its group: counts add up, rates add up, the nearest exhaustion wins.
fn add(group: &mut Group, report: &ProcessReport) {
    for (state, count) in &report.counts {
        *group.open.entry(state.name()).or_insert(0) += *count as i64;
    }
    for (state, count) in &report.stuck_counts {
        *group.stuck.entry(state.name()).or_insert(0) += *count as i64;
    }
    if let Some(rate) = report.leak_per_min {
        *group.leak_rate.get_or_insert(0.0) += rate;
    }
    if let Some(fds) = report.fds_open {
        *group.fds_open.get_or_insert(0) += fds as i64;
    }
    if let Some(left) = report.fd_exhaustion {
        let left = left.as_secs_f64();
        group.fd_exhaustion = Some(group.fd_exhaustion.map_or(left, |l| l.min(left)));
    }
}

fn merge(into: &mut Group, group: Group) {
    for (state, count) in group.open {
        *into.open.entry(state).or_insert(0) += count;
    }
    for (state, count) in group.stuck {
        *into.stuck.entry(state).or_insert(0) += count;
    }
    if let Some(rate) = group.leak_rate {
        *into.leak_rate.get_or_insert(0.0) += rate;
    }
    if let Some(fds) = group.fds_open {
        *into.fds_open.get_or_insert(0) += fds;
    }
    if let Some(left) = group.fd_exhaustion {
        into.fd_exhaustion = Some(into.fd_exhaustion.map_or(left, |l| l.min(left)));
    }
}
