//! Loading, configuring and attaching the kernel program, and the maps userspace talks to.

mod batch;
mod error;
mod hooks;
pub mod kernel_btf;
mod keys;
mod open_files;
pub mod privilege;
pub mod tracefs;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, MapType, PerCpuArray, RingBuf, StackTraceMap},
    programs::{BtfTracePoint, ProgramError, TracePoint},
};
use aya_log::EbpfLogger;
use probe_common::{
    CallerWords, CgroupLevels, Counter, ForkLayout, InUse, ListenerKey, PythonLayout, PythonStack,
    SetStateLayout, SockLayout, SocketTuple, TcpState, names,
};

pub use error::LoadError;
use error::{BTF_HINT, chain, map_error, refused};
pub use open_files::OpenFilesRun;

use crate::track::{Endpoints, ExistingSocket, Losses};

/// The kernel object, built by `cargo xtask build` and embedded by `build.rs` (empty when the
/// CLI was built without it, e.g. by a plain `cargo build`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe.bpf.o"));
/// The same program built without stack capture: it has no stack map at all.
static OBJECT_NO_STACKS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-no-stacks.bpf.o"));

/// Whether this binary carries its kernel program.
pub fn has_kernel_object() -> bool {
    !OBJECT.is_empty() && !OBJECT_NO_STACKS.is_empty()
}

/// The kernel wakes the reader once this fraction of the ring buffer is waiting.
const WAKEUP_FRACTION: u32 = 8;

/// Which program follows `sock:inet_sock_set_state`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Attach {
    /// The BTF tracepoint where the kernel publishes its BTF, the classic one elsewhere.
    #[default]
    Auto,
    /// The BTF tracepoint (`tp_btf`): no trace record is filled, and the socket's fields are read
    /// only for transitions of traced processes. Needs the kernel's BTF.
    Btf,
    /// The classic tracepoint: reads the record the kernel fills for every transition, at the
    /// offsets of the tracefs `format` file.
    Tracepoint,
}

/// Where the program that follows the transitions reads the socket's fields.
#[derive(Clone, Copy, Debug)]
enum SetStateSource {
    Btf(SockLayout),
    Record(SetStateLayout),
}

impl SetStateSource {
    /// The source `attach` asks for (for `Auto`, the BTF one when the kernel has BTF and its
    /// socket layout is one the program can read, the record otherwise).
    fn choose(attach: Attach) -> Result<SetStateSource, LoadError> {
        let btf = match attach {
            Attach::Auto if kernel_btf::available() => match kernel_btf::sock_layout() {
                Ok(layout) => Some(layout),
                Err(error) => {
                    log::debug!("{error}; the classic tracepoint program follows the transitions");
                    None
                }
            },
            Attach::Btf => Some(kernel_btf::sock_layout()?),
            Attach::Auto | Attach::Tracepoint => None,
        };
        if let Some(layout) = btf {
            log::debug!("struct sock layout from the kernel's BTF: {layout:?}");
            return Ok(SetStateSource::Btf(layout));
        }
        let layout =
            tracefs::Format::read(&tracefs::root()?, tracefs::SET_STATE)?.set_state_layout()?;
        log::debug!("sock:inet_sock_set_state layout from tracefs: {layout:?}");
        Ok(SetStateSource::Record(layout))
    }
}

/// Sizes and switches for the kernel side.
#[derive(Clone, Debug)]
pub struct TracerConfig {
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// Sockets the kernel can attribute at once.
    pub max_sockets: u32,
    /// Processes that can be traced at once.
    pub max_targets: u32,
    /// Let the kernel program log its own diagnostics (debug level).
    pub kernel_logs: bool,
    /// Make the children of traced processes targets, in the kernel, as they fork.
    pub follow_forks: bool,
    /// Make processes that exec under this name (NUL padded) targets.
    pub comm_filter: Option<[u8; 16]>,
    /// Capture the user stacks of connects.
    pub stacks: bool,
    /// Hook language runtimes to name the code that asked for a connection (with stacks).
    pub runtime_hooks: bool,
    /// Which program follows the transitions.
    pub attach: Attach,
    /// Attribute every process's sockets (host-wide mode).
    pub trace_all: bool,
    /// Attribute the sockets of processes in these cgroups or below them: (cgroup id, depth).
    pub cgroups: Vec<(u64, u32)>,
}

/// Counts of what the kernel program could not do since it was loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Events dropped because the ring buffer was full.
    pub ring_buf_full: u64,
    /// Sockets not attributed because the owner map was full.
    pub owner_map_full: u64,
    /// Listeners not attributed because the listener map was full.
    pub listener_map_full: u64,
    /// Fork and exec events dropped because their ring buffer was full.
    pub process_events_full: u64,
    /// Children not followed because the target map was full.
    pub target_map_full: u64,
    /// Stacks that could not be captured.
    pub stack_missing: u64,
    /// Transitions, forks and execs skipped because the program could not read them.
    pub read_failed: u64,
    /// Sockets found at attach that did not fit in the seed map (counted by userspace).
    pub seeds_refused: u64,
}

impl KernelCounters {
    /// What probe never saw or cannot follow, as every output reports it: events lost (ring
    /// buffers full, records unreadable) and sockets untracked (a map was full).
    pub fn losses(&self) -> Losses {
        Losses {
            lost_events: self.ring_buf_full + self.process_events_full + self.read_failed,
            untracked_sockets: self.owner_map_full + self.listener_map_full + self.seeds_refused,
        }
    }
}

/// The loaded and attached kernel program. Dropping it detaches the program and frees its maps.
pub struct Tracer {
    /// Owns the programs and their attachments.
    ebpf: Ebpf,
    /// The uprobes on runtimes (with stacks only).
    hooks: Option<hooks::RuntimeHooks>,
    /// The CPython processes whose frames the kernel program walks (with stacks, the BTF
    /// program).
    python_processes: Option<HashMap<MapData, u32, PythonLayout>>,
    /// Finds those processes' interpreters.
    pythons: crate::process::python::Finder,
    targets: HashMap<MapData, u32, u8>,
    owners: HashMap<MapData, u64, u32>,
    listeners: HashMap<MapData, ListenerKey, u32>,
    seeds: HashMap<MapData, SocketTuple, u32>,
    seed_cookies: HashMap<MapData, u64, u32>,
    /// The attached program reports socket cookies (the BTF one): seeds are keyed by cookie.
    cookies: bool,
    in_use: Array<MapData, u32>,
    counters: PerCpuArray<MapData, u64>,
    /// Kept open: programs loaded later (the runtime hooks) refer to it.
    _cgroups: HashMap<MapData, u64, u8>,
    /// The `task_file` iterator is loaded (host-wide and in cgroups, where the kernel has BTF).
    open_files: bool,
    /// Sockets found at attach that the seed map had no room for.
    seeds_refused: u64,
}

/// What [`Tracer::load`] hands over for reading: the event ring buffer and the kernel log.
pub struct Streams {
    pub events: RingBuf<MapData>,
    /// Forks and execs of the targets.
    pub process_events: RingBuf<MapData>,
    /// Must stay alive as long as the program runs: dropping it closes its map.
    pub logger: EbpfLogger<&'static dyn log::Log>,
    /// The captured user stacks, unless stacks are off.
    pub stacks: Option<StackTraceMap<MapData>>,
    /// The words at the user stack pointer of each stack's connect (the BTF program).
    pub stack_callers: Option<HashMap<MapData, u32, CallerWords>>,
    /// The user stacks copied at connect, for unwinding (the BTF program, with stacks).
    pub stack_copies: Option<RingBuf<MapData>>,
    /// The CPython frames found at connects (with stacks).
    pub python_stacks: Option<HashMap<MapData, u32, PythonStack>>,
}

/// Whether the kernel program reads CPython's frames here. It finds a thread's Python state by
/// its thread pointer, which is `pthread_self()` on x86-64; on arm64 `pthread_self()` lies a
/// C-library-specific distance below it, which probe does not know.
const PYTHON_FRAMES_READ: bool = cfg!(target_arch = "x86_64");

impl Tracer {
    /// Checks privileges, reads the tracepoint layout, loads the program and attaches it.
    pub fn load(config: TracerConfig) -> Result<(Tracer, Streams), LoadError> {
        if !has_kernel_object() {
            return Err(LoadError::NoKernelObject);
        }
        privilege::check()?;
        let source = SetStateSource::choose(config.attach)?;
        let follow_processes = config.follow_forks || config.comm_filter.is_some();
        let fork_layout = if follow_processes {
            tracefs::Format::read(&tracefs::root()?, tracefs::PROCESS_FORK)?.fork_layout()?
        } else {
            ForkLayout::default()
        };
        let (record_layout, sock_layout) = match source {
            SetStateSource::Btf(layout) => (SetStateLayout::default(), layout),
            SetStateSource::Record(layout) => (layout, SockLayout::default()),
        };
        // Where a thread's TLS is, to follow Go's goroutines: from the BTF, where there is one.
        let task_fsbase = match source {
            SetStateSource::Btf(_) if config.stacks => kernel_btf::task_fsbase()
                .map_err(|error| log::debug!("Go goroutines not followed: {error}"))
                .unwrap_or(0),
            _ => 0,
        };
        // Who holds which socket, for snapshots of most of the host: from the kernel's
        // `task_file` iterator, where there is BTF to load it with.
        let file_layout = match source {
            SetStateSource::Btf(_) if config.trace_all || !config.cgroups.is_empty() => {
                kernel_btf::file_layout()
                    .map_err(|error| log::debug!("open files read from /proc: {error}"))
                    .ok()
            }
            _ => None,
        };

        // aya-log's levels: 0 turns every kernel log statement off, 4 lets debug through.
        let log_level: u8 = if config.kernel_logs { 4 } else { 0 };
        let mut ebpf = EbpfLoader::new()
            .override_global(names::LAYOUT, &record_layout, true)
            .override_global(names::SOCK_LAYOUT, &sock_layout, true)
            // Only in the object built with stacks.
            .override_global(names::TASK_FSBASE, &task_fsbase, false)
            .override_global(aya_log::LEVEL, &log_level, false)
            .override_global(names::FORK_LAYOUT, &fork_layout, true)
            .override_global(names::FILE_LAYOUT, &file_layout.unwrap_or_default(), true)
            .override_global(
                names::WAKEUP_BYTES,
                &u64::from(config.ring_buffer_bytes / WAKEUP_FRACTION),
                true,
            )
            .override_global(names::FOLLOW_FORKS, &u8::from(config.follow_forks), true)
            .override_global(names::TRACE_ALL, &u8::from(config.trace_all), true)
            .override_global(names::CGROUP_LEVELS, &cgroup_levels(&config.cgroups)?, true)
            .map_max_entries(names::CGROUPS, config.cgroups.len().max(1) as u32)
            .override_global(
                names::COMM_FILTER,
                &config.comm_filter.unwrap_or([0; 16]),
                true,
            )
            // Seeds by cookie for the BTF program, by tuple for the classic one; the other map
            // is never used and takes no room.
            .map_max_entries(
                names::SEEDS,
                match source {
                    SetStateSource::Btf(_) => 1,
                    SetStateSource::Record(_) => config.max_sockets,
                },
            )
            .map_max_entries(
                names::SEED_COOKIES,
                match source {
                    SetStateSource::Btf(_) => config.max_sockets,
                    SetStateSource::Record(_) => 1,
                },
            )
            .map_max_entries(names::EVENTS, config.ring_buffer_bytes)
            .map_max_entries(names::OWNERS, config.max_sockets)
            .map_max_entries(names::LISTENERS, config.max_targets.max(64))
            .map_max_entries(names::TARGETS, config.max_targets)
            .load(if config.stacks {
                OBJECT
            } else {
                OBJECT_NO_STACKS
            })
            .map_err(load_error)?;
        let logger = EbpfLogger::init(&mut ebpf).map_err(|_| LoadError::Missing("AYA_LOGS"))?;

        match source {
            SetStateSource::Btf(_) => {
                attach_btf(&mut ebpf, names::BTF_PROGRAM, tracefs::SET_STATE)?
            }
            SetStateSource::Record(_) => attach(&mut ebpf, names::PROGRAM, tracefs::SET_STATE)?,
        }
        if follow_processes {
            attach(&mut ebpf, names::FORK_PROGRAM, tracefs::PROCESS_FORK)?;
            attach(&mut ebpf, names::EXEC_PROGRAM, tracefs::PROCESS_EXEC)?;
        }

        let events = take(&mut ebpf, names::EVENTS)?;
        let stacks = take_optional(&mut ebpf, names::STACKS)?;
        let stack_callers = take_optional(&mut ebpf, names::STACK_CALLERS)?;
        let stack_copies = take_optional(&mut ebpf, names::STACK_COPIES)?;
        let python_stacks = take_optional(&mut ebpf, names::PYTHON_STACKS)?;
        let python_processes = take_optional(&mut ebpf, names::PYTHON_PROCESSES)?;
        let process_events = take(&mut ebpf, names::PROCESS_EVENTS)?;
        let targets = take(&mut ebpf, names::TARGETS)?;
        let owners = take(&mut ebpf, names::OWNERS)?;
        let listeners = take(&mut ebpf, names::LISTENERS)?;
        let seeds = take(&mut ebpf, names::SEEDS)?;
        let seed_cookies = take(&mut ebpf, names::SEED_COOKIES)?;
        let in_use = take(&mut ebpf, names::IN_USE)?;
        let counters = take(&mut ebpf, names::COUNTERS)?;
        let open_files = file_layout.is_some()
            && open_files::load(&mut ebpf)
                .map_err(|error| {
                    log::debug!("open files read from /proc: {}", chain(&error));
                })
                .is_ok();
        let mut cgroups: HashMap<MapData, u64, u8> = take(&mut ebpf, names::CGROUPS)?;
        for &(id, _) in &config.cgroups {
            cgroups
                .insert(id, 1, 0)
                .map_err(|source| map_error(names::CGROUPS, source))?;
        }
        Ok((
            Tracer {
                ebpf,
                hooks: (config.stacks && config.runtime_hooks).then(hooks::RuntimeHooks::default),
                python_processes,
                pythons: Default::default(),
                targets,
                owners,
                listeners,
                seeds,
                seed_cookies,
                cookies: matches!(source, SetStateSource::Btf(_)),
                in_use,
                counters,
                _cgroups: cgroups,
                open_files,
                seeds_refused: 0,
            },
            Streams {
                events,
                process_events,
                logger,
                stacks,
                stack_callers,
                stack_copies,
                python_stacks,
            },
        ))
    }

    /// Hooks the runtimes in process `pid` (its executable, or `binary` for a command not
    /// exec'd yet) that connect on behalf of other code, so that their connections name the
    /// code that asked (with stacks only). Returns what could not be hooked, for the user.
    /// A CPython process's frames are walked by the kernel program from now on (with stacks).
    pub fn hook_runtimes(&mut self, pid: u32, binary: Option<&std::path::Path>) -> Vec<String> {
        self.follow_python(pid);
        match &mut self.hooks {
            Some(hooks) => hooks.hook(&mut self.ebpf, pid, binary),
            None => Vec::new(),
        }
    }

    /// Tells the kernel program where process `pid`'s CPython interpreter keeps its frames, if
    /// it runs one probe can read (3.8 to 3.13).
    fn follow_python(&mut self, pid: u32) {
        let Some(processes) = &mut self.python_processes else {
            return;
        };
        let Some(runtime) = self.pythons.find(pid) else {
            // A process that exec'd another program keeps no layout of its old interpreter.
            let _ = processes.remove(&pid);
            return;
        };
        log::debug!("pid {pid} runs CPython 3.{}", runtime.version.minor);
        if !PYTHON_FRAMES_READ {
            static TOLD: std::sync::Once = std::sync::Once::new();
            TOLD.call_once(|| {
                log::warn!(
                    "pid {pid} runs CPython 3.{}: on this architecture probe cannot read Python \
                     frames yet, so its connections are named by their native code",
                    runtime.version.minor
                );
            });
            return;
        }
        match processes.insert(pid, runtime.kernel_layout(), 0) {
            Ok(()) => {
                if let Err(error) = self.mark_in_use(InUse::Python) {
                    log::debug!("{}", chain(&error));
                }
            }
            Err(error) => log::debug!("cannot follow the Python frames of {pid}: {error}"),
        }
    }

    /// Forgets process `pid`'s CPython interpreter (the process is gone: its pid may come back
    /// as another program).
    pub fn forget_runtimes(&mut self, pid: u32) {
        if let Some(processes) = &mut self.python_processes {
            let _ = processes.remove(&pid);
        }
    }

    /// A run of the kernel's `task_file` iterator over every process's open files, to be read
    /// ([`OpenFilesRun::read`]); `None` where it is not loaded (tracing named processes, or a
    /// kernel without BTF) or could not be started: the snapshot reads `/proc` then.
    pub fn open_files(&mut self) -> Option<OpenFilesRun> {
        if !self.open_files {
            return None;
        }
        open_files::open(&mut self.ebpf)
            .map_err(|error| log::debug!("open files read from /proc: {}", chain(&error)))
            .ok()
    }

    /// Starts tracing process `pid` (all its threads); false when the target map is full.
    pub fn add_target(&mut self, pid: u32) -> Result<bool, LoadError> {
        full_is_refused(self.targets.insert(pid, 1, 0))
            .map_err(|source| map_error(names::TARGETS, source))
    }

    /// Stops attributing new sockets to process `pid` (it exited, or is a thread). The kernel
    /// or an earlier exit may have removed it already: that is no error.
    pub fn remove_target(&mut self, pid: u32) -> Result<(), LoadError> {
        absent_is_gone(self.targets.remove(&pid))
            .map_err(|source| map_error(names::TARGETS, source))
    }

    /// Stops following the socket at kernel address `socket` (probe let it go).
    pub fn forget_socket(&mut self, socket: u64) -> Result<(), LoadError> {
        absent_is_gone(self.owners.remove(&socket))
            .map_err(|source| map_error(names::OWNERS, source))
    }

    /// Stops waiting for the next transition of a socket seeded at attach (probe let it go).
    pub fn forget_seed(
        &mut self,
        cookie: Option<u64>,
        endpoints: &Endpoints,
    ) -> Result<(), LoadError> {
        match cookie.filter(|_| self.cookies) {
            Some(cookie) => absent_is_gone(self.seed_cookies.remove(&cookie))
                .map_err(|source| map_error(names::SEED_COOKIES, source)),
            None => absent_is_gone(self.seeds.remove(&keys::socket_tuple(endpoints)))
                .map_err(|source| map_error(names::SEEDS, source)),
        }
    }

    /// Hands the sockets found at attach to the kernel program, so that the next transition of
    /// each is attributed to its owner (and, for a listener, what it accepts). Those that do
    /// not fit (`--max-sockets`) are counted as untracked; how many is returned.
    pub fn seed<'s>(&mut self, sockets: &'s [ExistingSocket]) -> Result<u64, LoadError> {
        let (by_cookie, by_tuple): (Vec<&'s ExistingSocket>, Vec<&'s ExistingSocket>) = sockets
            .iter()
            .partition(|socket| self.cookies && socket.cookie != 0);
        let owners = |sockets: &[&ExistingSocket]| -> Vec<u32> {
            sockets.iter().map(|socket| socket.pid).collect()
        };
        let cookies: Vec<u64> = by_cookie.iter().map(|socket| socket.cookie).collect();
        let refused_cookies =
            batch::insert_all(&mut self.seed_cookies, &cookies, &owners(&by_cookie))
                .map_err(|source| map_error(names::SEED_COOKIES, source))?;
        let tuples: Vec<SocketTuple> = by_tuple
            .iter()
            .map(|socket| keys::socket_tuple(&socket.endpoints))
            .collect();
        let refused_tuples = batch::insert_all(&mut self.seeds, &tuples, &owners(&by_tuple))
            .map_err(|source| map_error(names::SEEDS, source))?;
        let refused = refused_cookies.len() + refused_tuples.len();
        if refused < sockets.len() {
            self.mark_in_use(InUse::Seeds)?;
        }
        // The refused indices come in ascending order.
        let seeded = |all: &[&'s ExistingSocket], refused: &[usize]| -> Vec<&'s ExistingSocket> {
            all.iter()
                .enumerate()
                .filter(|(index, _)| refused.binary_search(index).is_err())
                .map(|(_, socket)| *socket)
                .collect()
        };
        let listening: Vec<&ExistingSocket> = seeded(&by_cookie, &refused_cookies)
            .into_iter()
            .chain(seeded(&by_tuple, &refused_tuples))
            .filter(|socket| socket.state == TcpState::Listen)
            .collect();
        for socket in listening {
            let listening = full_is_refused(self.listeners.insert(
                keys::listener_key(&socket.endpoints),
                socket.pid,
                0,
            ))
            .map_err(|source| map_error(names::LISTENERS, source))?;
            if listening {
                self.mark_in_use(InUse::Listeners)?;
            }
        }
        self.seeds_refused += refused as u64;
        Ok(refused as u64)
    }

    /// Tells the kernel program to look `slot`'s map up from now on.
    fn mark_in_use(&mut self, slot: InUse) -> Result<(), LoadError> {
        self.in_use
            .set(slot as u32, 1, 0)
            .map_err(|source| map_error(names::IN_USE, source))
    }

    /// Reads the kernel's counters, summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters, LoadError> {
        let read = |counter: Counter| -> Result<u64, LoadError> {
            let per_cpu = self
                .counters
                .get(&(counter as u32), 0)
                .map_err(|source| map_error(names::COUNTERS, source))?;
            Ok(per_cpu.iter().sum())
        };
        Ok(KernelCounters {
            ring_buf_full: read(Counter::RingBufFull)?,
            owner_map_full: read(Counter::OwnerMapFull)?,
            listener_map_full: read(Counter::ListenerMapFull)?,
            process_events_full: read(Counter::ProcessEventsFull)?,
            target_map_full: read(Counter::TargetMapFull)?,
            stack_missing: read(Counter::StackMissing)?,
            read_failed: read(Counter::ReadFailed)?,
            seeds_refused: self.seeds_refused,
        })
    }
}

/// Loads program `name` and attaches it to `tracepoint`.
fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    tracepoint: tracefs::Tracepoint,
) -> Result<(), LoadError> {
    let program: &mut TracePoint = program(ebpf, name, "tracepoint")?;
    program.load().map_err(|error| refused(name, "", error))?;
    log_verified(name, program.info());
    program
        .attach(tracepoint.category, tracepoint.name)
        .map_err(|source| LoadError::Attach {
            program: name,
            tracepoint: format!("{}:{}", tracepoint.category, tracepoint.name),
            hint: "",
            source: Box::new(source),
        })?;
    Ok(())
}

/// Loads the BTF tracepoint program `name` for `tracepoint` and attaches it.
fn attach_btf(
    ebpf: &mut Ebpf,
    name: &'static str,
    tracepoint: tracefs::Tracepoint,
) -> Result<(), LoadError> {
    let btf = aya::Btf::from_sys_fs().map_err(LoadError::KernelBtf)?;
    let program: &mut BtfTracePoint = program(ebpf, name, "BTF tracepoint")?;
    program
        .load(tracepoint.name, &btf)
        .map_err(|error| refused(name, BTF_HINT, error))?;
    log_verified(name, program.info());
    program.attach().map_err(|source| LoadError::Attach {
        program: name,
        tracepoint: format!("the BTF tracepoint {}", tracepoint.name),
        hint: BTF_HINT,
        source: Box::new(source),
    })?;
    Ok(())
}

/// The distinct depths of `cgroups`, as the kernel program reads them.
fn cgroup_levels(cgroups: &[(u64, u32)]) -> Result<CgroupLevels, LoadError> {
    let mut levels = CgroupLevels::NONE;
    let mut used = 0;
    for &(_, level) in cgroups {
        if levels.levels[..used].contains(&level) {
            continue;
        }
        if used == CgroupLevels::MAX {
            return Err(LoadError::CgroupDepths);
        }
        levels.levels[used] = level;
        used += 1;
    }
    Ok(levels)
}

/// A delete of a key that is not there: someone removed it first, which is as good. (aya 0.14
/// reports it as the syscall's ENOENT, not as `KeyNotFound`.)
fn absent_is_gone(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(error))
            if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// An insert into a full hash map (E2BIG): not stored, which the caller counts. True when the
/// entry is in.
fn full_is_refused(result: Result<(), MapError>) -> Result<bool, MapError> {
    match result {
        Ok(()) => Ok(true),
        Err(MapError::SyscallError(error))
            if error.io_error.raw_os_error() == Some(libc::E2BIG) =>
        {
            Ok(false)
        }
        Err(other) => Err(other),
    }
}

/// Program `name` of the object, as the type `P` it must be.
fn program<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    expected: &'static str,
) -> Result<&'a mut P, LoadError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(LoadError::Missing(name))?
        .try_into()
        .map_err(|source| LoadError::ProgramType {
            program: name,
            expected,
            source: Box::new(source),
        })
}

fn log_verified(name: &str, info: Result<aya::programs::ProgramInfo, ProgramError>) {
    if let Ok(info) = info {
        log::debug!(
            "program {name}: {} instructions verified, {} bytes translated",
            info.verified_instruction_count().unwrap_or(0),
            info.size_translated().unwrap_or(0)
        );
    }
}

/// Why the object did not load: no ring buffer on this kernel says so, anything else keeps
/// aya's error.
fn load_error(error: aya::EbpfError) -> LoadError {
    match aya::sys::is_map_supported(MapType::RingBuf) {
        Ok(false) => LoadError::NoRingBuffer,
        _ => LoadError::Load(Box::new(error)),
    }
}

/// Map `name` of the object, as the typed map `T` it must be.
fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(LoadError::Missing(name))?;
    typed(name, map)
}

/// A map only one of the kernel objects has (the one built with stacks): `None` in the other.
fn take_optional<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<Option<T>, LoadError>
where
    T: TryFrom<Map, Error = MapError>,
{
    ebpf.take_map(name).map(|map| typed(name, map)).transpose()
}

fn typed<T>(name: &'static str, map: Map) -> Result<T, LoadError>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(map).map_err(|source| map_error(name, source))
}

#[cfg(test)]
mod tests {
    use aya::sys::SyscallError;

    use super::*;

    fn syscall(errno: i32) -> MapError {
        MapError::SyscallError(SyscallError {
            call: "bpf_map_update_elem",
            io_error: std::io::Error::from_raw_os_error(errno),
        })
    }

    /// The symbols of a kernel object: all of them, and its programs (the functions in a
    /// program's section, not in `.text`).
    fn symbols_of(object: &[u8]) -> (Vec<String>, Vec<String>) {
        use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
        let file = object::File::parse(object).expect("the embedded kernel object is ELF");
        let mut all = Vec::new();
        let mut programs = Vec::new();
        for symbol in file.symbols() {
            let Ok(name) = symbol.name() else { continue };
            all.push(name.to_string());
            let section = symbol
                .section_index()
                .and_then(|index| file.section_by_index(index).ok())
                .and_then(|section| section.name().ok().map(str::to_string));
            if symbol.kind() == SymbolKind::Text && section.is_some_and(|name| name != ".text") {
                programs.push(name.to_string());
            }
        }
        (all, programs)
    }

    #[test]
    fn the_loader_and_the_kernel_object_name_the_same_things() {
        if !has_kernel_object() {
            assert!(
                std::env::var_os("PROBE_REQUIRE_INTEGRATION").is_none(),
                "no kernel object is embedded: build through cargo xtask"
            );
            crate::say!("SKIPPED: no kernel object is embedded (cargo xtask test embeds it)");
            return;
        }
        let (with_stacks, _) = symbols_of(OBJECT);
        let missing: Vec<&&str> = names::ALL
            .iter()
            .filter(|name| !with_stacks.iter().any(|symbol| symbol == *name))
            .collect();
        assert!(
            missing.is_empty(),
            "named but not in the kernel object: {missing:?}"
        );
        for object in [OBJECT, OBJECT_NO_STACKS] {
            let (_, programs) = symbols_of(object);
            let unnamed: Vec<&String> = programs
                .iter()
                .filter(|program| !names::ALL.contains(&program.as_str()))
                .collect();
            assert!(
                unnamed.is_empty(),
                "programs the loader does not name: {unnamed:?}"
            );
        }
    }

    #[test]
    fn a_missing_key_is_gone_and_a_full_map_refuses_but_other_errors_stay_errors() {
        assert!(absent_is_gone(Err(syscall(libc::ENOENT))).is_ok());
        assert!(absent_is_gone(Err(MapError::KeyNotFound)).is_ok());
        assert!(absent_is_gone(Err(syscall(libc::EPERM))).is_err());
        assert_eq!(full_is_refused(Err(syscall(libc::E2BIG))).ok(), Some(false));
        assert_eq!(full_is_refused(Ok(())).ok(), Some(true));
        assert!(full_is_refused(Err(syscall(libc::ENOMEM))).is_err());
    }
}
