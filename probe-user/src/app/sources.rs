//! What the session waits on besides the kernel: the signals that say stop, and standard
//! output's reader going away.

use std::{io, os::fd::AsRawFd};

use anyhow::Context;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{Signal, SignalKind, signal},
};

/// Registers an fd owner with the event loop, for readiness to read.
pub fn readable<T: AsRawFd>(owner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: every owner passed here (a ring buffer map, the kernel logger) owns its fd, keeps
    // it open for its whole life, and always returns that same fd.
    unsafe { AsyncFd::register_with_interest(owner, Interest::READABLE) }.map_err(io::Error::from)
}

/// Ctrl-C, SIGTERM and SIGHUP (the terminal or ssh session went away), caught.
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl StopSignals {
    /// Catches SIGINT, SIGTERM and SIGHUP (within a runtime context): from here on, they end
    /// probe with a summary, a report and a last look at the metrics.
    pub fn catch() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        })
    }

    /// The next stop signal: true for SIGHUP (the terminal may be gone with it).
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.interrupt.recv() => false,
            _ = self.terminate.recv() => false,
            _ = self.hangup.recv() => true,
        }
    }
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
