//! The connection table: every open connection of the traced processes, fed by transitions and
//! by the sockets found at attach, and watched for stuck states.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use probe_common::TcpState;
use rustc_hash::FxHashMap;

use super::{
    activity::{Activity, ExistingSocket},
    code_path::{CodePath, StackRef},
    event::{Endpoints, Transition},
    lifecycle::{Connection, ConnectionKey, Ending, Owner},
    stuck::{Diagnosis, StuckDetector, Thresholds},
    summary::{ClosedCounts, OpenConnection, Summary},
    table::Table,
    time::Timestamp,
};

/// What one transition did to a connection, for the sinks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    /// The kernel socket address.
    pub id: u64,
    pub inode: Option<u64>,
    pub owner: Owner,
    pub endpoints: Endpoints,
    pub old: TcpState,
    pub new: TcpState,
    pub at: Timestamp,
    /// Time spent in `old`, where probe saw the connection enter it.
    pub in_old: Option<Duration>,
    /// How the connection ended, when `new` is CLOSE.
    pub ending: Option<Ending>,
}

impl StateChange {
    /// True when the connection went on into TIME_WAIT, which the tracepoint does not show.
    pub fn time_wait(&self) -> bool {
        self.ending == Some(Ending::TimeWait)
    }
}

/// A connection that just crossed its state's threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StuckAlert {
    pub key: ConnectionKey,
    pub inode: Option<u64>,
    pub owner: Owner,
    pub endpoints: Endpoints,
    pub state: TcpState,
    /// When it entered `state` (when probe attached, if `since_attach`).
    pub since: Timestamp,
    /// How long it has been in `state` (at least, if `since_attach`).
    pub age: Duration,
    /// Already in `state` when probe attached: `since` and `age` are bounds.
    pub since_attach: bool,
    /// Time without data either way, where tcp_info tells.
    pub idle: Option<Duration>,
    pub activity: Option<Activity>,
    /// Where the program opened it, where probe captured it.
    pub opened_stack: Option<StackRef>,
    /// That stack, symbolized (filled in by whoever can symbolize).
    pub opened_at: Option<Arc<CodePath>>,
    pub diagnosis: Diagnosis,
}

#[derive(Debug)]
struct Tracked {
    connection: Connection,
    /// Number of the current state visit, unique across all connections: a queued deadline is
    /// still valid only while the connection is in that same visit.
    visit: u32,
    /// Flagged as stuck in the current visit.
    stuck: bool,
}

/// Connection table and stuck detection.
#[derive(Debug)]
pub struct Tracker {
    table: Table<Tracked>,
    /// Connections found at attach and not yet named by a transition: endpoints -> inode.
    existing: HashMap<(SocketAddr, SocketAddr), u64>,
    processes: FxHashMap<u32, Arc<str>>,
    thresholds: Thresholds,
    detector: StuckDetector,
    closed: ClosedCounts,
    next_visit: u32,
}

/// Deadlines queued beyond this many per open connection (plus a constant) trigger a clean-up of
/// the ones whose connection moved on, so churn cannot grow the queue without bound.
const STALE_DEADLINES_PER_CONNECTION: usize = 2;
const STALE_DEADLINES_SLACK: usize = 1024;

impl Tracker {
    /// An empty table with these thresholds.
    pub fn new(thresholds: Thresholds) -> Self {
        Tracker {
            table: Table::default(),
            existing: HashMap::new(),
            processes: FxHashMap::default(),
            thresholds,
            detector: StuckDetector::default(),
            closed: ClosedCounts::default(),
            next_visit: 0,
        }
    }

    /// Names a traced process, so its connections show its name.
    pub fn register_process(&mut self, pid: u32, comm: &str) {
        self.processes.insert(pid, Arc::from(comm));
    }

    /// Adds a connection that was already open when probe attached at `now`. A CLOSE_WAIT one is
    /// due at once; an ESTABLISHED one when it has been idle for the threshold. A socket in
    /// CLOSE (created, never connected) is no connection: its connect or listen will be seen.
    pub fn seed(&mut self, socket: &ExistingSocket, now: Timestamp) {
        if socket.state == TcpState::Close {
            return;
        }
        let connection = Connection::existing(socket, now);
        let key = connection.key;
        self.existing.insert(
            (socket.endpoints.local, socket.endpoints.remote),
            socket.inode,
        );
        let visit = self.next_visit();
        let deadline = match (socket.state, socket.activity) {
            (TcpState::CloseWait, _) => Some(now),
            (TcpState::Established, Some(activity)) => Some(
                now.saturating_add(self.thresholds.established)
                    .saturating_sub(activity.idle_at(now)),
            ),
            (state, _) => self.thresholds.of(state).map(|t| now.saturating_add(t)),
        };
        if let Some(deadline) = deadline {
            self.detector.watch(key, visit, socket.state, deadline);
        }
        self.table.insert(
            key,
            Tracked {
                connection,
                visit,
                stuck: false,
            },
        );
    }

    /// Applies one transition from the kernel.
    pub fn apply(&mut self, transition: &Transition) -> StateChange {
        let key = ConnectionKey::Socket(transition.sock_id);
        self.adopt_existing(key, &transition.endpoints);
        let starts_lifecycle = matches!(
            (transition.old, transition.new),
            (TcpState::Close, _) | (TcpState::Listen, TcpState::SynRecv)
        );
        let visit = self.next_visit();
        let tracked = if self.table.contains_key(key) {
            let tracked = self.table.get_mut(key).expect("checked just above");
            if starts_lifecycle {
                // The socket id was reused and the old lifecycle's CLOSE was never seen (a
                // lost event): the old lifecycle cannot go on, start afresh.
                tracked.connection = Connection::first_seen(transition);
            }
            tracked
        } else {
            self.table.insert(
                key,
                Tracked {
                    connection: Connection::first_seen(transition),
                    visit,
                    stuck: false,
                },
            )
        };
        let in_old = tracked.connection.advance(transition);
        tracked.visit = visit;
        tracked.stuck = false;

        let connection = &tracked.connection;
        let change = StateChange {
            id: transition.sock_id,
            inode: connection.inode(),
            owner: owner_of(&self.processes, connection.pid),
            endpoints: connection.endpoints(),
            old: transition.old,
            new: transition.new,
            at: transition.at,
            in_old,
            ending: connection.ending,
        };
        if connection.is_closed() {
            if let Some(done) = self.table.remove(key) {
                self.closed.record(&done.connection);
            }
        } else if let Some(threshold) = self.thresholds.of(transition.new) {
            self.detector.watch(
                key,
                visit,
                transition.new,
                transition.at.saturating_add(threshold),
            );
            self.drop_stale_deadlines();
        }
        change
    }

    /// Records fresh tcp_info samples (one sock_diag dump of the traced processes' sockets),
    /// matched to open connections by their endpoints.
    pub fn refresh_activity(&mut self, samples: &[ExistingSocket]) {
        let by_endpoints: HashMap<(SocketAddr, SocketAddr), &ExistingSocket> = samples
            .iter()
            .map(|s| ((s.endpoints.local, s.endpoints.remote), s))
            .collect();
        for tracked in self.table.values_mut() {
            let connection = &mut tracked.connection;
            let endpoints = (connection.endpoints().local, connection.endpoints().remote);
            if let Some(sample) = by_endpoints.get(&endpoints) {
                connection.set_inode(sample.inode);
                if let Some(activity) = sample.activity {
                    connection.set_activity(activity);
                }
            }
        }
    }

    /// Flags the connections whose deadline has come at `now`, each once per state visit. An
    /// ESTABLISHED connection that tcp_info shows busy is not flagged: it is looked at again when
    /// it could have been idle for the threshold.
    pub fn due_stuck(&mut self, now: Timestamp) -> Vec<StuckAlert> {
        let mut alerts = Vec::new();
        for due in self.detector.due(now) {
            let Some(tracked) = self.table.get_mut(due.key) else {
                continue;
            };
            if tracked.visit != due.visit || tracked.stuck {
                continue;
            }
            let (Some(diagnosis), Some(threshold)) = (
                Diagnosis::for_state(due.state),
                self.thresholds.of(due.state),
            ) else {
                continue;
            };
            let connection = &tracked.connection;
            let idle = connection.activity().map(|a| a.idle_at(now));
            if let (TcpState::Established, Some(idle)) = (due.state, idle)
                && idle < threshold
            {
                self.detector.watch(
                    due.key,
                    due.visit,
                    due.state,
                    now.saturating_add(threshold - idle),
                );
                continue;
            }
            tracked.stuck = true;
            let since = connection.state_since().unwrap_or(now);
            alerts.push(StuckAlert {
                key: due.key,
                inode: connection.inode(),
                owner: owner_of(&self.processes, connection.pid),
                endpoints: connection.endpoints(),
                state: due.state,
                since,
                age: now.saturating_since(since),
                since_attach: connection.since_attach(),
                idle,
                activity: connection.activity(),
                opened_stack: connection.opened_at,
                opened_at: None,
                diagnosis,
            });
        }
        alerts
    }

    /// When [`Tracker::due_stuck`] will next have something to look at.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.detector.next_deadline()
    }

    /// The open connections (oldest in their state first) and the totals, as of `now`.
    pub fn summary(&self, now: Timestamp) -> Summary {
        let mut open: Vec<OpenConnection> = self
            .table
            .values()
            .map(|tracked| {
                let connection = &tracked.connection;
                OpenConnection {
                    key: connection.key,
                    inode: connection.inode(),
                    owner: owner_of(&self.processes, connection.pid),
                    endpoints: connection.endpoints(),
                    state: connection.state(),
                    since: connection.state_since(),
                    age: connection
                        .state_since()
                        .map(|since| now.saturating_since(since)),
                    since_attach: connection.since_attach(),
                    idle: connection.activity().map(|a| a.idle_at(now)),
                    activity: connection.activity(),
                    opened_stack: connection.opened_at,
                    opened_at: None,
                    stuck: tracked.stuck,
                    opened_by: connection.opened_by,
                    history: connection.history,
                }
            })
            .collect();
        // Unknown starts (already open before probe saw them) are the oldest of all.
        open.sort_by_key(|c| (c.since, c.key));
        Summary::new(open, self.closed)
    }

    /// How many connections are open.
    pub fn open_count(&self) -> usize {
        self.table.len()
    }

    /// A connection found at attach, named by a transition for the first time: from now on it
    /// is known by its socket address.
    fn adopt_existing(&mut self, key: ConnectionKey, endpoints: &Endpoints) {
        if self.existing.is_empty() || self.table.contains_key(key) {
            return;
        }
        let Some(inode) = self.existing.remove(&(endpoints.local, endpoints.remote)) else {
            return;
        };
        if self.table.rekey(ConnectionKey::Inode(inode), key)
            && let Some(tracked) = self.table.get_mut(key)
        {
            tracked.connection.key = key;
        }
    }

    /// A new visit number. They wrap after 4 billion visits: by then, a queued deadline with
    /// the same number for the same connection is long gone.
    fn next_visit(&mut self) -> u32 {
        self.next_visit = self.next_visit.wrapping_add(1);
        self.next_visit
    }

    fn drop_stale_deadlines(&mut self) {
        let limit = self.table.len() * STALE_DEADLINES_PER_CONNECTION + STALE_DEADLINES_SLACK;
        if self.detector.pending() > limit {
            let table = &self.table;
            self.detector
                .retain(|key, visit| table.get(key).is_some_and(|tracked| tracked.visit == visit));
        }
    }
}

/// The owner of a connection, named.
fn owner_of(processes: &FxHashMap<u32, Arc<str>>, pid: u32) -> Owner {
    Owner {
        pid,
        comm: processes
            .get(&pid)
            .cloned()
            .unwrap_or_else(|| Arc::from("?")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::{event::Family, lifecycle::OpenedBy};
    use probe_common::{Attribution, TcpState::*};

    const MS: u64 = 1_000_000;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_nanos(ms * MS)
    }

    fn t(id: u64, old: TcpState, new: TcpState, ms: u64) -> Transition {
        Transition {
            sock_id: id,
            pid: 42,
            at: at(ms),
            endpoints: Endpoints {
                family: Family::Ipv4,
                local: format!("127.0.0.1:{}", 40000 + id % 20000).parse().unwrap(),
                remote: "127.0.0.1:8080".parse().unwrap(),
            },
            old,
            new,
            attribution: Attribution::Known,
            stack: None,
        }
    }

    fn tracker() -> Tracker {
        let mut tracker = Tracker::new(Thresholds {
            close_wait: Duration::from_secs(5),
            established: Duration::from_secs(60),
        });
        tracker.register_process(42, "client");
        tracker
    }

    fn open_client(tracker: &mut Tracker, id: u64, ms: u64) {
        tracker.apply(&t(id, Close, SynSent, ms));
        tracker.apply(&t(id, SynSent, Established, ms + 1));
    }

    #[test]
    fn close_wait_is_flagged_once_when_it_crosses_the_threshold() {
        let mut tracker = tracker();
        open_client(&mut tracker, 1, 0);
        let change = tracker.apply(&t(1, Established, CloseWait, 1_000));
        assert_eq!(change.in_old, Some(Duration::from_millis(999)));
        assert_eq!(&*change.owner.comm, "client");
        assert_eq!(tracker.next_deadline(), Some(at(6_000)));
        assert!(tracker.due_stuck(at(5_999)).is_empty());
        let alerts = tracker.due_stuck(at(6_000));
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].state, CloseWait);
        assert_eq!(alerts[0].age, Duration::from_secs(5));
        assert_eq!(alerts[0].diagnosis, Diagnosis::PeerClosedNeverClosedLocally);
        assert!(
            tracker.due_stuck(at(100_000)).is_empty(),
            "flagged once only"
        );

        let summary = tracker.summary(at(10_000));
        assert_eq!(summary.open.len(), 1);
        assert!(summary.open[0].stuck);
        assert_eq!(summary.open[0].age, Some(Duration::from_secs(9)));
        assert_eq!(summary.stuck_count(CloseWait), 1);
        assert_eq!(summary.count(CloseWait), 1);
    }

    #[test]
    fn a_connection_that_moves_on_before_its_deadline_is_not_flagged() {
        let mut tracker = tracker();
        open_client(&mut tracker, 1, 0);
        tracker.apply(&t(1, Established, CloseWait, 1_000));
        tracker.apply(&t(1, CloseWait, LastAck, 2_000));
        tracker.apply(&t(1, LastAck, Close, 2_001));
        assert!(tracker.due_stuck(at(1_000_000)).is_empty());
        assert_eq!(tracker.open_count(), 0);
        let summary = tracker.summary(at(1_000_000));
        assert_eq!(summary.closed.total, 1);
        assert_eq!(summary.closed.remote_first, 1);
    }

    #[test]
    fn idle_established_is_flagged_then_close_wait_is_flagged_again() {
        let mut tracker = tracker();
        open_client(&mut tracker, 1, 0);
        let alerts = tracker.due_stuck(at(61_000));
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].state, Established);
        assert_eq!(alerts[0].diagnosis, Diagnosis::OpenAndUnused);
        tracker.apply(&t(1, Established, CloseWait, 70_000));
        assert!(!tracker.summary(at(70_000)).open[0].stuck);
        assert_eq!(tracker.due_stuck(at(75_000)).len(), 1);
    }

    #[test]
    fn socket_ids_are_reused_after_close() {
        let mut tracker = tracker();
        open_client(&mut tracker, 1, 0);
        tracker.apply(&t(1, Established, FinWait1, 10));
        tracker.apply(&t(1, FinWait1, FinWait2, 11));
        let change = tracker.apply(&t(1, FinWait2, Close, 12));
        assert!(change.time_wait());
        open_client(&mut tracker, 1, 20);
        let summary = tracker.summary(at(30));
        assert_eq!(summary.open.len(), 1);
        assert_eq!(summary.open[0].opened_by, OpenedBy::Local);
        assert_eq!(summary.open[0].since, Some(at(21)));
        assert_eq!(summary.closed.local_first, 1);
    }

    #[test]
    fn a_reused_id_whose_close_was_lost_starts_a_new_lifecycle() {
        let mut tracker = tracker();
        open_client(&mut tracker, 1, 0);
        tracker.apply(&t(1, Established, CloseWait, 5));
        // The CLOSE of that socket was lost; a new socket gets the same address.
        let change = tracker.apply(&t(1, Close, SynSent, 100));
        assert_eq!(change.in_old, None);
        tracker.apply(&t(1, SynSent, Established, 101));
        // The stale CLOSE_WAIT deadline must not flag the new connection.
        assert!(tracker.due_stuck(at(10_000)).is_empty());
        let summary = tracker.summary(at(10_000));
        assert_eq!(summary.open[0].state, Established);
    }

    #[test]
    fn closed_counts_tell_who_closed_first_and_resets() {
        let mut tracker = tracker();
        // local first
        open_client(&mut tracker, 1, 0);
        for (old, new) in [
            (Established, FinWait1),
            (FinWait1, FinWait2),
            (FinWait2, Close),
        ] {
            tracker.apply(&t(1, old, new, 5));
        }
        // remote first
        open_client(&mut tracker, 2, 0);
        for (old, new) in [
            (Established, CloseWait),
            (CloseWait, LastAck),
            (LastAck, Close),
        ] {
            tracker.apply(&t(2, old, new, 5));
        }
        // reset
        open_client(&mut tracker, 3, 0);
        tracker.apply(&t(3, Established, Close, 5));
        // refused
        tracker.apply(&t(4, Close, SynSent, 0));
        tracker.apply(&t(4, SynSent, Close, 1));
        // a listener is not a connection
        tracker.apply(&t(5, Close, Listen, 0));
        tracker.apply(&t(5, Listen, Close, 1));

        let closed = tracker.summary(at(10)).closed;
        assert_eq!(
            closed,
            ClosedCounts {
                total: 4,
                local_first: 1,
                remote_first: 1,
                simultaneous: 0,
                reset: 1,
                connect_failed: 1,
            }
        );
    }

    #[test]
    fn summary_lists_oldest_first_with_unknown_starts_first() {
        let mut tracker = tracker();
        open_client(&mut tracker, 1, 50);
        open_client(&mut tracker, 2, 10);
        // Seen mid-life: a pre-existing connection whose owner shut it down.
        tracker.apply(&t(3, Established, FinWait1, 70));
        let summary = tracker.summary(at(100));
        let keys: Vec<ConnectionKey> = summary.open.iter().map(|c| c.key).collect();
        assert_eq!(keys, [2, 1, 3].map(ConnectionKey::Socket));
        assert_eq!(summary.open[2].opened_by, OpenedBy::Unknown);
    }

    #[test]
    fn churn_does_not_grow_the_deadline_queues_without_bound() {
        let mut tracker = tracker();
        for i in 0..100_000 {
            open_client(&mut tracker, i, i);
            tracker.apply(&t(i, Established, Close, i + 2));
        }
        assert_eq!(tracker.open_count(), 0);
        assert!(tracker.detector.pending() <= STALE_DEADLINES_SLACK + 1);
    }

    fn existing(
        inode: u64,
        state: TcpState,
        idle_s: Option<u64>,
        now: Timestamp,
    ) -> ExistingSocket {
        ExistingSocket {
            pid: 42,
            inode,
            state,
            endpoints: t(inode, Close, Close, 0).endpoints,
            activity: idle_s.map(|idle| activity(idle, now)),
        }
    }

    fn activity(idle_s: u64, sampled_at: Timestamp) -> Activity {
        Activity {
            sampled_at,
            last_data_sent: Duration::from_secs(idle_s),
            last_data_received: Duration::from_secs(idle_s + 100),
            bytes_acked: 10,
            bytes_received: 20,
            unacked: 0,
            retransmits: 1,
        }
    }

    #[test]
    fn close_wait_found_at_attach_is_flagged_at_once_as_at_least_since_attach() {
        let mut tracker = tracker();
        let attach = at(1_000);
        tracker.seed(&existing(7, CloseWait, Some(30), attach), attach);
        let alerts = tracker.due_stuck(attach);
        assert_eq!(alerts.len(), 1);
        assert!(alerts[0].since_attach);
        assert_eq!(alerts[0].key, ConnectionKey::Inode(7));
        assert_eq!(alerts[0].idle, Some(Duration::from_secs(30)));
        let summary = tracker.summary(at(3_000));
        assert!(summary.open[0].since_attach && summary.open[0].stuck);
        assert_eq!(summary.open[0].age, Some(Duration::from_secs(2)));
    }

    #[test]
    fn an_unconnected_socket_found_at_attach_is_not_a_connection() {
        let mut tracker = tracker();
        tracker.seed(&existing(7, Close, None, at(0)), at(0));
        assert_eq!(tracker.open_count(), 0);
        assert!(tracker.due_stuck(at(100_000)).is_empty());
    }

    #[test]
    fn a_connection_found_at_attach_is_adopted_by_its_first_transition() {
        let mut tracker = tracker();
        tracker.seed(&existing(7, CloseWait, None, at(0)), at(0));
        let change = tracker.apply(&t(7, CloseWait, LastAck, 500));
        assert_eq!(change.in_old, None, "entered before attach: unknown");
        assert_eq!(change.inode, Some(7));
        let summary = tracker.summary(at(500));
        assert_eq!(summary.open[0].key, ConnectionKey::Socket(7));
        tracker.apply(&t(7, LastAck, Close, 501));
        assert_eq!(tracker.open_count(), 0);
        assert_eq!(tracker.summary(at(600)).closed.remote_first, 1);
    }

    #[test]
    fn idle_established_found_at_attach_is_flagged_when_idle_for_the_threshold() {
        let mut tracker = tracker();
        let attach = at(100_000);
        // Idle 50s at attach, threshold 60s: due 10s later, not before.
        tracker.seed(&existing(1, Established, Some(50), attach), attach);
        // Idle 70s at attach: due at once.
        tracker.seed(&existing(2, Established, Some(70), attach), attach);
        let now_keys = |alerts: Vec<StuckAlert>| -> Vec<ConnectionKey> {
            alerts.iter().map(|a| a.key).collect()
        };
        assert_eq!(
            now_keys(tracker.due_stuck(attach)),
            [ConnectionKey::Inode(2)]
        );
        assert!(tracker.due_stuck(at(109_999)).is_empty());
        assert_eq!(
            now_keys(tracker.due_stuck(at(110_000))),
            [ConnectionKey::Inode(1)]
        );
    }

    #[test]
    fn a_busy_established_connection_is_not_flagged() {
        let mut tracker = tracker();
        open_client(&mut tracker, 1, 0);
        open_client(&mut tracker, 2, 0);
        let sample = |id: u64, idle_s: u64, at_ms: u64| ExistingSocket {
            pid: 42,
            inode: 100 + id,
            state: Established,
            endpoints: t(id, Close, Close, 0).endpoints,
            activity: Some(activity(idle_s, at(at_ms))),
        };
        // At 59s: connection 1 moved data 1s ago, connection 2 never did.
        tracker.refresh_activity(&[sample(1, 1, 59_000), sample(2, 59, 59_000)]);
        let alerts = tracker.due_stuck(at(61_001));
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].key, ConnectionKey::Socket(2));
        assert_eq!(alerts[0].inode, Some(102));
        // Connection 1 keeps moving data: never flagged.
        for second in 62..200 {
            tracker.refresh_activity(&[sample(1, 0, second * 1000)]);
            assert!(tracker.due_stuck(at(second * 1000)).is_empty());
        }
        // It stops: flagged one threshold after its last data.
        assert!(tracker.due_stuck(at(258_999)).is_empty());
        assert_eq!(tracker.due_stuck(at(259_000)).len(), 1);
    }

    fn path(function: &str) -> Arc<CodePath> {
        Arc::new(CodePath {
            frames: vec![crate::track::Frame {
                function: function.into(),
                file: Some("main.go".into()),
                line: Some(31),
                address: 0x1000,
            }],
        })
    }

    #[test]
    fn stuck_connections_are_grouped_by_the_code_that_opened_them() {
        let mut tracker = tracker();
        let paths = [path("main.alpha"), path("main.beta")];
        for (id, opener) in [(1, 0), (2, 0), (3, 1), (4, 0)] {
            let mut connect = t(id, Close, SynSent, 0);
            connect.stack = Some(StackRef {
                pid: 42,
                id: opener,
            });
            tracker.apply(&connect);
            tracker.apply(&t(id, SynSent, Established, 1));
            tracker.apply(&t(id, Established, CloseWait, 2));
        }
        // One that is not stuck does not count.
        tracker.apply(&t(5, Close, SynSent, 0));
        tracker.due_stuck(at(10_000));
        let mut summary = tracker.summary(at(10_000));
        summary.resolve_code_paths(|stack| Some(paths[stack.id as usize].clone()));
        let groups = summary.stuck_by_code_path();
        let shape: Vec<(String, usize)> = groups
            .iter()
            .map(|g| (g.opened_at.as_ref().unwrap().describe(1), g.connections))
            .collect();
        assert_eq!(
            shape,
            [
                ("main.alpha (main.go:31)".to_string(), 3),
                ("main.beta (main.go:31)".to_string(), 1)
            ]
        );
        assert!(groups.iter().all(|g| g.state == CloseWait));
    }

    #[test]
    fn unknown_processes_get_a_placeholder_name() {
        let mut tracker = tracker();
        let mut other = t(1, Close, SynSent, 0);
        other.pid = 7;
        assert_eq!(&*tracker.apply(&other).owner.comm, "?");
    }
}
