//! What the integration tests share: running the real `probe`, helper processes (this same test
//! binary re-executed in a helper role), loopback servers in the test process, and `ss`.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub type TestResult = Result<(), String>;

/// Fails the test with `message` unless `condition` holds.
pub fn ensure(condition: bool, message: impl FnOnce() -> String) -> TestResult {
    if condition { Ok(()) } else { Err(message()) }
}

/// A running `probe --json`, its NDJSON lines collected as they come.
pub struct Probe {
    child: Child,
    lines: Receiver<Value>,
    seen: Vec<Value>,
    stderr: Arc<Mutex<String>>,
}

impl Probe {
    /// Starts probe with `args` (plus `--json`) and waits until it is attached.
    pub fn start(args: &[&str]) -> Result<Probe, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_probe"))
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start probe: {e}"))?;
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(value) => {
                        let _ = tx.send(value);
                    }
                    Err(e) => {
                        let _ = tx.send(serde_json::json!({"type": "garbage", "line": line, "error": e.to_string()}));
                    }
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready) = mpsc::channel();
        let pipe = child.stderr.take().ok_or("no stderr")?;
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                {
                    let mut all = sink.lock().unwrap();
                    all.push_str(&line);
                    all.push('\n');
                }
                if line.starts_with("probe: tracing") {
                    let _ = ready_tx.send(());
                }
            }
        });
        let mut probe = Probe {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        };
        if ready.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = probe.child.kill();
            return Err(format!("probe did not attach: {}", probe.stderr()));
        }
        Ok(probe)
    }

    /// The process id of probe itself.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What probe wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the records seen so far satisfy `done`; returns them all.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Result<&[Value], String> {
        let deadline = Instant::now() + timeout;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(value) => self.seen.push(value),
                Err(_) => {
                    return Err(format!(
                        "timed out waiting for {what}; probe printed {} records:\n{}\nstderr: {}",
                        self.seen.len(),
                        render(&self.seen),
                        self.stderr()
                    ));
                }
            }
        }
        Ok(&self.seen)
    }

    /// Stops probe with SIGINT (unless it already stopped) and returns every record, the summary
    /// last, checking that probe exited 0.
    pub fn stop(self) -> Result<Vec<Value>, String> {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.finish()
    }

    /// Waits for probe to exit on its own and returns every record, the summary last.
    pub fn finish(mut self) -> Result<Vec<Value>, String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Err(format!("probe did not exit; stderr: {}", self.stderr()));
            }
            thread::sleep(Duration::from_millis(20));
        };
        while let Ok(value) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(value);
        }
        ensure(status.success(), || {
            format!("probe exited with {status}; stderr: {}", self.stderr())
        })?;
        let last = self.seen.last().ok_or("probe printed nothing")?;
        ensure(last["type"] == "summary", || {
            format!(
                "the last record is not the summary:\n{}",
                render(&self.seen)
            )
        })?;
        if let Some(garbage) = self.seen.iter().find(|v| v["type"] == "garbage") {
            return Err(format!("probe printed a line that is not JSON: {garbage}"));
        }
        Ok(std::mem::take(&mut self.seen))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Records of one `type`.
pub fn of_type<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

/// Transition records `old -> new` of process `pid`.
pub fn transitions<'a>(records: &'a [Value], pid: u32, old: &str, new: &str) -> Vec<&'a Value> {
    of_type(records, "transition")
        .into_iter()
        .filter(|r| r["pid"] == pid && r["old"] == old && r["new"] == new)
        .collect()
}

/// Stuck records in `state` of process `pid`.
pub fn stuck<'a>(records: &'a [Value], pid: u32, state: &str) -> Vec<&'a Value> {
    of_type(records, "stuck")
        .into_iter()
        .filter(|r| r["pid"] == pid && r["state"] == state)
        .collect()
}

/// Pretty lines for failure messages.
pub fn render(records: &[Value]) -> String {
    records
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A helper process: this test binary run as `helper ROLE ARGS...`, talking over stdin/stdout.
pub struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Helper {
    /// Starts a helper in `role`.
    pub fn start(role: &str, args: &[&str]) -> Result<Helper, String> {
        let mut command = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        command.arg("helper").arg(role).args(args);
        Helper::spawn(command, role)
    }

    /// Starts a helper in `role` inside network namespace `namespace` (`ip netns exec` execs
    /// it, so the helper keeps the pid of the process started here).
    pub fn start_in(namespace: &str, role: &str, args: &[&str]) -> Result<Helper, String> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", namespace])
            .arg(std::env::current_exe().map_err(|e| e.to_string())?)
            .arg("helper")
            .arg(role)
            .args(args);
        Helper::spawn(command, role)
    }

    fn spawn(mut command: Command, role: &str) -> Result<Helper, String> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start helper {role}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(Helper {
            child,
            stdin,
            stdout,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one line to the helper.
    pub fn say(&mut self, line: &str) -> TestResult {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{line}").map_err(|e| e.to_string())
    }

    /// Reads the helper's next line (it answers `ready`, `done`, a port...).
    pub fn hear(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.is_empty() {
            return Err("the helper exited early".into());
        }
        Ok(line.trim().to_string())
    }

    /// Closes the helper's stdin (its cue to exit) and waits for it.
    pub fn finish(mut self) -> TestResult {
        drop(self.stdin.take());
        let status = self.child.wait().map_err(|e| e.to_string())?;
        ensure(status.success(), || format!("helper exited with {status}"))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a loopback server in the test process does with each accepted connection.
#[derive(Clone, Copy)]
pub enum ServerMode {
    /// Closes at once: its clients end up in CLOSE_WAIT.
    CloseAtOnce,
    /// Holds every connection open (until the test process exits).
    Hold,
    /// Reads until the client closes, then closes too (a clean close by the client).
    CloseAfterPeer,
}

/// Starts a server on `bind` (port 0) in a thread; returns its address.
pub fn server(bind: &str, mode: ServerMode) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(bind).map_err(|e| format!("cannot bind {bind}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            match mode {
                ServerMode::CloseAtOnce => drop(stream),
                ServerMode::Hold => held.push(stream),
                ServerMode::CloseAfterPeer => {
                    thread::spawn(move || {
                        let mut buf = [0u8; 64];
                        let mut stream = stream;
                        while matches!(std::io::Read::read(&mut stream, &mut buf), Ok(n) if n > 0) {
                        }
                    });
                }
            }
        }
    });
    Ok(addr)
}

/// Connects from the (untraced) test process.
pub fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))
}

/// Lines of `ss -tanpH state STATE` that belong to process `pid`: the independent oracle. A
/// netlink dump is no atomic snapshot (it can skip entries while other sockets come and go), so
/// this is the union of a few dumps.
pub fn ss_sockets_of(pid: u32, state: &str) -> Result<Vec<String>, String> {
    let needle = format!("pid={pid},");
    let mut lines: Vec<String> = Vec::new();
    for _ in 0..3 {
        let output = Command::new("ss")
            .args(["-tanpH", "state", state])
            .output()
            .map_err(|e| format!("cannot run ss (install iproute2): {e}"))?;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if line.contains(&needle) && !lines.iter().any(|l| l == line) {
                lines.push(line.to_string());
            }
        }
    }
    Ok(lines)
}

/// Lines of `ss -tanH state STATE` (any owner: TIME_WAIT sockets have none).
pub fn ss_state(state: &str) -> Result<String, String> {
    let output = Command::new("ss")
        .args(["-tanH", "state", state])
        .output()
        .map_err(|e| format!("cannot run ss (install iproute2): {e}"))?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The BPF map types (`map_type` numbers) of the maps process `pid` holds open.
pub fn bpf_map_types(pid: u32) -> Result<Vec<u32>, String> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).map_err(|e| e.to_string())?;
    Ok(fds
        .filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("map_type:"))
                .and_then(|value| value.trim().parse().ok())
        })
        .collect())
}

/// A helper client against a fresh loopback server on `bind`, traced by probe (with `probe_args`
/// besides `--pid`) from before it touches the network; returns once the helper said `answer`.
pub fn traced_client(
    bind: &str,
    mode: ServerMode,
    role: &str,
    count: &str,
    probe_args: &[&str],
    answer: &str,
) -> Result<(Helper, Probe, SocketAddr), String> {
    let addr = server(bind, mode)?;
    let mut client = Helper::start(role, &[&addr.to_string(), count])?;
    let pid = client.pid().to_string();
    let mut args = vec!["--pid", pid.as_str()];
    args.extend_from_slice(probe_args);
    let probe = Probe::start(&args)?;
    client.say("go")?;
    let heard = client.hear()?;
    ensure(heard == answer, || {
        format!("the {role} helper said {heard:?}, not {answer:?}")
    })?;
    Ok((client, probe, addr))
}

/// An idle process to trace (`sleep`), killed when dropped.
pub struct Idle(Child);

impl Idle {
    pub fn start() -> Result<Idle, String> {
        Command::new("sleep")
            .arg("60")
            .stdout(Stdio::null())
            .spawn()
            .map(Idle)
            .map_err(|e| format!("cannot start sleep: {e}"))
    }

    pub fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
