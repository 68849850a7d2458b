//! Draws the live view with ratatui: header, per-state counts with sparklines, stuck groups,
//! latest transitions.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table},
};

use probe_common::TcpState;

use super::view::View;
use crate::output::escape::terminal;
use crate::{
    clock::WallClock,
    output::format::{age, short_duration, time_of_day},
};

fn colour(state: TcpState) -> Color {
    match state {
        TcpState::CloseWait => Color::Red,
        TcpState::Established => Color::Blue,
        TcpState::Listen => Color::Green,
        _ => Color::Gray,
    }
}

/// Draws the whole view into `frame`.
pub fn draw(frame: &mut Frame, view: &View, clock: WallClock) {
    let states = view.states();
    let state_rows = u16::try_from(states.len().max(1)).unwrap_or(u16::MAX);
    // The stuck table as tall as its rows (within reason); the transitions get the rest.
    let group_rows = u16::try_from(view.shown_groups().count()).unwrap_or(u16::MAX);
    let process_rows = u16::try_from(view.processes.len()).unwrap_or(u16::MAX);
    let [header, counts, processes, stuck, recent] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(state_rows + 2),
        Constraint::Length(process_rows.clamp(1, 10) + 3),
        Constraint::Length(group_rows.clamp(1, 20) + 3),
        Constraint::Min(5),
    ])
    .areas(frame.area());
    draw_header(frame, header, view);
    draw_counts(frame, counts, view, &states);
    draw_processes(frame, processes, view, clock);
    draw_stuck(frame, stuck, view);
    draw_recent(frame, recent, view, clock);
}

/// The process table, like `top`'s.
fn draw_processes(frame: &mut Frame, area: Rect, view: &View, clock: WallClock) {
    let header = Row::new(
        [
            "PID",
            "COMM",
            "CONTAINER / POD",
            "STUCK",
            "PER MIN",
            "SINCE",
            "FDS",
            "FDS OUT IN",
        ]
        .map(|title| Cell::from(title).style(Style::new().add_modifier(Modifier::BOLD))),
    );
    let rows = view.processes.iter().map(|p| {
        let placement = text_placement(&p.placement);
        Row::new(vec![
            Cell::from(p.pid.to_string()),
            Cell::from(terminal(&p.comm).into_owned()),
            Cell::from(placement),
            Cell::from(p.stuck.to_string()).style(if p.stuck > 0 {
                Style::new().fg(Color::Red)
            } else {
                Style::new()
            }),
            Cell::from(
                p.leak_per_min
                    .map_or_else(|| "-".into(), |r| format!("{r:+.1}")),
            ),
            Cell::from(p.onset.map_or_else(
                || "-".into(),
                |at| {
                    let since = time_of_day(clock.to_system_time(at));
                    if p.onset_estimated {
                        format!("<={since}")
                    } else {
                        since
                    }
                },
            )),
            Cell::from(match (p.fds_open, p.fd_limit) {
                (Some(open), Some(limit)) => format!("{open}/{limit}"),
                (Some(open), None) => open.to_string(),
                _ => "-".into(),
            }),
            Cell::from(p.fd_exhaustion.map_or_else(|| "-".into(), short_duration)),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(8),
            Constraint::Length(16),
            Constraint::Length(24),
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(14),
            Constraint::Length(12),
            Constraint::Min(10),
        ],
    )
    .header(header)
    .block(Block::new().borders(Borders::ALL).title(format!(
        " processes with stuck connections or running out of fds, by {} ",
        view.process_sort.label()
    )));
    frame.render_widget(table, area);
}

/// `pod 9f1c2ab3 / 0b1c2d3e4f5a`, as short as `docker ps` shows ids.
fn text_placement(placement: &crate::track::triage::Placement) -> String {
    match (&placement.pod, &placement.container) {
        (Some(pod), Some(container)) => format!(
            "pod {} / {}",
            &pod[..pod.len().min(8)],
            &container[..container.len().min(12)]
        ),
        (None, Some(container)) => container[..container.len().min(12)].to_string(),
        (Some(pod), None) => format!("pod {}", &pod[..pod.len().min(8)]),
        (None, None) => "-".into(),
    }
}

fn draw_header(frame: &mut Frame, area: Rect, view: &View) {
    let running = view
        .started
        .zip(view.now)
        .map_or_else(String::new, |(start, now)| {
            short_duration(now.saturating_since(start))
        });
    let stuck: usize = view.counts.values().map(|c| c.1).sum();
    let filter = view.only.map_or("all states", TcpState::name);
    let lines = vec![
        Line::from(vec![
            Span::styled("probe", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(format!(
                " tracing {} for {running}: {} transitions, ",
                view.targets, view.transitions
            )),
            Span::styled(
                format!("{stuck} stuck"),
                if stuck > 0 {
                    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
                } else {
                    Style::new()
                },
            ),
        ]),
        Line::from(format!(
            "keys: s sort (by {}) | f filter ({filter}) | p processes (by {}) | q quit",
            view.sort.label(),
            view.process_sort.label()
        ))
        .style(Style::new().fg(Color::DarkGray)),
    ];
    frame.render_widget(Paragraph::new(lines), area);
}

fn draw_counts(frame: &mut Frame, area: Rect, view: &View, states: &[TcpState]) {
    let block = Block::new()
        .borders(Borders::ALL)
        .title(" open connections per state (last 3 minutes) ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if states.is_empty() {
        frame.render_widget(Paragraph::new("no open connection yet"), inner);
        return;
    }
    let rows = Layout::vertical(states.iter().map(|_| Constraint::Length(1))).split(inner);
    for (state, row) in states.iter().zip(rows.iter()) {
        let [label, spark] =
            Layout::horizontal([Constraint::Length(38), Constraint::Min(10)]).areas(*row);
        let (open, stuck) = view.counts.get(state).copied().unwrap_or((0, 0));
        let stuck_text = if stuck > 0 {
            format!(" {stuck} STUCK")
        } else {
            String::new()
        };
        frame.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled(
                    format!("{:<12}", state.name()),
                    Style::new().fg(colour(*state)),
                ),
                Span::raw(format!("{open:>7} open")),
                Span::styled(stuck_text, Style::new().fg(Color::Red)),
            ])),
            label,
        );
        let history = view.history.get(state).map(|h| {
            // The newest samples, as many as fit.
            let skip = h.len().saturating_sub(usize::from(spark.width));
            h.iter().skip(skip).copied().collect::<Vec<u64>>()
        });
        frame.render_widget(
            Sparkline::default()
                .data(history.unwrap_or_default())
                .style(Style::new().fg(colour(*state))),
            spark,
        );
    }
}

fn draw_stuck(frame: &mut Frame, area: Rect, view: &View) {
    let rows: Vec<Row> = view
        .shown_groups()
        .map(|group| {
            let oldest = if group.since_attach {
                format!(">={}", age(group.oldest))
            } else {
                age(group.oldest)
            };
            let pids: Vec<String> = group.pids.iter().map(u32::to_string).collect();
            Row::new(vec![
                Cell::from(group.kind.key()).style(Style::new().fg(colour(group.state))),
                Cell::from(group.endpoint.to_string()),
                Cell::from(group.count.to_string()),
                Cell::from(oldest),
                Cell::from(group.idle.map_or_else(|| "-".into(), short_duration)),
                Cell::from(pids.join(",")),
                Cell::from(terminal(group.code.as_deref().unwrap_or("-")).into_owned()),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(18),
            Constraint::Length(28),
            Constraint::Length(7),
            Constraint::Length(14),
            Constraint::Length(8),
            Constraint::Length(12),
            Constraint::Min(12),
        ],
    )
    .header(
        Row::new([
            "STUCK AS",
            "REMOTE",
            "STUCK",
            "OLDEST",
            "IDLE",
            "PIDS",
            "OPENED AT",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(
        Block::new()
            .borders(Borders::ALL)
            .title(" stuck connections, by remote endpoint "),
    );
    frame.render_widget(table, area);
}

fn draw_recent(frame: &mut Frame, area: Rect, view: &View, clock: WallClock) {
    let lines: Vec<Line> = view
        .shown_transitions()
        .take(usize::from(area.height))
        .map(|change| {
            Line::from(format!(
                "{} {:>7} {:<15} {:<22} {:<22} {} -> {}",
                time_of_day(clock.to_system_time(change.at)),
                change.owner.pid,
                terminal(&change.owner.comm),
                change.endpoints.local.to_string(),
                change.endpoints.remote.to_string(),
                change.old.name(),
                change.new.name()
            ))
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::ALL)
                .title(" latest transitions "),
        ),
        area,
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::track::{Summary, Timestamp};

    #[test]
    fn an_empty_view_draws_its_frame() {
        let mut terminal = Terminal::new(TestBackend::new(100, 20)).unwrap();
        let mut view = View::new("42 (client)".into());
        view.tick(
            Timestamp::from_nanos(1),
            &Summary::new(Vec::new(), Default::default(), Default::default()),
        );
        let clock = WallClock::from_readings(Timestamp::from_nanos(0), Duration::ZERO);
        terminal.draw(|frame| draw(frame, &view, clock)).unwrap();
        let screen: String = terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|cell| cell.symbol())
            .collect();
        for text in [
            "probe tracing 42 (client)",
            "0 stuck",
            "q quit",
            "no open connection yet",
            "stuck connections, by remote endpoint",
            "latest transitions",
        ] {
            assert!(screen.contains(text), "{text} missing from {screen}");
        }
    }
}
