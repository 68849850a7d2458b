//! The real `probe --json`, run as a child, its records collected as they come.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::ensure;

/// A running `probe --json`, its NDJSON lines collected as they come.
pub struct Probe {
    child: Child,
    lines: Receiver<Value>,
    seen: Vec<Value>,
    stderr: Arc<Mutex<String>>,
    /// The thread collecting `stderr`: done once probe exited and it read everything.
    stderr_reader: Option<thread::JoinHandle<()>>,
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
        let stderr_reader = thread::spawn(move || {
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
            stderr_reader: Some(stderr_reader),
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
        self.stop_with(libc::SIGINT)
    }

    /// [`Probe::stop`], and everything probe wrote to stderr (its notes at the summary too).
    pub fn stop_with_stderr(mut self) -> Result<(Vec<Value>, String), String> {
        let stderr = Arc::clone(&self.stderr);
        let reader = self.stderr_reader.take();
        let records = self.stop()?;
        if let Some(reader) = reader {
            let _ = reader.join();
        }
        let stderr = stderr.lock().unwrap().clone();
        Ok((records, stderr))
    }

    /// Stops probe with `signal`, as [`Probe::stop`] does with SIGINT.
    pub fn stop_with(self, signal: i32) -> Result<Vec<Value>, String> {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
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

/// Stuck records of kind `kind` (a state, or RECEIVE_STALLED, SEND_STALLED, ACCEPT_QUEUE_FULL)
/// of process `pid`.
pub fn stuck_kind<'a>(records: &'a [Value], pid: u32, kind: &str) -> Vec<&'a Value> {
    of_type(records, "stuck")
        .into_iter()
        .filter(|r| r["pid"] == pid && r["kind"] == kind)
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
