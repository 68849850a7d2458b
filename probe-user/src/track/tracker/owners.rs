//! Who holds each connection now. The kernel side names a socket's owner when it starts (or
//! at attach); sockets change hands afterwards (inherited over fork, passed over a unix socket,
//! accepted by one of several workers sharing a listener). The fd tables say who holds each
//! socket at every refresh: the owner shown is a process that holds it then, as `ss -p` shows,
//! and all of them when several do.

use rustc_hash::{FxHashMap, FxHashSet};
use smallvec::SmallVec;

use super::{StateChange, Tracker, owner_of};
use crate::track::{lifecycle::ConnectionKey, time::Timestamp};

/// Socket inode -> the processes that hold it, lowest pid first.
pub type Holders = FxHashMap<u64, HolderPids>;

/// The processes that hold one socket: almost always one, kept inline (a refresh of a host
/// with a million sockets builds a million of these; a `Vec` would be a million allocations).
pub type HolderPids = SmallVec<[u32; 2]>;

impl Tracker {
    /// The inodes of the open connections that none of `holders` holds: handed to a process
    /// outside them, or closed by their process and left to the kernel.
    pub fn unheld(&self, holders: &Holders) -> FxHashSet<u64> {
        self.table
            .values()
            .filter_map(|tracked| tracked.connection.inode())
            .filter(|inode| !holders.contains_key(inode))
            .collect()
    }

    /// Brings owners up to date with `holders` (who holds each socket, as read from
    /// `read_from` on): a connection its owner no longer holds belongs to whoever does; one held
    /// by several lists them all. One that nobody holds (or whose socket is gone) and whose
    /// owner has exited (`alive` says no) is let go: it ends as
    /// [`crate::track::Ending::Abandoned`], returned for the sinks, and its socket address for
    /// the kernel side to forget. A connection that changed state after `read_from` is left
    /// for the next reading: this one may have missed it.
    pub fn reconcile_holders(
        &mut self,
        holders: &Holders,
        read_from: Timestamp,
        alive: impl Fn(u32) -> bool,
        now: Timestamp,
    ) -> Vec<(StateChange, ConnectionKey)> {
        let mut abandoned = Vec::new();
        for tracked in self.table.values_mut() {
            let connection = &mut tracked.connection;
            let key = connection.key();
            match connection.inode().and_then(|inode| holders.get(&inode)) {
                Some(pids) if !pids.is_empty() => {
                    if !pids.contains(&connection.pid) {
                        connection.pid = pids[0];
                    }
                    let others: Vec<u32> = pids
                        .iter()
                        .copied()
                        .filter(|pid| *pid != connection.pid)
                        .collect();
                    if others.is_empty() {
                        self.co_holders.remove(&key);
                    } else {
                        self.co_holders.insert(key, others);
                    }
                }
                // Newer than the reading: not in it, or not as it is now.
                _ if connection
                    .state_since()
                    .is_some_and(|since| since > read_from) => {}
                // Held by nobody (or not even in the kernel's table any more, so no inode), and
                // its process has exited.
                _ if !alive(connection.pid) => abandoned.push(key),
                _ => {}
            }
        }
        abandoned
            .into_iter()
            .filter_map(|key| self.abandon(key, now).map(|change| (change, key)))
            .collect()
    }

    /// Ends connection `key` as abandoned.
    fn abandon(&mut self, key: ConnectionKey, now: Timestamp) -> Option<StateChange> {
        let tracked = self.table.get_mut(key)?;
        let old = tracked.connection.state();
        let in_old = tracked.connection.abandon(now);
        let connection = &tracked.connection;
        let change = StateChange {
            id: key.socket().unwrap_or_default(),
            cookie: connection.cookie(),
            inode: connection.inode(),
            owner: owner_of(&self.processes, connection.pid),
            endpoints: connection.endpoints(),
            old,
            new: probe_common::TcpState::Close,
            at: now,
            in_old,
            ending: connection.ending,
            closed_first: connection.closed_first,
            visited: connection.history.visited(),
        };
        if let Some(ending) = connection.ending {
            self.closed.record(connection.closed_first, ending);
        }
        self.forget(key);
        Some(change)
    }
}
