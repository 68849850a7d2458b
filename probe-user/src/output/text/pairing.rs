//! Both ends of one connection on this host are one problem in the text output (as in the
//! triage, see `track::tracker::pairs`): the end that must act is alerted, the end held open for
//! it is not. The end that acts is the CLOSE_WAIT end (it never closes), else the client (it
//! never uses nor returns its pooled connection); the other end (a PostgreSQL backend's, say)
//! only waits for it. Both ends usually come due together, in either order, so an alert that
//! may be such a held end waits [`HOLD_FOR`] for its peer's: it is dropped if the peer was
//! alerted, written otherwise.

use std::{net::SocketAddr, time::Duration};

use probe_common::TcpState;
use rustc_hash::FxHashSet;

use crate::track::{StuckAlert, Timestamp};

/// How long an alert that may be a held end waits for its peer's.
pub const HOLD_FOR: Duration = Duration::from_secs(2);

/// Alerts and ends remembered at most, each; past that an alert is written at once and the
/// ends start over (a host-wide leak of millions must not grow this without bound).
const MAX_REMEMBERED: usize = 65_536;

/// The ends alerted and the alerts waiting for their peer's.
#[derive(Default)]
pub struct Pairing {
    /// (local, remote) of every alert written as an end that acts.
    acting: FxHashSet<(SocketAddr, SocketAddr)>,
    waiting: Vec<(StuckAlert, Timestamp)>,
}

impl Pairing {
    /// Takes `alert`, due at `at`: true to write it now, false when it waits for its peer's
    /// (kept until then) or is the end held for a peer already alerted.
    pub fn admit(&mut self, alert: &StuckAlert, at: Timestamp) -> bool {
        let ends = alert.connection.endpoints;
        if may_be_held(alert) && self.waiting.len() < MAX_REMEMBERED {
            if !self.acting.contains(&(ends.remote, ends.local)) {
                self.waiting
                    .push((alert.clone(), at.saturating_add(HOLD_FOR)));
            }
            return false;
        }
        if self.acting.len() >= MAX_REMEMBERED {
            self.acting.clear();
        }
        self.acting.insert((ends.local, ends.remote));
        true
    }

    /// Whether an alert waits whose time is up at `now`.
    pub fn due(&self, now: Timestamp) -> bool {
        self.waiting.iter().any(|(_, until)| *until <= now)
    }

    /// The waiting alerts whose time is up at `now` (all of them with `None`) and whose peer
    /// was not alerted: to be written.
    pub fn release(&mut self, now: Option<Timestamp>) -> Vec<StuckAlert> {
        let (up, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(_, until)| now.is_none_or(|now| *until <= now));
        self.waiting = still;
        up.into_iter()
            .map(|(alert, _)| alert)
            .filter(|alert| {
                let ends = alert.connection.endpoints;
                !self.acting.contains(&(ends.remote, ends.local))
            })
            .collect()
    }
}

/// Whether `alert` may be the end held open for a peer on this host: its peer is on this host,
/// it is not in CLOSE_WAIT, and it is a server's end (known by its own address) or waits for
/// the peer to close (FIN_WAIT2).
fn may_be_held(alert: &StuckAlert) -> bool {
    let view = &alert.connection;
    let ends = view.endpoints;
    let peer_here = ends.remote.ip().is_loopback() || ends.remote.ip() == ends.local.ip();
    let server_end = view.known_by == ends.local;
    peer_here
        && view.state != TcpState::CloseWait
        && (server_end || view.state == TcpState::FinWait2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::{Diagnosis, summary::tests::open};

    fn at(seconds: u64) -> Timestamp {
        Timestamp::from_nanos(seconds * 1_000_000_000)
    }

    /// An idle ESTABLISHED end of `pid` from `local` to `remote`, known by `known_by`.
    fn idle_end(pid: u32, local: &str, remote: &str, known_by: &str) -> StuckAlert {
        let mut connection = open(1, pid, TcpState::Established, remote, Some(600)).connection;
        connection.endpoints.local = local.parse().unwrap();
        connection.known_by = known_by.parse().unwrap();
        StuckAlert {
            connection,
            diagnosis: Diagnosis::OpenAndUnused,
            dropped: None,
        }
    }

    const CLIENT: &str = "127.0.0.1:41000";
    const SERVER: &str = "127.0.0.1:5432";

    #[test]
    fn the_server_end_of_a_local_clients_idle_connection_is_not_alerted_whichever_comes_first() {
        let client = || idle_end(100, CLIENT, SERVER, SERVER);
        let backend = || idle_end(200, SERVER, CLIENT, SERVER);

        let mut client_first = Pairing::default();
        assert!(client_first.admit(&client(), at(1)));
        assert!(!client_first.admit(&backend(), at(1)));
        assert!(client_first.release(None).is_empty());

        let mut backend_first = Pairing::default();
        assert!(!backend_first.admit(&backend(), at(1)));
        assert!(backend_first.admit(&client(), at(1)));
        assert!(!backend_first.due(at(2)));
        assert!(backend_first.due(at(3)));
        assert!(backend_first.release(Some(at(3))).is_empty());
    }

    #[test]
    fn a_server_end_whose_peer_is_not_alerted_is_written_once_its_wait_is_over() {
        let mut pairing = Pairing::default();
        let lone = idle_end(200, SERVER, CLIENT, SERVER);
        assert!(!pairing.admit(&lone, at(1)));
        assert!(pairing.release(Some(at(2))).is_empty(), "still waiting");
        assert_eq!(pairing.release(Some(at(3))).len(), 1);
        assert!(!pairing.due(at(10)));
    }

    #[test]
    fn a_remote_peers_server_end_is_written_at_once() {
        let mut pairing = Pairing::default();
        let remote = idle_end(200, "10.0.0.1:5432", "10.0.0.2:41000", "10.0.0.1:5432");
        assert!(pairing.admit(&remote, at(1)));
    }
}
