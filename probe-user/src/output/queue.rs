//! The line outputs' writes, handed to a thread of their own: a reader of standard output that
//! is slower than the events (a terminal, a script parsing every line) would otherwise hold up
//! the event loop in `write`, the kernel's ring buffer would fill, and the events lost would
//! leave the connection table wrong (connections never seen to close, alerts for them). Up to
//! [`ROOM`] bytes wait for the reader; beyond that, transition lines are not written (and
//! counted: [`Room::lines_dropped`]) while the table, the alerts and the summary stay whole.
//! Those are bounded too: past [`MOST`] bytes waiting, a flush waits for the reader (a reader
//! that stopped for good while a million idle connections came due would otherwise let the
//! queue grow without end).

use std::{
    io::{self, Write},
    mem,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

/// How many bytes may wait for the reader before transition lines are dropped: about 70,000
/// lines, a third of a second of the busiest churn measured. With 1 MiB (a few tens of
/// milliseconds), a reader that kept up but lost its CPU for a moment to the workload it
/// watched, on a saturated two-core machine, saw a fifth of the lines dropped.
pub const ROOM: usize = 16 << 20;

/// How many bytes may wait for the reader before a flush waits for it to take some.
pub const MOST: usize = 64 << 20;

/// A batch is handed over once it would grow past this, even before a flush: as large as a
/// pipe's buffer, and small enough (even doubled as a `Vec` grows) to stay under the
/// allocator's mmap threshold (256 KiB, pinned at start): batches come from the heap and go
/// back to it, instead of a fresh mapping per batch whose every page is faulted in and zeroed
/// (a tenth of probe's time at a busy churn, with batches of up to 2 MiB).
const CHUNK: usize = 64 << 10;

/// What the loop and the writing thread share.
#[derive(Debug, Default)]
struct Shared {
    /// Bytes handed over and not yet written.
    queued: AtomicUsize,
    /// Transition lines not written for want of room.
    dropped: AtomicU64,
    /// The writing thread's failure (a closed pipe, say): every later write fails the same way.
    failed: Mutex<Option<io::ErrorKind>>,
    /// Whether `failed` is set: asked on every write, without taking the lock.
    has_failed: AtomicBool,
    /// Told each time the writing thread has written a batch or failed.
    written: Condvar,
}

impl Shared {
    /// Waits while more than `most` bytes wait for the reader, or until the writing thread
    /// fails; its failure, if any.
    fn wait_while_queued_over(&self, most: usize) -> io::Result<()> {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        while failed.is_none() && self.queued.load(Ordering::Relaxed) > most {
            // The timeout covers a batch written between the check and the wait.
            failed = self
                .written
                .wait_timeout(failed, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        match *failed {
            Some(kind) => Err(kind.into()),
            None => Ok(()),
        }
    }
}

/// Whether the reader keeps up: asked before a transition line is written.
#[derive(Clone, Debug)]
pub struct Room {
    shared: Arc<Shared>,
    limit: usize,
}

impl Room {
    /// True when a transition line may be written now; false (and the line counted as
    /// dropped) while [`ROOM`] bytes already wait for the reader.
    pub fn admits_line(&self) -> bool {
        if self.shared.queued.load(Ordering::Relaxed) < self.limit {
            return true;
        }
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Transition lines not written so far.
    pub fn lines_dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every byte handed over is written, and says whether it was: the last
    /// word's error (`/dev/full`, a closed stdout) would otherwise be found only by a thread
    /// nobody asks. A queue whose writing thread has ended takes nothing more.
    pub fn wait_until_written(&self) -> io::Result<()> {
        self.shared.wait_while_queued_over(0)
    }
}

/// Whether a line sink writes a line per transition: when asked to, and while its reader
/// keeps up (when it has a [`Room`] to ask).
#[derive(Clone, Debug)]
pub struct TransitionLines {
    shown: bool,
    room: Option<Room>,
}

impl TransitionLines {
    /// A line per transition when `shown`, whatever the reader.
    pub fn shown(shown: bool) -> TransitionLines {
        TransitionLines { shown, room: None }
    }

    /// Dropping them (counted by `room`) while `room` says the reader is behind.
    pub fn with_room(self, room: Room) -> TransitionLines {
        TransitionLines {
            room: Some(room),
            ..self
        }
    }

    /// Whether they are shown at all (the text header, say).
    pub fn are_shown(&self) -> bool {
        self.shown
    }

    /// Whether this transition's line is written (a line that finds no room is counted).
    pub fn admit(&self) -> bool {
        self.shown && self.room.as_ref().is_none_or(Room::admits_line)
    }

    /// The lines dropped for want of room, when there were any.
    pub fn dropped(&self) -> Option<u64> {
        self.room
            .as_ref()
            .map(Room::lines_dropped)
            .filter(|&dropped| dropped > 0)
    }
}

/// A writer whose bytes are gathered until [`Write::flush`] and then written by a thread of
/// its own to `W`; dropping it waits until everything handed over is written.
pub struct OutputQueue<W: Write + Send + 'static> {
    batch: Vec<u8>,
    chunks: Option<mpsc::Sender<Vec<u8>>>,
    shared: Arc<Shared>,
    limit: usize,
    most: usize,
    writer: Option<JoinHandle<W>>,
}

impl<W: Write + Send + 'static> OutputQueue<W> {
    /// Starts the thread that writes to `out`, with [`ROOM`] bytes of room for transition
    /// lines and flushes waiting past [`MOST`].
    pub fn start(out: W) -> io::Result<OutputQueue<W>> {
        OutputQueue::with_limits(out, ROOM, MOST)
    }

    /// The same, with `limit` bytes of room, flushes waiting past `most`.
    pub fn with_limits(mut out: W, limit: usize, most: usize) -> io::Result<OutputQueue<W>> {
        let (chunks, incoming) = mpsc::channel::<Vec<u8>>();
        let shared = Arc::new(Shared::default());
        let writing = Arc::clone(&shared);
        let writer = thread::Builder::new()
            .name("probe-output".into())
            .spawn(move || {
                for chunk in incoming {
                    let written = out.write_all(&chunk).and_then(|()| out.flush());
                    if let Err(error) = &written {
                        *writing.failed.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(error.kind());
                        writing.has_failed.store(true, Ordering::Release);
                    }
                    writing.queued.fetch_sub(chunk.len(), Ordering::Relaxed);
                    writing.written.notify_all();
                    if written.is_err() {
                        break;
                    }
                }
                out
            })?;
        Ok(OutputQueue {
            batch: Vec::new(),
            chunks: Some(chunks),
            shared,
            limit,
            most,
            writer: Some(writer),
        })
    }

    /// The room left for transition lines, for the sinks to ask.
    pub fn room(&self) -> Room {
        Room {
            shared: Arc::clone(&self.shared),
            limit: self.limit,
        }
    }

    /// The writing thread's failure, if any.
    fn failure(&self) -> io::Result<()> {
        if !self.shared.has_failed.load(Ordering::Acquire) {
            return Ok(());
        }
        match *self.shared.failed.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(kind) => Err(kind.into()),
            None => Ok(()),
        }
    }

    /// Waits while more than `most` bytes wait for the reader (or until the writing thread
    /// fails).
    fn wait_for_the_reader(&self) -> io::Result<()> {
        self.shared.wait_while_queued_over(self.most)
    }

    /// Waits until everything handed over is written; the destination, back.
    pub fn finish(mut self) -> io::Result<W> {
        self.flush()?;
        self.close()
            .ok_or_else(|| io::Error::other("the output thread panicked"))
    }

    fn close(&mut self) -> Option<W> {
        drop(self.chunks.take());
        self.writer.take()?.join().ok()
    }
}

impl<W: Write + Send + 'static> Write for OutputQueue<W> {
    /// Gathers `bytes`, handing over what was gathered first when they would take the batch
    /// past [`CHUNK`].
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.failure()?;
        if !self.batch.is_empty() && self.batch.len() + bytes.len() > CHUNK {
            self.flush()?;
        }
        self.batch.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    /// Hands what was written since the last flush to the writing thread; waits only while
    /// more than the most allowed waits for the reader.
    fn flush(&mut self) -> io::Result<()> {
        self.failure()?;
        if self.batch.is_empty() {
            return Ok(());
        }
        // The next batch has room for a whole chunk, so it never grows by doubling; what
        // waits takes only the memory it is counted for (a shrink is done in place).
        let mut chunk = mem::replace(&mut self.batch, Vec::with_capacity(CHUNK));
        chunk.shrink_to_fit();
        self.shared.queued.fetch_add(chunk.len(), Ordering::Relaxed);
        let sent = self.chunks.as_ref().map(|chunks| chunks.send(chunk));
        match sent {
            Some(Ok(())) => self.wait_for_the_reader(),
            // The thread has ended: it failed, and says how.
            _ => self.failure().and(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }
}

impl<W: Write + Send + 'static> Drop for OutputQueue<W> {
    fn drop(&mut self) {
        let _ = self.flush();
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

    /// A reader that takes a write only when the test lets it.
    struct Gated {
        gate: Receiver<()>,
        written: Vec<u8>,
    }

    impl Write for Gated {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.gate.recv().map_err(|_| io::ErrorKind::BrokenPipe)?;
            self.written.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn gated(limit: usize, most: usize) -> (OutputQueue<Gated>, SyncSender<()>) {
        let (open, gate) = sync_channel(0);
        let queue = OutputQueue::with_limits(
            Gated {
                gate,
                written: Vec::new(),
            },
            limit,
            most,
        )
        .unwrap();
        (queue, open)
    }

    #[test]
    fn a_slow_reader_does_not_hold_up_the_writer_and_loses_only_what_found_no_room() {
        let (mut queue, open) = gated(10, 1 << 20);
        let room = queue.room();
        let mut kept = Vec::new();
        for n in 0..5 {
            let line = format!("line {n}\n");
            if room.admits_line() {
                queue.write_all(line.as_bytes()).unwrap();
                kept.extend_from_slice(line.as_bytes());
            }
            // Never waits, though the reader has taken nothing yet.
            queue.flush().unwrap();
        }
        // The first two lines (14 bytes) filled the room; the other three were dropped.
        assert_eq!(room.lines_dropped(), 3);
        assert_eq!(kept, b"line 0\nline 1\n");
        // The summary is written whatever the room.
        queue.write_all(b"summary\n").unwrap();
        kept.extend_from_slice(b"summary\n");
        let reader = thread::spawn(move || while open.send(()).is_ok() {});
        let out = queue.finish().unwrap();
        assert_eq!(out.written, kept, "in order, nothing lost that was written");
        drop(out);
        reader.join().unwrap();
    }

    #[test]
    fn past_the_most_a_flush_waits_for_the_reader() {
        use std::sync::atomic::AtomicBool;
        let (mut queue, open) = gated(1 << 20, 10);
        queue.write_all(b"1234567\n").unwrap();
        // 8 bytes wait: within the most, no wait.
        queue.flush().unwrap();
        let reader_took_some = Arc::new(AtomicBool::new(false));
        let took = Arc::clone(&reader_took_some);
        let reader = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            took.store(true, Ordering::SeqCst);
            open.send(()).unwrap();
            open
        });
        queue.write_all(b"abcdefg\n").unwrap();
        // 16 bytes would wait: the flush returns once the reader has taken the first 8.
        queue.flush().unwrap();
        assert!(reader_took_some.load(Ordering::SeqCst));
        let open = reader.join().unwrap();
        let reader = thread::spawn(move || while open.send(()).is_ok() {});
        let out = queue.finish().unwrap();
        assert_eq!(out.written, b"1234567\nabcdefg\n");
        drop(out);
        reader.join().unwrap();
    }

    /// The last write's failure is found by whoever waits for it, even with nothing written
    /// after it (host-wide, the summary is all there is).
    #[test]
    fn waiting_until_written_says_whether_the_last_write_failed() {
        let mut full = OutputQueue::start(
            std::fs::File::options()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        )
        .unwrap();
        let room = full.room();
        full.write_all(b"== summary ==\n").unwrap();
        full.flush().unwrap();
        let failed = room.wait_until_written().unwrap_err();
        assert_eq!(failed.kind(), io::ErrorKind::StorageFull);

        let mut fine = OutputQueue::start(Vec::new()).unwrap();
        let room = fine.room();
        fine.write_all(b"== summary ==\n").unwrap();
        fine.flush().unwrap();
        room.wait_until_written().unwrap();
        assert_eq!(fine.finish().unwrap(), b"== summary ==\n");
    }

    #[test]
    fn a_reader_that_goes_away_fails_the_next_writes_with_its_error() {
        let (mut queue, open) = gated(1 << 20, 1 << 20);
        drop(open);
        queue.write_all(b"line\n").unwrap();
        queue.flush().unwrap();
        // The thread meets the closed gate and ends; the writer learns of it soon after.
        let failed = (0..1000).find_map(|_| {
            thread::sleep(std::time::Duration::from_millis(1));
            queue.flush().err()
        });
        assert_eq!(
            failed.map(|error| error.kind()),
            Some(io::ErrorKind::BrokenPipe)
        );
        assert_eq!(
            queue.write_all(b"more\n").map_err(|e| e.kind()),
            Err(io::ErrorKind::BrokenPipe)
        );
    }

    /// A reader that tells the length of each write it takes.
    struct Lengths(mpsc::Sender<usize>);

    impl Write for Lengths {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let _ = self.0.send(bytes.len());
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_long_batch_goes_to_the_reader_in_chunks_before_its_flush() {
        let (told, lengths) = mpsc::channel();
        let mut queue = OutputQueue::start(Lengths(told)).unwrap();
        let line = [b'x'; 1000];
        for _ in 0..200 {
            queue.write_all(&line).unwrap();
        }
        // Not flushed yet, and already three chunks of whole lines have reached the reader.
        let early: Vec<usize> = (0..3)
            .map(|_| lengths.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(early, [CHUNK / 1000 * 1000; 3]);
        queue.finish().unwrap();
        let total = early.iter().sum::<usize>() + lengths.iter().sum::<usize>();
        assert_eq!(total, 200 * 1000);
    }
}
