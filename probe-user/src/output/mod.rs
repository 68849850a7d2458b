//! Sinks: where the tracker's findings go. Each sink formats; none reaches back into the tracker.

pub mod format;
pub mod json;
pub mod text;

use std::io;

use crate::track::{StateChange, StuckAlert, Summary};

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
}
