//! Attaching in the middle of an incident: sockets that predate probe.

use std::{net::SocketAddr, thread, time::Duration};

use serde_json::Value;

use crate::harness::{
    Helper, Probe, Role, ServerMode, TestResult, WAIT, connect_many, ensure, of_type, render,
    server, stuck, transitions, wait_for_ss,
};

/// A client already piling up CLOSE_WAIT when probe attaches: all of them reported (as `ss`
/// counts them) once they have been in CLOSE_WAIT for the threshold, and their close seen when
/// the client exits.
pub fn attach_to_an_existing_close_wait_pile_up() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let mut client = Helper::start(&Role::HoldClients {
        server: addr,
        count: 6,
    })?;
    let pid = client.pid();
    client.say("go")?;
    ensure(client.hear()? == "ready", || "client not ready".into())?;
    let ss = wait_for_ss(pid, "close-wait", 6)?;

    let mut probe = Probe::start(&["--pid", &pid.to_string(), "--close-wait-after", "1s"])?;
    ensure(
        probe.stderr().contains("6 TCP socket(s) already open"),
        || probe.stderr(),
    )?;
    let records = probe.wait_until("6 CLOSE_WAIT alerts", WAIT, |r| {
        stuck(r, pid, "CLOSE_WAIT").len() >= 6
    })?;
    for alert in stuck(records, pid, "CLOSE_WAIT") {
        ensure(
            alert["since_attach"] == true && alert["inode"].is_u64() && alert["idle_ms"].is_u64(),
            || format!("not flagged as found at attach: {alert}"),
        )?;
        ensure(alert["age_ms"].as_u64() >= Some(1000), || {
            format!("flagged before it was proven 1 s old: {alert}")
        })?;
        let local = format!("127.0.0.1:{} ", alert["sport"]);
        ensure(ss.iter().any(|line| line.contains(&local)), || {
            format!("{local}is not one of ss's sockets:\n{}", ss.join("\n"))
        })?;
    }
    // The client exits: its close of each socket is seen and attributed to it.
    client.finish()?;
    let records = probe.finish()?;
    let closes = transitions(&records, pid, "CLOSE_WAIT", "LAST_ACK").len();
    ensure(closes == 6, || {
        format!("{closes} closes seen:\n{}", render(&records))
    })?;
    let summary = records.last().unwrap();
    ensure(summary["closed"]["remote_first"] == 6, || {
        format!("summary: {summary}")
    })
}

/// Idle and busy ESTABLISHED connections, open before probe attaches: only the idle ones are
/// flagged, by tcp_info's idle time.
pub fn only_idle_established_connections_are_flagged() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::Hold)?;
    let mut client = Helper::start(&Role::IdleAndBusy {
        server: addr,
        idle: 2,
        busy: 2,
    })?;
    let pid = client.pid();
    client.say("go")?;
    let busy_ports = client.hear()?;
    let mut probe = Probe::start(&["--pid", &pid.to_string(), "--established-after", "2s"])?;
    let records = probe.wait_until("2 ESTABLISHED alerts", WAIT, |r| {
        stuck(r, pid, "ESTABLISHED").len() >= 2
    })?;
    for alert in stuck(records, pid, "ESTABLISHED") {
        ensure(!busy_ports.contains(&alert["sport"].to_string()), || {
            format!("a busy connection was flagged: {alert} (busy: {busy_ports})")
        })?;
        ensure(alert["idle_ms"].as_u64() >= Some(2000), || {
            format!("not idle: {alert}")
        })?;
    }
    // Busy ones stay unflagged for a while longer.
    thread::sleep(Duration::from_secs(3));
    let records = probe.stop()?;
    let flagged = stuck(&records, pid, "ESTABLISHED").len();
    ensure(flagged == 2, || {
        format!("{flagged} flagged:\n{}", render(&records))
    })?;
    let summary = records.last().unwrap();
    let open = summary["open"].as_array().unwrap();
    let busy: Vec<&Value> = open
        .iter()
        .filter(|c| busy_ports.contains(&c["sport"].to_string()))
        .collect();
    ensure(
        busy.len() == 2
            && busy.iter().all(|c| {
                c["stuck"] == false
                    && c["bytes_acked"].as_u64() > Some(0)
                    && c["idle_ms"].as_u64() < Some(2000)
            }),
        || format!("busy connections: {}", render(open)),
    )?;
    client.finish()
}

/// A server listening before probe attaches: what it accepts afterwards is attributed to it.
pub fn a_server_started_before_probe_owns_what_it_accepts() -> TestResult {
    let mut server = Helper::start(&Role::Server)?;
    let pid = server.pid();
    server.say("go")?;
    let port = server.hear_port()?;
    let mut probe = Probe::start(&["--pid", &pid.to_string()])?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let clients = connect_many(addr, 2)?;
    let records = probe.wait_until("2 accepted connections", WAIT, |r| {
        transitions(r, pid, "SYN_RECV", "ESTABLISHED").len() >= 2
    })?;
    ensure(
        of_type(records, "transition")
            .iter()
            .all(|r| r["pid"] == pid),
        || render(records),
    )?;
    let records = probe.stop()?;
    let summary = records.last().unwrap();
    let open = summary["open"].as_array().unwrap();
    ensure(
        open.iter().filter(|c| c["opened_by"] == "remote").count() == 2
            && open
                .iter()
                .any(|c| c["state"] == "LISTEN" && c["since_attach"] == true),
        || format!("open: {}", render(open)),
    )?;
    drop(clients);
    server.finish()
}

/// A server with idle clients, some connected before probe attaches and some after: their
/// connections are one group, known by the server's own endpoint (each client connects from a
/// port of its own), as many as `ss` counts on the server's port.
pub fn a_servers_idle_clients_are_one_group_known_by_its_endpoint() -> TestResult {
    let mut server = Helper::start(&Role::Server)?;
    let pid = server.pid();
    server.say("go")?;
    let port = server.hear_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let before = connect_many(addr, 6)?;
    wait_for_ss(pid, "established", 6)?;
    let mut probe = Probe::start(&["--pid", &pid.to_string(), "--established-after", "1s"])?;
    let after = connect_many(addr, 4)?;
    probe.wait_until("10 idle connections flagged", WAIT, |r| {
        stuck(r, pid, "ESTABLISHED").len() >= 10
    })?;
    let in_ss = wait_for_ss(pid, "established", 10)?;
    let records = probe.stop()?;
    let summary = records.last().ok_or("no summary")?;
    let process = summary["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["pid"] == pid)
        .ok_or_else(|| format!("no triage of the server: {summary}"))?;
    let worst = &process["worst"];
    ensure(
        worst["state"] == "ESTABLISHED"
            && worst["daddr"] == "127.0.0.1"
            && worst["dport"] == port
            && worst["count"] == in_ss.len(),
        || format!("ss: {} sockets; triage: {process}", in_ss.len()),
    )?;
    drop((before, after));
    server.finish()
}
