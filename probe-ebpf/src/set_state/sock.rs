//! The BTF tracepoint program (`tp_btf`): the kernel hands it the socket and the two states as
//! arguments, without filling a trace record, and the program reads the socket's own fields
//! (offsets from the kernel's BTF, set by userspace) only for transitions it keeps. This is the
//! cheap path for the many transitions of processes nobody traces.

use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_task_btf, bpf_get_socket_cookie, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf, bpf_task_pt_regs,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use probe_common::{AF_INET6, SOCK_INET_BYTES, SockLayout, v4_mapped};

use super::{Endpoints, SocketFields, Transition, field, handle};
use crate::{
    COPY, SOCK_LAYOUT,
    arch::{UserRegs, read_user_regs},
    count_failure,
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> u32 {
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    let sock: u64 = ctx.arg(0);
    let old_state: i32 = ctx.arg(1);
    let new_state: i32 = ctx.arg(2);
    let transition = Transition {
        sock_id: sock,
        old_state: old_state as u8,
        new_state: new_state as u8,
    };
    // A failed read means a layout we do not understand: skipped, and counted.
    count_failure(handle(&ctx, transition, &Sock { address: sock }));
    0
}

/// The user registers are the task's, saved when the system call entered the kernel.
impl super::SyscallRegs for BtfTracePointContext {
    fn user_regs(&self) -> Option<UserRegs> {
        // SAFETY: the current task, as a BTF pointer, is always valid in a tracing program.
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) };
        if regs == 0 {
            return None;
        }
        // SAFETY: what bpf_task_pt_regs returned for the current task.
        unsafe { read_user_regs(regs as *const aya_ebpf::bindings::pt_regs) }
    }
}

/// The socket the transition is about.
struct Sock {
    address: u64,
}

impl Sock {
    /// The `T` at `offset` bytes into the socket.
    #[inline(always)]
    fn read<T>(&self, offset: u32) -> Result<T, i64> {
        let at = self.address.wrapping_add(u64::from(offset)) as *const T;
        // SAFETY: bpf_probe_read_kernel copies out of kernel memory and fails cleanly on a bad
        // address; the offsets come from the running kernel's BTF.
        unsafe { bpf_probe_read_kernel(at) }.map_err(i64::from)
    }

    /// Fills `into` with the bytes from `offset` bytes into the socket.
    #[inline(always)]
    fn copy(&self, offset: u32, into: &mut [u8]) -> Result<(), i64> {
        let at = self.address.wrapping_add(u64::from(offset)) as *const u8;
        // SAFETY: as for `read`.
        unsafe { bpf_probe_read_kernel_buf(at, into) }.map_err(i64::from)
    }
}

impl SocketFields for Sock {
    #[inline(always)]
    fn cookie(&self) -> u64 {
        // SAFETY: the address is the `struct sock *` the tracepoint handed over, which the
        // verifier knows by its BTF type; the helper reads (or sets) its cookie.
        unsafe { bpf_get_socket_cookie(self.address as *mut c_void) }
    }

    #[inline(always)]
    fn protocol(&self) -> Result<u16, i64> {
        self.read(SOCK_LAYOUT.load().protocol)
    }

    #[inline(always)]
    fn endpoints(&self) -> Result<Endpoints, i64> {
        let layout: SockLayout = SOCK_LAYOUT.load();
        // Two copies rather than a helper call per field: each call costs more than the copy.
        // The first goes to this CPU's COPY slot (too large for the BPF stack).
        let slot = COPY.get_ptr_mut(0).ok_or(-1i64)?;
        // SAFETY: the slot is this CPU's, and nothing else uses it meanwhile.
        let common = unsafe { &mut *slot };
        self.copy(0, common)?;
        let mut inet = [0u8; SOCK_INET_BYTES as usize];
        self.copy(layout.inet, &mut inet)?;
        let common = &*common;
        let family: u16 = field(common, layout.family)?;
        let (saddr, daddr) = if family == AF_INET6 && layout.ipv6 != 0 {
            (
                field(common, layout.saddr_v6)?,
                field(common, layout.daddr_v6)?,
            )
        } else {
            (
                v4_mapped(field(&inet, layout.saddr)?),
                v4_mapped(field(common, layout.daddr)?),
            )
        };
        Ok(Endpoints {
            family,
            sport: u16::from_be(field(&inet, layout.sport)?),
            dport: u16::from_be(field(common, layout.dport)?),
            saddr,
            daddr,
        })
    }
}
