//! Turning the kernel's stack ids into code paths, away from the event path: a worker thread
//! reads each new stack from the kernel's stack map (or unwinds the copy of the user stack the
//! kernel program made at its connect, for code without frame pointers) and symbolizes it in
//! the process it came from (blazesym for the files mapped, a stripped Go binary's own line
//! table, probe's own reader for JIT perf maps), classifying each frame as the program's, a
//! library's or the runtime's; the event loop only notes stacks and looks the results up when
//! an alert or the summary needs them.

mod caller;
mod copies;
mod memory;
mod perf_map;
mod program;
mod python;
mod unwind;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf, StackTraceMap};
use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Process, Source},
};
use probe_common::{CallerWords, PythonStack, is_interpreted_stack};

use crate::process::{
    go_line_table::{GoLineTable, GoLocation},
    python as cpython,
};
use crate::track::{
    CodePath, CodePathSource, Frame, StackRef,
    code_path::classify::{self, Module, Program},
};
use copies::StackCopies;
use memory::AddressSpace;
use perf_map::PerfMap;
use python::PythonProcess;

/// How often the worker looks for stack copies when it is asked nothing.
const COPY_POLL: Duration = Duration::from_millis(50);

type Resolved = Arc<Mutex<HashMap<StackRef, Option<Arc<CodePath>>>>>;

/// What a runtime needs to be started with for its program's frames to be named, by process:
/// the runtime (its executable's name), the hint, and whether any stack of the process (its
/// connects' or its requesters') named the program after all.
type Hints = Arc<Mutex<HashMap<u32, RuntimeHint>>>;

/// What to say of one process whose runtime may need flags for probe to name its code.
struct RuntimeHint {
    runtime: String,
    hint: &'static str,
    named: bool,
}

/// What the worker is asked.
enum Request {
    /// Symbolize this stack.
    Stack(StackRef),
    /// Name again the JIT frames that had no name, from perf maps written since (a JVM's
    /// `jcmd PID Compiler.perfmap`); answer when done.
    Refresh(mpsc::Sender<()>),
}

/// Code paths of the captured stacks, symbolized in the background.
pub struct CodePaths {
    requests: mpsc::Sender<Request>,
    resolved: Resolved,
    requested: HashSet<StackRef>,
    hints: Hints,
}

/// What is read once per process and burst: its address space, executable and perf map.
struct ProcessView {
    space: AddressSpace,
    program: Program,
    perf_map: PerfMap,
    /// A stripped Go executable's line table, and where the executable is loaded.
    go_lines: Option<(GoLineTable, u64)>,
}

impl ProcessView {
    fn read(pid: u32) -> ProcessView {
        let space = AddressSpace::read(pid);
        let program::Executable { program, go_lines } = program::executable(pid, &space);
        ProcessView {
            space,
            program,
            perf_map: PerfMap::read(pid),
            go_lines,
        }
    }

    /// The Go function at `address`, from the line table of a stripped Go executable.
    fn go_location(&self, address: u64) -> Option<GoLocation> {
        let (table, base) = self.go_lines.as_ref()?;
        table.locate(address.checked_sub(*base)?)
    }
}

/// The worker's state.
struct Worker {
    stacks: StackTraceMap<MapData>,
    /// The words at the user stack pointer of each stack's connect, where the kernel program
    /// saves them (the BTF program).
    callers: Option<BpfHashMap<MapData, u32, CallerWords>>,
    /// The user stacks the kernel program copied (the BTF program), unwound on arrival.
    copies: Option<StackCopies>,
    /// The CPython frames the kernel program found at connects (the BTF program).
    python_stacks: Option<BpfHashMap<MapData, u32, PythonStack>>,
    /// Finds the interpreters of the processes those come from.
    pythons: cpython::Finder,
    results: Resolved,
    hints: Hints,
    /// Stacks with JIT frames no perf map named yet, and their addresses.
    unnamed_jit: HashMap<StackRef, Vec<u64>>,
}

impl Worker {
    fn run(mut self, requests: mpsc::Receiver<Request>) {
        loop {
            // Copies are unwound as they come, while their process is there to be read: a
            // short-lived client (curl) is gone by the time its stack is asked for.
            let first = match &mut self.copies {
                Some(copies) => match requests.recv_timeout(COPY_POLL) {
                    Ok(first) => first,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        copies.drain();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                },
                // Without copies (the classic program), nothing to poll for.
                None => match requests.recv() {
                    Ok(first) => first,
                    Err(_) => return,
                },
            };
            // One symbolizer per burst of requests: its caches (the parsed debug info of the
            // traced binaries, often tens of MiB) go when the burst is done, rather than
            // staying for the rest of the run.
            let symbolizer = Symbolizer::new();
            let mut processes: HashMap<u32, ProcessView> = HashMap::new();
            let mut pythons: HashMap<u32, Option<PythonProcess>> = HashMap::new();
            let mut next = Some(first);
            while let Some(request) = next {
                match request {
                    Request::Stack(stack) if is_interpreted_stack(stack.id) => {
                        let python = pythons.entry(stack.pid).or_insert_with(|| {
                            self.pythons
                                .find(stack.pid)
                                .and_then(|runtime| PythonProcess::open(stack.pid, runtime))
                        });
                        let path = self
                            .python_stacks
                            .as_ref()
                            .and_then(|map| map.get(&stack.id, 0).ok())
                            .zip(python.as_mut())
                            .and_then(|(frames, python)| python.code_path(&frames));
                        let view = processes
                            .entry(stack.pid)
                            .or_insert_with(|| ProcessView::read(stack.pid));
                        self.record(view, stack, path);
                    }
                    Request::Stack(stack) => {
                        let view = processes
                            .entry(stack.pid)
                            .or_insert_with(|| ProcessView::read(stack.pid));
                        let addresses = self.addresses(stack, view);
                        self.resolve(&symbolizer, &mut processes, stack, addresses);
                    }
                    Request::Refresh(done) => {
                        let unnamed: Vec<(StackRef, Vec<u64>)> = self.unnamed_jit.drain().collect();
                        for (stack, addresses) in unnamed {
                            processes.remove(&stack.pid);
                            self.resolve(&symbolizer, &mut processes, stack, Some(addresses));
                        }
                        let _ = done.send(());
                    }
                }
                next = requests.try_recv().ok();
            }
            drop(symbolizer);
            // SAFETY: malloc_trim only hands free heap pages back to the system.
            unsafe { libc::malloc_trim(0) };
        }
    }

    /// The return addresses of `stack`, innermost first: the walk the kernel made, cut where
    /// it stops being code (what a walk through code built without frame pointers finds),
    /// with the caller it skipped put back; or, where the kernel program copied the stack, the
    /// unwind of the copy, when it reached the stack's root or goes further than the walk (a
    /// JVM's deep stack of frames with frame pointers may go on past the copy). Go keeps its
    /// walk: its frame pointers are always there, and its code has no unwind tables.
    fn addresses(&mut self, stack: StackRef, view: &ProcessView) -> Option<Vec<u64>> {
        let unwound = self.copies.as_mut().and_then(|copies| copies.take(stack));
        match unwound {
            Some(unwound) if !view.program.is_go => {
                // A walk is read (a map lookup, the process's memory) only when it may win.
                if unwound.complete {
                    return Some(unwound.frames);
                }
                match self.walked(stack, view) {
                    Some(walked) if walked.len() >= unwound.frames.len() => Some(walked),
                    _ => Some(unwound.frames),
                }
            }
            _ => self.walked(stack, view),
        }
    }

    /// The kernel's frame-pointer walk of `stack`, as [`Worker::addresses`] says.
    fn walked(&self, stack: StackRef, view: &ProcessView) -> Option<Vec<u64>> {
        let trace = self.stacks.get(&stack.id, 0).ok()?;
        let walked: Vec<u64> = trace.frames().iter().map(|frame| frame.ip).collect();
        let valid = walked
            .iter()
            .take_while(|&&address| view.space.is_code(address))
            .count()
            .max(1)
            .min(walked.len());
        let walked = &walked[..valid];
        let words = self
            .callers
            .as_ref()
            .and_then(|callers| callers.get(&stack.id, 0).ok());
        Some(match words {
            Some(words) => caller::with_skipped_caller(
                walked,
                &words,
                &view.space,
                &caller::code_before(stack.pid),
            ),
            None => walked.to_vec(),
        })
    }

    fn resolve(
        &mut self,
        symbolizer: &Symbolizer,
        processes: &mut HashMap<u32, ProcessView>,
        stack: StackRef,
        addresses: Option<Vec<u64>>,
    ) {
        let view = processes
            .entry(stack.pid)
            .or_insert_with(|| ProcessView::read(stack.pid));
        let path = addresses.and_then(|addresses| {
            let path = symbolize(symbolizer, view, stack.pid, &addresses)?;
            if path
                .frames
                .iter()
                .any(|f| f.function.is_empty() && view.space.module(f.address) == Module::Jit)
            {
                self.unnamed_jit.insert(stack, addresses);
            }
            Some(path)
        });
        self.record(view, stack, path);
    }

    /// Keeps `path` as `stack`'s, and notes whether it named the program of a runtime that
    /// may need flags for that (or was read from the interpreter itself, which needs none).
    fn record(&mut self, view: &ProcessView, stack: StackRef, path: Option<CodePath>) {
        if let (Some(path), Some(hint)) = (&path, classify::naming_hint(&view.program)) {
            let mut hints = self.hints.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = hints.entry(stack.pid).or_insert_with(|| RuntimeHint {
                runtime: Path::new(&view.program.path)
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                hint,
                named: false,
            });
            // The interpreter's own frames were read: no flag would name more.
            entry.named |= path.has_app_frames() || is_interpreted_stack(stack.id);
        }
        self.results
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(stack, path.map(Arc::new));
    }
}

impl CodePaths {
    /// Starts the symbolizing worker over the kernel's stack map (and the words it saved at
    /// each stack's stack pointer, where it does).
    pub fn start(
        stacks: StackTraceMap<MapData>,
        callers: Option<BpfHashMap<MapData, u32, CallerWords>>,
        copies: Option<RingBuf<MapData>>,
        python_stacks: Option<BpfHashMap<MapData, u32, PythonStack>>,
    ) -> Self {
        let (requests, pending) = mpsc::channel::<Request>();
        let resolved: Resolved = Arc::default();
        let hints: Hints = Arc::default();
        let worker = Worker {
            stacks,
            callers,
            copies: copies.map(StackCopies::new),
            python_stacks,
            pythons: cpython::Finder::default(),
            results: Arc::clone(&resolved),
            hints: Arc::clone(&hints),
            unnamed_jit: HashMap::new(),
        };
        thread::spawn(move || worker.run(pending));
        CodePaths {
            requests,
            resolved,
            requested: HashSet::new(),
            hints,
        }
    }

    /// For each process of a runtime none of whose stacks (connects' or requesters') named
    /// its program's functions, what to start it with so they are, once per process:
    /// `node (pid 42) ran code probe cannot name; to name it, start node with ...`. A process
    /// whose code was named, even once, gets no hint: it runs with what naming needs.
    pub fn naming_hints(&self) -> Vec<String> {
        let hints = self.hints.lock().unwrap_or_else(PoisonError::into_inner);
        let unnamed: BTreeMap<u32, &RuntimeHint> = hints
            .iter()
            .filter(|(_, hint)| !hint.named)
            .map(|(pid, hint)| (*pid, hint))
            .collect();
        unnamed
            .iter()
            .map(|(pid, RuntimeHint { runtime, hint, .. })| {
                format!("{runtime} (pid {pid}) ran code probe cannot name; to name it, {hint}")
            })
            .collect()
    }

    /// Asks for `stack` to be symbolized (once), while its process is there to be read.
    pub fn note(&mut self, stack: StackRef) {
        if self.requested.insert(stack) {
            // The worker only stops with this sender: sending cannot fail.
            let _ = self.requests.send(Request::Stack(stack));
        }
    }

    /// Waits, at most `timeout`, until every noted stack has been symbolized and JIT frames
    /// named from the perf maps written meanwhile.
    pub fn settle(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (done, finished) = mpsc::channel();
        let _ = self.requests.send(Request::Refresh(done));
        let _ = finished.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        while Instant::now() < deadline {
            let resolved = self
                .resolved
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len();
            if resolved >= self.requested.len() {
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

/// The frames of `addresses` in process `pid`: symbolized and classified.
fn symbolize(
    symbolizer: &Symbolizer,
    view: &ProcessView,
    pid: u32,
    addresses: &[u64],
) -> Option<CodePath> {
    // Perf maps are read here, not by blazesym (see `perf_map`).
    let source = Source::Process(Process {
        perf_map: false,
        ..Process::new(pid.into())
    });
    let symbols = symbolizer
        .symbolize(&source, Input::AbsAddr(addresses))
        .map_err(|error| log::debug!("cannot symbolize a stack of {pid}: {error}"))
        .ok()?;
    let frames = addresses
        .iter()
        .zip(symbols)
        .map(|(&address, symbol)| frame(view, address, symbol))
        .collect();
    Some(CodePath { frames })
}

fn frame(view: &ProcessView, address: u64, symbol: Symbolized<'_>) -> Frame {
    let module = view.space.module(address);
    match (module, symbol) {
        (_, Symbolized::Sym(sym)) => {
            let code = sym.code_info.as_deref();
            Frame {
                kind: classify::classify(&sym.name, module, &view.program),
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
        (Module::Jit, Symbolized::Unknown(_)) => match view.perf_map.name(address) {
            Some(raw) => {
                let (function, file, line) = perf_map::normalize(raw);
                Frame {
                    kind: classify::classify(raw, module, &view.program),
                    function,
                    file,
                    line,
                    address,
                }
            }
            None => unknown(address, module, &view.program),
        },
        (Module::Program, Symbolized::Unknown(_))
            if let Some(located) = view.go_location(address) =>
        {
            Frame {
                kind: classify::classify(&located.function, module, &view.program),
                function: located.function,
                file: located.file,
                line: located.line,
                address,
            }
        }
        (Module::Program | Module::File(_), Symbolized::Unknown(_)) if !view.program.is_go => {
            // A stripped binary (curl, wget, most of a distribution): no name, but where in
            // which file, which debug symbols installed later resolve; in the program's own
            // executable, the program's code.
            let label = view.space.file_offset(address).unwrap_or_default();
            Frame {
                kind: classify::classify(&label, module, &view.program),
                function: label,
                file: None,
                line: None,
                address,
            }
        }
        (_, Symbolized::Unknown(_)) => unknown(address, module, &view.program),
    }
}

fn unknown(address: u64, module: Module<'_>, program: &Program) -> Frame {
    Frame {
        function: String::new(),
        file: None,
        line: None,
        address,
        kind: classify::classify("", module, program),
    }
}
