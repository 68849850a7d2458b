//! The sockets a process already has: its socket inodes from `/proc/PID/fd`, matched with the
//! kernel's TCP socket table from sock_diag, read inside the process's network namespace (so a
//! process in a container is seen as it sees itself).

pub mod diag;

use std::{
    collections::{HashMap, HashSet},
    fs::{self, File},
    io,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    thread,
};

use nix::sched::{CloneFlags, setns};
use probe_common::{ListenerKey, SocketTuple, TcpState};

use crate::track::{Endpoints, ExistingSocket};

/// Why the sockets of a process could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot list the sockets of process {pid} ({error}); run probe as root (sudo)")]
    Fds { pid: u32, error: procfs::ProcError },
    #[error("cannot read the TCP sockets of process {pid} through sock_diag ({error})")]
    Diag { pid: u32, error: io::Error },
}

/// The TCP sockets of each process in `pids`, with their tcp_info.
pub fn tcp_sockets(pids: &[u32]) -> Result<Vec<ExistingSocket>, SnapshotError> {
    // One dump per network namespace, shared by the processes in it.
    let mut dumps: HashMap<u64, Vec<diag::DiagSocket>> = HashMap::new();
    let mut found = Vec::new();
    for &pid in pids {
        let inodes = socket_inodes(pid)?;
        if inodes.is_empty() {
            continue;
        }
        let namespace =
            network_namespace(pid).map_err(|error| SnapshotError::Diag { pid, error })?;
        let dump = match dumps.get(&namespace) {
            Some(dump) => dump,
            None => {
                let dump = in_network_namespace_of(pid, diag::dump_tcp)
                    .map_err(|error| SnapshotError::Diag { pid, error })?;
                dumps.entry(namespace).or_insert(dump)
            }
        };
        // A socket in CLOSE was never connected (or is gone): it is not a connection yet. (This
        // kernel's dump leaves bound, unconnected sockets out; others may not.)
        found.extend(
            dump.iter()
                .filter(|socket| inodes.contains(&socket.inode) && socket.state != TcpState::Close)
                .map(|socket| existing(pid, socket)),
        );
    }
    Ok(found)
}

/// The inodes of the sockets process `pid` holds (all its threads share them).
fn socket_inodes(pid: u32) -> Result<HashSet<u64>, SnapshotError> {
    let fds = || -> procfs::ProcResult<HashSet<u64>> {
        let process = procfs::process::Process::new(pid as i32)?;
        Ok(process
            .fd()?
            .filter_map(Result::ok)
            .filter_map(|fd| match fd.target {
                procfs::process::FDTarget::Socket(inode) => Some(inode),
                _ => None,
            })
            .collect())
    };
    fds().map_err(|error| SnapshotError::Fds { pid, error })
}

fn network_namespace(pid: u32) -> io::Result<u64> {
    Ok(fs::metadata(format!("/proc/{pid}/ns/net"))?.ino())
}

/// Runs `read` in the network namespace of process `pid`: here when it is ours, else on a thread
/// of its own that joins that namespace (so the rest of probe stays where it is).
fn in_network_namespace_of<T: Send + 'static>(
    pid: u32,
    read: fn() -> io::Result<T>,
) -> io::Result<T> {
    if network_namespace(pid)? == fs::metadata("/proc/self/ns/net")?.ino() {
        return read();
    }
    let namespace = File::open(format!("/proc/{pid}/ns/net"))?;
    thread::spawn(move || {
        setns(&namespace, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        read()
    })
    .join()
    .map_err(|_| io::Error::other("the namespace reader panicked"))?
}

fn existing(pid: u32, socket: &diag::DiagSocket) -> ExistingSocket {
    ExistingSocket {
        pid,
        inode: socket.inode,
        state: socket.state,
        endpoints: Endpoints {
            family: socket.family,
            local: socket.local,
            remote: socket.remote,
        },
        activity: socket.activity,
    }
}

/// An address as the tracepoint shows it: IPv6, with IPv4 addresses IPv4-mapped.
fn tracepoint_address(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The key under which the kernel program looks this connection up at its next transition.
pub fn seed_tuple(endpoints: &Endpoints) -> SocketTuple {
    SocketTuple {
        saddr: tracepoint_address(endpoints.local.ip()),
        daddr: tracepoint_address(endpoints.remote.ip()),
        sport: endpoints.local.port(),
        dport: endpoints.remote.port(),
        _pad: [0; 4],
    }
}

/// The key under which the kernel program finds this listener's owner for what it accepts.
pub fn listener_key(endpoints: &Endpoints) -> ListenerKey {
    ListenerKey {
        addr: tracepoint_address(endpoints.local.ip()),
        port: endpoints.local.port(),
        _pad: [0; 6],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::Family;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn finds_this_process_sockets_and_only_them() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let sockets = tcp_sockets(&[std::process::id()]).unwrap();
        for stream in [&client, &server] {
            let (local, remote) = (stream.local_addr().unwrap(), stream.peer_addr().unwrap());
            let socket = sockets
                .iter()
                .find(|s| s.endpoints.local == local && s.endpoints.remote == remote)
                .unwrap();
            assert_eq!(socket.state, TcpState::Established);
            assert_eq!(socket.pid, std::process::id());
            assert!(socket.activity.is_some());
        }
        assert!(sockets.iter().any(|s| s.state == TcpState::Listen));
        assert!(sockets.iter().all(|s| s.pid == std::process::id()));
    }

    #[test]
    fn seed_keys_use_the_tracepoint_address_form() {
        let endpoints = Endpoints {
            family: Family::Ipv4,
            local: "127.0.0.1:40000".parse().unwrap(),
            remote: "10.0.0.2:80".parse().unwrap(),
        };
        let tuple = seed_tuple(&endpoints);
        assert_eq!(tuple.saddr[10..], [0xff, 0xff, 127, 0, 0, 1]);
        assert_eq!((tuple.sport, tuple.dport), (40000, 80));
        let any = Endpoints {
            family: Family::Ipv4,
            local: "0.0.0.0:8080".parse().unwrap(),
            remote: "0.0.0.0:0".parse().unwrap(),
        };
        assert_eq!(listener_key(&any).addr[10..], [0xff, 0xff, 0, 0, 0, 0]);
    }
}
