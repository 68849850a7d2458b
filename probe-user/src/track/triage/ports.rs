//! Ephemeral ports: connect() picks a local port from the network namespace's
//! `ip_local_port_range`, and two connections from one address to one destination (address and
//! port) cannot share one. Sockets toward one destination, TIME_WAIT ones included, use up that
//! range; when it is used up, connect() fails with EADDRNOTAVAIL.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use probe_common::TcpState;
use rustc_hash::FxHashMap;

/// One destination as seen from one source address, in one network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    /// The network namespace (its inode).
    pub netns: u64,
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub dport: u16,
}

/// How many local ports one destination uses at a moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSample {
    pub key: PortKey,
    pub in_use: u32,
    /// The namespace's `ip_local_port_range` (inclusive).
    pub range: (u16, u16),
}

/// One destination's ports, as the triage shows them.
#[derive(Clone, Debug, PartialEq)]
pub struct PortReport {
    pub key: PortKey,
    pub in_use: u32,
    pub range: (u16, u16),
    /// How long until connect() to it fails, at the trend over the run; `None` when the count
    /// is not growing.
    pub exhaustion: Option<std::time::Duration>,
}

/// Destinations whose ports use more than this share of the range are reported (with fewer,
/// there is nothing to forecast; with all of them, a busy host would list thousands).
const REPORTED_SHARE: f64 = 0.01;

/// The ports each destination uses in one namespace's socket table, among the sockets whose
/// local port is in the namespace's ephemeral range: connected sockets and TIME_WAIT ones, not
/// listeners. Counted socket by socket as the table is read, so that the sockets counted need
/// not be kept (TIME_WAIT ones, many on a busy client, are counted and dropped).
#[derive(Debug)]
pub struct PortCounts {
    range: (u16, u16),
    counts: FxHashMap<(IpAddr, IpAddr, u16), u32>,
}

impl PortCounts {
    /// No sockets counted yet, in a namespace whose `ip_local_port_range` is `range`.
    pub fn new(range: (u16, u16)) -> PortCounts {
        PortCounts {
            range,
            counts: FxHashMap::default(),
        }
    }

    /// Counts one socket of the table.
    pub fn count(&mut self, state: TcpState, local: SocketAddr, remote: SocketAddr) {
        if state == TcpState::Listen
            || remote.port() == 0
            || !(self.range.0..=self.range.1).contains(&local.port())
        {
            return;
        }
        *self
            .counts
            .entry((local.ip(), remote.ip(), remote.port()))
            .or_default() += 1;
    }

    /// Adds what `other` counted (the namespace's TIME_WAIT sockets, say, read apart).
    pub fn add(&mut self, other: &PortCounts) {
        for (&destination, &in_use) in &other.counts {
            *self.counts.entry(destination).or_default() += in_use;
        }
    }

    /// The destinations that use a reportable share of the range, in namespace `netns`.
    pub fn samples(self, netns: u64) -> Vec<PortSample> {
        let range = self.range;
        let size = f64::from(range.1.saturating_sub(range.0)) + 1.0;
        self.counts
            .into_iter()
            .filter(|(_, in_use)| f64::from(*in_use) >= size * REPORTED_SHARE)
            .map(|((saddr, daddr, dport), in_use)| PortSample {
                key: PortKey {
                    netns,
                    saddr,
                    daddr,
                    dport,
                },
                in_use,
                range,
            })
            .collect()
    }
}

/// Reading TIME_WAIT sockets takes at most one part in this many of the time: they are read
/// again once this many times the last reading's length has passed...
const TIME_WAIT_ONE_PART_IN: u32 = 100;
/// ...but they are read at least this often: the time a socket stays in TIME_WAIT on Linux
/// (`TCP_TIMEWAIT_LEN`), after which none of those counted is left.
const TIME_WAIT_LIFETIME: Duration = Duration::from_secs(60);

/// The ports TIME_WAIT sockets take, read less often than the rest of the socket table where
/// reading them is costly. A client that churns leaves tens of thousands (~90,000 in the
/// benchmark's churn): each a message of the kernel's dump, a tenth of a second per refresh
/// every 2.5 s, for a count the port forecast alone uses. Between their readings, the counts
/// of the last one stand in for them.
#[derive(Debug, Default)]
pub struct TimeWaitPorts {
    /// Per network namespace, from the last reading of its TIME_WAIT sockets.
    counts: HashMap<u64, PortCounts>,
    /// When that reading began, and how long it took.
    last: Option<(Instant, Duration)>,
}

impl TimeWaitPorts {
    /// Whether a refresh starting at `now` reads the TIME_WAIT sockets again: when they have
    /// never been read, or when reading them as often takes at most a hundredth of the time.
    pub fn due(&self, now: Instant) -> bool {
        self.last.is_none_or(|(at, took)| {
            let gap = took
                .saturating_mul(TIME_WAIT_ONE_PART_IN)
                .min(TIME_WAIT_LIFETIME);
            now.saturating_duration_since(at) >= gap
        })
    }

    /// A reading of every namespace's TIME_WAIT sockets, begun `at` and taking `took`: the
    /// counts from now on (a namespace missing from `counts` has none counted).
    pub fn read(&mut self, at: Instant, took: Duration, counts: HashMap<u64, PortCounts>) {
        self.counts = counts;
        self.last = Some((at, took));
    }

    /// Namespace `netns`'s TIME_WAIT sockets, as last read.
    pub fn counts(&self, netns: u64) -> Option<&PortCounts> {
        self.counts.get(&netns)
    }
}
