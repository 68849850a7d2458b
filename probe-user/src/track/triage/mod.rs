//! Triage: who is leaking, how fast, since when, and how long until it falls over. Fed with
//! what the tracker and the refreshes see, it reports per process (stuck connections and how
//! fast they pile up, open file descriptors against the limit) and per ephemeral port range (the
//! ports one destination uses against the range connect() picks from), each with the time left
//! before it runs out, where the trend says it will.

mod ports;
mod series;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use probe_common::TcpState;
use rustc_hash::FxHashMap;

pub use ports::{PortCounts, PortKey, PortReport, PortSample};
pub use series::{Growth, Series};

use super::{summary::OpenConnection, time::Timestamp, tracker::PairEnd};

/// Where a process runs, as its cgroup tells.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Its cgroup v2 path, where the process is in the unified hierarchy.
    pub cgroup: Option<String>,
    /// The container id (64 hex digits).
    pub container: Option<String>,
    /// The Kubernetes pod uid.
    pub pod: Option<String>,
}

/// What a refresh read of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSample {
    pub pid: u32,
    /// Its name.
    pub comm: Arc<str>,
    /// Its open file descriptors.
    pub fds_open: u64,
    /// Its soft `RLIMIT_NOFILE`; `None` when unlimited or unreadable.
    pub fd_limit: Option<u64>,
    pub placement: Placement,
}

/// Stuck connections of one process in one state to one remote endpoint, at a moment.
pub type StuckTally = FxHashMap<(u32, TcpState, SocketAddr), usize>;

/// The stuck connections of a process that share a state and endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct StuckGroupRate {
    pub state: TcpState,
    /// The endpoint they are known by ([`crate::track::ConnectionView::known_by`]).
    pub endpoint: SocketAddr,
    pub count: usize,
    /// How many more per minute, by the trend over the run.
    pub per_minute: Option<f64>,
}

/// One process, as the triage table shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessReport {
    pub pid: u32,
    pub comm: Arc<str>,
    pub placement: Placement,
    /// Open connections, and how many in each state.
    pub open: usize,
    pub counts: BTreeMap<TcpState, usize>,
    pub stuck: usize,
    /// Stuck connections in each state.
    pub stuck_counts: BTreeMap<TcpState, usize>,
    /// Its largest group of stuck connections.
    pub worst: Option<StuckGroupRate>,
    /// Stuck connections per minute, where they keep piling up (all its groups; see
    /// [`Series::sustained_growth`]); `None` where they do not (a burst that stopped) or
    /// there are too few readings to say.
    pub leak_per_min: Option<f64>,
    /// The readings that rate rests on, and the time they span.
    pub leak_evidence: Option<(usize, Duration)>,
    /// When its oldest stuck connection entered its state.
    pub onset: Option<Timestamp>,
    /// That connection predates probe: `onset` is the latest it can have been (from tcp_info).
    pub onset_estimated: bool,
    pub fds_open: Option<u64>,
    pub fd_limit: Option<u64>,
    /// How fast its open file descriptors keep growing (see [`Series::sustained_growth`]),
    /// per minute, with the readings it rests on and the time they span; `None` where they do
    /// not (a burst that stopped, a count that comes and goes).
    pub fd_growth: Option<(f64, usize, Duration)>,
    /// How long until it has no file descriptor left, at `fd_growth`; `None` without it (or
    /// without a limit).
    pub fd_exhaustion: Option<Duration>,
    /// Why it is where it is in the ranking.
    pub rank: Rank,
    /// The processes that hold the other ends of its stuck connections, where those are
    /// traced too (a local server's workers): not stuck by their own doing, named here
    /// instead of ranked (see [`crate::track::tracker::PairEnd`]). Most connections first.
    pub other_ends: Vec<OtherEnd>,
}

/// A process holding the other ends of some of a process's stuck connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtherEnd {
    pub pid: u32,
    pub comm: Arc<str>,
    pub connections: usize,
}

/// Why a process is where it is in the triage's ranking: what fails first, first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rank {
    /// Its leak will use up its file descriptors (the soonest first).
    FdsRunOut,
    /// Its stuck connections keep piling up (the fastest first), with no limit to count to.
    Growing,
    /// It has stuck connections that no longer grow (the most first).
    NotGrowing,
    /// It has open connections, none stuck.
    NoneStuck,
}

/// The triage's order: what fails first, first. Processes whose file descriptors run out, the
/// soonest first; then growing leaks, the fastest first; then the rest, the most stuck first.
pub fn by_urgency(a: &ProcessReport, b: &ProcessReport) -> std::cmp::Ordering {
    a.rank
        .cmp(&b.rank)
        .then_with(|| match (a.fd_exhaustion, b.fd_exhaustion) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => std::cmp::Ordering::Equal,
        })
        .then(
            b.leak_per_min
                .unwrap_or(0.0)
                .total_cmp(&a.leak_per_min.unwrap_or(0.0)),
        )
        .then(b.stuck.cmp(&a.stuck))
        .then(b.open.cmp(&a.open))
        .then(a.pid.cmp(&b.pid))
}

#[derive(Debug, Default)]
struct ProcessTrack {
    comm: Option<Arc<str>>,
    placement: Placement,
    fds: Series,
    fds_open: Option<u64>,
    fd_limit: Option<u64>,
    stuck: Series,
    groups: FxHashMap<(TcpState, SocketAddr), Series>,
}

/// The triage's memory of the run: a series per process and port range.
#[derive(Debug, Default)]
pub struct Triage {
    processes: FxHashMap<u32, ProcessTrack>,
    ports: HashMap<PortKey, (Series, u32, (u16, u16))>,
}

impl Triage {
    /// Notes what a refresh read of the processes; those no longer among them are forgotten
    /// unless they still have stuck connections.
    pub fn note_processes(&mut self, now: Timestamp, samples: &[ProcessSample]) {
        for sample in samples {
            let track = self.processes.entry(sample.pid).or_default();
            track.placement = sample.placement.clone();
            track.comm = Some(Arc::clone(&sample.comm));
            track.fds.push(now, sample.fds_open as f64);
            track.fds_open = Some(sample.fds_open);
            track.fd_limit = sample.fd_limit;
        }
        let seen: FxHashMap<u32, ()> = samples.iter().map(|s| (s.pid, ())).collect();
        self.processes.retain(|pid, track| {
            if seen.contains_key(pid) {
                return true;
            }
            // Kept for its stuck connections, its files no longer read (it exited, say): no
            // count to show, and no forecast counting down from an old one.
            track.fds_open = None;
            track.stuck.last().is_some_and(|stuck| stuck > 0.0)
        });
    }

    /// Notes how many connections of each process are stuck now, by state and remote.
    pub fn note_stuck(&mut self, now: Timestamp, tally: &StuckTally) {
        let mut totals: FxHashMap<u32, usize> = FxHashMap::default();
        for (&(pid, _, _), &count) in tally {
            *totals.entry(pid).or_default() += count;
        }
        for &pid in totals.keys() {
            self.processes.entry(pid).or_default();
        }
        for (pid, track) in &mut self.processes {
            let total = totals.get(pid).copied().unwrap_or(0);
            // A process's series starts at its first stuck connection.
            if total > 0 || track.stuck.last().is_some() {
                track.stuck.push(now, total as f64);
            }
            for ((state, remote), series) in &mut track.groups {
                let count = tally.get(&(*pid, *state, *remote)).copied().unwrap_or(0);
                series.push(now, count as f64);
            }
            // A group whose connections are all gone is no leak any more.
            track
                .groups
                .retain(|_, series| series.last().is_some_and(|count| count > 0.0));
        }
        for (&(pid, state, remote), &count) in tally {
            if let Some(track) = self.processes.get_mut(&pid) {
                track.groups.entry((state, remote)).or_insert_with(|| {
                    let mut series = Series::default();
                    series.push(now, count as f64);
                    series
                });
            }
        }
    }

    /// Notes the ports in use toward each destination.
    pub fn note_ports(&mut self, now: Timestamp, samples: &[PortSample]) {
        for sample in samples {
            let entry = self
                .ports
                .entry(sample.key.clone())
                .or_insert_with(|| (Series::default(), 0, sample.range));
            entry.0.push(now, f64::from(sample.in_use));
            entry.1 = sample.in_use;
            entry.2 = sample.range;
        }
        for (key, entry) in &mut self.ports {
            if !samples.iter().any(|sample| sample.key == *key) {
                entry.0.push(now, 0.0);
                entry.1 = 0;
            }
        }
        self.ports.retain(|_, (_, in_use, _)| *in_use > 0);
    }

    /// The processes with connections or a file descriptor forecast, ranked by urgency
    /// ([`by_urgency`]).
    pub fn processes(&self, open: &[OpenConnection], now: Timestamp) -> Vec<ProcessReport> {
        let mut reports: FxHashMap<u32, ProcessReport> = FxHashMap::default();
        let mut groups: FxHashMap<(u32, TcpState, SocketAddr), usize> = FxHashMap::default();
        let mut other_ends: FxHashMap<(u32, u32), usize> = FxHashMap::default();
        let comms: FxHashMap<u32, &Arc<str>> = open
            .iter()
            .map(|c| (c.connection.owner.pid, &c.connection.owner.comm))
            .collect();
        for connection in open {
            let view = &connection.connection;
            if let (Some(_), Some(PairEnd::Acts { peer })) = (connection.stuck, connection.pair) {
                *other_ends.entry((view.owner.pid, peer)).or_insert(0) += 1;
            }
            let report = reports
                .entry(view.owner.pid)
                .or_insert_with(|| self.blank(view.owner.pid, Some(&view.owner.comm), now));
            report.open += 1;
            *report.counts.entry(view.state).or_insert(0) += 1;
            if connection.stuck.is_some() {
                report.stuck += 1;
                *report.stuck_counts.entry(view.state).or_insert(0) += 1;
                *groups
                    .entry((view.owner.pid, view.state, view.known_by))
                    .or_insert(0) += 1;
                if report
                    .onset
                    .is_none_or(|onset| view.since.is_some_and(|s| s < onset))
                {
                    report.onset = view.since;
                    report.onset_estimated = view.since_attach;
                }
            }
        }
        for (&pid, track) in &self.processes {
            if track.fd_exhaustion(now).is_some() {
                reports
                    .entry(pid)
                    .or_insert_with(|| self.blank(pid, None, now));
            }
        }
        for ((pid, peer), connections) in other_ends {
            if let Some(report) = reports.get_mut(&pid) {
                report.other_ends.push(OtherEnd {
                    pid: peer,
                    comm: comms
                        .get(&peer)
                        .map_or_else(|| Arc::from("?"), |comm| Arc::clone(comm)),
                    connections,
                });
            }
        }
        let mut reports: Vec<ProcessReport> = reports.into_values().collect();
        for report in &mut reports {
            report.worst = groups
                .iter()
                .filter(|((pid, _, _), _)| *pid == report.pid)
                .max_by(|((_, _, a_remote), a), ((_, _, b_remote), b)| {
                    a.cmp(b).then(b_remote.cmp(a_remote))
                })
                .map(|(&(pid, state, remote), &count)| StuckGroupRate {
                    state,
                    endpoint: remote,
                    count,
                    per_minute: self.group_rate(pid, state, remote),
                });
        }
        for report in &mut reports {
            report
                .other_ends
                .sort_by(|a, b| b.connections.cmp(&a.connections).then(a.pid.cmp(&b.pid)));
            report.rank = match (report.fd_exhaustion, report.leak_per_min, report.stuck) {
                (Some(_), _, _) => Rank::FdsRunOut,
                (None, Some(_), _) => Rank::Growing,
                (None, None, 0) => Rank::NoneStuck,
                (None, None, _) => Rank::NotGrowing,
            };
        }
        reports.sort_by(by_urgency);
        reports
    }

    /// The ranges toward one destination that are filling, the fullest first; their time left
    /// counted from `now`.
    pub fn ports(&self, now: Timestamp) -> Vec<PortReport> {
        let mut reports: Vec<PortReport> = self
            .ports
            .iter()
            .map(|(key, (series, in_use, range))| {
                let size = u32::from(range.1.saturating_sub(range.0)) + 1;
                let left = f64::from(size.saturating_sub(*in_use));
                PortReport {
                    key: key.clone(),
                    in_use: *in_use,
                    range: *range,
                    exhaustion: series
                        .slope_per_second()
                        .filter(|slope| *slope > 1e-9)
                        .map(|slope| time_left(left, slope, series, now)),
                }
            })
            .collect();
        reports.sort_by(|a, b| b.in_use.cmp(&a.in_use).then(a.key.cmp(&b.key)));
        reports
    }

    fn blank(&self, pid: u32, comm: Option<&Arc<str>>, now: Timestamp) -> ProcessReport {
        let track = self.processes.get(&pid);
        let growth = track.and_then(|track| track.stuck.sustained_growth());
        ProcessReport {
            pid,
            comm: comm
                .or_else(|| track.and_then(|t| t.comm.as_ref()))
                .cloned()
                .unwrap_or_else(|| Arc::from("?")),
            placement: track.map(|t| t.placement.clone()).unwrap_or_default(),
            open: 0,
            counts: BTreeMap::new(),
            stuck: 0,
            stuck_counts: BTreeMap::new(),
            worst: None,
            leak_per_min: growth.map(|growth| growth.per_second * 60.0),
            leak_evidence: growth
                .map(|growth| (growth.samples, Duration::from_secs_f64(growth.span_seconds))),
            onset: None,
            onset_estimated: false,
            fds_open: track.and_then(|t| t.fds_open),
            fd_limit: track.and_then(|t| t.fd_limit),
            fd_growth: track.and_then(ProcessTrack::fd_growth).map(|growth| {
                (
                    growth.per_second * 60.0,
                    growth.samples,
                    Duration::from_secs_f64(growth.span_seconds),
                )
            }),
            fd_exhaustion: track.and_then(|track| track.fd_exhaustion(now)),
            rank: Rank::NoneStuck,
            other_ends: Vec::new(),
        }
    }

    /// How fast the stuck connections of one group pile up, where they keep doing so.
    fn group_rate(&self, pid: u32, state: TcpState, remote: SocketAddr) -> Option<f64> {
        let series = self.processes.get(&pid)?.groups.get(&(state, remote))?;
        series
            .sustained_growth()
            .map(|growth| growth.per_second * 60.0)
    }
}

impl ProcessTrack {
    /// How fast its file descriptors keep growing, where they do: growth over the run and its
    /// newer half, by at least [`FD_GROWTH_MIN`] descriptors over the readings (a process
    /// whose files come and go, one more now and then, grows nothing).
    fn fd_growth(&self) -> Option<Growth> {
        self.fds
            .sustained_growth()
            .filter(|growth| growth.per_second * growth.span_seconds >= FD_GROWTH_MIN)
    }

    /// How long until its file descriptors run out at [`ProcessTrack::fd_growth`], the rate
    /// shown next to the forecast.
    fn fd_exhaustion(&self, now: Timestamp) -> Option<Duration> {
        let left = self.fd_limit? as f64 - self.fds_open? as f64;
        let growth = self.fd_growth()?;
        Some(time_left(left, growth.per_second, &self.fds, now))
    }
}

/// The fewest descriptors a process's count must have grown by, over its readings, for a
/// forecast.
const FD_GROWTH_MIN: f64 = 3.0;

/// How long from `now` until `left`, what was left at the latest sample of `series`, runs out
/// at `per_second`. Samples come with the refreshes, seconds apart (tens of seconds on a host
/// with a million sockets): the time since the latest one is already gone.
fn time_left(left: f64, per_second: f64, series: &Series, now: Timestamp) -> Duration {
    let from_sample = left.max(0.0) / per_second;
    let from_now = from_sample - series.seconds_since_last(now);
    Duration::from_secs_f64(from_now.clamp(0.0, 1e9))
}

#[cfg(test)]
mod tests;
