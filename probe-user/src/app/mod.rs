//! One run of probe: find the targets and attach the kernel side ([`attach`]), note the
//! sockets the targets already have, start the command, then hand over to the [`Session`].

mod outputs;
mod session;
mod sources;

use anyhow::{Context, bail};

use crate::{
    bpf::{Streams, Tracer, privilege},
    cli::{Command, Config},
    clock::monotonic_now,
    output::metrics,
    process::{
        self, Process,
        spawn::{RunAs, spawn_held},
    },
    snapshot,
    track::{ExistingSocket, Timestamp},
};
use session::Session;
use sources::StopSignals;

/// Runs probe as configured.
pub fn run(config: &Config) -> anyhow::Result<()> {
    return_large_buffers_to_the_system();
    // A single-threaded runtime: the command is forked below while probe has one thread only.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?;
    let _entered = runtime.enter();
    // Ctrl-C and SIGTERM are caught from here on: once probe says it is tracing, they always
    // end it with a summary.
    let signals = StopSignals::catch()?;
    // Bound first: a busy port is an error before anything is loaded.
    let metrics_listener = config.metrics_addr.map(metrics::bind).transpose()?;
    let attached = attach(config)?;
    // Attached, seeded, the command started: what probe needs from here on is much less.
    privilege::drop_unneeded().context("cannot drop the capabilities probe no longer needs")?;
    eprintln!(
        "probe: tracing TCP state changes of {}{}{}; Ctrl-C to stop",
        attached.targets,
        if config.targets.follow_forks {
            " and their children"
        } else {
            ""
        },
        match attached.existing.len() {
            0 => String::new(),
            n => format!(" ({n} TCP socket(s) already open)"),
        }
    );
    let session = Session::start(config, attached, signals, metrics_listener)?;
    runtime.block_on(session.run())
}

/// The kernel side attached to the targets, and what probe knew of them at that moment.
pub struct Attached {
    pub tracer: Tracer,
    pub streams: Streams,
    pub processes: Vec<Process>,
    /// The process started from `-- COMMAND`.
    pub command_pid: Option<u32>,
    /// The targets' sockets when probe attached.
    pub existing: Vec<ExistingSocket>,
    /// When probe attached.
    pub attach: Timestamp,
    /// The traced processes, as the header of the live view and report name them.
    pub targets: String,
}

/// Finds the targets, loads and attaches the kernel side, seeds the sockets the targets already
/// have, and starts the command.
fn attach(config: &Config) -> anyhow::Result<Attached> {
    let targets = &config.targets;
    let mut processes = resolve_pids(&targets.pids)?;
    if let Some(name) = &targets.comm {
        let named = process::named(name)?;
        if named.is_empty() && !targets.follow_forks {
            bail!(
                "no running process is named `{name}` (see `pgrep -l {name}`); add \
                 --follow-forks to wait for one to start"
            );
        }
        for found in named {
            if !processes.iter().any(|p| p.pid == found.pid) {
                processes.push(found);
            }
        }
    }
    let (mut tracer, streams) = Tracer::load(config.tracer())?;
    for process in &processes {
        tracer.add_target(process.pid)?;
    }

    // The program is attached: every transition from here on is seen. The sockets the targets
    // already have are seeded so that their next transition is attributed too.
    let attach = monotonic_now();
    let pids: Vec<u32> = processes.iter().map(|p| p.pid).collect();
    let existing = snapshot::tcp_sockets(&pids)?;
    for socket in &existing {
        tracer.seed(socket)?;
    }

    let command_pid = match &targets.command {
        Some(command) => {
            let pid = start_command(command, config, &mut tracer)?;
            let comm = process::resolve(pid).map_or_else(|_| command_name(command), |p| p.comm);
            processes.push(Process {
                pid,
                comm,
                named_thread: None,
            });
            Some(pid)
        }
        None => None,
    };
    let names: Vec<String> = processes
        .iter()
        .map(|p| format!("{} ({})", p.pid, p.comm))
        .collect();
    let targets = match (&targets.comm, processes.is_empty()) {
        (Some(name), true) => format!("new processes named {name}"),
        _ => names.join(", "),
    };
    Ok(Attached {
        tracer,
        streams,
        processes,
        command_pid,
        existing,
        attach,
        targets,
    })
}

/// Starts `command`, registered as a target before it execs so that even its first connection
/// is attributed. Under sudo it runs as the user who asked, not as root.
fn start_command(command: &Command, config: &Config, tracer: &mut Tracer) -> anyhow::Result<u32> {
    let run_as = if command.as_root {
        None
    } else {
        RunAs::sudo_user(
            std::env::var("SUDO_UID").ok().as_deref(),
            std::env::var("SUDO_GID").ok().as_deref(),
            nix::unistd::geteuid().as_raw(),
        )
    };
    let stdout_to_stderr = config.view == crate::cli::View::Json;
    let held = spawn_held(&command.argv, stdout_to_stderr, run_as)?;
    tracer.add_target(held.pid())?;
    Ok(held.release()?)
}

/// A tcp_info dump of 100,000 sockets takes tens of MiB for a moment. glibc would serve the
/// first such buffer with mmap, then raise its mmap threshold and keep every later one in the
/// heap for good; a fixed threshold hands them back to the system when freed, so probe's memory
/// follows its connection table, not its largest refresh.
fn return_large_buffers_to_the_system() {
    // SAFETY: mallopt only changes allocator tunables; called before any other thread starts.
    let pinned = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024) };
    if pinned != 1 {
        log::debug!("mallopt(M_MMAP_THRESHOLD) refused; memory may stay at its peak");
    }
}

fn resolve_pids(pids: &[u32]) -> anyhow::Result<Vec<Process>> {
    let mut processes: Vec<Process> = Vec::new();
    for &pid in pids {
        let process = process::resolve(pid)?;
        if let Some(thread) = process.named_thread {
            eprintln!(
                "probe: {thread} is a thread of process {} ({}): tracing the whole process",
                process.pid, process.comm
            );
        }
        if !processes.iter().any(|p| p.pid == process.pid) {
            processes.push(process);
        }
    }
    Ok(processes)
}

/// The name the kernel gives an exec'd program: its file name, cut to 15 bytes.
fn command_name(command: &Command) -> String {
    let program = command.argv.first().map(std::path::Path::new);
    let name = program
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.chars().take(15).collect()
}
