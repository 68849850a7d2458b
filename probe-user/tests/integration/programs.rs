//! The two kernel programs (BTF and classic tracepoint) side by side.

use std::{net::SocketAddr, thread, time::Duration};

use serde_json::Value;

use crate::harness::{
    Helper, Probe, Role, ServerMode, TestResult, WAIT, ensure, of_type, ss_sockets_of, stuck,
    transitions,
};

/// The BTF tracepoint program (the default here) and the classic one, side by side on the same
/// processes: a traced server accepting from a traced client over IPv4, then a client left in
/// CLOSE_WAIT over IPv6. Both see the same transitions, field for field, and the sockets `ss`
/// shows.
pub fn both_kernel_programs_see_the_same_transitions() -> TestResult {
    let mut server = Helper::start(&Role::Server)?;
    server.say("go")?;
    let port = server.hear_port()?;
    let mut client = Helper::start(&Role::HoldClients {
        server: SocketAddr::from(([127, 0, 0, 1], port)),
        count: 3,
    })?;
    let pids = [server.pid(), client.pid()];
    let both = |extra: &[&str]| -> Result<[Probe; 2], String> {
        let traced: Vec<String> = pids.iter().map(u32::to_string).collect();
        let mut args = vec!["--pid", &traced[0], "--pid", &traced[1]];
        args.extend_from_slice(extra);
        Ok([
            Probe::start(&[&args[..], &["--attach", "btf"]].concat())?,
            Probe::start(&[&args[..], &["--attach", "tracepoint"]].concat())?,
        ])
    };
    let [mut btf, mut classic] = both(&[])?;
    client.say("go")?;
    ensure(client.hear()? == "ready", || "client not ready".into())?;
    for probe in [&mut btf, &mut classic] {
        probe.wait_until("3 accepted and 3 connected", WAIT, |r| {
            transitions(r, pids[0], "SYN_RECV", "ESTABLISHED").len() >= 3
                && transitions(r, pids[1], "SYN_SENT", "ESTABLISHED").len() >= 3
        })?;
    }
    thread::sleep(Duration::from_millis(200));
    same_transitions(btf.stop()?, classic.stop()?, 3 * 4)?;
    client.finish()?;
    drop(server);

    let addr = crate::harness::server("[::1]:0", ServerMode::CloseAtOnce)?;
    let mut client = Helper::start(&Role::HoldClients {
        server: addr,
        count: 2,
    })?;
    let pid = client.pid();
    let traced = pid.to_string();
    let start = |program| {
        Probe::start(&[
            "--pid",
            &traced,
            "--attach",
            program,
            "--close-wait-after",
            "1s",
        ])
    };
    let (mut btf, mut classic) = (start("btf")?, start("tracepoint")?);
    client.say("go")?;
    ensure(client.hear()? == "ready", || "client not ready".into())?;
    for probe in [&mut btf, &mut classic] {
        probe.wait_until("2 CLOSE_WAIT alerts", WAIT, |r| {
            stuck(r, pid, "CLOSE_WAIT").len() >= 2
        })?;
    }
    let (btf, classic) = (btf.stop()?, classic.stop()?);
    let ss = ss_sockets_of(pid, "close-wait")?;
    for record in of_type(&btf, "stuck") {
        let local = format!("[::1]:{} ", record["sport"]);
        ensure(ss.iter().any(|line| line.contains(&local)), || {
            format!("ss does not show {local}in CLOSE-WAIT:\n{}", ss.join("\n"))
        })?;
    }
    same_transitions(btf, classic, 2 * 3)?;
    client.finish()
}

/// The transitions of two runs are the same, and at least `expected` of them.
fn same_transitions(btf: Vec<Value>, classic: Vec<Value>, expected: usize) -> TestResult {
    let fields = |records: &[Value]| -> Vec<String> {
        let mut keys: Vec<String> = of_type(records, "transition")
            .iter()
            .map(|r| {
                [
                    "pid", "family", "saddr", "sport", "daddr", "dport", "old", "new",
                ]
                .map(|field| r[field].to_string())
                .join(" ")
            })
            .collect();
        keys.sort();
        keys
    };
    let (btf, classic) = (fields(&btf), fields(&classic));
    ensure(btf == classic && btf.len() >= expected, || {
        format!(
            "btf saw {}, the classic tracepoint {} (at least {expected} expected):\nbtf:\n{}\nclassic:\n{}",
            btf.len(),
            classic.len(),
            btf.join("\n"),
            classic.join("\n")
        )
    })
}
