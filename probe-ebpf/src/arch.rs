//! What differs between the architectures the kernel program is built for (`bpf_target_arch`,
//! which `cargo xtask build` sets per target): where the saved user registers sit in
//! `pt_regs`, and which registers carry what the runtime hooks want.
//!
//! - x86-64: the frame pointer is RBP and a call leaves its return address on the stack. Go's
//!   register ABI passes a method's receiver in RAX and its first argument in RBX, and keeps
//!   the current goroutine `g` in R14 (and in TLS, at `fs_base - 8`).
//! - arm64 (AArch64): the frame pointer is X29, a call leaves its return address in the link
//!   register X30, Go passes receiver and first argument in X0 and X1 and keeps `g` in X28.
//!
//! The C calling convention's second argument is RSI on x86-64 and X1 on arm64.

use aya_ebpf::bindings::pt_regs;

/// The user registers at a system call, read from the task's saved `pt_regs`.
// Only the object built with stacks reads them (see `set_state::code_path`).
#[cfg_attr(not(feature = "stacks"), allow(dead_code))]
pub(crate) struct UserRegs {
    /// The instruction pointer.
    pub ip: u64,
    /// The stack pointer.
    pub sp: u64,
    /// The frame pointer (RBP, X29).
    pub bp: u64,
    /// The link register (X30): the innermost return address on arm64; 0 on x86-64, where it is
    /// on the stack.
    pub lr: u64,
    /// Go's goroutine register (X28) on arm64 (on x86-64 the goroutine is found through TLS).
    #[cfg(bpf_target_arch = "aarch64")]
    pub goroutine: u64,
}

/// Reads the user registers saved at `regs` (a kernel `struct pt_regs`), one at a time: the
/// whole struct would not fit the BPF stack.
///
/// # Safety
/// `regs` must be what `bpf_task_pt_regs` returned for the current task.
#[cfg(bpf_target_arch = "x86_64")]
pub(crate) unsafe fn read_user_regs(regs: *const pt_regs) -> Option<UserRegs> {
    use aya_ebpf::helpers::bpf_probe_read_kernel;
    // SAFETY: bpf_probe_read_kernel copies each register out of kernel memory and fails
    // cleanly on a bad address; the field addresses are computed, not dereferenced.
    unsafe {
        Some(UserRegs {
            ip: bpf_probe_read_kernel(&raw const (*regs).rip).ok()?,
            sp: bpf_probe_read_kernel(&raw const (*regs).rsp).ok()?,
            bp: bpf_probe_read_kernel(&raw const (*regs).rbp).ok()?,
            lr: 0,
        })
    }
}

/// Reads the user registers saved at `regs` (a kernel `struct pt_regs`, which begins with the
/// `user_pt_regs` aya calls `pt_regs` on arm64), one at a time.
///
/// # Safety
/// `regs` must be what `bpf_task_pt_regs` returned for the current task.
#[cfg(bpf_target_arch = "aarch64")]
pub(crate) unsafe fn read_user_regs(regs: *const pt_regs) -> Option<UserRegs> {
    use aya_ebpf::helpers::bpf_probe_read_kernel;
    // SAFETY: as on x86-64.
    unsafe {
        Some(UserRegs {
            ip: bpf_probe_read_kernel(&raw const (*regs).pc).ok()?,
            sp: bpf_probe_read_kernel(&raw const (*regs).sp).ok()?,
            bp: bpf_probe_read_kernel(&raw const (*regs).regs[29]).ok()?,
            lr: bpf_probe_read_kernel(&raw const (*regs).regs[30]).ok()?,
            goroutine: bpf_probe_read_kernel(&raw const (*regs).regs[28]).ok()?,
        })
    }
}

/// At the entry of a Go method: its first argument after the receiver.
#[cfg(feature = "stacks")]
pub(crate) fn go_first_argument(regs: &pt_regs) -> u64 {
    #[cfg(bpf_target_arch = "x86_64")]
    return regs.rbx;
    #[cfg(bpf_target_arch = "aarch64")]
    return regs.regs[1];
}

/// At the entry of a Go function: the running goroutine (`g`).
#[cfg(feature = "stacks")]
pub(crate) fn go_goroutine(regs: &pt_regs) -> u64 {
    #[cfg(bpf_target_arch = "x86_64")]
    return regs.r14;
    #[cfg(bpf_target_arch = "aarch64")]
    return regs.regs[28];
}

/// At the entry of a C function: its second argument.
#[cfg(feature = "stacks")]
pub(crate) fn c_second_argument(regs: &pt_regs) -> u64 {
    #[cfg(bpf_target_arch = "x86_64")]
    return regs.rsi;
    #[cfg(bpf_target_arch = "aarch64")]
    return regs.regs[1];
}
