//! One run of probe: find the targets and attach the kernel side ([`attach`]), note the
//! sockets the targets already have, start the command, then hand over to the [`Session`].

mod outputs;
mod session;
mod sources;

use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::{
    bpf::{OpenFilesRun, Streams, Tracer, privilege},
    cli::{Command, Config, Kernel, Scope},
    clock::monotonic_now,
    output::escape::terminal,
    process::{
        self, Process,
        cgroup::{self, TracedCgroup},
        spawn::{RunAs, spawn_held},
    },
    snapshot::{self, FdTables, Namespaces, TimeWait},
    track::{ExistingSocket, Timestamp},
};
use outputs::MetricsListener;
use session::Session;
use sources::StopSignals;

/// Runs probe as configured.
pub fn run(config: &Config) -> anyhow::Result<()> {
    refuse_a_closed_stdout(config)?;
    return_large_buffers_to_the_system();
    raise_the_fd_limit();
    // A single-threaded runtime: the command is forked below while probe has one thread only.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?;
    let _entered = runtime.enter();
    // Ctrl-C and SIGTERM are caught from here on: once probe says it is tracing, they always
    // end it with a summary.
    let signals = StopSignals::catch()?;
    // Bound first, its web configuration read (certificates and keys are often readable by
    // root only): a busy port or a bad file is an error before anything is loaded.
    let metrics_listener = config
        .metrics_addr
        .map(|address| MetricsListener::bind(address, config.metrics_web_config.as_deref()))
        .transpose()?;
    let attached = attach(config)?;
    // Attached, seeded, the command started: what probe needs from here on is much less.
    privilege::drop_unneeded().context("cannot drop the capabilities probe no longer needs")?;
    crate::say!(
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
    /// Their network namespaces, kept open for later refreshes.
    pub namespaces: Namespaces,
    /// How long reading the sockets took (a refresh takes about as long).
    pub snapshot_took: std::time::Duration,
    /// The traced cgroups' directories (with `--cgroup` and `--container`).
    pub cgroups: Vec<PathBuf>,
}

/// Finds the targets, loads and attaches the kernel side, seeds the sockets the targets already
/// have, and starts the command.
fn attach(config: &Config) -> anyhow::Result<Attached> {
    let targets = &config.targets;
    let (processes, cgroups) = match &config.scope {
        Scope::Processes => (named_processes(config)?, Vec::new()),
        Scope::Host => (process::all()?, Vec::new()),
        Scope::Cgroups { paths, containers } => {
            let cgroups = resolve_cgroups(paths, containers)?;
            let pids: Vec<u32> = cgroups
                .iter()
                .flat_map(|cgroup| cgroup::members(&cgroup.path))
                .collect();
            let processes = pids
                .into_iter()
                .filter_map(|pid| process::resolve(pid).ok())
                .collect();
            (processes, cgroups)
        }
    };
    let pids: Vec<u32> = processes.iter().map(|p| p.pid).collect();
    let sockets = match config.scope {
        Scope::Processes => snapshot::socket_count(&pids),
        // Counting every process's descriptors takes seconds on a busy host.
        Scope::Host | Scope::Cgroups { .. } => snapshot::tcp_sockets_in_namespaces(&pids),
    };
    let mut tracer_config = config.tracer(sockets);
    tracer_config.cgroups = cgroups.iter().map(|c| (c.id, c.level)).collect();
    let max_sockets = tracer_config.max_sockets;
    if Kernel::socket_slots_mib(max_sockets) >= 256 {
        crate::say!(
            "probe: room for {max_sockets} sockets takes about {} MiB of kernel memory, reserved \
             up front (and a few seconds to set up); lower --max-sockets if that is too much",
            Kernel::socket_slots_mib(max_sockets)
        );
    }
    let loading = std::time::Instant::now();
    let (mut tracer, streams) = Tracer::load(tracer_config)?;
    log::debug!(
        "kernel program loaded and attached in {:?}",
        loading.elapsed()
    );
    let mut traced = Vec::with_capacity(processes.len());
    for process in processes {
        // Only named processes are targets one by one; the kernel follows the host and
        // cgroups itself.
        if config.scope != Scope::Processes || tracer.add_target(process.pid)? {
            traced.push(process);
        }
    }
    // Every process in scope is hooked now (host-wide, every process of the host: a binary is
    // read once, however many run it); the ones that come later as probe meets them.
    let hooking = std::time::Instant::now();
    for process in &traced {
        let notes = tracer.hook_runtimes(process.pid, None);
        if config.scope == Scope::Processes {
            say_notes(notes);
        } else {
            // Host-wide, a note per unhookable binary on the host would drown the output.
            for note in notes {
                log::info!("{}", crate::output::escape::terminal(&note));
            }
        }
    }
    log::debug!(
        "runtimes of {} process(es) looked at for hooks in {:?}",
        traced.len(),
        hooking.elapsed()
    );
    let untraced = pids.len() - traced.len();
    let mut processes = traced;
    let pids: Vec<u32> = processes.iter().map(|p| p.pid).collect();
    if untraced > 0 {
        crate::say!(
            "probe: warning: {untraced} process(es) not traced: probe traces at most {} at once",
            crate::cli::MAX_TARGETS
        );
    }

    // The program is attached: every transition from here on is seen. The sockets the targets
    // already have are seeded so that their next transition is attributed too.
    let attach = monotonic_now();
    let mut namespaces = Namespaces::default();
    let strict = config.scope == Scope::Processes;
    let started = std::time::Instant::now();
    let mut read_at_once = || tracer.open_files().and_then(OpenFilesRun::read);
    let fd_tables = match config.scope {
        Scope::Processes => FdTables::Proc,
        Scope::Host | Scope::Cgroups { .. } => FdTables::AllAtOnce(&mut read_at_once),
    };
    // Only the sockets processes hold are kept: none in TIME_WAIT.
    let no_time_wait = TimeWait::Toward(Vec::new());
    let existing: Vec<ExistingSocket> =
        snapshot::take(&pids, &mut namespaces, strict, fd_tables, &no_time_wait)?.into_held();
    let snapshot_took = started.elapsed();
    log::debug!(
        "{} TCP sockets already open found in {snapshot_took:?}",
        existing.len()
    );
    let seeding = std::time::Instant::now();
    let refused = tracer.seed(&existing)?;
    log::debug!("seeded in {:?}", seeding.elapsed());
    if refused > 0 {
        crate::say!(
            "probe: warning: {refused} of the {} TCP sockets already open do not fit in \
             --max-sockets {max_sockets}: they are not followed (counted as untracked); raise \
             --max-sockets",
            existing.len()
        );
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
    let targets = match &config.scope {
        Scope::Processes => {
            let names: Vec<String> = processes
                .iter()
                .map(|p| format!("{} ({})", p.pid, terminal(&p.comm)))
                .collect();
            match (&targets.comm, processes.is_empty()) {
                (Some(name), true) => format!("new processes named {name}"),
                _ => names.join(", "),
            }
        }
        Scope::Host => format!("every process on the host ({} running)", processes.len()),
        Scope::Cgroups { .. } => {
            let paths: Vec<String> = cgroups
                .iter()
                .map(|c| terminal(&c.path.display().to_string()).into_owned())
                .collect();
            format!(
                "cgroup {} ({} process(es))",
                paths.join(", "),
                processes.len()
            )
        }
    };
    Ok(Attached {
        tracer,
        streams,
        processes,
        command_pid,
        existing,
        attach,
        targets,
        namespaces,
        snapshot_took,
        cgroups: cgroups.into_iter().map(|c| c.path).collect(),
    })
}

/// The processes `--pid` and `--comm` name.
fn named_processes(config: &Config) -> anyhow::Result<Vec<Process>> {
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
    Ok(processes)
}

/// The cgroups `--cgroup` and `--container` name.
fn resolve_cgroups(paths: &[PathBuf], containers: &[String]) -> anyhow::Result<Vec<TracedCgroup>> {
    let mut cgroups = Vec::new();
    for path in paths {
        cgroups.push(cgroup::resolve(path)?);
    }
    for prefix in containers {
        cgroups.push(cgroup::resolve(&cgroup::container(prefix)?)?);
    }
    Ok(cgroups)
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
    if !tracer.add_target(held.pid())? {
        anyhow::bail!(
            "cannot trace the command: probe already traces {} processes",
            crate::cli::MAX_TARGETS
        );
    }
    // Hooked before it runs: the binary it is about to exec.
    if let Some(binary) = command
        .argv
        .first()
        .and_then(|p| process::spawn::executable(p))
    {
        say_notes(tracer.hook_runtimes(held.pid(), Some(&binary)));
    }
    Ok(held.release()?)
}

/// Says what probe could not do for some processes, once each.
pub(crate) fn say_notes(notes: Vec<String>) {
    for note in notes {
        crate::say!("probe: note: {}", terminal(&note));
    }
}

/// Refuses a closed standard output (`probe >&-`) when it is all probe writes to: the Rust
/// runtime replaces a closed standard stream with /dev/null opened read-write before `main`
/// (so the next file probe opens cannot take its number), and every line would be lost
/// without a word. A /dev/null the shell opened (`> /dev/null`) is write-only and left alone,
/// and so is any stdout when a report or the metrics endpoint is what the user reads.
fn refuse_a_closed_stdout(config: &Config) -> anyhow::Result<()> {
    if config.report.is_some() || config.metrics_addr.is_some() {
        return Ok(());
    }
    let Ok(stdout) = nix::sys::stat::fstat(libc::STDOUT_FILENO) else {
        bail!("cannot write output: standard output is closed; redirect it instead (`> FILE`)");
    };
    let null = nix::sys::stat::stat("/dev/null").ok();
    let is_null = null.is_some_and(|null| {
        stdout.st_mode & libc::S_IFMT == libc::S_IFCHR && stdout.st_rdev == null.st_rdev
    });
    // SAFETY: F_GETFL only reads the descriptor's status flags.
    let flags = unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_GETFL) };
    if is_null && flags != -1 && flags & libc::O_ACCMODE == libc::O_RDWR {
        bail!(
            "cannot write output: standard output is closed; redirect it instead (`> FILE`, or \
             `> /dev/null` to discard it)"
        );
    }
    Ok(())
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

/// Hands the pages of the heap's free chunks back to the system. A refresh builds its picture
/// of the socket table from many small allocations (a holder list per socket, say) and frees
/// them all; the allocator keeps the pages they leave between live chunks until trimmed, so
/// probe's memory would follow its largest refresh, not its connection table.
fn give_back_freed_memory() {
    // SAFETY: malloc_trim only returns free memory to the kernel; it touches nothing the
    // program holds, and the allocator locks its arenas while it walks them.
    unsafe { libc::malloc_trim(0) };
}

/// Raises the soft limit on open files to the hard one: probe holds a file per map, per traced
/// process (its exit handle) and per metrics client, and a shell's default soft limit (1024) is
/// far below what a busy host needs. Where that fails, probe runs with what it has.
fn raise_the_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        log::debug!("cannot raise the open file limit from {soft} to {hard}: {error}");
    }
}

fn resolve_pids(pids: &[u32]) -> anyhow::Result<Vec<Process>> {
    let mut processes: Vec<Process> = Vec::new();
    for &pid in pids {
        let process = process::resolve_target(pid)?;
        if let Some(thread) = process.named_thread {
            crate::say!(
                "probe: {thread} is a thread of process {} ({}): tracing the whole process",
                process.pid,
                terminal(&process.comm)
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
