//! The processes a benchmark run is made of: the churn workload, an idle target, connection
//! holders, and the tracers whose output is counted.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    BPFTRACE_TCPSTATES, Run,
    netns::in_own_network,
    procfs::{bpf_program_stats, cpu_seconds, peak_rss_kib},
};

/// An idle process to trace, killed when dropped.
pub(super) struct Sleeper(Child);

impl Sleeper {
    pub(super) fn start() -> Result<Sleeper> {
        let child = Command::new("sleep")
            .arg("3600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start an idle process")?;
        Ok(Sleeper(child))
    }

    pub(super) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An xtask child (the churn workload, a connection holder) that waits for `go` on stdin and
/// answers with a line on stdout.
pub(super) struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Worker {
    /// Starts `xtask ARGS`; `what` names it in errors.
    pub(super) fn start(xtask: &Path, args: &[String], what: &str) -> Result<Worker> {
        let mut command = Command::new(xtask);
        command.args(args);
        Worker::spawn(command, what)
    }

    fn spawn(mut command: Command, what: &str) -> Result<Worker> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let stdin = child.stdin.take().context("no stdin")?;
        let lines = lines_of(child.stdout.take().context("no stdout")?);
        Ok(Worker {
            child,
            stdin,
            lines,
        })
    }

    /// The churn workload, held until [`Worker::run_churn`], in a network namespace of its own.
    pub(super) fn churn(xtask: &Path, connections: usize, concurrency: usize) -> Result<Worker> {
        let mut command = Command::new(xtask);
        command.args([
            "churn".to_string(),
            "--connections".into(),
            connections.to_string(),
            "--concurrency".into(),
            concurrency.to_string(),
        ]);
        in_own_network(&mut command);
        Worker::spawn(command, "the workload")
    }

    /// The Go HTTP churn ([`build_go_churn`]), held until [`Worker::run_churn`], in a network
    /// namespace of its own.
    pub(super) fn go_churn(
        binary: &Path,
        connections: usize,
        concurrency: usize,
    ) -> Result<Worker> {
        let mut command = Command::new(binary);
        command.args([connections.to_string(), concurrency.to_string()]);
        in_own_network(&mut command);
        Worker::spawn(command, "the Go workload")
    }

    /// The process churn ([`crate::workload::process_churn`]), held until
    /// [`Worker::run_churn`], in a network namespace of its own.
    pub(super) fn process_churn(xtask: &Path, processes: usize) -> Result<Worker> {
        let mut command = Command::new(xtask);
        command.args([
            "process-churn".to_string(),
            "--processes".into(),
            processes.to_string(),
        ]);
        in_own_network(&mut command);
        Worker::spawn(command, "the process churn")
    }

    /// The Python churn (`python-churn.py`, run by Debian's CPython, installed when missing),
    /// held until [`Worker::run_churn`], in a network namespace of its own.
    pub(super) fn python_churn(connections: usize) -> Result<Worker> {
        const PYTHON: &str = "/usr/bin/python3";
        if !Path::new(PYTHON).is_file() {
            crate::toolchain::apt_install(&["python3"])?;
        }
        let script = crate::build::workspace_root().join("xtask/src/bench/python-churn.py");
        let mut command = Command::new(PYTHON);
        command.arg(script).arg(connections.to_string());
        in_own_network(&mut command);
        Worker::spawn(command, "the Python churn")
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn go(&mut self) -> Result<()> {
        writeln!(self.stdin, "go").context("cannot tell a worker to go")
    }

    /// Its answer, waiting at most five minutes.
    pub(super) fn answer(&self, what: &str) -> Result<String> {
        self.lines
            .recv_timeout(Duration::from_secs(300))
            .with_context(|| format!("{what} did not answer"))
    }

    /// Lets the churn workload go; returns its connections per second.
    pub(super) fn run_churn(mut self) -> Result<f64> {
        self.go()?;
        let line = self.answer("the workload")?;
        self.child.wait()?;
        line.strip_prefix("rate ")
            .and_then(|rate| rate.trim().parse().ok())
            .with_context(|| format!("unexpected workload output: {line}"))
    }

    /// Closes its stdin (a holder then lets go of its connections) and waits for it.
    pub(super) fn finish(mut self) -> Result<()> {
        drop(self.stdin);
        self.child.wait()?;
        Ok(())
    }
}

/// How long a tracer may take to start, and to stop once asked (then it is killed).
const READY_WITHIN: Duration = Duration::from_secs(30);
const STOP_WITHIN: Duration = Duration::from_secs(9);

/// What a tracer's output said.
#[derive(Debug, Default)]
struct Counted {
    transitions: u64,
    /// Events it said it lost.
    lost: u64,
    /// Transition lines probe did not write because the reader fell behind.
    lines_dropped: u64,
}

/// A running tracer whose output lines are counted.
pub(super) struct Tracer {
    child: Child,
    counted: mpsc::Receiver<Counted>,
    /// Events the tracer said it dropped (bpftrace, on stderr).
    dropped: Arc<AtomicU64>,
    /// How long it took from its start to say it was ready.
    pub(super) ready_after: Duration,
    /// How long it may take to stop once asked.
    stop_within: Duration,
}

impl Tracer {
    /// The tracer's process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn probe(probe: &Path, pid: u32, extra: &[&str]) -> Result<Tracer> {
        let mut command = Command::new(probe);
        command
            .args(["--json", "--pid", &pid.to_string()])
            .args(extra);
        Tracer::start(command, "probe: tracing")
    }

    /// probe with no target: the whole host.
    pub(super) fn host_wide(probe: &Path) -> Result<Tracer> {
        Tracer::host_wide_within(probe, READY_WITHIN)
    }

    /// The same, given `within` to attach and as long to stop (a host with very many sockets:
    /// its summary lists every open connection).
    pub(super) fn host_wide_within(probe: &Path, within: Duration) -> Result<Tracer> {
        let mut command = Command::new(probe);
        command.arg("--json");
        let mut tracer = Tracer::start_within(command, "probe: tracing", within)?;
        tracer.stop_within = within;
        Ok(tracer)
    }

    pub(super) fn bpftrace() -> Result<Tracer> {
        let mut command = Command::new("bpftrace");
        command.args(["-e", BPFTRACE_TCPSTATES]);
        Tracer::start(command, "Attaching")
    }

    /// Starts `command` and waits until a line starting with `ready` appears on either output.
    pub(super) fn start(command: Command, ready: &'static str) -> Result<Tracer> {
        Tracer::start_within(command, ready, READY_WITHIN)
    }

    fn start_within(mut command: Command, ready: &'static str, within: Duration) -> Result<Tracer> {
        let started = Instant::now();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let stdout = child.stdout.take().context("no stdout")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (counted_tx, counted) = mpsc::channel();
        let ready_out = ready_tx.clone();
        thread::spawn(move || {
            // Count transition lines; the last line of probe's JSON is its summary. This
            // thread shares the machine with the workload: it reads bytes into one buffer (no
            // String, no UTF-8 check per line) and looks closer only at the rare other lines.
            let mut counted = Counted::default();
            let mut stdout = BufReader::with_capacity(1 << 16, stdout);
            let mut line = Vec::new();
            while matches!(stdout.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                if line.starts_with(b"{\"type\":\"transition\"") {
                    counted.transitions += 1;
                } else {
                    let text = String::from_utf8_lossy(&line);
                    if text.starts_with(ready) {
                        let _ = ready_out.send(());
                    } else if text.starts_with("{\"type\":\"summary\"") {
                        counted.lost += summary_count(&text, "lost_events");
                        counted.lines_dropped = summary_count(&text, "transition_lines_dropped");
                    } else if let Some(dropped) = dropped_count(&text) {
                        counted.lost += dropped;
                    } else {
                        counted.transitions += 1;
                    }
                }
                line.clear();
            }
            let _ = counted_tx.send(counted);
        });
        // bpftrace says what its perf buffer dropped, `Lost 123 events` (0.17: on stdout).
        let dropped = Arc::new(AtomicU64::new(0));
        let dropped_by_tracer = Arc::clone(&dropped);
        // What it said before it was ready: why, should it never be.
        let (said_tx, said) = mpsc::channel();
        thread::spawn(move || {
            let mut starting = true;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with(ready) {
                    starting = false;
                    let _ = ready_tx.send(());
                }
                if let Some(count) = dropped_count(&line) {
                    dropped_by_tracer.fetch_add(count, Ordering::Relaxed);
                }
                if starting {
                    let _ = said_tx.send(line);
                }
            }
        });
        if ready_rx.recv_timeout(within).is_err() {
            let _ = child.kill();
            let said: Vec<String> = said.try_iter().collect();
            bail!("{command:?} did not start; it said:\n{}", said.join("\n"));
        }
        Ok(Tracer {
            child,
            counted,
            dropped,
            ready_after: started.elapsed(),
            stop_within: STOP_WITHIN,
        })
    }

    /// Stops it; returns (transitions, lost, CPU seconds, peak RSS KiB).
    /// Stops the tracer, noting what it cost in `run`.
    pub(super) fn stop(mut self, run: &mut Run) -> Result<()> {
        // Let it drain what the workload's last connections produced.
        thread::sleep(Duration::from_millis(300));
        let pid = self.child.id();
        run.cpu_seconds = cpu_seconds(pid)?;
        run.peak_rss_kib = peak_rss_kib(pid)?;
        (run.program_runs, run.program_ns) = bpf_program_stats(pid);
        // bpftrace can miss a SIGINT that lands while it sets up: say it again every second
        // until it listens, and end it for good if it never does.
        let asked = Instant::now();
        let mut said = None;
        while self.child.try_wait()?.is_none() {
            if asked.elapsed() >= self.stop_within {
                eprintln!(
                    "xtask: {pid} did not stop within {:?} of SIGINT: killed, what it lost unknown",
                    self.stop_within
                );
                // SAFETY: signalling our own child, which has not been reaped yet.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                break;
            }
            if said.is_none_or(|at: Instant| at.elapsed() >= Duration::from_secs(1)) {
                // SAFETY: as above.
                unsafe { libc::kill(pid as i32, libc::SIGINT) };
                said = Some(Instant::now());
            }
            thread::sleep(Duration::from_millis(100));
        }
        self.child.wait()?;
        let counted = self
            .counted
            .recv_timeout(Duration::from_secs(60))
            .context("the tracer's output did not end")?;
        run.transitions = counted.transitions;
        run.lost = counted.lost + self.dropped.load(Ordering::Relaxed);
        run.lines_dropped = counted.lines_dropped;
        Ok(())
    }
}

/// Builds the Go HTTP churn (`go-churn/main.go`) into the target directory, installing Go
/// first when it is missing.
pub(super) fn build_go_churn() -> Result<PathBuf> {
    if !crate::cmd::tool_exists("go") {
        crate::toolchain::apt_install(&["golang-go"])?;
    }
    let root = crate::build::workspace_root();
    let binary = root.join("target").join("bench").join("go-churn");
    crate::cmd::run(
        Command::new("go")
            .args(["build", "-o"])
            .arg(&binary)
            .arg(".")
            .current_dir(root.join("xtask/src/bench/go-churn"))
            .env(
                "GOCACHE",
                root.join("target").join("bench").join("go-cache"),
            )
            .env("GOFLAGS", "-buildvcs=false")
            .env("CGO_ENABLED", "0"),
    )
    .context("cannot build the Go workload")?;
    Ok(binary)
}

fn lines_of(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// `Lost 123 events` -> 123.
fn dropped_count(line: &str) -> Option<u64> {
    line.strip_prefix("Lost ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A count in probe's JSON summary (0 when it is absent, as `transition_lines_dropped` is
/// when none were).
fn summary_count(line: &str, name: &str) -> u64 {
    line.split(&format!("\"{name}\":"))
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_probes_summary_and_absent_ones_are_zero() {
        let summary = r#"{"type":"summary","lost_events":12,"transition_lines_dropped":345,"untracked":{"owner_map_full":0}}"#;
        assert_eq!(summary_count(summary, "lost_events"), 12);
        assert_eq!(summary_count(summary, "transition_lines_dropped"), 345);
        let summary = r#"{"type":"summary","lost_events":0}"#;
        assert_eq!(summary_count(summary, "lost_events"), 0);
        assert_eq!(summary_count(summary, "transition_lines_dropped"), 0);
    }

    #[test]
    fn a_process_named_like_a_count_does_not_change_it() {
        // The open connections come before the counts; a name is JSON-escaped, so its quotes
        // never stand bare beside the name the way a key's do.
        let summary = r#"{"type":"summary","open":[{"process":"\"lost_events\":9","symbol":"lost_events"}],"lost_events":0}"#;
        assert_eq!(summary_count(summary, "lost_events"), 0);
    }
}
