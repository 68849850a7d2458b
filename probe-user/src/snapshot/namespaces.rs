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

use super::diag::{self, DiagSocket};

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

    /// Every TCP socket of every namespace noted, by namespace inode.
    pub fn dump_all(&self) -> io::Result<HashMap<u64, Vec<DiagSocket>>> {
        let own = fs::metadata("/proc/self/ns/net")?.ino();
        self.open
            .iter()
            .map(|(&inode, file)| {
                let sockets = if inode == own {
                    diag::dump_tcp()?
                } else {
                    in_namespace(Arc::clone(file), diag::dump_tcp)?
                };
                Ok((inode, sockets))
            })
            .collect()
    }
}

/// Runs `read` on a thread of its own that joins the network namespace `namespace` (so the
/// rest of probe stays where it is).
fn in_namespace<T: Send + 'static>(
    namespace: Arc<File>,
    read: fn() -> io::Result<T>,
) -> io::Result<T> {
    thread::spawn(move || {
        setns(&*namespace, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        read()
    })
    .join()
    .map_err(|_| io::Error::other("the namespace reader panicked"))?
}
