//! Stuck detection by time in a state: when a connection enters a state that can be stuck, a
//! deadline is queued; a connection still in that same state visit at its deadline is stuck
//! (for ESTABLISHED, only if it is also idle: the tracker checks and may queue a later
//! deadline). Stalled data and full accept queues are seen at the refreshes instead.
//!
//! Deadlines live in a min-heap: O(log n) per transition and per expired deadline, and no scan of
//! the connection table. Deadlines of connections that moved on are dropped when they come due
//! (or earlier, by [`StuckDetector::retain`]). Most state visits are short (a handshake, a
//! request and its answer), so a visit's deadline first waits [`SETTLE`] in a plain queue, and
//! only those of visits still going on then go into the heap: one deadline per open connection
//! instead of one for every state it went through on the way.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    time::Duration,
};

use probe_common::TcpState;

use super::{diagnosis::Diagnosis, time::Timestamp};

/// How long a connection may be stuck each way before it is flagged; `None` turns a kind off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    by_kind: [Option<Duration>; Diagnosis::ALL.len()],
}

impl Default for Thresholds {
    /// CLOSE_WAIT 5 s and ESTABLISHED 60 s idle (the two classic leaks); SYN_SENT 10 s (longer
    /// than a healthy connect across the world, far shorter than the kernel's 2 minutes);
    /// FIN_WAIT1, CLOSING and LAST_ACK 30 s (several retransmissions of the FIN); FIN_WAIT2
    /// 60 s (the kernel's own timeout for orphans); SYN_RECV 10 s; data stalled 10 s; a full
    /// accept queue 5 s.
    fn default() -> Self {
        let seconds = |s| Some(Duration::from_secs(s));
        let mut thresholds = Thresholds {
            by_kind: [None; Diagnosis::ALL.len()],
        };
        for (kind, threshold) in [
            (Diagnosis::PeerClosedNeverClosedLocally, seconds(5)),
            (Diagnosis::OpenAndUnused, seconds(60)),
            (Diagnosis::ConnectUnanswered, seconds(10)),
            (Diagnosis::HandshakeUnfinished, seconds(10)),
            (Diagnosis::FinUnacknowledged, seconds(30)),
            (Diagnosis::PeerNeverClosed, seconds(60)),
            (Diagnosis::ClosingUnacknowledged, seconds(30)),
            (Diagnosis::LastAckUnacknowledged, seconds(30)),
            (Diagnosis::ReceiveStalled, seconds(10)),
            (Diagnosis::SendStalled, seconds(10)),
            (Diagnosis::AcceptQueueFull, seconds(5)),
        ] {
            thresholds.set(kind, threshold);
        }
        thresholds
    }
}

impl Thresholds {
    /// The defaults, with the two classic thresholds as given.
    pub fn with_classic(close_wait: Duration, established: Duration) -> Thresholds {
        let mut thresholds = Thresholds::default();
        thresholds.set(Diagnosis::PeerClosedNeverClosedLocally, Some(close_wait));
        thresholds.set(Diagnosis::OpenAndUnused, Some(established));
        thresholds
    }

    /// Flags `kind` after `threshold` (never with `None`).
    pub fn set(&mut self, kind: Diagnosis, threshold: Option<Duration>) {
        self.by_kind[kind as usize] = threshold;
    }

    /// The threshold of `kind`.
    pub fn get(&self, kind: Diagnosis) -> Option<Duration> {
        self.by_kind[kind as usize]
    }

    /// The threshold of time in `state`, if it can be stuck there.
    pub fn of(&self, state: TcpState) -> Option<Duration> {
        Diagnosis::for_state(state).and_then(|kind| self.get(kind))
    }

    /// How often the socket table should be sampled for these thresholds: idle ESTABLISHED
    /// connections are told from busy ones, and stalls are seen, by samples. A quarter of the
    /// idle threshold (an idle connection is flagged at most 25% late) and half of the shortest
    /// stall threshold (a stall is seen within 1.5 times its threshold), between 1 s and 10 s:
    /// 2.5 s with the defaults.
    pub fn refresh_every(&self) -> Duration {
        let idle = self.get(Diagnosis::OpenAndUnused).map(|t| t / 4);
        let stalls = [
            Diagnosis::ReceiveStalled,
            Diagnosis::SendStalled,
            Diagnosis::AcceptQueueFull,
        ]
        .into_iter()
        .filter_map(|kind| self.get(kind))
        .map(|t| t / 2);
        idle.into_iter()
            .chain(stalls)
            .min()
            .unwrap_or(Duration::MAX)
            .clamp(Duration::from_secs(1), Duration::from_secs(10))
    }
}

/// A deadline that came due: the connection in table slot `slot`, in its state visit numbered
/// `visit` (visit numbers are unique across connections, so a slot reused since has another).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DueDeadline {
    pub slot: u32,
    pub visit: u32,
}

/// One queued deadline, in 16 bytes (one per watched connection, so it counts): ordered by
/// `deadline` first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    deadline: Timestamp,
    slot: u32,
    visit: u32,
}

/// How long the deadline of a state visit just entered waits before it is queued in the heap,
/// if the visit is still going on then. Longer settles more visits (a handshake across the
/// world takes a few hundred milliseconds) but holds more of them under churn.
pub const SETTLE: Duration = Duration::from_millis(250);

/// The deadline of a state visit entered at `entered`, settling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Settling {
    entered: Timestamp,
    pending: Pending,
}

/// Deadline queue of the watched states.
#[derive(Debug, Default)]
pub struct StuckDetector {
    pending: BinaryHeap<Reverse<Pending>>,
    /// Deadlines of the visits entered in about the last [`SETTLE`], in the order entered: each
    /// at least `2 * SETTLE` after its visit began.
    settling: VecDeque<Settling>,
    /// No deadline in `settling` is earlier (the earliest queued there since it was last empty;
    /// meaningless while it is empty).
    settling_earliest: Option<Timestamp>,
}

impl StuckDetector {
    /// Watches the connection in table slot `slot` in its state visit `visit`, due at
    /// `deadline`.
    pub fn watch(&mut self, slot: u32, visit: u32, deadline: Timestamp) {
        self.pending.push(Reverse(Pending {
            deadline,
            slot,
            visit,
        }));
    }

    /// Watches the state visit `visit` of the connection in table slot `slot`, entered at
    /// `entered` and due at `deadline`: queued in the heap only if, [`SETTLE`] after `entered`,
    /// `is_current` (given to [`StuckDetector::due`]) says it still goes on. A deadline under
    /// `2 * SETTLE` away is queued at once, so that one settling is never due before it is
    /// queued (and [`StuckDetector::next_deadline`] has a bound on those settling).
    pub fn watch_visit(&mut self, slot: u32, visit: u32, entered: Timestamp, deadline: Timestamp) {
        if deadline < entered.saturating_add(2 * SETTLE) {
            self.watch(slot, visit, deadline);
            return;
        }
        // Counted afresh once the queue has emptied: an earliest from before is a looser bound.
        self.settling_earliest = Some(match self.settling_earliest {
            Some(earliest) if !self.settling.is_empty() => earliest.min(deadline),
            _ => deadline,
        });
        self.settling.push_back(Settling {
            entered,
            pending: Pending {
                deadline,
                slot,
                visit,
            },
        });
    }

    /// Queues the deadlines that have settled by `now` and whose visit `is_current(slot, visit)`
    /// says still goes on; drops the others.
    fn settle(&mut self, now: Timestamp, mut is_current: impl FnMut(u32, u32) -> bool) {
        while let Some(settling) = self.settling.front() {
            if settling.entered.saturating_add(SETTLE) > now {
                break;
            }
            let pending = settling.pending;
            self.settling.pop_front();
            if is_current(pending.slot, pending.visit) {
                self.pending.push(Reverse(pending));
            }
        }
    }

    /// Removes and returns the deadlines due at `now`, earliest first, at most `limit` of them
    /// (the others stay queued, due); first queues those that have settled and whose visit
    /// `is_current(slot, visit)` says still goes on.
    pub fn due(
        &mut self,
        now: Timestamp,
        limit: usize,
        is_current: impl FnMut(u32, u32) -> bool,
    ) -> Vec<DueDeadline> {
        self.settle(now, is_current);
        let mut due = Vec::new();
        while let Some(Reverse(pending)) = self.pending.peek().copied() {
            if pending.deadline > now || due.len() == limit {
                break;
            }
            self.pending.pop();
            due.push(DueDeadline {
                slot: pending.slot,
                visit: pending.visit,
            });
        }
        self.release_spare();
        due
    }

    /// Gives back the queue's memory once under half of it is used (after the deadlines of a
    /// burst of handshakes came due, say): down to an eighth more than what is queued. Growth
    /// doubles, so a queue that grows again does not shrink again before it has halved.
    fn release_spare(&mut self) {
        const SMALL: usize = 1024;
        let queued = self.pending.len();
        if self.pending.capacity() > queued * 2 + SMALL {
            self.pending.shrink_to(queued + queued / 8 + SMALL);
        }
        let settling = self.settling.len();
        if self.settling.capacity() > settling * 2 + SMALL {
            self.settling.shrink_to(settling + settling / 8 + SMALL);
        }
    }

    /// The earliest pending deadline, or a time before it: for those still settling, the
    /// earliest queued there, or if later, [`SETTLE`] after the first of them settles (each is
    /// at least `2 * SETTLE` after its visit began).
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let queued = self.pending.peek().map(|Reverse(pending)| pending.deadline);
        let settling = self.settling.front().map(|first| {
            let bound = first.entered.saturating_add(2 * SETTLE);
            self.settling_earliest
                .map_or(bound, |earliest| earliest.max(bound))
        });
        queued.into_iter().chain(settling).min()
    }

    /// How many deadlines are queued, settling or not.
    pub fn pending(&self) -> usize {
        self.pending.len() + self.settling.len()
    }

    /// Drops the queued deadlines, settling or not, for which `is_live(slot, visit)` is false.
    pub fn retain(&mut self, mut is_live: impl FnMut(u32, u32) -> bool) {
        self.pending
            .retain(|Reverse(pending)| is_live(pending.slot, pending.visit));
        self.settling
            .retain(|settling| is_live(settling.pending.slot, settling.pending.visit));
        self.release_spare();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Timestamp {
        Timestamp::from_nanos(s * 1_000_000_000)
    }

    #[test]
    fn the_queue_gives_its_memory_back_once_mostly_empty() {
        let mut detector = StuckDetector::default();
        for n in 0..100_000 {
            let deadline = if n % 10 == 0 { secs(100) } else { secs(1) };
            detector.watch(n, 1, deadline);
        }
        assert!(detector.pending.capacity() >= 100_000);
        assert_eq!(detector.due(secs(2), usize::MAX, |_, _| true).len(), 90_000);
        assert_eq!(detector.pending(), 10_000);
        assert!(detector.pending.capacity() <= 11_250 + 1024);
    }

    #[test]
    fn deadlines_come_due_at_their_time_and_once() {
        let mut d = StuckDetector::default();
        d.watch(1, 10, secs(105));
        d.watch(2, 11, secs(160));
        assert_eq!(d.pending(), 2);
        assert_eq!(d.next_deadline(), Some(secs(105)));
        assert!(
            d.due(
                Timestamp::from_nanos(secs(105).as_nanos() - 1),
                usize::MAX,
                |_, _| true
            )
            .is_empty()
        );
        assert_eq!(
            d.due(secs(105), usize::MAX, |_, _| true),
            [DueDeadline { slot: 1, visit: 10 }]
        );
        assert!(d.due(secs(106), usize::MAX, |_, _| true).is_empty());
        assert_eq!(d.next_deadline(), Some(secs(160)));
        assert_eq!(d.due(secs(1000), usize::MAX, |_, _| true).len(), 1);
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn deadlines_queued_out_of_order_come_out_in_time_order() {
        let mut d = StuckDetector::default();
        for (slot, t) in [(1, 30), (2, 10), (3, 20)] {
            d.watch(slot, slot, secs(t));
        }
        let slots: Vec<u32> = d
            .due(secs(25), usize::MAX, |_, _| true)
            .iter()
            .map(|x| x.slot)
            .collect();
        assert_eq!(slots, [2, 3]);
    }

    #[test]
    fn at_most_the_limit_comes_due_at_once_and_the_rest_stays_due() {
        let mut d = StuckDetector::default();
        for slot in 0..10 {
            d.watch(slot, slot, secs(u64::from(slot)));
        }
        let first: Vec<u32> = d
            .due(secs(100), 4, |_, _| true)
            .iter()
            .map(|x| x.slot)
            .collect();
        assert_eq!(first, [0, 1, 2, 3]);
        assert_eq!(d.next_deadline(), Some(secs(4)), "the rest is still due");
        assert_eq!(d.due(secs(100), 4, |_, _| true).len(), 4);
        assert_eq!(d.due(secs(100), 4, |_, _| true).len(), 2);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn a_visit_over_before_its_deadline_settled_is_never_queued() {
        let mut d = StuckDetector::default();
        let entered = secs(100);
        d.watch_visit(1, 7, entered, secs(110));
        d.watch_visit(2, 8, entered, secs(110));
        assert_eq!(d.pending(), 2);
        assert!(
            d.due(entered.saturating_add(SETTLE / 2), usize::MAX, |_, _| false)
                .is_empty()
        );
        assert_eq!(d.pending(), 2, "not settled yet: not looked at");
        // Visit 7 is over, visit 8 goes on.
        let due = d.due(entered.saturating_add(SETTLE), usize::MAX, |_, visit| {
            visit == 8
        });
        assert!(due.is_empty());
        assert_eq!(d.pending(), 1);
        assert_eq!(d.next_deadline(), Some(secs(110)));
        assert_eq!(
            d.due(secs(110), usize::MAX, |_, _| true),
            [DueDeadline { slot: 2, visit: 8 }]
        );
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn a_deadline_settling_comes_due_at_its_time_even_if_first_asked_then() {
        let mut d = StuckDetector::default();
        d.watch_visit(3, 9, secs(1), secs(6));
        assert_eq!(d.next_deadline(), Some(secs(6)), "the only one settling");
        assert_eq!(
            d.due(secs(6), usize::MAX, |_, _| true),
            [DueDeadline { slot: 3, visit: 9 }]
        );
    }

    #[test]
    fn next_deadline_is_never_later_than_one_settling() {
        let mut d = StuckDetector::default();
        // The earliest settling deadline is taken out first: the bound moves on to the first
        // still settling.
        d.watch_visit(1, 1, secs(0), secs(5));
        d.watch_visit(2, 2, secs(10), secs(70));
        assert_eq!(d.next_deadline(), Some(secs(5)));
        assert!(d.due(secs(1), usize::MAX, |slot, _| slot != 1).is_empty());
        let bound = secs(10).saturating_add(2 * SETTLE);
        assert_eq!(d.next_deadline(), Some(bound));
        assert!(bound <= secs(70));
        assert!(d.due(secs(11), usize::MAX, |_, _| true).is_empty());
        assert_eq!(d.next_deadline(), Some(secs(70)));
    }

    #[test]
    fn a_deadline_too_close_to_settle_is_queued_at_once() {
        let mut d = StuckDetector::default();
        let entered = secs(50);
        d.watch_visit(4, 4, entered, entered.saturating_add(SETTLE));
        assert_eq!(d.pending.len(), 1);
        assert!(d.settling.is_empty());
        assert_eq!(
            d.due(entered.saturating_add(SETTLE), usize::MAX, |_, _| false)
                .len(),
            1
        );
    }

    #[test]
    fn an_entry_is_small() {
        assert_eq!(std::mem::size_of::<Reverse<Pending>>(), 16);
    }

    #[test]
    fn retain_drops_stale_entries() {
        let mut d = StuckDetector::default();
        for i in 0..10 {
            d.watch(i, i, secs(u64::from(i)));
        }
        d.retain(|_, visit| visit % 2 == 0);
        assert_eq!(d.pending(), 5);
        assert!(
            d.due(secs(1000), usize::MAX, |_, _| true)
                .iter()
                .all(|x| x.visit % 2 == 0)
        );
    }

    #[test]
    fn every_state_a_connection_can_hang_in_has_a_default_threshold() {
        let t = Thresholds::default();
        assert_eq!(t.of(TcpState::CloseWait), Some(Duration::from_secs(5)));
        assert_eq!(t.of(TcpState::Established), Some(Duration::from_secs(60)));
        assert_eq!(t.of(TcpState::SynSent), Some(Duration::from_secs(10)));
        assert_eq!(t.of(TcpState::FinWait2), Some(Duration::from_secs(60)));
        assert_eq!(
            t.of(TcpState::Listen),
            None,
            "a listener is stuck only when full"
        );
        assert_eq!(t.of(TcpState::Close), None);
        assert_eq!(
            t.get(Diagnosis::AcceptQueueFull),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn the_socket_table_is_sampled_often_enough_for_the_shortest_sampled_threshold() {
        let mut t = Thresholds::default();
        assert_eq!(t.refresh_every(), Duration::from_millis(2500));
        for kind in [
            Diagnosis::ReceiveStalled,
            Diagnosis::SendStalled,
            Diagnosis::AcceptQueueFull,
        ] {
            t.set(kind, None);
        }
        assert_eq!(
            t.refresh_every(),
            Duration::from_secs(10),
            "60 s / 4, capped"
        );
        t.set(Diagnosis::OpenAndUnused, Some(Duration::from_secs(8)));
        assert_eq!(t.refresh_every(), Duration::from_secs(2));
        t.set(Diagnosis::OpenAndUnused, None);
        assert_eq!(t.refresh_every(), Duration::from_secs(10));
        t.set(Diagnosis::SendStalled, Some(Duration::from_millis(200)));
        assert_eq!(
            t.refresh_every(),
            Duration::from_secs(1),
            "never under a second"
        );
    }
}
