//! The sockets a process already has: its socket inodes from `/proc/PID/fd` (or, for most of
//! the host at once, from the kernel's `task_file` iterator), matched with the kernel's TCP
//! socket table from sock_diag, read inside the process's network namespace (so a process in a
//! container is seen as it sees itself).

pub mod diag;
mod namespaces;
mod open_files;
mod time_wait;

pub use namespaces::Namespaces;
pub use open_files::OpenFiles;
pub use time_wait::TimeWait;

use nix::{
    dir::Dir,
    errno::Errno,
    fcntl::{OFlag, readlinkat},
    sys::stat::Mode,
};
use probe_common::TcpState;
// Keyed by socket inode: the kernel's numbers, not input anyone chooses; a fast hash does (a
// refresh of a million sockets hashes each a few times).
use rustc_hash::FxHashSet;
use std::{
    collections::{HashMap, HashSet},
    io,
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
};

use crate::track::{
    Endpoints, ExistingSocket, Holders,
    triage::{PortCounts, PortSample},
};

/// Why the sockets of a process could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot list the sockets of process {pid} ({error}); run probe as root (sudo)")]
    Fds {
        pid: u32,
        #[source]
        error: io::Error,
    },
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
    /// Every process's fd table, when they were read all at once (for [`holders_anywhere`]).
    pub open_files: Option<OpenFiles>,
}

impl Snapshot {
    /// The sockets the processes hold.
    pub fn into_held(self) -> Vec<ExistingSocket> {
        let mut sockets = self.sockets;
        sockets.retain(|socket| socket.pid != 0);
        sockets
    }
}

/// Where a snapshot reads the processes' fd tables from.
pub enum FdTables<'a> {
    /// Each process's `/proc/PID/fd`, a `readlink` per descriptor.
    Proc,
    /// Every process's at once: the records of the kernel's `task_file` iterator (see
    /// [`OpenFiles::decode`]), read while sock_diag dumps the sockets on another thread; from
    /// `/proc` when it gives none. For the whole host or cgroups: a process that cannot be read
    /// is skipped, whatever `strict` says.
    AllAtOnce(&'a mut dyn FnMut() -> Option<Vec<u8>>),
}

/// The TCP sockets of the network namespaces of the processes in `pids` (and of every
/// namespace noted before, whose processes may have exited), with their tcp_info and who of
/// `pids` holds each; how many files each process has open; the ephemeral ports in use toward
/// each destination, TIME_WAIT sockets counted among them as `time_wait` says. A process that is
/// gone by the time it is read is skipped; one that cannot be read (another user namespace's,
/// say) is an error when `strict`, skipped otherwise (the whole host is read that way).
pub fn take(
    pids: &[u32],
    namespaces: &mut Namespaces,
    strict: bool,
    fd_tables: FdTables<'_>,
    time_wait: &TimeWait,
) -> Result<Snapshot, SnapshotError> {
    let mut snapshot = Snapshot::default();
    let mut sorted = pids.to_vec();
    sorted.sort_unstable();
    // Socket inode -> the processes of `pids` that hold it (any kind of socket, for now).
    let (held, tables) = match fd_tables {
        FdTables::Proc => {
            let mut noted = Vec::new();
            for (pid, table) in proc_tables(&sorted, strict)? {
                match namespaces.note(pid) {
                    Ok(_) => noted.push((pid, table)),
                    // Exited meanwhile: its namespace, if noted before, is read all the same.
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) if strict => return Err(SnapshotError::Diag { pid, error }),
                    Err(error) => {
                        log::debug!("cannot enter the network namespace of {pid}: {error}");
                    }
                }
            }
            let held = note_tables(
                noted.iter().map(|(pid, table)| (*pid, table)),
                &mut snapshot.fds,
            );
            (held, namespaces.dump_all(time_wait))
        }
        FdTables::AllAtOnce(read) => {
            let noted: Vec<u32> = sorted
                .iter()
                .copied()
                .filter(|&pid| match namespaces.note(pid) {
                    Ok(_) => true,
                    Err(error) => {
                        log::debug!("cannot enter the network namespace of {pid}: {error}");
                        false
                    }
                })
                .collect();
            let namespaces = &*namespaces;
            std::thread::scope(|scope| {
                let dump = scope.spawn(|| namespaces.dump_all(time_wait));
                let held = match read().map(|records| OpenFiles::decode(&records)) {
                    Some(files) => {
                        let held = note_tables(
                            noted.iter().map(|&pid| (pid, files.table(pid))),
                            &mut snapshot.fds,
                        );
                        snapshot.open_files = Some(files);
                        held
                    }
                    None => {
                        let tables = proc_tables(&noted, false)?;
                        note_tables(
                            tables.iter().map(|(pid, table)| (*pid, table)),
                            &mut snapshot.fds,
                        )
                    }
                };
                let tables = dump
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                Ok((held, tables))
            })?
        }
    };
    let tables = tables.map_err(|error| SnapshotError::Diag { pid: 0, error })?;
    let mut held = held;
    let count: usize = tables.values().map(|table| table.sockets.len()).sum();
    snapshot.sockets.reserve(count);
    snapshot.holders.reserve(held.len().min(count));
    for (netns, mut table) in tables {
        let mut ports = table.port_range.map(PortCounts::new);
        // Taken from the end of the dump, whose memory goes back as it is read: a million
        // sockets are not held twice, as the dump and as the list (the list's room, reserved
        // above, is only touched as it fills).
        let mut give_back_below = table.sockets.len() - table.sockets.len() / 8;
        while let Some(socket) = table.sockets.pop() {
            if table.sockets.len() < give_back_below {
                table.sockets.shrink_to_fit();
                give_back_below = table.sockets.len() - table.sockets.len() / 8;
            }
            let holder = match held.remove(&socket.inode) {
                Some(pids) => {
                    let first = pids.first().copied();
                    snapshot.holders.insert(socket.inode, pids);
                    first
                }
                // Not held by any of `pids`, or listed twice (it moved in the table while the
                // dump went on).
                None => snapshot
                    .holders
                    .get(&socket.inode)
                    .and_then(|pids| pids.first().copied()),
            };
            // A socket in CLOSE was never connected (or is gone): it is not a connection yet.
            // (This kernel's dump leaves bound, unconnected sockets out; others may not.)
            if socket.state == TcpState::Close {
                continue;
            }
            if let Some(ports) = &mut ports {
                ports.count(socket.state, socket.local, socket.remote);
            }
            // One in TIME_WAIT is the remains of a connection that ended at its CLOSE, held by
            // no process and without tcp_info: it only takes a port, counted just above. A
            // client that churns leaves tens of thousands; kept, each refresh would carry them
            // all to the event loop to match against nothing.
            if socket.state == TcpState::TimeWait {
                continue;
            }
            let mut found = existing(holder.unwrap_or(0), &socket);
            if socket.state == TcpState::Listen {
                found.queues.listen_overflows = table.listen_overflows;
            }
            snapshot.sockets.push(found);
        }
        if let Some(ports) = ports {
            snapshot.ports.extend(ports.samples(netns));
        }
    }
    Ok(snapshot)
}

/// The fd tables of `pids` (sorted) from `/proc`: those gone meanwhile are left out, and so
/// are, unless `strict`, those that cannot be read.
fn proc_tables(pids: &[u32], strict: bool) -> Result<Vec<(u32, FdTable)>, SnapshotError> {
    let mut tables = Vec::with_capacity(pids.len());
    for &pid in pids {
        match fd_table(pid) {
            Ok(table) => tables.push((pid, table)),
            // Exited meanwhile.
            Err(SnapshotError::Fds { error, .. }) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) if strict => return Err(error),
            Err(error) => log::debug!("{error}"),
        }
    }
    Ok(tables)
}

/// Notes how many files each process has open in `fds`; returns who holds each socket inode
/// (the pids in the order given).
fn note_tables<'t, T: AsRef<FdTable> + 't>(
    tables: impl Iterator<Item = (u32, T)>,
    fds: &mut HashMap<u32, u64>,
) -> Holders {
    let mut held = Holders::default();
    for (pid, table) in tables {
        let table = table.as_ref();
        fds.insert(pid, table.open);
        for &inode in &table.sockets {
            held.entry(inode).or_default().push(pid);
        }
    }
    held
}

/// Which processes, of all on the host, hold these socket inodes: for sockets none of the
/// traced processes holds any more (handed to a process probe does not trace). Reads every
/// process's fd table (unless `open_files` has them all): call it only for such sockets.
pub fn holders_anywhere(inodes: &FxHashSet<u64>, open_files: Option<&OpenFiles>) -> Holders {
    let mut holders = Holders::default();
    if let Some(files) = open_files {
        for (pid, table) in files.tables() {
            for &inode in table.sockets.intersection(inodes) {
                holders.entry(inode).or_default().push(pid);
            }
        }
        for pids in holders.values_mut() {
            pids.sort_unstable();
        }
        return holders;
    }
    let Ok(all) = crate::process::all() else {
        return holders;
    };
    for pid in all.iter().map(|process| process.pid) {
        let Ok(table) = fd_table(pid) else {
            continue;
        };
        for &inode in table.sockets.intersection(inodes) {
            holders.entry(inode).or_default().push(pid);
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

/// How many TCP sockets the network namespaces of `pids` hold, each namespace counted once (the
/// `TCP: inuse` of its `sockstat`): an upper bound on the sockets of the host or of cgroups, to
/// size the kernel's maps before attaching, read without going through every descriptor of
/// every process (on a host holding a million sockets, that took seconds).
pub fn tcp_sockets_in_namespaces(pids: &[u32]) -> usize {
    let mut namespaces = HashSet::new();
    pids.iter()
        .filter_map(|pid| {
            let netns = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
            if !namespaces.insert(netns.ino()) {
                return None;
            }
            tcp_in_use(&std::fs::read_to_string(format!("/proc/{pid}/net/sockstat")).ok()?)
        })
        .sum()
}

/// `N` of the `TCP: inuse N ...` line of a `sockstat` file. (Parsed by hand: a fixed kernel
/// format that procfs does not read.)
fn tcp_in_use(sockstat: &str) -> Option<usize> {
    let fields: Vec<&str> = sockstat
        .lines()
        .find_map(|line| line.strip_prefix("TCP:"))?
        .split_whitespace()
        .collect();
    fields.chunks_exact(2).find(|pair| pair[0] == "inuse")?[1]
        .parse()
        .ok()
}

/// What a process's fd table holds: its socket inodes, and how many files in all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FdTable {
    sockets: FxHashSet<u64>,
    open: u64,
}

impl AsRef<FdTable> for FdTable {
    fn as_ref(&self) -> &FdTable {
        self
    }
}

/// Process `pid`'s fd table (all its threads share it), read with one `readlinkat` per
/// descriptor on the open `/proc/PID/fd` directory. procfs's `Process::fd` also opens and stats
/// every descriptor (four system calls where the link is all this needs): on a host holding a
/// million sockets, that was most of the time probe took to attach.
fn fd_table(pid: u32) -> Result<FdTable, SnapshotError> {
    let fail = |errno: Errno| SnapshotError::Fds {
        pid,
        error: io::Error::from(errno),
    };
    let mut dir = Dir::open(
        format!("/proc/{pid}/fd").as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail)?;
    let dirfd = dir.as_raw_fd();
    let mut table = FdTable::default();
    for entry in dir.iter() {
        let entry = entry.map_err(fail)?;
        let name = entry.file_name();
        if name.to_bytes().starts_with(b".") {
            continue;
        }
        match readlinkat(Some(dirfd), name) {
            Ok(target) => {
                table.open += 1;
                if let Some(inode) = socket_inode(target.as_bytes()) {
                    table.sockets.insert(inode);
                }
            }
            // Closed since the directory was read.
            Err(Errno::ENOENT) => {}
            Err(errno) => return Err(fail(errno)),
        }
    }
    Ok(table)
}

/// The inode of a socket from its descriptor's link, `socket:[INODE]`; `None` for other files.
/// (The kernel's fixed format, parsed by hand: no crate reads one link without the rest.)
fn socket_inode(link: &[u8]) -> Option<u64> {
    let inode = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inode).ok()?.parse().ok()
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
    use std::net::{SocketAddr, TcpListener, TcpStream};

    #[test]
    fn socket_links_give_their_inode_and_other_links_none() {
        assert_eq!(socket_inode(b"socket:[4026531840]"), Some(4_026_531_840));
        for other in [
            &b"pipe:[12]"[..],
            b"/tmp/socket:[12]",
            b"socket:[12",
            b"socket:[]",
            b"socket:[-1]",
            b"socket:[99999999999999999999]",
            b"anon_inode:[eventfd]",
        ] {
            assert_eq!(
                socket_inode(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn sockstat_gives_the_tcp_sockets_in_use() {
        let sockstat = "sockets: used 290\nTCP: inuse 5 orphan 0 tw 2 alloc 7 mem 1\n\
                        UDP: inuse 3 mem 0\n";
        assert_eq!(tcp_in_use(sockstat), Some(5));
        assert_eq!(tcp_in_use("UDP: inuse 3 mem 0\n"), None);
        assert_eq!(tcp_in_use("TCP: orphan 0 inuse\n"), None);
        assert_eq!(tcp_in_use("TCP: inuse many\n"), None);
    }

    #[test]
    fn the_namespaces_count_this_process_sockets_once() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        let me = std::process::id();
        let once = tcp_sockets_in_namespaces(&[me]);
        assert!(once >= 3, "{once}");
        // The same namespace through two processes of it: counted once.
        let parent = std::os::unix::process::parent_id();
        let same_namespace = std::fs::read_link(format!("/proc/{parent}/ns/net")).ok()
            == std::fs::read_link("/proc/self/ns/net").ok();
        if same_namespace {
            let twice = tcp_sockets_in_namespaces(&[me, parent]);
            assert!(twice < once * 2, "{twice} for {once}");
        }
    }

    #[test]
    fn a_process_that_is_gone_is_told_apart_from_one_that_cannot_be_read() {
        let Err(SnapshotError::Fds { error, .. }) = fd_table(u32::MAX) else {
            panic!("pid {} has an fd table", u32::MAX);
        };
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    /// This test's own sockets among `sockets`: those of the listener at `listening`.
    fn ours(sockets: &[ExistingSocket], listening: SocketAddr) -> Vec<(u64, u32)> {
        let mut ours: Vec<(u64, u32)> = sockets
            .iter()
            .filter(|s| s.endpoints.local == listening || s.endpoints.remote == listening)
            .map(|s| (s.inode, s.pid))
            .collect();
        ours.sort_unstable();
        ours
    }

    /// This process's snapshot, its fd table from `/proc`, every TIME_WAIT socket read.
    fn own_snapshot(strict: bool) -> Snapshot {
        let me = std::process::id();
        let mut namespaces = Namespaces::default();
        take(
            &[me],
            &mut namespaces,
            strict,
            FdTables::Proc,
            &TimeWait::All,
        )
        .unwrap()
    }

    #[test]
    fn tables_read_all_at_once_give_what_proc_gives() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        let listening = listener.local_addr().unwrap();
        let me = std::process::id();
        let from_proc = own_snapshot(false);
        let expected = ours(&from_proc.sockets, listening);
        assert_eq!(expected.len(), 3);
        assert!(expected.iter().all(|&(_, pid)| pid == me));
        // This process's table as the kernel's iterator writes it: one record per file.
        let table = fd_table(me).unwrap();
        let mut records = Vec::new();
        let files = table.sockets.iter().copied().chain(std::iter::repeat(0));
        for (fd, inode) in files.take(table.open as usize).enumerate() {
            records.extend_from_slice(&me.to_ne_bytes());
            records.extend_from_slice(&(fd as u32).to_ne_bytes());
            records.extend_from_slice(&inode.to_ne_bytes());
        }
        let at_once_from = |read: &mut dyn FnMut() -> Option<Vec<u8>>| {
            take(
                &[me],
                &mut Namespaces::default(),
                false,
                FdTables::AllAtOnce(read),
                &TimeWait::All,
            )
            .unwrap()
        };
        let at_once = at_once_from(&mut || Some(records.clone()));
        assert_eq!(ours(&at_once.sockets, listening), expected);
        assert_eq!(at_once.fds.get(&me), Some(&table.open));
        assert!(at_once.open_files.is_some());
        // No tables at once (the iterator could not be read): /proc's.
        let fallback = at_once_from(&mut || None);
        assert_eq!(ours(&fallback.sockets, listening), expected);
        assert!(fallback.open_files.is_none());
    }

    #[test]
    fn finds_this_process_sockets_and_only_them() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let me = std::process::id();
        let snapshot = own_snapshot(true);
        let holders = snapshot.holders.clone();
        let held = snapshot.into_held();
        let sockets: Vec<&ExistingSocket> = held.iter().collect();
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
        assert!(holders.values().all(|pids| **pids == [me]));
        // Found anywhere on the host, too: held by this process only. This test's own sockets:
        // the other tests running meanwhile open and close theirs.
        let listening = listener.local_addr().unwrap();
        let inodes: FxHashSet<u64> = sockets
            .iter()
            .filter(|s| s.endpoints.local == listening || s.endpoints.remote == listening)
            .map(|s| s.inode)
            .collect();
        assert_eq!(inodes.len(), 3);
        let anywhere = holders_anywhere(&inodes, None);
        assert_eq!(anywhere.len(), inodes.len());
        assert!(anywhere.values().all(|pids| **pids == [me]));
    }

    #[test]
    fn a_time_wait_socket_is_not_kept_as_a_connection() {
        use std::io::Read;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let local = client.local_addr().unwrap();
        // This side closes first, the peer then: this side's socket waits in TIME_WAIT.
        drop(client);
        assert_eq!(server.read(&mut [0; 1]).unwrap(), 0);
        drop(server);
        let in_time_wait = || {
            let output = std::process::Command::new("ss")
                .args(["-Htn", "state", "time-wait", "src", &local.to_string()])
                .output()
                .unwrap();
            String::from_utf8_lossy(&output.stdout).contains(&local.to_string())
        };
        assert!((0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            in_time_wait()
        }));
        let snapshot = own_snapshot(true);
        assert!(in_time_wait());
        assert!(!snapshot.sockets.iter().any(|s| s.endpoints.local == local));
    }
}
