//! Ephemeral ports: connect() picks a local port from the network namespace's
//! `ip_local_port_range`, and two connections from one address to one destination (address and
//! port) cannot share one. Sockets toward one destination, TIME_WAIT ones included, use up that
//! range; when it is used up, connect() fails with EADDRNOTAVAIL.

use std::net::{IpAddr, SocketAddr};

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
