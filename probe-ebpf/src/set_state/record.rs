//! The classic tracepoint program: every field comes from the trace record the kernel fills,
//! at offsets read by userspace from the tracefs `format` file. Used where the kernel has no BTF.

use aya_ebpf::{
    EbpfContext, helpers::bpf_probe_read_kernel_buf, macros::tracepoint,
    programs::TracePointContext,
};
use probe_common::SetStateLayout;

use super::{Endpoints, SocketFields, Transition, field, handle};
use crate::{COPY, CopyBytes, LAYOUT, arch::UserRegs, count_failure};

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // A failed read means a layout we do not understand: skipped, and counted.
    count_failure(from_record(&ctx));
    0
}

fn from_record(ctx: &TracePointContext) -> Result<(), i64> {
    let layout = LAYOUT.load();
    // One copy of the record's start, then plain loads: a helper call per field costs more than
    // everything else this program does for the sockets it filters out.
    let copy = COPY.get_ptr_mut(0).ok_or(-1i64)?;
    // SAFETY: `copy` is this CPU's COPY slot, SET_STATE_RECORD_BYTES long; the record sits in
    // the kernel's per-CPU trace buffer, and bpf_probe_read_kernel fails cleanly on a bad read.
    let copied = unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, &mut *copy) };
    copied?;
    // SAFETY: the slot was just filled, and nothing else uses it on this CPU meanwhile.
    let bytes = unsafe { &*copy };
    let old_state: i32 = field(bytes, layout.oldstate)?;
    let new_state: i32 = field(bytes, layout.newstate)?;
    let transition = Transition {
        sock_id: field(bytes, layout.skaddr)?,
        old_state: old_state as u8,
        new_state: new_state as u8,
    };
    handle(ctx, transition, &Record { bytes, layout })
}

/// The copied record and where its fields are.
struct Record<'a> {
    bytes: &'a CopyBytes,
    layout: SetStateLayout,
}

/// A classic tracepoint program cannot ask for the task's registers.
impl super::SyscallRegs for TracePointContext {
    fn user_regs(&self) -> Option<UserRegs> {
        None
    }
}

impl SocketFields for Record<'_> {
    #[inline(always)]
    fn protocol(&self) -> Result<u16, i64> {
        field(self.bytes, self.layout.protocol)
    }

    #[inline(always)]
    fn endpoints(&self) -> Result<Endpoints, i64> {
        Ok(Endpoints {
            family: field(self.bytes, self.layout.family)?,
            sport: field(self.bytes, self.layout.sport)?,
            dport: field(self.bytes, self.layout.dport)?,
            saddr: field(self.bytes, self.layout.saddr_v6)?,
            daddr: field(self.bytes, self.layout.daddr_v6)?,
        })
    }

    #[inline(always)]
    fn cookie(&self) -> u64 {
        // The trace record has no socket to ask: seeds and refreshes use the 4-tuple instead.
        0
    }
}
