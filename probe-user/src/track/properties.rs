//! Property tests: arbitrary bytes into the decoder and arbitrary event sequences into the
//! tracker never panic, and the tracker's invariants hold after every step.

use std::{net::SocketAddr, time::Duration};

use probe_common::{Attribution, TcpState};
use proptest::prelude::*;

use super::{
    Diagnosis, Endpoints, ExistingSocket, Family, Losses, NoCodePaths, StackRef, Thresholds,
    Timestamp, Tracker, Transition,
};

fn state() -> impl Strategy<Value = TcpState> {
    (1u8..=12).prop_map(|n| TcpState::from_raw(n).expect("1..=12 are states"))
}

/// One step: a transition of one of a few sockets (so ids collide and get reused), a seeded
/// existing socket, or a look at the deadlines.
#[derive(Clone, Debug)]
enum Step {
    Transition {
        id: u64,
        old: TcpState,
        new: TcpState,
        stack: bool,
    },
    Seed {
        inode: u64,
        state: TcpState,
        idle_ms: Option<u64>,
    },
    Tick,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        // Socket addresses are never 0 (the decoder refuses it).
        6 => (1u64..7, state(), state(), any::<bool>())
            .prop_map(|(id, old, new, stack)| Step::Transition { id, old, new, stack }),
        1 => (0u64..6, state(), proptest::option::of(0u64..100_000))
            .prop_map(|(inode, state, idle_ms)| Step::Seed { inode, state, idle_ms }),
        2 => Just(Step::Tick),
    ]
}

fn endpoints(n: u64) -> Endpoints {
    Endpoints {
        family: Family::Ipv4,
        local: SocketAddr::from(([127, 0, 0, 1], 40_000 + n as u16)),
        remote: SocketAddr::from(([127, 0, 0, 1], 80)),
    }
}

fn check_invariants(tracker: &Tracker, now: Timestamp) {
    let summary = tracker.summary(now, &NoCodePaths, Losses::default());
    assert_eq!(summary.open.len(), tracker.open_count());
    assert_eq!(summary.counts().values().sum::<usize>(), summary.open.len());
    for (state, stuck) in summary.stuck() {
        assert!(
            *stuck <= summary.count(*state),
            "more stuck than open in {state:?}"
        );
    }
    for connection in summary.open.iter().map(|open| &open.connection) {
        assert_ne!(
            connection.state,
            TcpState::Close,
            "a closed connection is still open"
        );
        if let (Some(since), Some(age)) = (connection.since, connection.age) {
            assert_eq!(now.saturating_since(since), age);
        }
    }
    let closed = summary.closed;
    assert!(closed.local_first + closed.remote_first + closed.simultaneous <= closed.total);
    assert!(closed.reset + closed.connect_failed <= closed.total);
    let groups: usize = summary
        .groups()
        .iter()
        .map(|g| g.connections + g.held_ends)
        .sum();
    assert_eq!(groups, summary.open.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
        let _ = Transition::decode(&bytes);
    }

    #[test]
    fn any_event_sequence_keeps_the_table_consistent(
        steps in proptest::collection::vec((step(), 0u64..3_000), 1..200),
    ) {
        let mut tracker = Tracker::new(Thresholds::with_classic(Duration::from_millis(500), Duration::from_secs(2)));
        tracker.register_process(1, "p");
        let mut now = Timestamp::from_nanos(1_000_000_000);
        for (step, advance_ms) in steps {
            now = now.saturating_add(Duration::from_millis(advance_ms));
            match step {
                Step::Transition { id, old, new, stack } => {
                    let change = tracker.apply(&Transition {
                        sock_id: id,
                        cookie: None,
                        pid: 1,
                        at: now,
                        endpoints: endpoints(id),
                        old,
                        new,
                        attribution: Attribution::Known,
                        stack: stack.then_some(StackRef { pid: 1, id: 9 }),
                        requested: stack.then_some(StackRef { pid: 1, id: 10 }),
                    });
                    prop_assert_eq!(change.new, new);
                }
                Step::Seed { inode, state, idle_ms } => tracker.seed(
                    &[ExistingSocket {
                        pid: 1,
                        inode,
                        cookie: 0,
                        state,
                        endpoints: endpoints(inode + 100),
                        activity: idle_ms.map(|ms| super::Activity {
                            sampled_at: now,
                            last_data_sent: Duration::from_millis(ms),
                            last_data_received: Duration::from_millis(ms),
                            bytes_acked: 0,
                            bytes_received: 0,
                            unacked: 0,
                            retransmits: 0,
                        }),
                        last_ack_received: None,
                        queues: Default::default(),
                    }],
                    now,
                ),
                Step::Tick => {
                    for alert in tracker.due_stuck(now, &NoCodePaths) {
                        // Flagged for time in its state: the state it is in is that kind's.
                        prop_assert_eq!(Diagnosis::for_state(alert.connection.state), Some(alert.diagnosis));
                    }
                }
            }
            check_invariants(&tracker, now);
        }
    }
}
