//! The picture at the end of a run (or at any moment): open connections and totals.

use std::{collections::BTreeMap, time::Duration};

use probe_common::TcpState;

use super::{
    event::Endpoints,
    lifecycle::{ClosedFirst, Connection, Ending, OpenedBy, Owner},
    time::Timestamp,
};

/// An open connection as the summary lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenConnection {
    pub id: u64,
    pub owner: Owner,
    pub endpoints: Endpoints,
    pub state: TcpState,
    /// When it entered `state`, where probe saw it.
    pub since: Option<Timestamp>,
    /// How long it has been in `state`, where known.
    pub age: Option<Duration>,
    /// Flagged as stuck in `state`.
    pub stuck: bool,
    pub opened_by: OpenedBy,
}

/// Totals of the connections that reached CLOSE (listening sockets are not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClosedCounts {
    pub total: u64,
    /// This process sent the first FIN.
    pub local_first: u64,
    /// The peer sent the first FIN.
    pub remote_first: u64,
    /// Both FINs crossed.
    pub simultaneous: u64,
    /// Ended without a complete FIN exchange.
    pub reset: u64,
    /// connect() failed.
    pub connect_failed: u64,
}

impl ClosedCounts {
    /// Counts one closed connection.
    pub fn record(&mut self, connection: &Connection) {
        if connection.ending == Some(Ending::ListenerClosed) {
            return;
        }
        self.total += 1;
        match connection.closed_first {
            Some(ClosedFirst::Local) => self.local_first += 1,
            Some(ClosedFirst::Remote) => self.remote_first += 1,
            Some(ClosedFirst::Simultaneous) => self.simultaneous += 1,
            None => {}
        }
        match connection.ending {
            Some(Ending::Reset) => self.reset += 1,
            Some(Ending::ConnectFailed) => self.connect_failed += 1,
            _ => {}
        }
    }
}

/// Open connections, oldest in their state first, with counts by state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub open: Vec<OpenConnection>,
    pub closed: ClosedCounts,
    /// Events the kernel could not deliver (ring buffer full).
    pub lost_events: u64,
    /// Sockets the kernel could not track (owner or listener map full).
    pub untracked_sockets: u64,
    counts: BTreeMap<TcpState, usize>,
    stuck: BTreeMap<TcpState, usize>,
}

impl Summary {
    /// A summary of these open connections (already in the order to show) and totals.
    pub fn new(open: Vec<OpenConnection>, closed: ClosedCounts) -> Summary {
        let mut counts = BTreeMap::new();
        let mut stuck = BTreeMap::new();
        for connection in &open {
            *counts.entry(connection.state).or_insert(0) += 1;
            if connection.stuck {
                *stuck.entry(connection.state).or_insert(0) += 1;
            }
        }
        Summary {
            open,
            closed,
            lost_events: 0,
            untracked_sockets: 0,
            counts,
            stuck,
        }
    }

    /// Open connections per state, for the states that have any.
    pub fn counts(&self) -> &BTreeMap<TcpState, usize> {
        &self.counts
    }

    /// Stuck connections per state, for the states that have any.
    pub fn stuck(&self) -> &BTreeMap<TcpState, usize> {
        &self.stuck
    }

    /// Open connections in `state`.
    pub fn count(&self, state: TcpState) -> usize {
        self.counts.get(&state).copied().unwrap_or(0)
    }

    /// Stuck connections in `state`.
    pub fn stuck_count(&self, state: TcpState) -> usize {
        self.stuck.get(&state).copied().unwrap_or(0)
    }
}
