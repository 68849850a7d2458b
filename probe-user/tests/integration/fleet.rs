//! Fleets: probe host-wide feeding a real Prometheus that loads the project's alert rules and
//! answers the dashboard's queries, and an endpoint protected by TLS and basic auth as the
//! DaemonSet serves it.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::harness::{
    Helper, Idle, NetworkNamespace, Probe, Prometheus, Role, TempPath, TestResult, WAIT,
    deploy_dir, ensure, free_port, render, rules_with_short_for,
};

/// Every `expr` of the dashboard's panels, with its variables given values: every node, and
/// a rate window that fits a short run.
fn dashboard_queries() -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(deploy_dir().join("grafana-dashboard.json"))
        .map_err(|e| format!("cannot read the dashboard: {e}"))?;
    let dashboard: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_string))
        .map(|expr| {
            expr.replace("$instance", ".*")
                .replace("$__rate_interval", "30s")
        })
        .collect();
    ensure(queries.len() >= 10, || {
        format!("only {} queries", queries.len())
    })?;
    Ok(queries)
}

/// The firing alerts named `name` whose labels satisfy `ours`.
fn firing<'a>(alerts: &'a [Value], name: &str, ours: impl Fn(&Value) -> bool) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| a["state"] == "firing" && a["labels"]["alertname"] == name)
        .filter(|a| ours(&a["labels"]))
        .collect()
}

/// probe host-wide with `--metrics-addr`, a real Prometheus scraping it every second with the
/// project's rules (`for:` shortened to 1 s), and a process leaking connections into CLOSE_WAIT
/// in a network namespace whose ephemeral port range is narrow: the CLOSE_WAIT alert and both
/// forecast alerts (file descriptors and ports gone within the hour) fire, lost events do not;
/// every query of the dashboard returns data; once the leak stops, Prometheus' stuck count for
/// the process is what `ss` shows.
pub fn prometheus_scrapes_probe_and_the_alerts_fire() -> TestResult {
    let namespace = NetworkNamespace::create()?;
    namespace.set_port_range(40000, 40999)?;
    let mut closing = Helper::start_in(&namespace.name, &Role::ClosingServer)?;
    let server_port: u16 = closing.hear()?.parse().map_err(|_| "no port")?;
    let name = format!("fleetleak{}", std::process::id() % 100_000);
    // 8 a second for 40 s: the forecasts only exist while the leak grows, so it must outlast
    // Prometheus' first scrapes, rate windows and `for:` even on a loaded machine.
    let leaked = 320;
    let mut leaker = Helper::start_in(
        &namespace.name,
        &Role::Named {
            name: name.clone(),
            plays: Box::new(Role::Leak {
                server: SocketAddr::from(([127, 0, 0, 1], server_port)),
                per_second: 8,
                fd_limit: Some(1024),
                most: Some(leaked),
            }),
        },
    )?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let probe = Probe::start(&[
        "--metrics-addr",
        &metrics,
        "--close-wait-after",
        "500ms",
        "--established-after",
        "4s",
    ])?;
    let rules = rules_with_short_for("1s")?;
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alerts.yaml]\n\
         scrape_configs:\n  - job_name: probe\n    static_configs:\n      - targets: ['{metrics}']\n"
    );
    let prometheus = Prometheus::start("fleet", &config, &[("alerts.yaml", &rules)])?;
    prometheus.wait_for("probe's first scrape", WAIT, || {
        let up = prometheus.targets()?.iter().any(|t| t["health"] == "up");
        Ok(up.then_some(()))
    })?;
    leaker.say("go")?;

    let by_name = |labels: &Value| labels["comm"] == name.as_str();
    let by_port = |labels: &Value| labels["dport"] == server_port.to_string().as_str();
    type Ours<'a> = &'a dyn Fn(&Value) -> bool;
    let expected: [(&str, Ours); 3] = [
        ("TcpConnectionsStuckInCloseWait", &by_name),
        ("FileDescriptorsRunOutWithinAnHour", &by_name),
        ("EphemeralPortsRunOutWithinAnHour", &by_port),
    ];
    let mut missing = Vec::new();
    let alerts = prometheus.wait_for("the leak's alerts to fire", Duration::from_secs(40), || {
        let alerts = prometheus.alerts()?;
        missing = expected
            .iter()
            .filter(|(name, ours)| firing(&alerts, name, ours).is_empty())
            .map(|(name, _)| *name)
            .collect();
        Ok(missing.is_empty().then_some(alerts))
    });
    let alerts = alerts.map_err(|e| {
        let processes = prometheus
            .query("sum by (comm) (probe_process_connections_stuck)")
            .map(|series| render(&series));
        format!("not firing: {missing:?}; stuck by comm: {processes:?}; {e}")
    })?;
    for alert in alerts
        .iter()
        .filter(|a| by_name(&a["labels"]) || by_port(&a["labels"]))
    {
        eprintln!("firing: {}", alert);
    }
    ensure(
        firing(&alerts, "ProbeLosesEvents", |_| true).is_empty(),
        || format!("probe lost events: {alerts:?}"),
    )?;
    // Still growing: the forecasts exist, every panel has data.
    for query in dashboard_queries()? {
        let result = prometheus.query(&query)?;
        eprintln!("dashboard: {} series for {query}", result.len());
        ensure(!result.is_empty(), || {
            format!("no data for the dashboard's {query}")
        })?;
    }
    // The leak stops at `leaked`: Prometheus and ss agree on the process's stuck connections.
    let in_ss = namespace
        .ss_within(leaker.pid(), "close-wait", leaked, Duration::from_secs(60))?
        .len();
    let query = format!(r#"sum(probe_process_connections_stuck{{comm="{name}"}})"#);
    let stuck = prometheus.wait_for("the stuck count to settle", WAIT, || {
        Ok(prometheus
            .scalar(&query)?
            .filter(|&stuck| stuck == in_ss as f64))
    });
    let series = prometheus.scalar(r#"count({__name__=~"probe_.+"})"#)?;
    eprintln!("{query} = {stuck:?}, ss: {in_ss}; probe exports {series:?} series");
    ensure(stuck.is_ok(), || {
        format!(
            "Prometheus says {:?}, ss {in_ss}",
            prometheus.scalar(&query)
        )
    })?;
    probe.stop()?;
    leaker.finish()?;
    closing.finish()
}

/// The files of a TLS setup: a CA, a server certificate it signs (for `probe` and 127.0.0.1),
/// and another CA nobody used.
fn certificates(dir: &Path) -> TestResult {
    let run = |args: &[&str]| -> TestResult {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run openssl: {e}"))?;
        ensure(output.status.success(), || {
            format!(
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (keyout, out) = (format!("{ca}.key"), format!("{ca}.crt"));
        let mut args = vec!["req", "-x509", "-days", "1", "-subj"];
        args.push(if ca == "ca" {
            "/CN=probe test CA"
        } else {
            "/CN=another CA"
        });
        args.extend_from_slice(&key);
        args.extend_from_slice(&["-keyout", &keyout, "-out", &out]);
        run(&args)?;
    }
    let mut args = vec!["req", "-subj", "/CN=probe"];
    args.extend_from_slice(&key);
    args.extend_from_slice(&["-keyout", "server.key", "-out", "server.csr"]);
    run(&args)?;
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=DNS:probe,IP:127.0.0.1\n",
    )
    .map_err(|e| e.to_string())?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.cnf",
        "-out",
        "server.crt",
    ])
}

/// curl against the endpoint: its exit code and the HTTP status (000 when there was none).
fn curl(url: &str, args: &[&str]) -> Result<(i32, String), String> {
    let output = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(args)
        .arg(url)
        .output()
        .map_err(|e| format!("cannot run curl: {e}"))?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

/// probe tracing an idle process and serving metrics on a free loopback port, protected by
/// `web_yaml` (written as `web.yml` in `dir`, beside any certificates it names): probe, the
/// idle process (to keep while probe runs), and the metrics address.
fn secured_endpoint(dir: &Path, web_yaml: &str) -> Result<(Probe, Idle, String), String> {
    let web_config = dir.join("web.yml");
    std::fs::write(&web_config, web_yaml).map_err(|e| e.to_string())?;
    let idle = Idle::start()?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let probe = Probe::start(&[
        "--pid",
        &idle.pid(),
        "--metrics-addr",
        &metrics,
        "--metrics-web-config",
        &web_config.display().to_string(),
    ])?;
    Ok((probe, idle, metrics))
}

/// The endpoint as the DaemonSet serves it: TLS and basic auth from a web configuration file.
/// Prometheus scrapes it with the CA and the password; with a wrong password its target is
/// down (401); curl without credentials gets 401, with a CA that did not sign the certificate
/// fails the handshake, in plain HTTP gets nothing; and `promtool check metrics` finds the
/// scrape clean.
pub fn a_secured_endpoint_serves_prometheus_and_refuses_everyone_else() -> TestResult {
    let dir = TempPath::directory("tls")?;
    certificates(&dir.0)?;
    let password = "scrape-secret";
    let hash = bcrypt::hash(password, 8).map_err(|e| e.to_string())?;
    let (probe, _idle, metrics) = secured_endpoint(
        &dir.0,
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  prometheus: {hash}\n"
        ),
    )?;
    let url = format!("https://{metrics}/metrics");
    ensure(
        probe
            .stderr()
            .contains(&format!("serving metrics at {url}")),
        || format!("probe did not say where: {}", probe.stderr()),
    )?;
    let ca = dir.0.join("ca.crt").display().to_string();
    let job = |name: &str, secret: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n      \
             server_name: probe\n    basic_auth:\n      username: prometheus\n      \
             password: {secret}\n    static_configs:\n      - targets: ['{metrics}']\n"
        )
    };
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n{}{}",
        job("probe", password),
        job("intruder", "guess")
    );
    let prometheus = Prometheus::start("tls", &config, &[])?;
    let targets = prometheus.wait_for("both targets scraped", WAIT, || {
        let targets = prometheus.targets()?;
        let health = |job: &str| {
            targets
                .iter()
                .find(|t| t["labels"]["job"] == job)
                .map(|t| t["health"].as_str().unwrap_or("").to_string())
        };
        let settled = health("probe").as_deref() == Some("up")
            && health("intruder").as_deref() == Some("down");
        Ok(settled.then_some(targets))
    })?;
    let intruder = targets
        .iter()
        .find(|t| t["labels"]["job"] == "intruder")
        .map(|t| t["lastError"].to_string())
        .unwrap_or_default();
    ensure(intruder.contains("401"), || {
        format!("the intruder's scrape failed otherwise: {intruder}")
    })?;
    ensure(
        prometheus
            .scalar(r#"probe_lost_events_total{job="probe"}"#)?
            .is_some(),
        || "Prometheus has no probe metrics".into(),
    )?;

    let cacert = ["--cacert", ca.as_str()];
    let other = dir.0.join("other-ca.crt").display().to_string();
    let credentials = format!("prometheus:{password}");
    for (what, args, expected) in [
        ("no credentials", vec!["--cacert", &ca], (0, "401")),
        (
            "a wrong password",
            vec!["--cacert", &ca, "-u", "prometheus:guess"],
            (0, "401"),
        ),
        (
            "the password",
            vec!["--cacert", &ca, "-u", &credentials],
            (0, "200"),
        ),
        // 60: the peer's certificate cannot be authenticated with the given CA.
        (
            "another CA",
            vec!["--cacert", &other, "-u", &credentials],
            (60, "000"),
        ),
    ] {
        let (code, status) = curl(&url, &args)?;
        ensure(code == expected.0 && status == expected.1, || {
            format!("curl with {what}: exit {code}, HTTP {status}, expected {expected:?}")
        })?;
    }
    let (_, plain) = curl(&format!("http://{metrics}/metrics"), &[])?;
    ensure(plain != "200", || "served in plain HTTP".into())?;

    let scrape = Command::new("curl")
        .args(["-sSf", "-u", &credentials])
        .args(cacert)
        .arg(&url)
        .output()
        .map_err(|e| e.to_string())?;
    ensure(scrape.status.success(), || "the scrape failed".into())?;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool: {e}"))?;
    if let Some(mut stdin) = promtool.stdin.take() {
        std::io::Write::write_all(&mut stdin, &scrape.stdout).map_err(|e| e.to_string())?;
    }
    let checked = promtool.wait_with_output().map_err(|e| e.to_string())?;
    ensure(
        checked.status.success() && checked.stdout.is_empty(),
        || {
            format!(
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&checked.stdout),
                String::from_utf8_lossy(&checked.stderr)
            )
        },
    )?;
    probe.stop()?;
    Ok(())
}

/// Clients without the password cannot starve a scraper that has it: 200 connections that
/// never send a request (stalled handshakes or headers) and 100 that send one without
/// credentials and keep the connection open, against an endpoint of 64 connections. Each
/// denied client is answered 401 and disconnected, and the scrape with the password is served
/// at once (it waited for the stalled ones to time out, up to a minute, before).
pub fn clients_without_the_password_cannot_keep_the_scraper_out() -> TestResult {
    use std::{
        io::{Read, Write},
        net::TcpStream,
        time::Instant,
    };
    let dir = TempPath::directory("lockout")?;
    let password = "scrape-secret";
    let hash = bcrypt::hash(password, 8).map_err(|e| e.to_string())?;
    let (probe, _idle, metrics) = secured_endpoint(
        &dir.0,
        &format!("basic_auth_users:\n  prometheus: {hash}\n"),
    )?;
    let address: SocketAddr = metrics.parse().map_err(|e| format!("{e}"))?;
    let connect = || TcpStream::connect(address).map_err(|e| format!("cannot connect: {e}"));
    let stalled: Vec<TcpStream> = (0..200).map(|_| connect()).collect::<Result<_, _>>()?;
    let mut denied = Vec::new();
    for _ in 0..100 {
        let mut stream = connect()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: probe\r\nConnection: keep-alive\r\n\r\n")
            .map_err(|e| e.to_string())?;
        denied.push(stream);
    }
    let url = format!("http://{metrics}/metrics");
    let credentials = format!("prometheus:{password}");
    let started = Instant::now();
    let (code, status) = curl(&url, &["-u", &credentials, "--max-time", "3"])?;
    let took = started.elapsed();
    ensure(code == 0 && status == "200", || {
        format!("the scrape with the password: exit {code}, HTTP {status} after {took:?}")
    })?;
    // The denied clients that were served are told 401 and disconnected; the rest were closed
    // to make room. None is left holding a connection.
    let mut told = 0;
    for stream in &mut denied {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .map_err(|e| format!("a denied client is still connected: {e}"))?;
        if answer.starts_with(b"HTTP/1.1 401") {
            told += 1;
        }
    }
    ensure(told > 0, || "no denied client was answered 401".into())?;
    drop(stalled);
    eprintln!("scrape served in {took:?} past 300 unauthenticated connections ({told} told 401)");
    probe.stop()?;
    Ok(())
}
