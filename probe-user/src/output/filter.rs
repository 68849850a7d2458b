//! What the user asked to see: connections by port, remote network and family, and by state.
//! A filter means the same everywhere it is shown: transitions, stuck alerts, the open
//! connections of the summary and its groups, and the counts of closed connections. The
//! tracker still sees everything.

use std::io;

use ipnet::IpNet;
use probe_common::TcpState;

use super::{Key, KeyOutcome, Sink};
use crate::track::{
    ClosedCounts, Endpoints, Family, StateChange, StuckAlert, Summary, Timestamp,
    address::canonical,
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
    /// Connections in these states: transitions into or out of them (TIME_WAIT: the closes
    /// into it, which probe infers), alerts and open connections in them, closed connections
    /// that went through them.
    pub states: Vec<TcpState>,
}

impl Filter {
    /// Whether a connection with these endpoints is shown. A remote address matches a network
    /// as probe prints it (`::ffff:10.0.0.1` for a dual-stack socket) and as the IPv4 address it
    /// carries (`10.0.0.1`), so either way of writing it works.
    pub fn shows(&self, endpoints: &Endpoints) -> bool {
        let port_ok = self.ports.is_empty()
            || self.ports.contains(&endpoints.local.port())
            || self.ports.contains(&endpoints.remote.port());
        let remote = endpoints.remote.ip();
        let remote_ok = self.remotes.is_empty()
            || self
                .remotes
                .iter()
                .any(|net| net.contains(&remote) || net.contains(&canonical(remote)));
        let family_ok = self.family.is_none_or(|family| family == endpoints.family);
        port_ok && remote_ok && family_ok
    }

    fn shows_state(&self, state: TcpState) -> bool {
        self.states.is_empty() || self.states.contains(&state)
    }

    /// Whether a transition is shown: into or out of a state asked for (a close into TIME_WAIT
    /// counts as into TIME_WAIT).
    pub fn shows_transition(&self, change: &StateChange) -> bool {
        self.shows(&change.endpoints)
            && (self.states.is_empty()
                || self.states.contains(&change.old)
                || self.states.contains(&change.new)
                || (change.time_wait() && self.states.contains(&TcpState::TimeWait)))
    }

    /// Whether a connection that just closed counts: it went through a state asked for.
    fn shows_closed(&self, change: &StateChange) -> bool {
        self.shows(&change.endpoints)
            && (self.states.is_empty()
                || self
                    .states
                    .iter()
                    .any(|state| change.visited.contains(*state)))
    }

    /// Whether a stuck alert is shown.
    pub fn shows_alert(&self, alert: &StuckAlert) -> bool {
        self.shows(&alert.connection.endpoints) && self.shows_state(alert.connection.state)
    }

    /// The table as the filter shows it; `closed` are the closed connections it counted.
    fn table(&self, table: &Summary, closed: ClosedCounts) -> Summary {
        let mut shown = table.clone();
        shown.retain(|open| {
            self.shows(&open.connection.endpoints) && self.shows_state(open.connection.state)
        });
        shown.closed = closed;
        shown
    }
}

/// A sink that passes on only what the filter shows, and counts the closed connections it
/// shows (the tracker's counts are of all of them).
pub struct Filtered<S> {
    filter: Filter,
    inner: S,
    closed: ClosedCounts,
}

impl<S: Sink> Filtered<S> {
    pub fn new(filter: Filter, inner: S) -> Self {
        Filtered {
            filter,
            inner,
            closed: ClosedCounts::default(),
        }
    }
}

impl<S: Sink> Sink for Filtered<S> {
    fn transition(&mut self, change: &StateChange) -> io::Result<()> {
        if let Some(ending) = change.ending
            && self.filter.shows_closed(change)
        {
            self.closed.record(change.closed_first, ending);
        }
        if self.filter.shows_transition(change) {
            self.inner.transition(change)?;
        }
        Ok(())
    }

    fn stuck(&mut self, alert: &StuckAlert) -> io::Result<()> {
        if self.filter.shows_alert(alert) {
            self.inner.stuck(alert)?;
        }
        Ok(())
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.inner.summary(&self.filter.table(summary, self.closed))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    fn wants_tick(&self, now: Timestamp) -> bool {
        self.inner.wants_tick(now)
    }

    fn tick(&mut self, now: Timestamp, table: &Summary) -> io::Result<()> {
        self.inner.tick(now, &self.filter.table(table, self.closed))
    }

    fn key(&mut self, key: Key) -> KeyOutcome {
        self.inner.key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::{Ending, Owner, lifecycle::StateSet};

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
    fn remote_networks_match_addresses_as_printed_and_as_ipv4() {
        let filter = |net: &str| Filter {
            remotes: vec![net.parse().unwrap()],
            ..Filter::default()
        };
        let dual_stack = Endpoints::parse("[::1]:1", "[::ffff:10.9.9.9]:80");
        let plain_v4 = Endpoints::parse("127.0.0.1:1", "10.9.9.9:80");
        let v6 = Endpoints::parse("[::1]:1", "[fd12::1]:80");
        for net in ["10.0.0.0/8", "::ffff:10.9.9.9/128", "::/0"] {
            assert!(filter(net).shows(&dual_stack), "{net}");
        }
        assert!(filter("10.0.0.0/8").shows(&plain_v4));
        assert!(
            !filter("::/0").shows(&plain_v4),
            "an IPv4 socket prints IPv4"
        );
        assert!(filter("fd00::/8").shows(&v6));
        assert!(!filter("192.168.0.0/16").shows(&plain_v4));
    }

    fn change(old: TcpState, new: TcpState, ending: Option<Ending>) -> StateChange {
        let mut visited = StateSet::default();
        for state in [TcpState::Established, old, new] {
            visited.insert(state);
        }
        if ending == Some(Ending::TimeWait) {
            visited.insert(TcpState::TimeWait);
        }
        StateChange {
            id: 1,
            cookie: None,
            inode: None,
            owner: Owner {
                pid: 1,
                comm: "c".into(),
            },
            endpoints: Endpoints::parse("[::1]:1", "[::1]:2"),
            old,
            new,
            at: Timestamp::from_nanos(0),
            in_old: None,
            ending,
            closed_first: None,
            visited,
        }
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
        use TcpState::*;
        assert!(filter.shows_transition(&change(Established, CloseWait, None)));
        assert!(filter.shows_transition(&change(CloseWait, LastAck, None)));
        assert!(!filter.shows_transition(&change(SynSent, Established, None)));
    }

    #[test]
    fn time_wait_is_the_closes_into_it_and_closed_counts_follow_the_filter() {
        use TcpState::*;
        let filter = Filter {
            states: vec![TimeWait],
            ..Filter::default()
        };
        let into_time_wait = change(FinWait2, Close, Some(Ending::TimeWait));
        let reset = change(Established, Close, Some(Ending::Reset));
        assert!(filter.shows_transition(&into_time_wait));
        assert!(!filter.shows_transition(&reset));
        let mut sink = Filtered::new(filter, crate::output::Outputs::default());
        sink.transition(&into_time_wait).unwrap();
        sink.transition(&reset).unwrap();
        assert_eq!(sink.closed.total, 1);
    }
}
