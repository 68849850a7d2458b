//! Which TIME_WAIT sockets a dump reads. They belong to no process and only take ephemeral ports
//! (counted for the port forecast), yet a churning client leaves tens of thousands of them, most
//! of what a dump costs: a dump reads only those toward the destinations the traced processes
//! connect to, picked out by the kernel with an `INET_DIAG_REQ_BYTECODE` filter.
//!
//! The filter is encoded here by hand: no maintained crate writes inet_diag bytecode
//! (`netlink-packet-sock-diag` has no `INET_DIAG_REQ_BYTECODE`), and its layout is a handful of
//! fixed-size structs from `linux/inet_diag.h`.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6};

/// Which TIME_WAIT sockets a dump reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimeWait {
    /// Every one of them.
    All,
    /// Only those toward these destinations (none at all when empty): at most about 2,000
    /// (see [`bytecode`]; the tracker lists 64 at most).
    Toward(Vec<SocketAddr>),
}

/// `INET_DIAG_REQ_BYTECODE`: the request attribute that carries a filter.
pub(super) const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// `INET_DIAG_BC_JMP`: always jumps by `no`.
const BC_JMP: u8 = 1;
/// `INET_DIAG_BC_D_COND`: the remote address (by prefix) and port match a `hostcond`.
const BC_D_COND: u8 = 8;
/// `struct inet_diag_bc_op`: code, yes (u8), no (u16).
const OP_LEN: usize = 4;
/// `struct inet_diag_hostcond` before its address: family, prefix length, 2 bytes of padding,
/// port (an `int`, -1 for any).
const HOSTCOND_LEN: usize = 8;

/// The filter that keeps the sockets whose remote end is one of `destinations` (at most about
/// 2,000: jumps are 16 bits). The kernel runs it from the first op: a condition that holds goes
/// on by `yes` bytes, one that fails jumps by `no`, and a socket is kept when the run ends exactly
/// at the end. Each destination is a condition followed by a jump to the end (kept); a failed
/// condition skips its jump, on to the next destination's; the last one's `yes` is the end and
/// its `no` beyond it (dropped). The kernel checks a filter by following `yes` through every op,
/// so the jump's `yes` is the next op.
///
/// An IPv4 destination also matches the IPv4-mapped address of an IPv6 socket (the kernel
/// compares those), so one filter serves both families.
pub(super) fn bytecode(destinations: &[SocketAddr]) -> Vec<u8> {
    let conditions: Vec<Vec<u8>> = destinations.iter().map(|d| condition(*d)).collect();
    let total = conditions.iter().map(Vec::len).sum::<usize>()
        + OP_LEN * conditions.len().saturating_sub(1);
    let mut code = Vec::with_capacity(total);
    for (index, condition) in conditions.iter().enumerate() {
        code.extend_from_slice(condition);
        if index + 1 < conditions.len() {
            let to_end = total - code.len();
            code.extend_from_slice(&op(BC_JMP, OP_LEN, to_end));
        }
    }
    code
}

/// One `D_COND` op with its `hostcond`: `yes` on to the next op, `no` past it and the jump that
/// follows it.
fn condition(destination: SocketAddr) -> Vec<u8> {
    let (family, address) = match destination.ip().to_canonical() {
        IpAddr::V4(v4) => (AF_INET, v4.octets().to_vec()),
        IpAddr::V6(v6) => (AF_INET6, v6.octets().to_vec()),
    };
    let len = OP_LEN + HOSTCOND_LEN + address.len();
    let mut code = op(BC_D_COND, len, len + OP_LEN).to_vec();
    let prefix_bits = u8::try_from(address.len() * 8).expect("an address is at most 128 bits");
    code.extend_from_slice(&[family, prefix_bits, 0, 0]);
    code.extend_from_slice(&i32::from(destination.port()).to_ne_bytes());
    code.extend_from_slice(&address);
    code
}

/// `struct inet_diag_bc_op { u8 code; u8 yes; u16 no; }`, native-endian.
fn op(code: u8, yes: usize, no: usize) -> [u8; OP_LEN] {
    let yes = u8::try_from(yes).expect("an op with its condition is under 256 bytes");
    let no = u16::try_from(no)
        .expect("the filter is under 64 KiB")
        .to_ne_bytes();
    [code, yes, no[0], no[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_destination_is_a_condition_then_a_jump_to_the_end() {
        let v4: SocketAddr = "10.0.3.7:5432".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let code = bytecode(&[v4, v6]);
        // 16 + 4 (jump) + 28.
        assert_eq!(code.len(), 48);
        // 10.0.3.7:5432: yes on to the jump, no past it to the next condition.
        assert_eq!(code[..4], op(BC_D_COND, 16, 20));
        assert_eq!(code[4..8], [AF_INET, 32, 0, 0]);
        assert_eq!(code[8..12], 5432i32.to_ne_bytes());
        assert_eq!(code[12..16], [10, 0, 3, 7]);
        // The jump: to the end, 32 bytes on from its own start.
        assert_eq!(code[16..20], op(BC_JMP, 4, 32));
        // The last condition: yes is the end, no beyond it.
        assert_eq!(code[20..24], op(BC_D_COND, 28, 32));
        assert_eq!(code[24..28], [AF_INET6, 128, 0, 0]);
        assert_eq!(code[28..32], 443i32.to_ne_bytes());
        let IpAddr::V6(address) = v6.ip() else {
            unreachable!("an IPv6 address")
        };
        assert_eq!(code[32..], address.octets());
    }

    #[test]
    fn an_ipv4_mapped_destination_is_written_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:80".parse().unwrap();
        assert_eq!(
            bytecode(&[mapped]),
            bytecode(&["127.0.0.1:80".parse().unwrap()])
        );
    }

    #[test]
    fn no_destination_is_no_code() {
        assert!(bytecode(&[]).is_empty());
    }
}
