//! One run of probe: kernel events through the tracker to the sinks, forks and execs, exits,
//! tcp_info refreshes and stuck deadlines, until something says stop. [`Session::pump`] is one
//! wakeup's work; [`Session::finish`] drains what is left the same way and writes the summary.

mod processes;
mod refresher;

use std::{io, path::PathBuf, time::Duration};

use anyhow::Context;
use aya::maps::{MapData, RingBuf};
use aya_log::EbpfLogger;
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::{Instant, sleep, sleep_until},
};

use refresher::{Reading, Refresher};

use super::{
    Attached,
    outputs::{self, KeysReceiver},
    sources::{Stdout, StopSignals, readable, watch_stdout},
};
use crate::{
    bpf::Tracer,
    cli::{Config, Scope},
    clock::monotonic_now,
    output::{Key, KeyOutcome, Outputs, Sink, filter::Filtered, queue::Room},
    process::{self, watch::ExitWatch},
    symbolize::CodePaths,
    track::{
        CodePathSource, NoCodePaths, StateChange, Tracker, Transition,
        triage::{Placement, Triage},
    },
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
/// Events read per round of the loop at most (about 10 ms of work).
const EVENTS_PER_ROUND: usize = 8192;
/// A tcp_info refresh may take at most one in this many of probe's seconds: on a host with a
/// million sockets one refresh reads every descriptor and socket (seconds), and refreshing every
/// 2.5 s would keep a core busy; there, refreshes come further apart instead.
const REFRESH_SHARE: u32 = 10;
/// How long the summary waits for the stacks still being symbolized.
const SYMBOLIZE_GRACE: Duration = Duration::from_secs(2);

/// Why the session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Ctrl-C, SIGTERM, `q` in the live view, or `--duration`.
    Asked,
    /// SIGHUP: the terminal or session went away; what cannot be written there is no failure.
    HungUp,
    /// The traced command, or every traced process, exited.
    TargetsExited,
    /// Standard output was closed (e.g. `probe ... | head`).
    OutputClosed,
}

/// What woke the session.
enum Wake {
    /// A ring buffer or the kernel log has something, or a timer ran out: just work.
    Work,
    Exited(u32),
    Key(Key),
    /// A refresh's reading is done.
    Refreshed(Reading),
    Stop(Stop),
}

/// The kernel's streams, registered with the event loop.
struct Streams {
    events: AsyncFd<RingBuf<MapData>>,
    process_events: AsyncFd<RingBuf<MapData>>,
    /// Must stay alive as long as the program runs: dropping it closes its map.
    logs: AsyncFd<EbpfLogger<&'static dyn log::Log>>,
}

/// When the next tcp_info refresh and table tick are due.
struct Schedule {
    refresh_every: Duration,
    refreshed_at: Instant,
    /// How long the last refresh took.
    refresh_took: Duration,
    next_tick: Instant,
    end: Option<Instant>,
    /// Events are waiting beyond the last round's batch: the next round starts at once.
    backlog: bool,
    /// The session is finishing: the ring buffer is drained whole.
    finishing: bool,
}

/// A run in progress.
pub struct Session {
    tracer: Tracer,
    tracker: Tracker,
    streams: Streams,
    code_paths: Option<CodePaths>,
    sink: Filtered<Outputs>,
    keys: Option<KeysReceiver>,
    signals: StopSignals,
    stdout: Option<AsyncFd<Stdout>>,
    exits: ExitWatch,
    command_pid: Option<u32>,
    /// Forks are followed: the run ends when every traced process has exited.
    follow: bool,
    /// New processes of the `--comm` name may come at any time: the run does not end when the
    /// last one exits.
    waits_for_new: bool,
    /// A report still wants the summary when nobody reads stdout any more.
    reports: bool,
    schedule: Schedule,
    /// Reads the fd tables and sockets for each refresh, on a thread of its own.
    refresher: Refresher,
    /// How far the reader of standard output's lines is behind, when they are written.
    output_room: Option<Room>,
    /// Whose connections are traced.
    scope: Watched,
    /// How fast things pile up and run out, per process and destination.
    triage: Triage,
    /// Where each process runs (its container and pod), read once.
    placements: FxHashMap<u32, Placement>,
    /// The processes whose runtimes were looked at for hooks (see [`processes::hook_once`]).
    hooked: FxHashSet<u32>,
}

/// Which processes the session looks at when it refreshes.
enum Watched {
    /// The named processes, their exits watched.
    Processes,
    /// Every process on the host.
    Host,
    /// The processes in these cgroups and below.
    Cgroups(Vec<PathBuf>),
}

impl Session {
    /// Sets up the outputs and starts following what `attached` holds (within a runtime).
    pub fn start(
        config: &Config,
        attached: Attached,
        signals: StopSignals,
        metrics_listener: Option<outputs::MetricsListener>,
    ) -> anyhow::Result<Session> {
        let Attached {
            tracer,
            streams,
            processes,
            command_pid,
            existing,
            attach,
            targets,
            namespaces,
            snapshot_took,
            cgroups,
        } = attached;
        let scope = match config.scope {
            Scope::Processes => Watched::Processes,
            Scope::Host => Watched::Host,
            Scope::Cgroups { .. } => Watched::Cgroups(cgroups),
        };
        let mut tracker = Tracker::new(config.thresholds);
        let mut exits = ExitWatch::default();
        for process in &processes {
            tracker.register_process(process.pid, &process.comm);
            // The host and cgroups do not end with their processes: no exit to watch.
            if matches!(scope, Watched::Processes) {
                exits.watch(process.pid);
            }
        }
        tracker.seed(&existing, attach);
        let outputs::Made {
            sink,
            keys,
            output_room,
        } = outputs::make(config, targets, metrics_listener)?;
        Ok(Session {
            scope,
            triage: Triage::default(),
            placements: FxHashMap::default(),
            // Every process probe found at start was hooked then.
            hooked: processes.iter().map(|p| p.pid).collect(),
            tracer,
            tracker,
            streams: Streams {
                events: readable(streams.events).context("cannot poll the kernel ring buffer")?,
                process_events: readable(streams.process_events)
                    .context("cannot poll the kernel's process events")?,
                logs: readable(streams.logger).context("cannot poll the kernel log")?,
            },
            code_paths: streams.stacks.map(|stacks| {
                CodePaths::start(
                    stacks,
                    streams.stack_callers,
                    streams.stack_copies,
                    streams.python_stacks,
                )
            }),
            sink,
            keys,
            signals,
            // `probe ... | head`: stop as soon as the reader goes, not at the next write.
            stdout: watch_stdout(),
            exits,
            command_pid,
            follow: config.targets.follow_forks,
            waits_for_new: config.targets.follow_forks && config.targets.comm.is_some(),
            reports: config.report.is_some(),
            output_room,
            refresher: Refresher::start(namespaces)
                .context("cannot start the thread that reads the socket table")?,
            schedule: Schedule {
                refresh_every: config.thresholds.refresh_every(),
                refreshed_at: Instant::now(),
                refresh_took: snapshot_took,
                next_tick: Instant::now(),
                end: config.duration.map(|d| Instant::now() + d),
                backlog: false,
                finishing: false,
            },
        })
    }

    /// Runs until stopped, then finishes.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let stop = loop {
            let wake = self.wait().await?;
            if let Some(stop) = self.pump(wake)? {
                break stop;
            }
        };
        self.finish(stop).await
    }

    /// Waits for the next thing to do.
    async fn wait(&mut self) -> anyhow::Result<Wake> {
        let next = self
            .schedule
            .next_due(&self.tracker, self.refresher.under_way());
        let Session {
            streams,
            exits,
            stdout,
            keys,
            signals,
            schedule,
            refresher,
            ..
        } = self;
        tokio::select! {
            guard = streams.events.readable_mut() => {
                // Cleared before the drain reads it all, so no new readiness is missed.
                guard.context("cannot poll the kernel ring buffer")?.clear_ready();
                Ok(Wake::Work)
            }
            guard = streams.process_events.readable_mut() => {
                guard.context("cannot poll the kernel's process events")?.clear_ready();
                Ok(Wake::Work)
            }
            guard = streams.logs.readable_mut() => {
                let mut guard = guard.context("cannot poll the kernel log")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
                Ok(Wake::Work)
            }
            pid = exits.next_exit() => Ok(Wake::Exited(pid)),
            Some(reading) = refresher.done() => Ok(Wake::Refreshed(reading)),
            _ = async { stdout.as_ref()?.ready(Interest::ERROR).await.ok() }, if stdout.is_some() => {
                Ok(Wake::Stop(Stop::OutputClosed))
            }
            Some(key) = async { keys.as_mut()?.recv().await }, if keys.is_some() => Ok(Wake::Key(key)),
            hung_up = signals.next() => Ok(Wake::Stop(if hung_up { Stop::HungUp } else { Stop::Asked })),
            _ = sleep_until(schedule.end.unwrap_or_else(far_future)), if schedule.end.is_some() => {
                Ok(Wake::Stop(Stop::Asked))
            }
            _ = sleep(next) => Ok(Wake::Work),
        }
    }

    /// One wakeup's work: exits and keys, forks and execs, a refresh's reading applied when
    /// done and the next one started when due, every waiting event through the tracker to the
    /// sinks, stuck connections, the table tick.
    fn pump(&mut self, wake: Wake) -> anyhow::Result<Option<Stop>> {
        let mut reading = None;
        let mut stop = match wake {
            Wake::Work => None,
            Wake::Refreshed(done) => {
                reading = Some(done);
                None
            }
            Wake::Exited(pid) => self.exited(pid)?,
            Wake::Key(key) => (self.sink.key(key) == KeyOutcome::Quit).then_some(Stop::Asked),
            Wake::Stop(stop) => Some(stop),
        };
        // Forks and execs before transitions, whatever woke the loop: a process that has just
        // exec'd may already have connected, and its transitions must carry its new name.
        self.follow_processes()?;
        let abandoned = match reading {
            Some(reading) => self.refreshed(reading)?,
            None => Vec::new(),
        };
        // Fresh tcp_info before deciding whether an ESTABLISHED connection is idle, and now and
        // then for the summary's figures.
        let deadline_due = self
            .tracker
            .next_deadline()
            .is_some_and(|d| d <= monotonic_now());
        let since_refresh = self.schedule.refreshed_at.elapsed();
        if since_refresh >= self.schedule.refresh_gap(self.schedule.refresh_every)
            || (deadline_due && since_refresh >= self.schedule.refresh_gap(FRESH_ACTIVITY))
        {
            self.request_refresh();
        }
        let shown = self.show(&abandoned).and_then(|()| {
            if Instant::now() >= self.schedule.next_tick {
                self.schedule.next_tick = Instant::now() + TICK;
                self.tick()?;
            }
            self.sink.flush()
        });
        match shown {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {
                stop = Some(Stop::OutputClosed);
            }
            Err(error) => return Err(error).context("cannot write output"),
        }
        Ok(stop)
    }

    /// The last word: what is left in the ring buffers, the summary, the report.
    async fn finish(mut self, stop: Stop) -> anyhow::Result<()> {
        // Nobody reads the output any more; only a report still wants the summary.
        if stop == Stop::OutputClosed && !self.reports {
            return Ok(());
        }
        if stop == Stop::TargetsExited {
            sleep(EXIT_GRACE).await;
        }
        self.schedule.finishing = true;
        // A last reading, for the summary's figures: the one under way, or a new one.
        self.request_refresh();
        let reading = if self.refresher.under_way() {
            self.refresher.done().await
        } else {
            None
        };
        let abandoned = match reading {
            Some(reading) => self.refreshed(reading)?,
            None => Vec::new(),
        };
        self.follow_processes()?;
        let shown = self.show(&abandoned);
        self.streams.logs.get_mut().flush();

        let counters = self.tracer.counters()?;
        let losses = counters.losses();
        if let Some(code_paths) = &self.code_paths {
            code_paths.settle(SYMBOLIZE_GRACE);
            crate::app::say_notes(code_paths.naming_hints());
        }
        let now = monotonic_now();
        let (tally, mut summary) =
            self.tracker
                .tally_and_summary(now, self.code_path_source(), losses);
        self.triage.note_stuck(now, &tally);
        summary.add_triage(&self.triage, now);
        if losses.lost_events > 0 || losses.untracked_sockets > 0 || counters.target_map_full > 0 {
            crate::say!(
                "probe: warning: {} event(s) lost (ring buffer full: raise --ring-buffer-kib; \
                 {} unreadable), {} socket(s) untracked (raise --max-sockets), {} process(es) \
                 not followed",
                losses.lost_events,
                counters.read_failed,
                losses.untracked_sockets,
                counters.target_map_full
            );
        }
        let dropped = self.output_room.as_ref().map_or(0, Room::lines_dropped);
        if dropped > 0 {
            crate::say!(
                "probe: warning: {dropped} transition line(s) not written: the reader of \
                 standard output fell more than {} MiB behind (the alerts, the table and the \
                 summary are complete); write to a file, or show fewer transitions (--state, \
                 --port, --remote)",
                crate::output::queue::ROOM >> 20
            );
        }
        let written = shown
            .and_then(|()| self.sink.summary(&summary))
            .and_then(|()| {
                self.output_room
                    .as_ref()
                    .map_or(Ok(()), Room::wait_until_written)
            });
        match written {
            Err(error) if error.kind() != io::ErrorKind::BrokenPipe && stop != Stop::HungUp => {
                Err(error).context("cannot write output")
            }
            _ => Ok(()),
        }
    }

    /// A refresh's reading is done: the tracker brought up to date with it, its memory given
    /// back; the connections it found abandoned, for the sinks.
    fn refreshed(&mut self, reading: Reading) -> anyhow::Result<Vec<StateChange>> {
        let applying = Instant::now();
        let abandoned = self.apply_refresh(reading)?;
        self.schedule.refresh_took = self.schedule.refreshed_at.elapsed();
        let trimming = Instant::now();
        super::give_back_freed_memory();
        log::debug!(
            "tcp_info refresh took {:?} ({:?} of it in the event loop), giving its memory back {:?}",
            self.schedule.refresh_took,
            trimming - applying,
            trimming.elapsed()
        );
        Ok(abandoned)
    }

    /// Connections that ended outside the kernel's view (`changes`), then every event waiting.
    fn show(&mut self, changes: &[StateChange]) -> io::Result<()> {
        for change in changes {
            self.sink.transition(change)?;
        }
        self.show_events()
    }

    /// Every event waiting in the ring buffer through the tracker to the sinks (noting the
    /// stacks of connects for symbolizing, while their process is there to be read), then the
    /// connections that became stuck. The one drain path, for the loop and the end alike.
    fn show_events(&mut self) -> io::Result<()> {
        // A bounded batch per wakeup, so that ticks, refreshes and signals are never starved
        // by a flood of events; what is left is read at once, on the next round (and all of it
        // by `finish`).
        let limit = if self.schedule.finishing {
            usize::MAX
        } else {
            EVENTS_PER_ROUND
        };
        let mut read = 0;
        self.schedule.backlog = false;
        let ring = self.streams.events.get_mut();
        while let Some(item) = ring.next() {
            read += 1;
            if read == limit {
                self.schedule.backlog = true;
            }
            match Transition::decode(&item) {
                Ok(transition) => {
                    if let Some(code_paths) = self.code_paths.as_mut() {
                        for stack in [transition.stack, transition.requested]
                            .into_iter()
                            .flatten()
                        {
                            code_paths.note(stack);
                        }
                    }
                    // Host-wide and in cgroups, processes started since probe are met as
                    // they connect: named, and their runtimes hooked, then.
                    if !self.tracker.knows_process(transition.pid)
                        && let Ok(process) = process::resolve(transition.pid)
                    {
                        self.tracker.register_process(transition.pid, &process.comm);
                    }
                    processes::hook_once(&mut self.hooked, &mut self.tracer, transition.pid);
                    self.sink.transition(&self.tracker.apply(&transition))?;
                }
                Err(error) => log::warn!("skipping a malformed kernel event: {error}"),
            }
            if self.schedule.backlog {
                break;
            }
        }
        // An idle connection is judged on the reading under way, if any: it may show it busy.
        if self.refresher.under_way() {
            return Ok(());
        }
        let code_paths: &dyn CodePathSource = match &self.code_paths {
            Some(code_paths) => code_paths,
            None => &NoCodePaths,
        };
        for alert in self.tracker.due_stuck(monotonic_now(), code_paths) {
            self.sink.stuck(&alert)?;
        }
        Ok(())
    }

    /// Every second: the stuck counts for the triage, and the whole table for the sinks that
    /// look at it.
    fn tick(&mut self) -> io::Result<()> {
        let now = monotonic_now();
        if !self.sink.wants_tick(now) {
            self.triage.note_stuck(now, &self.tracker.stuck_tally());
            return Ok(());
        }
        let losses = match self.tracer.counters() {
            Ok(counters) => counters.losses(),
            Err(error) => {
                log::debug!("cannot read the kernel counters: {error:#}");
                Default::default()
            }
        };
        let (tally, mut table) =
            self.tracker
                .tally_and_summary(now, self.code_path_source(), losses);
        self.triage.note_stuck(now, &tally);
        table.add_triage(&self.triage, now);
        self.sink.tick(now, &table)
    }

    fn code_path_source(&self) -> &dyn CodePathSource {
        match &self.code_paths {
            Some(code_paths) => code_paths,
            None => &NoCodePaths,
        }
    }
}

impl Schedule {
    /// The time from one refresh to the next: `wanted`, or longer where refreshes are slow
    /// enough to take more than [`REFRESH_SHARE`] of the time.
    fn refresh_gap(&self, wanted: Duration) -> Duration {
        wanted.max(self.refresh_took.saturating_mul(REFRESH_SHARE))
    }

    /// How long to sleep: until the next stuck deadline, refresh or tick, at most
    /// [`MAX_IDLE_TICK`]. While a refresh's reading is under way, deadlines and the next
    /// refresh wait for it (its end wakes the loop).
    fn next_due(&self, tracker: &Tracker, refreshing: bool) -> Duration {
        if self.backlog {
            return Duration::ZERO;
        }
        let until_tick = self.next_tick.saturating_duration_since(Instant::now());
        if refreshing {
            return until_tick.min(MAX_IDLE_TICK);
        }
        let until_deadline = tracker.next_deadline().map_or(MAX_IDLE_TICK, |deadline| {
            deadline.saturating_since(monotonic_now())
        });
        let next_refresh = self.refreshed_at + self.refresh_gap(self.refresh_every);
        until_deadline
            .min(until_tick)
            .min(next_refresh.saturating_duration_since(Instant::now()))
            .min(MAX_IDLE_TICK)
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(refresh_took: Duration) -> Schedule {
        Schedule {
            refresh_every: Duration::from_millis(2500),
            refreshed_at: Instant::now(),
            refresh_took,
            next_tick: Instant::now(),
            end: None,
            backlog: false,
            finishing: false,
        }
    }

    #[test]
    fn slow_refreshes_come_further_apart() {
        let wanted = Duration::from_millis(2500);
        // A refresh of a few thousand sockets: as often as the thresholds want.
        assert_eq!(
            schedule(Duration::from_millis(20)).refresh_gap(wanted),
            wanted
        );
        assert_eq!(
            schedule(Duration::from_millis(20)).refresh_gap(FRESH_ACTIVITY),
            FRESH_ACTIVITY
        );
        // A refresh of a million sockets: at most a tenth of the time.
        let slow = schedule(Duration::from_millis(1800));
        assert_eq!(slow.refresh_gap(wanted), Duration::from_secs(18));
        assert_eq!(slow.refresh_gap(FRESH_ACTIVITY), Duration::from_secs(18));
    }
}
