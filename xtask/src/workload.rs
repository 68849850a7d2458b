//! The demo's two sides, over real loopback sockets: a keep-alive HTTP server that closes idle
//! connections, like most servers do, and a client with the classic Go leak (a new client per
//! request, the response never closed), or its fixed twin.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrStorage, bind, connect, setsockopt,
    socket, sockopt,
};

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

/// The benchmark's workload: `connections` loopback connections, made by `concurrency` client
/// threads against a server in this same process (so each connection makes ten state transitions
/// of this process: five on each side). Each client connects, sends a byte, reads the reply and
/// closes first. Returns the connections per second.
pub fn churn(connections: usize, concurrency: usize) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    let server = listener.local_addr()?;
    // A fixed pool of server threads, each accepting in turn: no thread is created per
    // connection, so the work measured is the connections'.
    for _ in 0..concurrency {
        let listener = listener.try_clone()?;
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                answer_and_close(stream);
            }
        });
    }
    let started = std::time::Instant::now();
    let per_client = connections.div_ceil(concurrency);
    let clients: Vec<_> = (0..concurrency)
        .map(|client| {
            let source = client_address(client);
            thread::spawn(move || -> std::io::Result<()> {
                for _ in 0..per_client {
                    let mut stream = connect_from(source, server)?;
                    stream.write_all(b"?")?;
                    let mut reply = [0u8; 1];
                    stream.read_exact(&mut reply)?;
                }
                Ok(())
            })
        })
        .collect();
    for client in clients {
        client
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?
            .context("a client failed")?;
    }
    Ok((per_client * concurrency) as f64 / started.elapsed().as_secs_f64())
}

/// The benchmark's process churn: `processes` short-lived clients (this binary again, run as
/// `connect-once`) against a server in this process, one after the other, each making one
/// connection and exiting, as a shell loop of `curl` does. Every connection is then the first
/// of its process, so probe copies its user stack (see probe-ebpf's `stack_copy`) at every
/// connect. Returns the connections per second.
pub fn process_churn(processes: usize) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    let server = listener.local_addr()?;
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            answer_and_close(stream);
        }
    });
    let xtask = std::env::current_exe().context("cannot find the xtask binary")?;
    let started = std::time::Instant::now();
    for _ in 0..processes {
        let status = std::process::Command::new(&xtask)
            .args(["connect-once", "--server", &server.to_string()])
            .status()
            .context("cannot start a client process")?;
        if !status.success() {
            bail!("a client process failed: {status}");
        }
    }
    Ok(processes as f64 / started.elapsed().as_secs_f64())
}

/// One connection to `server` (a byte each way, this side closing first): a client process of
/// [`process_churn`].
pub fn connect_once(server: SocketAddr) -> Result<()> {
    let mut stream =
        TcpStream::connect(server).with_context(|| format!("cannot connect to {server}"))?;
    stream.write_all(b"?")?;
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply)?;
    Ok(())
}

/// The loopback address client `client` of the churn connects from: one of its own, because
/// each source address has its own ephemeral ports. From one address, the churn reuses each of
/// the 28,232 ports about once a second, while the TIME_WAIT socket of its last connection still
/// holds it, and every connect searched the range for a port it may take. That search took half
/// the workload's time, and how long it took depended on how many TIME_WAIT sockets the runs
/// before it had left (the kernel stops making them past `tcp_max_tw_buckets`).
fn client_address(client: usize) -> Ipv4Addr {
    let first = u32::from(Ipv4Addr::new(127, 1, 0, 1));
    Ipv4Addr::from(first + client as u32)
}

/// A connection to `server` from `source` (port chosen at connect, for the 4-tuple).
fn connect_from(source: Ipv4Addr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // Without it, bind would pick a port for the address alone, and keep it from every other
    // destination: the connect picks it instead.
    setsockopt(&socket, sockopt::IpBindAddressNoPort, &true)?;
    bind(
        socket.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(source, 0)),
    )?;
    connect(socket.as_raw_fd(), &SockaddrStorage::from(server))?;
    Ok(TcpStream::from(socket))
}

fn answer_and_close(mut stream: TcpStream) {
    let mut request = [0u8; 1];
    if stream.read_exact(&mut request).is_ok() && stream.write_all(b"!").is_ok() {
        // Wait for the client's close, then close too.
        let _ = stream.read(&mut request);
    }
}

/// Waits for a `go` line on stdin (so a tracer can attach first).
pub fn wait_for_go() -> Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim() != "go" {
        bail!("expected `go` on stdin, got {line:?}");
    }
    Ok(())
}

/// Opens `pairs` loopback connections (two open sockets each, both in this process) across
/// several server ports, then holds them until stdin closes.
pub fn hold_open(pairs: usize) -> Result<()> {
    raise_fd_limit(pairs * 2 + 64)?;
    wait_for_go()?;
    // Spread over ports so that the client side does not run out of ephemeral ports.
    let listeners: Vec<TcpListener> = (0..pairs.div_ceil(20_000).max(1))
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    let mut held = Vec::with_capacity(pairs * 2);
    for (i, listener) in listeners.iter().cycle().take(pairs).enumerate() {
        let client = TcpStream::connect(listener.local_addr()?)
            .with_context(|| format!("connection {i} of {pairs}"))?;
        let (accepted, _) = listener.accept()?;
        held.push(client);
        held.push(accepted);
    }
    println!("ready {}", held.len());
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink)? > 0 {}
    Ok(())
}

/// The hard limit of open files of this process (raising past it needs CAP_SYS_RESOURCE).
pub fn fd_hard_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one valid struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    usize::try_from(limit.rlim_max).unwrap_or(usize::MAX)
}

fn raise_fd_limit(wanted: usize) -> Result<()> {
    if wanted > fd_hard_limit() {
        bail!(
            "{wanted} open files are more than this process may have ({}): use more holders",
            fd_hard_limit()
        );
    }
    let limit = libc::rlimit {
        rlim_cur: wanted as libc::rlim_t,
        rlim_max: fd_hard_limit() as libc::rlim_t,
    };
    // SAFETY: setrlimit reads one valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        bail!(
            "cannot raise the open file limit to {wanted}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
