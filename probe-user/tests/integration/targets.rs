//! Who is traced: pids, threads, commands, forked workers, network namespaces, sudo.

use std::{collections::HashSet, net::SocketAddr, process::Command, thread, time::Duration};

use serde_json::Value;

use crate::harness::{
    Helper, NetworkNamespace, Probe, Role, ServerMode, TestResult, WAIT, ensure, of_type, render,
    server, ss_sockets_of, stuck, this_binary, transitions,
};

/// A second, noisy process connecting at the same time: none of its sockets appear.
pub fn a_noisy_neighbour_is_not_traced() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::CloseAfterPeer)?;
    let mut traced = Helper::start(&Role::CloseClients {
        server: addr,
        count: 2,
    })?;
    let mut noisy = Helper::start(&Role::CloseClients {
        server: addr,
        count: 200,
    })?;
    let pid = traced.pid();
    let probe = Probe::start(&["--pid", &pid.to_string()])?;
    noisy.say("go")?;
    traced.say("go")?;
    ensure(traced.hear()? == "done", || "traced client not done".into())?;
    ensure(noisy.hear()? == "done", || "noisy client not done".into())?;
    thread::sleep(Duration::from_millis(500));
    traced.finish()?;
    noisy.finish()?;
    let records = probe.stop()?;
    ensure(
        records
            .iter()
            .filter(|r| r["type"] != "summary")
            .all(|r| r["pid"] == pid),
        || format!("records of another process:\n{}", render(&records)),
    )?;
    let connects = transitions(&records, pid, "CLOSE", "SYN_SENT").len();
    ensure(connects == 2, || {
        format!(
            "{connects} connects, expected the traced 2:\n{}",
            render(&records)
        )
    })
}

/// `probe -- COMMAND`: the command's very first connection is seen, and probe exits with it.
pub fn a_command_is_traced_from_its_first_connection() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::CloseAfterPeer)?;
    let exe = this_binary()?.to_string_lossy().into_owned();
    let [helper, role] = Role::ConnectOnce { server: addr }.args();
    let probe = Probe::start(&["--", &exe, &helper, &role])?;
    let stderr = probe.stderr();
    let records = probe.finish()?;
    let all = of_type(&records, "transition");
    let first = all
        .first()
        .ok_or_else(|| format!("no transition; stderr: {stderr}"))?;
    ensure(
        first["old"] == "CLOSE" && first["new"] == "SYN_SENT" && first["dport"] == addr.port(),
        || format!("the first connection is missing:\n{}", render(&records)),
    )?;
    let pid = first["pid"].as_u64().unwrap_or(0);
    ensure(stderr.contains(&format!("of {pid} (")), || {
        format!("pid {pid} is not the command's: {stderr}")
    })?;
    ensure(all.iter().all(|r| r["pid"] == pid), || render(&records))?;
    ensure(
        transitions(&records, pid as u32, "SYN_SENT", "ESTABLISHED").len() == 1,
        || render(&records),
    )
}

/// A pid that does not exist: a clear error and a non-zero exit, not a panic.
pub fn a_missing_pid_is_a_clear_error() -> TestResult {
    // pid_max is at most 2^22: this pid cannot exist.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(["--pid", "4194305"])
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure(output.status.code() == Some(1), || {
        format!("exit {:?}: {stderr}", output.status)
    })?;
    ensure(
        stderr.contains("no process with pid 4194305") && !stderr.contains("panicked"),
        || stderr.to_string(),
    )
}

/// `probe -- sh -c '...'`: the shell forks workers that connect; they are traced as themselves.
pub fn forked_workers_are_traced() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::CloseAfterPeer)?;
    let [helper, role] = Role::ConnectOnce { server: addr }.args();
    let worker = format!("'{}' {helper} '{role}'", this_binary()?.display());
    let script = format!("{worker}; {worker}; exit 0");
    let probe = Probe::start(&["--", "sh", "-c", &script])?;
    let stderr = probe.stderr();
    let records = probe.finish()?;
    let connects: Vec<&Value> = of_type(&records, "transition")
        .into_iter()
        .filter(|r| r["old"] == "CLOSE" && r["new"] == "SYN_SENT")
        .collect();
    let pids: HashSet<u64> = connects.iter().filter_map(|r| r["pid"].as_u64()).collect();
    let shell = stderr
        .split("changes of ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|pid| pid.parse::<u64>().ok())
        .ok_or_else(|| format!("no shell pid in: {stderr}"))?;
    ensure(
        connects.len() == 2 && pids.len() == 2 && !pids.contains(&shell),
        || format!("shell {shell}, connects:\n{}", render(&records)),
    )?;
    ensure(
        // The test binary is `integration-<hash>`, cut to 15 bytes by the kernel.
        connects.iter().all(|r| {
            r["comm"]
                .as_str()
                .is_some_and(|c| c.starts_with("integration"))
        }),
        || {
            format!(
                "workers are not named after their program:\n{}",
                render(&records)
            )
        },
    )
}

/// A leaking client in its own network namespace (as in a container), attached by pid from
/// the host: every stuck socket reported, with the endpoints it sees.
pub fn a_client_in_its_own_network_namespace() -> TestResult {
    let namespace = NetworkNamespace::create()?;
    let mut server = Helper::start_in(&namespace.name, &Role::ClosingServer)?;
    let port = server.hear_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut client = Helper::start_in(
        &namespace.name,
        &Role::HoldClients {
            server: addr,
            count: 3,
        },
    )?;
    let pid = client.pid();
    client.say("go")?;
    ensure(client.hear()? == "ready", || "client not ready".into())?;
    // The host's ss does not see them; ss inside the namespace does.
    ensure(ss_sockets_of(pid, "close-wait")?.is_empty(), || {
        "the host sees the namespace's sockets".into()
    })?;
    let inside = namespace.ss(pid, "close-wait", 3)?;

    let mut probe = Probe::start(&["--pid", &pid.to_string(), "--close-wait-after", "1s"])?;
    let records = probe.wait_until("3 CLOSE_WAIT alerts", WAIT, |r| {
        stuck(r, pid, "CLOSE_WAIT").len() >= 3
    })?;
    for alert in stuck(records, pid, "CLOSE_WAIT") {
        ensure(
            alert["dport"] == port && alert["daddr"] == "127.0.0.1",
            || format!("not the namespace's view: {alert}"),
        )?;
        let local = format!("127.0.0.1:{} ", alert["sport"]);
        ensure(inside.iter().any(|l| l.contains(&local)), || {
            inside.join("\n")
        })?;
    }
    probe.stop()?;
    client.finish()?;
    server.finish()
}

/// `--pid TID` of a thread: probe says so and traces the whole process.
pub fn a_thread_id_means_its_process() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::Hold)?;
    let mut helper = Helper::start(&Role::ConnectFromAThread { server: addr })?;
    let tid = helper.hear()?;
    let mut probe = Probe::start(&["--pid", &tid])?;
    ensure(
        probe
            .stderr()
            .contains(&format!("{tid} is a thread of process {}", helper.pid())),
        || probe.stderr(),
    )?;
    helper.say("go")?;
    let pid = helper.pid();
    probe.wait_until("the thread's connect", WAIT, |r| {
        transitions(r, pid, "CLOSE", "SYN_SENT").len() == 1
    })?;
    probe.stop()?;
    helper.finish()
}

/// Under sudo, `-- COMMAND` runs as the user who ran sudo; with `--as-root`, as root.
pub fn a_command_under_sudo_runs_as_the_user_who_asked() -> TestResult {
    // The user 65534 is `nobody`, whose home is /nonexistent: the command sees the
    // environment `sudo -u nobody` would give it.
    let cases = [
        (&[][..], "65534 /nonexistent nobody nobody"),
        (&["--as-root"][..], "0 /root root root"),
    ];
    for (flags, expected) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_probe"))
            .arg("--json")
            .args(flags)
            .args(["--", "sh", "-c", "echo $(id -u) $HOME $USER $LOGNAME"])
            .env("SUDO_UID", "65534")
            .env("SUDO_GID", "65534")
            .env("HOME", "/root")
            .env("USER", "root")
            .env("LOGNAME", "root")
            .output()
            .map_err(|e| e.to_string())?;
        // With --json, the command's stdout goes to probe's stderr.
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure(
            output.status.success() && stderr.lines().any(|line| line.trim() == expected),
            || format!("probe {flags:?} -- sh -c 'echo ...' (wanted {expected}): {stderr}"),
        )?;
    }
    Ok(())
}

/// A process that renames itself after probe met it (prctl, as worker pools and the tests'
/// helpers do) is shown by its new name: in the summary's connections and process table,
/// within a refresh.
pub fn a_process_that_renames_itself_is_shown_by_its_new_name() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let name = format!("renamed{}", std::process::id() % 100_000);
    let mut client = Helper::start(&Role::RenamedLater {
        name: name.clone(),
        plays: Box::new(Role::HoldClients {
            server: addr,
            count: 3,
        }),
    })?;
    let pid = client.pid();
    let mut probe = Probe::start(&["--pid", &pid.to_string(), "--close-wait-after", "1s"])?;
    client.say("rename")?;
    ensure(client.hear()? == "renamed", || "not renamed".into())?;
    client.say("go")?;
    ensure(client.hear()? == "ready", || "client not ready".into())?;
    probe.wait_until("3 CLOSE_WAIT alerts", WAIT, |r| {
        stuck(r, pid, "CLOSE_WAIT").len() >= 3
    })?;
    let records = probe.stop()?;
    let summary = records.last().ok_or("no summary")?;
    let names = |list: &Value| -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["pid"] == pid)
            .map(|entry| entry["comm"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let (open, processes) = (names(&summary["open"]), names(&summary["processes"]));
    ensure(
        open.len() == 3
            && open.iter().chain(&processes).all(|comm| *comm == name)
            && !processes.is_empty(),
        || format!("expected {name}: open {open:?}, processes {processes:?}"),
    )?;
    client.finish()
}
