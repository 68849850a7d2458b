//! Scraping probe's metrics endpoint as Prometheus does.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use super::ensure;

/// What Prometheus 2.42 asks for: OpenMetrics first.
pub const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// `GET /metrics` over a fresh plain connection, as Prometheus sends it; the body of a 200
/// OpenMetrics response.
pub fn scrape(address: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(address).map_err(|e| format!("cannot connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nAccept: {OPENMETRICS}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("cannot read the response: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {response}"))?;
    ensure(head.starts_with("HTTP/1.1 200"), || {
        format!("scrape failed: {head}")
    })?;
    ensure(head.contains("openmetrics-text"), || {
        format!("wrong content type: {head}")
    })?;
    Ok(body.to_string())
}

/// The value of the sample `series` (name and labels, exactly as exposed).
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

/// A free port on loopback (bound and released).
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}
