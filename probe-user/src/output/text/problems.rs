//! One entry per problem in the text output. The stuck alerts of one process, stuck the same
//! way, with the same peer, opened by the same code are one problem: a leak of a hundred
//! connections is one alert, not a hundred screens of them. The first alert of a problem is
//! written whole (with its diagnosis and its code); the later ones are counted and said in one
//! line, at most once every [`RETELL_EVERY`] per problem. The JSON output keeps one record per
//! connection, for machines.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use probe_common::TcpState;

use crate::track::{Diagnosis, SHOWN_FRAMES, StuckAlert, Timestamp};

/// How often a problem's new alerts are said, at most.
pub const RETELL_EVERY: Duration = Duration::from_secs(10);

/// Problems remembered at most; past that the memory starts over (a problem then gets a whole
/// alert again): a host whose processes come and go must not grow it without bound.
const MAX_PROBLEMS: usize = 4096;

/// What makes two alerts the same problem.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ProblemKey {
    pid: u32,
    state: TcpState,
    diagnosis: Diagnosis,
    /// The peer (or, for what a server accepted, its own listening endpoint).
    known_by: SocketAddr,
    /// The code that opened them, as shown.
    place: Option<String>,
}

/// A problem's alerts so far.
#[derive(Debug)]
struct Problem {
    alerts: u64,
    /// How many of them were said (whole, or counted in a line).
    told: u64,
    told_at: Timestamp,
}

/// How the text output should say an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Telling {
    /// A new problem: the whole alert.
    First,
    /// A problem said before: one line for the `new` alerts since it was last said (this one
    /// included), over `over`, `alerts` in all.
    Again {
        new: u64,
        alerts: u64,
        over: Duration,
    },
    /// A problem said less than [`RETELL_EVERY`] ago: nothing now, counted for its next line.
    Held,
}

/// The problems seen so far.
#[derive(Debug, Default)]
pub struct Problems {
    seen: HashMap<ProblemKey, Problem>,
}

impl Problems {
    /// Notes `alert`, due at `at`, and says how to tell it.
    pub fn note(&mut self, alert: &StuckAlert, at: Timestamp) -> Telling {
        let view = &alert.connection;
        let key = ProblemKey {
            pid: view.owner.pid,
            state: view.state,
            diagnosis: alert.diagnosis,
            known_by: view.known_by,
            place: view.origin().describe(SHOWN_FRAMES),
        };
        if let Some(problem) = self.seen.get_mut(&key) {
            problem.alerts += 1;
            let over = at.saturating_since(problem.told_at);
            if over < RETELL_EVERY {
                return Telling::Held;
            }
            let new = problem.alerts - problem.told;
            problem.told = problem.alerts;
            problem.told_at = at;
            return Telling::Again {
                new,
                alerts: problem.alerts,
                over,
            };
        }
        if self.seen.len() >= MAX_PROBLEMS {
            self.seen.clear();
        }
        self.seen.insert(
            key,
            Problem {
                alerts: 1,
                told: 1,
                told_at: at,
            },
        );
        Telling::First
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::summary::tests::open;

    fn at(seconds: u64) -> Timestamp {
        Timestamp::from_nanos(seconds * 1_000_000_000)
    }

    /// An alert on connection `id` of `pid`, stuck in `state` with `remote`.
    fn stuck_alert(pid: u32, state: TcpState, remote: &str, id: u64) -> StuckAlert {
        StuckAlert {
            connection: open(id, pid, state, remote, Some(30)).connection,
            diagnosis: Diagnosis::PeerClosedNeverClosedLocally,
            dropped: None,
        }
    }

    #[test]
    fn a_leak_is_one_problem_said_again_only_every_ten_seconds() {
        let mut problems = Problems::default();
        let leak = |id| stuck_alert(4242, TcpState::CloseWait, "127.0.0.1:8080", id);
        assert_eq!(problems.note(&leak(1), at(1)), Telling::First);
        for (second, id) in (2..11).zip(2..) {
            assert_eq!(problems.note(&leak(id), at(second)), Telling::Held);
        }
        assert_eq!(
            problems.note(&leak(11), at(11)),
            Telling::Again {
                new: 10,
                alerts: 11,
                over: Duration::from_secs(10),
            }
        );
        assert_eq!(problems.note(&leak(12), at(12)), Telling::Held);
    }

    #[test]
    fn another_process_peer_or_state_is_another_problem() {
        let mut problems = Problems::default();
        let first = stuck_alert(4242, TcpState::CloseWait, "127.0.0.1:8080", 1);
        assert_eq!(problems.note(&first, at(1)), Telling::First);
        for other in [
            stuck_alert(4243, TcpState::CloseWait, "127.0.0.1:8080", 2),
            stuck_alert(4242, TcpState::CloseWait, "127.0.0.1:6379", 3),
            stuck_alert(4242, TcpState::Established, "127.0.0.1:8080", 4),
        ] {
            assert_eq!(problems.note(&other, at(2)), Telling::First);
        }
    }
}
