//! `-- COMMAND`: forked, held before exec until probe is attached, then released.

use std::{
    ffi::{CString, OsString},
    io,
    os::{fd::AsRawFd, fd::OwnedFd, unix::ffi::OsStrExt},
};

use nix::{
    fcntl::OFlag,
    sys::wait::waitpid,
    unistd::{
        ForkResult, Gid, Pid, Uid, User, dup2, execvp, execvpe, fork, pipe2, read, setgid,
        setgroups, setuid, write,
    },
};

use super::TargetError;

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
    // The environment `sudo -u USER` gives: the user's own HOME, USER and LOGNAME (prepared
    // here: the child may not allocate).
    let environment = run_as.map(|user| user_environment(user.uid)).transpose()?;
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
            let exec = || match &environment {
                Some(environment) => execvpe(&program, &argv, environment),
                None => execvp(&program, &argv),
            };
            let errno = match dropped.and_then(|()| exec()) {
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

/// probe's environment, with HOME, USER and LOGNAME those of user `uid` (from the password
/// database), as `sudo -u` sets them.
fn user_environment(uid: u32) -> Result<Vec<CString>, TargetError> {
    let user = User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .ok_or(TargetError::NoSuchUser(uid))?;
    let own = [
        ("HOME", user.dir.as_os_str().as_bytes()),
        ("USER", user.name.as_bytes()),
        ("LOGNAME", user.name.as_bytes()),
    ];
    let mut environment: Vec<CString> = std::env::vars_os()
        .filter(|(name, _)| !own.iter().any(|(own, _)| name.as_bytes() == own.as_bytes()))
        .filter_map(|(name, value)| {
            CString::new([name.as_bytes(), b"=", value.as_bytes()].concat()).ok()
        })
        .collect();
    for (name, value) in own {
        let entry = [name.as_bytes(), b"=", value].concat();
        environment.push(CString::new(entry).map_err(|_| TargetError::NulInCommand)?);
    }
    Ok(environment)
}

/// Collects the exit status of a child probe started, so it does not linger as a zombie.
pub fn reap(pid: u32) {
    let _ = waitpid(Pid::from_raw(pid as i32), None);
}

/// The file `program` names, as exec would find it: a path as is, a bare name in `PATH`.
pub fn executable(program: &std::ffi::OsStr) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let program = std::path::Path::new(program);
    if program.components().count() > 1 {
        return Some(program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::watch::exit_handle;

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
