//! The event loop: kernel events through the tracker to the sink, forks and execs, exits,
//! tcp_info refreshes, stuck deadlines, and the signals that say stop.

use std::{
    io::{self, BufWriter, IsTerminal},
    time::Duration,
};

use anyhow::Context;
use aya::maps::{MapData, RingBuf};
use probe_common::ProcessEventKind;
use tokio::{
    io::Interest,
    signal::unix::{Signal, SignalKind, signal},
    time::{Instant, sleep, sleep_until},
};

use super::processes::{ExitWatch, ProcessNews, decode, readable, watch_stdout};
use crate::{
    bpf::{Streams, Tracer},
    cli::Cli,
    clock::{WallClock, monotonic_now},
    output::{
        Key, KeyOutcome, Outputs, Sink,
        filter::Filtered,
        json::JsonSink,
        live::LiveView,
        metrics::{self, Metrics},
        report::Report,
        text::TextSink,
    },
    snapshot,
    symbolize::CodePaths,
    target::{self, Process},
    track::{ExistingSocket, Summary, Thresholds, Timestamp, Tracker, Transition},
};

/// After the last traced process exits, keep reading this long: the FINs its exit sent are
/// answered within moments on a live network, and those transitions belong to the story.
const EXIT_GRACE: Duration = Duration::from_millis(300);
/// Wake at least this often: the kernel wakes probe only once a batch of events is waiting, so
/// a trickle of events is read on this tick (and stuck connections are flagged on time).
const MAX_IDLE_TICK: Duration = Duration::from_millis(100);
/// Before flagging by idle time, tcp_info must be at most this old.
const FRESH_ACTIVITY: Duration = Duration::from_millis(500);
/// How often the live view, the report's timeline and the metrics look at the whole table.
const TICK: Duration = Duration::from_secs(1);

/// Ctrl-C and SIGTERM, caught.
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    /// Catches SIGINT and SIGTERM (within a runtime context).
    pub fn catch() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }
}

/// Everything the loop starts from.
pub struct Setup<'a> {
    pub stop_signals: StopSignals,
    pub cli: &'a Cli,
    pub tracer: Tracer,
    pub streams: Streams,
    pub processes: Vec<Process>,
    pub command_pid: Option<u32>,
    /// The targets' sockets when probe attached.
    pub existing: Vec<ExistingSocket>,
    pub attach: Timestamp,
    /// The traced processes, as the header of the live view and report name them.
    pub targets: String,
    /// The bound `--metrics-addr` socket.
    pub metrics_listener: Option<std::net::TcpListener>,
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

/// Runs until stopped, then prints the summary.
pub async fn run(setup: Setup<'_>) -> anyhow::Result<()> {
    let Setup {
        stop_signals,
        cli,
        mut tracer,
        streams,
        processes,
        command_pid,
        existing,
        attach,
        targets,
        metrics_listener,
    } = setup;
    let mut tracker = Tracker::new(Thresholds {
        close_wait: cli.close_wait_after,
        established: cli.established_after,
    });
    let mut exits = ExitWatch::new();
    for process in &processes {
        tracker.register_process(process.pid, &process.comm);
        exits.watch(process.pid);
    }
    for socket in &existing {
        tracker.seed(socket, attach);
    }
    let follow = cli.follows_forks();
    // With --comm and --follow-forks, new processes of that name may come at any time.
    let waits_for_new = follow && cli.comm.is_some();
    let refresh_every =
        (cli.established_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let mut refreshed_at = Instant::now();

    let mut code_paths = streams.stacks.map(CodePaths::start);
    let (mut sink, mut keys) = make_outputs(cli, targets, metrics_listener)?;
    let ticks = sink.wants_ticks();
    let mut next_tick = Instant::now();
    let mut events = readable(streams.events).context("cannot poll the kernel ring buffer")?;
    let mut process_events =
        readable(streams.process_events).context("cannot poll the kernel's process events")?;
    let mut logs = readable(streams.logger).context("cannot poll the kernel log")?;
    let StopSignals {
        mut interrupt,
        mut terminate,
    } = stop_signals;
    let end = cli.duration.map(|d| Instant::now() + d);
    // `probe ... | head`: stop as soon as the reader goes, not at the next write.
    let stdout = watch_stdout();

    let stop = loop {
        let step: io::Result<Option<Stop>> = tokio::select! {
            guard = events.readable_mut() => {
                // Cleared before the drain below reads it all, so no new readiness is missed.
                guard.context("cannot poll the kernel ring buffer")?.clear_ready();
                Ok(None)
            }
            guard = process_events.readable_mut() => {
                // Cleared before they are all read below, as for the transitions.
                guard.context("cannot poll the kernel's process events")?.clear_ready();
                Ok(None)
            }
            guard = logs.readable_mut() => {
                let mut guard = guard.context("cannot poll the kernel log")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
                Ok(None)
            }
            pid = exits.next_exit() => {
                tracer.remove_target(pid)?;
                if command_pid == Some(pid) {
                    target::reap(pid);
                }
                let done = if follow {
                    exits.count() == 0 && !waits_for_new
                } else {
                    command_pid == Some(pid) || exits.count() == 0
                };
                Ok(done.then_some(Stop::TargetsExited))
            }
            _ = async { stdout.as_ref()?.ready(Interest::ERROR).await.ok() }, if stdout.is_some() => {
                Ok(Some(Stop::OutputClosed))
            }
            Some(key) = async { keys.as_mut()?.recv().await }, if keys.is_some() => {
                Ok((sink.key(key) == KeyOutcome::Quit).then_some(Stop::Asked))
            }
            _ = interrupt.recv() => Ok(Some(Stop::Asked)),
            _ = terminate.recv() => Ok(Some(Stop::Asked)),
            _ = sleep_until(end.unwrap_or_else(far_future)), if end.is_some() => Ok(Some(Stop::Asked)),
            _ = sleep(next_wake(&tracker, (refreshed_at + refresh_every).min(next_tick))) => Ok(None),
        };
        // Forks and execs before transitions, whatever woke the loop: a process that has just
        // exec'd may already have connected, and its transitions must carry its new name.
        follow_processes(
            process_events.get_mut(),
            &mut tracer,
            &mut tracker,
            &mut exits,
        )?;
        // Fresh tcp_info before deciding whether an ESTABLISHED connection is idle, and now and
        // then for the summary's figures.
        let deadline_due = tracker
            .next_deadline()
            .is_some_and(|d| d <= monotonic_now());
        let since_refresh = refreshed_at.elapsed();
        if since_refresh >= refresh_every || (deadline_due && since_refresh >= FRESH_ACTIVITY) {
            refresh_activity(&mut tracker, &exits);
            refreshed_at = Instant::now();
        }
        let step = step.and_then(|stop| {
            // Whatever woke the loop, read the ring buffer: the kernel wakes probe only once a
            // batch is waiting, so the rest is read here, on the tick.
            drain(
                events.get_mut(),
                &mut tracker,
                code_paths.as_mut(),
                &mut sink,
            )?;
            report_stuck(&mut tracker, code_paths.as_ref(), &mut sink)?;
            if ticks && Instant::now() >= next_tick {
                next_tick = Instant::now() + TICK;
                let now = monotonic_now();
                let mut table = tracker.summary(now);
                note_counters(&mut table, &tracer);
                sink.tick(now, &table)?;
            }
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
    // Nobody reads the output any more; only a report still wants the summary.
    if stop == Stop::OutputClosed && cli.report.is_none() {
        return Ok(());
    }
    if stop == Stop::TargetsExited {
        sleep(EXIT_GRACE).await;
    }
    refresh_activity(&mut tracker, &exits);
    follow_processes(
        process_events.get_mut(),
        &mut tracer,
        &mut tracker,
        &mut exits,
    )?;
    let finished = drain(
        events.get_mut(),
        &mut tracker,
        code_paths.as_mut(),
        &mut sink,
    )
    .and_then(|()| report_stuck(&mut tracker, code_paths.as_ref(), &mut sink));
    logs.get_mut().flush();

    let counters = tracer.counters()?;
    let mut summary = tracker.summary(monotonic_now());
    if let Some(code_paths) = &code_paths {
        code_paths.settle(Duration::from_secs(2));
        summary.resolve_code_paths(|stack| code_paths.get(stack));
    }
    summary.lost_events = counters.lost_events();
    summary.untracked_sockets = counters.untracked_sockets();
    if summary.lost_events > 0 || summary.untracked_sockets > 0 || counters.target_map_full > 0 {
        eprintln!(
            "probe: warning: {} event(s) lost (ring buffer full: raise --ring-buffer-kib), {} \
             socket(s) untracked (raise --max-sockets), {} process(es) not followed",
            summary.lost_events, summary.untracked_sockets, counters.target_map_full
        );
    }
    match finished.and_then(|()| sink.summary(&summary)) {
        Err(error) if error.kind() != io::ErrorKind::BrokenPipe => {
            Err(error).context("cannot write output")
        }
        _ => Ok(()),
    }
}

/// The sinks the command line asks for, behind the one filter they share, and the live view's
/// keys when there is one.
fn make_outputs(
    cli: &Cli,
    targets: String,
    metrics_listener: Option<std::net::TcpListener>,
) -> anyhow::Result<(Filtered<Outputs>, Option<KeysReceiver>)> {
    let clock = WallClock::now();
    // The report file and the metrics server first: their errors and notes go to a terminal
    // the live view has not taken over yet.
    let report = match &cli.report {
        Some(path) => Some(Report::create(path, targets.clone(), clock)?),
        None => None,
    };
    let metrics = metrics_listener.map(|listener| {
        if let Ok(address) = listener.local_addr() {
            eprintln!("probe: serving metrics at http://{address}/metrics");
        }
        let metrics = Metrics::new();
        let server = metrics.clone();
        tokio::spawn(async move {
            if let Err(error) = metrics::serve(listener, server).await {
                log::warn!("the metrics endpoint stopped: {error}");
            }
        });
        metrics
    });
    let mut outputs = Outputs::default();
    let mut keys = None;
    let stdout = io::stdout();
    let terminal = stdout.is_terminal();
    if cli.live && !terminal {
        eprintln!(
            "probe: --live needs a terminal; standard output is not one, so plain lines follow"
        );
    }
    if cli.live && terminal {
        let (live, received) = LiveView::start(targets, clock)?;
        outputs.push(Box::new(live));
        keys = Some(received);
    } else {
        // Large enough that a burst of events makes few writes; flushed after every batch anyway.
        let out = BufWriter::with_capacity(64 * 1024, stdout);
        if cli.json {
            outputs.push(Box::new(JsonSink::new(out, clock)));
        } else {
            outputs.push(Box::new(TextSink::new(out, clock, terminal)));
        }
    }
    if let Some(report) = report {
        outputs.push(Box::new(report));
    }
    if let Some(metrics) = metrics {
        outputs.push(Box::new(metrics));
    }
    // One filter for all: the table is filtered once per tick, not once per sink.
    Ok((Filtered::new(cli.filter(), outputs), keys))
}

type KeysReceiver = tokio::sync::mpsc::UnboundedReceiver<Key>;

/// The kernel's counts of lost events and untracked sockets, into a table.
fn note_counters(table: &mut Summary, tracer: &Tracer) {
    match tracer.counters() {
        Ok(counters) => {
            table.lost_events = counters.lost_events();
            table.untracked_sockets = counters.untracked_sockets();
        }
        Err(error) => log::debug!("cannot read the kernel counters: {error}"),
    }
}

/// Moves every event waiting in the ring buffer through the tracker to the sink, noting the
/// stacks of connects for symbolizing (while their process is there to be read).
fn drain(
    ring: &mut RingBuf<MapData>,
    tracker: &mut Tracker,
    mut code_paths: Option<&mut CodePaths>,
    sink: &mut dyn Sink,
) -> io::Result<()> {
    while let Some(item) = ring.next() {
        match Transition::decode(&item) {
            Ok(transition) => {
                if let (Some(code_paths), Some(stack)) =
                    (code_paths.as_deref_mut(), transition.stack)
                {
                    code_paths.note(stack);
                }
                sink.transition(&tracker.apply(&transition))?;
            }
            Err(error) => log::warn!("skipping a malformed kernel event: {error}"),
        }
    }
    Ok(())
}

/// Reads every fork and exec waiting in `ring`.
fn follow_processes(
    ring: &mut RingBuf<MapData>,
    tracer: &mut Tracer,
    tracker: &mut Tracker,
    exits: &mut ExitWatch,
) -> anyhow::Result<()> {
    while let Some(item) = ring.next() {
        if let Some(news) = decode(&item) {
            follow_process(news, tracer, tracker, exits)?;
        }
    }
    Ok(())
}

/// A fork of a traced process (the kernel already made the child a target) or an exec.
fn follow_process(
    news: ProcessNews,
    tracer: &mut Tracer,
    tracker: &mut Tracker,
    exits: &mut ExitWatch,
) -> anyhow::Result<()> {
    let pid = news.pid;
    if news.kind == ProcessEventKind::Fork {
        // The kernel cannot tell a new thread from a new process: threads already share their
        // process's tgid, so their own entry is of no use.
        let is_process = target::resolve(pid).is_ok_and(|p| p.named_thread.is_none());
        if !is_process {
            tracer.remove_target(pid)?;
            return Ok(());
        }
    }
    tracker.register_process(pid, &news.comm);
    if !exits.is_alive(pid) {
        log::debug!("now tracing {pid} ({})", news.comm);
        exits.watch(pid);
    }
    Ok(())
}

/// Samples tcp_info of the running targets' sockets (one sock_diag dump per namespace).
fn refresh_activity(tracker: &mut Tracker, exits: &ExitWatch) {
    let pids: Vec<u32> = exits.alive().collect();
    match snapshot::tcp_sockets(&pids) {
        Ok(samples) => tracker.refresh_activity(&samples),
        // A process that just exited, for instance: the next refresh will do.
        Err(error) => log::debug!("tcp_info refresh skipped: {error}"),
    }
}

fn report_stuck(
    tracker: &mut Tracker,
    code_paths: Option<&CodePaths>,
    sink: &mut dyn Sink,
) -> io::Result<()> {
    for mut alert in tracker.due_stuck(monotonic_now()) {
        if let (Some(code_paths), Some(stack)) = (code_paths, alert.opened_stack) {
            alert.opened_at = code_paths.get(stack);
        }
        sink.stuck(&alert)?;
    }
    Ok(())
}

/// How long to sleep: until the next stuck deadline, refresh or tick, at most
/// [`MAX_IDLE_TICK`].
fn next_wake(tracker: &Tracker, next_refresh: Instant) -> Duration {
    let until_deadline = tracker.next_deadline().map_or(MAX_IDLE_TICK, |deadline| {
        deadline.saturating_since(monotonic_now())
    });
    until_deadline
        .min(next_refresh.saturating_duration_since(Instant::now()))
        .min(MAX_IDLE_TICK)
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}
