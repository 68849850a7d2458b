//! Decoding the kernel's [`TransitionEvent`] into a [`Transition`].

use std::net::SocketAddr;

use probe_common::{AF_INET, AF_INET6, Attribution, TcpState, TransitionEvent};

use super::{
    address::{from_mapped, to_mapped},
    code_path::StackRef,
    time::Timestamp,
};

/// The address family of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// `"ipv4"` or `"ipv6"`.
    pub const fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// Where a connection runs: local and remote address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoints {
    pub family: Family,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// [`Endpoints`] in 37 bytes instead of 68, as the connection table keeps them (IPv4 addresses
/// stored v4-mapped, with a bit saying so; ports as bytes, so nothing pads the struct).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedEndpoints {
    local_ip: [u8; 16],
    remote_ip: [u8; 16],
    local_port: [u8; 2],
    remote_port: [u8; 2],
    /// [`FAMILY_V6`], [`LOCAL_V4`], [`REMOTE_V4`].
    kinds: u8,
}

const FAMILY_V6: u8 = 1;
const LOCAL_V4: u8 = 2;
const REMOTE_V4: u8 = 4;

impl From<Endpoints> for PackedEndpoints {
    fn from(endpoints: Endpoints) -> Self {
        let mut kinds = 0;
        if endpoints.family == Family::Ipv6 {
            kinds |= FAMILY_V6;
        }
        if endpoints.local.is_ipv4() {
            kinds |= LOCAL_V4;
        }
        if endpoints.remote.is_ipv4() {
            kinds |= REMOTE_V4;
        }
        PackedEndpoints {
            local_ip: to_mapped(endpoints.local.ip()),
            remote_ip: to_mapped(endpoints.remote.ip()),
            local_port: endpoints.local.port().to_ne_bytes(),
            remote_port: endpoints.remote.port().to_ne_bytes(),
            kinds,
        }
    }
}

impl From<PackedEndpoints> for Endpoints {
    fn from(packed: PackedEndpoints) -> Self {
        Endpoints {
            family: if packed.kinds & FAMILY_V6 != 0 {
                Family::Ipv6
            } else {
                Family::Ipv4
            },
            local: SocketAddr::new(
                from_mapped(packed.local_ip, packed.kinds & LOCAL_V4 != 0),
                u16::from_ne_bytes(packed.local_port),
            ),
            remote: SocketAddr::new(
                from_mapped(packed.remote_ip, packed.kinds & REMOTE_V4 != 0),
                u16::from_ne_bytes(packed.remote_port),
            ),
        }
    }
}

#[cfg(test)]
impl Endpoints {
    /// Endpoints from text, for tests: the family follows the local address.
    pub(crate) fn parse(local: &str, remote: &str) -> Endpoints {
        let local: SocketAddr = local.parse().expect("a socket address");
        Endpoints {
            family: if local.is_ipv4() {
                Family::Ipv4
            } else {
                Family::Ipv6
            },
            local,
            remote: remote.parse().expect("a socket address"),
        }
    }
}

/// One decoded state transition of a traced socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The kernel socket address, an opaque id reused after CLOSE (never 0).
    pub sock_id: u64,
    /// The socket's cookie (unique for the kernel's uptime, and what sock_diag reports), where
    /// the kernel program could ask for it.
    pub cookie: Option<u64>,
    /// The owning process.
    pub pid: u32,
    /// When the socket entered `new`.
    pub at: Timestamp,
    pub endpoints: Endpoints,
    pub old: TcpState,
    pub new: TcpState,
    /// How the kernel program knew the owner.
    pub attribution: Attribution,
    /// The owner's user stack, on connect.
    pub stack: Option<StackRef>,
    /// On connect, the stack of the code that asked a runtime for the connection, where the
    /// runtime connects on its behalf.
    pub requested: Option<StackRef>,
}

/// A stack id of process `pid`'s, unless it is [`probe_common::NO_STACK`].
fn stack_ref(pid: u32, id: i32) -> Option<StackRef> {
    u32::try_from(id).ok().map(|id| StackRef { pid, id })
}

/// Why a ring buffer record is not a valid [`Transition`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {0} bytes is shorter than the {size} bytes of the event ABI", size = size_of::<TransitionEvent>())]
    TooShort(usize),
    #[error("unknown TCP state number {0}")]
    UnknownState(u8),
    #[error("unknown address family {0}")]
    UnknownFamily(u16),
    #[error("unknown attribution number {0}")]
    UnknownAttribution(u8),
    #[error("event without a socket address")]
    NoSocket,
}

impl Transition {
    /// Decodes one ring buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Transition, DecodeError> {
        if bytes.len() < size_of::<TransitionEvent>() {
            return Err(DecodeError::TooShort(bytes.len()));
        }
        // SAFETY: the length is checked above, the read is unaligned, and `TransitionEvent` is
        // plain old data for which every bit pattern is a valid value.
        let raw = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<TransitionEvent>()) };
        Transition::from_event(&raw)
    }

    /// Validates and converts the kernel's event.
    pub fn from_event(raw: &TransitionEvent) -> Result<Transition, DecodeError> {
        let state = |n: u8| TcpState::from_raw(n).ok_or(DecodeError::UnknownState(n));
        let family = match raw.family {
            AF_INET => Family::Ipv4,
            AF_INET6 => Family::Ipv6,
            other => return Err(DecodeError::UnknownFamily(other)),
        };
        let addr = |bytes: [u8; 16]| from_mapped(bytes, family == Family::Ipv4);
        if raw.sock_id == 0 {
            return Err(DecodeError::NoSocket);
        }
        Ok(Transition {
            sock_id: raw.sock_id,
            cookie: (raw.cookie != 0).then_some(raw.cookie),
            pid: raw.owner_tgid,
            at: Timestamp::from_nanos(raw.ts_ns),
            endpoints: Endpoints {
                family,
                local: SocketAddr::new(addr(raw.saddr), raw.sport),
                remote: SocketAddr::new(addr(raw.daddr), raw.dport),
            },
            old: state(raw.old_state)?,
            new: state(raw.new_state)?,
            attribution: Attribution::from_raw(raw.attribution)
                .ok_or(DecodeError::UnknownAttribution(raw.attribution))?,
            stack: stack_ref(raw.owner_tgid, raw.stack_id),
            requested: stack_ref(raw.owner_tgid, raw.requested_stack_id),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn packed_endpoints_come_back_unchanged() {
        for (local, remote) in [
            ("127.0.0.1:40000", "10.0.0.1:80"),
            ("[::1]:40000", "[2001:db8::1]:443"),
            ("[::ffff:10.0.0.2]:5000", "[::ffff:10.0.0.1]:80"),
            ("0.0.0.0:0", "0.0.0.0:0"),
        ] {
            let endpoints = Endpoints::parse(local, remote);
            assert_eq!(Endpoints::from(PackedEndpoints::from(endpoints)), endpoints);
        }
        assert!(std::mem::size_of::<PackedEndpoints>() <= 40);
    }

    /// A kernel event as the tracepoint program would send it.
    pub(crate) fn raw_event(old: TcpState, new: TcpState) -> TransitionEvent {
        let mut saddr = [0u8; 16];
        saddr[10..].copy_from_slice(&[0xff, 0xff, 127, 0, 0, 1]);
        let mut daddr = saddr;
        daddr[15] = 2;
        TransitionEvent {
            ts_ns: 42,
            sock_id: 0xffff_8881_0000_1000,
            cookie: 4096,
            owner_tgid: 1234,
            family: AF_INET,
            sport: 40000,
            dport: 8080,
            old_state: old as u8,
            new_state: new as u8,
            attribution: Attribution::ProcessContext as u8,
            _pad: [0; 3],
            stack_id: 7,
            requested_stack_id: 9,
            saddr,
            daddr,
        }
    }

    fn bytes_of(event: &TransitionEvent) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain `#[repr(C)]` value with explicit padding.
        unsafe {
            std::slice::from_raw_parts(
                (event as *const TransitionEvent).cast::<u8>(),
                size_of::<TransitionEvent>(),
            )
            .to_vec()
        }
    }

    #[test]
    fn decodes_an_ipv4_event_from_mapped_addresses() {
        let raw = raw_event(TcpState::Close, TcpState::SynSent);
        let t = Transition::decode(&bytes_of(&raw)).unwrap();
        assert_eq!(t.endpoints.family, Family::Ipv4);
        assert_eq!(t.endpoints.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(t.endpoints.remote, "127.0.0.2:8080".parse().unwrap());
        assert_eq!((t.old, t.new), (TcpState::Close, TcpState::SynSent));
        assert_eq!((t.pid, t.at.as_nanos()), (1234, 42));
        assert_eq!(t.attribution, Attribution::ProcessContext);
        assert_eq!(t.stack, Some(StackRef { pid: 1234, id: 7 }));
        assert_eq!(t.requested, Some(StackRef { pid: 1234, id: 9 }));
        assert_eq!(t.cookie, Some(4096));
        let mut no_stack = raw;
        no_stack.stack_id = probe_common::NO_STACK;
        assert_eq!(Transition::from_event(&no_stack).unwrap().stack, None);
    }

    #[test]
    fn decodes_ipv6_and_keeps_mapped_addresses_of_dual_stack_sockets() {
        let mut raw = raw_event(TcpState::Established, TcpState::CloseWait);
        raw.family = AF_INET6;
        raw.daddr = std::net::Ipv6Addr::LOCALHOST.octets();
        let t = Transition::decode(&bytes_of(&raw)).unwrap();
        assert_eq!(t.endpoints.family, Family::Ipv6);
        assert_eq!(t.endpoints.remote, "[::1]:8080".parse().unwrap());
        assert_eq!(
            t.endpoints.local,
            "[::ffff:127.0.0.1]:40000".parse().unwrap()
        );
    }

    #[test]
    fn rejects_short_and_malformed_records() {
        let raw = raw_event(TcpState::Close, TcpState::SynSent);
        let bytes = bytes_of(&raw);
        assert_eq!(
            Transition::decode(&bytes[..79]),
            Err(DecodeError::TooShort(79))
        );
        let mut bad = raw;
        bad.new_state = 0;
        assert_eq!(
            Transition::from_event(&bad),
            Err(DecodeError::UnknownState(0))
        );
        let mut bad = raw;
        bad.family = 1;
        assert_eq!(
            Transition::from_event(&bad),
            Err(DecodeError::UnknownFamily(1))
        );
        let mut bad = raw;
        bad.attribution = 9;
        assert_eq!(
            Transition::from_event(&bad),
            Err(DecodeError::UnknownAttribution(9))
        );
    }
}
