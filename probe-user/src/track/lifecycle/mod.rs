//! One connection's lifecycle: the states it went through, who opened it, who closed first and
//! how it ended, rebuilt from the transitions the kernel reports.

use std::{num::NonZeroU64, sync::Arc, time::Duration};

use probe_common::TcpState;

use super::{
    activity::{Activity, ExistingSocket, PackedActivity},
    code_path::StackRef,
    event::{Endpoints, PackedEndpoints, Transition},
    time::Timestamp,
};

/// How probe knows a connection: by its kernel socket address once a transition named it, by
/// its socket inode before that (a connection found at attach).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectionKey {
    Socket(u64),
    Inode(u64),
}

impl ConnectionKey {
    /// The kernel socket address, where known.
    pub fn socket(self) -> Option<u64> {
        match self {
            ConnectionKey::Socket(address) => Some(address),
            ConnectionKey::Inode(_) => None,
        }
    }
}

/// The process that owns a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// The process name (`/proc/PID/comm`), shared by all its connections.
    pub comm: Arc<str>,
}

/// Which side opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenedBy {
    /// This process called connect() (or listen(), for a listening socket).
    Local,
    /// The peer connected and this process accepted it.
    Remote,
    /// The connection was already open when probe first saw it.
    Unknown,
}

impl OpenedBy {
    /// `"local"`, `"remote"` or `"unknown"`.
    pub const fn name(self) -> &'static str {
        match self {
            OpenedBy::Local => "local",
            OpenedBy::Remote => "remote",
            OpenedBy::Unknown => "unknown",
        }
    }
}

/// Which side sent the first FIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosedFirst {
    /// This process closed or shut down first (ESTABLISHED -> FIN_WAIT1).
    Local,
    /// The peer closed first (ESTABLISHED -> CLOSE_WAIT).
    Remote,
    /// Both FINs crossed (FIN_WAIT1 -> CLOSING).
    Simultaneous,
}

/// How a connection reached CLOSE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Graceful close by this side; the kernel hands the socket to a TIME_WAIT socket, which the
    /// tracepoint does not show (FIN_WAIT2 or CLOSING -> CLOSE).
    TimeWait,
    /// Graceful close after the peer closed first (LAST_ACK -> CLOSE).
    LastAck,
    /// Aborted before a complete FIN exchange: a reset, or an abortive close (ESTABLISHED,
    /// SYN_RECV, FIN_WAIT1 or CLOSE_WAIT -> CLOSE).
    Reset,
    /// connect() failed: refused, timed out or aborted (SYN_SENT -> CLOSE).
    ConnectFailed,
    /// A listening socket was closed (LISTEN -> CLOSE).
    ListenerClosed,
    /// Its process exited and no process holds the socket any more: the kernel finishes it
    /// alone (probe stops following it).
    Abandoned,
}

impl Ending {
    /// `"time_wait"`, `"last_ack"`, `"reset"`, `"connect_failed"`, `"listener_closed"` or
    /// `"abandoned"`.
    pub const fn name(self) -> &'static str {
        match self {
            Ending::TimeWait => "time_wait",
            Ending::LastAck => "last_ack",
            Ending::Reset => "reset",
            Ending::ConnectFailed => "connect_failed",
            Ending::ListenerClosed => "listener_closed",
            Ending::Abandoned => "abandoned",
        }
    }

    fn after(old: TcpState) -> Ending {
        match old {
            TcpState::FinWait2 | TcpState::Closing | TcpState::TimeWait => Ending::TimeWait,
            TcpState::LastAck => Ending::LastAck,
            TcpState::SynSent => Ending::ConnectFailed,
            TcpState::Listen => Ending::ListenerClosed,
            _ => Ending::Reset,
        }
    }
}

/// A state a connection entered, and when, where probe saw it enter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateVisit {
    pub state: TcpState,
    /// `None` when the connection was already in this state when probe first saw it.
    pub since: Option<Timestamp>,
    /// True for TIME_WAIT, which probe infers: the tracepoint never shows it.
    pub inferred: bool,
    /// The connection was already in this state when probe attached: `since` is the attach time,
    /// a lower bound.
    pub at_least: bool,
}

/// Visits kept per connection: enough for every path through the TCP state machine from the
/// first state probe sees to CLOSE (e.g. SYN_SENT, ESTABLISHED, FIN_WAIT1, CLOSING, TIME_WAIT,
/// CLOSE).
const VISITS: usize = 6;
/// `since` of a visit whose start probe did not see.
const UNKNOWN_SINCE: u64 = u64::MAX;
const INFERRED: u8 = 1;
const AT_LEAST: u8 = 2;

/// The states a connection entered, oldest first, stored inline (no allocation per connection).
/// Should a connection ever enter more than [`VISITS`] states, the first one is kept and the
/// oldest of the others give way.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct History {
    since: [u64; VISITS],
    states: [u8; VISITS],
    flags: [u8; VISITS],
    len: u8,
    /// Every state ever entered, kept visits or not (it fits in the struct's padding).
    visited: StateSet,
}

impl Default for History {
    fn default() -> Self {
        History {
            since: [UNKNOWN_SINCE; VISITS],
            states: [0; VISITS],
            flags: [0; VISITS],
            len: 0,
            visited: StateSet::default(),
        }
    }
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl History {
    /// Appends a visit.
    pub fn push(&mut self, visit: StateVisit) {
        let mut index = usize::from(self.len);
        if index == VISITS {
            // Keep the first visit (how the connection started); drop the oldest after it.
            self.since.copy_within(2.., 1);
            self.states.copy_within(2.., 1);
            self.flags.copy_within(2.., 1);
            index = VISITS - 1;
        } else {
            self.len += 1;
        }
        self.visited.insert(visit.state);
        self.since[index] = visit.since.map_or(UNKNOWN_SINCE, Timestamp::as_nanos);
        self.states[index] = visit.state as u8;
        self.flags[index] =
            (u8::from(visit.inferred) * INFERRED) | (u8::from(visit.at_least) * AT_LEAST);
    }

    /// The visit at `index` (0 is the oldest).
    pub fn get(&self, index: usize) -> Option<StateVisit> {
        (index < usize::from(self.len)).then(|| StateVisit {
            state: TcpState::from_raw(self.states[index]).unwrap_or(TcpState::Close),
            since: (self.since[index] != UNKNOWN_SINCE)
                .then(|| Timestamp::from_nanos(self.since[index])),
            inferred: self.flags[index] & INFERRED != 0,
            at_least: self.flags[index] & AT_LEAST != 0,
        })
    }

    /// The latest visit: the current state.
    pub fn last(&self) -> Option<StateVisit> {
        usize::from(self.len)
            .checked_sub(1)
            .and_then(|index| self.get(index))
    }

    /// Every visit, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = StateVisit> + '_ {
        (0..usize::from(self.len)).filter_map(|index| self.get(index))
    }

    /// How many visits are kept.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// True before the first visit.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every state the connection entered (TIME_WAIT where it was inferred).
    pub fn visited(&self) -> StateSet {
        self.visited
    }
}

/// A set of TCP states, in 16 bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateSet(u16);

impl StateSet {
    /// Adds `state`.
    pub fn insert(&mut self, state: TcpState) {
        self.0 |= 1 << (state as u8);
    }

    /// Whether `state` is in the set.
    pub fn contains(self, state: TcpState) -> bool {
        self.0 & (1 << (state as u8)) != 0
    }
}

impl FromIterator<StateVisit> for History {
    fn from_iter<I: IntoIterator<Item = StateVisit>>(visits: I) -> Self {
        let mut history = History::default();
        for visit in visits {
            history.push(visit);
        }
        history
    }
}

/// One socket's lifecycle, from the first transition probe saw to CLOSE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub key: ConnectionKey,
    /// The socket inode, where known (connections found at attach, and after an activity
    /// refresh).
    inode: Option<NonZeroU64>,
    /// The socket's cookie, where the kernel program or sock_diag gave it: the key that joins
    /// the two exactly (a 4-tuple can repeat across network namespaces).
    cookie: Option<NonZeroU64>,
    /// The owning process (its name lives with the tracker, once per process).
    pub pid: u32,
    endpoints: PackedEndpoints,
    pub opened_by: OpenedBy,
    pub closed_first: Option<ClosedFirst>,
    pub ending: Option<Ending>,
    /// Every state entered, oldest first; the last one is the current state.
    pub history: History,
    /// The latest tcp_info sample, where there is one.
    activity: Option<PackedActivity>,
    /// Where the program called connect(), and asked for it, where probe captured them.
    stacks: Stacks,
}

/// The stacks of a connect, packed: both ids are of the process that connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stacks {
    pid: u32,
    opened: u32,
    requested: u32,
}

impl Stacks {
    const NONE: u32 = u32::MAX;
    const EMPTY: Stacks = Stacks {
        pid: 0,
        opened: Stacks::NONE,
        requested: Stacks::NONE,
    };

    fn of(transition: &Transition) -> Stacks {
        let id = |stack: Option<StackRef>| stack.map_or(Stacks::NONE, |s| s.id);
        Stacks {
            pid: transition.pid,
            opened: id(transition.stack),
            requested: id(transition.requested),
        }
    }

    fn get(self, id: u32) -> Option<StackRef> {
        (id != Stacks::NONE).then_some(StackRef { pid: self.pid, id })
    }
}

impl Connection {
    /// Where the program called connect(), where probe captured it.
    pub fn opened_at(&self) -> Option<StackRef> {
        self.stacks.get(self.stacks.opened)
    }

    /// Where the program asked a runtime for the connection, where the runtime connected on
    /// its behalf and probe captured the request.
    pub fn requested_at(&self) -> Option<StackRef> {
        self.stacks.get(self.stacks.requested)
    }

    /// A connection first seen in `transition`, not yet applied (see [`Connection::advance`]).
    pub fn first_seen(transition: &Transition) -> Connection {
        let (opened_by, before) = match (transition.old, transition.new) {
            (TcpState::Close, TcpState::SynSent | TcpState::Listen) => (OpenedBy::Local, None),
            (TcpState::Listen, TcpState::SynRecv) => (OpenedBy::Remote, None),
            // Already open before probe saw it: the old state is known, not since when.
            (old, _) => (
                OpenedBy::Unknown,
                Some(StateVisit {
                    state: old,
                    since: None,
                    inferred: false,
                    at_least: false,
                }),
            ),
        };
        Connection {
            key: ConnectionKey::Socket(transition.sock_id),
            inode: None,
            cookie: transition.cookie.and_then(NonZeroU64::new),
            pid: transition.pid,
            endpoints: transition.endpoints.into(),
            opened_by,
            closed_first: None,
            ending: None,
            history: before.into_iter().collect(),
            activity: None,
            stacks: Stacks::EMPTY,
        }
    }

    /// A connection that was already open when probe attached at `attach`.
    pub fn existing(socket: &ExistingSocket, attach: Timestamp) -> Connection {
        Connection {
            key: ConnectionKey::Inode(socket.inode),
            inode: NonZeroU64::new(socket.inode),
            cookie: NonZeroU64::new(socket.cookie),
            pid: socket.pid,
            endpoints: socket.endpoints.into(),
            opened_by: if socket.state == TcpState::Listen {
                OpenedBy::Local
            } else {
                OpenedBy::Unknown
            },
            closed_first: match socket.state {
                TcpState::CloseWait | TcpState::LastAck => Some(ClosedFirst::Remote),
                TcpState::FinWait1 | TcpState::FinWait2 => Some(ClosedFirst::Local),
                TcpState::Closing => Some(ClosedFirst::Simultaneous),
                _ => None,
            },
            ending: None,
            // Entered at least this long before attach, as tcp_info proves it: flagged once that
            // lower bound passes the threshold, never before.
            history: std::iter::once(StateVisit {
                state: socket.state,
                since: Some(attach.saturating_sub(socket.time_in_state_at_least())),
                inferred: false,
                at_least: true,
            })
            .collect(),
            activity: socket.activity.map(PackedActivity::from),
            stacks: Stacks::EMPTY,
        }
    }

    /// Applies one transition; returns how long the connection had been in the state it left,
    /// where that is known.
    pub fn advance(&mut self, transition: &Transition) -> Option<Duration> {
        let (old, new, at) = (transition.old, transition.new, transition.at);
        // A state entered before attach has no known duration.
        let in_old = self
            .history
            .last()
            .filter(|visit| !visit.at_least)
            .and_then(|visit| visit.since)
            .map(|since| at.saturating_since(since));
        // connect() enters SYN_SENT before the kernel picks the local port: the latest
        // transition always has the most complete endpoints.
        self.endpoints = transition.endpoints.into();
        match (old, new) {
            (TcpState::Close, TcpState::SynSent) => {
                self.stacks = Stacks::of(transition);
            }
            (TcpState::Established, TcpState::FinWait1)
            | (TcpState::CloseWait, TcpState::LastAck) => {
                self.closed_first
                    .get_or_insert(if old == TcpState::Established {
                        ClosedFirst::Local
                    } else {
                        ClosedFirst::Remote
                    });
            }
            (TcpState::SynRecv, TcpState::FinWait1) => {
                self.closed_first.get_or_insert(ClosedFirst::Local);
            }
            (TcpState::Established | TcpState::SynRecv, TcpState::CloseWait) => {
                self.closed_first.get_or_insert(ClosedFirst::Remote);
            }
            (TcpState::FinWait1, TcpState::Closing) => {
                self.closed_first = Some(ClosedFirst::Simultaneous);
            }
            _ => {}
        }
        if new == TcpState::Close {
            let ending = Ending::after(old);
            self.ending = Some(ending);
            if ending == Ending::TimeWait && old != TcpState::TimeWait {
                self.enter(TcpState::TimeWait, at, true);
            }
        }
        self.enter(new, at, false);
        in_old
    }

    /// The socket inode, where known.
    pub fn inode(&self) -> Option<u64> {
        self.inode.map(NonZeroU64::get)
    }

    /// The socket's cookie, where known.
    pub fn cookie(&self) -> Option<u64> {
        self.cookie.map(NonZeroU64::get)
    }

    /// Notes what the kernel's socket table says of this socket now: its inode, its cookie and
    /// its endpoints (connect() enters SYN_SENT before the local port is chosen; the table has
    /// it).
    pub fn note_sample(&mut self, inode: u64, cookie: u64, endpoints: Endpoints) {
        self.set_inode(inode);
        self.cookie = NonZeroU64::new(cookie).or(self.cookie);
        self.endpoints = endpoints.into();
    }

    /// Notes the socket inode (0, which no socket has, is ignored).
    pub fn set_inode(&mut self, inode: u64) {
        self.inode = NonZeroU64::new(inode).or(self.inode);
    }

    /// Where it runs.
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints.into()
    }

    /// The latest tcp_info sample, where there is one.
    pub fn activity(&self) -> Option<Activity> {
        self.activity.map(Activity::from)
    }

    /// Records a tcp_info sample.
    pub fn set_activity(&mut self, activity: Activity) {
        self.activity = Some(activity.into());
    }

    /// The current state: the last one entered.
    pub fn state(&self) -> TcpState {
        self.history
            .last()
            .map_or(TcpState::Close, |visit| visit.state)
    }

    /// When the current state was entered, where known.
    pub fn state_since(&self) -> Option<Timestamp> {
        self.history.last().and_then(|visit| visit.since)
    }

    /// True when the current state was entered before probe attached (its `since` is a lower
    /// bound).
    pub fn since_attach(&self) -> bool {
        self.history.last().is_some_and(|visit| visit.at_least)
    }

    /// Ends the lifecycle without a CLOSE from the kernel: its process exited and nobody holds
    /// the socket (see [`Ending::Abandoned`]); returns the time spent in the last state.
    pub fn abandon(&mut self, at: Timestamp) -> Option<Duration> {
        let in_state = self
            .history
            .last()
            .filter(|visit| !visit.at_least)
            .and_then(|visit| visit.since)
            .map(|since| at.saturating_since(since));
        self.ending = Some(Ending::Abandoned);
        self.enter(TcpState::Close, at, true);
        in_state
    }

    /// True once the connection reached CLOSE.
    pub fn is_closed(&self) -> bool {
        self.ending.is_some()
    }

    fn enter(&mut self, state: TcpState, at: Timestamp, inferred: bool) {
        self.history.push(StateVisit {
            state,
            since: Some(at),
            inferred,
            at_least: false,
        });
    }
}

#[cfg(test)]
mod tests;
