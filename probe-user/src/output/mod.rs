//! Sinks: where the tracker's findings go. Each sink formats; none reaches back into the tracker.

pub mod escape;
pub mod filter;
pub mod format;
pub mod json;
pub mod line;
pub mod live;
pub mod metrics;
pub mod queue;
pub mod report;
pub mod text;

use std::io;

use crate::track::{StateChange, StuckAlert, Summary, Timestamp};

/// A destination for what probe finds.
pub trait Sink {
    /// One state transition of a traced connection.
    fn transition(&mut self, change: &StateChange) -> io::Result<()>;
    /// A connection that just crossed its state's threshold.
    fn stuck(&mut self, alert: &StuckAlert) -> io::Result<()>;
    /// The last word: open connections and totals.
    fn summary(&mut self, summary: &Summary) -> io::Result<()>;
    /// Pushes buffered output out (called after each batch of events).
    fn flush(&mut self) -> io::Result<()>;
    /// Whether this sink wants [`Sink::tick`] at `now`: a look at the whole table (offered
    /// about once a second, and built only when a sink wants it).
    fn wants_tick(&self, _now: Timestamp) -> bool {
        false
    }
    /// The whole table as of `now` (only for sinks that want ticks).
    fn tick(&mut self, _now: Timestamp, _table: &Summary) -> io::Result<()> {
        Ok(())
    }
    /// A key the user pressed (only the live view has keys).
    fn key(&mut self, _key: Key) -> KeyOutcome {
        KeyOutcome::Ignored
    }
}

/// A key press, as the live view understands them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    /// Ctrl-C (in a full-screen view the terminal does not turn it into SIGINT).
    Interrupt,
    Escape,
    /// The terminal changed size.
    Resize,
}

/// What a key press asks of probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyOutcome {
    Ignored,
    /// The view changed: draw it again now.
    Redraw,
    /// Stop probe (the summary is still printed).
    Quit,
}

/// Several sinks fed the same findings, in order.
#[derive(Default)]
pub struct Outputs {
    sinks: Vec<Box<dyn Sink>>,
}

impl Outputs {
    /// Adds a sink.
    pub fn push(&mut self, sink: Box<dyn Sink>) {
        self.sinks.push(sink);
    }

    /// Feeds every sink, and returns the first error after all were fed.
    fn each(&mut self, mut feed: impl FnMut(&mut dyn Sink) -> io::Result<()>) -> io::Result<()> {
        let mut first_error = None;
        for sink in &mut self.sinks {
            if let Err(error) = feed(sink.as_mut()) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Sink for Outputs {
    fn transition(&mut self, change: &StateChange) -> io::Result<()> {
        self.each(|sink| sink.transition(change))
    }

    fn stuck(&mut self, alert: &StuckAlert) -> io::Result<()> {
        self.each(|sink| sink.stuck(alert))
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.each(|sink| sink.summary(summary))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.each(|sink| sink.flush())
    }

    fn wants_tick(&self, now: Timestamp) -> bool {
        self.sinks.iter().any(|sink| sink.wants_tick(now))
    }

    fn tick(&mut self, now: Timestamp, table: &Summary) -> io::Result<()> {
        self.each(|sink| {
            if sink.wants_tick(now) {
                sink.tick(now, table)
            } else {
                Ok(())
            }
        })
    }

    fn key(&mut self, key: Key) -> KeyOutcome {
        self.sinks
            .iter_mut()
            .map(|sink| sink.key(key))
            .max()
            .unwrap_or(KeyOutcome::Ignored)
    }
}

#[cfg(test)]
mod tests {
    use std::{io, time::Duration};

    use probe_common::{Attribution, TcpState, TcpState::*};

    use super::{Sink, json::JsonSink, queue, text::TextSink};
    use crate::{
        clock::WallClock,
        track::{Endpoints, Losses, Thresholds, Timestamp, Tracker, Transition},
    };

    const SECOND: u64 = 1_000_000_000;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_nanos(100 * SECOND + ms * 1_000_000)
    }

    fn transition(
        id: u64,
        local: &str,
        remote: &str,
        old: TcpState,
        new: TcpState,
        ms: u64,
    ) -> Transition {
        Transition {
            sock_id: id,
            cookie: None,
            pid: 4242,
            at: at(ms),
            endpoints: Endpoints::parse(local, remote),
            old,
            new,
            attribution: Attribution::Known,
            stack: None,
            requested: None,
        }
    }

    /// A leaked client connection stuck in CLOSE_WAIT, a clean active close, an idle IPv6
    /// connection, and a reset, run through a sink.
    fn scenario(sink: &mut dyn Sink) {
        let mut tracker = Tracker::new(Thresholds::with_classic(
            Duration::from_secs(5),
            Duration::from_secs(60),
        ));
        tracker.register_process(4242, "leaky-client");
        let cw = "127.0.0.1:41000";
        let server = "127.0.0.1:8080";
        let v6 = "[::1]:41002";
        let steps = [
            transition(
                0xffff_8881_0000_0100,
                "127.0.0.1:0",
                server,
                Close,
                SynSent,
                0,
            ),
            transition(0xffff_8881_0000_0100, cw, server, SynSent, Established, 1),
            transition(
                0xffff_8881_0000_0100,
                cw,
                server,
                Established,
                CloseWait,
                1_001,
            ),
            transition(
                0xffff_8881_0000_0200,
                "127.0.0.1:41001",
                server,
                Close,
                SynSent,
                2_000,
            ),
            transition(
                0xffff_8881_0000_0200,
                "127.0.0.1:41001",
                server,
                SynSent,
                Established,
                2_001,
            ),
            transition(
                0xffff_8881_0000_0200,
                "127.0.0.1:41001",
                server,
                Established,
                FinWait1,
                2_500,
            ),
            transition(
                0xffff_8881_0000_0200,
                "127.0.0.1:41001",
                server,
                FinWait1,
                FinWait2,
                2_501,
            ),
            transition(
                0xffff_8881_0000_0200,
                "127.0.0.1:41001",
                server,
                FinWait2,
                Close,
                2_502,
            ),
            transition(
                0xffff_8881_0000_0300,
                v6,
                "[::1]:5432",
                Close,
                SynSent,
                3_000,
            ),
            transition(
                0xffff_8881_0000_0300,
                v6,
                "[::1]:5432",
                SynSent,
                Established,
                3_001,
            ),
            transition(
                0xffff_8881_0000_0400,
                "127.0.0.1:41003",
                server,
                Established,
                Close,
                4_000,
            ),
        ];
        let opener = std::sync::Arc::new(crate::track::CodePath {
            frames: ["__connect", "main.doRequest", "main.main"]
                .iter()
                .zip([0, 31, 52])
                .map(|(function, line)| crate::track::Frame {
                    function: function.to_string(),
                    file: (line > 0).then(|| "main.go".to_string()),
                    line: (line > 0).then_some(line),
                    address: 0x4000 + u64::from(line),
                    kind: if line > 0 {
                        crate::track::FrameKind::App
                    } else {
                        crate::track::FrameKind::Runtime
                    },
                })
                .collect(),
        });
        let leak = crate::track::StackRef { pid: 4242, id: 1 };
        for (i, step) in steps.iter().enumerate() {
            let mut step = *step;
            if i == 0 {
                step.stack = Some(leak);
            }
            sink.transition(&tracker.apply(&step)).unwrap();
        }
        let code_paths = |stack| (stack == leak).then(|| opener.clone());
        for alert in tracker.due_stuck(at(6_001), &code_paths) {
            sink.stuck(&alert).unwrap();
        }
        let losses = Losses {
            lost_events: 2,
            untracked_sockets: 0,
        };
        let summary = tracker.summary(at(9_000), &code_paths, losses);
        sink.summary(&summary).unwrap();
    }

    fn clock() -> WallClock {
        // Monotonic 0 is 2026-11-24T06:00:00Z.
        WallClock::from_readings(Timestamp::from_nanos(0), Duration::from_secs(1_795_500_000))
    }

    #[test]
    fn text_output() {
        let mut out = Vec::new();
        scenario(&mut TextSink::new(&mut out, clock(), false, true));
        insta::assert_snapshot!(String::from_utf8(out).unwrap());
    }

    #[test]
    fn the_text_output_tells_the_triage_while_probe_runs_once_it_changed() {
        let mut tracker = Tracker::new(Thresholds::with_classic(
            Duration::from_secs(5),
            Duration::from_secs(60),
        ));
        tracker.register_process(4242, "leaky-client");
        let server = "127.0.0.1:8080";
        let leak = |tracker: &mut Tracker, id: u64, port: u16, ms: u64| {
            let local = format!("127.0.0.1:{port}");
            for step in [
                transition(id, "127.0.0.1:0", server, Close, SynSent, ms),
                transition(id, &local, server, SynSent, Established, ms + 1),
                transition(id, &local, server, Established, CloseWait, ms + 1_001),
            ] {
                tracker.apply(&step);
            }
        };
        let table_at = |tracker: &mut Tracker, ms: u64| {
            let now = at(ms);
            drop(tracker.due_stuck(now, &crate::track::NoCodePaths));
            let mut table = tracker.summary(now, &crate::track::NoCodePaths, Losses::default());
            table.add_triage(&crate::track::triage::Triage::default(), now);
            table
        };
        let mut out = Vec::new();
        let mut sink = TextSink::new(&mut out, clock(), false, false);
        leak(&mut tracker, 1, 41000, 0);
        // The first look sets the pace.
        assert!(sink.wants_tick(at(0)));
        sink.tick(at(0), &table_at(&mut tracker, 0)).unwrap();
        assert!(!sink.wants_tick(at(29_999)));
        assert!(sink.wants_tick(at(30_000)));
        sink.tick(at(30_000), &table_at(&mut tracker, 30_000))
            .unwrap();
        // Unchanged: not written again.
        sink.tick(at(60_000), &table_at(&mut tracker, 60_000))
            .unwrap();
        leak(&mut tracker, 2, 41001, 61_000);
        sink.tick(at(90_000), &table_at(&mut tracker, 90_000))
            .unwrap();
        drop(sink);
        let text = String::from_utf8(out).unwrap();
        let told: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("== at "))
            .collect();
        assert_eq!(told.len(), 2, "{text}");
        assert!(
            text.contains("pid 4242 (leaky-client): 1 CLOSE_WAIT")
                && text.contains("pid 4242 (leaky-client): 2 CLOSE_WAIT"),
            "{text}"
        );
    }

    #[test]
    fn json_output() {
        let mut out = Vec::new();
        scenario(&mut JsonSink::new(&mut out, clock(), true));
        let text = String::from_utf8(out).unwrap();
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(value["type"].is_string(), "{line}");
        }
        insta::assert_snapshot!(text);
    }

    /// The lines of `output`'s JSON records, by type.
    fn types(output: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(output)
            .lines()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                value["type"].as_str().unwrap().to_string()
            })
            .collect()
    }

    #[test]
    fn transition_lines_give_way_when_the_reader_is_behind_and_nothing_else_does() {
        /// A destination the test reads after the queue is gone.
        #[derive(Clone, Default)]
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl io::Write for Shared {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut all = Vec::new();
        scenario(&mut JsonSink::new(&mut all, clock(), true));
        let all = types(&all);
        let transitions = all.iter().filter(|t| *t == "transition").count();

        // No room at all: the reader is behind from the start.
        let out = Shared::default();
        let queue = queue::OutputQueue::with_limits(out.clone(), 0, queue::MOST).unwrap();
        let room = queue.room();
        let mut sink = JsonSink::new(queue, clock(), true).with_room(room.clone());
        scenario(&mut sink);
        drop(sink);
        let kept = types(&out.0.lock().unwrap());
        assert!(transitions > 0);
        assert_eq!(room.lines_dropped(), transitions as u64);
        let others: Vec<&String> = all.iter().filter(|t| *t != "transition").collect();
        assert_eq!(kept.iter().collect::<Vec<_>>(), others);
        assert!(kept.contains(&"stuck".to_string()));
        assert_eq!(kept.last().map(String::as_str), Some("summary"));
        let written = out.0.lock().unwrap().clone();
        let summary: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&written).lines().last().unwrap())
                .unwrap();
        assert_eq!(summary["transition_lines_dropped"], transitions);
    }
}
