//! The session's view of the processes: exits, forks and execs, and each refresh of the fd
//! tables and the kernel's socket table (ownership, tcp_info, the triage's samples).

use probe_common::ProcessEventKind;
use rustc_hash::FxHashSet;
use tokio::time::Instant;

use std::collections::HashMap;

use super::{
    Session, Stop, Watched,
    refresher::{Reading, Request},
};
use crate::{
    bpf::Tracer,
    clock::monotonic_now,
    output::escape::terminal,
    process::{self, cgroup, watch::ProcessNews},
    snapshot::{self, TimeWait},
    track::{StateChange, Timestamp, triage::ProcessSample},
};

impl Session {
    /// A traced process exited: stop when it was the last one (or the command).
    pub(super) fn exited(&mut self, pid: u32) -> anyhow::Result<Option<Stop>> {
        self.tracer.remove_target(pid)?;
        if self.command_pid == Some(pid) {
            process::spawn::reap(pid);
        }
        let done = if self.follow {
            self.exits.count() == 0 && !self.waits_for_new
        } else {
            self.command_pid == Some(pid) || self.exits.count() == 0
        };
        Ok(done.then_some(Stop::TargetsExited))
    }

    /// Reads every fork and exec waiting.
    pub(super) fn follow_processes(&mut self) -> anyhow::Result<()> {
        loop {
            let news = match self.streams.process_events.get_mut().next() {
                Some(item) => ProcessNews::decode(&item),
                None => return Ok(()),
            };
            if let Some(news) = news {
                self.follow_process(news)?;
            }
        }
    }

    /// A fork of a traced process (the kernel already made the child a target) or an exec.
    fn follow_process(&mut self, news: ProcessNews) -> anyhow::Result<()> {
        let pid = news.pid;
        if news.kind == ProcessEventKind::Fork {
            // The kernel cannot tell a new thread from a new process: threads already share
            // their process's tgid, so their own entry is of no use.
            let is_process = process::resolve(pid).is_ok_and(|p| p.named_thread.is_none());
            if !is_process {
                self.tracer.remove_target(pid)?;
                return Ok(());
            }
        }
        self.tracker.register_process(pid, &news.comm);
        if news.kind == ProcessEventKind::Exec {
            // A new program in the process: its runtime is looked at anew.
            self.hooked.remove(&pid);
            self.hook_once(pid);
        }
        if !self.exits.is_alive(pid) {
            log::debug!("now tracing {pid} ({})", terminal(&news.comm));
            self.exits.watch(pid);
        }
        Ok(())
    }

    /// Starts reading the running targets' fd tables and sockets (one sock_diag dump per
    /// namespace) on the refresher's thread, unless a reading is under way.
    pub(super) fn request_refresh(&mut self) {
        if self.refresher.under_way() {
            return;
        }
        self.schedule.refreshed_at = Instant::now();
        let strict = matches!(self.scope, Watched::Processes);
        let request = Request {
            pids: self.watched_pids(),
            strict,
            open_files: if strict {
                None
            } else {
                self.tracer.open_files()
            },
            // The port forecast's TIME_WAIT sockets: toward where the traced processes connect.
            time_wait: match self.tracker.connect_destinations() {
                Some(destinations) => TimeWait::Toward(destinations),
                None => TimeWait::All,
            },
        };
        self.refresher.request(request);
    }

    /// Brings the tracker up to date with a reading: tcp_info of the targets' sockets, and
    /// owners with who holds each socket; the connections nobody holds any more whose process
    /// exited end here, for the sinks to show.
    pub(super) fn apply_refresh(&mut self, reading: Reading) -> anyhow::Result<Vec<StateChange>> {
        let Reading { snapshot, started } = reading;
        let mut snapshot = match snapshot {
            Ok(snapshot) => snapshot,
            Err(error) => {
                // A permission problem, say: the next refresh will try again.
                log::debug!("tcp_info refresh skipped: {error}");
                return Ok(Vec::new());
            }
        };
        let now = monotonic_now();
        self.tracker.refresh_activity(&snapshot.sockets, now);
        self.sample_processes(now, &snapshot.fds);
        self.triage.note_ports(now, &snapshot.ports);
        let mut holders = std::mem::take(&mut snapshot.holders);
        let unheld = self.tracker.unheld(&holders);
        if !unheld.is_empty() {
            holders.extend(snapshot::holders_anywhere(
                &unheld,
                snapshot.open_files.as_ref(),
            ));
        }
        for &pid in holders.values().flatten() {
            if !self.tracker.knows_process(pid)
                && let Ok(process) = process::resolve(pid)
            {
                self.tracker.register_process(pid, &process.comm);
            }
            self.hook_once(pid);
        }
        let exits = &self.exits;
        let alive = |pid: u32| exits.is_alive(pid) || process::is_running(pid);
        let mut abandoned = Vec::new();
        for (change, key) in self
            .tracker
            .reconcile_holders(&holders, started, alive, now)
        {
            // The kernel side stops following it too.
            match key.socket() {
                Some(socket) => self.tracer.forget_socket(socket)?,
                None => self.tracer.forget_seed(change.cookie, &change.endpoints)?,
            }
            abandoned.push(change);
        }
        Ok(abandoned)
    }

    /// The processes a refresh looks at: the named ones still running, or every process of
    /// the host or of the cgroups.
    fn watched_pids(&self) -> Vec<u32> {
        match &self.scope {
            Watched::Processes => self.exits.alive().collect(),
            Watched::Host => process::all()
                .map(|all| all.iter().map(|p| p.pid).collect())
                .unwrap_or_default(),
            Watched::Cgroups(paths) => paths
                .iter()
                .flat_map(|path| cgroup::members(path))
                .collect(),
        }
    }

    /// [`hook_once`] this session's process `pid`.
    pub(super) fn hook_once(&mut self, pid: u32) {
        hook_once(&mut self.hooked, &mut self.tracer, pid);
    }

    /// Tells the triage how many files each process has open, against its limit, and where it
    /// runs (read once per process).
    fn sample_processes(&mut self, now: Timestamp, fds: &HashMap<u32, u64>) {
        self.placements.retain(|pid, _| fds.contains_key(pid));
        // A pid seen again after its process exited may be another program's.
        let tracer = &mut self.tracer;
        self.hooked.retain(|pid| {
            let alive = fds.contains_key(pid);
            if !alive {
                tracer.forget_runtimes(*pid);
            }
            alive
        });
        // Names as they are now: a process renames itself (prctl) after probe met it.
        for &pid in fds.keys() {
            if let Some(name) = process::name(pid)
                && *self.tracker.process_name(pid) != *name
            {
                self.tracker.register_process(pid, &name);
            }
        }
        let samples: Vec<ProcessSample> = fds
            .iter()
            .map(|(&pid, &fds_open)| ProcessSample {
                pid,
                comm: self.tracker.process_name(pid),
                fds_open,
                fd_limit: process::fd_limit(pid),
                placement: self
                    .placements
                    .entry(pid)
                    .or_insert_with(|| cgroup::placement(pid))
                    .clone(),
            })
            .collect();
        self.triage.note_processes(now, &samples);
    }
}

/// Hooks the runtimes of process `pid` (see [`Tracer::hook_runtimes`]) unless `hooked` has it:
/// once per process probe meets (found at start, holding a socket at a refresh, connecting, or
/// exec'ing), in every scope, so host-wide and cgroup tracing name what `--pid` names. A binary
/// is read once however many processes run it.
pub(super) fn hook_once(hooked: &mut FxHashSet<u32>, tracer: &mut Tracer, pid: u32) {
    if hooked.insert(pid) {
        for note in tracer.hook_runtimes(pid, None) {
            log::info!("{}", terminal(&note));
        }
    }
}
