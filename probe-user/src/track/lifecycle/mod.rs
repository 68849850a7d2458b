//! One connection's lifecycle: the states it went through, who opened it, who closed first and
//! how it ended, rebuilt from the transitions the kernel reports.

use std::{
    net::SocketAddr,
    num::{NonZeroU32, NonZeroU64},
    sync::Arc,
    time::Duration,
};

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
/// A visit's byte: its state in the low four bits, and these flags.
const INFERRED: u8 = 0x10;
const AT_LEAST: u8 = 0x20;
const UNKNOWN_SINCE: u8 = 0x40;
/// The byte of a visit not yet made.
const NO_VISIT: u8 = 0xff;

/// The states a connection entered, oldest first, in 36 bytes (no allocation per connection:
/// the connection table keeps one per open connection, so every byte counts). When the latest
/// known visit started is kept exactly; each earlier one as its gap to the next known visit,
/// which is the time it lasted: exact under 2 s, to the microsecond under 17 minutes, to the
/// second beyond (see `Gap`). Should a connection ever enter more than [`VISITS`] states, the
/// first one is kept and the oldest of the others give way.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// When the latest visit with a known start began, in nanoseconds (two halves: a `u64`
    /// would align the struct, and the connection, to 8 bytes and pad them).
    latest_since: [u32; 2],
    /// For each visit but the last, its gap to the next visit with a known start.
    gaps: [Gap; VISITS - 1],
    visits: [u8; VISITS],
    /// Every state ever entered, kept visits or not.
    visited: StateSet,
}

impl Default for History {
    fn default() -> Self {
        History {
            latest_since: [0; 2],
            gaps: [Gap::default(); VISITS - 1],
            visits: [NO_VISIT; VISITS],
            visited: StateSet::default(),
        }
    }
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A span of time in 32 bits, at a precision relative to its length: nanoseconds up to 2^31 ns
/// (2.1 s), then microseconds up to 2^30 us (17.9 min), then seconds (34 years). Spans are
/// rounded down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Gap(u32);

impl Gap {
    const MICROS: u32 = 0b10 << 30;
    const SECONDS: u32 = 0b11 << 30;
    const VALUE: u32 = (1 << 30) - 1;

    fn new(nanos: u64) -> Gap {
        if nanos < 1 << 31 {
            Gap(nanos as u32)
        } else if nanos / 1_000 <= u64::from(Gap::VALUE) {
            Gap(Gap::MICROS | (nanos / 1_000) as u32)
        } else {
            Gap(Gap::SECONDS | (nanos / 1_000_000_000).min(u64::from(Gap::VALUE)) as u32)
        }
    }

    fn nanos(self) -> u64 {
        let value = u64::from(self.0 & Gap::VALUE);
        match self.0 & Gap::SECONDS {
            Gap::SECONDS => value * 1_000_000_000,
            Gap::MICROS => value * 1_000,
            _ => u64::from(self.0),
        }
    }
}

impl History {
    fn latest_since(&self) -> u64 {
        u64::from(self.latest_since[0]) | (u64::from(self.latest_since[1]) << 32)
    }

    fn known(&self, index: usize) -> bool {
        self.visits[index] & UNKNOWN_SINCE == 0
    }

    /// The latest visit before `end` with a known start.
    fn latest_known_before(&self, end: usize) -> Option<usize> {
        (0..end).rev().find(|&index| self.known(index))
    }

    /// Appends a visit.
    pub fn push(&mut self, visit: StateVisit) {
        if self.len() == VISITS {
            // Keep the first visit (how the connection started); drop the oldest after it.
            let kept: [StateVisit; VISITS] =
                std::array::from_fn(|index| self.get(index).expect("a full history"));
            let visited = self.visited;
            *self = History::default();
            for (_, kept) in kept
                .into_iter()
                .enumerate()
                .filter(|&(index, _)| index != 1)
            {
                self.push(kept);
            }
            self.visited = visited;
        }
        let index = self.len();
        self.visited.insert(visit.state);
        let mut byte = visit.state as u8 & 0x0f;
        byte |= (u8::from(visit.inferred) * INFERRED) | (u8::from(visit.at_least) * AT_LEAST);
        match visit.since {
            Some(since) => {
                let since = since.as_nanos();
                if let Some(previous) = self.latest_known_before(index) {
                    self.gaps[previous] = Gap::new(since.saturating_sub(self.latest_since()));
                }
                self.latest_since = [since as u32, (since >> 32) as u32];
            }
            None => byte |= UNKNOWN_SINCE,
        }
        self.visits[index] = byte;
    }

    /// The visit at `index` (0 is the oldest).
    pub fn get(&self, index: usize) -> Option<StateVisit> {
        let byte = *self.visits.get(index).filter(|&&byte| byte != NO_VISIT)?;
        let since = self.known(index).then(|| {
            let latest = self
                .latest_known_before(self.len())
                .expect("this visit is known");
            let nanos = (index..latest)
                .filter(|&earlier| self.known(earlier))
                .fold(self.latest_since(), |since, earlier| {
                    since.saturating_sub(self.gaps[earlier].nanos())
                });
            Timestamp::from_nanos(nanos)
        });
        Some(StateVisit {
            state: TcpState::from_raw(byte & 0x0f).unwrap_or(TcpState::Close),
            since,
            inferred: byte & INFERRED != 0,
            at_least: byte & AT_LEAST != 0,
        })
    }

    /// The latest visit: the current state.
    pub fn last(&self) -> Option<StateVisit> {
        self.len().checked_sub(1).and_then(|index| self.get(index))
    }

    /// Every visit, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = StateVisit> + '_ {
        (0..self.len()).filter_map(|index| self.get(index))
    }

    /// How many visits are kept.
    pub fn len(&self) -> usize {
        self.visits
            .iter()
            .position(|&byte| byte == NO_VISIT)
            .unwrap_or(VISITS)
    }

    /// True before the first visit.
    pub fn is_empty(&self) -> bool {
        self.visits[0] == NO_VISIT
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
    /// The kernel socket address, once a transition named it.
    socket: Option<NonZeroU64>,
    /// The socket inode, where known (connections found at attach, and after an activity
    /// refresh). Socket inode numbers are 32 bits in the kernel, and in sock_diag's messages.
    inode: Option<NonZeroU32>,
    /// The socket's cookie, where the kernel program or sock_diag gave it: the key that joins
    /// the two exactly (a 4-tuple can repeat across network namespaces).
    cookie: Option<NonZeroU64>,
    /// The owning process (its name lives with the tracker, once per process).
    pub pid: u32,
    endpoints: PackedEndpoints,
    opening: Opening,
    pub closed_first: Option<ClosedFirst>,
    pub ending: Option<Ending>,
    /// Every state entered, oldest first; the last one is the current state.
    pub history: History,
    /// The latest tcp_info sample, where there is one.
    activity: Option<PackedActivity>,
    /// Where the program called connect(), and asked for it, where probe captured them.
    stacks: Stacks,
}

/// Which side opened a connection and, for one already open when probe first saw it, whether
/// it was accepted (its local endpoint is a listener's): one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opening {
    Local,
    Remote,
    Unknown { accepted: bool },
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
    /// Which side opened it.
    pub fn opened_by(&self) -> OpenedBy {
        match self.opening {
            Opening::Local => OpenedBy::Local,
            Opening::Remote => OpenedBy::Remote,
            Opening::Unknown { .. } => OpenedBy::Unknown,
        }
    }

    /// How probe knows it: by its socket address once a transition named it, by its inode
    /// before that.
    pub fn key(&self) -> ConnectionKey {
        match self.socket {
            Some(address) => ConnectionKey::Socket(address.get()),
            None => ConnectionKey::Inode(self.inode().unwrap_or_default()),
        }
    }

    /// Names it by its socket address, from now on its key.
    pub fn name_socket(&mut self, address: u64) {
        self.socket = NonZeroU64::new(address).or(self.socket);
    }

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
            socket: NonZeroU64::new(transition.sock_id),
            inode: None,
            cookie: transition.cookie.and_then(NonZeroU64::new),
            pid: transition.pid,
            endpoints: transition.endpoints.into(),
            opening: match opened_by {
                OpenedBy::Local => Opening::Local,
                OpenedBy::Remote => Opening::Remote,
                OpenedBy::Unknown => Opening::Unknown { accepted: false },
            },
            closed_first: None,
            ending: None,
            history: before.into_iter().collect(),
            activity: None,
            stacks: Stacks::EMPTY,
        }
    }

    /// A connection that was already open when probe attached at `attach`; `accepted` when its
    /// local endpoint is a listener's.
    pub fn existing(socket: &ExistingSocket, attach: Timestamp, accepted: bool) -> Connection {
        Connection {
            socket: None,
            inode: inode_number(socket.inode),
            cookie: NonZeroU64::new(socket.cookie),
            pid: socket.pid,
            endpoints: socket.endpoints.into(),
            opening: if socket.state == TcpState::Listen {
                Opening::Local
            } else {
                Opening::Unknown { accepted }
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
        self.inode.map(|inode| u64::from(inode.get()))
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

    /// Notes the socket inode, where it was not known (a socket keeps its inode; 0, which no
    /// socket has, is ignored).
    pub fn set_inode(&mut self, inode: u64) {
        self.inode = self.inode.or(inode_number(inode));
    }

    /// Where it runs.
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints.into()
    }

    /// The endpoint it is grouped by in tables and trends: the remote endpoint of a connection
    /// this side opened; its own address for a listener and for a connection it accepted (each
    /// peer connects from a port of its own: grouping by those would make a group of each).
    pub fn known_by(&self) -> SocketAddr {
        let endpoints = self.endpoints();
        let accepted = matches!(
            self.opening,
            Opening::Remote | Opening::Unknown { accepted: true }
        );
        if accepted || self.state() == TcpState::Listen {
            endpoints.local
        } else {
            endpoints.remote
        }
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

/// A socket inode number as the kernel keeps it (32 bits); `None` for 0, which no socket has,
/// and for what could not be one.
fn inode_number(inode: u64) -> Option<NonZeroU32> {
    u32::try_from(inode).ok().and_then(NonZeroU32::new)
}

#[cfg(test)]
mod tests;
