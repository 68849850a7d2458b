//! Lifecycles of connections traced from their first transition: CLOSE_WAIT, idle
//! ESTABLISHED, active closes into TIME_WAIT, accepted connections, IPv6.

use std::{collections::HashSet, net::SocketAddr, thread, time::Duration};

use crate::harness::{
    Helper, Probe, Role, ServerMode, TestResult, WAIT, connect_many, ensure, of_type, render,
    ss_sockets_of, ss_state, stuck, traced_client, transitions,
};

/// A client whose server closes while the client keeps its sockets: CLOSE_WAIT, flagged, and
/// exactly the sockets `ss` shows in CLOSE-WAIT for that process.
pub fn close_wait_is_flagged_and_matches_ss() -> TestResult {
    let (client, mut probe, addr) = traced_client(
        "127.0.0.1:0",
        ServerMode::CloseAtOnce,
        |server| Role::HoldClients { server, count: 5 },
        &["--close-wait-after", "1s"],
        "ready",
    )?;
    let pid = client.pid();

    let records = probe.wait_until("5 CLOSE_WAIT alerts", WAIT, |r| {
        stuck(r, pid, "CLOSE_WAIT").len() >= 5
    })?;
    let alerts = stuck(records, pid, "CLOSE_WAIT");
    for alert in &alerts {
        ensure(alert["age_ms"].as_u64() >= Some(1000), || {
            format!("flagged before the threshold: {alert}")
        })?;
        ensure(alert["dport"] == addr.port(), || {
            format!("wrong peer: {alert}")
        })?;
    }
    let ss = ss_sockets_of(pid, "close-wait")?;
    ensure(ss.len() == 5, || {
        format!(
            "ss shows {} CLOSE-WAIT sockets for {pid}:\n{}",
            ss.len(),
            ss.join("\n")
        )
    })?;
    for alert in &alerts {
        let local = format!("127.0.0.1:{} ", alert["sport"]);
        ensure(ss.iter().any(|line| line.contains(&local)), || {
            format!("ss does not show {local}in CLOSE-WAIT:\n{}", ss.join("\n"))
        })?;
    }

    let records = probe.stop()?;
    let summary = records.last().unwrap();
    ensure(
        summary["stuck"]["CLOSE_WAIT"] == 5 && summary["counts"]["CLOSE_WAIT"] == 5,
        || format!("summary: {summary}"),
    )?;
    let open = summary["open"].as_array().unwrap();
    ensure(
        open.iter().all(|c| {
            c["stuck"] == true
                && c["opened_by"] == "local"
                && c["pid"] == pid
                && c["state"] == "CLOSE_WAIT"
        }),
        || format!("open connections: {}", render(open)),
    )?;
    client.finish()
}

/// Idle connections held open: flagged ESTABLISHED after the threshold, as many as `ss` shows.
pub fn idle_established_is_flagged() -> TestResult {
    let (client, mut probe, _) = traced_client(
        "127.0.0.1:0",
        ServerMode::Hold,
        |server| Role::HoldClients { server, count: 3 },
        &["--established-after", "1500ms"],
        "ready",
    )?;
    let pid = client.pid();
    // Not yet: the threshold has not passed.
    thread::sleep(Duration::from_millis(500));
    let early = probe.wait_until("the connects", WAIT, |r| {
        transitions(r, pid, "SYN_SENT", "ESTABLISHED").len() >= 3
    })?;
    ensure(stuck(early, pid, "ESTABLISHED").is_empty(), || {
        format!("flagged too early:\n{}", render(early))
    })?;

    let records = probe.wait_until("3 ESTABLISHED alerts", WAIT, |r| {
        stuck(r, pid, "ESTABLISHED").len() >= 3
    })?;
    for alert in stuck(records, pid, "ESTABLISHED") {
        ensure(alert["age_ms"].as_u64() >= Some(1500), || {
            format!("early: {alert}")
        })?;
    }
    let ss = ss_sockets_of(pid, "established")?;
    ensure(ss.len() == 3, || {
        format!("ss shows {}:\n{}", ss.len(), ss.join("\n"))
    })?;
    let records = probe.stop()?;
    let summary = records.last().unwrap();
    ensure(summary["stuck"]["ESTABLISHED"] == 3, || {
        format!("summary: {summary}")
    })?;
    client.finish()
}

/// A clean active close: FIN_WAIT1 -> FIN_WAIT2 -> CLOSE with TIME_WAIT inferred (and `ss` shows
/// the TIME-WAIT sockets), nothing flagged, counted as closed by this side first.
pub fn clean_active_close_goes_to_time_wait() -> TestResult {
    let (client, mut probe, _) = traced_client(
        "127.0.0.1:0",
        ServerMode::CloseAfterPeer,
        |server| Role::CloseClients { server, count: 3 },
        &["--close-wait-after", "1s"],
        "done",
    )?;
    let pid = client.pid();
    let records = probe.wait_until("3 closes into TIME_WAIT", WAIT, |r| {
        transitions(r, pid, "FIN_WAIT2", "CLOSE").len() >= 3
    })?;
    for (old, new) in [
        ("CLOSE", "SYN_SENT"),
        ("SYN_SENT", "ESTABLISHED"),
        ("ESTABLISHED", "FIN_WAIT1"),
        ("FIN_WAIT1", "FIN_WAIT2"),
    ] {
        let found = transitions(records, pid, old, new).len();
        ensure(found == 3, || {
            format!("{found} {old} -> {new} transitions:\n{}", render(records))
        })?;
    }
    let closes = transitions(records, pid, "FIN_WAIT2", "CLOSE");
    // When the kernel's TIME_WAIT table is full it makes no TIME_WAIT socket: then `ss` cannot
    // serve as the oracle for them.
    let table_has_room = time_wait_table_has_room()?;
    let locals: Vec<String> = closes
        .iter()
        .map(|close| format!("127.0.0.1:{} ", close["sport"]))
        .collect();
    let seen = seen_in_time_wait(&locals)?;
    for (close, local) in closes.iter().zip(&locals) {
        ensure(close["time_wait"] == true, || {
            format!("no TIME_WAIT: {close}")
        })?;
        ensure(!table_has_room || seen.contains(local), || {
            format!("ss shows no TIME-WAIT socket at {local}(saw {seen:?})")
        })?;
    }
    client.finish()?;
    let records = probe.stop()?;
    ensure(of_type(&records, "stuck").is_empty(), || {
        format!("something was flagged:\n{}", render(&records))
    })?;
    let summary = records.last().unwrap();
    ensure(
        summary["closed"]["local_first"] == 3
            && summary["closed"]["total"] == 3
            && summary["closed"]["reset"] == 0
            && summary["open"].as_array().is_some_and(Vec::is_empty),
        || format!("summary: {summary}"),
    )
}

/// A traced server: connections it accepts are attributed to it (not to the clients, which are
/// this untraced test process), opened by the remote side.
pub fn accepted_connections_belong_to_the_server() -> TestResult {
    let mut server = Helper::start(&Role::Server)?;
    let pid = server.pid();
    let mut probe = Probe::start(&["--pid", &pid.to_string(), "--established-after", "1h"])?;
    server.say("go")?;
    let port = server.hear_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let clients = connect_many(addr, 3)?;
    let client_ports: HashSet<u16> = clients
        .iter()
        .map(|c| c.local_addr().unwrap().port())
        .collect();

    let records = probe.wait_until("3 accepted connections", WAIT, |r| {
        transitions(r, pid, "SYN_RECV", "ESTABLISHED").len() >= 3
    })?;
    ensure(
        transitions(records, pid, "CLOSE", "LISTEN").len() == 1,
        || format!("no listen:\n{}", render(records)),
    )?;
    let accepted = transitions(records, pid, "LISTEN", "SYN_RECV");
    let remote_ports: HashSet<u16> = accepted
        .iter()
        .filter_map(|r| r["dport"].as_u64().map(|p| p as u16))
        .collect();
    ensure(remote_ports == client_ports, || {
        format!("accepted from {remote_ports:?}, clients at {client_ports:?}")
    })?;
    ensure(
        of_type(records, "transition")
            .iter()
            .all(|r| r["pid"] == pid),
        || format!("a transition not of the server:\n{}", render(records)),
    )?;
    let ss = ss_sockets_of(pid, "established")?;
    ensure(ss.len() == 3, || {
        format!("ss shows {}:\n{}", ss.len(), ss.join("\n"))
    })?;

    let records = probe.stop()?;
    let summary = records.last().unwrap();
    let open = summary["open"].as_array().unwrap();
    let remote_opened = open.iter().filter(|c| c["opened_by"] == "remote").count();
    let listening = open
        .iter()
        .filter(|c| c["state"] == "LISTEN" && c["opened_by"] == "local")
        .count();
    ensure(remote_opened == 3 && listening == 1, || {
        format!("open: {}", render(open))
    })?;
    drop(clients);
    server.finish()
}

/// IPv6 on ::1: the same CLOSE_WAIT story, with IPv6 endpoints.
pub fn ipv6_on_loopback() -> TestResult {
    let (client, mut probe, _) = traced_client(
        "[::1]:0",
        ServerMode::CloseAtOnce,
        |server| Role::HoldClients { server, count: 2 },
        &["--close-wait-after", "1s"],
        "ready",
    )?;
    let pid = client.pid();
    let records = probe.wait_until("2 CLOSE_WAIT alerts", WAIT, |r| {
        stuck(r, pid, "CLOSE_WAIT").len() >= 2
    })?;
    for record in of_type(records, "transition") {
        ensure(
            record["family"] == "ipv6" && record["daddr"] == "::1" && record["saddr"] == "::1",
            || format!("not IPv6 loopback: {record}"),
        )?;
    }
    let ss = ss_sockets_of(pid, "close-wait")?;
    ensure(ss.len() == 2, || {
        format!("ss shows {}:\n{}", ss.len(), ss.join("\n"))
    })?;
    probe.stop()?;
    client.finish()
}

/// Which of `locals` (`addr:port `) `ss` shows in TIME-WAIT. A netlink dump is no atomic
/// snapshot: while other sockets come and go it can skip entries, so several dumps are read.
fn seen_in_time_wait(locals: &[String]) -> Result<HashSet<String>, String> {
    let mut seen = HashSet::new();
    for _ in 0..10 {
        let dump = ss_state("time-wait")?;
        seen.extend(locals.iter().filter(|l| dump.contains(l.as_str())).cloned());
        if seen.len() == locals.len() {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(seen)
}

/// Whether the kernel's TIME_WAIT table (`tcp_max_tw_buckets`) has room for more.
fn time_wait_table_has_room() -> Result<bool, String> {
    let read = |path: &str| std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"));
    let max: u64 = read("/proc/sys/net/ipv4/tcp_max_tw_buckets")?
        .trim()
        .parse()
        .map_err(|_| "bad tcp_max_tw_buckets")?;
    // /proc/net/sockstat: `TCP: inuse 5 orphan 0 tw 123 alloc 9 mem 1`.
    let sockstat = read("/proc/net/sockstat")?;
    let in_use: u64 = sockstat
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "tw").nth(1))
        .and_then(|n| n.parse().ok())
        .ok_or("no tw count in /proc/net/sockstat")?;
    Ok(in_use + 1000 < max)
}
