//! Small formatting helpers shared by the human-readable outputs.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::line::Line;
use crate::track::triage::{ProcessReport, Rank};

/// A short, human duration: `850us`, `12ms`, `4.2s`, `3m07s`, `2h05m`, `3d04h`.
pub fn short_duration(duration: Duration) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = write_short_duration(&mut text, duration);
    text
}

/// Writes [`short_duration`] to `out`, without a String of its own.
pub fn write_short_duration(out: &mut impl fmt::Write, duration: Duration) -> fmt::Result {
    let secs = duration.as_secs();
    match secs {
        0 if duration.as_millis() == 0 => write!(out, "{}us", duration.as_micros()),
        0 => write!(out, "{}ms", duration.as_millis()),
        1..60 => write!(out, "{:.1}s", duration.as_secs_f64()),
        60..3600 => write!(out, "{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => write!(out, "{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => write!(out, "{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// A duration that may be unknown because it started before probe was watching.
pub fn age(duration: Option<Duration>) -> String {
    duration.map_or_else(|| "before start".to_string(), short_duration)
}

/// RFC 3339 with microseconds, UTC: `2026-11-24T05:43:12.123456Z`.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}

/// Time of day, UTC, with milliseconds: `05:43:12.123`.
pub fn time_of_day(time: SystemTime) -> String {
    let full = humantime::format_rfc3339_millis(time).to_string();
    // `YYYY-MM-DDTHH:MM:SS.mmmZ`: the time sits between the `T` and the `Z`.
    full.get(11..23).unwrap_or(&full).to_string()
}

/// Writes timestamps that mostly come in order, as every event's does, without formatting the
/// date each time: the part down to the second is formatted once per second.
#[derive(Debug, Default)]
pub struct TimeWriter {
    second: Option<u64>,
    /// `YYYY-MM-DDTHH:MM:SS` of `second`.
    prefix: String,
}

impl TimeWriter {
    fn since_epoch(&mut self, time: SystemTime) -> Duration {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        if self.second != Some(since.as_secs()) {
            let whole = UNIX_EPOCH + Duration::from_secs(since.as_secs());
            let full = humantime::format_rfc3339_seconds(whole).to_string();
            self.prefix = full.trim_end_matches('Z').to_string();
            self.second = Some(since.as_secs());
        }
        since
    }

    /// As [`rfc3339`].
    pub fn rfc3339(&mut self, line: &mut Line, time: SystemTime) {
        let since = self.since_epoch(time);
        line.push_str(&self.prefix);
        line.push_byte(b'.');
        line.push_int_zero_padded(since.subsec_micros(), 6);
        line.push_byte(b'Z');
    }

    /// As [`time_of_day`].
    pub fn time_of_day(&mut self, line: &mut Line, time: SystemTime) {
        let since = self.since_epoch(time);
        line.push_str(self.prefix.get(11..).unwrap_or(&self.prefix));
        line.push_byte(b'.');
        line.push_int_zero_padded(since.subsec_millis(), 3);
    }
}

/// A rate with one decimal below ten a minute, whole above.
pub fn per_minute(rate: f64) -> String {
    if rate < 10.0 {
        format!("{rate:.1}")
    } else {
        format!("{rate:.0}")
    }
}

/// `~3m`, `~40s`: a forecast is no measurement.
pub fn about(left: Duration) -> String {
    let rounded = if left >= Duration::from_secs(120) {
        Duration::from_secs(left.as_secs() / 60 * 60)
    } else {
        Duration::from_secs(left.as_secs())
    };
    format!("~{}", short_duration(rounded))
}

/// Why the triage ranks a process where it is, in words (the text table's and JSON's
/// `rank_reason`): `fds run out first: in ~33m at +120/min`.
pub fn rank_reason(report: &ProcessReport) -> String {
    let rate = per_minute(report.leak_per_min.unwrap_or(0.0));
    match report.rank {
        Rank::FdsRunOut => format!(
            "fds run out first: in {} at +{}/min",
            about(report.fd_exhaustion.unwrap_or_default()),
            per_minute(report.fd_growth.map_or(0.0, |(rate, _, _)| rate))
        ),
        Rank::Growing => format!("growing: +{rate}/min"),
        Rank::NotGrowing => format!("{} stuck, not growing", report.stuck),
        Rank::NoneStuck => "nothing stuck".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn durations_are_short_and_readable() {
        let cases = [
            (Duration::from_micros(850), "850us"),
            (Duration::from_millis(12), "12ms"),
            (Duration::from_millis(4_249), "4.2s"),
            (Duration::from_secs(187), "3m07s"),
            (Duration::from_secs(2 * 3600 + 5 * 60 + 9), "2h05m"),
            (Duration::from_secs(3 * 86400 + 4 * 3600), "3d04h"),
        ];
        for (duration, text) in cases {
            assert_eq!(short_duration(duration), text);
        }
        assert_eq!(age(None), "before start");
    }

    #[test]
    fn the_time_writer_writes_what_the_formatters_do() {
        let mut writer = TimeWriter::default();
        for micros in [
            1_764_000_000_123_456u64,
            1_764_000_000_999_999,
            1_764_000_001_000_000,
            1_764_000_000_000_001,
            86_400_000_000 * 365 * 60,
        ] {
            let t = UNIX_EPOCH + Duration::from_micros(micros);
            let mut line = Line::default();
            writer.rfc3339(&mut line, t);
            assert_eq!(line.as_bytes(), rfc3339(t).as_bytes());
            line.clear();
            writer.time_of_day(&mut line, t);
            assert_eq!(line.as_bytes(), time_of_day(t).as_bytes());
        }
    }

    #[test]
    fn times_are_utc() {
        let t = UNIX_EPOCH + Duration::from_micros(1_764_000_000_123_456);
        assert_eq!(rfc3339(t), "2025-11-24T16:00:00.123456Z");
        assert_eq!(time_of_day(t), "16:00:00.123");
    }
}
