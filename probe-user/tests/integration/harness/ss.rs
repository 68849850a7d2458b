//! `ss`, the independent oracle, and what the kernel says of probe's BPF objects.

use std::{process::Command, thread, time::Duration};

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

/// Waits until `ss` shows `count` sockets in `state` for `pid`; returns its lines.
pub fn wait_for_ss(pid: u32, state: &str, count: usize) -> Result<Vec<String>, String> {
    for _ in 0..100 {
        let lines = ss_sockets_of(pid, state)?;
        if lines.len() == count {
            return Ok(lines);
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!("ss never showed {count} {state} sockets for {pid}"))
}
