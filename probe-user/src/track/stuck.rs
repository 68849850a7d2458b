//! Stuck detection: when a connection enters CLOSE_WAIT or ESTABLISHED, a deadline is queued; a
//! connection still in that same state visit at its deadline is stuck.
//!
//! Each watched state has one threshold, so deadlines are queued in the order the states were
//! entered: a FIFO per state is a complete deadline queue, with O(1) work per transition and per
//! expired deadline, and no scan of the connection table.

use std::{collections::VecDeque, time::Duration};

use probe_common::TcpState;

use super::time::Timestamp;

/// How long a connection may stay in a state before it is flagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub close_wait: Duration,
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

/// A deadline that came due: the connection `id`, in the state visit numbered `visit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DueDeadline {
    pub id: u64,
    pub visit: u64,
    pub state: TcpState,
    /// When the state was entered.
    pub since: Timestamp,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    since: Timestamp,
    id: u64,
    visit: u64,
}

/// Deadline queues for the watched states. Entries are checked against the connection table when
/// they come due; entries of connections that moved on are simply dropped then (or earlier, by
/// [`StuckDetector::retain`]).
#[derive(Debug, Default)]
pub struct StuckDetector {
    thresholds: Thresholds,
    close_wait: VecDeque<Pending>,
    established: VecDeque<Pending>,
}

impl StuckDetector {
    /// A detector with the given thresholds.
    pub fn new(thresholds: Thresholds) -> Self {
        StuckDetector {
            thresholds,
            ..Default::default()
        }
    }

    /// The thresholds in force.
    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// Watches connection `id`, which entered `state` at `since` in its state visit `visit`.
    /// States that cannot be stuck are ignored.
    pub fn watch(&mut self, id: u64, visit: u64, state: TcpState, since: Timestamp) {
        if let Some(queue) = self.queue_mut(state) {
            queue.push_back(Pending { since, id, visit });
        }
    }

    /// Removes and returns every deadline due at `now`, oldest first within each state.
    pub fn due(&mut self, now: Timestamp) -> Vec<DueDeadline> {
        let mut due = Vec::new();
        for state in [TcpState::CloseWait, TcpState::Established] {
            let threshold = self.threshold(state);
            let Some(queue) = self.queue_mut(state) else {
                continue;
            };
            while let Some(front) = queue.front() {
                if front.since.saturating_add(threshold) > now {
                    break;
                }
                let Pending { since, id, visit } = *front;
                queue.pop_front();
                due.push(DueDeadline {
                    id,
                    visit,
                    state,
                    since,
                });
            }
        }
        due
    }

    /// The earliest pending deadline.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        [TcpState::CloseWait, TcpState::Established]
            .into_iter()
            .filter_map(|state| {
                let queue = self.queue(state)?;
                Some(queue.front()?.since.saturating_add(self.threshold(state)))
            })
            .min()
    }

    /// How many deadlines are queued.
    pub fn pending(&self) -> usize {
        self.close_wait.len() + self.established.len()
    }

    /// Drops the queued deadlines for which `is_live(id, visit)` is false.
    pub fn retain(&mut self, mut is_live: impl FnMut(u64, u64) -> bool) {
        self.close_wait.retain(|p| is_live(p.id, p.visit));
        self.established.retain(|p| is_live(p.id, p.visit));
    }

    fn threshold(&self, state: TcpState) -> Duration {
        match state {
            TcpState::CloseWait => self.thresholds.close_wait,
            _ => self.thresholds.established,
        }
    }

    fn queue(&self, state: TcpState) -> Option<&VecDeque<Pending>> {
        match state {
            TcpState::CloseWait => Some(&self.close_wait),
            TcpState::Established => Some(&self.established),
            _ => None,
        }
    }

    fn queue_mut(&mut self, state: TcpState) -> Option<&mut VecDeque<Pending>> {
        match state {
            TcpState::CloseWait => Some(&mut self.close_wait),
            TcpState::Established => Some(&mut self.established),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Timestamp {
        Timestamp::from_nanos(s * 1_000_000_000)
    }

    fn detector() -> StuckDetector {
        StuckDetector::new(Thresholds {
            close_wait: Duration::from_secs(5),
            established: Duration::from_secs(60),
        })
    }

    #[test]
    fn deadlines_come_due_exactly_at_the_threshold_and_once() {
        let mut d = detector();
        d.watch(1, 10, TcpState::CloseWait, secs(100));
        d.watch(2, 11, TcpState::Established, secs(100));
        d.watch(3, 12, TcpState::FinWait2, secs(100));
        assert_eq!(d.pending(), 2);
        assert_eq!(d.next_deadline(), Some(secs(105)));
        assert!(
            d.due(Timestamp::from_nanos(secs(105).as_nanos() - 1))
                .is_empty()
        );
        let due = d.due(secs(105));
        assert_eq!(
            due,
            [DueDeadline {
                id: 1,
                visit: 10,
                state: TcpState::CloseWait,
                since: secs(100)
            }]
        );
        assert!(d.due(secs(106)).is_empty());
        assert_eq!(d.next_deadline(), Some(secs(160)));
        assert_eq!(d.due(secs(1000)).len(), 1);
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn due_deadlines_come_out_in_entry_order() {
        let mut d = detector();
        for (i, t) in [(1, 10), (2, 11), (3, 12)] {
            d.watch(i, i, TcpState::CloseWait, secs(t));
        }
        let ids: Vec<u64> = d.due(secs(16)).iter().map(|x| x.id).collect();
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn retain_drops_stale_entries() {
        let mut d = detector();
        for i in 0..10 {
            d.watch(i, i, TcpState::Established, secs(i));
        }
        d.retain(|id, _| id % 2 == 0);
        assert_eq!(d.pending(), 5);
        assert!(d.due(secs(1000)).iter().all(|x| x.id % 2 == 0));
    }

    #[test]
    fn only_close_wait_and_established_have_a_diagnosis() {
        assert!(Diagnosis::for_state(TcpState::CloseWait).is_some());
        assert!(Diagnosis::for_state(TcpState::Established).is_some());
        assert!(Diagnosis::for_state(TcpState::FinWait2).is_none());
    }
}
