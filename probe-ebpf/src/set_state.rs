//! The program on `sock:inet_sock_set_state`: attribute each socket to its owner and send the
//! transitions of traced processes' sockets to userspace.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel_buf},
    macros::tracepoint,
    programs::TracePointContext,
};
use aya_log_ebpf::debug;
use probe_common::{
    Attribution, Counter, IPPROTO_TCP, InUse, ListenerKey, NO_STACK, SocketTuple, TcpState,
    TransitionEvent,
};

use crate::{
    EVENTS, LAYOUT, LISTENERS, OWNERS, RECORD, RECORD_BYTES, RecordBytes, SEEDS, TARGETS,
    WAKEUP_BYTES, count, in_use, mark_in_use, user_stack,
};

const CLOSE: u8 = TcpState::Close as u8;
const LISTEN: u8 = TcpState::Listen as u8;
const SYN_SENT: u8 = TcpState::SynSent as u8;

/// `::ffff:0.0.0.0`: how the tracepoint shows an IPv4 wildcard bind.
const V4_ANY: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];
/// `::`: an IPv6 wildcard bind.
const V6_ANY: [u8; 16] = [0; 16];

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // A failed read means a layout we do not understand; there is nothing better to do than skip.
    let _ = handle(&ctx);
    0
}

/// The fields of one tracepoint record that probe uses.
struct Record {
    sock_id: u64,
    old_state: u8,
    new_state: u8,
    family: u16,
    sport: u16,
    dport: u16,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

fn handle(ctx: &TracePointContext) -> Result<(), i64> {
    let layout = LAYOUT.load();
    // One copy of the record's start, then plain loads: a helper call per field costs more than
    // everything else this program does for the sockets it filters out.
    let copy = RECORD.get_ptr_mut(0).ok_or(-1i64)?;
    // SAFETY: `copy` is this CPU's RECORD slot, SET_STATE_RECORD_BYTES long; the record sits in
    // the kernel's per-CPU trace buffer, and bpf_probe_read_kernel fails cleanly on a bad read.
    let copied = unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, &mut *copy) };
    copied?;
    // SAFETY: the slot was just filled, and nothing else uses it on this CPU meanwhile.
    let bytes = unsafe { &*copy };
    let protocol: u16 = field(bytes, layout.protocol)?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let old_state: i32 = field(bytes, layout.oldstate)?;
    let new_state: i32 = field(bytes, layout.newstate)?;
    let record = Record {
        sock_id: field(bytes, layout.skaddr)?,
        old_state: old_state as u8,
        new_state: new_state as u8,
        family: field(bytes, layout.family)?,
        sport: field(bytes, layout.sport)?,
        dport: field(bytes, layout.dport)?,
        saddr: field(bytes, layout.saddr_v6)?,
        daddr: field(bytes, layout.daddr_v6)?,
    };

    let (owner, attribution) = match owner_of(ctx, &record) {
        Some(found) => found,
        None => return Ok(()),
    };
    emit(&record, owner, attribution, code_path(ctx, &record, owner));

    if record.new_state == CLOSE {
        // The socket address may be reused by the next socket: forget it now.
        let _ = OWNERS.remove(&record.sock_id);
        if record.old_state == LISTEN {
            let _ = LISTENERS.remove(&listener_key(record.saddr, record.sport));
        }
    }
    Ok(())
}

/// A field of the copied record: `size_of::<T>()` bytes at `offset` (checked, for the verifier).
#[inline(always)]
fn field<T: Copy>(bytes: &RecordBytes, offset: u32) -> Result<T, i64> {
    let start = offset as usize;
    if start > RECORD_BYTES - size_of::<T>() {
        return Err(-1);
    }
    // SAFETY: within `bytes`, as just checked; the record is packed, hence the unaligned read.
    Ok(unsafe { (bytes.as_ptr().add(start) as *const T).read_unaligned() })
}

/// Who owns this socket, if it is one of a traced process; remembers new attributions.
fn owner_of(ctx: &TracePointContext, record: &Record) -> Option<(u32, Attribution)> {
    // SAFETY: a plain u32 copied out at once; a concurrent delete could at worst hand us a stale
    // tgid of an entry that is being removed, which is still that socket's owner.
    if let Some(owner) = unsafe { OWNERS.get(&record.sock_id) } {
        return Some((*owner, Attribution::Known));
    }
    let old = TcpState::from_raw(record.old_state)?;
    let new = TcpState::from_raw(record.new_state)?;
    let tuple = SocketTuple {
        saddr: record.saddr,
        daddr: record.daddr,
        sport: record.sport,
        dport: record.dport,
        _pad: [0; 4],
    };
    let seed = if in_use(InUse::Seeds) {
        SEEDS.get_ptr(&tuple)
    } else {
        None
    };
    let (owner, attribution) = if let Some(seed) = seed {
        // SAFETY: a u32 read straight out of a live map value.
        let owner = unsafe { *seed };
        let _ = SEEDS.remove(&tuple);
        (owner, Attribution::Snapshot)
    } else {
        attribute(old, new, record)?
    };
    if new != TcpState::Close && OWNERS.insert(&record.sock_id, &owner, 0).is_err() {
        // Its later transitions could not be attributed: report none of it, count it instead.
        count(Counter::OwnerMapFull);
        debug!(
            ctx,
            "owner map full: socket of pid {} left untracked", owner
        );
        return None;
    }
    if new == TcpState::Listen {
        if LISTENERS
            .insert(&listener_key(record.saddr, record.sport), &owner, 0)
            .is_err()
        {
            count(Counter::ListenerMapFull);
            debug!(
                ctx,
                "listener map full: port {} of pid {} left untracked", record.sport, owner
            );
        } else {
            mark_in_use(InUse::Listeners);
        }
    }
    Some((owner, attribution))
}

/// The owner of a socket not seen before, from a transition that names it, if it is traced.
fn attribute(old: TcpState, new: TcpState, record: &Record) -> Option<(u32, Attribution)> {
    match (old, new) {
        (TcpState::Close, TcpState::SynSent)
        | (TcpState::Close, TcpState::Listen)
        | (TcpState::Established, TcpState::FinWait1)
        | (TcpState::CloseWait, TcpState::LastAck) => {
            let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
            TARGETS.get_ptr(&tgid)?;
            Some((tgid, Attribution::ProcessContext))
        }
        (TcpState::Listen, TcpState::SynRecv) => {
            Some((listener_owner(record)?, Attribution::Listener))
        }
        _ => None,
    }
}

/// The owner of the listener that accepted this socket: exact local address first, then wildcards.
fn listener_owner(record: &Record) -> Option<u32> {
    if !in_use(InUse::Listeners) {
        return None;
    }
    for addr in [record.saddr, V4_ANY, V6_ANY] {
        if let Some(owner) = LISTENERS.get_ptr(&listener_key(addr, record.sport)) {
            // SAFETY: a u32 read straight out of a live map value.
            return Some(unsafe { *owner });
        }
    }
    None
}

fn listener_key(addr: [u8; 16], port: u16) -> ListenerKey {
    ListenerKey {
        addr,
        port,
        _pad: [0; 6],
    }
}

/// The owner's user stack on connect (the code that opened the connection), when the owner
/// itself runs it (never in softirq, where the stack would be someone else's).
fn code_path(ctx: &TracePointContext, record: &Record, owner: u32) -> i32 {
    let connect = (record.old_state, record.new_state) == (CLOSE, SYN_SENT);
    if connect && (bpf_get_current_pid_tgid() >> 32) as u32 == owner {
        user_stack(ctx)
    } else {
        NO_STACK
    }
}

fn emit(record: &Record, owner: u32, attribution: Attribution, stack_id: i32) {
    let Some(mut entry) = EVENTS.reserve::<TransitionEvent>(0) else {
        count(Counter::RingBufFull);
        return;
    };
    entry.write(TransitionEvent {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        sock_id: record.sock_id,
        owner_tgid: owner,
        family: record.family,
        sport: record.sport,
        dport: record.dport,
        old_state: record.old_state,
        new_state: record.new_state,
        attribution: attribution as u8,
        _pad: [0; 3],
        stack_id,
        _pad2: 0,
        saddr: record.saddr,
        daddr: record.daddr,
    });
    // Wake the reader only once a batch is waiting: one wakeup per event would cost a context
    // switch per event at high rates. The reader also drains on a short timer.
    let waiting = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    entry.submit(if waiting >= WAKEUP_BYTES.load() {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    });
}
