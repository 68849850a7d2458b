//! Loading, configuring and attaching the kernel program, and the maps userspace talks to.

pub mod privilege;
pub mod tracefs;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, TracePoint},
};
use aya_log::EbpfLogger;
use probe_common::{Counter, names};

/// The kernel object, built by `cargo xtask build` and embedded by `build.rs` (empty when the
/// CLI was built without it, e.g. by a plain `cargo build`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe.bpf.o"));

/// Whether this binary carries its kernel program.
pub fn has_kernel_object() -> bool {
    !OBJECT.is_empty()
}

/// Sizes and switches for the kernel side.
#[derive(Clone, Copy, Debug)]
pub struct TracerConfig {
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// Sockets the kernel can attribute at once.
    pub max_sockets: u32,
    /// Processes that can be traced at once.
    pub max_targets: u32,
    /// Let the kernel program log its own diagnostics (debug level).
    pub kernel_logs: bool,
}

/// Why the kernel side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this probe binary was built without its kernel program; build it with `cargo xtask build`"
    )]
    NoKernelObject,
    #[error(transparent)]
    Privileges(#[from] privilege::MissingPrivileges),
    #[error(transparent)]
    TraceFs(#[from] tracefs::TraceFsError),
    #[error(
        "the kernel refused probe's eBPF maps ({0}); probe needs Linux 5.8 or later (BPF ring \
         buffer) built with CONFIG_BPF_SYSCALL"
    )]
    Load(String),
    #[error(
        "the kernel refused probe's tracepoint program ({0}); run with -v to see the verifier log"
    )]
    Verify(String),
    #[error(
        "cannot attach to the sock:inet_sock_set_state tracepoint ({0}); the kernel needs \
         CONFIG_BPF_EVENTS"
    )]
    Attach(String),
    #[error(
        "the kernel object has no `{0}`: it does not match this probe binary; rebuild with `cargo xtask build`"
    )]
    Missing(&'static str),
    #[error("cannot use the kernel map `{name}`: {error}")]
    Map { name: &'static str, error: MapError },
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
}

/// The loaded and attached kernel program. Dropping it detaches the program and frees its maps.
pub struct Tracer {
    /// Owns the program and its attachment.
    _ebpf: Ebpf,
    targets: HashMap<MapData, u32, u8>,
    counters: PerCpuArray<MapData, u64>,
}

/// What [`Tracer::load`] hands over for reading: the event ring buffer and the kernel log.
pub struct Streams {
    pub events: RingBuf<MapData>,
    /// Must stay alive as long as the program runs: dropping it closes its map.
    pub logger: EbpfLogger<&'static dyn log::Log>,
}

impl Tracer {
    /// Checks privileges, reads the tracepoint layout, loads the program and attaches it.
    pub fn load(config: TracerConfig) -> Result<(Tracer, Streams), LoadError> {
        if !has_kernel_object() {
            return Err(LoadError::NoKernelObject);
        }
        privilege::check()?;
        let layout = tracefs::read_layout(&tracefs::root()?)?;
        log::debug!("sock:inet_sock_set_state layout from tracefs: {layout:?}");

        // aya-log's levels: 0 turns every kernel log statement off, 4 lets debug through.
        let log_level: u8 = if config.kernel_logs { 4 } else { 0 };
        let mut ebpf = EbpfLoader::new()
            .override_global(names::LAYOUT, &layout, true)
            .override_global(aya_log::LEVEL, &log_level, false)
            .map_max_entries(names::EVENTS, config.ring_buffer_bytes)
            .map_max_entries(names::OWNERS, config.max_sockets)
            .map_max_entries(names::LISTENERS, config.max_targets.max(64))
            .map_max_entries(names::TARGETS, config.max_targets)
            .load(OBJECT)
            .map_err(|error| LoadError::Load(error.to_string()))?;
        let logger = EbpfLogger::init(&mut ebpf).map_err(|_| LoadError::Missing("AYA_LOGS"))?;

        let program: &mut TracePoint = ebpf
            .program_mut(names::PROGRAM)
            .ok_or(LoadError::Missing(names::PROGRAM))?
            .try_into()
            .map_err(|error: ProgramError| LoadError::Verify(error.to_string()))?;
        program.load().map_err(|error| match error {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => {
                log::debug!("verifier log:\n{verifier_log}");
                LoadError::Verify(io_error.to_string())
            }
            other => LoadError::Verify(other.to_string()),
        })?;
        program
            .attach(tracefs::CATEGORY, tracefs::NAME)
            .map_err(|error| LoadError::Attach(error.to_string()))?;

        let events = RingBuf::try_from(take_map(&mut ebpf, names::EVENTS)?)
            .map_err(|source| map_error(names::EVENTS, source))?;
        let targets = HashMap::try_from(take_map(&mut ebpf, names::TARGETS)?)
            .map_err(|source| map_error(names::TARGETS, source))?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, names::COUNTERS)?)
            .map_err(|source| map_error(names::COUNTERS, source))?;
        Ok((
            Tracer {
                _ebpf: ebpf,
                targets,
                counters,
            },
            Streams { events, logger },
        ))
    }

    /// Starts tracing process `pid` (all its threads).
    pub fn add_target(&mut self, pid: u32) -> Result<(), LoadError> {
        self.targets
            .insert(pid, 1, 0)
            .map_err(|source| map_error(names::TARGETS, source))
    }

    /// Stops attributing new sockets to process `pid` (it exited).
    pub fn remove_target(&mut self, pid: u32) -> Result<(), LoadError> {
        match self.targets.remove(&pid) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(map_error(names::TARGETS, source)),
        }
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
        })
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, LoadError> {
    ebpf.take_map(name).ok_or(LoadError::Missing(name))
}

fn map_error(name: &'static str, error: MapError) -> LoadError {
    LoadError::Map { name, error }
}
