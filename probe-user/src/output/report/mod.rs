//! `--report FILE.html`: an incident report written when probe stops, for the owner of the
//! service: the processes, the time window, a timeline of open connections per state, the stuck
//! connections by remote endpoint with their lifecycles, and the diagnosis with its fix.

mod chart;
mod html;
mod timeline;

use std::{
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
    time::SystemTime,
};

use super::Sink;
use crate::{
    clock::WallClock,
    track::{StateChange, StuckAlert, Summary, Timestamp},
};

/// Collects the timeline while probe runs and writes the page at the end.
pub struct Report {
    path: PathBuf,
    /// Opened at start, so a path that cannot be written is an error before tracing starts.
    file: Option<File>,
    targets: String,
    clock: WallClock,
    started: SystemTime,
    timeline: timeline::Timeline,
    transitions: u64,
}

impl Report {
    /// Creates (or truncates) the report file now; the page is written by [`Sink::summary`].
    pub fn create(path: &Path, targets: String, clock: WallClock) -> anyhow::Result<Report> {
        use anyhow::Context;
        let file = File::create(path)
            .with_context(|| format!("cannot create the report file {}", path.display()))?;
        Ok(Report {
            path: path.to_path_buf(),
            file: Some(file),
            targets,
            clock,
            started: SystemTime::now(),
            timeline: timeline::Timeline::default(),
            transitions: 0,
        })
    }
}

impl Sink for Report {
    fn transition(&mut self, _change: &StateChange) -> io::Result<()> {
        self.transitions += 1;
        Ok(())
    }

    fn stuck(&mut self, _alert: &StuckAlert) -> io::Result<()> {
        Ok(())
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        let Some(mut file) = self.file.take() else {
            return Ok(());
        };
        let ended = SystemTime::now();
        // The last sample is the final table, so the chart ends where the tables do.
        self.timeline
            .record(crate::clock::monotonic_now(), summary.counts());
        let page = html::render(&html::Facts {
            targets: &self.targets,
            started: self.started,
            ended,
            timeline: &self.timeline,
            table: summary,
            transitions: self.transitions,
            clock: self.clock,
        });
        file.write_all(page.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot write the report {}: {error}", self.path.display()),
                )
            })?;
        eprintln!("probe: report written to {}", self.path.display());
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn wants_ticks(&self) -> bool {
        true
    }

    fn tick(&mut self, now: Timestamp, table: &Summary) -> io::Result<()> {
        self.timeline.record(now, table.counts());
        Ok(())
    }
}
