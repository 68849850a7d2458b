//! The ways users look at probe besides its output stream: the live view (driven in tmux), the
//! HTML report (rendered in headless Chromium) and the Prometheus endpoint (scraped).

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::harness::{
    Helper, Idle, Role, ServerMode, TempPath, TestResult, WAIT, ensure, free_port, sample, scrape,
    server, ss_sockets_of, stuck, traced_client,
};

/// Polls `check` until it returns `Some`, or fails with what `check` saw last.
fn poll<T>(what: &str, mut check: impl FnMut() -> Result<Option<T>, String>) -> Result<T, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = check()? {
            return Ok(found);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// A client leaking `count` connections into CLOSE_WAIT, traced by probe with `probe_args`;
/// returns once probe has flagged them all.
fn close_wait_leak(
    count: usize,
    probe_args: &[&str],
) -> Result<(Helper, crate::harness::Probe, std::net::SocketAddr), String> {
    let mut args = vec!["--close-wait-after", "1s"];
    args.extend_from_slice(probe_args);
    let (client, mut probe, addr) = traced_client(
        "127.0.0.1:0",
        ServerMode::CloseAtOnce,
        |server| Role::HoldClients { server, count },
        &args,
        "ready",
    )?;
    let pid = client.pid();
    probe.wait_until(&format!("{count} CLOSE_WAIT alerts"), WAIT, |r| {
        stuck(r, pid, "CLOSE_WAIT").len() >= count
    })?;
    Ok((client, probe, addr))
}

// ---------------------------------------------------------------------------------------------
// Metrics.

/// Four CLOSE_WAIT leaks, probe with `--metrics-addr PORT`: the endpoint listens on loopback
/// only, and a real scrape shows the gauges, counters and histograms that match `ss`.
pub fn metrics_are_served_on_loopback_and_match_ss() -> TestResult {
    let port = free_port()?.to_string();
    let (client, probe, _) = close_wait_leak(4, &["--metrics-addr", &port, "--metrics-pids"])?;
    let pid = client.pid();
    let address = format!("127.0.0.1:{port}");
    ensure(
        probe
            .stderr()
            .contains(&format!("serving metrics at http://{address}/metrics")),
        || format!("probe did not say where: {}", probe.stderr()),
    )?;
    // Loopback only: `ss` shows probe listening on 127.0.0.1, on no other address.
    let listening = ss_sockets_of(probe.pid(), "listening")?;
    ensure(
        listening.len() == 1 && listening[0].contains(&format!("127.0.0.1:{port} ")),
        || format!("probe listens on:\n{}", listening.join("\n")),
    )?;
    let ss_close_wait = ss_sockets_of(pid, "close-wait")?.len();
    let body = poll("the gauges to catch up", || {
        let body = scrape(&address)?;
        let stuck_now = sample(
            &body,
            r#"probe_connections_stuck{state="CLOSE_WAIT",kind="CLOSE_WAIT"}"#,
        );
        Ok((stuck_now == Some(4.0)).then_some(body))
    })?;
    let expect = [
        (
            r#"probe_connections_open{state="CLOSE_WAIT"}"#.to_string(),
            ss_close_wait as f64,
        ),
        (
            r#"probe_transitions_total{old="ESTABLISHED",new="CLOSE_WAIT"}"#.into(),
            4.0,
        ),
        (
            r#"probe_transitions_total{old="CLOSE",new="SYN_SENT"}"#.into(),
            4.0,
        ),
        (
            r#"probe_stuck_alerts_total{state="CLOSE_WAIT",kind="CLOSE_WAIT"}"#.into(),
            4.0,
        ),
        (
            r#"probe_state_duration_seconds_count{state="SYN_SENT"}"#.into(),
            4.0,
        ),
        ("probe_lost_events_total".into(), 0.0),
    ];
    for (series, value) in expect {
        ensure(sample(&body, &series) == Some(value), || {
            format!("expected {series} {value} in:\n{body}")
        })?;
    }
    for family in ["open", "stuck"] {
        let by_process = format!("probe_process_connections_{family}{{");
        let this_pid = format!(r#",pid="{pid}","#);
        ensure(
            body.lines().any(|line| {
                line.starts_with(&by_process)
                    && line.contains(&this_pid)
                    && line.ends_with(r#"state="CLOSE_WAIT"} 4"#)
            }),
            || format!("no per-process {family} gauge of 4 CLOSE_WAIT for {pid}:\n{body}"),
        )?;
    }
    ensure(body.ends_with("# EOF\n"), || "no # EOF".into())?;
    probe.stop()?;
    client.finish()
}

// ---------------------------------------------------------------------------------------------
// The report.

const CLOSE_WAIT_RED: [u8; 3] = [0xd6, 0x27, 0x28];
const TABLE_HEADER: [u8; 3] = [0xe8, 0xee, 0xf7];

/// Pixels of exactly `colour` in a PNG file.
fn count_pixels(png: &Path, colour: [u8; 3]) -> Result<usize, String> {
    let file = std::fs::File::open(png).map_err(|e| format!("no screenshot: {e}"))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let mut buffer = vec![0; reader.output_buffer_size().ok_or("image too large")?];
    let frame = reader.next_frame(&mut buffer).map_err(|e| e.to_string())?;
    let channels = frame.color_type.samples();
    Ok(buffer[..frame.buffer_size()]
        .chunks_exact(channels)
        .filter(|pixel| pixel[..3] == colour)
        .count())
}

/// Renders `page` in headless Chromium to `png`.
fn screenshot(page: &Path, png: &Path) -> TestResult {
    let profile = TempPath::new("chromium-profile");
    let status = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1100,1600",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run chromium (apt-get install chromium): {e}"))?;
    let _ = std::fs::remove_dir_all(&profile.0);
    ensure(status.success(), || {
        format!("chromium exited with {status}")
    })
}

/// Three CLOSE_WAIT leaks with `--report`: the page names each leaked connection `ss` shows,
/// and rendered in headless Chromium it shows the CLOSE_WAIT line of the chart and the tables.
pub fn the_report_renders_in_a_browser() -> TestResult {
    let page = TempPath::new("report.html");
    let picture = TempPath::new("report.png");
    let path = page.0.to_string_lossy().into_owned();
    let (client, probe, addr) = close_wait_leak(3, &["--report", &path])?;
    let pid = client.pid();
    // A few seconds of timeline.
    thread::sleep(Duration::from_secs(3));
    let leaked = ss_sockets_of(pid, "close-wait")?;
    probe.stop()?;
    let html = std::fs::read_to_string(&page.0).map_err(|e| format!("no report: {e}"))?;
    ensure(
        html.contains("<b>3 stuck connection(s)</b>: 3 in CLOSE_WAIT")
            && html.contains(&format!("{addr}: 3 stuck"))
            && html.contains("Fix:</b>"),
        || format!("the report misses the stuck connections:\n{html}"),
    )?;
    for line in &leaked {
        let local = line
            .split_whitespace()
            .find(|field| field.starts_with("127.0.0.1:") && *field != addr.to_string())
            .ok_or_else(|| format!("no local address in {line}"))?;
        ensure(html.contains(&format!(">{local}<")), || {
            format!("{local} (CLOSE-WAIT in ss) is not in the report")
        })?;
    }
    screenshot(&page.0, &picture.0)?;
    let red = count_pixels(&picture.0, CLOSE_WAIT_RED)?;
    let header = count_pixels(&picture.0, TABLE_HEADER)?;
    if let Ok(keep) = std::env::var("PROBE_KEEP_SCREENSHOTS") {
        let _ = std::fs::copy(&picture.0, Path::new(&keep).join("report.png"));
    }
    // The chart's CLOSE_WAIT line is 3 px wide across most of 900 px; each table header row is
    // about 25 px high across 880 px.
    ensure(red > 1000, || {
        format!("only {red} CLOSE_WAIT-red pixels: the chart did not render")
    })?;
    ensure(header > 20_000, || {
        format!("only {header} table-header pixels: the tables did not render")
    })?;
    client.finish()
}

// ---------------------------------------------------------------------------------------------
// The live view.

/// A tmux server of this test's own, killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Result<Tmux, String> {
        let tmux = Tmux {
            socket: format!("probe-test-{}", std::process::id()),
        };
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "live",
            "-x",
            "140",
            "-y",
            "45",
            command,
        ])?;
        Ok(tmux)
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .map_err(|e| format!("cannot run tmux (apt-get install tmux): {e}"))?;
        ensure(output.status.success(), || {
            format!("tmux {args:?}: {}", String::from_utf8_lossy(&output.stderr))
        })?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn screen(&self) -> Result<String, String> {
        self.run(&["capture-pane", "-p", "-t", "live"])
    }

    fn wait_for(&self, what: &str, shown: impl Fn(&str) -> bool) -> Result<String, String> {
        let mut last = String::new();
        poll(what, || {
            last = self.screen()?;
            Ok(shown(&last).then(|| last.clone()))
        })
        .map_err(|e| format!("{e}; the screen:\n{last}"))
    }

    fn press(&self, key: &str) -> TestResult {
        self.run(&["send-keys", "-t", "live", key]).map(drop)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// `--live` in a real terminal (tmux): the stuck connections appear grouped under their
/// server's endpoint, `f` and `s` change the view, `q` quits with the summary and exit 0.
pub fn the_live_view_works_in_a_terminal() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let mut client = Helper::start(&Role::HoldClients {
        server: addr,
        count: 3,
    })?;
    let pid = client.pid();
    let command = format!(
        "{} --live --pid {pid} --close-wait-after 1s; echo probe-exit=$?; sleep 60",
        env!("CARGO_BIN_EXE_probe")
    );
    let tmux = Tmux::start(&command)?;
    tmux.wait_for("the live view", |s| s.contains("q quit"))?;
    client.say("go")?;
    ensure(client.hear()? == "ready", || "client not ready".into())?;
    let row = format!("{addr}");
    let screen = tmux.wait_for("3 stuck connections to the server", |s| {
        s.contains("3 stuck")
            && s.contains("3 STUCK")
            && s.lines().any(|l| {
                l.contains("CLOSE_WAIT") && l.contains(&row) && l.contains(&pid.to_string())
            })
    })?;
    ensure(screen.contains("ESTABLISHED -> CLOSE_WAIT"), || {
        format!("no latest transitions:\n{screen}")
    })?;
    if let Ok(keep) = std::env::var("PROBE_KEEP_SCREENSHOTS") {
        let colour = tmux.run(&["capture-pane", "-e", "-p", "-t", "live"])?;
        let _ = std::fs::write(Path::new(&keep).join("live.ansi"), colour);
    }
    tmux.press("f")?;
    tmux.wait_for("the CLOSE_WAIT filter", |s| {
        s.contains("f filter (CLOSE_WAIT)")
    })?;
    tmux.press("s")?;
    tmux.wait_for("sorting by age", |s| s.contains("s sort (by oldest)"))?;
    tmux.press("q")?;
    let screen = tmux.wait_for("probe to quit", |s| s.contains("probe-exit="))?;
    ensure(
        screen.contains("probe-exit=0")
            && screen.contains("== summary:")
            && screen.contains("CLOSE_WAIT: 3 open, 3 STUCK"),
        || format!("after quitting:\n{screen}"),
    )?;
    client.finish()
}

/// `--live` with standard output not a terminal: a note, then plain text (no escape codes).
pub fn the_live_view_degrades_to_lines_without_a_terminal() -> TestResult {
    let idle = Idle::start()?;
    let output = Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(["--live", "--pid", &idle.pid(), "--duration", "1s"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run probe: {e}"))?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    ensure(output.status.success(), || {
        format!("probe failed: {stderr}")
    })?;
    ensure(stderr.contains("--live needs a terminal"), || {
        format!("no note on stderr: {stderr}")
    })?;
    ensure(
        stdout.contains("== summary: 0 open connection(s)") && !stdout.contains('\x1b'),
        || format!("not plain lines: {stdout}"),
    )
}
