//! The processes probe traces: resolving `--pid` and `--comm` ([`resolve`], [`named`]),
//! starting `-- COMMAND` held before exec so that its first connection is seen ([`spawn`]), and
//! following them: their exits, and the forks and execs the kernel reports ([`watch`]).

pub mod binary;
pub mod cgroup;
pub mod go_line_table;
pub mod python;
pub mod spawn;
pub mod watch;

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
    #[error(
        "no user has uid {0} (SUDO_UID): run the command as root with --as-root, or fix SUDO_UID"
    )]
    NoSuchUser(u32),
    #[error(
        "process {0} has exited (a zombie its parent has not reaped): it has no connections \
         left to trace"
    )]
    Zombie(u32),
    #[error(
        "{pid} ({name}) is a kernel thread: it has no TCP connections of its own; trace the \
         process that owns them (see `ss -tnp`)"
    )]
    KernelThread { pid: u32, name: String },
}

/// `PF_KTHREAD` in a task's flags (`/proc/PID/stat`): a kernel thread.
const PF_KTHREAD: u32 = 0x0020_0000;

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

/// A process the user asked to trace (`--pid`): as [`resolve`], and refused when it cannot
/// have connections of its own (a zombie, a kernel thread).
pub fn resolve_target(pid: u32) -> Result<Process, TargetError> {
    let process = resolve(pid)?;
    let id = i32::try_from(process.pid).map_err(|_| TargetError::NoSuchProcess(pid))?;
    let stat = procfs::process::Process::new(id)
        .and_then(|p| p.stat())
        .map_err(|error| TargetError::Proc { pid, error })?;
    if stat.state == 'Z' {
        return Err(TargetError::Zombie(process.pid));
    }
    if stat.flags & PF_KTHREAD != 0 {
        return Err(TargetError::KernelThread {
            pid: process.pid,
            name: process.comm,
        });
    }
    Ok(process)
}

/// Whether process `pid` runs (exists and is not a zombie).
pub fn is_running(pid: u32) -> bool {
    i32::try_from(pid)
        .ok()
        .and_then(|id| procfs::process::Process::new(id).ok())
        .and_then(|process| process.stat().ok())
        .is_some_and(|stat| !matches!(stat.state, 'Z' | 'X'))
}

/// Every process on the host but kernel threads and zombies (for host-wide mode).
pub fn all() -> Result<Vec<Process>, TargetError> {
    let all = procfs::process::all_processes().map_err(TargetError::ProcList)?;
    Ok(all
        .filter_map(Result::ok)
        .filter_map(|process| process.stat().ok())
        .filter(|stat| stat.flags & PF_KTHREAD == 0 && stat.state != 'Z')
        .filter_map(|stat| {
            Some(Process {
                pid: u32::try_from(stat.pid).ok()?,
                comm: stat.comm,
                named_thread: None,
            })
        })
        .collect())
}

/// Process `pid`'s soft limit on open files; `None` when unlimited or unreadable.
pub fn fd_limit(pid: u32) -> Option<u64> {
    let limits = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .and_then(|process| process.limits())
        .ok()?;
    match limits.max_open_files.soft_limit {
        procfs::process::LimitValue::Value(limit) => Some(limit),
        procfs::process::LimitValue::Unlimited => None,
    }
}

/// Process `pid`'s name now (`/proc/PID/comm`: a process can rename itself at any time).
pub fn name(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.strip_suffix('\n').unwrap_or(&comm).to_string())
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
    fn kernel_threads_are_refused_with_a_reason() {
        // kthreadd, the parent of every kernel thread, is always pid 2.
        let error = resolve_target(2).unwrap_err();
        assert!(matches!(error, TargetError::KernelThread { .. }), "{error}");
        assert!(resolve_target(std::process::id()).is_ok());
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
}
