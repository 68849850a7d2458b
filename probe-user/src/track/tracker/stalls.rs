//! Stuck without changing state: data that waits in a queue (this process does not read, or
//! the peer does not), and a listener whose accept queue is full. No transition tells of these:
//! each refresh's sock_diag sample does, and a stall that lasts its threshold is flagged.

use probe_common::TcpState;

use super::Tracker;
use crate::track::{
    activity::Queues, diagnosis::Diagnosis, lifecycle::ConnectionKey, time::Timestamp,
};

/// A stall in progress.
#[derive(Clone, Copy, Debug)]
pub(super) struct Stall {
    pub kind: Diagnosis,
    /// When it began (or last made no progress from a smaller queue).
    pub since: Timestamp,
    /// The queue when last sampled: a smaller one is progress.
    queue: u32,
    /// `ListenOverflows` of the listener's namespace at the last sample before the stall was
    /// seen (the queue filled, and began dropping, after it), or when it was seen where there
    /// was none.
    pub overflows_at_start: Option<u64>,
    /// ... and when last sampled.
    pub overflows: Option<u64>,
}

/// The stall `queues` show, for a socket in `state`, if any.
fn stall_in(state: TcpState, queues: &Queues) -> Option<(Diagnosis, u32)> {
    let unread = match state {
        // The receive queue counts the peer's FIN (one sequence number) until the process
        // reads the end of the stream: a CLOSE_WAIT socket shows 1 with no data waiting.
        TcpState::CloseWait => queues.recv.saturating_sub(1),
        _ => queues.recv,
    };
    match state {
        // A full accept queue: as many waiting as the backlog allows.
        TcpState::Listen if queues.send > 0 && queues.recv >= queues.send => {
            Some((Diagnosis::AcceptQueueFull, queues.recv))
        }
        TcpState::Established | TcpState::CloseWait if unread > 0 => {
            Some((Diagnosis::ReceiveStalled, unread))
        }
        TcpState::Established | TcpState::CloseWait if queues.send > 0 && queues.zero_window => {
            Some((Diagnosis::SendStalled, queues.send))
        }
        _ => None,
    }
}

impl Tracker {
    /// Notes what connection `key` (in `state`) has waiting in its queues at `now`: a stall
    /// begins, goes on (a queue that did not shrink), or ends.
    pub(super) fn note_queues(
        &mut self,
        key: ConnectionKey,
        state: TcpState,
        queues: &Queues,
        now: Timestamp,
    ) {
        let overflows_before = match queues.listen_overflows {
            Some(overflows) => self.overflows_seen.insert(key, overflows),
            None => None,
        };
        let Some((kind, queue)) = stall_in(state, queues) else {
            self.end_stall(key);
            return;
        };
        match self.stalls.get_mut(&key) {
            Some(stall) if stall.kind == kind => {
                // Progress (a queue that shrank: the reader read, the peer took some) starts
                // the clock again; a full accept queue stays stalled however it moves.
                if queue < stall.queue && kind != Diagnosis::AcceptQueueFull {
                    stall.since = now;
                }
                stall.queue = queue;
                stall.overflows = queues.listen_overflows;
            }
            _ => {
                self.end_stall(key);
                self.stalls.insert(
                    key,
                    Stall {
                        kind,
                        since: now,
                        queue,
                        overflows_at_start: overflows_before.or(queues.listen_overflows),
                        overflows: queues.listen_overflows,
                    },
                );
            }
        }
    }

    /// The stall of `key` is over: so is its flag.
    fn end_stall(&mut self, key: ConnectionKey) {
        if let Some(stall) = self.stalls.remove(&key)
            && let Some(tracked) = self.table.get_mut(key)
            && tracked.stuck == Some(stall.kind)
        {
            tracked.stuck = None;
        }
    }

    /// The stalls that have lasted their threshold at `now` and are not flagged yet: flagged
    /// now, for [`Tracker::due_stuck`] to report.
    pub(super) fn due_stalls(&mut self, now: Timestamp) -> Vec<(ConnectionKey, Stall)> {
        let mut due = Vec::new();
        for (&key, stall) in &self.stalls {
            let Some(threshold) = self.thresholds.get(stall.kind) else {
                continue;
            };
            let Some(tracked) = self.table.get_mut(key) else {
                continue;
            };
            if tracked.stuck.is_none() && now.saturating_since(stall.since) >= threshold {
                tracked.stuck = Some(stall.kind);
                due.push((key, *stall));
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use probe_common::TcpState::{self, *};

    use crate::track::{
        Diagnosis, ExistingSocket, NoCodePaths, StuckAlert, Thresholds, Tracker,
        activity::Queues,
        event::{Endpoints, Family},
        time::Timestamp,
    };

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_nanos(ms * 1_000_000)
    }

    fn tracker() -> Tracker {
        let mut thresholds = Thresholds::default();
        for kind in Diagnosis::ALL {
            thresholds.set(kind, None);
        }
        for kind in [
            Diagnosis::ReceiveStalled,
            Diagnosis::SendStalled,
            Diagnosis::AcceptQueueFull,
        ] {
            thresholds.set(kind, Some(Duration::from_secs(10)));
        }
        let mut tracker = Tracker::new(thresholds);
        tracker.register_process(42, "server");
        tracker
    }

    fn socket(state: TcpState, queues: Queues) -> ExistingSocket {
        ExistingSocket {
            pid: 42,
            inode: 7,
            cookie: 99,
            state,
            endpoints: Endpoints {
                family: Family::Ipv4,
                local: "127.0.0.1:8080".parse().unwrap(),
                remote: "127.0.0.1:40000".parse().unwrap(),
            },
            activity: None,
            last_ack_received: None,
            queues,
        }
    }

    fn receiving(state: TcpState, recv: u32) -> ExistingSocket {
        socket(
            state,
            Queues {
                recv,
                ..Queues::default()
            },
        )
    }

    /// Seeds `first` at 0 s, then refreshes with each of `samples` a second apart; the alerts
    /// of the last refresh's time.
    fn run(first: &ExistingSocket, samples: &[ExistingSocket]) -> Vec<StuckAlert> {
        let mut tracker = tracker();
        tracker.seed(std::slice::from_ref(first), at(0));
        let mut alerts = tracker.due_stuck(at(0), &NoCodePaths);
        for (second, sample) in (1..).zip(samples) {
            tracker.refresh_activity(std::slice::from_ref(sample), at(second * 1000));
            alerts.extend(tracker.due_stuck(at(second * 1000), &NoCodePaths));
        }
        alerts
    }

    #[test]
    fn unread_data_is_flagged_once_it_waits_for_the_threshold() {
        let waiting = receiving(Established, 4096);
        let alerts = run(&waiting, &vec![waiting.clone(); 12]);
        assert_eq!(alerts.len(), 1, "flagged once: {alerts:?}");
        assert_eq!(alerts[0].diagnosis, Diagnosis::ReceiveStalled);
        assert_eq!(alerts[0].connection.age, Some(Duration::from_secs(10)));
        assert_eq!(alerts[0].dropped, None);
    }

    #[test]
    fn a_queue_that_shrinks_is_progress_and_restarts_the_clock() {
        let samples: Vec<ExistingSocket> = (0..12)
            .map(|i| receiving(Established, if i == 5 { 100 } else { 4096 }))
            .collect();
        assert!(run(&receiving(Established, 4096), &samples).is_empty());
    }

    #[test]
    fn a_drained_queue_ends_the_stall() {
        let mut samples = vec![receiving(Established, 4096); 5];
        samples.push(receiving(Established, 0));
        samples.extend(vec![receiving(Established, 4096); 6]);
        assert!(run(&receiving(Established, 4096), &samples).is_empty());
    }

    #[test]
    fn the_fin_of_a_close_wait_socket_is_not_data() {
        let fin_only = receiving(CloseWait, 1);
        assert!(run(&fin_only, &vec![fin_only.clone(); 12]).is_empty());
        let data = receiving(CloseWait, 2);
        let alerts = run(&data, &vec![data.clone(); 12]);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].diagnosis, Diagnosis::ReceiveStalled);
    }

    #[test]
    fn a_send_queue_is_a_stall_only_behind_a_zero_window() {
        let in_flight = socket(
            Established,
            Queues {
                send: 65536,
                ..Queues::default()
            },
        );
        assert!(run(&in_flight, &vec![in_flight.clone(); 12]).is_empty());
        let blocked = socket(
            Established,
            Queues {
                send: 65536,
                zero_window: true,
                ..Queues::default()
            },
        );
        let alerts = run(&blocked, &vec![blocked.clone(); 12]);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].diagnosis, Diagnosis::SendStalled);
    }

    #[test]
    fn a_full_accept_queue_is_flagged_with_the_drops_since_it_filled() {
        let listener = |waiting, overflows| {
            socket(
                Listen,
                Queues {
                    recv: waiting,
                    send: 4,
                    zero_window: false,
                    listen_overflows: Some(overflows),
                },
            )
        };
        // Filling up is no stall; full, it stays flagged however the drops and queue move. The
        // drops count from the last sample before it was seen full: 20 came while it filled.
        let mut samples = vec![listener(3, 100)];
        samples.extend((0..11).map(|i| listener(5 - i % 2, 120 + 3 * u64::from(i))));
        let alerts = run(&listener(2, 100), &samples);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].diagnosis, Diagnosis::AcceptQueueFull);
        assert_eq!(alerts[0].connection.state, Listen);
        assert_eq!(alerts[0].dropped, Some(50));
    }
}
