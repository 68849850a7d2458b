//! The two text formats scrapers read: OpenMetrics (what prometheus-client writes, and what
//! Prometheus asks for) and Prometheus' own text format 0.0.4 (what `promtool check metrics`,
//! older scrapers and people with curl read). prometheus-client writes only the first; for the
//! metric types probe uses (counters, gauges, histograms, no units) the second differs in two
//! ways only, so it is converted here rather than encoded by a second library: a counter's
//! `# HELP` and `# TYPE` lines name it with its `_total` suffix, and there is no `# EOF`.

/// Which format a response is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// Prometheus' text format, version 0.0.4.
    Text,
}

impl Format {
    /// OpenMetrics for clients that accept it (Prometheus says so), the text format otherwise.
    pub fn negotiate(accept: Option<&[u8]>) -> Format {
        let accepts = accept
            .and_then(|accept| std::str::from_utf8(accept).ok())
            .is_some_and(|accept| accept.contains("application/openmetrics-text"));
        if accepts {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// `openmetrics` (as prometheus-client encodes it), in this format.
    pub fn render(self, openmetrics: String) -> String {
        match self {
            Format::OpenMetrics => openmetrics,
            Format::Text => to_text_format(&openmetrics),
        }
    }
}

/// OpenMetrics text -> Prometheus text format 0.0.4.
fn to_text_format(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(renamed) => text.push_str(&renamed),
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = "\
# HELP probe_connections_open Open TCP connections.
# TYPE probe_connections_open gauge
probe_connections_open{state=\"CLOSE_WAIT\"} 3
# HELP probe_lost_events Events the kernel could not deliver.
# TYPE probe_lost_events counter
probe_lost_events_total 0
# HELP probe_state_duration_seconds Time in a state.
# TYPE probe_state_duration_seconds histogram
probe_state_duration_seconds_bucket{state=\"SYN_SENT\",le=\"+Inf\"} 4
probe_state_duration_seconds_sum{state=\"SYN_SENT\"} 0.001
probe_state_duration_seconds_count{state=\"SYN_SENT\"} 4
# EOF
";

    #[test]
    fn counters_are_named_with_their_suffix_and_there_is_no_eof() {
        let text = Format::Text.render(OPENMETRICS.to_string());
        assert_eq!(
            text,
            "\
# HELP probe_connections_open Open TCP connections.
# TYPE probe_connections_open gauge
probe_connections_open{state=\"CLOSE_WAIT\"} 3
# HELP probe_lost_events_total Events the kernel could not deliver.
# TYPE probe_lost_events_total counter
probe_lost_events_total 0
# HELP probe_state_duration_seconds Time in a state.
# TYPE probe_state_duration_seconds histogram
probe_state_duration_seconds_bucket{state=\"SYN_SENT\",le=\"+Inf\"} 4
probe_state_duration_seconds_sum{state=\"SYN_SENT\"} 0.001
probe_state_duration_seconds_count{state=\"SYN_SENT\"} 4
"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_the_text_format() {
        let prometheus = b"application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some(b"*/*")), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(
            Format::OpenMetrics.render(OPENMETRICS.to_string()),
            OPENMETRICS
        );
    }
}
