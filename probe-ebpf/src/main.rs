//! probe's kernel side: `set_state` on `sock:inet_sock_set_state` (the transitions: a BTF
//! tracepoint program, and a classic one for kernels without BTF; the loader attaches one),
//! `process` on `sched:sched_process_fork` and `sched:sched_process_exec` (following children and
//! new processes of a name), and `open_files`, a `task_file` iterator (who holds which socket, for
//! the snapshots of host-wide and cgroup tracing).
//!
//! Many transitions run in softirq context, where the current task is whoever happened to be on the
//! CPU, so the current pid cannot say whose socket it is. Instead each socket is attributed once,
//! on a transition that only runs in its owner's own context, and remembered by socket address:
//!
//! - CLOSE -> SYN_SENT (connect), CLOSE -> LISTEN (listen), ESTABLISHED -> FIN_WAIT1 and
//!   CLOSE_WAIT -> LAST_ACK (close or shutdown): the current process is the owner;
//! - LISTEN -> SYN_RECV (the first transition of an accepted socket): the owner of the listener on
//!   that local address and port;
//! - any transition of a socket that existed before attach: the owner userspace seeded for its
//!   cookie (the BTF program asks the socket for it), or for its 4-tuple (the classic program,
//!   whose trace record has no cookie; userspace cannot see socket addresses).
//!
//! Every later transition of an attributed socket is sent to userspace, whatever runs the CPU.
//! Entries are removed at CLOSE, because the kernel reuses socket addresses.
#![no_std]
#![no_main]

mod arch;
mod open_files;
mod process;
#[cfg(feature = "stacks")]
mod python;
#[cfg(feature = "stacks")]
mod runtimes;
mod set_state;
#[cfg(feature = "stacks")]
mod stack_copy;

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_pid_tgid},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{TracePointContext, tracing::StackIdContext},
};
use probe_common::{
    CgroupLevels, Counter, ForkLayout, InUse, ListenerKey, SetStateLayout, SockLayout, SocketTuple,
};

/// Field offsets of the tracepoint record, set by the loader from the tracefs `format` file.
#[unsafe(no_mangle)]
static LAYOUT: Global<SetStateLayout> = Global::new(SetStateLayout {
    skaddr: 0,
    oldstate: 0,
    newstate: 0,
    sport: 0,
    dport: 0,
    family: 0,
    protocol: 0,
    saddr_v6: 0,
    daddr_v6: 0,
});

/// Socket field offsets for the BTF program, set by the loader from the kernel's BTF.
#[unsafe(no_mangle)]
static SOCK_LAYOUT: Global<SockLayout> = Global::new(SockLayout {
    protocol: 0,
    family: 0,
    dport: 0,
    daddr: 0,
    saddr_v6: 0,
    daddr_v6: 0,
    inet: 0,
    saddr: 0,
    sport: 0,
    ipv6: 0,
});

// Map sizes here are placeholders: the loader sets the real ones from the command line.

/// What a program copies at once: the start of a `sock:inet_sock_set_state` record, or the
/// start of a socket.
pub(crate) type CopyBytes = [u8; probe_common::COPY_BYTES as usize];

/// Where each CPU copies the data it reads fields from (too large for the BPF stack).
#[map]
static COPY: PerCpuArray<CopyBytes> = PerCpuArray::with_max_entries(1, 0);

/// Whether OWNERS, SEEDS and LISTENERS have ever held an entry ([`probe_common::InUse`] slots): until
/// they have, the program does not look them up.
#[map]
static IN_USE: Array<u32> = Array::with_max_entries(InUse::COUNT, 0);

/// True once the map of `slot` has had an entry.
#[inline(always)]
pub(crate) fn in_use(slot: InUse) -> bool {
    match IN_USE.get_ptr(slot as u32) {
        // SAFETY: a u32 slot of a live array map, read once.
        Some(flag) => unsafe { *flag != 0 },
        None => false,
    }
}

/// Notes that the map of `slot` has an entry now. Written only once: every CPU reads these
/// flags on every transition, and each write would take their cache line away from them all.
#[inline(always)]
pub(crate) fn mark_in_use(slot: InUse) {
    if let Some(flag) = IN_USE.get_ptr_mut(slot as u32) {
        // SAFETY: a u32 slot of a live array map; concurrent writers all write 1.
        unsafe {
            if *flag == 0 {
                *flag = 1;
            }
        }
    }
}

/// Transition events for userspace.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Traced processes (tgid -> unused).
#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(1, 0);

/// Socket address -> owner tgid, for sockets of traced processes only.
#[map]
static OWNERS: HashMap<u64, u32> = HashMap::with_max_entries(1, 0);

/// Listening endpoint -> owner tgid, for listeners of traced processes only.
#[map]
static LISTENERS: HashMap<ListenerKey, u32> = HashMap::with_max_entries(1, 0);

/// What could not be done (see [`Counter`]): nothing is lost silently.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Connection 4-tuple -> owner tgid, for sockets that existed before attach (seeded by userspace
/// for the classic program; moved to [`OWNERS`] at their first transition).
#[map]
static SEEDS: HashMap<SocketTuple, u32> = HashMap::with_max_entries(1, 0);

/// Socket cookie -> owner tgid, the same for the BTF program, which can ask a socket its cookie:
/// unlike a 4-tuple, it tells apart sockets of different network namespaces.
#[map]
static SEED_COOKIES: HashMap<u64, u32> = HashMap::with_max_entries(1, 0);

/// User stacks of connects, by id.
#[cfg(feature = "stacks")]
#[map]
static STACKS: aya_ebpf::maps::StackTrace = aya_ebpf::maps::StackTrace::with_max_entries(16384, 0);

/// The current process's user stack, by id in [`STACKS`]; [`probe_common::NO_STACK`] without one.
#[inline(always)]
pub(crate) fn user_stack<C: StackIdContext>(ctx: &C) -> i32 {
    #[cfg(feature = "stacks")]
    {
        use aya_ebpf::bindings::BPF_F_USER_STACK;
        match ctx.get_stackid(&STACKS, u64::from(BPF_F_USER_STACK)) {
            Ok(id) => id as i32,
            Err(_) => {
                count(Counter::StackMissing);
                probe_common::NO_STACK
            }
        }
    }
    #[cfg(not(feature = "stacks"))]
    {
        let _ = ctx;
        probe_common::NO_STACK
    }
}

/// Forks and execs that concern the targets.
#[map]
static PROCESS_EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Field offsets of `sched:sched_process_fork`, set by the loader.
#[unsafe(no_mangle)]
static FORK_LAYOUT: Global<ForkLayout> = Global::new(ForkLayout {
    parent_pid: 0,
    child_pid: 0,
});

/// Wake userspace once this many bytes of events wait in [`EVENTS`] (set by the loader).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new(0);

/// The [`EVENTS`] producer position at which each CPU may wake userspace again (see
/// [`probe_common::next_wakeup`]).
#[map]
static NEXT_WAKEUP: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// 1: children of traced processes become targets.
#[unsafe(no_mangle)]
static FOLLOW_FORKS: Global<u8> = Global::new(0);

/// A process name (NUL padded) whose execs become targets; all zero for none.
#[unsafe(no_mangle)]
static COMM_FILTER: Global<[u8; 16]> = Global::new([0; 16]);

/// 1: every process's sockets are attributed (host-wide mode).
#[unsafe(no_mangle)]
static TRACE_ALL: Global<u8> = Global::new(0);

/// The depths of the traced cgroups (see [`CgroupLevels`]).
#[unsafe(no_mangle)]
static CGROUP_LEVELS: Global<CgroupLevels> = Global::new(CgroupLevels::NONE);

/// Traced cgroup v2 ids (-> unused).
#[map]
static CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(1, 0);

/// Counts one thing the program could not do.
pub(crate) fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, and tracepoint programs do not nest on one CPU.
        unsafe { *slot += 1 };
    }
}

/// Counts a failed read of a program's own input: nothing is dropped without a trace.
#[inline(always)]
pub(crate) fn count_failure<E>(result: Result<(), E>) {
    if result.is_err() {
        count(Counter::ReadFailed);
    }
}

/// The process (thread group) the current task belongs to.
#[inline(always)]
pub(crate) fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// Whether process `tgid` is traced by pid (or fork, or name).
#[inline(always)]
pub(crate) fn is_target(tgid: u32) -> bool {
    TARGETS.get_ptr(tgid).is_some()
}

/// Whether the current task's sockets are traced: every process's in host-wide mode, those of
/// process `tgid` (the current one) if it is a target, or those of a task in a traced cgroup.
/// Only meaningful in the owner's own context: in softirq the current task is anyone's.
#[inline(always)]
pub(crate) fn traces_current(tgid: u32) -> bool {
    TRACE_ALL.load() != 0 || is_target(tgid) || in_traced_cgroup()
}

/// Whether the current task is in a traced cgroup or below one.
#[inline(always)]
fn in_traced_cgroup() -> bool {
    let levels = CGROUP_LEVELS.load().levels;
    for level in levels {
        if level == CgroupLevels::UNUSED {
            return false;
        }
        // SAFETY: the helper only reads the current task's cgroup; a level deeper than the
        // task's cgroup gives 0, which no cgroup has.
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if CGROUPS.get_ptr(ancestor).is_some() {
            return true;
        }
    }
    false
}

#[inline(always)]
pub(crate) fn read<T>(ctx: &TracePointContext, offset: u32) -> Result<T, i64> {
    // SAFETY: the offset comes from the tracepoint's own format file, and bpf_probe_read_kernel
    // fails cleanly on anything out of bounds.
    unsafe { ctx.read_at::<T>(offset as usize) }.map_err(i64::from)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
