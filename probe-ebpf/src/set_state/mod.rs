//! The programs on `sock:inet_sock_set_state`: attribute each socket to its owner and send the
//! transitions of traced processes' sockets to userspace.
//!
//! Two programs share this logic and differ only in where the socket's fields come from:
//! [`sock`] is a BTF tracepoint (`tp_btf`) that reads them from the socket, and only once a
//! transition concerns a traced process; [`record`] is the classic tracepoint, which reads them
//! from the trace record the kernel fills for every transition. The loader attaches one of them.

mod record;
mod sock;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_PROD_POS},
    helpers::bpf_ktime_get_ns,
    programs::tracing::StackIdContext,
};
use aya_log_ebpf::debug;
use probe_common::{
    Attribution, Counter, IPPROTO_TCP, InUse, ListenerKey, NO_STACK, SocketTuple, TcpState,
    TransitionEvent, next_wakeup, v4_mapped,
};

use crate::{
    EVENTS, LISTENERS, NEXT_WAKEUP, OWNERS, SEED_COOKIES, SEEDS, WAKEUP_BYTES, arch::UserRegs,
    count, current_tgid, in_use, mark_in_use, traces_current, user_stack,
};

const CLOSE: u8 = TcpState::Close as u8;
const LISTEN: u8 = TcpState::Listen as u8;
const SYN_SENT: u8 = TcpState::SynSent as u8;

/// `::ffff:0.0.0.0`: how the tracepoint shows an IPv4 wildcard bind.
const V4_ANY: [u8; 16] = v4_mapped([0; 4]);
/// `::`: an IPv6 wildcard bind.
const V6_ANY: [u8; 16] = [0; 16];

/// What every transition says at no cost: which socket, from which state to which.
struct Transition {
    sock_id: u64,
    old_state: u8,
    new_state: u8,
}

/// A socket's addresses, as the tracepoint's record holds them (IPv4 as v4-mapped IPv6, ports
/// in host order).
struct Endpoints {
    family: u16,
    sport: u16,
    dport: u16,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// Where a program reads the rest of a socket's fields, only when it needs them.
trait SocketFields {
    /// The socket's protocol (`IPPROTO_*`).
    fn protocol(&self) -> Result<u16, i64>;
    /// The socket's family, ports and addresses.
    fn endpoints(&self) -> Result<Endpoints, i64>;
    /// The socket's cookie; 0 where the program cannot ask for it.
    fn cookie(&self) -> u64;
}

/// What a program can learn of the user registers at the system call that made a transition.
trait SyscallRegs {
    /// The user registers, where the program can read them.
    #[cfg_attr(not(feature = "stacks"), allow(dead_code))]
    fn user_regs(&self) -> Option<UserRegs>;
}

/// A field copied out of the kernel: `size_of::<T>()` bytes at `offset` of `bytes` (checked, for
/// the verifier).
#[inline(always)]
fn field<T: Copy, const N: usize>(bytes: &[u8; N], offset: u32) -> Result<T, i64> {
    let start = offset as usize;
    if start > N - size_of::<T>() {
        return Err(-1);
    }
    // SAFETY: within `bytes`, as just checked; the fields are packed, hence the unaligned read.
    Ok(unsafe { (bytes.as_ptr().add(start) as *const T).read_unaligned() })
}

/// One transition: emitted if its socket is (or becomes) a traced process's, ignored otherwise.
fn handle<C: EbpfContext + StackIdContext + SyscallRegs>(
    ctx: &C,
    transition: Transition,
    fields: &impl SocketFields,
) -> Result<(), i64> {
    let (owner, attribution, endpoints, cookie) = match known_owner(transition.sock_id) {
        Some(owner) => (
            owner,
            Attribution::Known,
            fields.endpoints()?,
            fields.cookie(),
        ),
        None => match attribute_new(ctx, &transition, fields)? {
            Some(found) => found,
            None => return Ok(()),
        },
    };
    let stacks = code_path(ctx, &transition, owner);
    emit(&transition, &endpoints, cookie, owner, attribution, stacks);

    if transition.new_state == CLOSE {
        // The socket address may be reused by the next socket: forget it now.
        let _ = OWNERS.remove(transition.sock_id);
        if transition.old_state == LISTEN {
            let _ = LISTENERS.remove(listener_key(endpoints.saddr, endpoints.sport));
        }
    }
    Ok(())
}

/// The owner already attributed to this socket, if any.
#[inline(always)]
fn known_owner(sock_id: u64) -> Option<u32> {
    if !in_use(InUse::Owners) {
        return None;
    }
    let owner = OWNERS.get_ptr(sock_id)?;
    // SAFETY: a plain u32 copied out at once; a concurrent delete could at worst hand us a stale
    // tgid of an entry that is being removed, which is still that socket's owner.
    Some(unsafe { *owner })
}

/// The owner of a socket not seen before, if this transition names one that is traced; the
/// socket is remembered for its later transitions. The cheap checks come first: most
/// transitions of untraced processes end before any field of the socket is read.
fn attribute_new<C: EbpfContext>(
    ctx: &C,
    transition: &Transition,
    fields: &impl SocketFields,
) -> Result<Option<(u32, Attribution, Endpoints, u64)>, i64> {
    let (Some(old), Some(new)) = (
        TcpState::from_raw(transition.old_state),
        TcpState::from_raw(transition.new_state),
    ) else {
        return Ok(None);
    };
    let by_process = process_owner(old, new);
    let by_listener =
        (old, new) == (TcpState::Listen, TcpState::SynRecv) && in_use(InUse::Listeners);
    let seeded = in_use(InUse::Seeds);
    if by_process.is_none() && !by_listener && !seeded {
        return Ok(None);
    }
    if fields.protocol()? != IPPROTO_TCP {
        return Ok(None);
    }
    let endpoints = fields.endpoints()?;
    let cookie = fields.cookie();
    let found = match seeded.then(|| take_seed(cookie, &endpoints)).flatten() {
        Some(owner) => Some((owner, Attribution::Snapshot)),
        None => match by_process {
            Some(owner) => Some((owner, Attribution::ProcessContext)),
            None if by_listener => {
                listener_owner(&endpoints).map(|owner| (owner, Attribution::Listener))
            }
            None => None,
        },
    };
    let Some((owner, attribution)) = found else {
        return Ok(None);
    };
    // A socket is counted as untracked once, when probe first learns of it: at its start or
    // from its seed. A close of a socket whose start was refused is not counted again.
    let first_sight = old == TcpState::Close
        || (old, new) == (TcpState::Listen, TcpState::SynRecv)
        || attribution == Attribution::Snapshot;
    if !remember(ctx, transition.sock_id, new, &endpoints, owner, first_sight) {
        return Ok(None);
    }
    Ok(Some((owner, attribution, endpoints, cookie)))
}

/// The current process, if this transition runs only in the owner's own context (connect,
/// listen, close, shutdown) and the current process is traced.
#[inline(always)]
fn process_owner(old: TcpState, new: TcpState) -> Option<u32> {
    match (old, new) {
        (TcpState::Close, TcpState::SynSent)
        | (TcpState::Close, TcpState::Listen)
        | (TcpState::Established, TcpState::FinWait1)
        | (TcpState::CloseWait, TcpState::LastAck) => {
            let tgid = current_tgid();
            traces_current(tgid).then_some(tgid)
        }
        _ => None,
    }
}

/// The owner userspace seeded for this connection (it existed before attach), taken out of the
/// seeds: from now on the socket is known by its address. By cookie where the program has one
/// (unique across network namespaces), by 4-tuple otherwise.
fn take_seed(cookie: u64, endpoints: &Endpoints) -> Option<u32> {
    if cookie != 0 {
        let owner = SEED_COOKIES.get_ptr(cookie)?;
        // SAFETY: a u32 read straight out of a live map value.
        let owner = unsafe { *owner };
        let _ = SEED_COOKIES.remove(cookie);
        return Some(owner);
    }
    let tuple = SocketTuple {
        saddr: endpoints.saddr,
        daddr: endpoints.daddr,
        sport: endpoints.sport,
        dport: endpoints.dport,
        _pad: [0; 4],
    };
    let owner = SEEDS.get_ptr(tuple)?;
    // SAFETY: a u32 read straight out of a live map value.
    let owner = unsafe { *owner };
    let _ = SEEDS.remove(tuple);
    Some(owner)
}

/// Remembers the owner of a newly attributed socket (and of a new listener); false when the
/// socket cannot be followed because a map is full (counted when `first_sight`).
fn remember<C: EbpfContext>(
    ctx: &C,
    sock_id: u64,
    new: TcpState,
    endpoints: &Endpoints,
    owner: u32,
    first_sight: bool,
) -> bool {
    if new != TcpState::Close {
        // Marked first: a transition on another CPU must not skip OWNERS once the entry is in.
        mark_in_use(InUse::Owners);
        if OWNERS.insert(sock_id, owner, 0).is_err() {
            // Its later transitions could not be attributed: report none of it, count it instead.
            if first_sight {
                count(Counter::OwnerMapFull);
            }
            debug!(
                ctx,
                "owner map full: socket of pid {} left untracked", owner
            );
            return false;
        }
    }
    if new == TcpState::Listen {
        mark_in_use(InUse::Listeners);
        if LISTENERS
            .insert(listener_key(endpoints.saddr, endpoints.sport), owner, 0)
            .is_err()
        {
            count(Counter::ListenerMapFull);
            debug!(
                ctx,
                "listener map full: port {} of pid {} left untracked", endpoints.sport, owner
            );
        }
    }
    true
}

/// The owner of the listener that accepted this socket: exact local address first, then wildcards.
fn listener_owner(endpoints: &Endpoints) -> Option<u32> {
    for addr in [endpoints.saddr, V4_ANY, V6_ANY] {
        if let Some(owner) = LISTENERS.get_ptr(listener_key(addr, endpoints.sport)) {
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

/// The stacks of a connect: the owner's, and its requester's where a runtime connects on its
/// behalf.
struct Stacks {
    opened: i32,
    requested: i32,
}

/// The owner's user stack on connect (the code that opened the connection), when the owner
/// itself runs it (never in softirq, where the stack would be someone else's), with what a
/// frame-pointer walk of it can miss: the words at the stack pointer (the caller of a wrapper
/// without a frame) and the stack of the code that asked a runtime for the connection.
fn code_path<C: StackIdContext + SyscallRegs>(
    ctx: &C,
    transition: &Transition,
    owner: u32,
) -> Stacks {
    let connect = (transition.old_state, transition.new_state) == (CLOSE, SYN_SENT);
    if !connect || current_tgid() != owner {
        return Stacks {
            opened: NO_STACK,
            requested: NO_STACK,
        };
    }
    #[cfg(feature = "stacks")]
    if let Some(interpreted) = crate::python::interpreted_stack(owner) {
        // The interpreter's frames name the code; its native stack would only name the
        // interpreter's C functions.
        return Stacks {
            opened: interpreted,
            requested: NO_STACK,
        };
    }
    let opened = user_stack(ctx);
    #[cfg(feature = "stacks")]
    {
        // The registers are read only for a stack not seen before: most connects repeat one.
        crate::runtimes::note_caller_words(opened, || ctx.user_regs());
        crate::stack_copy::copy_stack(owner, opened, || ctx.user_regs());
        Stacks {
            opened,
            requested: crate::runtimes::requested_stack(owner, || ctx.user_regs()),
        }
    }
    #[cfg(not(feature = "stacks"))]
    {
        Stacks {
            opened,
            requested: NO_STACK,
        }
    }
}

fn emit(
    transition: &Transition,
    endpoints: &Endpoints,
    cookie: u64,
    owner: u32,
    attribution: Attribution,
    stacks: Stacks,
) {
    let Some(mut entry) = EVENTS.reserve::<TransitionEvent>(0) else {
        count(Counter::RingBufFull);
        return;
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    entry.write(TransitionEvent {
        ts_ns,
        sock_id: transition.sock_id,
        cookie,
        owner_tgid: owner,
        family: endpoints.family,
        sport: endpoints.sport,
        dport: endpoints.dport,
        old_state: transition.old_state,
        new_state: transition.new_state,
        attribution: attribution as u8,
        _pad: [0; 3],
        stack_id: stacks.opened,
        requested_stack_id: stacks.requested,
        saddr: endpoints.saddr,
        daddr: endpoints.daddr,
    });
    entry.submit(if wakeup_due() {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    });
}

/// Whether this event wakes the reader: once a batch is waiting, and then not again on this CPU
/// until another batch was produced. Each wakeup is an interrupt on this CPU; the reader also
/// drains on a short timer.
#[inline(always)]
fn wakeup_due() -> bool {
    let Some(due_at) = NEXT_WAKEUP.get_ptr_mut(0) else {
        return false;
    };
    let waiting = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    let produced = EVENTS.query(u64::from(BPF_RB_PROD_POS));
    // SAFETY: this CPU's slot, and tracepoint programs do not nest on one CPU.
    let due_at = unsafe { &mut *due_at };
    match next_wakeup(waiting, produced, WAKEUP_BYTES.load(), *due_at) {
        Some(next) => {
            *due_at = next;
            true
        }
        None => false,
    }
}
