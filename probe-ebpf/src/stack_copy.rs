//! The top of the user stack at a connect, copied for userspace to unwind (only in the object
//! built with stacks, and only by the BTF program, which can read the task's saved user
//! registers). A frame-pointer walk stops at the first function built without frame pointers:
//! every C and C++ binary a distribution ships, Rust's release builds, the C library itself.
//! Their unwind tables (`.eh_frame`) say how to find each caller from the registers and the
//! stack, which userspace reads from the files (as `perf --call-graph dwarf` does).
//!
//! A stack is copied once per process and frame-pointer stack id: the same code path connecting
//! again costs one array lookup, and a churn of one path costs no copies after the first. The
//! stacks copied are remembered in a direct-mapped table (an array slot per hash of the key, see
//! [`copied_slot`]) rather than an LRU hash map: no lock and no eviction to run, and a collision
//! only costs a second copy.

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::generated::bpf_probe_read_user,
    macros::map,
    maps::{Array, RingBuf},
};
use probe_common::{COPIED_SLOTS, Counter, NO_STACK, STACK_COPY_BYTES, StackCopy, copied_slot};

use crate::{arch::UserRegs, count};

/// Stack copies for userspace (each is [`STACK_COPY_BYTES`] and a header).
#[map]
static STACK_COPIES: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// The stacks copied already: at [`copied_slot`] of a (process, stack id), that pair.
#[map]
static COPIED_STACKS: Array<u64> = Array::with_max_entries(COPIED_SLOTS, 0);

/// Copies the registers (read by `regs` only when needed) and the top of the user stack of
/// process `tgid`'s connect whose frame-pointer walk is `stack`, unless this process's stack
/// of that id was copied already.
pub fn copy_stack(tgid: u32, stack: i32, regs: impl FnOnce() -> Option<UserRegs>) {
    if stack == NO_STACK {
        return;
    }
    let (slot, key) = copied_slot(tgid, stack);
    let Some(copied) = COPIED_STACKS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: a u64 slot of a live array map; a race with another CPU at worst copies twice.
    if unsafe { *copied } == key {
        return;
    }
    let Some(regs) = regs().filter(|regs| regs.sp != 0) else {
        return;
    };
    let Some(mut entry) = STACK_COPIES.reserve::<StackCopy>(0) else {
        count(Counter::StackMissing);
        return;
    };
    let copy = entry.as_mut_ptr();
    // SAFETY: `copy` points at the reserved record, which this program owns until it submits
    // or discards it; every field is written before submit, `bytes` up to `len` (userspace reads
    // no further).
    let len = unsafe {
        (*copy).tgid = tgid;
        (*copy).stack_id = stack;
        (*copy).ip = regs.ip;
        (*copy).sp = regs.sp;
        (*copy).bp = regs.bp;
        (*copy).lr = regs.lr;
        (*copy)._pad = 0;
        let len = read_stack(&mut (*copy).bytes, regs.sp);
        (*copy).len = len;
        len
    };
    if len == 0 {
        entry.discard(u64::from(BPF_RB_NO_WAKEUP));
        count(Counter::StackMissing);
        return;
    }
    // No wakeup: userspace polls for copies (and drains them before it looks one up), and a
    // wakeup is an interrupt, which cost ~20 µs per copy on this machine's virtual CPUs.
    entry.submit(u64::from(BPF_RB_NO_WAKEUP));
    // SAFETY: as above.
    unsafe { *copied = key };
}

/// Copies the user stack from `sp` into `into`: all of it where the stack goes on that far,
/// else up to one page past the stack pointer's page, else to the end of that page (the
/// stack's top may lie closer than [`STACK_COPY_BYTES`]). How many bytes were copied; 0 for
/// none.
fn read_stack(into: &mut [u8; STACK_COPY_BYTES], sp: u64) -> u32 {
    const PAGE: u64 = 4096;
    let to_page_end = PAGE - (sp & (PAGE - 1));
    for len in [STACK_COPY_BYTES as u64, to_page_end + PAGE, to_page_end] {
        // The verifier needs the size bounded by the buffer, which each candidate is.
        let len = len.min(STACK_COPY_BYTES as u64) as u32;
        // SAFETY: `into` has room for `len` bytes; the helper reads the current process's
        // memory and fails cleanly (copying nothing usable) where any of it is unmapped.
        let read = unsafe { bpf_probe_read_user(into.as_mut_ptr().cast(), len, sp as *const _) };
        if read == 0 {
            return len;
        }
    }
    0
}
