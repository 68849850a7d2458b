//! `--live`: a full-screen view, like `top`, redrawn every second: per-state counts with
//! sparklines, the stuck connections by remote endpoint, the latest transitions. Keys sort,
//! filter and quit; the text summary is printed after quitting.

mod draw;
mod processes;
mod view;

use std::{
    io::{self, BufWriter, Stdout},
    thread,
};

use anyhow::Context;
use ratatui::{
    DefaultTerminal,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
};
use tokio::sync::mpsc;

use super::{Key, KeyOutcome, Sink, text::TextSink};
use crate::{
    clock::WallClock,
    track::{StateChange, StuckAlert, Summary, Timestamp},
};

/// The live view on the terminal.
pub struct LiveView {
    view: view::View,
    /// `None` once the terminal is given back.
    terminal: Option<DefaultTerminal>,
    clock: WallClock,
    /// Prints the summary once the view is gone.
    after: TextSink<BufWriter<Stdout>>,
}

impl LiveView {
    /// Takes over the terminal, and starts reading keys: they arrive on the returned channel,
    /// for the event loop to hand to [`Sink::key`].
    pub fn start(
        targets: String,
        clock: WallClock,
    ) -> anyhow::Result<(LiveView, mpsc::UnboundedReceiver<Key>)> {
        let terminal = ratatui::try_init().context("cannot set up the terminal for --live")?;
        let (keys, received) = mpsc::unbounded_channel();
        thread::Builder::new()
            .name("probe-keys".into())
            .spawn(move || read_keys(&keys))
            .context("cannot start reading keys")?;
        let live = LiveView {
            view: view::View::new(targets),
            terminal: Some(terminal),
            clock,
            after: TextSink::new(BufWriter::new(io::stdout()), clock, true, true),
        };
        Ok((live, received))
    }

    fn redraw(&mut self) -> io::Result<()> {
        if let Some(terminal) = &mut self.terminal {
            terminal.draw(|frame| draw::draw(frame, &self.view, self.clock))?;
        }
        Ok(())
    }

    /// Gives the terminal back as it was.
    fn leave(&mut self) {
        if self.terminal.take().is_some() {
            ratatui::restore();
        }
    }
}

impl Drop for LiveView {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Forwards key presses until probe stops listening.
fn read_keys(keys: &mpsc::UnboundedSender<Key>) {
    while let Ok(event) = event::read() {
        let key = match event {
            Event::Key(press) if press.kind == KeyEventKind::Press => match press.code {
                KeyCode::Char('c') if press.modifiers.contains(KeyModifiers::CONTROL) => {
                    Key::Interrupt
                }
                KeyCode::Char(c) => Key::Char(c),
                KeyCode::Esc => Key::Escape,
                _ => continue,
            },
            Event::Resize(..) => Key::Resize,
            _ => continue,
        };
        if keys.send(key).is_err() {
            return;
        }
    }
}

impl Sink for LiveView {
    fn transition(&mut self, change: &StateChange) -> io::Result<()> {
        self.view.transition(change);
        Ok(())
    }

    fn stuck(&mut self, _alert: &StuckAlert) -> io::Result<()> {
        // Shown at the next tick, in its group.
        Ok(())
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.leave();
        self.after.summary(summary)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn wants_tick(&self, _now: Timestamp) -> bool {
        true
    }

    fn tick(&mut self, now: Timestamp, table: &Summary) -> io::Result<()> {
        self.view.tick(now, table);
        self.redraw()
    }

    fn key(&mut self, key: Key) -> KeyOutcome {
        let outcome = self.view.key(key);
        if outcome == KeyOutcome::Redraw
            && let Err(error) = self.redraw()
        {
            log::debug!("cannot redraw the live view: {error}");
        }
        outcome
    }
}
