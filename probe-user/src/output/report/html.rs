//! The incident report as one self-contained HTML page: inline style and SVG, no script, no
//! fetch, so it can be mailed or attached to a ticket as it is.

use crate::output::text::triage;
use std::{fmt::Write, time::SystemTime};

use probe_common::TcpState;

use super::{chart, timeline::Timeline};
use crate::{
    clock::WallClock,
    output::escape::terminal,
    output::format::{age, rfc3339, short_duration},
    track::{Diagnosis, OpenConnection, SHOWN_FRAMES, Summary},
};

/// Lifecycles listed per endpoint group at most; the rest are counted.
const LIFECYCLES_PER_GROUP: usize = 25;

/// What the report is made of.
pub struct Facts<'a> {
    /// The traced processes, as the user knows them.
    pub targets: &'a str,
    pub started: SystemTime,
    pub ended: SystemTime,
    pub timeline: &'a Timeline,
    /// The table at the end, code paths resolved.
    pub table: &'a Summary,
    pub transitions: u64,
    pub clock: WallClock,
}

const STYLE: &str = "
body { font-family: -apple-system, 'Segoe UI', 'DejaVu Sans', sans-serif; margin: 24px auto;
       max-width: 1000px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ccc; padding-bottom: 4px; }
.meta { color: #555; font-size: 13px; }
.verdict { padding: 10px 14px; border-radius: 4px; font-size: 15px; margin: 16px 0; }
.verdict.bad { background: #fde8e8; border-left: 5px solid #d62728; }
.verdict.good { background: #e8f6ea; border-left: 5px solid #2ca02c; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin: 8px 0; }
th { background: #e8eef7; text-align: left; padding: 5px 8px; }
td { border-top: 1px solid #e4e4e4; padding: 4px 8px; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: 'DejaVu Sans Mono', monospace; font-size: 12px; }
.state { font-weight: bold; }
.lifecycle span { white-space: nowrap; }
.fix { background: #f4f7fb; padding: 8px 12px; border-radius: 4px; }
";

/// Escapes text for HTML element content and attribute values; control characters (a process
/// chooses its name, its paths, its symbols) are shown escaped as on a terminal
/// ([`terminal`]), not passed raw to whoever opens or copies the report.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in terminal(text).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A connection's states and how long it stayed in each: `SYN_SENT 195us → CLOSE_WAIT 3.5s`.
fn lifecycle(connection: &OpenConnection) -> String {
    let stays = connection.lifecycle();
    let last = stays.len() - 1;
    let mut out = String::new();
    for (index, stay) in stays.into_iter().enumerate() {
        if index > 0 {
            out.push_str(" &rarr; ");
        }
        let lasted = match stay.lasted {
            Some(lasted) if stay.at_least => format!("&ge;{}", short_duration(lasted)),
            Some(lasted) => short_duration(lasted),
            None => "?".into(),
        };
        let now = if index == last { " (now)" } else { "" };
        let _ = write!(
            out,
            r#"<span><span class="state" style="color:{}">{}</span> {lasted}{now}</span>"#,
            chart::colour(stay.state),
            stay.state.name()
        );
    }
    out
}

/// The whole page.
pub fn render(facts: &Facts) -> String {
    let table = facts.table;
    let stuck_total: usize = table.stuck().values().sum();
    let mut out = String::new();
    let title = format!("probe: TCP connections of {}", facts.targets);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>",
        escape(&title)
    );
    let window = facts
        .ended
        .duration_since(facts.started)
        .unwrap_or_default();
    let _ = write!(
        out,
        r#"<h1>{}</h1><div class="meta">from {} to {} ({}), report by probe {}</div>"#,
        escape(&title),
        rfc3339(facts.started),
        rfc3339(facts.ended),
        short_duration(window),
        escape(crate::cli::VERSION)
    );
    verdict(&mut out, table, stuck_total);

    out.push_str("<h2>Open connections per state over time</h2>");
    let states = facts.timeline.states_seen();
    out.push_str(&chart::svg(facts.timeline.samples(), &states, facts.clock));

    processes(&mut out, table, facts.clock);
    if stuck_total > 0 {
        stuck_groups(&mut out, table);
        diagnoses(&mut out, table);
    }
    totals(&mut out, table, facts.transitions);
    out.push_str("</body></html>\n");
    out
}

fn verdict(out: &mut String, table: &Summary, stuck_total: usize) {
    if stuck_total == 0 {
        let _ = write!(
            out,
            r#"<div class="verdict good">No stuck connection: {} open at the end, none past its threshold.</div>"#,
            table.open.len()
        );
        return;
    }
    let parts: Vec<String> = table
        .stuck()
        .iter()
        .map(|(state, count)| format!("{count} in {}", state.name()))
        .collect();
    let _ = write!(
        out,
        r#"<div class="verdict bad"><b>{stuck_total} stuck connection(s)</b>: {} ({} open in all).</div>"#,
        parts.join(", "),
        table.open.len()
    );
}

/// A section per process that leaks or runs out of file descriptors: how much, how fast, since
/// when, how long until it falls over.
fn processes(out: &mut String, table: &Summary, clock: WallClock) {
    let leaking: Vec<_> = table
        .processes
        .iter()
        .filter(|p| p.stuck > 0 || p.fd_exhaustion.is_some())
        .collect();
    if leaking.is_empty() {
        return;
    }
    out.push_str("<h2>Leaking processes</h2>");
    for report in leaking {
        let _ = write!(
            out,
            r#"<h3 class="mono">pid {} ({})</h3><p class="process">{}</p>"#,
            report.pid,
            escape(&report.comm),
            escape(&triage::process_line(report, clock))
        );
        if let Some(cgroup) = &report.placement.cgroup {
            let _ = write!(
                out,
                r#"<p class="meta">cgroup <span class="mono">{}</span></p>"#,
                escape(cgroup)
            );
        }
    }
}

fn stuck_groups(out: &mut String, table: &Summary) {
    out.push_str("<h2>Stuck connections, by remote endpoint</h2>");
    out.push_str(
        r#"<table class="groups"><tr><th>State</th><th>Remote endpoint</th><th>Stuck</th><th>Open</th><th>Oldest in state</th><th>Processes</th></tr>"#,
    );
    let groups: Vec<_> = table.groups().into_iter().filter(|g| g.stuck > 0).collect();
    for group in &groups {
        let pids: Vec<String> = group.pids.iter().map(u32::to_string).collect();
        let oldest = if group.since_attach {
            format!("&ge;{}", age(group.oldest))
        } else {
            age(group.oldest)
        };
        let _ = write!(
            out,
            r#"<tr><td class="state" style="color:{}">{}</td><td class="mono">{}</td><td class="n">{}</td><td class="n">{}</td><td>{oldest}</td><td>{}</td></tr>"#,
            chart::colour(group.state),
            group.state.name(),
            group.endpoint,
            group.stuck,
            group.connections,
            pids.join(", ")
        );
    }
    out.push_str("</table>");
    for group in &groups {
        let _ = write!(
            out,
            r#"<h3 class="mono">{} &rarr; {}: {} stuck</h3><table class="lifecycles"><tr><th>Local</th><th>Process</th><th>Lifecycle (time in each state)</th><th>Idle</th><th>Opened at</th></tr>"#,
            group.state.name(),
            group.endpoint,
            group.stuck
        );
        let members = table
            .open
            .iter()
            .filter(|c| c.stuck.is_some())
            .filter(|c| c.connection.state == group.state)
            .filter(|c| c.connection.known_by == group.endpoint);
        let mut shown = 0;
        for open in members {
            let connection = &open.connection;
            shown += 1;
            if shown > LIFECYCLES_PER_GROUP {
                continue;
            }
            let opened_at = connection
                .origin()
                .describe(SHOWN_FRAMES)
                .map_or_else(|| "not captured".to_string(), |place| escape(&place));
            let _ = write!(
                out,
                r#"<tr><td class="mono">{}</td><td>{} ({})</td><td class="lifecycle">{}</td><td>{}</td><td class="mono">{opened_at}</td></tr>"#,
                connection.endpoints.local,
                connection.owner.pid,
                escape(&connection.owner.comm),
                lifecycle(open),
                connection.idle.map_or_else(|| "-".into(), short_duration),
            );
        }
        if shown > LIFECYCLES_PER_GROUP {
            let _ = write!(
                out,
                r#"<tr><td colspan="5">and {} more</td></tr>"#,
                shown - LIFECYCLES_PER_GROUP
            );
        }
        out.push_str("</table>");
    }
}

fn diagnoses(out: &mut String, table: &Summary) {
    out.push_str("<h2>Diagnosis and fix</h2>");
    let by_code = table.stuck_by_code_path();
    for (&diagnosis, count) in table.stuck_kinds() {
        let protocol = table.protocol_of(diagnosis);
        let colour = TcpState::ALL
            .into_iter()
            .find(|state| Diagnosis::for_state(*state) == Some(diagnosis))
            .map_or("#555", chart::colour);
        let _ = write!(
            out,
            r#"<h3><span class="state" style="color:{colour}">{}</span>: {count} stuck</h3><p>{}</p><div class="fix"><b>Fix:</b> {}</div>"#,
            diagnosis.key(),
            escape(&diagnosis.reason_for(protocol)),
            escape(diagnosis.fix_for(protocol))
        );
        let places: Vec<String> = by_code
            .iter()
            .filter(|g| g.diagnosis == diagnosis)
            .map(|g| match &g.shown {
                Some(shown) => format!(
                    "<li>{} connection(s) opened at <code>{}</code></li>",
                    g.connections,
                    escape(shown)
                ),
                None => format!(
                    "<li>{} connection(s) {}</li>",
                    g.connections,
                    escape(g.origin_without_stack())
                ),
            })
            .collect();
        if !places.is_empty() {
            let _ = write!(
                out,
                "<p>Where the code opened them:</p><ul>{}</ul>",
                places.concat()
            );
        }
    }
}

fn totals(out: &mut String, table: &Summary, transitions: u64) {
    out.push_str("<h2>Totals</h2><table class=\"totals\"><tr><th>State</th><th>Open at the end</th><th>Stuck</th></tr>");
    let mut states: Vec<TcpState> = table.counts().keys().copied().collect();
    states.sort_by_key(|state| crate::track::summary::state_rank(*state));
    for state in states {
        let _ = write!(
            out,
            r#"<tr><td class="state" style="color:{}">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            chart::colour(state),
            state.name(),
            table.count(state),
            table.stuck_count(state)
        );
    }
    let closed = &table.closed;
    let _ = write!(
        out,
        "</table><p>Closed: {} (this side closed first {}, peer closed first {}, both at once {}, \
         reset {}, connect failed {}). Transitions seen: {transitions}. Lost events: {}, \
         untracked sockets: {}.</p>",
        closed.total,
        closed.local_first,
        closed.remote_first,
        closed.simultaneous,
        closed.reset,
        closed.connect_failed,
        table.losses.lost_events,
        table.losses.untracked_sockets
    );
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use probe_common::{Attribution, TcpState::*};

    use super::*;
    use crate::track::{
        Endpoints, Losses, NoCodePaths, Thresholds, Timestamp, Tracker, Transition,
    };

    const MS: u64 = 1_000_000;

    fn step(id: u64, local: &str, old: TcpState, new: TcpState, ms: u64) -> Transition {
        Transition {
            sock_id: id,
            cookie: None,
            pid: 77,
            at: Timestamp::from_nanos(ms * MS),
            endpoints: Endpoints::parse(local, "10.1.2.3:8080"),
            old,
            new,
            attribution: Attribution::Known,
            stack: None,
            requested: None,
        }
    }

    #[test]
    fn the_page_tells_the_whole_story() {
        let mut tracker = Tracker::new(Thresholds::with_classic(
            Duration::from_secs(1),
            Duration::from_secs(60),
        ));
        tracker.register_process(77, "<leaky>");
        let mut timeline = Timeline::default();
        for id in 1..=3 {
            let local = format!("127.0.0.1:{}", 40000 + id);
            for (old, new, ms) in [
                (Close, SynSent, 0),
                (SynSent, Established, 2),
                (Established, CloseWait, 1002),
            ] {
                tracker.apply(&step(id, &local, old, new, ms + id));
            }
            let now = Timestamp::from_nanos(id * 1000 * MS);
            timeline.record(
                now,
                tracker
                    .summary(now, &NoCodePaths, Losses::default())
                    .counts(),
            );
        }
        let end = Timestamp::from_nanos(5000 * MS);
        tracker.due_stuck(end, &NoCodePaths);
        let mut table = tracker.summary(end, &NoCodePaths, Losses::default());
        table.add_triage(&crate::track::triage::Triage::default(), end);
        timeline.record(end, table.counts());
        let page = render(&Facts {
            targets: "77 (<leaky>)",
            started: UNIX_EPOCH,
            ended: UNIX_EPOCH + Duration::from_secs(5),
            timeline: &timeline,
            table: &table,
            transitions: 9,
            clock: WallClock::from_readings(Timestamp::from_nanos(0), Duration::ZERO),
        });
        for expected in [
            "<title>probe: TCP connections of 77 (&lt;leaky&gt;)</title>",
            "from 1970-01-01T00:00:00.000000Z to 1970-01-01T00:00:05.000000Z (5.0s)",
            "<b>3 stuck connection(s)</b>: 3 in CLOSE_WAIT",
            r#"<polyline class="state-line" data-state="CLOSE_WAIT""#,
            r#"<td class="mono">10.1.2.3:8080</td><td class="n">3</td>"#,
            "ESTABLISHED</span> 1.0s</span>",
            "CLOSE_WAIT</span> 4.0s (now)",
            "Fix:</b> Close every socket",
            "Transitions seen: 9",
            "<h2>Leaking processes</h2>",
            "3 CLOSE_WAIT to 10.1.2.3:8080",
        ] {
            assert!(page.contains(expected), "{expected} missing from {page}");
        }
        assert!(!page.contains("<script"), "the page must need no script");
        assert!(
            !page.contains(" src=") && !page.contains(" href="),
            "the page must fetch nothing"
        );
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
    }

    /// A name the process chose reaches the page with its control bytes escaped, as on a
    /// terminal, and its markup inert.
    #[test]
    fn control_bytes_and_markup_are_escaped() {
        assert_eq!(
            super::escape("\x1b]0;owned\x07<b>x</b>"),
            "\\e]0;owned\\x07&lt;b&gt;x&lt;/b&gt;"
        );
    }
}
