//! The ABI shared by probe's kernel program and its userspace CLI.
//!
//! Everything here is `#[repr(C)]` with explicit padding, so both sides agree on every byte and no
//! uninitialised padding ever crosses the ring buffer. The `user` feature adds the `aya::Pod` impls
//! the loader needs to read maps and set globals.
#![no_std]

/// `IPPROTO_TCP`: the only protocol probe traces.
pub const IPPROTO_TCP: u16 = 6;
/// `AF_INET`, as the tracepoint reports it.
pub const AF_INET: u16 = 2;
/// `AF_INET6`, as the tracepoint reports it.
pub const AF_INET6: u16 = 10;

/// `::ffff:a.b.c.d`: how the tracepoint (and so every map key and event) holds an IPv4 address.
/// The one definition of the mapping, for both sides.
#[inline(always)]
pub const fn v4_mapped([a, b, c, d]: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]
}

/// The IPv4 address inside `::ffff:a.b.c.d`, if `address` is IPv4-mapped.
pub const fn v4_unmapped(address: [u8; 16]) -> Option<[u8; 4]> {
    match address {
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d] => Some([a, b, c, d]),
        _ => None,
    }
}

/// Defines the names as constants, and [`names::ALL`] listing them.
macro_rules! names {
    ($($(#[$doc:meta])* $name:ident = $value:literal;)*) => {
        $($(#[$doc])* pub const $name: &str = $value;)*
        /// Every name above: a test checks that the kernel object defines each of them, and
        /// nothing these do not name.
        pub const ALL: &[&str] = &[$($name),*];
    };
}

/// Names of the kernel programs, maps and globals, as the loader asks for them (the kernel side
/// names them by its statics; a test of the loader checks that the two agree both ways).
pub mod names {
    names! {
        /// The classic tracepoint program on `sock:inet_sock_set_state` (reads the trace record).
        PROGRAM = "inet_sock_set_state";
        /// The BTF tracepoint program on the same tracepoint (reads the socket itself, no record).
        BTF_PROGRAM = "inet_sock_set_state_btf";
        /// The ring buffer of [`TransitionEvent`](crate::TransitionEvent)s.
        EVENTS = "EVENTS";
        /// Processes (tgids) being traced.
        TARGETS = "TARGETS";
        /// Socket address -> owner tgid, for sockets of traced processes.
        OWNERS = "OWNERS";
        /// Listening endpoint -> owner tgid, so accepted sockets inherit their listener's owner.
        LISTENERS = "LISTENERS";
        /// Per-CPU [`Counter`](crate::Counter)s.
        COUNTERS = "COUNTERS";
        /// [`SocketTuple`](crate::SocketTuple) -> owner tgid, for sockets that existed before attach
        /// (the classic tracepoint program, which knows no cookies).
        SEEDS = "SEEDS";
        /// Socket cookie -> owner tgid, for sockets that existed before attach (the BTF program).
        SEED_COOKIES = "SEED_COOKIES";
        /// Which of the optional lookup maps hold anything ([`InUse`](crate::InUse) slots), so the
        /// kernel program skips lookups in empty ones.
        IN_USE = "IN_USE";
        /// The ring buffer of [`ProcessEvent`](crate::ProcessEvent)s.
        PROCESS_EVENTS = "PROCESS_EVENTS";
        /// User stacks of connects (only in the object built with stacks).
        STACKS = "STACKS";
        /// Stack id -> [`CallerWords`](crate::CallerWords) read at the user stack pointer of its
        /// connect (the BTF program, with stacks).
        STACK_CALLERS = "STACK_CALLERS";
        /// The ring buffer of [`StackCopy`](crate::StackCopy)s: the user registers and the top of
        /// the user stack at a connect, for userspace to unwind code built without frame pointers
        /// (the BTF program, with stacks).
        STACK_COPIES = "STACK_COPIES";
        /// Global `u32`: the offset of `thread.fsbase` in `struct task_struct` (0: unknown), read by
        /// userspace from the kernel's BTF, for the program to find a Go thread's current goroutine.
        TASK_FSBASE = "TASK_FSBASE";
        /// [`ProcessPointer`](crate::ProcessPointer) (a Go `*wantConn`) -> id of the stack of the
        /// goroutine that asked `net/http` for a connection.
        GO_WANTS = "GO_WANTS";
        /// [`ProcessPointer`](crate::ProcessPointer) (a goroutine, `g`) -> the `*wantConn` it dials.
        GO_DIALS = "GO_DIALS";
        /// [`ProcessPointer`](crate::ProcessPointer) (a libuv `uv_tcp_t *`) -> id of the stack that
        /// created the handle (node's JavaScript call that asked for the connection).
        NODE_HANDLES = "NODE_HANDLES";
        /// Thread id -> the `uv_tcp_t *` it is connecting.
        NODE_CONNECTS = "NODE_CONNECTS";
        /// Uprobe on `net/http.(*Transport).queueForDial`: the requester's stack, by `*wantConn`.
        GO_QUEUE_FOR_DIAL = "go_queue_for_dial";
        /// Uprobe on `net/http.(*Transport).dialConnFor`: which goroutine dials which `*wantConn`.
        GO_DIAL_CONN_FOR = "go_dial_conn_for";
        /// Uprobe on libuv's `uv_tcp_init`: the stack that creates a TCP handle.
        NODE_TCP_INIT = "node_tcp_init";
        /// Uprobe on libuv's `uv_tcp_connect`: which thread connects which handle.
        NODE_TCP_CONNECT = "node_tcp_connect";
        /// Process (tgid) -> [`PythonLayout`](crate::PythonLayout): where its CPython interpreter
        /// keeps its threads and frames (set by userspace for each CPython process it meets).
        PYTHON_PROCESSES = "PYTHON_PROCESSES";
        /// Interpreted stack id -> [`PythonStack`](crate::PythonStack): the CPython frames of a
        /// connect (the BTF program, with stacks).
        PYTHON_STACKS = "PYTHON_STACKS";
        /// The [`SetStateLayout`](crate::SetStateLayout) global.
        LAYOUT = "LAYOUT";
        /// The [`SockLayout`](crate::SockLayout) global.
        SOCK_LAYOUT = "SOCK_LAYOUT";
        /// Global `u64`: wake userspace once this many bytes of events are waiting (it also reads the
        /// ring buffer on a short timer, so fewer never wait long).
        WAKEUP_BYTES = "WAKEUP_BYTES";
        /// The [`ForkLayout`](crate::ForkLayout) global.
        FORK_LAYOUT = "FORK_LAYOUT";
        /// Global `u8`: 1 to add the children of traced processes to the targets.
        FOLLOW_FORKS = "FOLLOW_FORKS";
        /// Global `[u8; 16]`: a process name whose new execs become targets (all zero: none).
        COMM_FILTER = "COMM_FILTER";
        /// Global `u8`: 1 to attribute the sockets of every process (host-wide mode).
        TRACE_ALL = "TRACE_ALL";
        /// cgroup v2 id -> unused: processes in these cgroups (or below) are traced.
        CGROUPS = "CGROUPS";
        /// The [`CgroupLevels`](crate::CgroupLevels) global.
        CGROUP_LEVELS = "CGROUP_LEVELS";
        /// The `task_file` iterator program: one [`OpenFile`](crate::OpenFile) per open file of
        /// every process, for userspace to find who holds each socket in one read.
        OPEN_FILES_PROGRAM = "open_files";
        /// The [`FileLayout`](crate::FileLayout) global.
        FILE_LAYOUT = "FILE_LAYOUT";
        /// The tracepoint program on `sched:sched_process_fork`.
        FORK_PROGRAM = "sched_process_fork";
        /// The tracepoint program on `sched:sched_process_exec`.
        EXEC_PROGRAM = "sched_process_exec";
    }
}

/// A TCP state, numbered as in the kernel's `include/net/tcp_states.h`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
}

impl TcpState {
    /// Every state, in kernel order.
    pub const ALL: [TcpState; 12] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    /// The state with the kernel's number `raw`, if there is one.
    // A match rather than an index into `ALL`: the kernel program must not contain a bounds
    // check, whose panic path the verifier refuses.
    pub const fn from_raw(raw: u8) -> Option<TcpState> {
        Some(match raw {
            1 => TcpState::Established,
            2 => TcpState::SynSent,
            3 => TcpState::SynRecv,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::TimeWait,
            7 => TcpState::Close,
            8 => TcpState::CloseWait,
            9 => TcpState::LastAck,
            10 => TcpState::Listen,
            11 => TcpState::Closing,
            12 => TcpState::NewSynRecv,
            _ => return None,
        })
    }

    /// The kernel's name without the `TCP_` prefix (`ESTABLISHED`, `CLOSE_WAIT`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
        }
    }
}

/// How the kernel program decided which process owns a socket.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribution {
    /// Already in the owner map from an earlier transition.
    Known = 0,
    /// A transition that only runs in the owner's own context (connect, listen, close, shutdown).
    ProcessContext = 1,
    /// An accepted socket, owned by the owner of its listener.
    Listener = 2,
    /// A socket that existed before attach, seeded by userspace by its cookie (the BTF program)
    /// or its 4-tuple (the classic program).
    Snapshot = 3,
}

impl Attribution {
    /// The attribution numbered `raw`, if there is one.
    pub const fn from_raw(raw: u8) -> Option<Attribution> {
        match raw {
            0 => Some(Attribution::Known),
            1 => Some(Attribution::ProcessContext),
            2 => Some(Attribution::Listener),
            3 => Some(Attribution::Snapshot),
            _ => None,
        }
    }
}

/// One TCP state transition of a traced process's socket, as the kernel sends it.
///
/// Addresses are always 16 bytes: IPv4 addresses arrive IPv4-mapped (`::ffff:a.b.c.d`), exactly as
/// the tracepoint's `saddr_v6`/`daddr_v6` fields hold them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransitionEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// The kernel socket address: an opaque id, reused after the socket reaches CLOSE.
    pub sock_id: u64,
    /// The socket's cookie: unique for the kernel's whole uptime, across network namespaces,
    /// and what sock_diag reports too (`idiag_cookie`). 0 from the classic tracepoint
    /// program, which has no socket to ask.
    pub cookie: u64,
    /// The owning process.
    pub owner_tgid: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    /// [`TcpState`] number before the transition.
    pub old_state: u8,
    /// [`TcpState`] number after the transition.
    pub new_state: u8,
    /// [`Attribution`] number.
    pub attribution: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 3],
    /// Id of the owner's user stack in the stack map, on connect (in the owner's own context);
    /// [`NO_STACK`] otherwise.
    pub stack_id: i32,
    /// On connect, where a runtime connects on behalf of other code (Go's HTTP transport on a
    /// goroutine of its own, node's event loop on a later tick): the id of the stack of the
    /// code that asked for the connection, captured when it asked; [`NO_STACK`] otherwise.
    pub requested_stack_id: i32,
    /// Local address.
    pub saddr: [u8; 16],
    /// Remote address.
    pub daddr: [u8; 16],
}

/// [`TransitionEvent::stack_id`] when no stack was captured.
pub const NO_STACK: i32 = -1;

/// Key of the listener map: a listening socket's local address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerKey {
    /// Local address, IPv4-mapped for IPv4; all zeros (or `::ffff:0.0.0.0`) for a wildcard bind.
    pub addr: [u8; 16],
    /// Local port, host byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub _pad: [u8; 6],
}

/// Key of the seed map: a connection's local and remote address and port, as the tracepoint shows
/// them (IPv4 addresses IPv4-mapped).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketTuple {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// Explicit padding, always zero.
    pub _pad: [u8; 4],
}

/// What happened to a process, for userspace to follow.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessEventKind {
    /// A traced process forked `pid` (a process or a thread), already added to the targets.
    Fork = 1,
    /// Process `pid` exec'd: a traced one (new name), or one matching the name filter (new target).
    Exec = 2,
}

impl ProcessEventKind {
    /// The kind numbered `raw`, if there is one.
    pub const fn from_raw(raw: u32) -> Option<ProcessEventKind> {
        match raw {
            1 => Some(ProcessEventKind::Fork),
            2 => Some(ProcessEventKind::Exec),
            _ => None,
        }
    }
}

/// A fork or exec that concerns the targets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessEvent {
    /// [`ProcessEventKind`] number.
    pub kind: u32,
    /// The new child (fork) or the process that exec'd.
    pub pid: u32,
    /// The forking process (tgid); for exec, the same as `pid`.
    pub parent: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
    /// The process name, NUL padded.
    pub comm: [u8; 16],
}

/// Offsets of the `sched:sched_process_fork` fields probe reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkLayout {
    pub parent_pid: u32,
    pub child_pid: u32,
}

/// When the kernel program wakes the ring buffer's reader: the producer position at which this
/// CPU wakes it next, if `waiting` bytes (at least `threshold`) should wake it now; `None` to
/// let it sleep. A wakeup is an interrupt on the producing CPU (irq_work), dearer than the event
/// it announces, so a CPU wakes the reader once per `threshold` bytes produced, not once per
/// event while the reader catches up. A wakeup not sent delays events, never loses them: the
/// reader also drains on a timer, and the ring holds several thresholds.
pub const fn next_wakeup(waiting: u64, produced: u64, threshold: u64, due_at: u64) -> Option<u64> {
    if waiting >= threshold && produced >= due_at {
        Some(produced.saturating_add(threshold))
    } else {
        None
    }
}

/// How many bytes the kernel programs copy at once into their per-CPU buffer.
pub const COPY_BYTES: u32 = 128;

/// How many bytes of a `sock:inet_sock_set_state` record the kernel program copies at once (every
/// field it reads must end within them; the loader checks).
pub const SET_STATE_RECORD_BYTES: u32 = COPY_BYTES;

/// Offsets of the `sock:inet_sock_set_state` fields in the tracepoint record, read by userspace
/// from the tracefs `format` file and handed to the kernel program as a global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetStateLayout {
    pub skaddr: u32,
    pub oldstate: u32,
    pub newstate: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub protocol: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
}

/// How many bytes from the start of a `struct sock` the BTF tracepoint program copies at once:
/// its `sock_common` fields (family, ports, addresses) must end within them (the loader checks).
pub const SOCK_COMMON_BYTES: u32 = COPY_BYTES;
/// How many bytes of `inet_sock` the program copies at once, from [`SockLayout::inet`]: the
/// local address and port.
pub const SOCK_INET_BYTES: u32 = 32;

/// Where the socket fields the BTF tracepoint program reads sit, read by userspace from the
/// kernel's BTF (`/sys/kernel/btf/vmlinux`). The program copies two spans of the socket, the
/// first [`SOCK_COMMON_BYTES`] and [`SOCK_INET_BYTES`] from `inet`, and takes from them what the
/// tracepoint's own record would hold: the same fields, the same v4-mapped addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockLayout {
    /// `sk_protocol` (u16), from the start of the socket (read on its own, and only when a
    /// socket is about to be attributed).
    pub protocol: u32,
    /// `__sk_common.skc_family` (u16), in the first span.
    pub family: u32,
    /// `__sk_common.skc_dport` (network order u16), in the first span.
    pub dport: u32,
    /// `__sk_common.skc_daddr` (IPv4), in the first span.
    pub daddr: u32,
    /// `__sk_common.skc_v6_rcv_saddr` (IPv6; meaningful only when `ipv6` is 1), in the first span.
    pub saddr_v6: u32,
    /// `__sk_common.skc_v6_daddr` (IPv6; meaningful only when `ipv6` is 1), in the first span.
    pub daddr_v6: u32,
    /// Where the second span starts, from the start of the socket (an `inet_sock`).
    pub inet: u32,
    /// `inet_sock.inet_saddr` (IPv4), in the second span.
    pub saddr: u32,
    /// `inet_sock.inet_sport` (network order u16), in the second span.
    pub sport: u32,
    /// 1 when the kernel has IPv6 sockets (`CONFIG_IPV6`), 0 when every address is IPv4.
    pub ipv6: u32,
}

/// Offsets of the kernel structure fields the `task_file` iterator program reads, from the
/// kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileLayout {
    /// `task_struct.tgid` (i32).
    pub task_tgid: u32,
    /// `file.f_inode` (pointer).
    pub file_inode: u32,
    /// `inode.i_ino` (u64).
    pub inode_number: u32,
}

/// One open file of a process, as the `task_file` iterator program writes it: the process's
/// open files, and for a socket its inode (the `N` of the descriptor's `socket:[N]` link).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFile {
    /// The process (thread group) that has the file open.
    pub tgid: u32,
    /// The descriptor.
    pub fd: u32,
    /// The socket's inode; 0 when the file is not a socket.
    pub socket_inode: u64,
}

/// The depths (below the root, which is 0) at which the traced cgroups sit: the kernel program
/// compares the current task's ancestor at each of these depths with the `CGROUPS` map, so a
/// process in a cgroup nested anywhere below a traced one is traced too.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLevels {
    /// The depths in use, then [`CgroupLevels::UNUSED`].
    pub levels: [u32; CgroupLevels::MAX],
}

impl CgroupLevels {
    /// How many distinct depths the program looks at.
    pub const MAX: usize = 4;
    /// A slot that holds no depth.
    pub const UNUSED: u32 = u32::MAX;
    /// No cgroup traced.
    pub const NONE: CgroupLevels = CgroupLevels {
        levels: [Self::UNUSED; Self::MAX],
    };
}

/// Slots of the `IN_USE` array: set (to 1) once the map they name has had an entry. Never
/// cleared: a flag that stays on costs a lookup, one cleared too early would lose a socket.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InUse {
    /// `SEEDS` or `SEED_COOKIES` (set by userspace when it seeds the sockets found at attach).
    Seeds = 0,
    /// `LISTENERS` (set by the kernel program on listen(), by userspace when it seeds listeners).
    Listeners = 1,
    /// `OWNERS` (set by the kernel program when it attributes its first socket).
    Owners = 2,
    /// `GO_DIALS` (set by the uprobe on `dialConnFor`).
    GoDials = 3,
    /// `NODE_CONNECTS` (set by the uprobe on `uv_tcp_connect`).
    NodeConnects = 4,
    /// `PYTHON_PROCESSES` (set by userspace when it meets a CPython process).
    Python = 5,
}

impl InUse {
    /// How many slots there are.
    pub const COUNT: u32 = 6;
}

/// A pointer in one process: the key of the runtime hooks' maps (pointers of different
/// processes can be equal).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProcessPointer {
    pub tgid: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
    pub pointer: u64,
}

/// How many words the BTF program reads at the user stack pointer of a connect.
pub const CALLER_WORDS: usize = 8;

/// The words at the user stack pointer when connect() entered the kernel: where the return
/// address into the caller of a C library wrapper that sets up no frame (glibc's `connect`)
/// is, which a frame-pointer walk skips.
pub type CallerWords = [u64; CALLER_WORDS];

/// How many bytes of user stack, from the stack pointer up, the BTF program copies at a connect:
/// perf's default for `--call-graph dwarf`, enough for the frames of a few dozen calls.
pub const STACK_COPY_BYTES: usize = 8192;

/// The user registers and the top of the user stack of a connect, copied by the kernel program
/// for userspace to unwind with the modules' unwind tables (`.eh_frame`): what a frame-pointer
/// walk cannot follow through code built without frame pointers.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackCopy {
    /// The process that connected.
    pub tgid: u32,
    /// The id of the frame-pointer walk of the same connect, in the stack map: what the event
    /// names, and how userspace finds this copy again.
    pub stack_id: i32,
    /// The user instruction pointer at the system call.
    pub ip: u64,
    /// The user stack pointer at the system call: the address of `bytes[0]`.
    pub sp: u64,
    /// The user frame pointer (RBP on x86-64, X29 on arm64) at the system call.
    pub bp: u64,
    /// The link register (X30) at the system call on arm64, the innermost return address; 0 on
    /// x86-64, where that address is on the stack.
    pub lr: u64,
    /// How many bytes of `bytes` were copied (the stack may end before
    /// [`STACK_COPY_BYTES`]).
    pub len: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
    /// The user stack from `sp` up.
    pub bytes: [u8; STACK_COPY_BYTES],
}

/// Where a CPython interpreter keeps the frames of its threads, for the kernel program to walk
/// them at a connect: the address of the main interpreter's pointer in `_PyRuntime`, and the
/// offsets of the fields on the way, which differ by version (userspace knows them for 3.8 to
/// 3.13). The thread is found by its `pthread_self()` (its thread pointer, `fs_base`), which
/// CPython keeps in each thread state as `thread_id`: while connect() runs the thread has let
/// go of the GIL, and the interpreter's "current thread" pointers are empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonLayout {
    /// The address of `_PyRuntime.interpreters.main` in the process.
    pub main_interpreter: u64,
    /// `PyInterpreterState`: the first thread state (`tstate_head`, `threads.head`).
    pub interpreter_threads: u32,
    /// `PyThreadState`: the next thread state.
    pub thread_next: u32,
    /// `PyThreadState`: `thread_id` (the thread's `pthread_self()`).
    pub thread_id: u32,
    /// `PyThreadState`: the current frame (`frame`, `current_frame`), or the `_PyCFrame`
    /// pointer (`cframe`, 3.11 and 3.12) that holds it at [`PythonLayout::cframe_frame`].
    pub thread_frame: u32,
    /// `_PyCFrame`: `current_frame` (3.11, 3.12); [`PythonLayout::NONE`] where the thread
    /// state holds the frame itself.
    pub cframe_frame: u32,
    /// The frame: the calling frame (`f_back`, `previous`).
    pub frame_previous: u32,
    /// The frame: its code object (`f_code`, `f_executable`).
    pub frame_code: u32,
    /// The frame: its instruction (`f_lasti`, an `int`, up to 3.10; `prev_instr`,
    /// `instr_ptr`, a pointer, from 3.11), read as 8 bytes and interpreted by userspace.
    pub frame_instruction: u32,
    /// The frame: the byte saying who owns it (3.11 and later); [`PythonLayout::NONE`] before.
    pub frame_owner: u32,
    /// The owner value of a frame that only marks a C call into the interpreter (3.12 and
    /// later: `FRAME_OWNED_BY_CSTACK`), skipped; [`PythonLayout::NO_OWNER`] where none is.
    pub cstack_owner: u32,
}

impl PythonLayout {
    /// An offset that does not apply to this version.
    pub const NONE: u32 = u32::MAX;
    /// No owner value marks frames to skip.
    pub const NO_OWNER: u32 = 0x100;
}

/// How many frames of a CPython stack the kernel program reads, innermost first (a power of
/// two: the program masks its index with it, which the verifier accepts without tracking it).
pub const PYTHON_FRAMES: usize = 64;

/// One CPython frame of a connect's stack: its code object, and where in it the frame is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonFrame {
    /// The address of the frame's code object (`PyCodeObject *`).
    pub code: u64,
    /// The frame's instruction field, as [`PythonLayout::frame_instruction`] says.
    pub instruction: u64,
}

/// The CPython frames of a connect, innermost first: the value of the `PYTHON_STACKS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PythonStack {
    /// A 64-bit hash of the frames (the id keeps 30 bits of it): a different stack that hashed
    /// to the same id is told apart by it.
    pub hash: u64,
    /// How many of `frames` are filled.
    pub len: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
    pub frames: [PythonFrame; PYTHON_FRAMES],
}

/// The bit that marks a stack id as an interpreted stack (a key of `PYTHON_STACKS`), not one
/// of the kernel's stack map (whose ids are below its size, far under this bit).
pub const INTERPRETED_STACK: u32 = 1 << 30;

/// The id of the interpreted stack whose frames hash to `hash`.
#[inline(always)]
pub const fn interpreted_stack_id(hash: u64) -> u32 {
    INTERPRETED_STACK | (hash as u32 & (INTERPRETED_STACK - 1))
}

/// Whether stack id `id` names an interpreted stack (see [`INTERPRETED_STACK`]).
#[inline(always)]
pub const fn is_interpreted_stack(id: u32) -> bool {
    id & INTERPRETED_STACK != 0 && id & (1 << 31) == 0
}

/// Slots of the table of stacks copied already (a power of two).
pub const COPIED_SLOTS: u32 = 16384;

/// Where the table of stacks copied already keeps process `tgid`'s stack `stack_id` (a
/// multiplicative hash of the two), and what the slot holds once it was copied (never 0:
/// the kernel program copies no stack of pid 0).
#[inline(always)]
pub const fn copied_slot(tgid: u32, stack_id: i32) -> (u32, u64) {
    let key = ((tgid as u64) << 32) | (stack_id as u32 as u64);
    let slot = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - COPIED_SLOTS.trailing_zeros());
    (slot as u32, key)
}

/// Indexes of the per-CPU counters of things the kernel program could not do.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Events dropped because the ring buffer was full.
    RingBufFull = 0,
    /// Sockets left untracked because the owner map was full.
    OwnerMapFull = 1,
    /// Listeners left untracked because the listener map was full.
    ListenerMapFull = 2,
    /// Fork or exec events dropped because their ring buffer was full.
    ProcessEventsFull = 3,
    /// Children not followed because the target map was full.
    TargetMapFull = 4,
    /// Stacks not captured (the stack map was full, or the stack could not be walked), or user
    /// stacks not copied (their ring buffer was full, or the stack could not be read).
    StackMissing = 5,
    /// Transitions, forks or execs skipped because a field could not be read (a layout the
    /// program does not understand, or memory it could not copy).
    ReadFailed = 6,
}

impl Counter {
    /// How many counters there are (the size of the counter array).
    pub const COUNT: u32 = 7;
}

#[cfg(feature = "user")]
mod pod {
    // Every type here is `#[repr(C)]`, made only of integers and byte arrays, with every padding
    // byte an explicit field, so any bit pattern is a valid value.
    // SAFETY: see above.
    unsafe impl aya::Pod for super::TransitionEvent {}

    // SAFETY: see above.
    unsafe impl aya::Pod for super::ListenerKey {}

    // SAFETY: see above.
    unsafe impl aya::Pod for super::StackCopy {}

    // SAFETY: see above.
    unsafe impl aya::Pod for super::PythonLayout {}

    // SAFETY: see above.
    unsafe impl aya::Pod for super::PythonStack {}

    // SAFETY: see above.
    unsafe impl aya::Pod for super::ProcessPointer {}

    // SAFETY: see above.
    unsafe impl aya::Pod for super::SocketTuple {}

    // SAFETY: see above.
    unsafe impl aya::Pod for super::SetStateLayout {}

    // SAFETY: see above.
    unsafe impl aya::Pod for super::SockLayout {}

    // SAFETY: see above.
    unsafe impl aya::Pod for super::ForkLayout {}

    // SAFETY: see above.
    unsafe impl aya::Pod for super::ProcessEvent {}

    // SAFETY: see above.
    unsafe impl aya::Pod for super::CgroupLevels {}

    // SAFETY: see above.
    unsafe impl aya::Pod for super::FileLayout {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn event_layout_is_stable() {
        assert_eq!(core::mem::size_of::<TransitionEvent>(), 80);
        assert_eq!(core::mem::offset_of!(TransitionEvent, stack_id), 40);
        assert_eq!(core::mem::offset_of!(TransitionEvent, saddr), 48);
        assert_eq!(core::mem::size_of::<ListenerKey>(), 24);
        assert_eq!(core::mem::size_of::<OpenFile>(), 16);
        assert_eq!(core::mem::size_of::<SocketTuple>(), 40);
        assert_eq!(core::mem::size_of::<ProcessEvent>(), 32);
        assert_eq!(core::mem::size_of::<StackCopy>(), 48 + STACK_COPY_BYTES);
    }

    #[test]
    fn copied_stacks_spread_over_their_slots() {
        let mut used = [false; COPIED_SLOTS as usize];
        for tgid in 1000..1064 {
            for stack in 0..64 {
                let (slot, key) = copied_slot(tgid, stack);
                assert!(slot < COPIED_SLOTS && key != 0);
                used[slot as usize] = true;
            }
        }
        // 4096 keys over 16384 slots: a good hash leaves few collisions (about 11% expected).
        let distinct = used.iter().filter(|&&u| u).count();
        assert!(distinct > 3500, "{distinct} slots for 4096 keys");
    }

    #[test]
    fn states_round_trip_through_their_numbers() {
        for state in TcpState::ALL {
            assert_eq!(TcpState::from_raw(state as u8), Some(state));
        }
        assert_eq!(TcpState::from_raw(0), None);
        assert_eq!(TcpState::from_raw(13), None);
        assert_eq!(TcpState::CloseWait.name(), "CLOSE_WAIT");
    }

    #[test]
    fn ipv4_addresses_map_and_unmap() {
        let mapped = v4_mapped([10, 1, 2, 3]);
        assert_eq!(mapped[10..], [0xff, 0xff, 10, 1, 2, 3]);
        assert_eq!(v4_unmapped(mapped), Some([10, 1, 2, 3]));
        assert_eq!(v4_unmapped([0; 16]), None);
    }

    #[test]
    fn the_reader_is_woken_once_per_threshold_of_events() {
        let threshold = 1000;
        // Below the threshold: no wakeup, whatever is due.
        assert_eq!(next_wakeup(999, 5_000, threshold, 0), None);
        // Crossing it: a wakeup, the next one a threshold of production later.
        assert_eq!(next_wakeup(1000, 5_000, threshold, 0), Some(6_000));
        // The reader still behind: the events meanwhile wake nobody...
        assert_eq!(next_wakeup(1_500, 5_500, threshold, 6_000), None);
        assert_eq!(next_wakeup(1_999, 5_999, threshold, 6_000), None);
        // ...until another threshold was produced while it stayed behind.
        assert_eq!(next_wakeup(2_000, 6_000, threshold, 6_000), Some(7_000));
        // Caught up since, then behind again later: the first event past the threshold wakes it.
        assert_eq!(next_wakeup(1_000, 90_000, threshold, 7_000), Some(91_000));
        // Positions near the end of u64 do not wrap to an early wakeup.
        assert_eq!(
            next_wakeup(1_000, u64::MAX - 1, threshold, 0),
            Some(u64::MAX)
        );
    }

    #[test]
    fn process_event_kinds_round_trip() {
        for kind in [ProcessEventKind::Fork, ProcessEventKind::Exec] {
            assert_eq!(ProcessEventKind::from_raw(kind as u32), Some(kind));
        }
        assert_eq!(ProcessEventKind::from_raw(0), None);
    }
}
