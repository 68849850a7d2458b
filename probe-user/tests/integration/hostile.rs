//! Hard to break, round two: what a hostile user (or an unlucky one) does to probe, each case
//! reproduced as it was found.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::fs::{PermissionsExt, symlink},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::{
    Helper, Probe, Role, ServerMode, TempPath, TestResult, WAIT, ensure, of_type, render, scrape,
    server, ss_sockets_of, stuck, wait_for_ss,
};

/// `--follow-forks` on a shell that forks a storm of short-lived children (most exit before
/// probe hears of them): probe keeps going and ends with its summary.
pub fn follow_forks_survives_a_storm_of_short_lived_children() -> TestResult {
    let mut storm = Command::new("sh")
        .args([
            "-c",
            "i=0; while [ $i -lt 400 ]; do /bin/true & sleep 0.005; i=$((i+1)); done; wait",
        ])
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = storm.id().to_string();
    let probe = Probe::start(&["--pid", &pid, "--follow-forks", "--duration", "3s"]);
    let result = probe.and_then(Probe::finish);
    let _ = storm.kill();
    let _ = storm.wait();
    let records = result?;
    let summary = records.last().ok_or("no summary")?;
    ensure(summary["type"] == "summary", || render(&records))
}

/// A healthy client that closes each connection 300 ms after its server did, under load:
/// attached with `--close-wait-after 2s`, nothing is flagged, although CLOSE_WAIT sockets exist
/// at attach (`ss` shows them).
pub fn close_wait_found_at_attach_is_flagged_only_once_old_enough() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let mut client = Helper::start(&Role::CloseLater {
        server: addr,
        per_second: 40,
        linger_ms: 300,
    })?;
    client.say("go")?;
    ensure(client.hear()? == "running", || "client not running".into())?;
    let pid = client.pid();
    thread::sleep(Duration::from_millis(500));
    let probe = Probe::start(&["--pid", &pid.to_string(), "--close-wait-after", "2s"])?;
    let found = probe.stderr();
    thread::sleep(Duration::from_secs(3));
    let records = probe.stop()?;
    drop(client);
    ensure(found.contains("already open"), || {
        format!("no socket at attach: {found}")
    })?;
    let flagged = stuck(&records, pid, "CLOSE_WAIT");
    ensure(flagged.is_empty(), || {
        format!(
            "a healthy closer was flagged ({}):\n{}",
            flagged.len(),
            render(&records)
        )
    })
}

/// More sockets at attach than `--max-sockets` holds: probe follows what fits, counts the rest
/// as untracked (never more than there were) and says which flag to raise.
pub fn more_existing_sockets_than_max_sockets_degrade_instead_of_failing() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let mut client = Helper::start(&Role::HoldClients {
        server: addr,
        count: 100,
    })?;
    let pid = client.pid();
    client.say("go")?;
    ensure(client.hear()? == "ready", || "client not ready".into())?;
    wait_for_ss(pid, "close-wait", 100)?;
    let probe = Probe::start(&["--pid", &pid.to_string(), "--max-sockets", "64"])?;
    let stderr = probe.stderr();
    let records = probe.stop()?;
    client.finish()?;
    let summary = records.last().ok_or("no summary")?;
    let untracked = summary["untracked_sockets"].as_u64().unwrap_or(0);
    ensure(untracked == 36, || {
        format!("untracked {untracked}: {summary}")
    })?;
    ensure(stderr.contains("--max-sockets"), || stderr.clone())
}

/// Stuck connections reported for `pid`, by local port.
pub fn stuck_ports(records: &[Value], pid: u32) -> Vec<u64> {
    let mut ports: Vec<u64> = stuck(records, pid, "CLOSE_WAIT")
        .iter()
        .filter_map(|alert| alert["sport"].as_u64())
        .collect();
    ports.sort_unstable();
    ports
}

/// The local ports `ss -p` shows in CLOSE-WAIT for `pid`.
pub fn ss_ports(pid: u32) -> Result<Vec<u64>, String> {
    let mut ports: Vec<u64> = ss_sockets_of(pid, "close-wait")?
        .iter()
        .filter_map(|line| {
            let local = line.split_whitespace().nth(2)?;
            local.rsplit(':').next()?.parse().ok()
        })
        .collect();
    ports.sort_unstable();
    Ok(ports)
}

/// A parent connects, forks, closes its copies and exits: the connections belong to the child
/// that holds them, as `ss -p` says, not to the dead parent.
pub fn the_owner_is_the_process_that_holds_the_socket_after_a_fork() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let mut parent = Helper::start(&Role::HandOver {
        server: addr,
        count: 3,
    })?;
    let mut probe = Probe::start(&[
        "--pid",
        &parent.pid().to_string(),
        "--follow-forks",
        "--close-wait-after",
        "1s",
    ])?;
    parent.say("go")?;
    let child: u32 = parent.hear()?.parse().map_err(|_| "no child pid")?;
    let ss = wait_for_ss(child, "close-wait", 3)?;
    let records = probe.wait_until("3 CLOSE_WAIT alerts for the child", WAIT, |r| {
        stuck(r, child, "CLOSE_WAIT").len() >= 3
    })?;
    let shown = stuck_ports(records, child);
    let expected = ss_ports(child)?;
    ensure(shown == expected, || {
        format!(
            "probe {shown:?}, ss {expected:?}:\n{}\n{}",
            ss.join("\n"),
            render(records)
        )
    })?;
    let records = probe.stop()?;
    let summary = records.last().ok_or("no summary")?;
    let owners: Vec<&Value> = summary["open"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| &c["pid"])
        .collect();
    ensure(owners.iter().all(|pid| **pid == child), || {
        format!("summary owners {owners:?}, child {child}")
    })?;
    parent.finish()
}

/// A process passes its connections over SCM_RIGHTS and closes its copies: they belong to the
/// receiver, as `ss -p` says.
pub fn a_socket_passed_over_scm_rights_belongs_to_its_receiver() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let mut sender = Helper::start(&Role::PassOver {
        server: addr,
        count: 2,
    })?;
    let mut probe = Probe::start(&[
        "--pid",
        &sender.pid().to_string(),
        "--close-wait-after",
        "1s",
    ])?;
    sender.say("go")?;
    let receiver: u32 = sender.hear()?.parse().map_err(|_| "no receiver pid")?;
    wait_for_ss(receiver, "close-wait", 2)?;
    let records = probe.wait_until("2 CLOSE_WAIT alerts for the receiver", WAIT, |r| {
        stuck(r, receiver, "CLOSE_WAIT").len() >= 2
    })?;
    let shown = stuck_ports(records, receiver);
    let expected = ss_ports(receiver)?;
    ensure(shown == expected, || {
        format!("probe {shown:?}, ss {expected:?}:\n{}", render(records))
    })?;
    probe.stop()?;
    sender.finish()
}

/// `--report` through a symlink another user planted: refused, the target untouched; an
/// abnormal end leaves no empty report; the report is 0644 whatever the umask; `/dev/null`
/// works.
pub fn the_report_never_follows_a_planted_symlink() -> TestResult {
    let dir = TempPath::new("report-dir");
    fs::create_dir_all(&dir.0).map_err(|e| e.to_string())?;
    let target = dir.0.join("passwd-copy");
    fs::write(&target, "root:x:0:0\n").map_err(|e| e.to_string())?;
    let planted = dir.0.join("r.html");
    symlink(&target, &planted).map_err(|e| e.to_string())?;
    let idle = crate::harness::Idle::start()?;
    let output = Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(["--pid", &idle.pid(), "--duration", "1s", "--report"])
        .arg(&planted)
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure(
        !output.status.success() && stderr.contains("symlink"),
        || format!("a symlinked report was accepted: {stderr}"),
    )?;
    let content = fs::read_to_string(&target).map_err(|e| e.to_string())?;
    ensure(content == "root:x:0:0\n", || {
        format!("the target changed: {content:?}")
    })?;

    // SIGKILL mid-run: no report, and no empty file where it would have been.
    let report = dir.0.join("killed.html");
    let mut child = Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(["--pid", &idle.pid(), "--report"])
        .arg(&report)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    thread::sleep(Duration::from_secs(2));
    let _ = child.kill();
    let _ = child.wait();
    ensure(!report.exists(), || {
        "a killed probe left a report file".into()
    })?;

    // A restrictive umask: the report is still readable by the service owner (0644).
    let report = dir.0.join("umask.html");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 077 && exec '{}' --pid {} --duration 1s --report '{}'",
            env!("CARGO_BIN_EXE_probe"),
            idle.pid(),
            report.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    let mode = fs::metadata(&report)
        .map_err(|e| format!("no report ({status}): {e}"))?
        .permissions()
        .mode()
        & 0o777;
    ensure(mode == 0o644, || format!("report mode {mode:o}"))?;
    ensure(
        fs::read_dir(&dir.0).map_err(|e| e.to_string())?.count() == 3,
        || "temporary files were left behind".into(),
    )?;

    let status = Command::new(env!("CARGO_BIN_EXE_probe"))
        .args([
            "--pid",
            &idle.pid(),
            "--duration",
            "1s",
            "--report",
            "/dev/null",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| e.to_string())?;
    ensure(status.status.success(), || {
        format!(
            "--report /dev/null: {}",
            String::from_utf8_lossy(&status.stderr)
        )
    })?;
    ensure(
        fs::metadata("/dev/null")
            .map(|m| !m.file_type().is_file())
            .unwrap_or(false),
        || "/dev/null was replaced".into(),
    )
}

/// A traced process named with terminal escapes: text output and stderr carry them escaped,
/// never raw.
pub fn untrusted_names_never_reach_the_terminal_raw() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let name = "\x1b]0;PWNED\x07\x1b[31m\t\r";
    let mut client = Helper::start(&Role::Named {
        name: name.into(),
        plays: Box::new(Role::HoldClients {
            server: addr,
            count: 2,
        }),
    })?;
    let pid = client.pid();
    let probe = Command::new(env!("CARGO_BIN_EXE_probe"))
        .args([
            "--pid",
            &pid.to_string(),
            "--close-wait-after",
            "500ms",
            "--duration",
            "3s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    thread::sleep(Duration::from_millis(700));
    client.say("go")?;
    ensure(client.hear()? == "ready", || "client not ready".into())?;
    let output = probe.wait_with_output().map_err(|e| e.to_string())?;
    client.finish()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for (which, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        let raw: Vec<char> = text
            .chars()
            .filter(|c| c.is_control() && *c != '\n')
            .collect();
        ensure(raw.is_empty(), || {
            format!("raw control characters {raw:?} on {which}:\n{text}")
        })?;
    }
    ensure(stdout.contains("STUCK") && stdout.contains("PWNED"), || {
        stdout.to_string()
    })
}

/// The metrics endpoint under a descriptor flood with a low fd limit: it keeps serving once the
/// flood's idle connections time out, and probe ends normally.
pub fn the_metrics_endpoint_survives_running_out_of_descriptors() -> TestResult {
    let port = {
        let probe_port = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        probe_port.local_addr().map_err(|e| e.to_string())?.port()
    };
    let idle = crate::harness::Idle::start()?;
    let mut probe = Command::new("prlimit")
        .arg("--nofile=80:80")
        .arg(env!("CARGO_BIN_EXE_probe"))
        .args([
            "--pid",
            &idle.pid(),
            "--json",
            "--metrics-addr",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run prlimit (util-linux): {e}"))?;
    let address = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(&address).is_err() {
        ensure(Instant::now() < deadline, || "metrics never served".into())?;
        thread::sleep(Duration::from_millis(100));
    }
    let target: SocketAddr = address.parse().map_err(|_| "bad address")?;
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect_timeout(&target, Duration::from_millis(200)).ok())
        .collect();
    // More than probe's 80 descriptors can take: its accepts hit EMFILE.
    ensure(flood.len() > 100, || {
        format!("only {} connections", flood.len())
    })?;
    // The flood holds its connections; the endpoint must come back all the same.
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        match scrape(&address) {
            Ok(body) if body.contains("probe_connections_open") => break body,
            _ if Instant::now() > deadline => {
                return Err("the metrics endpoint never came back".into());
            }
            _ => thread::sleep(Duration::from_millis(500)),
        }
    };
    drop(flood);
    ensure(body.ends_with("# EOF\n"), || body.clone())?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(probe.id() as i32, libc::SIGTERM) };
    let status = probe.wait().map_err(|e| e.to_string())?;
    let mut stderr = String::new();
    if let Some(mut pipe) = probe.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    ensure(status.success() && !stderr.contains("stopped"), || {
        format!("probe ended with {status}: {stderr}")
    })
}

/// The terminal goes away (SIGHUP): the summary is still printed, the report still written.
pub fn sighup_ends_probe_like_sigterm() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let mut client = Helper::start(&Role::HoldClients {
        server: addr,
        count: 2,
    })?;
    let report = TempPath::new("hup.html");
    let report_path = report.0.to_string_lossy().into_owned();
    let mut probe = Probe::start(&[
        "--pid",
        &client.pid().to_string(),
        "--close-wait-after",
        "500ms",
        "--report",
        &report_path,
    ])?;
    client.say("go")?;
    ensure(client.hear()? == "ready", || "client not ready".into())?;
    let pid = client.pid();
    probe.wait_until("2 alerts", WAIT, |r| stuck(r, pid, "CLOSE_WAIT").len() >= 2)?;
    let records = probe.stop_with(libc::SIGHUP)?;
    client.finish()?;
    let summary = records.last().ok_or("no summary")?;
    ensure(summary["stuck"]["CLOSE_WAIT"] == 2, || summary.to_string())?;
    let page = fs::read_to_string(&report.0).map_err(|e| format!("no report: {e}"))?;
    ensure(page.contains("</html>"), || {
        "the report is incomplete".into()
    })
}

/// A dual-stack client's connections print as `::ffff:127.0.0.1`: `--remote` with that exact
/// address, with `::/0` and with `127.0.0.0/8` all show them; `--remote ::1` does not.
pub fn filters_match_the_addresses_probe_prints() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", addr.port())
        .parse()
        .map_err(|_| "bad address")?;
    let mut client = Helper::start(&Role::HoldClients {
        server: mapped,
        count: 2,
    })?;
    let pid = client.pid().to_string();
    let probes: Vec<(&str, bool, Probe)> = [
        ("::ffff:127.0.0.1", true),
        ("::/0", true),
        ("127.0.0.0/8", true),
        ("::1", false),
    ]
    .into_iter()
    .map(|(remote, shown)| {
        Probe::start(&[
            "--pid",
            &pid,
            "--close-wait-after",
            "500ms",
            "--remote",
            remote,
        ])
        .map(|probe| (remote, shown, probe))
    })
    .collect::<Result<_, _>>()?;
    client.say("go")?;
    ensure(client.hear()? == "ready", || "client not ready".into())?;
    thread::sleep(Duration::from_secs(2));
    for (remote, shown, probe) in probes {
        let records = probe.stop()?;
        let alerts = of_type(&records, "stuck");
        ensure(alerts.len() == if shown { 2 } else { 0 }, || {
            format!("--remote {remote}:\n{}", render(&records))
        })?;
        for alert in alerts {
            ensure(alert["daddr"] == "::ffff:127.0.0.1", || alert.to_string())?;
        }
    }
    client.finish()
}

/// A filter means the same everywhere it applies: `--state TIME_WAIT` shows the closes into
/// TIME_WAIT and counts only those connections as closed; `--state CLOSE_WAIT` shows no
/// ESTABLISHED alert and no ESTABLISHED group; `--port` counts only its connections as closed.
pub fn a_filter_means_the_same_everywhere() -> TestResult {
    let closing = server("127.0.0.1:0", ServerMode::CloseAfterPeer)?;
    let leaking = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let holding = server("127.0.0.1:0", ServerMode::Hold)?;
    let mut closer = Helper::start(&Role::CloseClients {
        server: closing,
        count: 3,
    })?;
    let mut leaker = Helper::start(&Role::HoldClients {
        server: leaking,
        count: 2,
    })?;
    let mut idler = Helper::start(&Role::HoldClients {
        server: holding,
        count: 2,
    })?;
    let pids: Vec<String> = [&closer, &leaker, &idler]
        .iter()
        .map(|h| h.pid().to_string())
        .collect();
    let start = |extra: &[&str]| {
        let mut args: Vec<&str> = vec![
            "--close-wait-after",
            "500ms",
            "--established-after",
            "500ms",
        ];
        for pid in &pids {
            args.extend(["--pid", pid.as_str()]);
        }
        args.extend_from_slice(extra);
        Probe::start(&args)
    };
    let leaking_port = leaking.port().to_string();
    let time_wait = start(&["--state", "TIME_WAIT"])?;
    let close_wait = start(&["--state", "CLOSE_WAIT"])?;
    let by_port = start(&["--port", &leaking_port])?;
    for helper in [&mut closer, &mut leaker, &mut idler] {
        helper.say("go")?;
        helper.hear()?;
    }
    thread::sleep(Duration::from_secs(2));

    let records = time_wait.stop()?;
    let summary = records.last().ok_or("no summary")?;
    let shown = of_type(&records, "transition");
    ensure(
        shown.len() == 3 && shown.iter().all(|t| t["time_wait"] == true),
        || format!("--state TIME_WAIT:\n{}", render(&records)),
    )?;
    ensure(
        of_type(&records, "stuck").is_empty()
            && summary["closed"]["total"] == 3
            && summary["closed"]["local_first"] == 3
            && summary["open"].as_array().is_some_and(Vec::is_empty),
        || format!("--state TIME_WAIT summary: {summary}"),
    )?;

    let records = close_wait.stop()?;
    let summary = records.last().ok_or("no summary")?;
    let alerts = of_type(&records, "stuck");
    ensure(
        alerts.len() == 2 && alerts.iter().all(|a| a["state"] == "CLOSE_WAIT"),
        || format!("--state CLOSE_WAIT alerts:\n{}", render(&records)),
    )?;
    ensure(
        summary["counts"].as_object().is_some_and(|c| c.len() == 1)
            && summary["counts"]["CLOSE_WAIT"] == 2
            && summary["closed"]["total"] == 0,
        || format!("--state CLOSE_WAIT summary: {summary}"),
    )?;

    let records = by_port.stop()?;
    let summary = records.last().ok_or("no summary")?;
    ensure(summary["closed"]["total"] == 0, || {
        format!("--port {leaking_port} summary: {summary}")
    })?;
    for helper in [closer, leaker, idler] {
        helper.finish()?;
    }
    Ok(())
}

/// A zombie or a kernel thread has no connections of its own: probe says so instead of
/// tracing nothing.
pub fn a_zombie_or_a_kernel_thread_is_refused_with_a_reason() -> TestResult {
    let mut parent = Command::new("sh")
        .args(["-c", "sleep 0 & exec sleep 30"])
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = parent.id();
    let children = format!("/proc/{pid}/task/{pid}/children");
    let deadline = Instant::now() + WAIT;
    let zombie = loop {
        let found = fs::read_to_string(&children)
            .unwrap_or_default()
            .split_whitespace()
            .find_map(|child| {
                let stat = fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
                let state = stat.rsplit_once(") ")?.1.split(' ').next()?.to_string();
                (state == "Z").then(|| child.to_string())
            });
        if let Some(zombie) = found {
            break zombie;
        }
        ensure(Instant::now() < deadline, || "no zombie appeared".into())?;
        thread::sleep(Duration::from_millis(50));
    };
    let run = |pid: &str| {
        Command::new(env!("CARGO_BIN_EXE_probe"))
            .args(["--pid", pid])
            .output()
            .map_err(|e| e.to_string())
    };
    let refused = run(&zombie);
    let _ = parent.kill();
    let _ = parent.wait();
    let refused = refused?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure(
        refused.status.code() == Some(1) && stderr.contains("zombie"),
        || format!("a zombie: {stderr}"),
    )?;
    let kthread = run("2")?;
    let stderr = String::from_utf8_lossy(&kthread.stderr);
    ensure(
        kthread.status.code() == Some(1) && stderr.contains("kernel thread"),
        || format!("kthreadd: {stderr}"),
    )
}

/// A traced client closes a connection its peer can no longer acknowledge, then exits: the
/// socket lingers in FIN_WAIT1 for the kernel to finish, with no process; it is not an open
/// connection of the exited client.
pub fn a_connection_of_an_exited_process_is_not_open() -> TestResult {
    let namespace = crate::harness::NetworkNamespace::linked()?;
    let mut server = Helper::start_in(
        &namespace.name,
        &Role::HoldingServer {
            bind: SocketAddr::new(namespace.address(), 0),
        },
    )?;
    let port: u16 = server.hear()?.parse().map_err(|_| "no port")?;
    let mut client = Helper::start(&Role::HoldClients {
        server: SocketAddr::new(namespace.address(), port),
        count: 1,
    })?;
    let pid = client.pid();
    let probe = Probe::start(&["--pid", &pid.to_string()])?;
    client.say("go")?;
    ensure(client.hear()? == "ready", || "client not ready".into())?;
    namespace.cut()?;
    client.finish()?;
    let records = probe.finish()?;
    drop(server);
    let summary = records.last().ok_or("no summary")?;
    let open = summary["open"].as_array().map_or(0, Vec::len);
    ensure(open == 0, || {
        format!(
            "a connection of exited {pid} is open:\n{}",
            render(&records)
        )
    })?;
    ensure(summary["closed"]["local_first"] == 1, || {
        summary.to_string()
    })
}

/// nginx with two workers accepting from one shared listener, traced from before the clients
/// come: each worker owns the connections it accepted, as `ss -p` counts them (the kernel side
/// can only name the listener's owner; the fd tables name the worker).
pub fn nginx_workers_each_own_what_they_accepted() -> TestResult {
    let dir = TempPath::directory("nginx")?;
    let port = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        free.local_addr().map_err(|e| e.to_string())?.port()
    };
    let config = dir.0.join("nginx.conf");
    fs::write(
        &config,
        format!(
            "daemon off;\nworker_processes 2;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
             events {{ worker_connections 64; accept_mutex off; }}\n\
             http {{ access_log off; keepalive_timeout 120s;\n\
               server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            dir = dir.0.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let nginx = Command::new("nginx")
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(&dir.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run nginx (install nginx): {e}"))?;
    let mut nginx = KillOnDrop(nginx);
    let master = nginx.0.id();
    let address: SocketAddr = format!("127.0.0.1:{port}")
        .parse()
        .map_err(|_| "bad address")?;
    let deadline = Instant::now() + WAIT;
    let workers = loop {
        let children = fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        let workers: Vec<u32> = children
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect();
        if workers.len() == 2 && TcpStream::connect(address).is_ok() {
            break workers;
        }
        if let Ok(Some(status)) = nginx.0.try_wait() {
            return Err(format!("nginx exited: {status}"));
        }
        ensure(Instant::now() < deadline, || {
            "nginx did not start 2 workers".into()
        })?;
        thread::sleep(Duration::from_millis(100));
    };
    let pids: Vec<String> = std::iter::once(master)
        .chain(workers.iter().copied())
        .map(|pid| pid.to_string())
        .collect();
    let mut args = vec!["--established-after", "1h"];
    for pid in &pids {
        args.extend(["--pid", pid.as_str()]);
    }
    let probe = Probe::start(&args)?;
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut client = TcpStream::connect(address).map_err(|e| e.to_string())?;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: probe\r\n\r\n")
            .map_err(|e| e.to_string())?;
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut response = [0u8; 512];
        let n = client.read(&mut response).map_err(|e| e.to_string())?;
        ensure(response[..n].starts_with(b"HTTP/1.1 200"), || {
            String::from_utf8_lossy(&response[..n]).into_owned()
        })?;
        clients.push(client);
    }
    thread::sleep(Duration::from_millis(1500));
    let per_worker_ss: Vec<usize> = workers
        .iter()
        .map(|&worker| {
            ss_sockets_of(worker, "established").map(|lines| {
                lines
                    .iter()
                    .filter(|line| line.contains(&format!("127.0.0.1:{port} ")))
                    .count()
            })
        })
        .collect::<Result<_, _>>()?;
    let records = probe.stop()?;
    drop(clients);
    let summary = records.last().ok_or("no summary")?;
    let open: Vec<&Value> = summary["open"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["state"] == "ESTABLISHED" && c["sport"] == port)
        .collect();
    let per_worker_probe: Vec<usize> = workers
        .iter()
        .map(|&worker| open.iter().filter(|c| c["pid"] == worker).count())
        .collect();
    ensure(
        per_worker_ss.iter().sum::<usize>() == 10 && per_worker_probe == per_worker_ss,
        || {
            format!(
                "per worker {workers:?}: ss {per_worker_ss:?}, probe {per_worker_probe:?}:\n{}",
                render(&records)
            )
        },
    )
}

/// A server's master process, stopped with SIGTERM when dropped (so that it stops its workers
/// too), then reaped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}
