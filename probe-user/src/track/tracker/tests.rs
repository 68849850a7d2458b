//! The tracker, fed event sequences with made-up times.

use super::*;
use crate::track::{Activity, CodePath, NoCodePaths, StackRef, event::Family, lifecycle::OpenedBy};
use probe_common::{Attribution, TcpState::*};
use std::collections::BTreeMap;

const MS: u64 = 1_000_000;

fn at(ms: u64) -> Timestamp {
    Timestamp::from_nanos(ms * MS)
}

fn t(id: u64, old: TcpState, new: TcpState, ms: u64) -> Transition {
    Transition {
        sock_id: id,
        cookie: None,
        pid: 42,
        at: at(ms),
        endpoints: Endpoints {
            family: Family::Ipv4,
            local: format!("127.0.0.1:{}", 40000 + id % 20000).parse().unwrap(),
            remote: "127.0.0.1:8080".parse().unwrap(),
        },
        old,
        new,
        attribution: Attribution::Known,
        stack: None,
        requested: None,
    }
}

fn tracker() -> Tracker {
    let mut tracker = Tracker::new(Thresholds::with_classic(
        Duration::from_secs(5),
        Duration::from_secs(60),
    ));
    tracker.register_process(42, "client");
    tracker
}

fn open_client(tracker: &mut Tracker, id: u64, ms: u64) {
    tracker.apply(&t(id, Close, SynSent, ms));
    tracker.apply(&t(id, SynSent, Established, ms + 1));
}

#[test]
fn close_wait_is_flagged_once_when_it_crosses_the_threshold() {
    let mut tracker = tracker();
    open_client(&mut tracker, 1, 0);
    let change = tracker.apply(&t(1, Established, CloseWait, 1_000));
    assert_eq!(change.in_old, Some(Duration::from_millis(999)));
    assert_eq!(&*change.owner.comm, "client");
    assert_eq!(tracker.next_deadline(), Some(at(6_000)));
    assert!(tracker.due_stuck(at(5_999), &NoCodePaths).is_empty());
    let alerts = tracker.due_stuck(at(6_000), &NoCodePaths);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].connection.state, CloseWait);
    assert_eq!(alerts[0].age(), Duration::from_secs(5));
    assert_eq!(alerts[0].diagnosis, Diagnosis::PeerClosedNeverClosedLocally);
    assert!(
        tracker.due_stuck(at(100_000), &NoCodePaths).is_empty(),
        "flagged once only"
    );

    let summary = tracker.summary(at(10_000), &NoCodePaths, Losses::default());
    assert_eq!(summary.open.len(), 1);
    assert!(summary.open[0].stuck.is_some());
    assert_eq!(summary.open[0].connection.age, Some(Duration::from_secs(9)));
    assert_eq!(summary.stuck_count(CloseWait), 1);
    assert_eq!(summary.count(CloseWait), 1);
}

#[test]
fn a_connection_that_moves_on_before_its_deadline_is_not_flagged() {
    let mut tracker = tracker();
    open_client(&mut tracker, 1, 0);
    tracker.apply(&t(1, Established, CloseWait, 1_000));
    tracker.apply(&t(1, CloseWait, LastAck, 2_000));
    tracker.apply(&t(1, LastAck, Close, 2_001));
    assert!(tracker.due_stuck(at(1_000_000), &NoCodePaths).is_empty());
    assert_eq!(tracker.open_count(), 0);
    let summary = tracker.summary(at(1_000_000), &NoCodePaths, Losses::default());
    assert_eq!(summary.closed.total, 1);
    assert_eq!(summary.closed.remote_first, 1);
}

#[test]
fn idle_established_is_flagged_then_close_wait_is_flagged_again() {
    let mut tracker = tracker();
    open_client(&mut tracker, 1, 0);
    let alerts = tracker.due_stuck(at(61_000), &NoCodePaths);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].connection.state, Established);
    assert_eq!(alerts[0].diagnosis, Diagnosis::OpenAndUnused);
    tracker.apply(&t(1, Established, CloseWait, 70_000));
    assert!(
        tracker
            .summary(at(70_000), &NoCodePaths, Losses::default())
            .open[0]
            .stuck
            .is_none()
    );
    assert_eq!(tracker.due_stuck(at(75_000), &NoCodePaths).len(), 1);
}

#[test]
fn socket_ids_are_reused_after_close() {
    let mut tracker = tracker();
    open_client(&mut tracker, 1, 0);
    tracker.apply(&t(1, Established, FinWait1, 10));
    tracker.apply(&t(1, FinWait1, FinWait2, 11));
    let change = tracker.apply(&t(1, FinWait2, Close, 12));
    assert!(change.time_wait());
    open_client(&mut tracker, 1, 20);
    let summary = tracker.summary(at(30), &NoCodePaths, Losses::default());
    assert_eq!(summary.open.len(), 1);
    assert_eq!(summary.open[0].opened_by, OpenedBy::Local);
    assert_eq!(summary.open[0].connection.since, Some(at(21)));
    assert_eq!(summary.closed.local_first, 1);
}

#[test]
fn a_reused_id_whose_close_was_lost_starts_a_new_lifecycle() {
    let mut tracker = tracker();
    open_client(&mut tracker, 1, 0);
    tracker.apply(&t(1, Established, CloseWait, 5));
    // The CLOSE of that socket was lost; a new socket gets the same address.
    let change = tracker.apply(&t(1, Close, SynSent, 100));
    assert_eq!(change.in_old, None);
    tracker.apply(&t(1, SynSent, Established, 101));
    // The stale CLOSE_WAIT deadline must not flag the new connection.
    assert!(tracker.due_stuck(at(10_000), &NoCodePaths).is_empty());
    let summary = tracker.summary(at(10_000), &NoCodePaths, Losses::default());
    assert_eq!(summary.open[0].connection.state, Established);
}

#[test]
fn closed_counts_tell_who_closed_first_and_resets() {
    let mut tracker = tracker();
    // local first
    open_client(&mut tracker, 1, 0);
    for (old, new) in [
        (Established, FinWait1),
        (FinWait1, FinWait2),
        (FinWait2, Close),
    ] {
        tracker.apply(&t(1, old, new, 5));
    }
    // remote first
    open_client(&mut tracker, 2, 0);
    for (old, new) in [
        (Established, CloseWait),
        (CloseWait, LastAck),
        (LastAck, Close),
    ] {
        tracker.apply(&t(2, old, new, 5));
    }
    // reset
    open_client(&mut tracker, 3, 0);
    tracker.apply(&t(3, Established, Close, 5));
    // refused
    tracker.apply(&t(4, Close, SynSent, 0));
    tracker.apply(&t(4, SynSent, Close, 1));
    // a listener is not a connection
    tracker.apply(&t(5, Close, Listen, 0));
    tracker.apply(&t(5, Listen, Close, 1));

    let closed = tracker
        .summary(at(10), &NoCodePaths, Losses::default())
        .closed;
    assert_eq!(
        closed,
        ClosedCounts {
            total: 4,
            local_first: 1,
            remote_first: 1,
            simultaneous: 0,
            reset: 1,
            connect_failed: 1,
        }
    );
}

#[test]
fn summary_lists_oldest_first_with_unknown_starts_first() {
    let mut tracker = tracker();
    open_client(&mut tracker, 1, 50);
    open_client(&mut tracker, 2, 10);
    // Seen mid-life: a pre-existing connection whose owner shut it down.
    tracker.apply(&t(3, Established, FinWait1, 70));
    let summary = tracker.summary(at(100), &NoCodePaths, Losses::default());
    let keys: Vec<ConnectionKey> = summary.open.iter().map(|c| c.connection.key).collect();
    assert_eq!(keys, [2, 1, 3].map(ConnectionKey::Socket));
    assert_eq!(summary.open[2].opened_by, OpenedBy::Unknown);
}

#[test]
fn churn_does_not_grow_the_deadline_queues_without_bound() {
    let mut tracker = tracker();
    for i in 1..=100_000 {
        open_client(&mut tracker, i, i);
        tracker.apply(&t(i, Established, Close, i + 2));
    }
    assert_eq!(tracker.open_count(), 0);
    assert!(tracker.detector.pending() <= STALE_DEADLINES_SLACK + 1);
}

fn existing(inode: u64, state: TcpState, idle_s: Option<u64>, now: Timestamp) -> ExistingSocket {
    ExistingSocket {
        pid: 42,
        inode,
        cookie: 0,
        state,
        endpoints: t(inode, Close, Close, 0).endpoints,
        activity: idle_s.map(|idle| activity(idle, now)),
        last_ack_received: None,
        queues: Default::default(),
    }
}

/// A socket found at `attach`, from `local` to `remote`, with no tcp_info.
fn found_between(
    inode: u64,
    state: TcpState,
    local: &str,
    remote: &str,
    attach: Timestamp,
) -> ExistingSocket {
    ExistingSocket {
        endpoints: Endpoints::parse(local, remote),
        ..existing(inode, state, None, attach)
    }
}

fn activity(idle_s: u64, sampled_at: Timestamp) -> Activity {
    Activity {
        sampled_at,
        last_data_sent: Duration::from_secs(idle_s),
        last_data_received: Duration::from_secs(idle_s + 100),
        bytes_acked: 10,
        bytes_received: 20,
        unacked: 0,
        retransmits: 1,
    }
}

#[test]
fn close_wait_found_at_attach_is_flagged_once_its_proven_age_passes_the_threshold() {
    let mut tracker = tracker();
    let attach = at(100_000);
    // The peer's FIN came 30 s ago at least (tcp_info's last ACK): past 5 s, flagged at once.
    let mut old = existing(7, CloseWait, Some(30), attach);
    old.last_ack_received = Some(Duration::from_secs(30));
    tracker.seed(std::slice::from_ref(&old), attach);
    // Only 300 ms proven: flagged 4.7 s after attach if still there, never before.
    let mut young = existing(8, CloseWait, Some(1), attach);
    young.last_ack_received = Some(Duration::from_millis(300));
    tracker.seed(std::slice::from_ref(&young), attach);
    let alerts = tracker.due_stuck(attach, &NoCodePaths);
    assert_eq!(alerts.len(), 1);
    assert!(alerts[0].connection.since_attach);
    assert_eq!(alerts[0].connection.key, ConnectionKey::Inode(7));
    assert_eq!(alerts[0].connection.idle, Some(Duration::from_secs(30)));
    assert_eq!(
        alerts[0].age(),
        Duration::from_secs(30),
        "at least since the last ACK"
    );
    assert!(tracker.due_stuck(at(104_699), &NoCodePaths).is_empty());
    let later = tracker.due_stuck(at(104_700), &NoCodePaths);
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].connection.key, ConnectionKey::Inode(8));
    let summary = tracker.summary(at(105_000), &NoCodePaths, Losses::default());
    assert!(
        summary
            .open
            .iter()
            .all(|o| o.connection.since_attach && o.stuck.is_some())
    );
    assert_eq!(
        summary.open[0].connection.age,
        Some(Duration::from_secs(35))
    );
}

#[test]
fn an_unconnected_socket_found_at_attach_is_not_a_connection() {
    let mut tracker = tracker();
    tracker.seed(&[existing(7, Close, None, at(0))], at(0));
    assert_eq!(tracker.open_count(), 0);
    assert!(tracker.due_stuck(at(100_000), &NoCodePaths).is_empty());
}

#[test]
fn a_connection_found_at_attach_is_adopted_by_its_first_transition() {
    let mut tracker = tracker();
    tracker.seed(&[existing(7, CloseWait, None, at(0))], at(0));
    let change = tracker.apply(&t(7, CloseWait, LastAck, 500));
    assert_eq!(change.in_old, None, "entered before attach: unknown");
    assert_eq!(change.inode, Some(7));
    let summary = tracker.summary(at(500), &NoCodePaths, Losses::default());
    assert_eq!(summary.open[0].connection.key, ConnectionKey::Socket(7));
    tracker.apply(&t(7, LastAck, Close, 501));
    assert_eq!(tracker.open_count(), 0);
    assert_eq!(
        tracker
            .summary(at(600), &NoCodePaths, Losses::default())
            .closed
            .remote_first,
        1
    );
}

#[test]
fn connections_found_at_attach_are_adopted_by_cookie_exactly_and_by_endpoints_without_one() {
    let mut tracker = tracker();
    // Enough to grow the indexes many times over; every pair of sockets shares its endpoints,
    // as the same 4-tuple in two network namespaces would.
    const SEEDED: u64 = 5_000;
    for inode in 1..=SEEDED {
        let mut socket = existing(inode, CloseWait, None, at(0));
        socket.endpoints = t(inode.div_ceil(2), Close, Close, 0).endpoints;
        socket.cookie = 1_000_000 + inode;
        tracker.seed(std::slice::from_ref(&socket), at(0));
    }
    // One more, found without a cookie (a kernel without cookies in sock_diag).
    let mut no_cookie = existing(SEEDED + 1, CloseWait, None, at(0));
    no_cookie.endpoints = t(9_999, Close, Close, 0).endpoints;
    tracker.seed(std::slice::from_ref(&no_cookie), at(0));
    for inode in (1..=SEEDED).rev() {
        let mut first = t(0xffff_0000 + inode, CloseWait, LastAck, 10);
        first.endpoints = t(inode.div_ceil(2), Close, Close, 0).endpoints;
        first.cookie = Some(1_000_000 + inode);
        let change = tracker.apply(&first);
        assert_eq!(
            change.inode,
            Some(inode),
            "the cookie names the very socket"
        );
        assert_eq!(change.in_old, None, "entered before attach");
    }
    let change = tracker.apply(&t(9_999, CloseWait, LastAck, 10));
    assert_eq!(change.inode, Some(SEEDED + 1), "matched by endpoints");
    assert!(tracker.unnamed.is_empty());
    assert_eq!(tracker.open_count(), SEEDED as usize + 1);
    // Named, they are found by their socket address from now on.
    let change = tracker.apply(&t(0xffff_0000 + 7, LastAck, Close, 20));
    assert_eq!(change.inode, Some(7));
    assert_eq!(tracker.open_count(), SEEDED as usize);
}

#[test]
fn idle_established_found_at_attach_is_flagged_when_idle_for_the_threshold() {
    let mut tracker = tracker();
    let attach = at(100_000);
    // Idle 50s at attach, threshold 60s: due 10s later, not before.
    tracker.seed(&[existing(1, Established, Some(50), attach)], attach);
    // Idle 70s at attach: due at once.
    tracker.seed(&[existing(2, Established, Some(70), attach)], attach);
    let now_keys = |alerts: Vec<StuckAlert>| -> Vec<ConnectionKey> {
        alerts.iter().map(|a| a.connection.key).collect()
    };
    assert_eq!(
        now_keys(tracker.due_stuck(attach, &NoCodePaths)),
        [ConnectionKey::Inode(2)]
    );
    assert!(tracker.due_stuck(at(109_999), &NoCodePaths).is_empty());
    assert_eq!(
        now_keys(tracker.due_stuck(at(110_000), &NoCodePaths)),
        [ConnectionKey::Inode(1)]
    );
}

#[test]
fn a_busy_established_connection_is_not_flagged() {
    let mut tracker = tracker();
    open_client(&mut tracker, 1, 0);
    open_client(&mut tracker, 2, 0);
    let sample = |id: u64, idle_s: u64, at_ms: u64| ExistingSocket {
        pid: 42,
        inode: 100 + id,
        cookie: 0,
        state: Established,
        endpoints: t(id, Close, Close, 0).endpoints,
        activity: Some(activity(idle_s, at(at_ms))),
        last_ack_received: None,
        queues: Default::default(),
    };
    // At 59s: connection 1 moved data 1s ago, connection 2 never did.
    tracker.refresh_activity(&[sample(1, 1, 59_000), sample(2, 59, 59_000)], at(59_000));
    let alerts = tracker.due_stuck(at(61_001), &NoCodePaths);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].connection.key, ConnectionKey::Socket(2));
    assert_eq!(alerts[0].connection.inode, Some(102));
    // Connection 1 keeps moving data: never flagged.
    for second in 62..200 {
        tracker.refresh_activity(&[sample(1, 0, second * 1000)], at(second * 1000));
        assert!(
            tracker
                .due_stuck(at(second * 1000), &NoCodePaths)
                .is_empty()
        );
    }
    // It stops: flagged one threshold after its last data.
    assert!(tracker.due_stuck(at(258_999), &NoCodePaths).is_empty());
    assert_eq!(tracker.due_stuck(at(259_000), &NoCodePaths).len(), 1);
}

fn path(function: &str) -> Arc<CodePath> {
    Arc::new(CodePath {
        frames: vec![crate::track::Frame {
            function: function.into(),
            file: Some("main.go".into()),
            line: Some(31),
            address: 0x1000,
            kind: crate::track::FrameKind::App,
        }],
    })
}

#[test]
fn stuck_connections_are_grouped_by_the_code_that_opened_them() {
    let mut tracker = tracker();
    let paths = [path("main.alpha"), path("main.beta")];
    for (id, opener) in [(1, 0), (2, 0), (3, 1), (4, 0)] {
        let mut connect = t(id, Close, SynSent, 0);
        connect.stack = Some(StackRef {
            pid: 42,
            id: opener,
        });
        tracker.apply(&connect);
        tracker.apply(&t(id, SynSent, Established, 1));
        tracker.apply(&t(id, Established, CloseWait, 2));
    }
    // One that is not stuck (yet: SYN_SENT is flagged after 10 s) does not count.
    tracker.apply(&t(5, Close, SynSent, 0));
    tracker.due_stuck(at(9_000), &NoCodePaths);
    let resolve = |stack: StackRef| Some(paths[stack.id as usize].clone());
    let summary = tracker.summary(at(9_000), &resolve, Losses::default());
    let groups = summary.stuck_by_code_path();
    let shape: Vec<(String, usize)> = groups
        .iter()
        .map(|g| (g.opened_at.as_ref().unwrap().describe(1), g.connections))
        .collect();
    assert_eq!(
        shape,
        [
            ("main.alpha (main.go:31)".to_string(), 3),
            ("main.beta (main.go:31)".to_string(), 1)
        ]
    );
    assert!(groups.iter().all(|g| g.state == CloseWait));
}

#[test]
fn unknown_processes_get_a_placeholder_name() {
    let mut tracker = tracker();
    let mut other = t(1, Close, SynSent, 0);
    other.pid = 7;
    assert_eq!(&*tracker.apply(&other).owner.comm, "?");
}

#[test]
fn a_connection_takes_160_bytes_in_the_table() {
    assert_eq!(std::mem::size_of::<Option<Tracked>>(), 160);
}

#[test]
fn connections_found_accepted_are_grouped_by_the_service_and_those_opened_by_the_peer() {
    let mut tracker = tracker();
    let attach = at(100_000);
    let socket = |inode: u64, state, local: &str, remote: &str| ExistingSocket {
        last_ack_received: Some(Duration::from_secs(30)),
        ..found_between(inode, state, local, remote, attach)
    };
    let mut found = vec![socket(1, Listen, "0.0.0.0:8080", "0.0.0.0:0")];
    // Accepted: each peer from a port of its own.
    for n in 0..3 {
        found.push(socket(
            10 + n,
            CloseWait,
            "10.0.0.1:8080",
            &format!("10.0.0.9:{}", 50_000 + n),
        ));
    }
    // Opened by this side, to two ports of one server.
    found.push(socket(20, CloseWait, "10.0.0.1:40001", "10.0.0.7:443"));
    found.push(socket(21, CloseWait, "10.0.0.1:40002", "10.0.0.7:443"));
    tracker.seed(&found, attach);
    assert_eq!(tracker.due_stuck(attach, &NoCodePaths).len(), 5);
    let tally = tracker.stuck_tally();
    let groups: BTreeMap<SocketAddr, usize> = tally
        .iter()
        .map(|(&(_, _, endpoint), &count)| (endpoint, count))
        .collect();
    assert_eq!(
        groups,
        BTreeMap::from([
            ("10.0.0.1:8080".parse().unwrap(), 3),
            ("10.0.0.7:443".parse().unwrap(), 2),
        ])
    );
    // A connection accepted while probe runs is known by the service too.
    tracker.apply(&t(5, Listen, SynRecv, 100_001));
    let accepted = tracker.apply(&t(5, SynRecv, Established, 100_002));
    assert_eq!(accepted.endpoints.local.port(), 40_005);
    let summary = tracker.summary(at(100_003), &NoCodePaths, Losses::default());
    let view = summary
        .open
        .iter()
        .find(|open| open.connection.key == ConnectionKey::Socket(5))
        .unwrap();
    assert_eq!(view.connection.known_by, accepted.endpoints.local);
}

#[test]
fn a_reading_begun_before_a_connection_changed_does_not_let_it_go() {
    let mut tracker = tracker();
    open_client(&mut tracker, 1, 0);
    open_client(&mut tracker, 2, 5_000);
    // A reading begun at 3 s holds neither, and their process has exited since: the one
    // established before the reading began is let go; the other, newer than the reading, waits
    // for the next one.
    let abandoned = tracker.reconcile_holders(&Holders::default(), at(3_000), |_| false, at(6_000));
    let sockets: Vec<Option<u64>> = abandoned.iter().map(|(_, key)| key.socket()).collect();
    assert_eq!(sockets, [Some(1)]);
    let abandoned = tracker.reconcile_holders(&Holders::default(), at(5_500), |_| false, at(7_000));
    let sockets: Vec<Option<u64>> = abandoned.iter().map(|(_, key)| key.socket()).collect();
    assert_eq!(sockets, [Some(2)]);
}

#[test]
fn a_connection_has_one_deadline_queued_once_its_handshake_has_settled() {
    let mut tracker = tracker();
    for id in 1..=10_000 {
        open_client(&mut tracker, id, 1_000);
    }
    assert!(tracker.due_stuck(at(2_000), &NoCodePaths).is_empty());
    assert_eq!(
        tracker.detector.pending(),
        10_000,
        "the deadlines of SYN_SENT, over in a millisecond, are not kept"
    );
    // ESTABLISHED for 60 s: flagged at its deadline, as before.
    assert!(tracker.due_stuck(at(61_000), &NoCodePaths).is_empty());
    assert_eq!(tracker.due_stuck(at(61_001), &NoCodePaths).len(), 4096);
}

#[test]
fn the_destinations_connected_to_are_listed_not_the_peers_of_accepted_connections() {
    let mut tracker = tracker();
    let attach = at(100);
    let socket = |inode, state, local, remote| found_between(inode, state, local, remote, attach);
    tracker.seed(
        &[
            socket(1, Listen, "0.0.0.0:8080", "0.0.0.0:0"),
            // Accepted: its peer's port is the peer's ephemeral one.
            socket(2, Established, "10.0.0.1:8080", "10.0.0.9:51000"),
            // Opened by this side before probe came.
            socket(3, Established, "10.0.0.1:40000", "10.0.0.7:5432"),
        ],
        attach,
    );
    open_client(&mut tracker, 4, 200);
    open_client(&mut tracker, 6, 250);
    let mut mapped = t(5, Close, SynSent, 300);
    mapped.endpoints = Endpoints::parse("[::ffff:127.0.0.1]:40005", "[::ffff:127.0.0.1]:8081");
    assert_eq!(mapped.endpoints.family, Family::Ipv6);
    tracker.apply(&mapped);
    assert_eq!(
        tracker.connect_destinations(),
        Some(vec![
            "10.0.0.7:5432".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:8081".parse().unwrap()
        ])
    );
}
