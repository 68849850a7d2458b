//! One identity for a socket: the cookie joins what the kernel program reports with what
//! sock_diag and the fd tables show, where 4-tuples cannot (a port not chosen yet, the same
//! tuple in two network namespaces).

use std::{net::SocketAddr, process::Command, thread, time::Duration};

use serde_json::Value;

use crate::harness::{
    Helper, NetworkNamespace, Probe, Role, TestResult, WAIT, ensure, render, stuck,
};

/// A connect hanging in SYN_SENT (a SYN into a veth whose far end never answers: a permanent
/// neighbour entry sends it, nothing comes back) makes no transition after CLOSE -> SYN_SENT,
/// whose local port is still 0; within a refresh probe knows its port and inode as `ss -tnie`
/// shows them.
pub fn a_hanging_connect_gets_its_port_and_inode_from_the_next_refresh() -> TestResult {
    let namespace = NetworkNamespace::linked()?;
    let hole = namespace.black_hole()?.to_string();
    let server: SocketAddr = format!("{hole}:80").parse().map_err(|_| "bad address")?;
    let mut client = Helper::start(&Role::ConnectHanging { server })?;
    let pid = client.pid();
    // --established-after 4s: a refresh every second.
    let probe = Probe::start(&["--pid", &pid.to_string(), "--established-after", "4s"])?;
    // The connect starts only now, traced.
    client.say("go")?;
    ensure(client.hear()? == "connecting", || "no connect".into())?;
    thread::sleep(Duration::from_millis(2500));
    let ss = Command::new("ss")
        .args(["-tnieH", "state", "syn-sent", "dst", &hole])
        .output()
        .map_err(|e| e.to_string())?;
    let ss = String::from_utf8_lossy(&ss.stdout).into_owned();
    let port: u64 = ss
        .split_whitespace()
        .nth(2)
        .and_then(|local| local.rsplit(':').next())
        .and_then(|port| port.parse().ok())
        .ok_or_else(|| format!("ss shows no SYN-SENT socket: {ss:?}"))?;
    let inode: u64 = ss
        .split_whitespace()
        .find_map(|word| word.strip_prefix("ino:"))
        .and_then(|inode| inode.parse().ok())
        .ok_or_else(|| format!("no inode in {ss:?}"))?;
    let records = probe.stop()?;
    client.finish()?;
    let summary = records.last().ok_or("no summary")?;
    let open: Vec<&Value> = summary["open"].as_array().into_iter().flatten().collect();
    ensure(
        open.len() == 1
            && open[0]["state"] == "SYN_SENT"
            && open[0]["sport"] == port
            && open[0]["inode"] == inode
            && open[0]["cookie"].is_u64(),
        || {
            format!(
                "ss: port {port}, inode {inode}; probe:\n{}",
                render(&records)
            )
        },
    )
}

/// Two network namespaces, each with a client and a server on the same loopback 4-tuple, both
/// clients traced: a connection opened before attach (seeded) and one opened after (joined to
/// sock_diag at each refresh) in each. When the servers close, each client's CLOSE_WAIT
/// connections are its own, as `ss -p` inside its namespace shows.
pub fn the_same_tuple_in_two_namespaces_belongs_to_each_own_process() -> TestResult {
    let server_port = 18_080;
    let ports = vec![41_001, 41_002];
    let server = SocketAddr::from(([127, 0, 0, 1], server_port));
    let mut sides = Vec::new();
    for _ in 0..2 {
        let namespace = NetworkNamespace::create()?;
        let mut listener =
            Helper::start_in(&namespace.name, &Role::HoldingServer { bind: server })?;
        listener.hear()?;
        let mut client = Helper::start_in(
            &namespace.name,
            &Role::BoundClients {
                server,
                local_ports: ports.clone(),
            },
        )?;
        client.say("go")?;
        ensure(client.hear()? == "ready", || "no first connection".into())?;
        sides.push((namespace, listener, client));
    }
    let pids: Vec<String> = sides.iter().map(|(_, _, c)| c.pid().to_string()).collect();
    let mut probe = Probe::start(&[
        "--pid",
        &pids[0],
        "--pid",
        &pids[1],
        "--close-wait-after",
        "500ms",
        "--established-after",
        "4s",
    ])?;
    for (_, _, client) in &mut sides {
        client.say("go")?;
        ensure(client.hear()? == "ready", || "no second connection".into())?;
    }
    // A refresh joins the connections made since attach to sock_diag.
    thread::sleep(Duration::from_millis(1500));
    for (_, listener, _) in &mut sides {
        listener.say("close 2")?;
        listener.hear()?;
    }
    let records = probe.wait_until("4 CLOSE_WAIT alerts", WAIT, |r| {
        sides
            .iter()
            .all(|(_, _, c)| stuck(r, c.pid(), "CLOSE_WAIT").len() >= 2)
    })?;
    for (namespace, _, client) in &sides {
        let pid = client.pid();
        let inside = namespace.ss(pid, "close-wait", 2)?;
        let mut shown: Vec<u64> = stuck(records, pid, "CLOSE_WAIT")
            .iter()
            .filter_map(|alert| alert["sport"].as_u64())
            .collect();
        shown.sort_unstable();
        let expected: Vec<u64> = ports.iter().map(|&p| u64::from(p)).collect();
        ensure(shown == expected, || {
            format!(
                "pid {pid}: probe {shown:?}, ss in its namespace:\n{}\n{}",
                inside.join("\n"),
                render(records)
            )
        })?;
    }
    probe.stop()?;
    Ok(())
}
