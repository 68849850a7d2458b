//! `--report FILE.html`: an incident report written when probe stops, for the owner of the
//! service: the processes, the time window, a timeline of open connections per state, the stuck
//! connections by remote endpoint with their lifecycles, and the diagnosis with its fix.

mod chart;
mod file;
mod html;
mod timeline;

use std::{io, path::Path, time::SystemTime};

pub use file::{ReportFile, ReportFileError};

use super::Sink;
use crate::{
    clock::WallClock,
    track::{StateChange, StuckAlert, Summary, Timestamp},
};

/// Collects the timeline while probe runs and writes the page at the end.
pub struct Report {
    /// Opened at start, so a path that cannot be written is an error before tracing starts.
    file: Option<ReportFile>,
    /// Where it goes, as the note at the end says.
    shown_path: String,
    targets: String,
    clock: WallClock,
    started: SystemTime,
    timeline: timeline::Timeline,
    transitions: u64,
}

impl Report {
    /// Opens the report's destination now; the page is written by [`Sink::summary`].
    pub fn create(
        path: &Path,
        targets: String,
        clock: WallClock,
    ) -> Result<Report, ReportFileError> {
        Ok(Report {
            file: Some(ReportFile::create(path)?),
            shown_path: path.display().to_string(),
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
        let Some(file) = self.file.take() else {
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
        file.commit(page.as_bytes())
            .map_err(|error| io::Error::other(format!("{error}: {}", source_of(&error))))?;
        crate::say!("probe: report written to {}", self.shown_path);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn wants_tick(&self, _now: Timestamp) -> bool {
        true
    }

    fn tick(&mut self, now: Timestamp, table: &Summary) -> io::Result<()> {
        self.timeline.record(now, table.counts());
        Ok(())
    }
}

/// The cause of a report error, for the one line that reaches the user.
fn source_of(error: &ReportFileError) -> String {
    std::error::Error::source(error).map_or_else(String::new, ToString::to_string)
}
