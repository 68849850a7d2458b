//! The processes probe traces: resolving `--pid`, starting `-- COMMAND` held before exec so its
//! first connection is seen, and noticing when they exit.

use std::{
    ffi::{CString, OsString},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
};

use nix::{
    fcntl::OFlag,
    sys::wait::waitpid,
    unistd::{
        ForkResult, Gid, Pid, Uid, dup2, execvp, fork, pipe2, read, setgid, setgroups, setuid,
        write,
    },
};

/// Why a process cannot be traced.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with pid {0} is running (find it with `pgrep NAME` or `ps aux`)")]
    NoSuchProcess(u32),
    #[error("cannot read /proc/{pid} ({error}); run probe as root (sudo)")]
    Proc { pid: u32, error: procfs::ProcError },
    #[error("cannot list the processes in /proc ({0}); run probe as root (sudo)")]
    ProcList(procfs::ProcError),
    #[error("cannot start `{command}`: {reason}")]
    Exec { command: String, reason: String },
    #[error("cannot start `{command}`: {error}")]
    Spawn { command: String, error: nix::Error },
    #[error("the command is empty: put it after `--`, e.g. `probe -- curl http://127.0.0.1/`")]
    EmptyCommand,
    #[error("the command contains a NUL byte")]
    NulInCommand,
}

/// A traced process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// The process id (tgid): all its threads share it.
    pub pid: u32,
    /// Its name, from `/proc/PID/comm`.
    pub comm: String,
    /// The thread id the user named, when it was a thread rather than the process itself.
    pub named_thread: Option<u32>,
}

/// Looks up a running process; a thread id resolves to its process.
pub fn resolve(pid: u32) -> Result<Process, TargetError> {
    let proc_error = |error| match error {
        procfs::ProcError::NotFound(_) => TargetError::NoSuchProcess(pid),
        error => TargetError::Proc { pid, error },
    };
    let id = i32::try_from(pid).map_err(|_| TargetError::NoSuchProcess(pid))?;
    let status = procfs::process::Process::new(id)
        .and_then(|process| process.status())
        .map_err(proc_error)?;
    let tgid = u32::try_from(status.tgid).map_err(|_| TargetError::NoSuchProcess(pid))?;
    Ok(Process {
        pid: tgid,
        comm: status.name,
        named_thread: (tgid != pid).then_some(pid),
    })
}

/// The running processes named `name` (as `/proc/PID/comm` has it).
pub fn named(name: &str) -> Result<Vec<Process>, TargetError> {
    let all = procfs::process::all_processes().map_err(TargetError::ProcList)?;
    Ok(all
        .filter_map(Result::ok)
        .filter_map(|process| process.stat().ok())
        .filter(|stat| stat.comm == name)
        .filter_map(|stat| {
            Some(Process {
                pid: u32::try_from(stat.pid).ok()?,
                comm: stat.comm,
                named_thread: None,
            })
        })
        .collect())
}

/// A child forked from `-- COMMAND` that waits, before exec, until probe is ready for it.
pub struct HeldChild {
    pid: u32,
    command: String,
    go: OwnedFd,
    exec_errors: OwnedFd,
}

impl HeldChild {
    /// The child's pid, to register before [`HeldChild::release`].
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Lets the child exec the command; fails if the exec fails.
    pub fn release(self) -> Result<u32, TargetError> {
        let spawn_error = |error| TargetError::Spawn {
            command: self.command.clone(),
            error,
        };
        write(&self.go, &[1]).map_err(spawn_error)?;
        // The error pipe closes on a successful exec (close-on-exec); an errno arrives otherwise.
        let mut errno = [0u8; 4];
        let n = read(self.exec_errors.as_raw_fd(), &mut errno).map_err(spawn_error)?;
        if n == errno.len() {
            // Reap the child, which has exited with status 127.
            let _ = waitpid(Pid::from_raw(self.pid as i32), None);
            let reason = io::Error::from_raw_os_error(i32::from_ne_bytes(errno)).to_string();
            return Err(TargetError::Exec {
                command: self.command,
                reason: reason.to_lowercase(),
            });
        }
        Ok(self.pid)
    }
}

/// A user and group to run a command as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// The user who ran `sudo probe ...`, from `SUDO_UID` and `SUDO_GID`, when probe runs as root
    /// through sudo.
    pub fn sudo_user(uid: Option<&str>, gid: Option<&str>, euid: u32) -> Option<RunAs> {
        if euid != 0 {
            return None;
        }
        Some(RunAs {
            uid: uid?.parse().ok()?,
            gid: gid?.parse().ok()?,
        })
    }
}

/// Forks `command`, held before exec until [`HeldChild::release`]. With `stdout_to_stderr`, the
/// command's standard output goes to probe's standard error (so it does not mix with probe's
/// NDJSON); with `run_as`, it runs as that user, without supplementary groups.
///
/// Call this while probe is still single-threaded (before the async runtime starts): between
/// fork and exec the child only calls async-signal-safe functions on data prepared beforehand.
pub fn spawn_held(
    command: &[OsString],
    stdout_to_stderr: bool,
    run_as: Option<RunAs>,
) -> Result<HeldChild, TargetError> {
    let argv: Vec<CString> = command
        .iter()
        .map(|arg| CString::new(arg.as_bytes()).map_err(|_| TargetError::NulInCommand))
        .collect::<Result<_, _>>()?;
    let program = argv.first().ok_or(TargetError::EmptyCommand)?.clone();
    let shown = command
        .iter()
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let spawn_error = |error| TargetError::Spawn {
        command: shown.clone(),
        error,
    };
    let (go_read, go_write) = pipe2(OFlag::O_CLOEXEC).map_err(spawn_error)?;
    let (errors_read, errors_write) = pipe2(OFlag::O_CLOEXEC).map_err(spawn_error)?;

    // SAFETY: probe is single-threaded here (see above), and the child only reads, dups, execs,
    // writes and exits.
    match unsafe { fork() }.map_err(spawn_error)? {
        ForkResult::Child => {
            drop(go_write);
            drop(errors_read);
            let mut byte = [0u8; 1];
            // EOF instead of the go byte: probe died before releasing us. Do not run.
            if !matches!(read(go_read.as_raw_fd(), &mut byte), Ok(1)) {
                // SAFETY: _exit is async-signal-safe and never returns.
                unsafe { libc::_exit(1) };
            }
            if stdout_to_stderr {
                let _ = dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO);
            }
            let dropped = match run_as {
                Some(user) => setgroups(&[])
                    .and_then(|()| setgid(Gid::from_raw(user.gid)))
                    .and_then(|()| setuid(Uid::from_raw(user.uid))),
                None => Ok(()),
            };
            let errno = match dropped.and_then(|()| execvp(&program, &argv)) {
                Err(errno) => errno as i32,
                Ok(never) => match never {},
            };
            let _ = write(&errors_write, &errno.to_ne_bytes());
            // SAFETY: as above.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => Ok(HeldChild {
            pid: child.as_raw() as u32,
            command: shown,
            go: go_write,
            exec_errors: errors_read,
        }),
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

/// Collects the exit status of a child probe started, so it does not linger as a zombie.
pub fn reap(pid: u32) {
    let _ = waitpid(Pid::from_raw(pid as i32), None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_this_process_and_its_threads() {
        let me = std::process::id();
        let process = resolve(me).unwrap();
        assert_eq!(process.pid, me);
        assert_eq!(process.named_thread, None);

        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw() as u32).unwrap();
            done_rx.recv().unwrap();
        });
        let tid = rx.recv().unwrap();
        let resolved = resolve(tid).unwrap();
        assert_eq!(resolved.pid, me);
        assert_eq!(resolved.named_thread, Some(tid));
        done_tx.send(()).unwrap();
        thread.join().unwrap();
    }

    #[test]
    fn finds_processes_by_name() {
        let me = resolve(std::process::id()).unwrap();
        let named = named(&me.comm).unwrap();
        assert!(named.iter().any(|p| p.pid == me.pid));
        assert!(named.iter().all(|p| p.comm == me.comm));
        assert!(super::named("no-such-name-x").unwrap().is_empty());
    }

    #[test]
    fn a_missing_process_is_a_clear_error() {
        // pid_max is at most 2^22, so this pid cannot exist.
        let err = resolve(i32::MAX as u32).unwrap_err();
        assert!(matches!(err, TargetError::NoSuchProcess(_)), "{err}");
        assert!(err.to_string().contains("pgrep"));
    }

    #[test]
    fn a_held_child_runs_only_when_released() {
        let child = spawn_held(&["true".into()], false, None).unwrap();
        let pid = child.pid();
        let exit = exit_handle(pid).unwrap();
        // Still held: its pidfd is not readable.
        let mut fds = [libc::pollfd {
            fd: exit.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: polling one valid fd.
        assert_eq!(unsafe { libc::poll(fds.as_mut_ptr(), 1, 200) }, 0);
        assert_eq!(child.release().unwrap(), pid);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::poll(fds.as_mut_ptr(), 1, 5000) }, 1);
        reap(pid);
    }

    #[test]
    fn the_sudo_user_is_taken_only_when_running_as_root() {
        assert_eq!(
            RunAs::sudo_user(Some("1000"), Some("1001"), 0),
            Some(RunAs {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(RunAs::sudo_user(Some("1000"), Some("1001"), 1000), None);
        assert_eq!(RunAs::sudo_user(None, Some("1001"), 0), None);
        assert_eq!(RunAs::sudo_user(Some("x"), Some("1001"), 0), None);
    }

    #[test]
    fn a_command_that_cannot_run_says_why() {
        let child = spawn_held(&["/nonexistent/program".into()], false, None).unwrap();
        let err = child.release().unwrap_err();
        assert!(
            err.to_string().contains("no such file or directory"),
            "{err}"
        );
    }
}
