//! What the filters show.

use std::{thread, time::Duration};

use serde_json::Value;

use crate::harness::{
    Helper, Probe, Role, ServerMode, TestResult, WAIT, ensure, of_type, render, server,
};

/// `--port`: two traced clients talk to two servers; only the connections to the chosen port are
/// shown, in every kind of record.
pub fn filters_show_only_what_was_asked() -> TestResult {
    let wanted = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let other = server("127.0.0.1:0", ServerMode::CloseAtOnce)?;
    let mut first = Helper::start(&Role::HoldClients {
        server: wanted,
        count: 2,
    })?;
    let mut second = Helper::start(&Role::HoldClients {
        server: other,
        count: 3,
    })?;
    let (a, b) = (first.pid().to_string(), second.pid().to_string());
    let port = wanted.port().to_string();
    let mut probe = Probe::start(&[
        "--pid",
        &a,
        "--pid",
        &b,
        "--port",
        &port,
        "--close-wait-after",
        "1s",
    ])?;
    for helper in [&mut first, &mut second] {
        helper.say("go")?;
        ensure(helper.hear()? == "ready", || "client not ready".into())?;
    }
    probe.wait_until("2 alerts", WAIT, |r| of_type(r, "stuck").len() >= 2)?;
    thread::sleep(Duration::from_millis(1500));
    let records = probe.stop()?;
    let summary = records.last().unwrap();
    let shown: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] != "summary")
        .chain(summary["open"].as_array().into_iter().flatten())
        .collect();
    ensure(
        !shown.is_empty() && shown.iter().all(|r| r["dport"] == wanted.port()),
        || format!("records of another port:\n{}", render(&records)),
    )?;
    ensure(
        of_type(&records, "stuck").len() == 2 && summary["counts"]["CLOSE_WAIT"] == 2,
        || format!("summary: {summary}"),
    )?;
    first.finish()?;
    second.finish()
}
