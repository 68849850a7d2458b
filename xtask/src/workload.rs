//! The demo's two sides, over real loopback sockets: a keep-alive HTTP server that closes idle
//! connections, like most servers do, and a client with the classic Go leak (a new client per
//! request, the response never closed), or its fixed twin.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

const BODY: &str = "hello from the demo server\n";

/// Serves `listener` forever: HTTP/1.1 keep-alive, closing a connection that stays idle for
/// `idle_timeout` (as Go's `http.Server{IdleTimeout}` or nginx's `keepalive_timeout` do).
pub fn serve(listener: TcpListener, idle_timeout: Duration) {
    for stream in listener.incoming().flatten() {
        thread::spawn(move || {
            let _ = serve_connection(stream, idle_timeout);
        });
    }
}

fn serve_connection(stream: TcpStream, idle_timeout: Duration) -> std::io::Result<()> {
    stream.set_read_timeout(Some(idle_timeout))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        // Read one request head; a timeout or EOF ends the connection (server closes first).
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
        }
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{BODY}",
            BODY.len()
        )?;
    }
}

/// What the client does with each connection once it has its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// Keeps every connection: the response body is never closed, the client never reused.
    Leaky,
    /// Closes each connection when done with the response.
    Fixed,
}

/// Makes `requests` requests to `server`, one connection each, `interval` apart, then waits
/// `hold` before exiting (which finally closes whatever it leaked).
pub fn client(
    server: SocketAddr,
    requests: usize,
    interval: Duration,
    hold: Duration,
    kind: ClientKind,
) -> Result<()> {
    let mut leaked = Vec::new();
    for _ in 0..requests {
        let mut stream =
            TcpStream::connect(server).with_context(|| format!("cannot connect to {server}"))?;
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: {server}\r\nConnection: keep-alive\r\n\r\n"
        )?;
        read_response(&mut stream)?;
        match kind {
            ClientKind::Leaky => leaked.push(stream),
            ClientKind::Fixed => drop(stream),
        }
        thread::sleep(interval);
    }
    thread::sleep(hold);
    Ok(())
}

fn read_response(stream: &mut TcpStream) -> Result<()> {
    let mut reader = BufReader::new(stream);
    let mut length = None;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("the server closed before answering");
        }
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length.context("the response has no Content-Length")?];
    reader.read_exact(&mut body)?;
    Ok(())
}
