//! What every output says about one connection, built by the tracker, complete when it leaves
//! it: an alert and the summary share it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use probe_common::TcpState;

use super::{
    activity::Activity,
    code_path::{CodePath, Origin},
    event::Endpoints,
    lifecycle::{ConnectionKey, Owner},
    time::Timestamp,
};

/// One connection as the outputs show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionView {
    pub key: ConnectionKey,
    /// The socket's cookie, where known.
    pub cookie: Option<u64>,
    /// The socket inode, where known.
    pub inode: Option<u64>,
    pub owner: Owner,
    /// Other processes that hold the socket too (inherited over fork, passed over a unix
    /// socket), lowest pid first; usually none.
    pub also_held_by: Vec<u32>,
    pub endpoints: Endpoints,
    /// The endpoint it is grouped by: the remote one of a connection this side opened, its own
    /// for a listener and for a connection it accepted.
    pub known_by: SocketAddr,
    /// The state it is in.
    pub state: TcpState,
    /// When it entered `state`, where probe saw it (attach time, if `since_attach`).
    pub since: Option<Timestamp>,
    /// How long it has been in `state`, where known (at least, if `since_attach`).
    pub age: Option<Duration>,
    /// Already in `state` when probe attached: `since` and `age` are bounds.
    pub since_attach: bool,
    /// Time without data either way, where tcp_info tells.
    pub idle: Option<Duration>,
    pub activity: Option<Activity>,
    /// Where the program opened it, where probe captured and symbolized it.
    pub opened_at: Option<Arc<CodePath>>,
    /// Where the program asked a runtime for it (see [`crate::track::Origin`]).
    pub requested_at: Option<Arc<CodePath>>,
}

impl ConnectionView {
    /// Where it came from: its connect's stack and its requester's.
    pub fn origin(&self) -> Origin<'_> {
        Origin {
            opened_at: self.opened_at.as_deref(),
            requested_at: self.requested_at.as_deref(),
        }
    }
}

/// What the kernel side could not deliver or follow (its counters), for every output to say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    /// Events probe never received (a ring buffer was full, or a record could not be read).
    pub lost_events: u64,
    /// Sockets the kernel could not track (a map was full).
    pub untracked_sockets: u64,
}
