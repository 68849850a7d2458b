//! The metrics endpoint: `GET /metrics` over HTTP/1, kept serving whatever clients do. A
//! flood of idle connections or running out of file descriptors must not take it down for the
//! rest of a run: connections are capped, idle ones time out, and a failed accept is retried
//! after a pause.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use super::Metrics;

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// A client has this long to send its request headers, each time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lives longer than this (a scraper reconnects).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// The longest pause between two failed accepts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Binds the metrics address (before probe drops its privileges and starts tracing, so a busy
/// port is an error at once).
pub fn bind(address: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address).map_err(|error| {
        let hint = match error.kind() {
            io::ErrorKind::AddrInUse => {
                "another process is using that port: pick another with --metrics-addr"
            }
            io::ErrorKind::AddrNotAvailable => {
                "this host has no such address: give one of its own (see `ip addr`), 127.0.0.1 \
                 or 0.0.0.0"
            }
            io::ErrorKind::PermissionDenied => {
                "ports below 1024 need root or CAP_NET_BIND_SERVICE: pick a higher one"
            }
            _ => "pick another address with --metrics-addr",
        };
        anyhow::Error::new(error).context(format!("cannot serve metrics on {address}: {hint}"))
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|error| anyhow::Error::new(error).context("cannot set up the metrics socket"))?;
    Ok(listener)
}

/// Serves `GET /metrics` until the runtime stops. Errors of one connection, or of one accept
/// (EMFILE when the fd limit is reached), never stop it.
pub async fn serve(listener: std::net::TcpListener, metrics: Metrics) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = Duration::from_millis(10);
    loop {
        // Waits for a free slot before accepting: over the cap, clients wait in the backlog.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return Ok(());
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(10);
                stream
            }
            Err(error) => {
                if backoff == Duration::from_millis(10) {
                    log::warn!(
                        "the metrics endpoint cannot accept a connection ({error}); retrying"
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, hyper::Error>(respond(&request, &metrics)) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Err(error)) => log::debug!("metrics connection: {error}"),
                Err(_) => log::debug!("metrics connection closed after {CONNECTION_LIFETIME:?}"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

fn respond(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let mut response = if request.uri().path() == "/metrics" {
        let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
        response.headers_mut().insert(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
                .parse()
                .expect("a valid header value"),
        );
        response
    } else {
        Response::new(Full::new(Bytes::from_static(
            b"probe: metrics are at /metrics\n",
        )))
    };
    if request.uri().path() != "/metrics" {
        *response.status_mut() = StatusCode::NOT_FOUND;
    }
    response
}
