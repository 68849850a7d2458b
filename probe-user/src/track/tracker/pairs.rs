//! One leak, one entry: where both ends of a connection are traced (a client and a local
//! server, over loopback) and both are stuck, they are one problem. The end that must act is
//! the one stuck by its own doing: the CLOSE_WAIT end (it never closes; its peer waits in
//! FIN_WAIT2 because of it), else the client (it never uses nor returns its pooled
//! connection; the server's end, a PostgreSQL backend say, only waits for it). The other end
//! is not counted as stuck; it is named beside the end that acts.

use std::net::SocketAddr;

use probe_common::TcpState;
use rustc_hash::FxHashMap;

use super::Tracked;
use crate::track::lifecycle::ConnectionKey;

/// What one end of a stuck pair is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairEnd {
    /// The end that must act; the other end belongs to process `peer`.
    Acts { peer: u32 },
    /// The end held open for process `by`, whose end must act.
    HeldFor { by: u32 },
}

/// The stuck connections that are two ends of one, by key. Only stuck connections are looked
/// at, so the cost follows the stuck ones, not all that are open.
pub(super) fn stuck_pairs<'a>(
    tracked: impl Iterator<Item = &'a Tracked>,
) -> FxHashMap<ConnectionKey, PairEnd> {
    let stuck: Vec<&Tracked> = tracked.filter(|t| t.stuck.is_some()).collect();
    let by_ends: FxHashMap<(SocketAddr, SocketAddr), usize> = stuck
        .iter()
        .enumerate()
        .map(|(index, t)| {
            let ends = t.connection.endpoints();
            ((ends.local, ends.remote), index)
        })
        .collect();
    let mut pairs = FxHashMap::default();
    for (index, one) in stuck.iter().enumerate() {
        let ends = one.connection.endpoints();
        let Some(&other_index) = by_ends.get(&(ends.remote, ends.local)) else {
            continue;
        };
        if other_index <= index {
            continue;
        }
        let other = stuck[other_index];
        let Some((acts, held)) = which_acts(one, other) else {
            continue;
        };
        pairs.insert(
            acts.connection.key(),
            PairEnd::Acts {
                peer: held.connection.pid,
            },
        );
        pairs.insert(
            held.connection.key(),
            PairEnd::HeldFor {
                by: acts.connection.pid,
            },
        );
    }
    pairs
}

/// Of two ends of one connection, the one that must act and the other; `None` where neither
/// can be told (two clients, say, or two servers: no pair of a client and a server).
fn which_acts<'a>(a: &'a Tracked, b: &'a Tracked) -> Option<(&'a Tracked, &'a Tracked)> {
    let close_wait = |t: &Tracked| t.connection.state() == TcpState::CloseWait;
    match (close_wait(a), close_wait(b)) {
        (true, false) => return Some((a, b)),
        (false, true) => return Some((b, a)),
        _ => {}
    }
    // A client's end is known by the service it connects to (its remote end); a server's by
    // its own service address (its local end).
    let is_client = |t: &Tracked| t.connection.known_by() == t.connection.endpoints().remote;
    match (is_client(a), is_client(b)) {
        (true, false) => Some((a, b)),
        (false, true) => Some((b, a)),
        _ => None,
    }
}
