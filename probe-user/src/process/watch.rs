//! Following the traced processes: their exits (pidfds), and the forks and execs the kernel
//! reports.

use std::{
    collections::HashSet,
    io,
    os::fd::{FromRawFd, OwnedFd},
};

use probe_common::{ProcessEvent, ProcessEventKind};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
};

/// Tells when traced processes exit.
pub struct ExitWatch {
    tx: mpsc::UnboundedSender<u32>,
    rx: mpsc::UnboundedReceiver<u32>,
    /// The traced processes that are still running.
    alive: HashSet<u32>,
}

impl Default for ExitWatch {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        ExitWatch {
            tx,
            rx,
            alive: HashSet::new(),
        }
    }
}

impl ExitWatch {
    /// Watches process `pid` (within a runtime context); one that is already gone is reported
    /// as exited at once.
    pub fn watch(&mut self, pid: u32) {
        if !self.alive.insert(pid) {
            return;
        }
        let tx = self.tx.clone();
        let handle = exit_handle(pid).and_then(|fd| {
            // SAFETY: the pidfd is owned by the AsyncFd, open for its whole life, and always
            // the same fd.
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(io::Error::from)
        });
        match handle {
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

/// A handle that becomes readable when process `pid` exits (a pidfd).
pub fn exit_handle(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall just returned this fd, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A fork or exec the kernel reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessNews {
    pub kind: ProcessEventKind,
    pub pid: u32,
    pub comm: String,
}

impl ProcessNews {
    /// Decodes one record of the process ring buffer.
    pub fn decode(bytes: &[u8]) -> Option<ProcessNews> {
        if bytes.len() < size_of::<ProcessEvent>() {
            return None;
        }
        // SAFETY: the length is checked, the read is unaligned, and `ProcessEvent` is plain old
        // data for which every bit pattern is valid.
        let raw = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ProcessEvent>()) };
        let end = raw
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(raw.comm.len());
        Some(ProcessNews {
            kind: ProcessEventKind::from_raw(raw.kind)?,
            pid: raw.pid,
            comm: String::from_utf8_lossy(&raw.comm[..end]).into_owned(),
        })
    }
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
            ProcessNews::decode(bytes),
            Some(ProcessNews {
                kind: ProcessEventKind::Fork,
                pid: 77,
                comm: "sh".into()
            })
        );
        assert_eq!(ProcessNews::decode(&bytes[..31]), None);
        let mut unknown = raw;
        unknown.kind = 9;
        // SAFETY: as above.
        let bytes = unsafe {
            std::slice::from_raw_parts((&unknown as *const ProcessEvent).cast::<u8>(), 32)
        };
        assert_eq!(ProcessNews::decode(bytes), None);
    }
}
