//! What the user asked to see: connections by port, remote network and family, and transitions
//! by state. Applied to what the sinks receive; the tracker still sees everything.

use std::io;

use ipnet::IpNet;
use probe_common::TcpState;

use super::{Key, KeyOutcome, Sink};
use crate::track::{
    Endpoints, Family, StateChange, StuckAlert, Summary, Timestamp, address::canonical,
};

/// The filters of the command line; an empty filter lets everything through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Local or remote port.
    pub ports: Vec<u16>,
    /// The remote address is in one of these networks.
    pub remotes: Vec<IpNet>,
    /// Only this family.
    pub family: Option<Family>,
    /// Transitions into or out of one of these states.
    pub states: Vec<TcpState>,
}

impl Filter {
    /// Whether a connection with these endpoints is shown.
    pub fn shows(&self, endpoints: &Endpoints) -> bool {
        let port_ok = self.ports.is_empty()
            || self.ports.contains(&endpoints.local.port())
            || self.ports.contains(&endpoints.remote.port());
        let remote_ok = self.remotes.is_empty()
            || self
                .remotes
                .iter()
                .any(|net| net.contains(&canonical(endpoints.remote.ip())));
        let family_ok = self.family.is_none_or(|family| family == endpoints.family);
        port_ok && remote_ok && family_ok
    }

    /// Whether a transition is shown.
    pub fn shows_transition(&self, change: &StateChange) -> bool {
        self.shows(&change.endpoints)
            && (self.states.is_empty()
                || self.states.contains(&change.old)
                || self.states.contains(&change.new))
    }
}

/// A sink that passes on only what the filter shows.
pub struct Filtered<S> {
    filter: Filter,
    inner: S,
}

impl<S: Sink> Filtered<S> {
    pub fn new(filter: Filter, inner: S) -> Self {
        Filtered { filter, inner }
    }
}

impl<S: Sink> Sink for Filtered<S> {
    fn transition(&mut self, change: &StateChange) -> io::Result<()> {
        if self.filter.shows_transition(change) {
            self.inner.transition(change)?;
        }
        Ok(())
    }

    fn stuck(&mut self, alert: &StuckAlert) -> io::Result<()> {
        if self.filter.shows(&alert.connection.endpoints) {
            self.inner.stuck(alert)?;
        }
        Ok(())
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        let mut shown = summary.clone();
        shown.retain(|open| self.filter.shows(&open.connection.endpoints));
        self.inner.summary(&shown)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    fn wants_ticks(&self) -> bool {
        self.inner.wants_ticks()
    }

    fn tick(&mut self, now: Timestamp, table: &Summary) -> io::Result<()> {
        let mut shown = table.clone();
        shown.retain(|open| self.filter.shows(&open.connection.endpoints));
        self.inner.tick(now, &shown)
    }

    fn key(&mut self, key: Key) -> KeyOutcome {
        self.inner.key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_filter_shows_everything() {
        assert!(Filter::default().shows(&Endpoints::parse("127.0.0.1:1", "10.0.0.1:2")));
    }

    #[test]
    fn ports_match_either_end() {
        let filter = Filter {
            ports: vec![5432],
            ..Filter::default()
        };
        assert!(filter.shows(&Endpoints::parse("127.0.0.1:40000", "10.0.0.1:5432")));
        assert!(filter.shows(&Endpoints::parse("127.0.0.1:5432", "10.0.0.1:40000")));
        assert!(!filter.shows(&Endpoints::parse("127.0.0.1:40000", "10.0.0.1:80")));
    }

    #[test]
    fn remote_networks_match_addresses_and_mapped_ones() {
        let filter = Filter {
            remotes: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            ..Filter::default()
        };
        assert!(filter.shows(&Endpoints::parse("127.0.0.1:1", "10.1.2.3:80")));
        assert!(filter.shows(&Endpoints::parse("[::1]:1", "[::ffff:10.9.9.9]:80")));
        assert!(filter.shows(&Endpoints::parse("[::1]:1", "[fd12::1]:80")));
        assert!(!filter.shows(&Endpoints::parse("127.0.0.1:1", "192.168.1.1:80")));
    }

    #[test]
    fn families_and_states() {
        let filter = Filter {
            family: Some(Family::Ipv6),
            states: vec![TcpState::CloseWait],
            ..Filter::default()
        };
        assert!(!filter.shows(&Endpoints::parse("127.0.0.1:1", "127.0.0.1:2")));
        assert!(filter.shows(&Endpoints::parse("[::1]:1", "[::1]:2")));
        let change = |old, new| StateChange {
            id: 1,
            inode: None,
            owner: crate::track::Owner {
                pid: 1,
                comm: "c".into(),
            },
            endpoints: Endpoints::parse("[::1]:1", "[::1]:2"),
            old,
            new,
            at: crate::track::Timestamp::from_nanos(0),
            in_old: None,
            ending: None,
        };
        assert!(filter.shows_transition(&change(TcpState::Established, TcpState::CloseWait)));
        assert!(filter.shows_transition(&change(TcpState::CloseWait, TcpState::LastAck)));
        assert!(!filter.shows_transition(&change(TcpState::SynSent, TcpState::Established)));
    }
}
