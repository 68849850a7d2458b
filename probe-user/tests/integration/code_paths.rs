//! Which code opened the stuck connections: user stacks, symbolized.

use crate::harness::{
    Helper, Probe, Role, ServerMode, TestResult, WAIT, bpf_map_types, ensure, render, server, stuck,
};

/// `BPF_MAP_TYPE_STACK_TRACE`.
const STACK_TRACE_MAP: u32 = 7;

/// A process leaking CLOSE_WAIT through two code paths: the summary groups the stuck connections
/// under the function that opened each, with the right counts.
pub fn stuck_connections_are_grouped_by_the_function_that_opened_them() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let mut client = Helper::start(&Role::LeakTwoWays {
        server: addr,
        alpha: 3,
        beta: 2,
    })?;
    let pid = client.pid();
    let mut probe = Probe::start(&["--pid", &pid.to_string(), "--close-wait-after", "1s"])?;
    ensure(
        bpf_map_types(probe.pid())?.contains(&STACK_TRACE_MAP),
        || "probe has no stack map".into(),
    )?;
    client.say("go")?;
    ensure(client.hear()? == "ready", || "client not ready".into())?;
    probe.wait_until("5 CLOSE_WAIT alerts", WAIT, |r| {
        stuck(r, pid, "CLOSE_WAIT").len() >= 5
    })?;
    let records = probe.stop()?;
    let summary = records.last().unwrap();
    let groups = summary["stuck_by_code_path"]
        .as_array()
        .ok_or("no groups")?;
    let count_of = |function: &str| -> Option<u64> {
        groups.iter().find_map(|group| {
            let frames = group["opened_at"].as_array()?;
            frames
                .iter()
                .any(|f| f["function"].as_str().is_some_and(|n| n.contains(function)))
                .then(|| group["connections"].as_u64())?
        })
    };
    ensure(
        groups.len() == 2
            && count_of("open_leaky_connection_alpha") == Some(3)
            && count_of("open_leaky_connection_beta") == Some(2),
        || format!("groups: {}", render(groups)),
    )?;
    client.finish()
}

/// `--no-stacks`: the loaded program has no stack map, and no record carries `opened_at`.
pub fn without_stacks_there_is_no_stack_map_and_no_opened_at() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let mut client = Helper::start(&Role::LeakTwoWays {
        server: addr,
        alpha: 1,
        beta: 1,
    })?;
    let pid = client.pid();
    let mut probe = Probe::start(&[
        "--no-stacks",
        "--pid",
        &pid.to_string(),
        "--close-wait-after",
        "1s",
    ])?;
    let maps = bpf_map_types(probe.pid())?;
    ensure(!maps.is_empty() && !maps.contains(&STACK_TRACE_MAP), || {
        format!("probe's BPF maps: {maps:?}")
    })?;
    client.say("go")?;
    ensure(client.hear()? == "ready", || "client not ready".into())?;
    probe.wait_until("2 CLOSE_WAIT alerts", WAIT, |r| {
        stuck(r, pid, "CLOSE_WAIT").len() >= 2
    })?;
    let records = probe.stop()?;
    let text = render(&records);
    ensure(!text.contains("opened_at"), || text.clone())?;
    client.finish()
}
