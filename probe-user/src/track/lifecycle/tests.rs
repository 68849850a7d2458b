//! Lifecycles rebuilt from transition sequences.

use super::*;
use crate::track::event::Family;
use probe_common::{Attribution, TcpState::*};

fn transition(old: TcpState, new: TcpState, at_ms: u64) -> Transition {
    Transition {
        sock_id: 7,
        cookie: None,
        pid: 100,
        at: Timestamp::from_nanos(at_ms * 1_000_000),
        endpoints: Endpoints {
            family: Family::Ipv4,
            local: "127.0.0.1:40000".parse().unwrap(),
            remote: "127.0.0.1:80".parse().unwrap(),
        },
        old,
        new,
        attribution: Attribution::Known,
        stack: None,
        requested: None,
    }
}

/// Runs a path of (state, ms) through a fresh connection; returns it and each `in_old`.
fn run(path: &[(TcpState, TcpState, u64)]) -> (Connection, Vec<Option<u64>>) {
    let first = transition(path[0].0, path[0].1, path[0].2);
    let mut conn = Connection::first_seen(&first);
    let in_old = path
        .iter()
        .map(|&(old, new, at)| {
            conn.advance(&transition(old, new, at))
                .map(|d| d.as_millis() as u64)
        })
        .collect();
    (conn, in_old)
}

fn states(conn: &Connection) -> Vec<&'static str> {
    conn.history.iter().map(|v| v.state.name()).collect()
}

#[test]
fn active_open_then_active_close_ends_in_inferred_time_wait() {
    let (conn, in_old) = run(&[
        (Close, SynSent, 0),
        (SynSent, Established, 2),
        (Established, FinWait1, 1002),
        (FinWait1, FinWait2, 1003),
        (FinWait2, Close, 1010),
    ]);
    assert_eq!(conn.opened_by(), OpenedBy::Local);
    assert_eq!(conn.closed_first, Some(ClosedFirst::Local));
    assert_eq!(conn.ending, Some(Ending::TimeWait));
    assert_eq!(
        states(&conn),
        [
            "SYN_SENT",
            "ESTABLISHED",
            "FIN_WAIT1",
            "FIN_WAIT2",
            "TIME_WAIT",
            "CLOSE"
        ]
    );
    assert!(conn.history.get(4).unwrap().inferred);
    assert_eq!(in_old, [None, Some(2), Some(1000), Some(1), Some(7)]);
    assert!(conn.is_closed());
}

#[test]
fn history_keeps_every_visit_inline_and_the_first_when_full() {
    let visit = |state, ms: Option<u64>| StateVisit {
        state,
        since: ms.map(|ms| Timestamp::from_nanos(ms * 1_000_000)),
        inferred: state == TimeWait,
        at_least: ms == Some(0),
    };
    let path = [
        visit(Established, None),
        visit(FinWait1, Some(0)),
        visit(Closing, Some(2)),
        visit(TimeWait, Some(3)),
        visit(Close, Some(3)),
    ];
    let history: History = path.into_iter().collect();
    assert_eq!(history.iter().collect::<Vec<_>>(), path);
    assert_eq!(history.last(), Some(path[4]));
    let mut long = history;
    for ms in 10..13 {
        long.push(visit(Listen, Some(ms)));
    }
    let states: Vec<TcpState> = long.iter().map(|v| v.state).collect();
    assert_eq!(
        states,
        [Established, TimeWait, Close, Listen, Listen, Listen]
    );
    assert_eq!(
        long.last().unwrap().since,
        Some(Timestamp::from_nanos(12_000_000))
    );
    assert_eq!(std::mem::size_of::<History>(), 36);
}

#[test]
fn history_keeps_the_current_state_exact_and_past_stays_to_their_scale() {
    let ns = Timestamp::from_nanos;
    let visit = |state, since: Option<Timestamp>| StateVisit {
        state,
        since,
        inferred: false,
        at_least: false,
    };
    // Far from the clock's origin, as on a host up for a year.
    let boot = 365 * 86_400 * 1_000_000_000u64 + 123_456_789;
    let sinces = [
        boot,
        boot + 1_999_999_999,                   // 2 s, to the nanosecond
        boot + 1_999_999_999 + 600_000_000_123, // 10 min, to the microsecond
        boot + 1_999_999_999 + 600_000_000_123 + 3 * 86_400_000_000_001, // 3 days, to the second
    ];
    let history: History = [Established, FinWait1, FinWait2, Close]
        .into_iter()
        .zip(sinces)
        .map(|(state, since)| visit(state, Some(ns(since))))
        .collect();
    let kept: Vec<u64> = history
        .iter()
        .map(|v| v.since.unwrap().as_nanos())
        .collect();
    assert_eq!(kept[3], sinces[3], "the current state's start is exact");
    let stays: Vec<u64> = kept.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        stays,
        [1_999_999_999, 600_000_000_000, 3 * 86_400_000_000_000],
        "each stay rounded down to its scale"
    );
    // A visit whose start is unknown, between known ones, is skipped over.
    let history: History = [
        visit(Established, None),
        visit(CloseWait, Some(ns(boot))),
        visit(LastAck, None),
        visit(Close, Some(ns(boot + 5))),
    ]
    .into_iter()
    .collect();
    let kept: Vec<Option<u64>> = history
        .iter()
        .map(|v| v.since.map(Timestamp::as_nanos))
        .collect();
    assert_eq!(kept, [None, Some(boot), None, Some(boot + 5)]);
}

#[test]
fn endpoints_follow_the_latest_transition() {
    let mut connect = transition(Close, SynSent, 0);
    connect.endpoints.local.set_port(0);
    let mut conn = Connection::first_seen(&connect);
    conn.advance(&connect);
    assert_eq!(conn.endpoints().local.port(), 0);
    conn.advance(&transition(SynSent, Established, 1));
    assert_eq!(conn.endpoints().local.port(), 40000);
}

#[test]
fn a_connection_found_at_attach_is_known_since_attach_only() {
    let socket = ExistingSocket {
        pid: 1,
        inode: 99,
        cookie: 0,
        state: CloseWait,
        endpoints: transition(Close, Close, 0).endpoints,
        activity: None,
        last_ack_received: None,
        queues: Default::default(),
    };
    let mut conn = Connection::existing(&socket, Timestamp::from_nanos(5), false);
    assert_eq!(conn.key(), ConnectionKey::Inode(99));
    assert!(conn.since_attach());
    assert_eq!(conn.closed_first, Some(ClosedFirst::Remote));
    assert_eq!(conn.opened_by(), OpenedBy::Unknown);
    // Its first transition has no known time in the old state.
    assert_eq!(conn.advance(&transition(CloseWait, LastAck, 100)), None);
    assert!(!conn.since_attach());
    assert_eq!(
        conn.advance(&transition(LastAck, Close, 101)),
        Some(Duration::from_millis(1))
    );
    assert_eq!(conn.ending, Some(Ending::LastAck));
}

#[test]
fn passive_open_then_passive_close_ends_through_last_ack() {
    let (conn, _) = run(&[
        (Listen, SynRecv, 0),
        (SynRecv, Established, 1),
        (Established, CloseWait, 50),
        (CloseWait, LastAck, 60),
        (LastAck, Close, 61),
    ]);
    assert_eq!(conn.opened_by(), OpenedBy::Remote);
    assert_eq!(conn.closed_first, Some(ClosedFirst::Remote));
    assert_eq!(conn.ending, Some(Ending::LastAck));
}

#[test]
fn simultaneous_close_goes_through_closing() {
    let (conn, _) = run(&[
        (Close, SynSent, 0),
        (SynSent, Established, 1),
        (Established, FinWait1, 5),
        (FinWait1, Closing, 6),
        (Closing, Close, 7),
    ]);
    assert_eq!(conn.closed_first, Some(ClosedFirst::Simultaneous));
    assert_eq!(conn.ending, Some(Ending::TimeWait));
    assert_eq!(states(&conn)[4..], ["TIME_WAIT", "CLOSE"]);
}

#[test]
fn reset_while_established_has_no_fin() {
    let (conn, _) = run(&[
        (Close, SynSent, 0),
        (SynSent, Established, 1),
        (Established, Close, 9),
    ]);
    assert_eq!(conn.closed_first, None);
    assert_eq!(conn.ending, Some(Ending::Reset));
}

#[test]
fn reset_in_close_wait_is_a_reset_after_the_peer_closed() {
    let (conn, _) = run(&[
        (Listen, SynRecv, 0),
        (SynRecv, Established, 1),
        (Established, CloseWait, 3),
        (CloseWait, Close, 4),
    ]);
    assert_eq!(conn.closed_first, Some(ClosedFirst::Remote));
    assert_eq!(conn.ending, Some(Ending::Reset));
}

#[test]
fn refused_connect_is_a_connect_failure() {
    let (conn, in_old) = run(&[(Close, SynSent, 0), (SynSent, Close, 1)]);
    assert_eq!(conn.ending, Some(Ending::ConnectFailed));
    assert_eq!(conn.closed_first, None);
    assert_eq!(in_old, [None, Some(1)]);
}

#[test]
fn listener_lifecycle() {
    let (conn, _) = run(&[(Close, Listen, 0), (Listen, Close, 100)]);
    assert_eq!(conn.opened_by(), OpenedBy::Local);
    assert_eq!(conn.ending, Some(Ending::ListenerClosed));
}

#[test]
fn a_connection_seen_mid_life_has_an_unknown_start() {
    let (conn, in_old) = run(&[
        (Established, FinWait1, 10),
        (FinWait1, FinWait2, 11),
        (FinWait2, Close, 12),
    ]);
    assert_eq!(conn.opened_by(), OpenedBy::Unknown);
    assert_eq!(conn.history.get(0).unwrap().state, Established);
    assert_eq!(conn.history.get(0).unwrap().since, None);
    assert_eq!(in_old, [None, Some(1), Some(1)]);
    assert_eq!(conn.closed_first, Some(ClosedFirst::Local));
}

#[test]
fn local_close_of_a_half_open_accepted_socket() {
    let (conn, _) = run(&[
        (Listen, SynRecv, 0),
        (SynRecv, FinWait1, 1),
        (FinWait1, Close, 2),
    ]);
    assert_eq!(conn.closed_first, Some(ClosedFirst::Local));
    assert_eq!(conn.ending, Some(Ending::Reset));
}
