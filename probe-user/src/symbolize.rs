//! Turning the kernel's stack ids into code paths, away from the event path: a worker thread
//! reads each new stack from the kernel's stack map and symbolizes it in the process it came
//! from (blazesym); the event loop only notes stacks and looks the results up when an alert or
//! the summary needs them.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{MapData, StackTraceMap};
use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Process, Source},
};

use crate::track::{CodePath, CodePathSource, Frame, StackRef};

type Resolved = Arc<Mutex<HashMap<StackRef, Option<Arc<CodePath>>>>>;

/// Code paths of the captured stacks, symbolized in the background.
pub struct CodePaths {
    requests: mpsc::Sender<StackRef>,
    resolved: Resolved,
    requested: HashSet<StackRef>,
}

impl CodePaths {
    /// Starts the symbolizing worker over the kernel's stack map.
    pub fn start(stacks: StackTraceMap<MapData>) -> Self {
        let (requests, pending) = mpsc::channel::<StackRef>();
        let resolved: Resolved = Arc::default();
        let results = Arc::clone(&resolved);
        thread::spawn(move || {
            while let Ok(first) = pending.recv() {
                // One symbolizer per burst of new stacks: its caches (the parsed debug info of
                // the traced binaries, often tens of MiB) go when the burst is done, rather
                // than staying for the rest of the run.
                let symbolizer = Symbolizer::new();
                let mut next = Some(first);
                while let Some(stack) = next {
                    let path = resolve(&stacks, &symbolizer, stack).map(Arc::new);
                    results
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(stack, path);
                    next = pending.try_recv().ok();
                }
                drop(symbolizer);
                // SAFETY: malloc_trim only hands free heap pages back to the system.
                unsafe { libc::malloc_trim(0) };
            }
        });
        CodePaths {
            requests,
            resolved,
            requested: HashSet::new(),
        }
    }

    /// Asks for `stack` to be symbolized (once), while its process is there to be read.
    pub fn note(&mut self, stack: StackRef) {
        if self.requested.insert(stack) {
            // The worker only stops with this sender: sending cannot fail.
            let _ = self.requests.send(stack);
        }
    }

    /// Waits, at most `timeout`, until every noted stack has been symbolized.
    pub fn settle(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let done = self
                .resolved
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len();
            if done >= self.requested.len() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl CodePathSource for CodePaths {
    fn code_path(&self, stack: StackRef) -> Option<Arc<CodePath>> {
        self.resolved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&stack)
            .cloned()
            .flatten()
    }
}

fn resolve(
    stacks: &StackTraceMap<MapData>,
    symbolizer: &Symbolizer,
    stack: StackRef,
) -> Option<CodePath> {
    let trace = stacks.get(&stack.id, 0).ok()?;
    let addresses: Vec<u64> = trace.frames().iter().map(|frame| frame.ip).collect();
    let source = Source::Process(Process::new(stack.pid.into()));
    let symbols = symbolizer
        .symbolize(&source, Input::AbsAddr(&addresses))
        .map_err(|error| log::debug!("cannot symbolize a stack of {}: {error}", stack.pid))
        .ok()?;
    let frames = addresses
        .iter()
        .zip(symbols)
        .map(|(&address, symbol)| match symbol {
            Symbolized::Sym(sym) => {
                let code = sym.code_info.as_deref();
                Frame {
                    function: sym.name.into_owned(),
                    file: code.map(|code| {
                        Path::new(&code.file)
                            .file_name()
                            .unwrap_or(&code.file)
                            .to_string_lossy()
                            .into_owned()
                    }),
                    line: code.and_then(|code| code.line),
                    address,
                }
            }
            Symbolized::Unknown(_) => Frame {
                function: String::new(),
                file: None,
                line: None,
                address,
            },
        })
        .collect();
    Some(CodePath { frames })
}
