//! One run of probe: set up the targets and the kernel side, note the sockets the targets already
//! have, then hand over to the event loop.

mod event_loop;
mod processes;

use anyhow::{Context, bail};
use probe_common::TcpState;

use crate::{
    bpf::{Tracer, TracerConfig, privilege},
    cli::{Cli, MAX_TARGETS},
    clock::monotonic_now,
    output::metrics,
    snapshot,
    target::{self, Process},
};

/// Runs probe as the command line says.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    return_large_buffers_to_the_system();
    // A single-threaded runtime: the command is forked below while probe has one thread only.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?;
    // Ctrl-C and SIGTERM are caught from here on: once probe says it is tracing, they always
    // end it with a summary.
    let stop_signals = {
        let _runtime = runtime.enter();
        event_loop::StopSignals::catch()?
    };
    // Bound first: a busy port is an error before anything is loaded.
    let metrics_listener = cli.metrics_addr.map(metrics::bind).transpose()?;
    let mut processes = resolve_pids(&cli.pids)?;
    let follow = cli.follows_forks();
    if let Some(name) = &cli.comm {
        let named = target::named(name)?;
        if named.is_empty() && !follow {
            bail!(
                "no running process is named `{name}` (see `pgrep -l {name}`); add \
                 --follow-forks to wait for one to start"
            );
        }
        for process in named {
            if !processes.iter().any(|p| p.pid == process.pid) {
                processes.push(process);
            }
        }
    }
    let (mut tracer, streams) = Tracer::load(TracerConfig {
        ring_buffer_bytes: cli.ring_buffer_kib * 1024,
        max_sockets: cli.max_sockets,
        max_targets: MAX_TARGETS,
        kernel_logs: cli.verbose,
        follow_forks: follow,
        comm_filter: if follow { cli.comm_filter() } else { None },
        stacks: !cli.no_stacks,
        attach: cli.attach,
    })?;
    for process in &processes {
        tracer.add_target(process.pid)?;
    }

    // The program is attached: every transition from here on is seen. The sockets the targets
    // already have are seeded so that their next transition is attributed too.
    let attach = monotonic_now();
    let pids: Vec<u32> = processes.iter().map(|p| p.pid).collect();
    let existing = snapshot::tcp_sockets(&pids)?;
    for socket in &existing {
        tracer.seed_socket(snapshot::seed_tuple(&socket.endpoints), socket.pid)?;
        if socket.state == TcpState::Listen {
            tracer.seed_listener(snapshot::listener_key(&socket.endpoints), socket.pid)?;
        }
    }

    let command_pid = if cli.command.is_empty() {
        None
    } else {
        // Registered before it execs, so even its first connection is attributed.
        // Under sudo the command runs as the user who asked, not as root.
        let run_as = if cli.as_root {
            None
        } else {
            target::RunAs::sudo_user(
                std::env::var("SUDO_UID").ok().as_deref(),
                std::env::var("SUDO_GID").ok().as_deref(),
                nix::unistd::geteuid().as_raw(),
            )
        };
        let held = target::spawn_held(&cli.command, cli.json, run_as)?;
        tracer.add_target(held.pid())?;
        let pid = held.release()?;
        let comm = target::resolve(pid).map_or_else(|_| command_name(&cli), |p| p.comm);
        processes.push(Process {
            pid,
            comm,
            named_thread: None,
        });
        Some(pid)
    };
    // Attached, seeded, the command started: what probe needs from here on is much less.
    privilege::drop_unneeded().context("cannot drop the capabilities probe no longer needs")?;
    let names: Vec<String> = processes
        .iter()
        .map(|p| format!("{} ({})", p.pid, p.comm))
        .collect();
    let waiting = match (&cli.comm, processes.is_empty()) {
        (Some(name), true) => format!("new processes named {name}"),
        _ => names.join(", "),
    };
    eprintln!(
        "probe: tracing TCP state changes of {waiting}{}{}; Ctrl-C to stop",
        if follow { " and their children" } else { "" },
        match existing.len() {
            0 => String::new(),
            n => format!(" ({n} TCP socket(s) already open)"),
        }
    );

    let targets = waiting;
    runtime.block_on(event_loop::run(event_loop::Setup {
        stop_signals,
        cli: &cli,
        tracer,
        streams,
        processes,
        command_pid,
        existing,
        attach,
        targets,
        metrics_listener,
    }))
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
        let process = target::resolve(pid)?;
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
fn command_name(cli: &Cli) -> String {
    let program = cli.command.first().map(std::path::Path::new);
    let name = program
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.chars().take(15).collect()
}
