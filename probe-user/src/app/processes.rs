//! Following the traced processes: their exits (pidfds), and the kernel's fork and exec events.

use std::{collections::HashSet, io, os::fd::AsRawFd};

use probe_common::{ProcessEvent, ProcessEventKind};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
};

use crate::target;

/// Registers an fd owner with the event loop, for readiness to read.
pub fn readable<T: AsRawFd>(owner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: every owner passed here (a ring buffer map, the kernel logger, a pidfd) owns its
    // fd, keeps it open for its whole life, and always returns that same fd.
    unsafe { AsyncFd::register_with_interest(owner, Interest::READABLE) }.map_err(io::Error::from)
}

/// Standard output, watched for its reader going away (a pipe reports an error then).
pub struct Stdout;

impl AsRawFd for Stdout {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        libc::STDOUT_FILENO
    }
}

/// Watches standard output for an error (the reading end of a pipe closed), where it can be
/// watched: not for files and the like, which cannot be polled.
pub fn watch_stdout() -> Option<AsyncFd<Stdout>> {
    // SAFETY: fd 1 stays open for the whole life of probe.
    unsafe { AsyncFd::register_with_interest(Stdout, Interest::ERROR) }.ok()
}

/// Tells when traced processes exit.
pub struct ExitWatch {
    tx: mpsc::UnboundedSender<u32>,
    rx: mpsc::UnboundedReceiver<u32>,
    /// The traced processes that are still running.
    alive: HashSet<u32>,
}

impl ExitWatch {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        ExitWatch {
            tx,
            rx,
            alive: HashSet::new(),
        }
    }

    /// Watches process `pid`; one that is already gone is reported as exited at once.
    pub fn watch(&mut self, pid: u32) {
        if !self.alive.insert(pid) {
            return;
        }
        let tx = self.tx.clone();
        match target::exit_handle(pid).and_then(readable) {
            Ok(handle) => {
                tokio::spawn(async move {
                    // Readable means exited; an error means it cannot be watched: the same.
                    let _ = handle.readable().await;
                    let _ = tx.send(pid);
                });
            }
            Err(_) => {
                let _ = tx.send(pid);
            }
        }
    }

    /// The next traced process to exit.
    pub async fn next_exit(&mut self) -> u32 {
        loop {
            // The channel cannot close: this struct holds a sender.
            if let Some(pid) = self.rx.recv().await
                && self.alive.remove(&pid)
            {
                return pid;
            }
        }
    }

    /// Whether `pid` is a traced process that is still running.
    pub fn is_alive(&self, pid: u32) -> bool {
        self.alive.contains(&pid)
    }

    /// The traced processes that are still running.
    pub fn alive(&self) -> impl Iterator<Item = u32> + '_ {
        self.alive.iter().copied()
    }

    /// How many traced processes are still running.
    pub fn count(&self) -> usize {
        self.alive.len()
    }
}

/// A fork or exec the kernel reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessNews {
    pub kind: ProcessEventKind,
    pub pid: u32,
    pub comm: String,
}

/// Decodes one record of the process ring buffer.
pub fn decode(bytes: &[u8]) -> Option<ProcessNews> {
    if bytes.len() < size_of::<ProcessEvent>() {
        return None;
    }
    // SAFETY: the length is checked, the read is unaligned, and `ProcessEvent` is plain old
    // data for which every bit pattern is valid.
    let raw = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ProcessEvent>()) };
    let kind = match raw.kind {
        1 => ProcessEventKind::Fork,
        2 => ProcessEventKind::Exec,
        _ => return None,
    };
    let end = raw
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(raw.comm.len());
    Some(ProcessNews {
        kind,
        pid: raw.pid,
        comm: String::from_utf8_lossy(&raw.comm[..end]).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_fork_with_its_name() {
        let mut comm = [0u8; 16];
        comm[..2].copy_from_slice(b"sh");
        let raw = ProcessEvent {
            kind: ProcessEventKind::Fork as u32,
            pid: 77,
            parent: 76,
            _pad: 0,
            comm,
        };
        // SAFETY: the bytes of a plain `#[repr(C)]` value with explicit padding.
        let bytes =
            unsafe { std::slice::from_raw_parts((&raw as *const ProcessEvent).cast::<u8>(), 32) };
        assert_eq!(
            decode(bytes),
            Some(ProcessNews {
                kind: ProcessEventKind::Fork,
                pid: 77,
                comm: "sh".into()
            })
        );
        assert_eq!(decode(&bytes[..31]), None);
    }
}
