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

/// What one end of a stuck pair is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairEnd {
    /// The end that must act; the other end belongs to process `peer`.
    Acts { peer: u32 },
    /// The end held open for process `by`, whose end must act.
    HeldFor { by: u32 },
}

/// Which of `tracked` (in its order) are ends of stuck pairs, and which end each is. Only the
/// stuck connections are indexed, by a hash of their endpoints: a host-wide run may follow a
/// million stuck sockets, about 16 bytes each in the index and 16 a socket for the list and
/// the answer, all freed when done. Two pairs whose hashes collide leave one of them unpaired,
/// counted as before.
pub(super) fn pair_ends<'a>(tracked: impl Iterator<Item = &'a Tracked>) -> Vec<Option<PairEnd>> {
    let all: Vec<&Tracked> = tracked.collect();
    let by_ends: FxHashMap<u64, u32> = all
        .iter()
        .enumerate()
        .filter(|(_, t)| t.stuck.is_some())
        .map(|(index, t)| {
            let ends = t.connection.endpoints();
            (ends_hash(ends.local, ends.remote), index as u32)
        })
        .collect();
    let mut pairs = vec![None; all.len()];
    for (index, one) in all.iter().enumerate() {
        if one.stuck.is_none() {
            continue;
        }
        let ends = one.connection.endpoints();
        let Some(&other_index) = by_ends.get(&ends_hash(ends.remote, ends.local)) else {
            continue;
        };
        let other_index = other_index as usize;
        let other = all[other_index];
        let other_ends = other.connection.endpoints();
        if other_index <= index
            || (other_ends.local, other_ends.remote) != (ends.remote, ends.local)
        {
            continue;
        }
        let Some((acts, held)) = which_acts(one, other) else {
            continue;
        };
        let (acts_index, held_index) = if std::ptr::eq(acts, *one) {
            (index, other_index)
        } else {
            (other_index, index)
        };
        pairs[acts_index] = Some(PairEnd::Acts {
            peer: held.connection.pid,
        });
        pairs[held_index] = Some(PairEnd::HeldFor {
            by: acts.connection.pid,
        });
    }
    pairs
}

/// A hash of a connection's (local, remote) endpoints.
fn ends_hash(local: SocketAddr, remote: SocketAddr) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one((local, remote))
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
