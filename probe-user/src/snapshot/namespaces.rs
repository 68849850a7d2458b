//! The network namespaces of the traced processes, kept open. A socket outlives its process
//! (a close the kernel finishes alone, a socket handed to another process), so probe must be
//! able to read a namespace's sockets after every traced process in it has exited: holding the
//! namespace file keeps the namespace, and the way into it.

use std::{
    collections::HashMap,
    fs::{self, File},
    io,
    os::unix::fs::MetadataExt,
    sync::Arc,
    thread,
};

use nix::sched::{CloneFlags, setns};

use super::{
    diag::{self, DiagSocket},
    time_wait::TimeWait,
};

/// The namespaces noted so far, by inode.
#[derive(Debug, Default)]
pub struct Namespaces {
    open: HashMap<u64, Arc<File>>,
}

impl Namespaces {
    /// Notes the network namespace of process `pid` (kept open from now on); returns its inode.
    pub fn note(&mut self, pid: u32) -> io::Result<u64> {
        let path = format!("/proc/{pid}/ns/net");
        let inode = fs::metadata(&path)?.ino();
        if let std::collections::hash_map::Entry::Vacant(entry) = self.open.entry(inode) {
            entry.insert(Arc::new(File::open(&path)?));
        }
        Ok(inode)
    }

    /// Every TCP socket of every namespace noted (of those in TIME_WAIT, the ones `time_wait`
    /// asks for), by namespace inode, with the namespace's ephemeral port range.
    pub fn dump_all(&self, time_wait: &TimeWait) -> io::Result<HashMap<u64, SocketTable>> {
        let own = fs::metadata("/proc/self/ns/net")?.ino();
        self.open
            .iter()
            .map(|(&inode, file)| {
                let table = if inode == own {
                    read_table(time_wait)?
                } else {
                    let time_wait = time_wait.clone();
                    in_namespace(Arc::clone(file), move || read_table(&time_wait))?
                };
                Ok((inode, table))
            })
            .collect()
    }
}

/// One namespace's TCP sockets, and the range connect() picks local ports from.
#[derive(Debug)]
pub struct SocketTable {
    pub sockets: Vec<DiagSocket>,
    /// `net.ipv4.ip_local_port_range`, where it could be read.
    pub port_range: Option<(u16, u16)>,
    /// `TcpExt: ListenOverflows` of /proc/net/netstat, where it could be read.
    pub listen_overflows: Option<u64>,
}

/// The calling thread's namespace's table (`/proc/sys/net` shows the namespace of whoever
/// reads it).
fn read_table(time_wait: &TimeWait) -> io::Result<SocketTable> {
    Ok(SocketTable {
        sockets: diag::dump_tcp(time_wait)?,
        port_range: fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| parse_port_range(&text)),
        listen_overflows: fs::read_to_string("/proc/thread-self/net/netstat")
            .ok()
            .and_then(|text| netstat_counter(&text, "TcpExt:", "ListenOverflows")),
    })
}

/// A counter of /proc/net/netstat: a line of names, then a line of values, per group.
fn netstat_counter(text: &str, group: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|line| line.starts_with(group));
    let names = lines.next()?;
    let values = lines.next()?;
    let index = names.split_whitespace().position(|field| field == name)?;
    values.split_whitespace().nth(index)?.parse().ok()
}

/// `32768\t60999\n` -> (32768, 60999).
fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    let (low, high) = (numbers.next()?.ok()?, numbers.next()?.ok()?);
    (low <= high).then_some((low, high))
}

/// Runs `read` on a thread of its own that joins the network namespace `namespace` (so the
/// rest of probe stays where it is).
fn in_namespace<T: Send + 'static>(
    namespace: Arc<File>,
    read: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    thread::spawn(move || {
        setns(&*namespace, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        read()
    })
    .join()
    .map_err(|_| io::Error::other("the namespace reader panicked"))?
}

#[cfg(test)]
mod tests {
    #[test]
    fn netstat_counters_are_found_by_name() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 17 19\n\
                    IpExt: InNoRoutes\nIpExt: 3\n";
        assert_eq!(
            super::netstat_counter(text, "TcpExt:", "ListenOverflows"),
            Some(17)
        );
        assert_eq!(super::netstat_counter(text, "TcpExt:", "Nope"), None);
    }

    #[test]
    fn port_ranges_are_read_as_the_sysctl_writes_them() {
        assert_eq!(
            super::parse_port_range("32768\t60999\n"),
            Some((32768, 60999))
        );
        assert_eq!(super::parse_port_range("60999 32768"), None);
        assert_eq!(super::parse_port_range("x"), None);
    }
}
