//! The connection table: every open connection of the traced processes, fed by transitions and
//! by the sockets found at attach, and watched for stuck states.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use probe_common::TcpState;
use rustc_hash::{FxHashMap, FxHashSet};

use self::{destinations::Destinations, unnamed::Unnamed};

use super::{
    activity::ExistingSocket,
    code_path::CodePathSource,
    diagnosis::Diagnosis,
    event::{Endpoints, Transition},
    lifecycle::{ClosedFirst, Connection, ConnectionKey, Ending, Owner, StateSet},
    stuck::{StuckDetector, Thresholds},
    summary::{ClosedCounts, OpenConnection, Summary},
    table::{Keyed, Table},
    time::Timestamp,
    triage::StuckTally,
    view::{ConnectionView, Losses},
};

/// What one transition did to a connection, for the sinks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    /// The kernel socket address.
    pub id: u64,
    /// The socket's cookie, where known.
    pub cookie: Option<u64>,
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
    /// Which side closed first, where known.
    pub closed_first: Option<ClosedFirst>,
    /// Every state the connection has entered, this one included.
    pub visited: StateSet,
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
    /// The connection; its `since` and `age` are always known here (bounds, if
    /// `since_attach`): how long it has been in its state, or, for a stall, stalled.
    pub connection: ConnectionView,
    pub diagnosis: Diagnosis,
    /// For a full accept queue: the connections its network namespace dropped since the queue
    /// filled (`ListenOverflows`), where that could be read.
    pub dropped: Option<u64>,
}

impl StuckAlert {
    /// When it entered its state (when probe attached, if `since_attach`).
    pub fn since(&self) -> Timestamp {
        self.connection.since.unwrap_or_default()
    }

    /// How long it has been in its state (at least, if `since_attach`).
    pub fn age(&self) -> Duration {
        self.connection.age.unwrap_or_default()
    }
}

#[derive(Debug)]
struct Tracked {
    connection: Connection,
    /// Number of the current state visit, unique across all connections: a queued deadline is
    /// still valid only while the connection is in that same visit.
    visit: u32,
    /// Flagged as stuck (and why) in the current visit, or in the current stall.
    stuck: Option<Diagnosis>,
}

impl Keyed for Tracked {
    fn key(&self) -> ConnectionKey {
        self.connection.key()
    }
}

/// Connection table and stuck detection.
#[derive(Debug)]
pub struct Tracker {
    table: Table<Tracked>,
    /// Connections found at attach and not yet named by a transition.
    unnamed: Unnamed,
    processes: FxHashMap<u32, Arc<str>>,
    thresholds: Thresholds,
    detector: StuckDetector,
    closed: ClosedCounts,
    next_visit: u32,
    /// The processes that hold a connection besides its owner, for the few held by several.
    co_holders: FxHashMap<ConnectionKey, Vec<u32>>,
    /// The connections whose queues are stalled (few: only those with data waiting).
    stalls: FxHashMap<ConnectionKey, stalls::Stall>,
    /// Each listener's namespace `ListenOverflows` at its last sample: where a full accept
    /// queue's drops are counted from (the queue filled since then).
    overflows_seen: FxHashMap<ConnectionKey, u64>,
    /// Where the traced processes connect to.
    destinations: Destinations,
}

/// Deadlines [`Tracker::due_stuck`] looks at per call.
pub const DEADLINES_AT_ONCE: usize = 4096;

/// Deadlines queued beyond this many per open connection (plus a constant) trigger a clean-up of
/// the ones whose connection moved on, so churn cannot grow the queue without bound.
const STALE_DEADLINES_PER_CONNECTION: usize = 2;
const STALE_DEADLINES_SLACK: usize = 1024;

impl Tracker {
    /// An empty table with these thresholds.
    pub fn new(thresholds: Thresholds) -> Self {
        Tracker {
            table: Table::default(),
            unnamed: Unnamed::default(),
            processes: FxHashMap::default(),
            thresholds,
            detector: StuckDetector::default(),
            closed: ClosedCounts::default(),
            next_visit: 0,
            co_holders: FxHashMap::default(),
            stalls: FxHashMap::default(),
            overflows_seen: FxHashMap::default(),
            destinations: Destinations::default(),
        }
    }

    /// The remote ends the traced processes connected to since probe started (connections
    /// found open at attach included, unless accepted), or `None` when there are too many to
    /// list (more than 64).
    pub fn connect_destinations(&self) -> Option<Vec<SocketAddr>> {
        self.destinations.list()
    }

    /// Process `pid`'s name (`?` until it has one).
    pub fn process_name(&self, pid: u32) -> Arc<str> {
        owner_of(&self.processes, pid).comm
    }

    /// Whether process `pid` has a name here.
    pub fn knows_process(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid)
    }

    /// Names a traced process, so its connections show its name.
    pub fn register_process(&mut self, pid: u32, comm: &str) {
        self.processes.insert(pid, Arc::from(comm));
    }

    /// Adds the connections that were already open when probe attached at `now`. A CLOSE_WAIT
    /// one is due at once; an ESTABLISHED one when it has been idle for the threshold. A socket
    /// in CLOSE (created, never connected) is no connection: its connect or listen will be seen.
    /// Those whose local endpoint is one of theirs listening were accepted.
    pub fn seed(&mut self, sockets: &[ExistingSocket], now: Timestamp) {
        let listening = Listening::of(sockets);
        for socket in sockets {
            let accepted =
                socket.state != TcpState::Listen && listening.serves(socket.endpoints.local);
            self.seed_one(socket, now, accepted);
        }
    }

    fn seed_one(&mut self, socket: &ExistingSocket, now: Timestamp, accepted: bool) {
        // Socket inodes are 32 bits (so are sock_diag's): a larger number is no socket's.
        if socket.state == TcpState::Close || u32::try_from(socket.inode).is_err() {
            return;
        }
        if !accepted && socket.state != TcpState::Listen {
            self.destinations.note(socket.endpoints.remote);
        }
        let connection = Connection::existing(socket, now, accepted);
        let key = connection.key();
        // When the socket entered its state at the latest (tcp_info's lower bound on its age).
        let entered = connection.state_since().unwrap_or(now);
        if let Some(slot) = self.table.find(key) {
            // Seen twice: the second replaces the first.
            self.unnamed.forget(&self.table, slot);
        }
        let visit = self.next_visit();
        let threshold = self.thresholds.of(socket.state);
        let deadline = match (socket.state, socket.activity) {
            (TcpState::Established, Some(activity)) => {
                threshold.map(|t| now.saturating_add(t).saturating_sub(activity.idle_at(now)))
            }
            _ => threshold.map(|t| entered.saturating_add(t)),
        };
        let slot = self.table.insert(Tracked {
            connection,
            visit,
            stuck: None,
        });
        self.unnamed.note(&self.table, slot);
        if let Some(deadline) = deadline {
            self.detector.watch(slot, visit, deadline);
        }
        self.note_queues(key, socket.state, &socket.queues, now);
    }

    /// Applies one transition from the kernel.
    pub fn apply(&mut self, transition: &Transition) -> StateChange {
        let key = ConnectionKey::Socket(transition.sock_id);
        self.adopt_existing(key, transition);
        if (transition.old, transition.new) == (TcpState::Close, TcpState::SynSent) {
            self.destinations.note(transition.endpoints.remote);
        }
        let starts_lifecycle = matches!(
            (transition.old, transition.new),
            (TcpState::Close, _) | (TcpState::Listen, TcpState::SynRecv)
        );
        let visit = self.next_visit();
        let slot = match self.table.find(key) {
            Some(slot) => {
                if starts_lifecycle && let Some(tracked) = self.table.at_mut(slot) {
                    // The socket id was reused and the old lifecycle's CLOSE was never seen (a
                    // lost event): the old lifecycle cannot go on, start afresh (same key).
                    tracked.connection = Connection::first_seen(transition);
                }
                slot
            }
            None => self.table.insert(Tracked {
                connection: Connection::first_seen(transition),
                visit,
                stuck: None,
            }),
        };
        let tracked = self
            .table
            .at_mut(slot)
            .expect("found or inserted just above");
        let in_old = tracked.connection.advance(transition);
        tracked.visit = visit;
        tracked.stuck = None;

        let connection = &tracked.connection;
        let change = StateChange {
            id: transition.sock_id,
            cookie: connection.cookie(),
            inode: connection.inode(),
            owner: owner_of(&self.processes, connection.pid),
            endpoints: connection.endpoints(),
            old: transition.old,
            new: transition.new,
            at: transition.at,
            in_old,
            ending: connection.ending,
            closed_first: connection.closed_first,
            visited: connection.history.visited(),
        };
        if let Some(ending) = connection.ending {
            self.closed.record(connection.closed_first, ending);
            self.forget(key);
        } else if let Some(threshold) = self.thresholds.of(transition.new) {
            self.detector.watch_visit(
                slot,
                visit,
                transition.at,
                transition.at.saturating_add(threshold),
            );
            self.drop_stale_deadlines();
        }
        change
    }

    /// Records what the kernel's socket table says now (sock_diag dumps of the traced
    /// processes' network namespaces): each connection's inode, endpoints and tcp_info. A
    /// connection with a cookie is matched by it, exactly, whatever its namespace and even
    /// while its local port is still unknown to probe (a connect hanging in SYN_SENT); one
    /// without (the classic program) by its endpoints.
    pub fn refresh_activity(&mut self, samples: &[ExistingSocket], now: Timestamp) {
        let by_cookie: FxHashMap<u64, &ExistingSocket> = samples
            .iter()
            .filter(|s| s.cookie != 0)
            .map(|s| (s.cookie, s))
            .collect();
        // Only connections without a cookie (the classic program's) are matched by endpoints:
        // the map is built the first time one is met.
        let mut by_endpoints: Option<HashMap<(SocketAddr, SocketAddr), &ExistingSocket>> = None;
        let mut queues = Vec::new();
        for tracked in self.table.values_mut() {
            let connection = &mut tracked.connection;
            let sample = match connection.cookie() {
                Some(cookie) => by_cookie.get(&cookie),
                None => {
                    let endpoints = connection.endpoints();
                    by_endpoints
                        .get_or_insert_with(|| {
                            samples
                                .iter()
                                .map(|s| ((s.endpoints.local, s.endpoints.remote), s))
                                .collect()
                        })
                        .get(&(endpoints.local, endpoints.remote))
                }
            };
            if let Some(sample) = sample {
                connection.note_sample(sample.inode, sample.cookie, sample.endpoints);
                if let Some(activity) = sample.activity {
                    connection.set_activity(activity);
                }
                queues.push((connection.key(), connection.state(), sample.queues));
            }
        }
        for (key, state, queues) in queues {
            self.note_queues(key, state, &queues, now);
        }
    }

    /// Flags the connections whose deadline has come at `now`, each once per state visit. An
    /// ESTABLISHED connection that tcp_info shows busy is not flagged: it is looked at again when
    /// it could have been idle for the threshold. At most [`DEADLINES_AT_ONCE`] deadlines are
    /// looked at per call: the rest stay due ([`Tracker::next_deadline`] says so), so the events
    /// that keep arriving are read between batches when a million connections come due at once.
    pub fn due_stuck(
        &mut self,
        now: Timestamp,
        code_paths: &dyn CodePathSource,
    ) -> Vec<StuckAlert> {
        let mut alerts = Vec::new();
        let table = &self.table;
        let is_current = |slot, visit| visit_is_current(table, slot, visit);
        for due in self.detector.due(now, DEADLINES_AT_ONCE, is_current) {
            // A deadline is for the state visit it was queued in: a slot reused since, or a
            // connection that moved on, has another visit number.
            let Some(tracked) = self.table.at_mut(due.slot) else {
                continue;
            };
            if tracked.visit != due.visit || tracked.stuck.is_some() {
                continue;
            }
            let state = tracked.connection.state();
            let (Some(diagnosis), Some(threshold)) =
                (Diagnosis::for_state(state), self.thresholds.of(state))
            else {
                continue;
            };
            let idle = tracked.connection.activity().map(|a| a.idle_at(now));
            // An ESTABLISHED connection with data stalled in it is not idle by choice: the
            // stall is what gets flagged.
            if state == TcpState::Established && self.stalls.contains_key(&tracked.connection.key())
            {
                continue;
            }
            if let (TcpState::Established, Some(idle)) = (state, idle)
                && idle < threshold
            {
                self.detector
                    .watch(due.slot, due.visit, now.saturating_add(threshold - idle));
                continue;
            }
            tracked.stuck = Some(diagnosis);
            let context = ViewContext {
                processes: &self.processes,
                co_holders: &self.co_holders,
                code_paths,
            };
            let mut connection = view(context, &tracked.connection, now);
            // Entered before probe saw it, and not at attach either: flagged from now on.
            connection.since.get_or_insert(now);
            connection.age.get_or_insert(Duration::ZERO);
            alerts.push(StuckAlert {
                connection,
                diagnosis,
                dropped: None,
            });
        }
        for (key, stall) in self.due_stalls(now) {
            let Some(tracked) = self.table.get(key) else {
                continue;
            };
            let context = ViewContext {
                processes: &self.processes,
                co_holders: &self.co_holders,
                code_paths,
            };
            let mut connection = view(context, &tracked.connection, now);
            // How long it has been stalled, rather than in its state.
            connection.since = Some(stall.since);
            connection.age = Some(now.saturating_since(stall.since));
            alerts.push(StuckAlert {
                connection,
                diagnosis: stall.kind,
                dropped: stall
                    .overflows
                    .zip(stall.overflows_at_start)
                    .map(|(now, start)| now.saturating_sub(start)),
            });
        }
        alerts
    }

    /// When [`Tracker::due_stuck`] will next have something to look at.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.detector.next_deadline()
    }

    /// The open connections (oldest in their state first) and the totals, as of `now`; the
    /// code paths and the kernel's losses are what the tracker cannot know by itself.
    pub fn summary(
        &self,
        now: Timestamp,
        code_paths: &dyn CodePathSource,
        losses: Losses,
    ) -> Summary {
        let pairs = pairs::pair_ends(self.table.values());
        self.summary_with(now, code_paths, losses, &pairs)
    }

    /// How many connections are stuck now, per process, state and endpoint
    /// ([`crate::track::ConnectionView::known_by`]).
    /// The end of a pair held open for another process's end is not counted (see
    /// [`PairEnd`]).
    pub fn stuck_tally(&self) -> StuckTally {
        let pairs = pairs::pair_ends(self.table.values());
        self.tally_with(&pairs)
    }

    /// [`Tracker::stuck_tally`] and [`Tracker::summary`] at once, the pairs of both ends
    /// found once for both (a host-wide run may follow a million stuck sockets).
    pub fn tally_and_summary(
        &self,
        now: Timestamp,
        code_paths: &dyn CodePathSource,
        losses: Losses,
    ) -> (StuckTally, Summary) {
        let pairs = pairs::pair_ends(self.table.values());
        (
            self.tally_with(&pairs),
            self.summary_with(now, code_paths, losses, &pairs),
        )
    }

    /// [`Tracker::summary`], with the table's pairs (see [`pairs::pair_ends`]).
    fn summary_with(
        &self,
        now: Timestamp,
        code_paths: &dyn CodePathSource,
        losses: Losses,
        pairs: &[Option<PairEnd>],
    ) -> Summary {
        let mut open: Vec<OpenConnection> = self
            .table
            .values()
            .zip(pairs)
            .map(|(tracked, &pair)| {
                OpenConnection {
                    connection: view(self.context(code_paths), &tracked.connection, now),
                    // The end held open for another's end is not stuck by its own doing.
                    stuck: match pair {
                        Some(PairEnd::HeldFor { .. }) => None,
                        _ => tracked.stuck,
                    },
                    pair,
                    opened_by: tracked.connection.opened_by(),
                    history: tracked.connection.history,
                }
            })
            .collect();
        // Unknown starts (already open before probe saw them) are the oldest of all.
        open.sort_by_key(|c| (c.connection.since, c.connection.key));
        Summary::new(open, self.closed, losses)
    }

    /// [`Tracker::stuck_tally`], with the table's pairs.
    fn tally_with(&self, pairs: &[Option<PairEnd>]) -> StuckTally {
        let mut tally = StuckTally::default();
        for (tracked, _) in self.table.values().zip(pairs).filter(|(tracked, pair)| {
            tracked.stuck.is_some() && !matches!(pair, Some(PairEnd::HeldFor { .. }))
        }) {
            let connection = &tracked.connection;
            *tally
                .entry((connection.pid, connection.state(), connection.known_by()))
                .or_default() += 1;
        }
        tally
    }

    /// How many connections are open.
    pub fn open_count(&self) -> usize {
        self.table.len()
    }

    /// A connection found at attach, named by a transition for the first time: from now on it
    /// is known by its socket address.
    fn adopt_existing(&mut self, key: ConnectionKey, transition: &Transition) {
        if self.unnamed.is_empty() || self.table.contains_key(key) {
            return;
        }
        let endpoints = (transition.endpoints.local, transition.endpoints.remote);
        let Some(old) = self
            .unnamed
            .take(&self.table, transition.cookie, endpoints)
            .and_then(|slot| self.table.at(slot))
            .map(|tracked| tracked.connection.key())
        else {
            return;
        };
        self.table.rekey(old, key, |tracked| {
            tracked.connection.name_socket(transition.sock_id);
        });
        if let Some(stall) = self.stalls.remove(&old) {
            self.stalls.insert(key, stall);
        }
        if let Some(holders) = self.co_holders.remove(&old) {
            self.co_holders.insert(key, holders);
        }
    }

    fn context<'a>(&'a self, code_paths: &'a dyn CodePathSource) -> ViewContext<'a> {
        ViewContext {
            processes: &self.processes,
            co_holders: &self.co_holders,
            code_paths,
        }
    }

    /// Forgets a connection that ended.
    fn forget(&mut self, key: ConnectionKey) {
        if !self.unnamed.is_empty()
            && let Some(slot) = self.table.find(key)
        {
            self.unnamed.forget(&self.table, slot);
        }
        self.table.remove(key);
        self.co_holders.remove(&key);
        self.stalls.remove(&key);
        self.overflows_seen.remove(&key);
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
                .retain(|slot, visit| visit_is_current(table, slot, visit));
        }
    }
}

/// Whether the connection in table slot `slot` is still in its state visit `visit` (a slot
/// reused since, or a connection that moved on, has another visit number).
fn visit_is_current(table: &Table<Tracked>, slot: u32, visit: u32) -> bool {
    table.at(slot).is_some_and(|tracked| tracked.visit == visit)
}

/// The local endpoints sockets listen on, to tell the connections they accepted.
#[derive(Default)]
struct Listening {
    addresses: FxHashSet<SocketAddr>,
    /// Ports listened on at every address of the host (`0.0.0.0`, `::`).
    any_address: FxHashSet<u16>,
}

impl Listening {
    fn of(sockets: &[ExistingSocket]) -> Listening {
        let mut listening = Listening::default();
        for socket in sockets.iter().filter(|s| s.state == TcpState::Listen) {
            let local = socket.endpoints.local;
            if local.ip().is_unspecified() {
                listening.any_address.insert(local.port());
            } else {
                listening.addresses.insert(local);
            }
        }
        listening
    }

    fn serves(&self, local: SocketAddr) -> bool {
        self.any_address.contains(&local.port()) || self.addresses.contains(&local)
    }
}

/// What a connection's view is made from besides the connection.
#[derive(Clone, Copy)]
struct ViewContext<'a> {
    processes: &'a FxHashMap<u32, Arc<str>>,
    co_holders: &'a FxHashMap<ConnectionKey, Vec<u32>>,
    code_paths: &'a dyn CodePathSource,
}

/// A connection as the outputs show it, as of `now`.
fn view(context: ViewContext<'_>, connection: &Connection, now: Timestamp) -> ConnectionView {
    let since = connection.state_since();
    ConnectionView {
        key: connection.key(),
        cookie: connection.cookie(),
        inode: connection.inode(),
        owner: owner_of(context.processes, connection.pid),
        also_held_by: context
            .co_holders
            .get(&connection.key())
            .cloned()
            .unwrap_or_default(),
        endpoints: connection.endpoints(),
        known_by: connection.known_by(),
        state: connection.state(),
        since,
        age: since.map(|since| now.saturating_since(since)),
        since_attach: connection.since_attach(),
        idle: connection.activity().map(|a| a.idle_at(now)),
        activity: connection.activity(),
        opened_at: connection
            .opened_at()
            .and_then(|stack| context.code_paths.code_path(stack)),
        requested_at: connection
            .requested_at()
            .and_then(|stack| context.code_paths.code_path(stack)),
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

mod destinations;
mod owners;
mod pairs;
mod stalls;
#[cfg(test)]
mod tests;
mod unnamed;

pub use owners::Holders;
pub use pairs::PairEnd;
