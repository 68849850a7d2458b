//! CPython's own frames at a connect (only in the object built with stacks): the Python
//! functions that asked for the connection, from the interpreter as it runs, with no flags.
//! A native walk of a Python process shows only the interpreter's C functions.
//!
//! Userspace tells the program, per CPython process, where its interpreter keeps its thread
//! states and which offsets its version uses ([`PythonLayout`]). At the connect (in the
//! owner's context: the calling thread is inside the socket module's `connect`, so its
//! frames cannot change under the read), the program finds the thread's state by its thread
//! pointer, walks its frames outwards and records each frame's code object and instruction.
//! Userspace reads names, files and lines from the process's memory later, once per stack.
//! A stack is stored once, by a hash of its frames, in `PYTHON_STACKS`; the event carries its
//! id in place of the native stack's.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated},
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use probe_common::{
    Counter, InUse, PYTHON_FRAMES, PythonFrame, PythonLayout, PythonStack, interpreted_stack_id,
};

use crate::{count, in_use, runtimes::thread_pointer};

/// How many thread states of one interpreter the program looks through for the calling one.
const THREADS: usize = 64;
/// How many frames the walk visits, recorded or skipped (C-call marker frames are skipped).
const VISITS: usize = PYTHON_FRAMES + 16;
/// FNV-1a's 64-bit offset basis and prime, for the stack's hash.
const HASH_START: u64 = 0xcbf2_9ce4_8422_2325;
const HASH_PRIME: u64 = 0x0000_0100_0000_01b3;

/// CPython processes -> where their interpreter keeps its frames (set by userspace).
#[map]
static PYTHON_PROCESSES: HashMap<u32, PythonLayout> = HashMap::with_max_entries(4096, 0);

/// Interpreted stack id -> its frames. LRU: userspace reads a stack soon after its connect.
#[map]
static PYTHON_STACKS: LruHashMap<u32, PythonStack> = LruHashMap::with_max_entries(1024, 0);

/// Thread id -> its CPython thread state, found once by searching the interpreter's threads.
#[map]
static PYTHON_THREADS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(8192, 0);

/// Where each CPU assembles a stack (too large for the BPF stack).
#[map]
static PYTHON_SCRATCH: PerCpuArray<PythonStack> = PerCpuArray::with_max_entries(1, 0);

/// The id of the CPython stack of process `tgid`'s connect, in its own context, if it runs
/// CPython and the calling thread has Python frames; `None` otherwise (the native stack
/// stands). Not inlined: its stack frame is its own, not added to the program's.
#[inline(never)]
pub fn interpreted_stack(tgid: u32) -> Option<i32> {
    if !in_use(InUse::Python) {
        return None;
    }
    let layout = PYTHON_PROCESSES.get_ptr(tgid)?;
    // SAFETY: a live map value, read only; userspace replaces a process's layout only when
    // the process is gone.
    let layout = unsafe { &*layout };
    let state = thread_state(layout)?;
    let mut frame = read_at::<u64>(state, layout.thread_frame)?;
    if layout.cframe_frame != PythonLayout::NONE {
        frame = read_at::<u64>(frame, layout.cframe_frame)?;
    }
    let stack = PYTHON_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a live per-CPU array; tracepoint programs do not nest on one
    // CPU, so nothing else uses it while this runs.
    let stack = unsafe { &mut *stack };
    // The walk keeps its state in the map value, not on the BPF stack, which the program
    // calling it has nearly used up. The count of frames is read back from memory each time:
    // a count kept in a register is known exactly to the verifier, which then checks the rest
    // of the walk once for every count it could have (and gives up); a count read from memory
    // is just a number below the bound.
    stack.hash = HASH_START;
    stack.len = 0;
    stack._pad = 0;
    for _ in 0..VISITS {
        // SAFETY: a field of this CPU's slot, see above.
        let len = unsafe { core::ptr::read_volatile(&stack.len) } as usize;
        if frame == 0 || len >= PYTHON_FRAMES {
            break;
        }
        // The offsets come from a map (unknown to the verifier), so each field is read from
        // the process on its own rather than out of one copy of the frame, straight into the
        // stack being built.
        let slot = &mut stack.frames[len & (PYTHON_FRAMES - 1)];
        if !read_into(&mut slot.code, frame, layout.frame_code)
            || !read_into(&mut slot.instruction, frame, layout.frame_instruction)
        {
            break;
        }
        let PythonFrame { code, instruction } = *slot;
        // A frame that only marks a C call into the interpreter (3.12 and later) is skipped.
        let marks_c_call = layout.frame_owner != PythonLayout::NONE
            && read_at::<u8>(frame, layout.frame_owner).map(u32::from) == Some(layout.cstack_owner);
        if code != 0 && !marks_c_call {
            let hash = (stack.hash ^ code).wrapping_mul(HASH_PRIME);
            stack.hash = (hash ^ instruction).wrapping_mul(HASH_PRIME);
            stack.len = len as u32 + 1;
        }
        match read_at::<u64>(frame, layout.frame_previous) {
            Some(previous) => frame = previous,
            None => break,
        }
    }
    if stack.len == 0 {
        return None;
    }
    let hash = stack.hash;
    let id = interpreted_stack_id(hash);
    match PYTHON_STACKS.get_ptr(id) {
        // SAFETY: a u64 read out of a live map value.
        Some(stored) if unsafe { (*stored).hash } == hash => {}
        Some(_) => {
            // Another stack holds this id: the native stack stands for this connect.
            count(Counter::StackMissing);
            return None;
        }
        None => {
            if PYTHON_STACKS.insert(id, stack, 0).is_err() {
                count(Counter::StackMissing);
                return None;
            }
        }
    }
    Some(id as i32)
}

/// The calling thread's CPython thread state: remembered by thread, checked against its
/// thread pointer (a thread's state is freed when it ends, and its id reused), else searched
/// for in the main interpreter's list of threads.
fn thread_state(layout: &PythonLayout) -> Option<u64> {
    let pointer = thread_pointer().filter(|&pointer| pointer != 0)?;
    let thread = bpf_get_current_pid_tgid() as u32;
    let is_ours = |state: u64| read_at::<u64>(state, layout.thread_id) == Some(pointer);
    if let Some(known) = PYTHON_THREADS.get_ptr(thread) {
        // SAFETY: a u64 copied out of a live map value at once.
        let known = unsafe { *known };
        if is_ours(known) {
            return Some(known);
        }
    }
    let interpreter = read_at::<u64>(layout.main_interpreter, 0)?;
    let mut state = read_at::<u64>(interpreter, layout.interpreter_threads)?;
    for _ in 0..THREADS {
        if state == 0 {
            return None;
        }
        if is_ours(state) {
            let _ = PYTHON_THREADS.insert(thread, state, 0);
            return Some(state);
        }
        state = read_at::<u64>(state, layout.thread_next)?;
    }
    None
}

/// Copies the word at `offset` from `base` in the current process's memory into `into`;
/// false where it cannot be read.
#[inline(always)]
fn read_into(into: &mut u64, base: u64, offset: u32) -> bool {
    let Some(address) = base.checked_add(u64::from(offset)) else {
        return false;
    };
    // SAFETY: `into` is a u64 to write; the helper reads the current process's memory and
    // fails cleanly.
    unsafe {
        generated::bpf_probe_read_user((into as *mut u64).cast(), 8, address as *const _) == 0
    }
}

/// The `T` at `offset` from `base` in the current process's memory.
#[inline(always)]
fn read_at<T: Copy>(base: u64, offset: u32) -> Option<T> {
    let address = base.checked_add(u64::from(offset))?;
    // SAFETY: bpf_probe_read_user copies from the current process's memory and fails cleanly.
    unsafe { bpf_probe_read_user(address as *const T) }.ok()
}
