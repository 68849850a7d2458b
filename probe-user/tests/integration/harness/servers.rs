//! Loopback servers in the test process, traced clients against them, idle processes.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
};

use super::{Helper, Probe, ensure, roles::Role};

/// What a loopback server in the test process does with each accepted connection.
#[derive(Clone, Copy)]
pub enum ServerMode {
    /// Closes at once: its clients end up in CLOSE_WAIT.
    CloseAtOnce,
    /// Holds every connection open (until the test process exits).
    Hold,
    /// Reads until the client closes, then closes too (a clean close by the client).
    CloseAfterPeer,
    /// Writes to each connection as fast as it takes (until the test process exits).
    Blast,
    /// An HTTP/1.1 keep-alive server: answers each request with a two-byte body and closes a
    /// connection once it has been idle for 300 ms (a client that never closes its side is
    /// left in CLOSE_WAIT).
    HttpIdleTimeout,
}

/// Starts a server on `bind` (port 0) in a thread; returns its address.
pub fn server(bind: &str, mode: ServerMode) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(bind).map_err(|e| format!("cannot bind {bind}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            match mode {
                ServerMode::CloseAtOnce => drop(stream),
                ServerMode::Hold => held.push(stream),
                ServerMode::Blast => {
                    thread::spawn(move || {
                        let mut stream = stream;
                        let chunk = [b'y'; 16 * 1024];
                        while std::io::Write::write_all(&mut stream, &chunk).is_ok() {}
                    });
                }
                ServerMode::HttpIdleTimeout => {
                    thread::spawn(move || serve_http_until_idle(stream));
                }
                ServerMode::CloseAfterPeer => {
                    thread::spawn(move || {
                        let mut buf = [0u8; 64];
                        let mut stream = stream;
                        while matches!(std::io::Read::read(&mut stream, &mut buf), Ok(n) if n > 0) {
                        }
                    });
                }
            }
        }
    });
    Ok(addr)
}

/// Answers requests (anything up to an empty line) on `stream` until it is idle for 300 ms.
fn serve_http_until_idle(stream: TcpStream) {
    use std::io::{BufRead, BufReader, Write};
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(300)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" => {
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if writer.write_all(answer).is_err() {
                    return;
                }
            }
            Ok(_) => {}
        }
    }
}

/// Connects from the (untraced) test process.
fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))
}

/// `count` connections to `addr`, held open by the caller.
pub fn connect_many(addr: SocketAddr, count: usize) -> Result<Vec<TcpStream>, String> {
    (0..count).map(|_| connect(addr)).collect()
}

/// A helper client against a fresh loopback server on `bind`, traced by probe (with `probe_args`
/// besides `--pid`) from before it touches the network; returns once the helper said `answer`.
pub fn traced_client(
    bind: &str,
    mode: ServerMode,
    role: impl FnOnce(SocketAddr) -> Role,
    probe_args: &[&str],
    answer: &str,
) -> Result<(Helper, Probe, SocketAddr), String> {
    let addr = server(bind, mode)?;
    let role = role(addr);
    let mut client = Helper::start(&role)?;
    let pid = client.pid().to_string();
    let mut args = vec!["--pid", pid.as_str()];
    args.extend_from_slice(probe_args);
    let probe = Probe::start(&args)?;
    client.say("go")?;
    let heard = client.hear()?;
    ensure(heard == answer, || {
        format!("the {role:?} helper said {heard:?}, not {answer:?}")
    })?;
    Ok((client, probe, addr))
}

/// An idle process to trace (`sleep`), killed when dropped.
pub struct Idle(Child);

impl Idle {
    pub fn start() -> Result<Idle, String> {
        Command::new("sleep")
            .arg("60")
            .stdout(Stdio::null())
            .spawn()
            .map(Idle)
            .map_err(|e| format!("cannot start sleep: {e}"))
    }

    pub fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
