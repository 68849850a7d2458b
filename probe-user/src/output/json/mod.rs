//! NDJSON output: one object per line, each with a `"type"`: `transition`, `stuck`, and
//! `summary` (always the last line).

mod triage;

use std::{
    collections::BTreeMap,
    io::{self, Write},
    time::Duration,
};

use serde::Serialize;

use crate::{
    clock::WallClock,
    track::{
        CodePath, ConnectionView, OpenConnection, Origin, ShownStack, StateChange, StuckAlert,
        Summary, Timestamp, protocol::Protocol,
    },
};

use super::{
    Sink,
    escape::json_controls,
    format::{TimeWriter, rfc3339},
    line::Line,
    queue::{Room, TransitionLines},
};

/// Writes NDJSON to `out`.
pub struct JsonSink<W: Write> {
    out: W,
    clock: WallClock,
    times: TimeWriter,
    /// The transition line being written.
    line: Line,
    /// Write a line per transition (host-wide, only when asked: `--transitions`), while the
    /// reader keeps up.
    transitions: TransitionLines,
}

impl<W: Write> JsonSink<W> {
    /// A sink writing NDJSON to `out`; `transitions` to write a line per transition too.
    pub fn new(out: W, clock: WallClock, transitions: bool) -> Self {
        JsonSink {
            out,
            clock,
            times: TimeWriter::default(),
            line: Line::default(),
            transitions: TransitionLines::shown(transitions),
        }
    }

    /// Drops transition lines (counted by `room`) while `room` says the reader is behind.
    pub fn with_room(mut self, room: Room) -> Self {
        self.transitions = self.transitions.with_room(room);
        self
    }

    fn line(&mut self, value: &impl Serialize) -> io::Result<()> {
        let mut json = serde_json::to_vec(value)?;
        json_controls(&mut json);
        json.push(b'\n');
        self.out.write_all(&json)
    }

    fn ts(&self, at: Timestamp) -> String {
        rfc3339(self.clock.to_system_time(at))
    }
}

/// The endpoint fields every record carries.
#[derive(Serialize)]
struct Connection<'a> {
    pid: u32,
    comm: &'a str,
    /// Other processes that hold the socket too.
    #[serde(skip_serializing_if = "<[u32]>::is_empty")]
    also_held_by: &'a [u32],
    /// The kernel socket address, as hex (too large for a JSON number to keep exactly); null for
    /// a connection found at attach that has not changed state since.
    id: Option<String>,
    /// The socket's cookie, where known: the same number `ss -e` shows as `sk:` (in hex there).
    cookie: Option<u64>,
    /// The socket inode, where known.
    inode: Option<u64>,
    family: &'static str,
    saddr: String,
    sport: u16,
    daddr: String,
    dport: u16,
}

impl<'a> Connection<'a> {
    fn new(view: &'a ConnectionView) -> Self {
        let endpoints = &view.endpoints;
        Connection {
            pid: view.owner.pid,
            comm: &view.owner.comm,
            also_held_by: &view.also_held_by,
            id: view.key.socket().map(|id| format!("{id:#x}")),
            cookie: view.cookie,
            inode: view.inode,
            family: endpoints.family.name(),
            saddr: endpoints.local.ip().to_string(),
            sport: endpoints.local.port(),
            daddr: endpoints.remote.ip().to_string(),
            dport: endpoints.remote.port(),
        }
    }
}

/// One stack frame.
#[derive(Serialize)]
struct FrameRecord<'a> {
    function: &'a str,
    file: Option<&'a str>,
    line: Option<u32>,
    address: String,
    /// `app`, `library` or `runtime`.
    kind: &'static str,
}

/// A code path as JSON: its frames, innermost first, outermost last.
fn frames(path: &CodePath) -> Vec<FrameRecord<'_>> {
    path.frames
        .iter()
        .map(|frame| FrameRecord {
            function: &frame.function,
            file: frame.file.as_deref(),
            line: frame.line,
            address: format!("{:#x}", frame.address),
            kind: frame.kind.name(),
        })
        .collect()
}

#[derive(Serialize)]
struct StuckRecord<'a> {
    r#type: &'static str,
    ts: String,
    #[serde(flatten)]
    connection: Connection<'a>,
    state: &'static str,
    since: String,
    age_ms: u64,
    /// Already in `state` when probe attached: `since` and `age_ms` are lower bounds.
    since_attach: bool,
    idle_ms: Option<u64>,
    /// Why it is stuck: the state, or RECEIVE_STALLED, SEND_STALLED, ACCEPT_QUEUE_FULL.
    kind: &'static str,
    /// The protocol the connection speaks, where the code that opened it (its client
    /// library) or the service's port says: the words of `reason` and `fix` are its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'static str>,
    reason: std::borrow::Cow<'static, str>,
    /// What usually fixes it.
    fix: &'static str,
    /// For a full accept queue: connections the kernel dropped meanwhile (ListenOverflows).
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    opened_at: Option<Vec<FrameRecord<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requested_at: Option<Vec<FrameRecord<'a>>>,
    /// Which of the two stacks the code named comes from: `"requested_at"` where a runtime
    /// dialed on behalf of the program's code (named first), else `"opened_at"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    shown: Option<&'static str>,
}

#[derive(Serialize)]
struct OpenRecord<'a> {
    #[serde(flatten)]
    connection: Connection<'a>,
    state: &'static str,
    age_ms: Option<u64>,
    since_attach: bool,
    idle_ms: Option<u64>,
    bytes_acked: Option<u64>,
    bytes_received: Option<u64>,
    retrans: Option<u32>,
    stuck: bool,
    opened_by: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    opened_at: Option<Vec<FrameRecord<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requested_at: Option<Vec<FrameRecord<'a>>>,
    /// Which of the two stacks the code named comes from: `"requested_at"` where a runtime
    /// dialed on behalf of the program's code (named first), else `"opened_at"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    shown: Option<&'static str>,
}

/// Stuck connections of one state opened by one code path.
#[derive(Serialize)]
struct CodePathRecord<'a> {
    state: &'static str,
    /// Why they are stuck: the state, or RECEIVE_STALLED, SEND_STALLED, ACCEPT_QUEUE_FULL.
    kind: &'static str,
    connections: usize,
    reason: &'static str,
    /// The program's code they come from, as the text output names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    opened_at: Option<Vec<FrameRecord<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requested_at: Option<Vec<FrameRecord<'a>>>,
    /// Which of the two stacks the code named comes from: `"requested_at"` where a runtime
    /// dialed on behalf of the program's code (named first), else `"opened_at"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    shown: Option<&'static str>,
}

#[derive(Serialize)]
struct ClosedRecord {
    total: u64,
    local_first: u64,
    remote_first: u64,
    simultaneous: u64,
    reset: u64,
    connect_failed: u64,
}

#[derive(Serialize)]
struct MidIncidentRecord {
    predating: usize,
    opened_since: usize,
    continues_from: Option<String>,
}

#[derive(Serialize)]
struct SummaryRecord<'a> {
    r#type: &'static str,
    open: Vec<OpenRecord<'a>>,
    counts: BTreeMap<&'static str, usize>,
    stuck: BTreeMap<&'static str, usize>,
    /// Stuck connections by kind: the state, or RECEIVE_STALLED, SEND_STALLED,
    /// ACCEPT_QUEUE_FULL.
    stuck_kinds: BTreeMap<&'static str, usize>,
    stuck_by_code_path: Vec<CodePathRecord<'a>>,
    /// Attached mid-incident: stuck connections that predate probe, and where the ones opened
    /// since come from (absent when none predate it).
    #[serde(skip_serializing_if = "Option::is_none")]
    mid_incident: Option<MidIncidentRecord>,
    closed: ClosedRecord,
    lost_events: u64,
    untracked_sockets: u64,
    /// Transition lines not written because the reader was behind (absent when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    transition_lines_dropped: Option<u64>,
    /// The processes, most urgent first (see `rank_reason`), with their forecasts.
    processes: Vec<triage::ProcessRecord<'a>>,
    /// The destinations whose ephemeral ports fill up.
    ports: Vec<triage::PortRecord>,
}

/// A number, or `null`.
fn push_option(line: &mut Line, value: Option<u64>) {
    match value {
        Some(value) => line.push_int(value),
        None => line.push_str("null"),
    }
}

/// `text` as a JSON string: as it is when nothing in it needs escaping (a process name
/// rarely does), through serde_json otherwise.
fn push_json_string(line: &mut Line, text: &str) {
    let plain = text
        .bytes()
        .all(|byte| (0x20..0x7f).contains(&byte) && byte != b'"' && byte != b'\\');
    if plain {
        line.push_byte(b'"');
        line.push_str(text);
        line.push_byte(b'"');
    } else {
        // A string always serializes.
        let mut escaped = serde_json::to_vec(text).unwrap_or_default();
        json_controls(&mut escaped);
        line.push_str(&String::from_utf8_lossy(&escaped));
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Which stack a record's code is named from (see [`Origin::shows`]).
fn shown(origin: Origin<'_>) -> Option<&'static str> {
    origin.shows().map(ShownStack::field)
}

fn open_record(open: &OpenConnection) -> OpenRecord<'_> {
    let view = &open.connection;
    OpenRecord {
        connection: Connection::new(view),
        state: view.state.name(),
        age_ms: view.age.map(millis),
        since_attach: view.since_attach,
        idle_ms: view.idle.map(millis),
        bytes_acked: view.activity.map(|a| a.bytes_acked),
        bytes_received: view.activity.map(|a| a.bytes_received),
        retrans: view.activity.map(|a| a.retransmits),
        stuck: open.stuck.is_some(),
        opened_by: open.opened_by.name(),
        opened_at: view.opened_at.as_deref().map(frames),
        requested_at: view.requested_at.as_deref().map(frames),
        shown: shown(view.origin()),
    }
}

impl<W: Write> Sink for JsonSink<W> {
    /// Written field by field: this is the line probe writes for every event, and only the
    /// process name can need escaping (the same fields as the other records, no allocation).
    fn transition(&mut self, change: &StateChange) -> io::Result<()> {
        if !self.transitions.admit() {
            return Ok(());
        }
        let line = &mut self.line;
        let endpoints = &change.endpoints;
        line.clear();
        line.push_str(r#"{"type":"transition","ts":""#);
        self.times
            .rfc3339(line, self.clock.to_system_time(change.at));
        line.push_str(r#"","pid":"#);
        line.push_int(change.owner.pid);
        line.push_str(r#","comm":"#);
        push_json_string(line, &change.owner.comm);
        line.push_str(r#","id":""#);
        line.push_hex(change.id);
        line.push_str(r#"","cookie":"#);
        push_option(line, change.cookie);
        line.push_str(r#","inode":"#);
        push_option(line, change.inode);
        line.push_str(r#","family":""#);
        line.push_str(endpoints.family.name());
        line.push_str(r#"","saddr":""#);
        line.push_ip(endpoints.local.ip());
        line.push_str(r#"","sport":"#);
        line.push_int(endpoints.local.port());
        line.push_str(r#","daddr":""#);
        line.push_ip(endpoints.remote.ip());
        line.push_str(r#"","dport":"#);
        line.push_int(endpoints.remote.port());
        line.push_str(r#","old":""#);
        line.push_str(change.old.name());
        line.push_str(r#"","new":""#);
        line.push_str(change.new.name());
        line.push_str(r#"","in_old_ms":"#);
        push_option(line, change.in_old.map(millis));
        line.push_str(if change.time_wait() {
            r#","time_wait":true,"ending":"#
        } else {
            r#","time_wait":false,"ending":"#
        });
        match change.ending {
            Some(ending) => {
                line.push_byte(b'"');
                line.push_str(ending.name());
                line.push_str("\"}");
            }
            None => line.push_str("null}"),
        }
        line.end();
        self.out.write_all(line.as_bytes())
    }

    fn stuck(&mut self, alert: &StuckAlert) -> io::Result<()> {
        let view = &alert.connection;
        let protocol = Protocol::of(view);
        let record = StuckRecord {
            r#type: "stuck",
            ts: self.ts(alert.since().saturating_add(alert.age())),
            connection: Connection::new(view),
            state: view.state.name(),
            since: self.ts(alert.since()),
            age_ms: millis(alert.age()),
            since_attach: view.since_attach,
            idle_ms: view.idle.map(millis),
            kind: alert.diagnosis.key(),
            protocol: protocol.name(),
            reason: alert.diagnosis.reason_for(protocol),
            fix: alert.diagnosis.fix_for(protocol),
            dropped: alert.dropped,
            opened_at: view.opened_at.as_deref().map(frames),
            requested_at: view.requested_at.as_deref().map(frames),
            shown: shown(view.origin()),
        };
        self.line(&record)
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        let names = |counts: &BTreeMap<_, usize>| {
            counts
                .iter()
                .map(|(state, n): (&probe_common::TcpState, &usize)| (state.name(), *n))
                .collect()
        };
        let closed = summary.closed;
        let groups = summary.stuck_by_code_path();
        let record = SummaryRecord {
            r#type: "summary",
            open: summary.open.iter().map(open_record).collect(),
            counts: names(summary.counts()),
            stuck: names(summary.stuck()),
            stuck_kinds: summary
                .stuck_kinds()
                .iter()
                .map(|(kind, n)| (kind.key(), *n))
                .collect(),
            stuck_by_code_path: groups
                .iter()
                .map(|group| CodePathRecord {
                    state: group.state.name(),
                    connections: group.connections,
                    kind: group.diagnosis.key(),
                    reason: group.diagnosis.group_reason(),
                    code: group.shown.as_deref(),
                    opened_at: group.opened_at.as_deref().map(frames),
                    requested_at: group.requested_at.as_deref().map(frames),
                    shown: shown(group.origin()),
                })
                .collect(),
            mid_incident: summary.mid_incident().map(|mid| MidIncidentRecord {
                predating: mid.predating,
                opened_since: mid.opened_since,
                continues_from: mid.continues_from,
            }),
            closed: ClosedRecord {
                total: closed.total,
                local_first: closed.local_first,
                remote_first: closed.remote_first,
                simultaneous: closed.simultaneous,
                reset: closed.reset,
                connect_failed: closed.connect_failed,
            },
            lost_events: summary.losses.lost_events,
            untracked_sockets: summary.losses.untracked_sockets,
            transition_lines_dropped: self.transitions.dropped(),
            processes: summary
                .processes
                .iter()
                .map(|report| triage::process(report, report.onset.map(|at| self.ts(at))))
                .collect(),
            ports: summary.ports.iter().map(triage::port).collect(),
        };
        self.line(&record)?;
        self.out.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use probe_common::TcpState;
    use serde_json::{Value, json};

    use super::*;
    use crate::track::{Ending, Endpoints, Owner};

    /// The hand-written transition line is the JSON the other records would give: checked field
    /// by field, with a name that needs escaping, an inode, IPv6 and an ending.
    #[test]
    fn transition_lines_are_valid_json_with_every_field() {
        let change = StateChange {
            id: 0xffff_8881_2345_6780,
            cookie: Some(77),
            inode: Some(991),
            owner: Owner {
                pid: 12,
                comm: "we\"ird\\name\n".into(),
            },
            endpoints: Endpoints::parse("[2001:db8::1]:443", "[::ffff:10.0.0.1]:5000"),
            old: TcpState::FinWait2,
            new: TcpState::Close,
            at: Timestamp::from_nanos(1_500_000),
            in_old: Some(Duration::from_micros(2_500)),
            ending: Some(Ending::TimeWait),
            closed_first: None,
            visited: Default::default(),
        };
        let clock = WallClock::from_readings(Timestamp::from_nanos(0), Duration::from_secs(60));
        let mut out = Vec::new();
        JsonSink::new(&mut out, clock, true)
            .transition(&change)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            json!({
                "type": "transition", "ts": "1970-01-01T00:01:00.001500Z", "pid": 12,
                "comm": "we\"ird\\name\n", "id": "0xffff888123456780", "cookie": 77, "inode": 991,
                "family": "ipv6", "saddr": "2001:db8::1", "sport": 443,
                "daddr": "::ffff:10.0.0.1", "dport": 5000, "old": "FIN_WAIT2", "new": "CLOSE",
                "in_old_ms": 2, "time_wait": true, "ending": "time_wait"
            })
        );
    }
}
