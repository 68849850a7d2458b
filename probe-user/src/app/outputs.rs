//! The sinks the configuration asks for, behind the one filter they share.

use std::io::{self, BufWriter, IsTerminal};

use crate::{
    cli::{Config, View},
    clock::WallClock,
    output::{
        Key, Outputs,
        filter::Filtered,
        json::JsonSink,
        live::LiveView,
        metrics::{self, Metrics},
        report::Report,
        text::TextSink,
    },
};

/// The keys the live view reads, when there is one.
pub type KeysReceiver = tokio::sync::mpsc::UnboundedReceiver<Key>;

/// The sinks, and the live view's keys when there is one. `targets` names what is traced, for
/// the headers.
pub fn make(
    config: &Config,
    targets: String,
    metrics_listener: Option<std::net::TcpListener>,
) -> anyhow::Result<(Filtered<Outputs>, Option<KeysReceiver>)> {
    let clock = WallClock::now();
    // The report file and the metrics server first: their errors and notes go to a terminal
    // the live view has not taken over yet.
    let report = match &config.report {
        Some(path) => Some(Report::create(path, targets.clone(), clock)?),
        None => None,
    };
    let metrics = metrics_listener.map(|listener| {
        if let Ok(address) = listener.local_addr() {
            eprintln!("probe: serving metrics at http://{address}/metrics");
        }
        let metrics = Metrics::new(config.metrics_cardinality);
        let server = metrics.clone();
        tokio::spawn(async move {
            if let Err(error) = metrics::serve(listener, server).await {
                log::warn!("the metrics endpoint stopped: {error}");
            }
        });
        metrics
    });
    let mut outputs = Outputs::default();
    let mut keys = None;
    let stdout = io::stdout();
    let terminal = stdout.is_terminal();
    if config.view == View::Live && !terminal {
        eprintln!(
            "probe: --live needs a terminal; standard output is not one, so plain lines follow"
        );
    }
    if config.view == View::Live && terminal {
        let (live, received) = LiveView::start(targets, clock)?;
        outputs.push(Box::new(live));
        keys = Some(received);
    } else {
        // Large enough that a burst of events makes few writes; flushed after every batch anyway.
        let out = BufWriter::with_capacity(64 * 1024, stdout);
        if config.view == View::Json {
            outputs.push(Box::new(JsonSink::new(out, clock)));
        } else {
            outputs.push(Box::new(TextSink::new(
                out,
                clock,
                terminal,
                config.transitions,
            )));
        }
    }
    if let Some(report) = report {
        outputs.push(Box::new(report));
    }
    if let Some(metrics) = metrics {
        outputs.push(Box::new(metrics));
    }
    // One filter for all: the table is filtered once per tick, not once per sink.
    Ok((Filtered::new(config.filter.clone(), outputs), keys))
}
