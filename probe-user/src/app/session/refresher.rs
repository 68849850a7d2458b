//! The refreshes' reading on a thread of its own: every process's fd table and the kernel's
//! socket table take from milliseconds to seconds to read (a million sockets: about five), and
//! while they are read the event loop keeps draining the ring buffer, which would otherwise
//! fill and lose events on a busy host. The loop asks for a reading ([`Refresher::request`]),
//! is woken when it is done ([`Refresher::done`]) and brings the tracker up to date with it
//! then; one reading is under way at a time.

use std::{sync::mpsc, thread};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::{
    bpf::OpenFilesRun,
    clock::monotonic_now,
    snapshot::{self, FdTables, Namespaces, Snapshot, SnapshotError, TimeWait},
    track::Timestamp,
};

/// What to read.
pub(super) struct Request {
    /// The processes whose fd tables are read.
    pub pids: Vec<u32>,
    /// Named processes: one whose fd table or namespace cannot be read fails the reading.
    pub strict: bool,
    /// Every process's open files at once, from the kernel (host-wide and in cgroups); the
    /// fd tables come from `/proc` without it.
    pub open_files: Option<OpenFilesRun>,
    /// The TIME_WAIT sockets read (for the port forecast).
    pub time_wait: TimeWait,
}

/// A reading, done.
pub(super) struct Reading {
    pub snapshot: Result<Snapshot, SnapshotError>,
    /// When the reading began: what changed since may be missing from it.
    pub started: Timestamp,
}

/// The reading thread, and the reading under way, if any.
pub(super) struct Refresher {
    requests: mpsc::Sender<Request>,
    readings: UnboundedReceiver<Reading>,
    under_way: bool,
}

impl Refresher {
    /// Starts the reading thread, which keeps `namespaces` (the traced processes' network
    /// namespaces, open) and notes the new ones it meets. The thread ends with the refresher.
    pub fn start(namespaces: Namespaces) -> std::io::Result<Refresher> {
        let (requests, incoming) = mpsc::channel();
        let (done, readings) = unbounded_channel();
        thread::Builder::new()
            .name("probe-refresh".into())
            .spawn(move || read_on_request(namespaces, &incoming, &done))?;
        Ok(Refresher {
            requests,
            readings,
            under_way: false,
        })
    }

    /// Whether a reading is under way.
    pub fn under_way(&self) -> bool {
        self.under_way
    }

    /// Starts a reading; at most one is under way at a time (a request while one is, is
    /// ignored: its result comes soon enough).
    pub fn request(&mut self, request: Request) {
        if self.under_way {
            return;
        }
        // The thread only ends when the refresher is dropped: the send cannot fail before.
        self.under_way = self.requests.send(request).is_ok();
    }

    /// The reading under way, once done (`None`: the thread is gone, having panicked); never,
    /// when none is under way.
    pub async fn done(&mut self) -> Option<Reading> {
        if !self.under_way {
            return std::future::pending().await;
        }
        let reading = self.readings.recv().await;
        self.under_way = false;
        reading
    }
}

/// The reading thread: one reading per request, until the refresher is dropped.
fn read_on_request(
    mut namespaces: Namespaces,
    requests: &mpsc::Receiver<Request>,
    done: &UnboundedSender<Reading>,
) {
    while let Ok(request) = requests.recv() {
        let started = monotonic_now();
        let mut open_files = request.open_files;
        let mut read_at_once = || open_files.take().and_then(OpenFilesRun::read);
        let fd_tables = if request.strict {
            FdTables::Proc
        } else {
            FdTables::AllAtOnce(&mut read_at_once)
        };
        let snapshot = snapshot::take(
            &request.pids,
            &mut namespaces,
            request.strict,
            fd_tables,
            &request.time_wait,
        );
        if done.send(Reading { snapshot, started }).is_err() {
            return;
        }
    }
}
