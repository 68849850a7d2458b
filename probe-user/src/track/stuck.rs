//! Stuck detection: when a connection enters CLOSE_WAIT or ESTABLISHED, a deadline is queued; a
//! connection still in that same state visit at its deadline is stuck (for ESTABLISHED, only if
//! it is also idle: the tracker checks and may queue a later deadline).
//!
//! Deadlines live in a min-heap: O(log n) per transition and per expired deadline, and no scan of
//! the connection table. Deadlines of connections that moved on are dropped when they come due
//! (or earlier, by [`StuckDetector::retain`]).

use std::{cmp::Reverse, collections::BinaryHeap, time::Duration};

use probe_common::TcpState;

use super::{lifecycle::ConnectionKey, time::Timestamp};

/// How long a connection may stay in a state before it is flagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub close_wait: Duration,
    /// For ESTABLISHED: time without data either way, where tcp_info tells; else time in state.
    pub established: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            close_wait: Duration::from_secs(5),
            established: Duration::from_secs(60),
        }
    }
}

impl Thresholds {
    /// The threshold of `state`, if it can be stuck.
    pub fn of(&self, state: TcpState) -> Option<Duration> {
        match state {
            TcpState::CloseWait => Some(self.close_wait),
            TcpState::Established => Some(self.established),
            _ => None,
        }
    }
}

/// What a stuck connection most likely means, in plain words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diagnosis {
    /// Stuck in CLOSE_WAIT.
    PeerClosedNeverClosedLocally,
    /// Stuck in ESTABLISHED.
    OpenAndUnused,
}

impl Diagnosis {
    /// The diagnosis for a connection stuck in `state`, if that state can be stuck.
    pub const fn for_state(state: TcpState) -> Option<Diagnosis> {
        match state {
            TcpState::CloseWait => Some(Diagnosis::PeerClosedNeverClosedLocally),
            TcpState::Established => Some(Diagnosis::OpenAndUnused),
            _ => None,
        }
    }

    /// The same, said of a group of connections.
    pub const fn group_reason(self) -> &'static str {
        match self {
            Diagnosis::PeerClosedNeverClosedLocally => {
                "the peer closed them and this process never called close()"
            }
            Diagnosis::OpenAndUnused => "they sit open and unused, never reused nor closed",
        }
    }

    /// What usually fixes it, for the incident report.
    pub const fn fix(self) -> &'static str {
        match self {
            Diagnosis::PeerClosedNeverClosedLocally => {
                "Close every socket once the peer is done with it. In an HTTP client, always \
                 close (and drain) the response body, on error paths too (Go: defer \
                 resp.Body.Close()), and share one client instead of creating one per request \
                 (Go: one http.Client and Transport for the whole program). After the fix, this \
                 side closes first: FIN_WAIT and TIME_WAIT instead of CLOSE_WAIT."
            }
            Diagnosis::OpenAndUnused => {
                "Reuse connections or let them go. Share one client with a bounded idle pool \
                 (Go: one http.Transport with IdleConnTimeout and MaxIdleConnsPerHost), close \
                 clients and pools you create, or turn keep-alive off where connections are \
                 never reused (Go: DisableKeepAlives)."
            }
        }
    }

    /// One line for a human.
    pub const fn reason(self) -> &'static str {
        match self {
            Diagnosis::PeerClosedNeverClosedLocally => {
                "the peer closed the connection, but this process never closed its socket \
                 (a missing close(): e.g. an HTTP response body never closed)"
            }
            Diagnosis::OpenAndUnused => {
                "open and unused for a long time: an idle keep-alive pool, or a leaked client \
                 that is never reused nor closed"
            }
        }
    }
}

/// A deadline that came due: connection `key`, in its state visit numbered `visit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DueDeadline {
    pub key: ConnectionKey,
    pub visit: u32,
    pub state: TcpState,
}

/// One queued deadline, in 24 bytes (one per watched connection, so it counts): ordered by
/// `deadline` first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    deadline: Timestamp,
    /// The [`ConnectionKey`]'s number, and which kind it is.
    key: u64,
    visit: u32,
    state: u8,
    by_inode: bool,
}

impl Pending {
    fn key(self) -> ConnectionKey {
        if self.by_inode {
            ConnectionKey::Inode(self.key)
        } else {
            ConnectionKey::Socket(self.key)
        }
    }
}

/// Deadline queue of the watched states.
#[derive(Debug, Default)]
pub struct StuckDetector {
    pending: BinaryHeap<Reverse<Pending>>,
}

impl StuckDetector {
    /// Watches connection `key` in its state visit `visit`, due at `deadline`.
    pub fn watch(&mut self, key: ConnectionKey, visit: u32, state: TcpState, deadline: Timestamp) {
        let (key, by_inode) = match key {
            ConnectionKey::Socket(address) => (address, false),
            ConnectionKey::Inode(inode) => (inode, true),
        };
        self.pending.push(Reverse(Pending {
            deadline,
            key,
            visit,
            state: state as u8,
            by_inode,
        }));
    }

    /// Removes and returns every deadline due at `now`, earliest first.
    pub fn due(&mut self, now: Timestamp) -> Vec<DueDeadline> {
        let mut due = Vec::new();
        while let Some(Reverse(pending)) = self.pending.peek().copied() {
            if pending.deadline > now {
                break;
            }
            self.pending.pop();
            if let Some(state) = TcpState::from_raw(pending.state) {
                due.push(DueDeadline {
                    key: pending.key(),
                    visit: pending.visit,
                    state,
                });
            }
        }
        due
    }

    /// The earliest pending deadline.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.pending.peek().map(|Reverse(pending)| pending.deadline)
    }

    /// How many deadlines are queued.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Drops the queued deadlines for which `is_live(key, visit)` is false.
    pub fn retain(&mut self, mut is_live: impl FnMut(ConnectionKey, u32) -> bool) {
        self.pending
            .retain(|Reverse(pending)| is_live(pending.key(), pending.visit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Timestamp {
        Timestamp::from_nanos(s * 1_000_000_000)
    }

    fn key(n: u64) -> ConnectionKey {
        ConnectionKey::Socket(n)
    }

    #[test]
    fn deadlines_come_due_at_their_time_and_once() {
        let mut d = StuckDetector::default();
        d.watch(key(1), 10, TcpState::CloseWait, secs(105));
        d.watch(key(2), 11, TcpState::Established, secs(160));
        assert_eq!(d.pending(), 2);
        assert_eq!(d.next_deadline(), Some(secs(105)));
        assert!(
            d.due(Timestamp::from_nanos(secs(105).as_nanos() - 1))
                .is_empty()
        );
        assert_eq!(
            d.due(secs(105)),
            [DueDeadline {
                key: key(1),
                visit: 10,
                state: TcpState::CloseWait
            }]
        );
        assert!(d.due(secs(106)).is_empty());
        assert_eq!(d.next_deadline(), Some(secs(160)));
        assert_eq!(d.due(secs(1000)).len(), 1);
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn deadlines_queued_out_of_order_come_out_in_time_order() {
        let mut d = StuckDetector::default();
        for (i, t) in [(1, 30), (2, 10), (3, 20)] {
            d.watch(key(i), i as u32, TcpState::CloseWait, secs(t));
        }
        let keys: Vec<ConnectionKey> = d.due(secs(25)).iter().map(|x| x.key).collect();
        assert_eq!(keys, [key(2), key(3)]);
    }

    #[test]
    fn an_entry_is_small_and_keeps_its_kind_of_key() {
        assert!(std::mem::size_of::<Reverse<Pending>>() <= 24);
        let mut d = StuckDetector::default();
        d.watch(ConnectionKey::Inode(9), 1, TcpState::CloseWait, secs(1));
        d.watch(ConnectionKey::Socket(9), 2, TcpState::CloseWait, secs(2));
        let keys: Vec<ConnectionKey> = d.due(secs(3)).iter().map(|x| x.key).collect();
        assert_eq!(keys, [ConnectionKey::Inode(9), ConnectionKey::Socket(9)]);
    }

    #[test]
    fn retain_drops_stale_entries() {
        let mut d = StuckDetector::default();
        for i in 0..10 {
            d.watch(key(i), i as u32, TcpState::Established, secs(i));
        }
        d.retain(|_, visit| visit % 2 == 0);
        assert_eq!(d.pending(), 5);
        assert!(d.due(secs(1000)).iter().all(|x| x.visit % 2 == 0));
    }

    #[test]
    fn only_close_wait_and_established_can_be_stuck() {
        let t = Thresholds::default();
        assert_eq!(t.of(TcpState::CloseWait), Some(Duration::from_secs(5)));
        assert_eq!(t.of(TcpState::Established), Some(Duration::from_secs(60)));
        assert_eq!(t.of(TcpState::FinWait2), None);
        assert!(Diagnosis::for_state(TcpState::FinWait2).is_none());
    }
}
