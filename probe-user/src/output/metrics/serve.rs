//! The metrics endpoint: `GET /metrics` over HTTP/1 (over TLS, behind basic auth, as the web
//! configuration file says), kept serving whatever clients do. It runs on a thread of its own,
//! so that no client (a flood of handshakes, of wrong passwords) can slow the event loop down;
//! a flood of idle connections or running out of file descriptors must not take it down for
//! the rest of a run: connections are capped, idle ones and slow handshakes time out, a
//! client denied is disconnected, the connections not yet served make room for new ones
//! (clients without the password cannot keep a scraper out), and a failed accept is retried
//! after a pause.

use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{
        ACCEPT, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE,
    },
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::Semaphore,
    task::AbortHandle,
};
use tokio_rustls::TlsAcceptor;

use super::{
    Metrics,
    exposition::Format,
    web::{BasicAuth, Verdict, WebConfig},
};

/// Connections served at once; past it, the oldest that has not been served the metrics
/// (see `Unproven`) is closed for a newcomer.
const MAX_CONNECTIONS: usize = 64;
/// A client has this long to send its request headers, each time, and to finish a TLS
/// handshake.
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

/// Serves `GET /metrics` on a thread of its own until probe exits.
pub fn spawn(
    listener: std::net::TcpListener,
    metrics: Metrics,
    web: Option<WebConfig>,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("probe-metrics".into())
        .spawn(move || {
            if let Err(error) = runtime.block_on(serve(listener, metrics, web)) {
                log::warn!("the metrics endpoint stopped: {error}");
            }
        })?;
    Ok(())
}

/// Serves `GET /metrics`. Errors of one connection, or of one accept (EMFILE when the fd
/// limit is reached), never stop it.
async fn serve(
    listener: std::net::TcpListener,
    metrics: Metrics,
    web: Option<WebConfig>,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let tls = web
        .as_ref()
        .and_then(|web| web.tls.clone())
        .map(TlsAcceptor::from);
    let users = web.and_then(|web| web.users);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let unproven = Arc::new(Mutex::new(Unproven::default()));
    let mut backoff = Duration::from_millis(10);
    loop {
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
        // Over the cap, the connection that has gone longest without a good request makes
        // room: stalled handshakes and denied clients cannot keep a scraper out. Connections
        // that were served keep their slots; if all are, the newcomer is refused.
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) if lock(&unproven).evict_oldest() => {
                match Arc::clone(&slots).acquire_owned().await {
                    Ok(slot) => slot,
                    Err(_) => return Ok(()),
                }
            }
            Err(_) => {
                log::debug!("metrics connection refused: {MAX_CONNECTIONS} served at once");
                continue;
            }
        };
        let (metrics, users, tls) = (metrics.clone(), users.clone(), tls.clone());
        let id = lock(&unproven).next_id();
        let proven = {
            let unproven = Arc::clone(&unproven);
            move || lock(&unproven).proven(id)
        };
        let task = tokio::spawn(async move {
            let served = async {
                match tls {
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream));
                        match handshake.await {
                            Ok(Ok(stream)) => {
                                serve_connection(stream, metrics, users, proven).await
                            }
                            Ok(Err(error)) => log::debug!("metrics TLS handshake: {error}"),
                            Err(_) => log::debug!("metrics TLS handshake timed out"),
                        }
                    }
                    None => serve_connection(stream, metrics, users, proven).await,
                }
            };
            if tokio::time::timeout(CONNECTION_LIFETIME, served)
                .await
                .is_err()
            {
                log::debug!("metrics connection closed after {CONNECTION_LIFETIME:?}");
            }
            drop(slot);
        });
        let mut unproven = lock(&unproven);
        unproven.admit(id, task.abort_handle());
        unproven.forget_finished();
    }
}

fn lock(unproven: &Mutex<Unproven>) -> std::sync::MutexGuard<'_, Unproven> {
    unproven.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The connections that have not yet had a request answered with the metrics (handshaking,
/// silent, or denied), oldest first: the ones to close when the endpoint is full.
#[derive(Default)]
struct Unproven {
    connections: VecDeque<(u64, AbortHandle)>,
    next: u64,
}

impl Unproven {
    fn next_id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn admit(&mut self, id: u64, task: AbortHandle) {
        self.connections.push_back((id, task));
    }

    /// Connection `id` was served the metrics: it is a scraper's, and keeps its slot.
    fn proven(&mut self, id: u64) {
        self.connections.retain(|(other, _)| *other != id);
    }

    /// Closes the oldest unproven connection (its slot is free once its task is dropped);
    /// false when there is none.
    fn evict_oldest(&mut self) -> bool {
        self.forget_finished();
        match self.connections.pop_front() {
            Some((_, task)) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    fn forget_finished(&mut self) {
        self.connections.retain(|(_, task)| !task.is_finished());
    }
}

/// Serves HTTP/1 requests on one connection (plain or TLS); `proven` is called once a request
/// is answered with the metrics. A denied request closes the connection: a client without the
/// password does not get to hold it.
async fn serve_connection<S>(
    stream: S,
    metrics: Metrics,
    users: Option<Arc<BasicAuth>>,
    proven: impl Fn() + Send + Sync + 'static,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let proven = Arc::new(proven);
    let service = service_fn(move |request: Request<Incoming>| {
        let (metrics, users, proven) = (metrics.clone(), users.clone(), Arc::clone(&proven));
        async move {
            let verdict = match &users {
                Some(users) => {
                    let header = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
                    users.check(header).await
                }
                None => Verdict::Allowed,
            };
            Ok::<_, hyper::Error>(match verdict {
                Verdict::Allowed => {
                    proven();
                    respond(&request, &metrics)
                }
                Verdict::Denied => unauthorized(),
            })
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(error) = connection.await {
        log::debug!("metrics connection: {error}");
    }
}

/// 401, asking for basic auth.
fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"Unauthorized\n")));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    headers.insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Basic realm="probe""#),
    );
    // hyper closes the connection after a response that says so.
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

fn respond(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = Response::new(Full::new(Bytes::from_static(
            b"probe: metrics are read with GET\n",
        )));
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if request.uri().path() != "/metrics" {
        let mut response = Response::new(Full::new(Bytes::from_static(
            b"probe: metrics are at /metrics\n",
        )));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    let format = Format::negotiate(request.headers().get(ACCEPT).map(|v| v.as_bytes()));
    let mut response = Response::new(Full::new(Bytes::from(format.render(metrics.encode()))));
    response.headers_mut().insert(
        CONTENT_TYPE,
        format.content_type().parse().expect("a valid header value"),
    );
    response
}
