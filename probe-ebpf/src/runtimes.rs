//! Where runtimes connect on behalf of other code, the code that asked (only in the object
//! built with stacks). Uprobes on the runtimes' own functions note the requester's stack when
//! it asks, and which thread or goroutine then connects for it; at the connect (CLOSE ->
//! SYN_SENT, in the owner's context) the set_state program finds the request again:
//!
//! - Go's `net/http` dials on a goroutine of its own. `(*Transport).queueForDial(w)` runs on
//!   the requesting goroutine: its stack, by `w` (the `*wantConn`, its first argument under
//!   Go's register ABI, Go 1.17 and later). `(*Transport).dialConnFor(w)` runs on the dialing
//!   goroutine (`g`, in its register): `g -> w`. At the connect, the current goroutine is the
//!   word at `fs_base - 8` on x86-64, the saved X28 on arm64 (see [`crate::arch`]).
//! - node (libuv) connects on a later tick than the JavaScript call that asked. `uv_tcp_init`
//!   runs inside that call: its stack, by handle (its second argument). `uv_tcp_connect(req,
//!   handle)` then connects on the same thread: `thread -> handle`.
//!
//! Entries are taken out when used (goroutines and handles are reused); the maps are LRU, so
//! requests that never connect (a failed lookup, a cancelled request) age out.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel},
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};
use probe_common::{CallerWords, InUse, NO_STACK, ProcessPointer};

use crate::{
    arch::{UserRegs, c_second_argument, go_first_argument, go_goroutine},
    current_tgid, in_use, mark_in_use, traces_current, user_stack,
};

/// Requests a runtime has not connected for yet (or whose connect probe did not see), at most.
const PENDING: u32 = 8192;

/// Offset of `thread.fsbase` in `struct task_struct`, set by the loader from the kernel's BTF
/// on x86-64 (0: unknown, and Go goroutines are not followed there; always 0 on arm64, where
/// nothing reads the thread pointer).
#[unsafe(no_mangle)]
static TASK_FSBASE: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);

/// A Go `*wantConn` -> the stack of the goroutine that asked for it.
#[map]
static GO_WANTS: LruHashMap<ProcessPointer, i32> = LruHashMap::with_max_entries(PENDING, 0);

/// A goroutine (`g`) -> the `*wantConn` it is dialing.
#[map]
static GO_DIALS: LruHashMap<ProcessPointer, u64> = LruHashMap::with_max_entries(PENDING, 0);

/// A libuv TCP handle -> the stack that created it.
#[map]
static NODE_HANDLES: LruHashMap<ProcessPointer, i32> = LruHashMap::with_max_entries(PENDING, 0);

/// A thread -> the libuv TCP handle it is connecting.
#[map]
static NODE_CONNECTS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(PENDING, 0);

/// Stack id -> the words at the user stack pointer of its connect.
#[map]
static STACK_CALLERS: aya_ebpf::maps::HashMap<u32, CallerWords> =
    aya_ebpf::maps::HashMap::with_max_entries(16384, 0);

fn key(tgid: u32, pointer: u64) -> ProcessPointer {
    ProcessPointer {
        tgid,
        _pad: 0,
        pointer,
    }
}

/// The calling process and the user registers at the probed function's entry, when the
/// process is traced.
#[inline(always)]
fn traced_call(ctx: &ProbeContext) -> Option<(u32, &aya_ebpf::bindings::pt_regs)> {
    let tgid = current_tgid();
    if !traces_current(tgid) {
        return None;
    }
    // SAFETY: a uprobe's context is the user registers at the probe; the pointer is valid
    // for the program's run and only read.
    let regs = unsafe { ctx.regs.as_ref() }?;
    Some((tgid, regs))
}

#[uprobe]
pub fn go_queue_for_dial(ctx: ProbeContext) -> u32 {
    let Some((tgid, regs)) = traced_call(&ctx) else {
        return 0;
    };
    let stack = user_stack(&ctx);
    if stack != NO_STACK {
        let _ = GO_WANTS.insert(key(tgid, go_first_argument(regs)), stack, 0);
    }
    0
}

#[uprobe]
pub fn go_dial_conn_for(ctx: ProbeContext) -> u32 {
    let Some((tgid, regs)) = traced_call(&ctx) else {
        return 0;
    };
    mark_in_use(InUse::GoDials);
    let _ = GO_DIALS.insert(key(tgid, go_goroutine(regs)), go_first_argument(regs), 0);
    0
}

#[uprobe]
pub fn node_tcp_init(ctx: ProbeContext) -> u32 {
    let Some((tgid, regs)) = traced_call(&ctx) else {
        return 0;
    };
    let stack = user_stack(&ctx);
    if stack != NO_STACK {
        let _ = NODE_HANDLES.insert(key(tgid, c_second_argument(regs)), stack, 0);
    }
    0
}

#[uprobe]
pub fn node_tcp_connect(ctx: ProbeContext) -> u32 {
    let Some((_, regs)) = traced_call(&ctx) else {
        return 0;
    };
    mark_in_use(InUse::NodeConnects);
    let thread = bpf_get_current_pid_tgid() as u32;
    let _ = NODE_CONNECTS.insert(thread, c_second_argument(regs), 0);
    0
}

/// At a connect of process `tgid`, in its own context: the stack of the code that asked a
/// runtime for this connection, if a hook noted one; [`NO_STACK`] otherwise. `regs` reads the
/// user registers of the connect, when needed.
pub fn requested_stack(tgid: u32, regs: impl FnOnce() -> Option<UserRegs>) -> i32 {
    if in_use(InUse::NodeConnects) {
        let thread = bpf_get_current_pid_tgid() as u32;
        if let Some(handle) = NODE_CONNECTS.get_ptr(thread) {
            // SAFETY: a u64 copied out of a live map value at once.
            let handle = unsafe { *handle };
            let _ = NODE_CONNECTS.remove(thread);
            if let Some(stack) = take(&NODE_HANDLES, key(tgid, handle)) {
                return stack;
            }
        }
    }
    if in_use(InUse::GoDials)
        && let Some(g) = current_goroutine(regs)
        && let Some(want) = GO_DIALS.get_ptr(key(tgid, g))
    {
        // SAFETY: as above.
        let want = unsafe { *want };
        let _ = GO_DIALS.remove(key(tgid, g));
        if let Some(stack) = take(&GO_WANTS, key(tgid, want)) {
            return stack;
        }
    }
    NO_STACK
}

/// The stack id stored at `at`, taken out.
fn take(map: &LruHashMap<ProcessPointer, i32>, at: ProcessPointer) -> Option<i32> {
    let stack = map.get_ptr(at)?;
    // SAFETY: an i32 copied out of a live map value at once.
    let stack = unsafe { *stack };
    let _ = map.remove(at);
    Some(stack)
}

/// The current goroutine of a Go thread at a system call: on x86-64 the word at `fs_base - 8`
/// (Go's TLS slot for `g`), whatever the program can read of the registers.
#[cfg(bpf_target_arch = "x86_64")]
fn current_goroutine(_regs: impl FnOnce() -> Option<UserRegs>) -> Option<u64> {
    let fsbase = thread_pointer().filter(|&fsbase| fsbase >= 8)?;
    // SAFETY: bpf_probe_read_user copies from the current process's memory and fails cleanly.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user((fsbase - 8) as *const u64) }.ok()
}

/// The current goroutine of a Go thread at a system call: on arm64 Go keeps it in X28 (only
/// the BTF program can read the saved registers).
#[cfg(bpf_target_arch = "aarch64")]
fn current_goroutine(regs: impl FnOnce() -> Option<UserRegs>) -> Option<u64> {
    regs().map(|regs| regs.goroutine).filter(|&g| g != 0)
}

/// The current thread's thread pointer (`fs_base`: what `pthread_self()` returns, and where
/// Go keeps its TLS), if the loader found where the task keeps it.
pub fn thread_pointer() -> Option<u64> {
    let offset = TASK_FSBASE.load();
    if offset == 0 {
        return None;
    }
    // SAFETY: bpf_get_current_task has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: bpf_probe_read_kernel copies from kernel memory and fails cleanly; the offset
    // comes from the running kernel's BTF.
    unsafe { bpf_probe_read_kernel((task + u64::from(offset)) as *const u64) }.ok()
}

/// Notes where the caller of the connect's innermost function may be (the registers are read
/// by `regs` only when needed) for stack `stack`, once per stack: the words at the user stack
/// pointer on x86-64, where a call leaves its return address; the link register on arm64.
pub fn note_caller_words(stack: i32, regs: impl FnOnce() -> Option<UserRegs>) {
    if stack == NO_STACK {
        return;
    }
    let stack = stack as u32;
    if STACK_CALLERS.get_ptr(stack).is_some() {
        return;
    }
    let Some(regs) = regs().filter(|regs| regs.sp != 0) else {
        return;
    };
    if let Some(words) = caller_words(&regs) {
        let _ = STACK_CALLERS.insert(stack, words, u64::from(aya_ebpf::bindings::BPF_NOEXIST));
    }
}

#[cfg(bpf_target_arch = "x86_64")]
fn caller_words(regs: &UserRegs) -> Option<CallerWords> {
    // SAFETY: bpf_probe_read_user copies from the current process's memory and fails cleanly.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user(regs.sp as *const CallerWords) }.ok()
}

#[cfg(bpf_target_arch = "aarch64")]
fn caller_words(regs: &UserRegs) -> Option<CallerWords> {
    let mut words: CallerWords = [0; probe_common::CALLER_WORDS];
    words[0] = regs.lr;
    Some(words)
}
