//! Every way a connection gets stuck, reproduced for real: a connect into a black hole, a
//! half-close the peer never answers, a peer that vanishes while this side closes, data nobody
//! reads on either side, a listener that never accepts. Each is flagged with its own kind and
//! `ss` agrees on the state; healthy traffic of the same shapes is not flagged.

use std::{
    net::{SocketAddr, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::{
    Helper, NetworkNamespace, Probe, Role, ServerMode, TestResult, WAIT, ensure, ip, render,
    server, ss_sockets_of, ss_state, stuck, stuck_kind, transitions,
};

/// `ss -tanH` with `filter` (which names a state: ss then leaves the state column out): each
/// socket's receive and send queue and its local address.
fn ss_queues(filter: &[&str]) -> Result<Vec<(u64, u64, String)>, String> {
    let output = Command::new("ss")
        .arg("-tanH")
        .args(filter)
        .output()
        .map_err(|e| format!("cannot run ss (install iproute2): {e}"))?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let recv = words.next()?.parse().ok()?;
            let send = words.next()?.parse().ok()?;
            Some((recv, send, words.next()?.to_string()))
        })
        .collect())
}

/// The one stuck alert of kind `kind` for `pid`, checked to carry a reason and a fix.
fn one_alert<'a>(records: &'a [Value], pid: u32, kind: &str) -> Result<&'a Value, String> {
    let alerts = stuck_kind(records, pid, kind);
    ensure(alerts.len() == 1, || {
        format!(
            "pid {pid}: {} {kind} alerts, not 1:\n{}",
            alerts.len(),
            render(records)
        )
    })?;
    let alert = alerts[0];
    ensure(
        alert["reason"].as_str().is_some_and(|r| !r.is_empty())
            && alert["fix"].as_str().is_some_and(|f| !f.is_empty()),
        || format!("no reason or fix: {alert}"),
    )?;
    Ok(alert)
}

/// `TcpExt: ListenOverflows` of this network namespace.
fn listen_overflows() -> Result<u64, String> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").map_err(|e| e.to_string())?;
    let lines: Vec<&str> = netstat
        .lines()
        .filter(|l| l.starts_with("TcpExt:"))
        .collect();
    let [names, values] = lines.as_slice() else {
        return Err("no TcpExt in /proc/net/netstat".into());
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .ok_or_else(|| "no ListenOverflows".into())
}

/// A connect to an address whose SYNs vanish is flagged SYN_SENT; a connect whose first SYN is
/// lost and whose retransmission gets through (slow, but it completes) is not.
pub fn a_connect_into_a_black_hole_is_flagged_and_a_slow_one_is_not() -> TestResult {
    let namespace = NetworkNamespace::linked()?;
    let far = namespace.address();
    let mut listener = Helper::start_in(
        &namespace.name,
        &Role::HoldingServer {
            bind: SocketAddr::new(far, 0),
        },
    )?;
    let port: u16 = listener.hear()?.parse().map_err(|_| "no port")?;
    let hole = namespace.black_hole()?.to_string();
    // The namespace's own address, black-holed only until its first SYN is lost.
    namespace.point_nowhere(far)?;
    let mut hanging = Helper::start(&Role::ConnectHanging {
        server: format!("{hole}:80").parse().map_err(|_| "bad address")?,
    })?;
    let mut slow = Helper::start(&Role::HoldClients {
        server: SocketAddr::new(far, port),
        count: 1,
    })?;
    let mut probe = Probe::start(&[
        "--pid",
        &hanging.pid().to_string(),
        "--pid",
        &slow.pid().to_string(),
        "--stuck-after",
        "SYN_SENT=3s",
    ])?;
    hanging.say("go")?;
    ensure(hanging.hear()? == "connecting", || "no connect".into())?;
    let started = Instant::now();
    slow.say("go")?;
    thread::sleep(Duration::from_millis(400));
    // The path heals: the retransmitted SYN (a second after the first) gets through.
    ip(&[
        "neigh",
        "del",
        &far.to_string(),
        "dev",
        &namespace.outside_link(),
    ])?;
    ensure(slow.hear()? == "ready", || "the slow connect failed".into())?;
    let took = started.elapsed();
    ensure(took >= Duration::from_millis(900), || {
        format!("the slow connect took {took:?}: its first SYN was not lost")
    })?;
    let pid = hanging.pid();
    probe.wait_until("a SYN_SENT alert", WAIT, |r| {
        !stuck_kind(r, pid, "SYN_SENT").is_empty()
    })?;
    let in_ss = ss_sockets_of(pid, "syn-sent")?;
    let records = probe.stop()?;
    let alert = one_alert(&records, pid, "SYN_SENT")?;
    ensure(
        in_ss.len() == 1 && alert["state"] == "SYN_SENT" && alert["daddr"] == hole.as_str(),
        || format!("ss: {in_ss:?}; probe: {alert}"),
    )?;
    ensure(stuck(&records, slow.pid(), "SYN_SENT").is_empty(), || {
        format!("the slow connect was flagged:\n{}", render(&records))
    })?;
    ensure(
        transitions(&records, slow.pid(), "SYN_SENT", "ESTABLISHED").len() == 1,
        || format!("the slow connect never completed:\n{}", render(&records)),
    )?;
    for helper in [hanging, slow, listener] {
        helper.finish()?;
    }
    Ok(())
}

/// A half-close (shutdown(SHUT_WR)) the peer never answers leaves the socket in FIN_WAIT2 for
/// good, flagged; a half-close the peer answers at once is not.
pub fn a_half_close_the_peer_never_answers_is_flagged_and_a_quick_one_is_not() -> TestResult {
    let holding = server("127.0.0.1:0", ServerMode::Hold)?;
    let answering = server("127.0.0.1:0", ServerMode::CloseAfterPeer)?;
    let mut held = Helper::start(&Role::HalfClose { server: holding })?;
    let mut quick = Helper::start(&Role::HalfClose { server: answering })?;
    let mut probe = Probe::start(&[
        "--pid",
        &held.pid().to_string(),
        "--pid",
        &quick.pid().to_string(),
        "--stuck-after",
        "FIN_WAIT2=1500ms",
    ])?;
    for helper in [&mut held, &mut quick] {
        helper.say("go")?;
        ensure(helper.hear()? == "ready", || "no half-close".into())?;
    }
    let pid = held.pid();
    probe.wait_until("a FIN_WAIT2 alert", WAIT, |r| {
        !stuck_kind(r, pid, "FIN_WAIT2").is_empty()
    })?;
    let in_ss = ss_sockets_of(pid, "fin-wait-2")?;
    let quick_in_ss = ss_sockets_of(quick.pid(), "fin-wait-2")?;
    let records = probe.stop()?;
    let alert = one_alert(&records, pid, "FIN_WAIT2")?;
    ensure(
        in_ss.len() == 1 && in_ss[0].contains(&format!(":{}", alert["sport"])),
        || format!("ss: {in_ss:?}; probe: {alert}"),
    )?;
    ensure(
        quick_in_ss.is_empty()
            && stuck(&records, quick.pid(), "FIN_WAIT2").is_empty()
            && transitions(&records, quick.pid(), "FIN_WAIT2", "CLOSE").len() == 1,
        || {
            format!(
                "the quick half-close: ss {quick_in_ss:?}; probe:\n{}",
                render(&records)
            )
        },
    )?;
    held.finish()?;
    quick.finish()
}

/// The peer vanishes (its namespace's link goes down): a connection that then closes after the
/// peer's FIN stays in LAST_ACK, one that closes first in FIN_WAIT1; each is flagged with its
/// kind, as `ss` shows them (orphans now: no process in `ss -p`).
pub fn a_peer_that_vanishes_leaves_last_ack_and_fin_wait1_flagged() -> TestResult {
    let namespace = NetworkNamespace::linked()?;
    let bind = SocketAddr::new(namespace.address(), 0);
    let mut closing_server = Helper::start_in(&namespace.name, &Role::HoldingServer { bind })?;
    let closing_port: u16 = closing_server.hear()?.parse().map_err(|_| "no port")?;
    let mut holding_server = Helper::start_in(&namespace.name, &Role::HoldingServer { bind })?;
    let holding_port: u16 = holding_server.hear()?.parse().map_err(|_| "no port")?;
    let mut last_ack = Helper::start(&Role::CloseOnCommand {
        server: SocketAddr::new(namespace.address(), closing_port),
        count: 1,
    })?;
    let mut fin_wait1 = Helper::start(&Role::CloseOnCommand {
        server: SocketAddr::new(namespace.address(), holding_port),
        count: 1,
    })?;
    let mut probe = Probe::start(&[
        "--pid",
        &last_ack.pid().to_string(),
        "--pid",
        &fin_wait1.pid().to_string(),
        "--stuck-after",
        "LAST_ACK=1500ms",
        "--stuck-after",
        "FIN_WAIT1=1500ms",
        "--stuck-after",
        "CLOSE_WAIT=off",
    ])?;
    for client in [&mut last_ack, &mut fin_wait1] {
        client.say("go")?;
        ensure(client.hear()? == "ready", || "no connection".into())?;
    }
    // The peer closes one connection; once its FIN is in, the peer vanishes.
    closing_server.say("close 1")?;
    ensure(closing_server.hear()? == "closed", || "no close".into())?;
    crate::harness::wait_for_ss(last_ack.pid(), "close-wait", 1)?;
    namespace.cut()?;
    for client in [&mut last_ack, &mut fin_wait1] {
        client.say("close")?;
        ensure(client.hear()? == "closed", || "no close".into())?;
    }
    let (last_ack_pid, fin_wait1_pid) = (last_ack.pid(), fin_wait1.pid());
    probe.wait_until("LAST_ACK and FIN_WAIT1 alerts", WAIT, |r| {
        !stuck_kind(r, last_ack_pid, "LAST_ACK").is_empty()
            && !stuck_kind(r, fin_wait1_pid, "FIN_WAIT1").is_empty()
    })?;
    let in_ss = (ss_state("last-ack")?, ss_state("fin-wait-1")?);
    let records = probe.stop()?;
    for (pid, kind, shown) in [
        (last_ack_pid, "LAST_ACK", &in_ss.0),
        (fin_wait1_pid, "FIN_WAIT1", &in_ss.1),
    ] {
        let alert = one_alert(&records, pid, kind)?;
        let local = format!(
            "{}:{}",
            alert["saddr"].as_str().unwrap_or("?"),
            alert["sport"]
        );
        ensure(
            alert["state"] == kind && shown.lines().any(|line| line.contains(&local)),
            || format!("ss shows no {kind} socket at {local}:\n{shown}\nprobe: {alert}"),
        )?;
    }
    for helper in [last_ack, fin_wait1, closing_server, holding_server] {
        helper.finish()?;
    }
    Ok(())
}

/// Data piles up unread: in the receive queue of a process that stopped reading (RECEIVE
/// STALLED), and in the send queue of one whose peer stopped reading and closed its window
/// (SEND STALLED). Both sockets stay ESTABLISHED and busy-looking; `ss` shows the queues.
pub fn data_nobody_reads_is_flagged_on_either_side() -> TestResult {
    let blasting = server("127.0.0.1:0", ServerMode::Blast)?;
    let holding = server("127.0.0.1:0", ServerMode::Hold)?;
    let mut not_reading = Helper::start(&Role::NeverReads { server: blasting })?;
    let mut flooding = Helper::start(&Role::Flood { server: holding })?;
    let mut probe = Probe::start(&[
        "--pid",
        &not_reading.pid().to_string(),
        "--pid",
        &flooding.pid().to_string(),
        "--stuck-after",
        "RECEIVE_STALLED=2s",
        "--stuck-after",
        "SEND_STALLED=2s",
    ])?;
    for helper in [&mut not_reading, &mut flooding] {
        helper.say("go")?;
        ensure(helper.hear()? == "ready", || "no connection".into())?;
    }
    let (reader, writer) = (not_reading.pid(), flooding.pid());
    probe.wait_until("stalled data alerts", WAIT, |r| {
        !stuck_kind(r, reader, "RECEIVE_STALLED").is_empty()
            && !stuck_kind(r, writer, "SEND_STALLED").is_empty()
    })?;
    let records = probe.stop()?;
    for (pid, kind, to) in [
        (reader, "RECEIVE_STALLED", blasting),
        (writer, "SEND_STALLED", holding),
    ] {
        let alert = one_alert(&records, pid, kind)?;
        let dst = format!("dst {to}");
        let queues = ss_queues(&["state", "established", &dst])?;
        let local = format!("127.0.0.1:{}", alert["sport"]);
        let shown = queues.iter().find(|(_, _, at)| *at == local);
        let waiting = match (kind, shown) {
            ("RECEIVE_STALLED", Some((recv, _, _))) => *recv > 0,
            (_, Some((_, send, _))) => *send > 0,
            _ => false,
        };
        ensure(alert["state"] == "ESTABLISHED" && waiting, || {
            format!("ss ({dst}): {queues:?}; probe: {alert}")
        })?;
    }
    not_reading.finish()?;
    flooding.finish()
}

/// A listener with a backlog of 4 that never accepts, while 20 clients connect: its accept
/// queue fills (`ss` shows Recv-Q over Send-Q 4), the kernel drops the rest (ListenOverflows
/// rises), and probe flags ACCEPT_QUEUE_FULL with the drops it saw.
///
/// The kernel calls the queue full once it holds more than the backlog (`sk_acceptq_is_full`:
/// 5 here), but checks without a lock: two handshakes completing at once on the two CPUs can
/// both pass the check and queue 6 (seen in CI), so the oracle is "more than the backlog".
pub fn a_listener_that_never_accepts_is_flagged_with_its_drops() -> TestResult {
    let mut listener = Helper::start(&Role::NeverAccepts { backlog: 4 })?;
    let port: u16 = listener.hear()?.parse().map_err(|_| "no port")?;
    let mut probe = Probe::start(&[
        "--pid",
        &listener.pid().to_string(),
        "--stuck-after",
        "ACCEPT_QUEUE_FULL=1s",
    ])?;
    let overflows_before = listen_overflows()?;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let clients: Vec<_> = (0..20)
        .map(|_| {
            thread::spawn(move || TcpStream::connect_timeout(&address, Duration::from_secs(4)))
        })
        .collect();
    let pid = listener.pid();
    probe.wait_until("an ACCEPT_QUEUE_FULL alert", WAIT, |r| {
        !stuck_kind(r, pid, "ACCEPT_QUEUE_FULL").is_empty()
    })?;
    let queue = ss_queues(&["state", "listening", &format!("sport = :{port}")])?;
    let held: Vec<_> = clients.into_iter().filter_map(|c| c.join().ok()).collect();
    let overflows = listen_overflows()? - overflows_before;
    let records = probe.stop()?;
    let alert = one_alert(&records, pid, "ACCEPT_QUEUE_FULL")?;
    let dropped = alert["dropped"].as_u64().unwrap_or(0);
    let queued = match queue.as_slice() {
        [(queued, 4, _)] if *queued > 4 => *queued,
        _ => return Err(format!("ss shows no full queue: {queue:?}; probe: {alert}")),
    };
    ensure(alert["state"] == "LISTEN", || format!("probe: {alert}"))?;
    // At least the clients that found the queue full were dropped, all after probe attached.
    let refused = 20 - queued;
    ensure(
        overflows >= refused && dropped >= refused && dropped <= overflows,
        || format!("ListenOverflows rose by {overflows}, probe says {dropped} dropped: {alert}"),
    )?;
    drop(held);
    listener.finish()
}

/// Sockets stuck before probe started (a half-close the peer never answered, data never read)
/// are flagged from the snapshot at attach, with their kinds.
pub fn kinds_found_at_attach_are_flagged() -> TestResult {
    let holding = server("127.0.0.1:0", ServerMode::Hold)?;
    let blasting = server("127.0.0.1:0", ServerMode::Blast)?;
    let mut half_closed = Helper::start(&Role::HalfClose { server: holding })?;
    let mut not_reading = Helper::start(&Role::NeverReads { server: blasting })?;
    for helper in [&mut half_closed, &mut not_reading] {
        helper.say("go")?;
        ensure(helper.hear()? == "ready", || "no connection".into())?;
    }
    // Older than the threshold before probe ever looks.
    thread::sleep(Duration::from_millis(2500));
    let (fin_wait2, reader) = (half_closed.pid(), not_reading.pid());
    let mut probe = Probe::start(&[
        "--pid",
        &fin_wait2.to_string(),
        "--pid",
        &reader.to_string(),
        "--stuck-after",
        "FIN_WAIT2=2s",
        "--stuck-after",
        "RECEIVE_STALLED=1s",
    ])?;
    probe.wait_until("alerts for sockets found at attach", WAIT, |r| {
        !stuck_kind(r, fin_wait2, "FIN_WAIT2").is_empty()
            && !stuck_kind(r, reader, "RECEIVE_STALLED").is_empty()
    })?;
    let in_ss = ss_sockets_of(fin_wait2, "fin-wait-2")?;
    let records = probe.stop()?;
    let alert = one_alert(&records, fin_wait2, "FIN_WAIT2")?;
    ensure(
        in_ss.len() == 1
            && alert["since_attach"] == true
            && alert["age_ms"].as_u64().is_some_and(|age| age >= 2000),
        || format!("ss: {in_ss:?}; probe: {alert}"),
    )?;
    one_alert(&records, reader, "RECEIVE_STALLED")?;
    half_closed.finish()?;
    not_reading.finish()
}
