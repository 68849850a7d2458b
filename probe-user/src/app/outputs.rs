//! The sinks the configuration asks for, behind the one filter they share.

use std::{
    io::{self, IsTerminal},
    net::SocketAddr,
    path::Path,
};

use anyhow::Context;

use crate::{
    cli::{Config, View},
    clock::WallClock,
    output::{
        Key, Outputs,
        filter::Filtered,
        json::JsonSink,
        live::LiveView,
        metrics::{self, Metrics, WebConfig},
        queue::{OutputQueue, Room},
        report::Report,
        text::TextSink,
    },
};

/// The metrics endpoint's socket, bound early, and how to protect it.
pub struct MetricsListener {
    pub listener: std::net::TcpListener,
    pub web: Option<WebConfig>,
}

impl MetricsListener {
    /// Binds `address` and reads the web configuration file, if any (certificates and keys
    /// are often readable by root only: before probe drops its privileges), then says where
    /// the metrics will be, and whether anyone can read them.
    pub fn bind(address: SocketAddr, web_config: Option<&Path>) -> anyhow::Result<Self> {
        let listener = metrics::bind(address)?;
        let web = web_config.map(WebConfig::load).transpose()?;
        let address = listener.local_addr().unwrap_or(address);
        let scheme = web.as_ref().map_or("http", WebConfig::scheme);
        crate::say!("probe: serving metrics at {scheme}://{address}/metrics");
        if !address.ip().is_loopback() && web.is_none() {
            crate::say!(
                "probe: anyone who can reach {address} can read the metrics (process names, \
                 endpoints): protect them with --metrics-web-config (TLS, basic auth) or a \
                 firewall"
            );
        }
        Ok(MetricsListener { listener, web })
    }
}

/// The keys the live view reads, when there is one.
pub type KeysReceiver = tokio::sync::mpsc::UnboundedReceiver<Key>;

/// The sinks, what is made of them.
pub struct Made {
    pub sink: Filtered<Outputs>,
    /// The live view's keys, when there is one.
    pub keys: Option<KeysReceiver>,
    /// How far the reader of the lines on standard output is behind, when they are written.
    pub output_room: Option<Room>,
}

/// The sinks the configuration asks for. `targets` names what is traced, for the headers.
pub fn make(
    config: &Config,
    targets: String,
    metrics_listener: Option<MetricsListener>,
) -> anyhow::Result<Made> {
    let clock = WallClock::now();
    // The report file and the metrics server first: their errors and notes go to a terminal
    // the live view has not taken over yet.
    let report = match &config.report {
        Some(path) => Some(Report::create(path, targets.clone(), clock)?),
        None => None,
    };
    let metrics = match metrics_listener {
        Some(MetricsListener { listener, web }) => {
            let metrics = Metrics::new(config.metrics_cardinality);
            metrics::spawn(listener, metrics.clone(), web)
                .context("cannot start the metrics endpoint's thread")?;
            Some(metrics)
        }
        None => None,
    };
    let mut outputs = Outputs::default();
    let mut keys = None;
    let mut output_room = None;
    let stdout = io::stdout();
    let terminal = stdout.is_terminal();
    if config.view == View::Live && !terminal {
        crate::say!(
            "probe: --live needs a terminal; standard output is not one, so plain lines follow"
        );
    }
    if config.view == View::Live && terminal {
        let (live, received) = LiveView::start(targets, clock)?;
        outputs.push(Box::new(live));
        keys = Some(received);
    } else {
        // Written on a thread of its own: a slow reader drops transition lines, not events.
        let out = OutputQueue::start(stdout).context("cannot start the output thread")?;
        let room = out.room();
        if config.view == View::Json {
            outputs.push(Box::new(
                JsonSink::new(out, clock, config.transitions).with_room(room.clone()),
            ));
        } else {
            outputs.push(Box::new(
                TextSink::new(out, clock, terminal, config.transitions).with_room(room.clone()),
            ));
        }
        output_room = Some(room);
    }
    if let Some(report) = report {
        outputs.push(Box::new(report));
    }
    if let Some(metrics) = metrics {
        outputs.push(Box::new(metrics));
    }
    // One filter for all: the table is filtered once per tick, not once per sink.
    Ok(Made {
        sink: Filtered::new(config.filter.clone(), outputs),
        keys,
        output_room,
    })
}
