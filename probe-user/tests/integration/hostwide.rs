//! From symptom to culprit: the whole host, cgroups and containers, and forecasts checked
//! against what really happens.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

use crate::{
    harness::{
        Helper, NetworkNamespace, Probe, Role, ServerMode, TestCgroup, TestResult, WAIT, ensure,
        render, server, ss_sockets_of, stuck, wait_for_ss,
    },
    hostile::{ss_ports, stuck_ports},
};

/// The summary's process records, by pid.
fn processes(summary: &Value) -> HashMap<u64, &Value> {
    summary["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["pid"].as_u64()?, p)))
        .collect()
}

/// Where `pid` ranks in the summary's process table (0 is first).
fn rank(summary: &Value, pid: u32) -> Option<usize> {
    summary["processes"]
        .as_array()?
        .iter()
        .position(|p| p["pid"] == pid)
}

fn leak(server: SocketAddr, per_second: u32, most: usize) -> Role {
    Role::Leak {
        server,
        per_second,
        fd_limit: None,
        most: Some(most),
    }
}

/// `sudo probe` with no target, on a host with a fast leaker, a slow one, a healthy churner
/// and a leaker in a network namespace and cgroup of its own, all of which stop before the
/// summary: the leakers rank by how much they leaked, each one's stuck count is what `ss
/// -tanp` shows for it (inside its namespace for the last), the churner has none, and none is
/// said to grow.
pub fn the_whole_host_ranks_its_leakers_and_agrees_with_ss() -> TestResult {
    let closing = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let mut fast = Helper::start(&leak(closing, 12, 30))?;
    let mut slow = Helper::start(&leak(closing, 4, 10))?;
    let mut churner = Helper::start(&Role::Churn { seconds: 5 })?;
    let namespace = NetworkNamespace::create()?;
    let mut inner_server = Helper::start_in(&namespace.name, &Role::ClosingServer)?;
    let port: u16 = inner_server.hear()?.parse().map_err(|_| "no port")?;
    let mut contained = Helper::start_in(
        &namespace.name,
        &leak(SocketAddr::from(([127, 0, 0, 1], port)), 6, 18),
    )?;
    let cgroup = TestCgroup::create(&format!("probe-test-{}-leaker", std::process::id()))?;
    cgroup.add(contained.pid())?;

    let probe = Probe::start(&["--close-wait-after", "500ms", "--established-after", "4s"])?;
    for helper in [&mut fast, &mut slow, &mut churner, &mut contained] {
        helper.say("go")?;
    }
    thread::sleep(Duration::from_secs(5));
    let expected: Vec<(u32, usize)> = vec![
        (fast.pid(), ss_sockets_of(fast.pid(), "close-wait")?.len()),
        (slow.pid(), ss_sockets_of(slow.pid(), "close-wait")?.len()),
        (
            contained.pid(),
            namespace.ss(contained.pid(), "close-wait", 18)?.len(),
        ),
    ];
    let records = probe.stop()?;
    let summary = records.last().ok_or("no summary")?;
    let table = processes(summary);
    for &(pid, in_ss) in &expected {
        let shown = table.get(&u64::from(pid)).and_then(|p| p["stuck"].as_u64());
        ensure(shown == Some(in_ss as u64), || {
            format!(
                "pid {pid}: probe {shown:?} stuck, ss {in_ss}:\n{}",
                render(&records)
            )
        })?;
    }
    let ranks: Vec<Option<usize>> = expected
        .iter()
        .map(|&(pid, _)| rank(summary, pid))
        .collect();
    ensure(
        matches!(ranks.as_slice(), [Some(a), Some(b), Some(c)] if a < c && c < b),
        || format!("ranks fast, slow, contained: {ranks:?}\n{summary}"),
    )?;
    let churned = table
        .get(&u64::from(churner.pid()))
        .and_then(|p| p["stuck"].as_u64())
        .unwrap_or(0);
    ensure(churned == 0, || format!("the churner has {churned} stuck"))?;
    // Every leak stopped before the summary (each after its `most`): none is told it grows,
    // none gets a forecast, each says so.
    for &(pid, _) in &expected {
        let record = table.get(&u64::from(pid)).copied().unwrap_or(&Value::Null);
        ensure(told_it_stopped(record), || {
            format!("pid {pid}, whose leak stopped: {record}")
        })?;
    }
    let inside = &table[&u64::from(contained.pid())];
    ensure(inside["cgroup"] == cgroup.relative(), || {
        format!("the contained leaker's record: {inside}")
    })?;
    for helper in [fast, slow, churner, contained] {
        helper.finish()?;
    }
    Ok(())
}

const CONTAINER: &str = "7c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5";
const POD: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";

/// `--cgroup` on a pod's cgroup (named as the kubelet's systemd driver names them): only the
/// processes in its container's cgroup below are traced, and they carry the pod and container;
/// `--container` with the first digits of the id traces the same.
pub fn a_cgroup_is_traced_with_its_pod_and_container() -> TestResult {
    let pod_slice = format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        POD.replace('-', "_")
    );
    let cgroup = TestCgroup::create(&format!("{pod_slice}/cri-containerd-{CONTAINER}.scope"))?;
    let closing = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let mut inside = Helper::start(&leak(closing, 20, 3))?;
    cgroup.add(inside.pid())?;
    let mut outside = Helper::start(&leak(closing, 20, 3))?;
    let by_pod = Probe::start(&[
        "--cgroup",
        &format!("/{pod_slice}"),
        "--close-wait-after",
        "500ms",
    ])?;
    let by_container = Probe::start(&[
        "--container",
        &CONTAINER[..10],
        "--close-wait-after",
        "500ms",
    ])?;
    inside.say("go")?;
    outside.say("go")?;
    thread::sleep(Duration::from_secs(2));
    for probe in [by_pod, by_container] {
        let records = probe.stop()?;
        let pids: Vec<&Value> = records
            .iter()
            .filter(|r| r["type"] != "summary")
            .map(|r| &r["pid"])
            .collect();
        ensure(
            !pids.is_empty() && pids.iter().all(|pid| **pid == inside.pid()),
            || format!("records of other processes:\n{}", render(&records)),
        )?;
        let summary = records.last().ok_or("no summary")?;
        let table = processes(summary);
        let record = table
            .get(&u64::from(inside.pid()))
            .ok_or_else(|| format!("no record of {}: {summary}", inside.pid()))?;
        ensure(
            record["pod"] == POD && record["container"] == CONTAINER && record["stuck"] == 3,
            || format!("record: {record}"),
        )?;
    }
    inside.finish()?;
    outside.finish()
}

/// Runs probe with `args` to completion; its exit code and stderr.
fn probe_fails(args: &[&str]) -> Result<(Option<i32>, String), String> {
    let output = Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// A cgroup path that does not exist or is no cgroup v2 directory, a container id that
/// matches none or several: clear errors.
pub fn bad_cgroups_and_containers_are_clear_errors() -> TestResult {
    let prefix = "5eed5eed5eed";
    let ids = [
        format!("{prefix}{}", "a".repeat(52)),
        format!("{prefix}{}", "b".repeat(52)),
    ];
    let mut sleepers = Vec::new();
    let mut cgroups = Vec::new();
    for id in &ids {
        let cgroup = TestCgroup::create(&format!("probe-test-docker-{id}.scope"))?;
        let sleeper = crate::harness::Idle::start()?;
        cgroup.add(sleeper.pid().parse().map_err(|_| "bad pid")?)?;
        sleepers.push(sleeper);
        cgroups.push(cgroup);
    }
    // The directories above are named `probe-test-docker-<id>.scope`: not a runtime's name.
    // These are, so that the ids can be found.
    drop(cgroups);
    let mut cgroups = Vec::new();
    for (id, sleeper) in ids.iter().zip(&sleepers) {
        let cgroup = TestCgroup::create(&format!("docker-{id}.scope"))?;
        cgroup.add(sleeper.pid().parse().map_err(|_| "bad pid")?)?;
        cgroups.push(cgroup);
    }
    let cases: &[(&[&str], &str)] = &[
        (
            &["--cgroup", "/no/such/cgroup"],
            "not a cgroup v2 directory",
        ),
        (&["--cgroup", "/tmp"], "not a cgroup v2 directory"),
        (&["--container", "zzz"], "not a container id"),
        (&["--container", "0123456789"], "no running container"),
        (&["--container", prefix], "matches 2 containers"),
    ];
    for (args, hint) in cases {
        let (code, stderr) = probe_fails(args)?;
        ensure(code == Some(1) && stderr.contains(hint), || {
            format!("probe {args:?} exited {code:?}: {stderr}")
        })?;
    }
    drop(cgroups);
    drop(sleepers);
    Ok(())
}

/// Wall-clock seconds now.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `failed ERRNO UNIX_SECONDS` from a leaking helper.
fn failure(line: &str) -> Result<(i32, f64), String> {
    let mut words = line.split_whitespace();
    ensure(words.next() == Some("failed"), || format!("heard {line:?}"))?;
    let errno = words
        .next()
        .and_then(|e| e.parse().ok())
        .ok_or("no errno")?;
    let at = words.next().and_then(|t| t.parse().ok()).ok_or("no time")?;
    Ok((errno, at))
}

/// A forecast read at `read_at` that said `left` seconds, against the real end at `ended`:
/// within 20% of the time that was really left.
fn within_a_fifth(what: &str, read_at: f64, left: f64, ended: f64) -> TestResult {
    let real = ended - read_at;
    println!("{what} forecast: {left:.2} s left; really {real:.2} s");
    ensure(real > 0.0 && (left - real).abs() <= 0.2 * real, || {
        format!("forecast {left:.2}s left, really {real:.2}s")
    })
}

/// Host-wide, the sockets open before probe came are found through the kernel's `task_file`
/// iterator (one read, not a readlink per descriptor of every process): a client's CLOSE_WAIT
/// pile-up and the sockets a parent handed to its child before exiting each belong to the
/// process `ss -p` names, and the client's count of open files is the one /proc has.
pub fn sockets_open_before_a_host_wide_attach_are_found_by_the_kernel() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let mut client = Helper::start(&Role::HoldClients {
        server: addr,
        count: 6,
    })?;
    client.say("go")?;
    ensure(client.hear()? == "ready", || "client not ready".into())?;
    wait_for_ss(client.pid(), "close-wait", 6)?;
    let mut parent = Helper::start(&Role::HandOver {
        server: addr,
        count: 3,
    })?;
    parent.say("go")?;
    let child: u32 = parent.hear()?.parse().map_err(|_| "no child pid")?;
    wait_for_ss(child, "close-wait", 3)?;
    let open_files = std::fs::read_dir(format!("/proc/{}/fd", client.pid()))
        .map_err(|e| e.to_string())?
        .count();

    let mut probe = Probe::start(&["-v", "--close-wait-after", "1s"])?;
    let stderr = probe.stderr();
    ensure(
        stderr.contains("task_file iterator") && !stderr.contains("read from /proc"),
        || format!("the open files were not read from the kernel:\n{stderr}"),
    )?;
    let records = probe.wait_until("the CLOSE_WAIT alerts of both", WAIT, |r| {
        stuck(r, client.pid(), "CLOSE_WAIT").len() >= 6 && stuck(r, child, "CLOSE_WAIT").len() >= 3
    })?;
    for pid in [client.pid(), child] {
        let (shown, expected) = (stuck_ports(records, pid), ss_ports(pid)?);
        ensure(shown == expected, || {
            format!(
                "pid {pid}: probe {shown:?}, ss {expected:?}:\n{}",
                render(records)
            )
        })?;
        for alert in stuck(records, pid, "CLOSE_WAIT") {
            ensure(alert["since_attach"] == true, || {
                format!("not flagged as found at attach: {alert}")
            })?;
        }
    }
    let records = probe.stop()?;
    let summary = records.last().ok_or("no summary")?;
    let record = processes(summary)
        .get(&u64::from(client.pid()))
        .copied()
        .ok_or_else(|| format!("no record of the client: {summary}"))?;
    ensure(record["fds_open"] == open_files as u64, || {
        format!("/proc has {open_files} open files: {record}")
    })?;
    client.finish()?;
    parent.finish()
}

/// A client limited to 256 open files leaks connections at a steady rate until accept... its
/// connect fails with EMFILE; read half-way, probe's `fd_exhaustion_s` is within 20% of when
/// that really happened.
pub fn the_fd_forecast_matches_when_the_client_runs_out() -> TestResult {
    let holding = server("127.0.0.1:0", ServerMode::Hold)?;
    let mut client = Helper::start(&Role::Leak {
        server: holding,
        per_second: 40,
        fd_limit: Some(256),
        most: None,
    })?;
    let pid = client.pid();
    // --established-after 4s: a refresh, and an fd sample, every second.
    let probe = Probe::start(&["--pid", &pid.to_string(), "--established-after", "4s"])?;
    client.say("go")?;
    thread::sleep(Duration::from_millis(3200));
    let read_at = unix_now();
    let records = probe.stop()?;
    let (errno, ended) = failure(&client.hear()?)?;
    ensure(errno == libc::EMFILE, || {
        format!("connect failed with errno {errno}")
    })?;
    let summary = records.last().ok_or("no summary")?;
    let record = processes(summary)
        .get(&u64::from(pid))
        .copied()
        .ok_or_else(|| format!("no record of {pid}: {summary}"))?;
    let left = record["fd_exhaustion_s"]
        .as_f64()
        .ok_or_else(|| format!("no fd forecast: {record}"))?;
    ensure(record["fd_limit"] == 256, || record.to_string())?;
    within_a_fifth("fd", read_at, left, ended)?;
    client.finish()
}

/// A client in a namespace whose ephemeral range is 200 ports leaks connections to one
/// destination until connect() fails with EADDRNOTAVAIL; read half-way, probe's port forecast
/// is within 20% of when that really happened.
pub fn the_port_forecast_matches_when_connect_fails() -> TestResult {
    let namespace = NetworkNamespace::create()?;
    namespace.set_port_range(60000, 60199)?;
    let mut listener = Helper::start_in(
        &namespace.name,
        &Role::HoldingServer {
            bind: "127.0.0.1:5000".parse().map_err(|_| "bad address")?,
        },
    )?;
    listener.hear()?;
    let mut client = Helper::start_in(
        &namespace.name,
        &Role::Leak {
            server: "127.0.0.1:5000".parse().map_err(|_| "bad address")?,
            per_second: 30,
            fd_limit: None,
            most: None,
        },
    )?;
    port_forecast_against_reality(&mut client, 5000)?;
    client.finish()?;
    listener.finish()
}

/// A client in a namespace whose ephemeral range is 200 ports makes short connections to one
/// destination across a veth link and closes each first: its TIME_WAIT sockets hold the ports
/// (across a link, unlike on loopback, connect() does not reuse them) until connect() fails
/// with EADDRNOTAVAIL; read half-way, probe's port forecast, made of TIME_WAIT sockets alone, is
/// within 20% of when that really happened.
pub fn the_port_forecast_counts_time_wait_sockets_until_connect_fails() -> TestResult {
    let namespace = NetworkNamespace::linked()?;
    namespace.set_port_range(60000, 60199)?;
    let destination = server(
        &format!("{}:0", namespace.host_address()),
        ServerMode::CloseAfterPeer,
    )?;
    let mut client = Helper::start_in(
        &namespace.name,
        &Role::PortsIntoTimeWait {
            server: destination,
            per_second: 30,
        },
    )?;
    port_forecast_against_reality(&mut client, destination.port())?;
    client.finish()
}

/// Traces `client`, a helper about to use up the ephemeral range 60000-60199 of its namespace
/// toward port `dport`, and checks probe's port forecast, read 3.5 s after `go`, against when
/// connect() really failed with EADDRNOTAVAIL.
fn port_forecast_against_reality(client: &mut Helper, dport: u16) -> TestResult {
    let pid = client.pid();
    let probe = Probe::start(&["--pid", &pid.to_string(), "--established-after", "4s"])?;
    let started = Instant::now();
    client.say("go")?;
    thread::sleep(Duration::from_millis(3500));
    let read_at = unix_now();
    let records = probe.stop()?;
    let (errno, ended) = failure(&client.hear()?)?;
    ensure(errno == libc::EADDRNOTAVAIL, || {
        format!(
            "connect failed with errno {errno} after {:?}",
            started.elapsed()
        )
    })?;
    let summary = records.last().ok_or("no summary")?;
    let port = summary["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["dport"] == dport)
        .ok_or_else(|| format!("no port record: {summary}"))?;
    ensure(port["range"] == serde_json::json!([60000, 60199]), || {
        port.to_string()
    })?;
    let left = port["exhaustion_s"]
        .as_f64()
        .ok_or_else(|| format!("no port forecast: {port}"))?;
    within_a_fifth("port", read_at, left, ended)
}

/// Whether a process's JSON record tells a leak that stopped: no rate, no forecast, and its
/// rank says it is not growing.
fn told_it_stopped(record: &Value) -> bool {
    record["leak_per_min"].is_null()
        && record["fd_exhaustion_s"].is_null()
        && record["rank_reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("not growing"))
}

/// A leak that goes on ranks above a bigger one that stopped (a burst before probe came): the
/// growing one first, with its rate, the readings it rests on and when its descriptors run
/// out; the stopped one after it, "not growing", with no rate and no forecast, its count as
/// `ss` shows it.
pub fn a_growing_leak_ranks_above_a_bigger_burst_that_stopped() -> TestResult {
    let closing = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let mut burst = Helper::start(&leak(closing, 100, 40))?;
    burst.say("go")?;
    wait_for_ss(burst.pid(), "close-wait", 40)?;
    let mut growing = Helper::start(&Role::Leak {
        server: closing,
        per_second: 5,
        fd_limit: Some(4096),
        most: None,
    })?;
    let probe = Probe::start(&["--close-wait-after", "500ms"])?;
    growing.say("go")?;
    thread::sleep(Duration::from_secs(6));
    let in_ss = ss_sockets_of(burst.pid(), "close-wait")?.len();
    let records = probe.stop()?;
    let summary = records.last().ok_or("no summary")?;
    let table = processes(summary);
    let (growing_rank, burst_rank) = (rank(summary, growing.pid()), rank(summary, burst.pid()));
    ensure(
        matches!((growing_rank, burst_rank), (Some(g), Some(b)) if g < b),
        || format!("ranks: growing {growing_rank:?}, burst {burst_rank:?}\n{summary}"),
    )?;
    let grows = table[&u64::from(growing.pid())];
    ensure(
        grows["leak_per_min"]
            .as_f64()
            .is_some_and(|rate| rate > 0.0)
            && grows["leak_readings"].as_u64().is_some_and(|n| n >= 3)
            && grows["fd_exhaustion_s"].as_f64().is_some()
            && grows["rank_reason"]
                .as_str()
                .is_some_and(|reason| reason.starts_with("fds run out first")),
        || format!("the growing leak: {grows}"),
    )?;
    let stopped = table[&u64::from(burst.pid())];
    ensure(
        stopped["stuck"] == in_ss as u64 && told_it_stopped(stopped),
        || format!("the burst that stopped (ss: {in_ss}): {stopped}"),
    )?;
    burst.finish()?;
    growing.finish()
}

/// A CLOSE_WAIT is said in the words of its peer's protocol: a client of a PostgreSQL port,
/// of a Redis port and of an HTTP port (servers of the test's own, in a network namespace of
/// its own, closing what they accept) are each told what such a leak usually is.
pub fn a_close_wait_is_said_in_the_words_of_its_peers_protocol() -> TestResult {
    let namespace = NetworkNamespace::create()?;
    let ports = [(5432, "PostgreSQL"), (6379, "Redis"), (80, "HTTP")];
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for (port, _) in ports {
        let bind = SocketAddr::from(([127, 0, 0, 1], port));
        let mut server = Helper::start_in(&namespace.name, &Role::ClosingServerAt { bind })?;
        ensure(server.hear()? == "listening", || {
            format!("no server on {port}")
        })?;
        servers.push(server);
        clients.push(Helper::start_in(&namespace.name, &leak(bind, 20, 3))?);
    }
    let probe = Probe::start(&["--close-wait-after", "500ms"])?;
    for client in &mut clients {
        client.say("go")?;
    }
    let mut probe = probe;
    probe.wait_until("every client's CLOSE_WAIT alerts", WAIT, |records| {
        clients
            .iter()
            .all(|client| stuck(records, client.pid(), "CLOSE_WAIT").len() >= 3)
    })?;
    let records = probe.stop()?;
    let mut reasons = Vec::new();
    for (client, (port, protocol)) in clients.iter().zip(ports) {
        let alerts = stuck(&records, client.pid(), "CLOSE_WAIT");
        let alert = alerts.first().ok_or("no alert")?;
        let reason = alert["reason"].as_str().unwrap_or_default().to_string();
        ensure(
            alert["protocol"] == protocol && reason.contains(protocol),
            || format!("port {port}: {alert}"),
        )?;
        reasons.push(reason);
    }
    ensure(
        !reasons[0].contains("HTTP") && !reasons[1].contains("HTTP") && reasons[2].contains("HTTP"),
        || format!("reasons: {reasons:?}"),
    )?;
    for helper in clients.into_iter().chain(servers) {
        helper.finish()?;
    }
    Ok(())
}

/// A client holding idle connections to a local server that keeps a process per connection
/// (as PostgreSQL keeps a backend per client): both ends sit idle in ESTABLISHED, and they are
/// one problem, the client's (it never uses nor returns them). The summary has one entry, the
/// client's, with as many stuck as `ss` shows it holding, and the server's processes named
/// beside it as the other ends; none of them is counted stuck.
pub fn both_ends_of_an_idle_pool_are_one_entry_the_clients() -> TestResult {
    const POOLED: usize = 4;
    let mut server = Helper::start(&Role::ForkingServer)?;
    let port: u16 = server.hear()?.parse().map_err(|_| "no port")?;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut client = Helper::start(&Role::HoldClients {
        server: address,
        count: POOLED,
    })?;
    let probe = Probe::start(&["--established-after", "1s"])?;
    client.say("go")?;
    ensure(client.hear()? == "ready", || {
        "the client did not connect".into()
    })?;
    thread::sleep(Duration::from_secs(3));
    let in_ss = ss_sockets_of(client.pid(), "established")?.len();
    let records = probe.stop()?;
    let summary = records.last().ok_or("no summary")?;
    let table = processes(summary);
    let record = table
        .get(&u64::from(client.pid()))
        .copied()
        .ok_or_else(|| format!("no record of the client: {summary}"))?;
    let other_ends = record["other_ends"].as_array().cloned().unwrap_or_default();
    ensure(
        in_ss == POOLED && record["stuck"] == POOLED as u64 && other_ends.len() == POOLED,
        || format!("ss: {in_ss}; the client's record: {record}"),
    )?;
    for end in &other_ends {
        let pid = end["pid"].as_u64().unwrap_or_default();
        let stuck = table
            .get(&pid)
            .map_or(0, |p| p["stuck"].as_u64().unwrap_or(0));
        ensure(end["connections"] == 1 && stuck == 0, || {
            format!("server process {pid}: {end}, its record stuck {stuck}")
        })?;
    }
    // The text output alike: the client's alert, none for the ends held for it, and the
    // summary's row counts each connection once, naming the processes that hold the other ends.
    let text = Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(["--established-after", "1s", "--duration", "6s"])
        .output()
        .map_err(|e| format!("cannot run probe: {e}"))?;
    let stdout = String::from_utf8_lossy(&text.stdout);
    let alerted = |pid: u64| {
        stdout
            .lines()
            .filter(|line| line.starts_with("STUCK in ESTABLISHED"))
            .any(|line| line.contains(&format!(": pid {pid} (")))
    };
    let held_alerted: Vec<u64> = other_ends
        .iter()
        .filter_map(|end| end["pid"].as_u64())
        .filter(|&pid| alerted(pid))
        .collect();
    ensure(
        alerted(u64::from(client.pid()))
            && held_alerted.is_empty()
            && stdout.contains(&format!("{POOLED} connection(s)"))
            && stdout.contains("their other ends held by pid")
            && stdout.contains("of them the other ends of connections below"),
        || format!("the ends held for the client alerted: {held_alerted:?}; probe said:\n{stdout}"),
    )?;
    client.finish()?;
    server.finish()
}
