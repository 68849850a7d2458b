//! Network namespaces of the tests' own.

use std::{process::Command, thread, time::Duration};

use super::{TestResult, ensure};

/// A network namespace of the test's own, with loopback up; deleted on drop.
pub struct NetworkNamespace {
    pub name: String,
}

impl NetworkNamespace {
    pub fn create() -> Result<NetworkNamespace, String> {
        let name = format!("probe-test-{}", std::process::id());
        let ip = |args: &[&str]| -> TestResult {
            let status = Command::new("ip")
                .args(args)
                .status()
                .map_err(|e| format!("cannot run ip (install iproute2): {e}"))?;
            ensure(status.success(), || format!("ip {args:?} failed"))
        };
        ip(&["netns", "add", &name])?;
        let namespace = NetworkNamespace { name };
        ip(&["-n", &namespace.name, "link", "set", "lo", "up"])?;
        Ok(namespace)
    }

    /// `ss` inside the namespace: the lines of `pid` in `state`, once there are `count`.
    pub fn ss(&self, pid: u32, state: &str, count: usize) -> Result<Vec<String>, String> {
        let needle = format!("pid={pid},");
        for _ in 0..100 {
            let output = Command::new("ip")
                .args(["netns", "exec", &self.name, "ss", "-tanpH", "state", state])
                .output()
                .map_err(|e| e.to_string())?;
            let lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter(|l| l.contains(&needle))
                .map(str::to_string)
                .collect();
            if lines.len() == count {
                return Ok(lines);
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "ss in {} never showed {count} {state} sockets",
            self.name
        ))
    }
}

impl Drop for NetworkNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
