//! One run of probe: set up the targets and the kernel side, then move events from the ring
//! buffer through the tracker to the sink until something says stop.

use std::{
    io::{self, BufWriter, IsTerminal},
    os::fd::AsRawFd,
    time::Duration,
};

use anyhow::Context;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{Instant, sleep, sleep_until},
};

use crate::{
    bpf::{Streams, Tracer, TracerConfig},
    cli::{Cli, MAX_TARGETS},
    clock::{WallClock, monotonic_now},
    output::{Sink, json::JsonSink, text::TextSink},
    target::{self, Process},
    track::{Thresholds, Tracker, Transition},
};

/// After the last traced process exits, keep reading this long: the FINs its exit sent are
/// answered within moments on a live network, and those transitions belong to the story.
const EXIT_GRACE: Duration = Duration::from_millis(300);
/// Wake at least this often, to flag stuck connections on time even when nothing happens.
const MAX_IDLE_TICK: Duration = Duration::from_secs(1);

/// Runs probe as the command line says.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let mut processes = resolve_pids(&cli.pids)?;
    let (mut tracer, streams) = Tracer::load(TracerConfig {
        ring_buffer_bytes: cli.ring_buffer_kib * 1024,
        max_sockets: cli.max_sockets,
        max_targets: MAX_TARGETS,
        kernel_logs: cli.verbose,
    })?;
    for process in &processes {
        tracer.add_target(process.pid)?;
    }
    let command_pid = if cli.command.is_empty() {
        None
    } else {
        // Registered before it execs, so even its first connection is attributed.
        let held = target::spawn_held(&cli.command, cli.json)?;
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
    let names: Vec<String> = processes
        .iter()
        .map(|p| format!("{} ({})", p.pid, p.comm))
        .collect();
    eprintln!(
        "probe: tracing TCP state changes of {}; Ctrl-C to stop",
        names.join(", ")
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?;
    runtime.block_on(event_loop(&cli, tracer, streams, &processes, command_pid))
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

fn make_sink(json: bool) -> Box<dyn Sink> {
    let clock = WallClock::now();
    let stdout = io::stdout();
    let colour = stdout.is_terminal();
    let out = BufWriter::new(stdout);
    if json {
        Box::new(JsonSink::new(out, clock))
    } else {
        Box::new(TextSink::new(out, clock, colour))
    }
}

/// Why the event loop ended.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// Ctrl-C, SIGTERM or `--duration`.
    Asked,
    /// The traced command, or every traced process, exited.
    TargetsExited,
    /// Standard output was closed (e.g. `probe ... | head`).
    OutputClosed,
}

async fn event_loop(
    cli: &Cli,
    mut tracer: Tracer,
    streams: Streams,
    processes: &[Process],
    command_pid: Option<u32>,
) -> anyhow::Result<()> {
    let mut tracker = Tracker::new(Thresholds {
        close_wait: cli.close_wait_after,
        established: cli.established_after,
    });
    for process in processes {
        tracker.register_process(process.pid, &process.comm);
    }
    let mut sink = make_sink(cli.json);
    let mut events = readable(streams.events).context("cannot poll the kernel ring buffer")?;
    let mut logs = readable(streams.logger).context("cannot poll the kernel log")?;
    let mut exits = watch_exits(processes)?;
    let mut alive = processes.len();
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let end = cli.duration.map(|d| Instant::now() + d);

    let stop = loop {
        let step: io::Result<Option<Stop>> = tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard.context("cannot poll the kernel ring buffer")?;
                let result = drain(guard.get_inner_mut(), &mut tracker, sink.as_mut());
                guard.clear_ready();
                result.map(|()| None)
            }
            guard = logs.readable_mut() => {
                let mut guard = guard.context("cannot poll the kernel log")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
                Ok(None)
            }
            Some(pid) = exits.recv() => {
                tracer.remove_target(pid)?;
                alive -= 1;
                if command_pid == Some(pid) {
                    target::reap(pid);
                }
                let done = command_pid == Some(pid) || alive == 0;
                Ok(done.then_some(Stop::TargetsExited))
            }
            _ = interrupt.recv() => Ok(Some(Stop::Asked)),
            _ = terminate.recv() => Ok(Some(Stop::Asked)),
            _ = sleep_until(end.unwrap_or_else(far_future)), if end.is_some() => Ok(Some(Stop::Asked)),
            _ = sleep(next_tick(&tracker)) => Ok(None),
        };
        let step = step.and_then(|stop| {
            report_stuck(&mut tracker, sink.as_mut())?;
            sink.flush()?;
            Ok(stop)
        });
        match step {
            Ok(Some(stop)) => break stop,
            Ok(None) => {}
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => break Stop::OutputClosed,
            Err(error) => return Err(error).context("cannot write output"),
        }
    };
    if stop == Stop::OutputClosed {
        return Ok(());
    }
    if stop == Stop::TargetsExited {
        sleep(EXIT_GRACE).await;
    }
    let finished = drain(events.get_mut(), &mut tracker, sink.as_mut())
        .and_then(|()| report_stuck(&mut tracker, sink.as_mut()));
    logs.get_mut().flush();

    let counters = tracer.counters()?;
    let mut summary = tracker.summary(monotonic_now());
    summary.lost_events = counters.ring_buf_full;
    summary.untracked_sockets = counters.owner_map_full + counters.listener_map_full;
    if summary.lost_events > 0 || summary.untracked_sockets > 0 {
        eprintln!(
            "probe: warning: {} event(s) lost (ring buffer full: raise --ring-buffer-kib) and {} \
             socket(s) untracked (raise --max-sockets)",
            summary.lost_events, summary.untracked_sockets
        );
    }
    match finished.and_then(|()| sink.summary(&summary)) {
        Err(error) if error.kind() != io::ErrorKind::BrokenPipe => {
            Err(error).context("cannot write output")
        }
        _ => Ok(()),
    }
}

/// Moves every event waiting in the ring buffer through the tracker to the sink.
fn drain(
    ring: &mut RingBuf<MapData>,
    tracker: &mut Tracker,
    sink: &mut dyn Sink,
) -> io::Result<()> {
    while let Some(item) = ring.next() {
        match Transition::decode(&item) {
            Ok(transition) => sink.transition(&tracker.apply(&transition))?,
            Err(error) => log::warn!("skipping a malformed kernel event: {error}"),
        }
    }
    Ok(())
}

fn report_stuck(tracker: &mut Tracker, sink: &mut dyn Sink) -> io::Result<()> {
    for alert in tracker.due_stuck(monotonic_now()) {
        sink.stuck(&alert)?;
    }
    Ok(())
}

/// How long to sleep until the next stuck deadline, at most [`MAX_IDLE_TICK`].
fn next_tick(tracker: &Tracker) -> Duration {
    tracker
        .next_deadline()
        .map_or(MAX_IDLE_TICK, |deadline| {
            deadline.saturating_since(monotonic_now())
        })
        .min(MAX_IDLE_TICK)
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

/// Registers an fd owner with the event loop, for readiness to read.
fn readable<T: AsRawFd>(owner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: every owner passed here (a ring buffer map, the kernel logger, a pidfd) owns its
    // fd, keeps it open for its whole life, and always returns that same fd.
    unsafe { AsyncFd::register_with_interest(owner, Interest::READABLE) }.map_err(io::Error::from)
}

/// Sends the pid of each traced process on the returned channel when it exits.
fn watch_exits(processes: &[Process]) -> anyhow::Result<mpsc::UnboundedReceiver<u32>> {
    let (tx, rx) = mpsc::unbounded_channel();
    for process in processes {
        let pid = process.pid;
        let handle = target::exit_handle(pid)
            .with_context(|| format!("cannot watch process {pid} (pidfd_open needs Linux 5.3+)"))?;
        let handle = readable(handle).with_context(|| format!("cannot watch process {pid}"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            // Readable means exited; an error means it cannot be watched, treat it the same.
            let _ = handle.readable().await;
            let _ = tx.send(pid);
        });
    }
    Ok(rx)
}
