//! Helper processes: this test binary re-executed to play a [`Role`], driven over its stdin
//! and stdout.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use super::{TestResult, ensure, roles::Role};

/// This test binary, which plays the helpers' roles.
pub fn this_binary() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| e.to_string())
}

/// A helper process: this test binary run as `helper ROLE ARGS...`, talking over stdin/stdout.
pub struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Helper {
    /// Starts a helper playing `role`.
    pub fn start(role: &Role) -> Result<Helper, String> {
        let mut command = Command::new(this_binary()?);
        command.args(role.args());
        Helper::spawn(command, &format!("{role:?}"))
    }

    /// Starts a program that talks like a helper (a client in another language: it says
    /// `ready`, does its work on `go`, says `done`, exits when its stdin closes).
    pub fn program(command: Command) -> Result<Helper, String> {
        let described = format!("{command:?}");
        Helper::spawn(command, &described)
    }

    /// Starts a helper playing `role` inside network namespace `namespace` (`ip netns exec`
    /// execs it, so the helper keeps the pid of the process started here).
    pub fn start_in(namespace: &str, role: &Role) -> Result<Helper, String> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", namespace])
            .arg(this_binary()?)
            .args(role.args());
        Helper::spawn(command, &format!("{role:?}"))
    }

    fn spawn(mut command: Command, described: &str) -> Result<Helper, String> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start helper {described}: {e}"))?;
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

    /// Reads the port a serving helper listens on (its next line).
    pub fn hear_port(&mut self) -> Result<u16, String> {
        let line = self.hear()?;
        line.parse()
            .map_err(|_| format!("no port from the server: {line:?}"))
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
