//! The sockets a process already has: its socket inodes from `/proc/PID/fd`, matched with the
//! kernel's TCP socket table from sock_diag, read inside the process's network namespace (so a
//! process in a container is seen as it sees itself).

pub mod diag;
mod namespaces;

pub use namespaces::Namespaces;

use probe_common::TcpState;
use std::{
    collections::{HashMap, HashSet},
    io,
};

use crate::track::{
    Endpoints, ExistingSocket, Holders,
    triage::{PortSample, port_samples},
};

/// Why the sockets of a process could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot list the sockets of process {pid} ({error}); run probe as root (sudo)")]
    Fds { pid: u32, error: procfs::ProcError },
    #[error(
        "cannot read the TCP sockets of process {pid}'s network namespace through sock_diag ({error})"
    )]
    Diag { pid: u32, error: io::Error },
}

/// What the processes' fd tables and the kernel's socket table say at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every TCP socket of the network namespaces the processes are in, with tcp_info, each
    /// under its first holder among the processes (pid 0 when none of them holds it).
    pub sockets: Vec<ExistingSocket>,
    /// Which of the processes hold each socket (by inode): more than one when a socket was
    /// inherited over fork or passed over a unix socket.
    pub holders: Holders,
    /// How many files each of the processes has open.
    pub fds: HashMap<u32, u64>,
    /// The ephemeral ports each destination uses, per namespace.
    pub ports: Vec<PortSample>,
}

impl Snapshot {
    /// The sockets the processes hold.
    pub fn held(&self) -> impl Iterator<Item = &ExistingSocket> {
        self.sockets.iter().filter(|socket| socket.pid != 0)
    }
}

/// The TCP sockets of the network namespaces of the processes in `pids` (and of every
/// namespace noted before, whose processes may have exited), with their tcp_info and who of
/// `pids` holds each; how many files each process has open; the ephemeral ports in use toward
/// each destination. A process that is gone by the time it is read is skipped; one that cannot
/// be read (another user namespace's, say) is an error when `strict`, skipped otherwise (the
/// whole host is read that way).
pub fn take(
    pids: &[u32],
    namespaces: &mut Namespaces,
    strict: bool,
) -> Result<Snapshot, SnapshotError> {
    let mut snapshot = Snapshot::default();
    // Socket inode -> the processes of `pids` that hold it (any kind of socket, for now).
    let mut held = Holders::new();
    let mut sorted = pids.to_vec();
    sorted.sort_unstable();
    for pid in sorted {
        let table = match fd_table(pid) {
            Ok(table) => table,
            Err(SnapshotError::Fds {
                error: procfs::ProcError::NotFound(_),
                ..
            }) => continue,
            Err(error) if strict => return Err(error),
            Err(error) => {
                log::debug!("{error}");
                continue;
            }
        };
        match namespaces.note(pid) {
            Ok(_) => {
                snapshot.fds.insert(pid, table.open);
                for inode in table.sockets {
                    held.entry(inode).or_default().push(pid);
                }
            }
            // Exited meanwhile: its namespace, if noted before, is read all the same.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) if strict => return Err(SnapshotError::Diag { pid, error }),
            Err(error) => log::debug!("cannot enter the network namespace of {pid}: {error}"),
        }
    }
    let tables = namespaces
        .dump_all()
        .map_err(|error| SnapshotError::Diag { pid: 0, error })?;
    for table in tables.values() {
        for socket in &table.sockets {
            if let Some(pids) = held.remove(&socket.inode) {
                snapshot.holders.insert(socket.inode, pids);
            }
        }
    }
    for (&netns, table) in &tables {
        let first = snapshot.sockets.len();
        // A socket in CLOSE was never connected (or is gone): it is not a connection yet.
        // (This kernel's dump leaves bound, unconnected sockets out; others may not.)
        for socket in table
            .sockets
            .iter()
            .filter(|socket| socket.state != TcpState::Close)
        {
            let holder = snapshot
                .holders
                .get(&socket.inode)
                .and_then(|pids| pids.first().copied())
                .unwrap_or(0);
            let mut found = existing(holder, socket);
            if socket.state == TcpState::Listen {
                found.queues.listen_overflows = table.listen_overflows;
            }
            snapshot.sockets.push(found);
        }
        if let Some(range) = table.port_range {
            snapshot
                .ports
                .extend(port_samples(netns, range, &snapshot.sockets[first..]));
        }
    }
    Ok(snapshot)
}

/// Which processes, of all on the host, hold these socket inodes: for sockets none of the
/// traced processes holds any more (handed to a process probe does not trace). Reads every
/// process's fd table: call it only for such sockets.
pub fn holders_anywhere(inodes: &HashSet<u64>) -> Holders {
    let mut holders = Holders::new();
    let Ok(all) = procfs::process::all_processes() else {
        return holders;
    };
    for process in all.filter_map(Result::ok) {
        let Ok(fds) = process.fd() else {
            continue;
        };
        let pid = process.pid as u32;
        for fd in fds.filter_map(Result::ok) {
            if let procfs::process::FDTarget::Socket(inode) = fd.target
                && inodes.contains(&inode)
            {
                let pids = holders.entry(inode).or_default();
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
    }
    holders
}

/// How many sockets the processes in `pids` hold (any kind: an upper bound on their TCP
/// sockets), to size the kernel's maps before attaching; processes that cannot be read count 0.
pub fn socket_count(pids: &[u32]) -> usize {
    pids.iter()
        .map(|&pid| fd_table(pid).map_or(0, |table| table.sockets.len()))
        .sum()
}

/// The inodes of the sockets process `pid` holds (all its threads share them).
/// What a process's fd table holds: its socket inodes, and how many files in all.
struct FdTable {
    sockets: HashSet<u64>,
    open: u64,
}

fn fd_table(pid: u32) -> Result<FdTable, SnapshotError> {
    let read = || -> procfs::ProcResult<FdTable> {
        let process = procfs::process::Process::new(pid as i32)?;
        let mut table = FdTable {
            sockets: HashSet::new(),
            open: 0,
        };
        for fd in process.fd()?.filter_map(Result::ok) {
            table.open += 1;
            if let procfs::process::FDTarget::Socket(inode) = fd.target {
                table.sockets.insert(inode);
            }
        }
        Ok(table)
    };
    read().map_err(|error| SnapshotError::Fds { pid, error })
}

fn existing(pid: u32, socket: &diag::DiagSocket) -> ExistingSocket {
    ExistingSocket {
        pid,
        inode: socket.inode,
        cookie: socket.cookie,
        state: socket.state,
        endpoints: Endpoints {
            family: socket.family,
            local: socket.local,
            remote: socket.remote,
        },
        activity: socket.activity,
        last_ack_received: socket.last_ack_received,
        queues: socket.queues,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn finds_this_process_sockets_and_only_them() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let me = std::process::id();
        let snapshot = take(&[me], &mut Namespaces::default(), true).unwrap();
        let sockets: Vec<&ExistingSocket> = snapshot.held().collect();
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
        assert!(sockets.iter().all(|s| s.pid == me));
        assert!(snapshot.holders.values().all(|pids| pids == &[me]));
        // Found anywhere on the host, too: held by this process only.
        let inodes: HashSet<u64> = sockets.iter().map(|s| s.inode).collect();
        let anywhere = holders_anywhere(&inodes);
        assert_eq!(anywhere.len(), inodes.len());
        assert!(anywhere.values().all(|pids| pids == &[me]));
    }
}
