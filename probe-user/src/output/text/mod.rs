//! Human-readable output: one line per transition, stuck alerts that stand out (one entry per
//! problem, see [`problems`]), and a summary grouped by state and remote endpoint.

use probe_common::TcpState;
use std::{
    io::{self, Write},
    time::Duration,
};

use crate::{
    clock::WallClock,
    track::{
        Diagnosis, Ending, SHOWN_FRAMES, StateChange, StuckAlert, Summary, Timestamp,
        protocol::Protocol,
    },
};

mod pairing;
mod problems;
pub mod triage;

use pairing::Pairing;
use problems::{Problems, Telling};

use super::{
    Sink,
    escape::terminal,
    format::{TimeWriter, age, short_duration, time_of_day, write_short_duration},
    line::Line,
    queue::{Room, TransitionLines},
};

/// Writes text for people to `out`.
pub struct TextSink<W: Write> {
    out: W,
    clock: WallClock,
    /// Print every transition (host-wide, only the alerts and the summary by default), while
    /// the reader keeps up.
    transitions: TransitionLines,
    /// Emphasise alerts with ANSI colour (only on a terminal).
    colour: bool,
    header_written: bool,
    times: TimeWriter,
    /// The transition line being written.
    line: Line,
    /// The problems alerted so far: one entry per problem, not per connection.
    problems: Problems,
    /// Both ends of a connection on this host: one alert, the acting end's.
    pairing: Pairing,
    /// When the triage is next looked at (`None` until the first tick sets the pace).
    triage_due: Option<Timestamp>,
    /// The triage as last written: written again only once it changed.
    triage_told: Vec<u8>,
}

/// How often the triage is written while probe runs, at most (and only when it changed).
const TRIAGE_EVERY: Duration = Duration::from_secs(30);

impl<W: Write> TextSink<W> {
    /// A sink writing to `out`; `colour` only when `out` is a terminal; `transitions` to print
    /// every transition, not only the alerts and the summary.
    pub fn new(out: W, clock: WallClock, colour: bool, transitions: bool) -> Self {
        TextSink {
            out,
            clock,
            transitions: TransitionLines::shown(transitions),
            colour,
            header_written: false,
            times: TimeWriter::default(),
            line: Line::default(),
            problems: Problems::default(),
            pairing: Pairing::default(),
            triage_due: None,
            triage_told: Vec::new(),
        }
    }

    /// Drops transition lines (counted by `room`) while `room` says the reader is behind.
    pub fn with_room(mut self, room: Room) -> Self {
        self.transitions = self.transitions.with_room(room);
        self
    }

    fn emphasis(&self, text: &str) -> String {
        if self.colour {
            format!("\x1b[1;31m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.header_written {
            self.header_written = true;
            writeln!(
                self.out,
                "{:<12} {:>7} {:<15} {:<22} {:<22} {:<31} IN OLD",
                "TIME(UTC)", "PID", "COMM", "LOCAL", "REMOTE", "OLD -> NEW"
            )?;
        }
        Ok(())
    }
}

impl<W: Write> Sink for TextSink<W> {
    fn transition(&mut self, change: &StateChange) -> io::Result<()> {
        if !self.transitions.admit() {
            return Ok(());
        }
        self.header()?;
        let ending = match change.ending {
            Some(Ending::TimeWait) => " (TIME_WAIT)",
            Some(Ending::Reset) => " (reset)",
            Some(Ending::ConnectFailed) => " (connect failed)",
            _ => "",
        };
        let line = &mut self.line;
        line.clear();
        self.times
            .time_of_day(line, self.clock.to_system_time(change.at));
        line.push_byte(b' ');
        line.push_int_right(change.owner.pid, 7);
        line.push_byte(b' ');
        let mut start = line.mark();
        line.push_str(&terminal(&change.owner.comm));
        line.pad_from(start, 15);
        for endpoint in [change.endpoints.local, change.endpoints.remote] {
            line.push_byte(b' ');
            start = line.mark();
            line.push_socket_addr(endpoint);
            line.pad_from(start, 22);
        }
        line.push_byte(b' ');
        start = line.mark();
        for part in [change.old.name(), " -> ", change.new.name(), ending] {
            line.push_str(part);
        }
        line.pad_from(start, 31);
        line.push_byte(b' ');
        match change.in_old {
            // Writing to a Line cannot fail.
            Some(in_old) => drop(write_short_duration(line, in_old)),
            None => line.push_byte(b'-'),
        }
        line.end();
        self.out.write_all(line.as_bytes())
    }

    fn stuck(&mut self, alert: &StuckAlert) -> io::Result<()> {
        let at = alert.since().saturating_add(alert.age());
        if self.pairing.admit(alert, at) {
            self.tell(alert, at)
        } else {
            Ok(())
        }
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        for alert in self.pairing.release(None) {
            let at = alert.since().saturating_add(alert.age());
            self.tell(&alert, at)?;
        }
        self.write_summary(summary)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn wants_tick(&self, now: Timestamp) -> bool {
        self.triage_due.is_none_or(|due| now >= due) || self.pairing.due(now)
    }

    /// The alerts that waited for their peer's, and the triage (the processes that leak, most
    /// urgent first) while probe runs, not only in the summary at its end: every
    /// [`TRIAGE_EVERY`] at most, when it changed.
    fn tick(&mut self, now: Timestamp, table: &Summary) -> io::Result<()> {
        for alert in self.pairing.release(Some(now)) {
            self.tell(&alert, now)?;
        }
        if self.triage_due.is_some_and(|due| now < due) {
            return Ok(());
        }
        let first = self.triage_due.is_none();
        self.triage_due = Some(now.saturating_add(TRIAGE_EVERY));
        if first {
            return Ok(());
        }
        let mut triage = Vec::new();
        triage::write(&mut triage, table, self.clock)?;
        if triage.is_empty() || triage == self.triage_told {
            return Ok(());
        }
        writeln!(
            self.out,
            "== at {} ==",
            time_of_day(self.clock.to_system_time(now))
        )?;
        self.out.write_all(&triage)?;
        self.triage_told = triage;
        Ok(())
    }
}

impl<W: Write> TextSink<W> {
    /// Writes `alert`, due at `at`: whole for a new problem, as a count for one said before.
    fn tell(&mut self, alert: &StuckAlert, at: Timestamp) -> io::Result<()> {
        let telling = self.problems.note(alert, at);
        if telling == Telling::Held {
            return Ok(());
        }
        if self.transitions.are_shown() {
            self.header()?;
        }
        let view = &alert.connection;
        let what = match alert.diagnosis {
            Diagnosis::ReceiveStalled => format!("RECEIVE STALLED in {}", view.state.name()),
            Diagnosis::SendStalled => format!("SEND STALLED in {}", view.state.name()),
            Diagnosis::AcceptQueueFull => "ACCEPT QUEUE FULL".to_string(),
            _ => format!("STUCK in {}", view.state.name()),
        };
        if let Telling::Again { new, alerts, over } = telling {
            let peer = if view.known_by == view.endpoints.local {
                format!("on {}", view.known_by)
            } else {
                format!("-> {}", view.known_by)
            };
            return writeln!(
                self.out,
                "{}: pid {} ({}) {peer}: {new} more in the last {}, {alerts} in all, the same \
                 way and from the same code as its first alert",
                self.emphasis(&what),
                view.owner.pid,
                terminal(&view.owner.comm),
                short_duration(over)
            );
        }
        let how_long = if view.since_attach {
            format!(
                "for at least {} (since before probe started)",
                short_duration(alert.age())
            )
        } else {
            format!("for {}", short_duration(alert.age()))
        };
        let label = self.emphasis(&format!("{what} {how_long}"));
        let idle = view
            .idle
            .map(|idle| format!(", idle {}", short_duration(idle)))
            .unwrap_or_default();
        let others: Vec<String> = view.also_held_by.iter().map(u32::to_string).collect();
        let also = if others.is_empty() {
            String::new()
        } else {
            format!(", also held by {}", others.join(","))
        };
        let endpoints = if view.state == TcpState::Listen {
            format!("listening on {}", view.endpoints.local)
        } else {
            format!("{} -> {}", view.endpoints.local, view.endpoints.remote)
        };
        writeln!(
            self.out,
            "{label}{idle}: pid {} ({}{also}) {endpoints}: {}",
            view.owner.pid,
            terminal(&view.owner.comm),
            alert.diagnosis.reason_for(Protocol::of(view))
        )?;
        if let Some(dropped) = alert.dropped.filter(|dropped| *dropped > 0) {
            writeln!(
                self.out,
                "    the kernel dropped {dropped} connection(s) meanwhile (ListenOverflows)"
            )?;
        }
        if let Some(place) = view.origin().describe(SHOWN_FRAMES) {
            writeln!(self.out, "    opened at {}", terminal(&place))?;
        }
        Ok(())
    }

    fn write_summary(&mut self, summary: &Summary) -> io::Result<()> {
        let stuck: usize = summary.stuck().values().sum();
        writeln!(self.out)?;
        writeln!(
            self.out,
            "== summary: {} open connection(s), {} stuck ==",
            summary.open.len(),
            stuck
        )?;
        let mut current = None;
        let groups = summary.groups();
        for group in &groups {
            if current != Some(group.state) {
                current = Some(group.state);
                let stuck_here = summary.stuck_count(group.state);
                let stuck_note = if stuck_here > 0 {
                    self.emphasis(&format!(", {stuck_here} STUCK"))
                } else {
                    String::new()
                };
                // The sockets that are the other ends of connections counted in the rows
                // (both ends on this host), so that the rows add up to the count.
                let held: usize = groups
                    .iter()
                    .filter(|other| other.state == group.state)
                    .map(|other| other.held_ends)
                    .sum();
                let held_note = if held > 0 {
                    format!(" ({held} of them the other ends of connections below)")
                } else {
                    String::new()
                };
                writeln!(
                    self.out,
                    "{}: {} open{held_note}{}",
                    group.state.name(),
                    summary.count(group.state),
                    stuck_note
                )?;
                for kind in summary.kinds_in(group.state) {
                    let protocol = summary.protocol_of(kind);
                    writeln!(self.out, "  why: {}", kind.reason_for(protocol))?;
                }
            }
            let held = (group.held_ends > 0).then(|| pid_list(&group.held_by));
            if group.connections == 0 {
                writeln!(
                    self.out,
                    "  {:<26} the other ends of {} connection(s) counted above, held by pid {}",
                    group.endpoint.to_string(),
                    group.held_ends,
                    held.unwrap_or_default()
                )?;
                continue;
            }
            writeln!(
                self.out,
                "  {:<26} {:>5} connection(s), oldest {:<13} stuck {:<5} pid {}{}",
                group.endpoint.to_string(),
                group.connections,
                if group.since_attach {
                    format!(">={}", age(group.oldest))
                } else {
                    age(group.oldest)
                },
                group.stuck,
                pid_list(&group.pids),
                held.map(|held| format!("; their other ends held by pid {held}"))
                    .unwrap_or_default()
            )?;
        }
        let by_code = summary.stuck_by_code_path();
        if by_code.iter().any(|group| group.shown.is_some()) {
            writeln!(self.out, "stuck, by the code that opened them:")?;
            for group in by_code {
                let all = if group.connections > 1 { "all " } else { "" };
                let place = group.shown.as_ref().map_or_else(
                    || group.origin_without_stack().to_string(),
                    |shown| format!("{all}opened at {}", terminal(shown)),
                );
                writeln!(
                    self.out,
                    "  {} connection(s) stuck in {}, {place}; {}",
                    group.connections,
                    group.state.name(),
                    group.diagnosis.group_reason()
                )?;
            }
        }
        if let Some(mid) = summary.mid_incident() {
            let since = match (mid.opened_since, &mid.continues_from) {
                (0, _) => "none was opened since".to_string(),
                (n, Some(place)) => format!(
                    "the {n} opened since all come from {}: the leak goes on there",
                    terminal(place)
                ),
                (n, None) => format!("{n} were opened since, from the places above"),
            };
            writeln!(
                self.out,
                "attached mid-incident: {} stuck connection(s) predate probe (stacks are taken \
                 at connect(), so their code is unknown); {since}",
                mid.predating
            )?;
        }
        triage::write(&mut self.out, summary, self.clock)?;
        let closed = &summary.closed;
        writeln!(
            self.out,
            "closed: {} (this side closed first {}, peer closed first {}, both at once {}, reset {}, connect failed {})",
            closed.total,
            closed.local_first,
            closed.remote_first,
            closed.simultaneous,
            closed.reset,
            closed.connect_failed
        )?;
        writeln!(
            self.out,
            "lost events: {}, untracked sockets: {}",
            summary.losses.lost_events, summary.losses.untracked_sockets
        )?;
        self.out.flush()
    }
}

/// `pids`, comma-separated: the first few, then how many more.
fn pid_list(pids: &[u32]) -> String {
    const SHOWN: usize = 8;
    let shown: Vec<String> = pids.iter().take(SHOWN).map(u32::to_string).collect();
    match pids.len().checked_sub(SHOWN) {
        Some(more) if more > 0 => format!("{} and {more} more", shown.join(",")),
        _ => shown.join(","),
    }
}
