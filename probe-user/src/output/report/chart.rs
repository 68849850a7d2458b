//! The report's timeline chart: one line per state, drawn as inline SVG (no script, no fetch).

use std::fmt::Write;

use probe_common::TcpState;

use super::timeline::Sample;
use crate::{clock::WallClock, output::format::time_of_day};

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 40.0;

/// The colour of a state's line; the states that can be stuck stand out.
pub fn colour(state: TcpState) -> &'static str {
    match state {
        TcpState::CloseWait => "#d62728",
        TcpState::Established => "#1f77b4",
        TcpState::SynSent => "#ff7f0e",
        TcpState::SynRecv => "#bcbd22",
        TcpState::FinWait1 => "#9467bd",
        TcpState::FinWait2 => "#8c564b",
        TcpState::LastAck => "#e377c2",
        TcpState::Closing => "#17becf",
        TcpState::Listen => "#2ca02c",
        _ => "#7f7f7f",
    }
}

/// The smallest "round" number (1, 2 or 5 times a power of ten) at or above `value`.
fn round_up(value: u32) -> u32 {
    let mut step = 1u32;
    loop {
        for factor in [1, 2, 5] {
            let candidate = step.saturating_mul(factor);
            if candidate >= value {
                return candidate;
            }
        }
        step = step.saturating_mul(10);
    }
}

/// An SVG chart of `states` over the samples.
pub fn svg(samples: &[Sample], states: &[TcpState], clock: WallClock) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="open connections per state over time">"#
    );
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        out.push_str(r#"<text x="20" y="40">no samples</text></svg>"#);
        return out;
    };
    let peak = samples
        .iter()
        .flat_map(|s| states.iter().map(|state| s.count(*state)))
        .max()
        .unwrap_or(0);
    let top_value = round_up(peak.max(1));
    let span_ns = last
        .at
        .as_nanos()
        .saturating_sub(first.at.as_nanos())
        .max(1) as f64;
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let x = |at: u64| LEFT + (at.saturating_sub(first.at.as_nanos()) as f64 / span_ns) * plot_width;
    let y = |count: u32| TOP + plot_height - f64::from(count) / f64::from(top_value) * plot_height;

    // Grid and value labels: 1, 2 or 5 steps of a round number.
    let divisions = top_value.min(5);
    for step in 0..=divisions {
        let value = top_value / divisions * step;
        let at = y(value);
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{at:.1}" x2="{:.1}" y2="{at:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" fill="#555">{value}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            at + 4.0
        );
    }
    // Time labels: five, evenly spread.
    for step in 0..=4u64 {
        let at_ns = first.at.as_nanos() + (span_ns as u64) * step / 4;
        let label = time_of_day(clock.to_system_time(crate::track::Timestamp::from_nanos(at_ns)));
        let anchor = match step {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="{anchor}" fill="#555">{}</text>"##,
            x(at_ns),
            HEIGHT - BOTTOM + 16.0,
            &label[..8.min(label.len())]
        );
    }
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#888"/>"##,
        TOP + plot_height,
        WIDTH - RIGHT,
        TOP + plot_height
    );
    // One line per state, the stuck-prone ones last so they are drawn on top.
    for state in states.iter().rev() {
        let points: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.at.as_nanos()), y(s.count(*state))))
            .collect();
        let width = if matches!(state, TcpState::CloseWait | TcpState::Established) {
            3.0
        } else {
            1.5
        };
        let _ = write!(
            out,
            r#"<polyline class="state-line" data-state="{}" fill="none" stroke="{}" stroke-width="{width}" points="{}"/>"#,
            state.name(),
            colour(*state),
            points.join(" ")
        );
    }
    // Legend along the bottom.
    let mut legend_x = LEFT;
    for state in states {
        let _ = write!(
            out,
            r##"<rect x="{legend_x:.1}" y="{:.1}" width="12" height="4" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="11" fill="#333">{}</text>"##,
            HEIGHT - 12.0,
            colour(*state),
            legend_x + 16.0,
            HEIGHT - 8.0,
            state.name()
        );
        legend_x += 24.0 + 7.0 * state.name().len() as f64;
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::track::Timestamp;

    fn sample(second: u64, close_wait: u32, established: u32) -> Sample {
        let mut counts = [0; 16];
        counts[TcpState::CloseWait as usize] = close_wait;
        counts[TcpState::Established as usize] = established;
        Sample {
            at: Timestamp::from_nanos(second * 1_000_000_000),
            counts,
        }
    }

    #[test]
    fn round_numbers_for_the_axis() {
        let got: Vec<u32> = [1, 3, 7, 12, 48, 51, 999].map(round_up).to_vec();
        assert_eq!(got, [1, 5, 10, 20, 50, 100, 1000]);
    }

    #[test]
    fn one_line_per_state_scaled_to_the_plot() {
        let clock = WallClock::from_readings(Timestamp::from_nanos(0), Duration::from_secs(0));
        let samples = [sample(0, 0, 2), sample(1, 5, 1), sample(2, 10, 0)];
        let svg = svg(
            &samples,
            &[TcpState::CloseWait, TcpState::Established],
            clock,
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        // CLOSE_WAIT climbs from the bottom of the plot to its top (10 is the axis maximum).
        let bottom = HEIGHT - BOTTOM;
        assert!(svg.contains(&format!(
            r#"data-state="CLOSE_WAIT" fill="none" stroke="{}" stroke-width="3" points="{LEFT:.1},{bottom:.1} 500.0,138.0 {:.1},{TOP:.1}""#,
            colour(TcpState::CloseWait),
            WIDTH - RIGHT
        )), "{svg}");
        assert!(
            svg.contains(">00:00:00<") && svg.contains(">00:00:02<"),
            "{svg}"
        );
        assert!(svg.ends_with("</svg>"));
    }
}
