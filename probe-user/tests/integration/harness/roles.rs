//! The helper processes' side: this test binary, run as `integration helper ROLE_JSON`, plays
//! one [`Role`] and talks to the test over stdin/stdout (`go` in, `ready`/`done`/ports out; EOF
//! on stdin means exit).

use std::{
    io::{BufRead, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::ensure;

/// What a helper process does.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "kebab-case")]
pub enum Role {
    /// Connects at once, holds a moment, closes, exits: for `probe -- COMMAND`.
    ConnectOnce { server: SocketAddr },
    /// Connects `count` times after `go` and holds every connection until stdin closes.
    HoldClients { server: SocketAddr, count: usize },
    /// Connects and closes at once, `count` times, after `go` (this side closes first).
    CloseClients { server: SocketAddr, count: usize },
    /// Listens on a fresh loopback port (told on stdout) and closes what it accepts at once.
    ClosingServer,
    /// Listens on a fresh loopback port (told on stdout) and forks a process per connection it
    /// accepts (as PostgreSQL does: a backend per client), which holds the connection, silent,
    /// until the client closes it; exits when stdin closes.
    ForkingServer,
    /// Listens on `bind` (a service's well-known port, in a namespace of the test's own),
    /// answers `listening`, and closes what it accepts at once.
    ClosingServerAt { bind: SocketAddr },
    /// After `go`, opens `idle` connections that stay silent and `busy` ones that send a byte
    /// every 200 ms; tells the busy ones' local ports.
    IdleAndBusy {
        server: SocketAddr,
        idle: usize,
        busy: usize,
    },
    /// After `go`, opens `alpha` connections through one function and `beta` through another,
    /// and keeps them.
    LeakTwoWays {
        server: SocketAddr,
        alpha: usize,
        beta: usize,
    },
    /// After `go`, `count` connections opened and closed as fast as possible; after a second
    /// `go`, one more, held, whose local port it tells.
    BurstThenHold { server: SocketAddr, count: usize },
    /// After `go`, for `seconds`: connections to its own loopback server, opened, used and
    /// closed (client first) in a loop; then tells how many.
    Churn { seconds: u64 },
    /// Tells a thread's id, then connects from that thread after `go`.
    ConnectFromAThread { server: SocketAddr },
    /// After `go`, listens on a fresh loopback port (told on stdout) and holds what it accepts.
    Server,
    /// Listens on `bind` (port 0: a fresh one, told on stdout) and holds what it accepts until
    /// `close N` on stdin (once it holds at least N, it closes them all) or stdin closes.
    HoldingServer { bind: SocketAddr },
    /// At each `go`, connects to `server` from the next of `local_ports` (bound first) and
    /// answers `ready`; holds the connections until stdin closes.
    BoundClients {
        server: SocketAddr,
        local_ports: Vec<u16>,
    },
    /// After `go`, connects to `server` `per_second` times a second and keeps every connection,
    /// until stdin closes or a connect fails; then tells `failed ERRNO UNIX_SECONDS` (with the
    /// soft and hard limit on open files first lowered to `fd_limit`, when given).
    Leak {
        server: SocketAddr,
        per_second: u32,
        fd_limit: Option<u64>,
        /// Stop connecting (and keep what it has) after this many.
        most: Option<usize>,
    },
    /// After `go`, connects to `server` `per_second` times a second and closes each connection
    /// at once (this side first: its sockets wait in TIME_WAIT), until stdin closes or a connect
    /// fails; then tells `failed ERRNO UNIX_SECONDS`.
    PortsIntoTimeWait { server: SocketAddr, per_second: u32 },
    /// After `go`, connects `count` times and answers `ready`; at `close`, closes them all
    /// (staying alive) and answers `closed`; exits when stdin closes.
    CloseOnCommand { server: SocketAddr, count: usize },
    /// After `go`, connects, shuts its sending half down (SHUT_WR) and answers `ready`; holds
    /// the socket until stdin closes.
    HalfClose { server: SocketAddr },
    /// After `go`, connects and answers `ready`, then never reads what arrives.
    NeverReads { server: SocketAddr },
    /// After `go`, connects, answers `ready`, and writes as much as the socket takes (its peer
    /// does not read, so the writes end up blocked).
    Flood { server: SocketAddr },
    /// Listens on a fresh loopback port with a backlog of `backlog` and never accepts; tells
    /// the port.
    NeverAccepts { backlog: i32 },
    /// After `go`, starts a connect to `server` that will not complete (a black-holed
    /// address), answers `connecting`, and waits for stdin to close.
    ConnectHanging { server: SocketAddr },
    /// After `go`, connects to `server` `per_second` times a second and closes each connection
    /// `linger_ms` after the peer closed it: a healthy closer, slightly slow, under load. Tells
    /// `running` once the first connections are in CLOSE_WAIT.
    CloseLater {
        server: SocketAddr,
        per_second: u32,
        linger_ms: u64,
    },
    /// After `go`, connects `count` times, forks a child that keeps the sockets, closes its own
    /// copies and exits, having told the child's pid. The child holds them until stdin closes.
    HandOver { server: SocketAddr, count: usize },
    /// Forks a receiver; after `go`, connects `count` times, passes the sockets to the receiver
    /// over SCM_RIGHTS and closes its own copies; tells the receiver's pid and stays until stdin
    /// closes (so does the receiver).
    PassOver { server: SocketAddr, count: usize },
    /// Names itself `name` (as the kernel keeps names: at most 15 bytes), then plays `plays`.
    Named { name: String, plays: Box<Role> },
    /// At `rename`, names itself `name` and answers `renamed`; then plays `plays`.
    RenamedLater { name: String, plays: Box<Role> },
}

impl Role {
    /// The arguments that make this test binary play the role.
    pub fn args(&self) -> [String; 2] {
        // A role always serializes: it is plain data.
        let json = serde_json::to_string(self).unwrap_or_default();
        ["helper".into(), json]
    }

    /// Plays the role named by the command line after `helper`.
    pub fn main(args: &[String]) -> ExitCode {
        let role = args
            .first()
            .ok_or_else(|| "no role".to_string())
            .and_then(|json| serde_json::from_str::<Role>(json).map_err(|e| e.to_string()));
        match role.and_then(Role::play) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("helper {args:?}: {error}");
                ExitCode::FAILURE
            }
        }
    }

    fn play(self) -> Result<(), String> {
        match self {
            Role::ConnectOnce { server } => {
                let stream = connect(server)?;
                thread::sleep(Duration::from_millis(200));
                drop(stream);
                thread::sleep(Duration::from_millis(200));
                Ok(())
            }
            Role::HoldClients { server, count } => {
                wait_for_go()?;
                let held = (0..count)
                    .map(|_| connect(server))
                    .collect::<Result<Vec<_>, _>>()?;
                answer("ready")?;
                wait_for_eof();
                drop(held);
                Ok(())
            }
            Role::CloseClients { server, count } => {
                wait_for_go()?;
                for _ in 0..count {
                    drop(connect(server)?);
                }
                answer("done")?;
                wait_for_eof();
                Ok(())
            }
            Role::ClosingServer => {
                let listener = listen()?;
                thread::spawn(move || {
                    for stream in listener.incoming() {
                        drop(stream);
                    }
                });
                wait_for_eof();
                Ok(())
            }
            Role::ForkingServer => forking_server(),
            Role::ClosingServerAt { bind } => {
                let listener = TcpListener::bind(bind).map_err(err)?;
                answer("listening")?;
                thread::spawn(move || {
                    for stream in listener.incoming() {
                        drop(stream);
                    }
                });
                wait_for_eof();
                Ok(())
            }
            Role::IdleAndBusy { server, idle, busy } => idle_and_busy(server, idle, busy),
            Role::LeakTwoWays {
                server,
                alpha,
                beta,
            } => {
                wait_for_go()?;
                let mut leaked = Vec::new();
                for _ in 0..alpha {
                    leaked.push(open_leaky_connection_alpha(server).map_err(err)?);
                }
                for _ in 0..beta {
                    leaked.push(open_leaky_connection_beta(server).map_err(err)?);
                }
                answer("ready")?;
                wait_for_eof();
                drop(leaked);
                Ok(())
            }
            Role::BurstThenHold { server, count } => {
                wait_for_go()?;
                for _ in 0..count {
                    drop(connect(server)?);
                }
                answer("burst done")?;
                wait_for_go()?;
                let held = connect(server)?;
                answer(&held.local_addr().map_err(err)?.port().to_string())?;
                wait_for_eof();
                Ok(())
            }
            Role::Churn { seconds } => churn(seconds),
            Role::ConnectFromAThread { server } => {
                let (tid_tx, tid_rx) = std::sync::mpsc::channel();
                let thread = thread::spawn(move || -> Result<TcpStream, String> {
                    // SAFETY: gettid has no preconditions.
                    let _ = tid_tx.send(unsafe { libc::gettid() });
                    wait_for_go()?;
                    connect(server)
                });
                answer(&tid_rx.recv().map_err(|e| e.to_string())?.to_string())?;
                let stream = thread.join().map_err(|_| "the thread panicked")??;
                wait_for_eof();
                drop(stream);
                Ok(())
            }
            Role::CloseLater {
                server,
                per_second,
                linger_ms,
            } => close_later(server, per_second, Duration::from_millis(linger_ms)),
            Role::HandOver { server, count } => hand_over(server, count),
            Role::PassOver { server, count } => pass_over(server, count),
            Role::Named { name, plays } => {
                set_name(&name)?;
                plays.play()
            }
            Role::RenamedLater { name, plays } => {
                wait_for_line("rename")?;
                set_name(&name)?;
                answer("renamed")?;
                plays.play()
            }
            Role::HoldingServer { bind } => holding_server(bind),
            Role::BoundClients {
                server,
                local_ports,
            } => {
                let mut held = Vec::new();
                for port in local_ports {
                    wait_for_go()?;
                    held.push(bound_connect(SocketAddr::new(server.ip(), port), server)?);
                    answer("ready")?;
                }
                wait_for_eof();
                drop(held);
                Ok(())
            }
            Role::Leak {
                server,
                per_second,
                fd_limit,
                most,
            } => leak(server, per_second, fd_limit, most),
            Role::PortsIntoTimeWait { server, per_second } => {
                ports_into_time_wait(server, per_second)
            }
            Role::CloseOnCommand { server, count } => {
                wait_for_go()?;
                let held = (0..count)
                    .map(|_| connect(server))
                    .collect::<Result<Vec<_>, _>>()?;
                answer("ready")?;
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line).map_err(err)?;
                drop(held);
                answer("closed")?;
                wait_for_eof();
                Ok(())
            }
            Role::HalfClose { server } => {
                wait_for_go()?;
                let stream = connect(server)?;
                stream.shutdown(std::net::Shutdown::Write).map_err(err)?;
                answer("ready")?;
                wait_for_eof();
                drop(stream);
                Ok(())
            }
            Role::NeverReads { server } => {
                wait_for_go()?;
                let stream = connect(server)?;
                answer("ready")?;
                wait_for_eof();
                drop(stream);
                Ok(())
            }
            Role::Flood { server } => {
                wait_for_go()?;
                let mut stream = connect(server)?;
                answer("ready")?;
                thread::spawn(move || {
                    let chunk = [b'x'; 16 * 1024];
                    while stream.write_all(&chunk).is_ok() {}
                });
                wait_for_eof();
                Ok(())
            }
            Role::NeverAccepts { backlog } => {
                use socket2::{Domain, Socket, Type};
                let socket = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(err)?;
                let any: SocketAddr = "127.0.0.1:0".parse().map_err(|_| "bad address")?;
                socket.bind(&any.into()).map_err(err)?;
                socket.listen(backlog).map_err(err)?;
                let port = socket
                    .local_addr()
                    .map_err(err)?
                    .as_socket()
                    .ok_or("no address")?
                    .port();
                answer(&port.to_string())?;
                wait_for_eof();
                drop(socket);
                Ok(())
            }
            Role::ConnectHanging { server } => {
                wait_for_go()?;
                thread::spawn(move || TcpStream::connect(server));
                answer("connecting")?;
                wait_for_eof();
                Ok(())
            }
            Role::Server => {
                wait_for_go()?;
                let listener = listen()?;
                thread::spawn(move || {
                    let held: Vec<TcpStream> = listener.incoming().map_while(Result::ok).collect();
                    drop(held);
                });
                wait_for_eof();
                Ok(())
            }
        }
    }
}

fn leak(
    server: SocketAddr,
    per_second: u32,
    fd_limit: Option<u64>,
    most: Option<usize>,
) -> Result<(), String> {
    if let Some(limit) = fd_limit {
        let limit = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: setrlimit reads one valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
    }
    let mut held = Vec::new();
    paced_connects(server, per_second, most, |stream| held.push(stream))?;
    drop(held);
    Ok(())
}

fn ports_into_time_wait(server: SocketAddr, per_second: u32) -> Result<(), String> {
    // Each closed at once, before the server's side: this side waits in TIME_WAIT.
    paced_connects(server, per_second, None, drop)
}

/// After `go`, connects to `server` `per_second` times a second, at most `most` times, handing
/// each connection to `keep`, until stdin closes; the first connect that fails is told as
/// `failed ERRNO UNIX_SECONDS`, and none is tried after it.
fn paced_connects(
    server: SocketAddr,
    per_second: u32,
    most: Option<usize>,
    mut keep: impl FnMut(TcpStream),
) -> Result<(), String> {
    wait_for_go()?;
    let (done_tx, done) = std::sync::mpsc::channel();
    thread::spawn(move || {
        wait_for_eof();
        let _ = done_tx.send(());
    });
    let every = Duration::from_secs(1) / per_second.max(1);
    let start = Instant::now();
    let mut made: u32 = 0;
    let mut failed = false;
    while done.try_recv().is_err() {
        if !failed && most.is_none_or(|most| (made as usize) < most) {
            match TcpStream::connect(server) {
                Ok(stream) => {
                    keep(stream);
                    made += 1;
                }
                Err(error) => {
                    answer(&failure_line(&error)?)?;
                    failed = true;
                }
            }
        }
        let next = start + every * (made + 1);
        thread::sleep(
            next.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        );
    }
    Ok(())
}

/// `failed ERRNO UNIX_SECONDS`: how a connect failed, and when.
fn failure_line(error: &std::io::Error) -> Result<String, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "failed {} {:.3}",
        error.raw_os_error().unwrap_or(0),
        now.as_secs_f64()
    ))
}

fn holding_server(bind: SocketAddr) -> Result<(), String> {
    use std::sync::{Arc, Condvar, Mutex, PoisonError};
    let listener = TcpListener::bind(bind).map_err(err)?;
    answer(&listener.local_addr().map_err(err)?.port().to_string())?;
    let held = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
    let accepted = Arc::clone(&held);
    thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let (streams, grew) = &*accepted;
            streams
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(stream);
            grew.notify_all();
        }
    });
    let mut line = String::new();
    while matches!(std::io::stdin().lock().read_line(&mut line), Ok(n) if n > 0) {
        if let Some(count) = line.trim().strip_prefix("close ") {
            let count: usize = count.parse().map_err(|e| format!("close {count}: {e}"))?;
            // A client's connect returns once the handshake is done, before this server's
            // accept thread has taken the connection from the backlog: under load the command
            // can come first, so wait for the connections it means.
            let (streams, grew) = &*held;
            let (mut streams, waited) = grew
                .wait_timeout_while(
                    streams.lock().unwrap_or_else(PoisonError::into_inner),
                    Duration::from_secs(20),
                    |streams| streams.len() < count,
                )
                .unwrap_or_else(PoisonError::into_inner);
            ensure(!waited.timed_out(), || {
                format!("only {} of {count} connections came", streams.len())
            })?;
            streams.clear();
            answer("closed")?;
        }
        line.clear();
    }
    Ok(())
}

/// Names this process `name` (as `/proc/PID/comm` shows it).
fn set_name(name: &str) -> Result<(), String> {
    let name = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string, which `name` is.
    if unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(())
}

/// A connection from exactly `local` to `server`.
fn bound_connect(local: SocketAddr, server: SocketAddr) -> Result<TcpStream, String> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(server), Type::STREAM, None).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.bind(&local.into()).map_err(err)?;
    socket.connect(&server.into()).map_err(err)?;
    Ok(socket.into())
}

fn idle_and_busy(server: SocketAddr, idle: usize, busy: usize) -> Result<(), String> {
    wait_for_go()?;
    let idle = (0..idle)
        .map(|_| connect(server))
        .collect::<Result<Vec<_>, _>>()?;
    let mut busy = (0..busy)
        .map(|_| connect(server))
        .collect::<Result<Vec<_>, _>>()?;
    let ports: Vec<String> = busy
        .iter()
        .map(|s| s.local_addr().map(|a| a.port().to_string()))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    answer(&ports.join(","))?;
    let (done_tx, done) = std::sync::mpsc::channel();
    thread::spawn(move || {
        wait_for_eof();
        let _ = done_tx.send(());
    });
    while done.recv_timeout(Duration::from_millis(200)).is_err() {
        for stream in &mut busy {
            stream.write_all(b"x").map_err(err)?;
        }
    }
    drop(idle);
    Ok(())
}

fn churn(seconds: u64) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(err)?;
    let server = listener.local_addr().map_err(err)?;
    // Connections the server side has closed: the count is told only once every connection
    // is closed at both ends (the last ones' closes would otherwise race the test's stop).
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    for _ in 0..2 {
        let listener = listener.try_clone().map_err(err)?;
        let served = std::sync::Arc::clone(&served);
        thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut byte = [0u8; 1];
                if stream.read_exact(&mut byte).is_ok() {
                    let _ = stream.write_all(&byte);
                    let _ = stream.read(&mut byte);
                }
                drop(stream);
                served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
    wait_for_go()?;
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut connections = 0u64;
    while Instant::now() < end {
        let mut stream = connect(server)?;
        stream.write_all(b"?").map_err(err)?;
        let mut reply = [0u8; 1];
        stream.read_exact(&mut reply).map_err(err)?;
        connections += 1;
    }
    let give_up = Instant::now() + Duration::from_secs(10);
    while served.load(std::sync::atomic::Ordering::SeqCst) < connections {
        if Instant::now() > give_up {
            return Err(format!(
                "the server closed {} of {connections} connections",
                served.load(std::sync::atomic::Ordering::SeqCst)
            ));
        }
        thread::sleep(Duration::from_millis(1));
    }
    answer(&connections.to_string())?;
    wait_for_eof();
    Ok(())
}

fn close_later(server: SocketAddr, per_second: u32, linger: Duration) -> Result<(), String> {
    wait_for_go()?;
    let (done_tx, done) = std::sync::mpsc::channel();
    thread::spawn(move || {
        wait_for_eof();
        let _ = done_tx.send(());
    });
    let every = Duration::from_secs(1) / per_second.max(1);
    let mut next_connect = Instant::now();
    // Each connection, and when its peer closed.
    let mut open: Vec<(TcpStream, Option<Instant>)> = Vec::new();
    let mut told = false;
    while done.try_recv().is_err() {
        if Instant::now() >= next_connect {
            let stream = connect(server)?;
            stream.set_nonblocking(true).map_err(err)?;
            open.push((stream, None));
            next_connect += every;
        }
        for (stream, closed_at) in &mut open {
            if closed_at.is_none() && matches!(stream.read(&mut [0u8; 16]), Ok(0)) {
                *closed_at = Some(Instant::now());
            }
        }
        open.retain(|(_, closed_at)| closed_at.is_none_or(|at| at.elapsed() < linger));
        if !told && open.iter().any(|(_, closed_at)| closed_at.is_some()) {
            answer("running")?;
            told = true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn hand_over(server: SocketAddr, count: usize) -> Result<(), String> {
    wait_for_go()?;
    let held = (0..count)
        .map(|_| connect(server))
        .collect::<Result<Vec<_>, _>>()?;
    // SAFETY: this helper is single-threaded here; the child only sleeps on stdin and exits.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error().to_string()),
        0 => {
            wait_for_eof();
            drop(held);
            // SAFETY: _exit ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(0) }
        }
        child => {
            drop(held);
            answer(&child.to_string())
        }
    }
}

fn forking_server() -> Result<(), String> {
    use std::io::Read;
    let listener = listen()?;
    // Accepts on the main thread, which forks: a single-threaded process forks safely.
    listener.set_nonblocking(true).map_err(err)?;
    // A child watches stdin (this process must stay single-threaded to fork safely): the
    // server ends when it does. SAFETY: no thread has started; the child only reads stdin.
    let watcher = match unsafe { libc::fork() } {
        -1 => return Err(std::io::Error::last_os_error().to_string()),
        0 => {
            wait_for_eof();
            // SAFETY: _exit ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(0) }
        }
        watcher => watcher,
    };
    loop {
        let mut status = 0;
        // SAFETY: a non-blocking wait for the watcher child, which exits when stdin closes.
        if unsafe { libc::waitpid(watcher, &mut status, libc::WNOHANG) } == watcher {
            return Ok(());
        }
        match listener.accept() {
            Ok((mut stream, _)) => {
                // SAFETY: this process is single-threaded; the child reads until the client
                // closes, then exits.
                match unsafe { libc::fork() } {
                    -1 => return Err(std::io::Error::last_os_error().to_string()),
                    0 => {
                        drop(listener);
                        let _ = stream.set_nonblocking(false);
                        let mut buffer = [0u8; 64];
                        while matches!(stream.read(&mut buffer), Ok(n) if n > 0) {}
                        // SAFETY: as above.
                        unsafe { libc::_exit(0) }
                    }
                    _ => drop(stream),
                }
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn pass_over(server: SocketAddr, count: usize) -> Result<(), String> {
    use std::os::{fd::AsRawFd, unix::net::UnixDatagram};
    let (sender, receiver) = UnixDatagram::pair().map_err(err)?;
    // SAFETY: this helper is single-threaded here; the child receives fds and waits.
    let child = match unsafe { libc::fork() } {
        -1 => return Err(std::io::Error::last_os_error().to_string()),
        0 => {
            drop(sender);
            let received: Vec<i32> = (0..count).filter_map(|_| receive_fd(&receiver)).collect();
            wait_for_eof();
            drop(received);
            // SAFETY: as in `hand_over`.
            unsafe { libc::_exit(0) }
        }
        child => child,
    };
    drop(receiver);
    wait_for_go()?;
    for _ in 0..count {
        let stream = connect(server)?;
        send_fd(&sender, stream.as_raw_fd())?;
        drop(stream);
    }
    answer(&child.to_string())?;
    wait_for_eof();
    Ok(())
}

/// Sends `fd` over `socket` (SCM_RIGHTS).
fn send_fd(socket: &std::os::unix::net::UnixDatagram, fd: i32) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(size_of::<i32>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the sendmsg call, and
    // the control buffer is CMSG_SPACE bytes, room for one header and one fd.
    unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = space;
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(size_of::<i32>() as u32) as usize;
        libc::CMSG_DATA(header).cast::<i32>().write_unaligned(fd);
        if libc::sendmsg(socket.as_raw_fd(), &message, 0) < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
    }
    Ok(())
}

/// Receives one fd sent over `socket` (SCM_RIGHTS).
fn receive_fd(socket: &std::os::unix::net::UnixDatagram) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(size_of::<i32>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: as in `send_fd`; the header is read only when the kernel filled one in.
    unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = space;
        if libc::recvmsg(socket.as_raw_fd(), &mut message, 0) < 0 {
            return None;
        }
        let header = libc::CMSG_FIRSTHDR(&message);
        (!header.is_null()).then(|| libc::CMSG_DATA(header).cast::<i32>().read_unaligned())
    }
}

/// One of the two code paths of [`Role::LeakTwoWays`]: a known name for the stack to show.
#[inline(never)]
fn open_leaky_connection_alpha(server: SocketAddr) -> std::io::Result<TcpStream> {
    std::hint::black_box(TcpStream::connect(server))
}

/// The other code path of [`Role::LeakTwoWays`] (a different body, so that the compiler cannot
/// fold the two functions into one).
#[inline(never)]
fn open_leaky_connection_beta(server: SocketAddr) -> std::io::Result<TcpStream> {
    std::hint::black_box(TcpStream::connect_timeout(&server, Duration::from_secs(5)))
}

fn err(e: std::io::Error) -> String {
    e.to_string()
}

fn connect(server: SocketAddr) -> Result<TcpStream, String> {
    TcpStream::connect(server).map_err(|e| format!("cannot connect to {server}: {e}"))
}

/// Listens on a fresh loopback port and tells it.
fn listen() -> Result<TcpListener, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(err)?;
    answer(&listener.local_addr().map_err(err)?.port().to_string())?;
    Ok(listener)
}

fn wait_for_go() -> Result<(), String> {
    wait_for_line("go")
}

fn wait_for_line(expected: &str) -> Result<(), String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    ensure(line.trim() == expected, || {
        format!("expected {expected}, got {line:?}")
    })
}

fn answer(line: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())
}

fn wait_for_eof() {
    let mut sink = String::new();
    while matches!(std::io::stdin().lock().read_line(&mut sink), Ok(n) if n > 0) {}
}
