//! The kernel's TCP socket table through netlink sock_diag (INET_DIAG), with `tcp_info`.

use std::{io, net::SocketAddr, time::Duration};

use netlink_packet_core::{
    DecodeError, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkMessage,
    NetlinkPayload, NlasIterator, Parseable,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, INET_DIAG_INFO},
    inet::{ExtensionFlags, InetResponseBuffer, InetResponseHeader, StateFlags, nlas::TcpInfo},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};
use probe_common::TcpState;

use super::time_wait::{self, INET_DIAG_REQ_BYTECODE, TimeWait};
use crate::{
    clock::monotonic_now,
    track::{Activity, Family, Queues},
};

/// One TCP socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub family: Family,
    pub state: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub inode: u64,
    /// The socket's cookie (`idiag_cookie`): what the BTF program reports for it too.
    pub cookie: u64,
    /// What tcp_info says, sampled when the dump was read.
    pub activity: Option<Activity>,
    /// tcp_info's time since the last ACK arrived, when the dump was read.
    pub last_ack_received: Option<Duration>,
    /// What waits in its queues.
    pub queues: Queues,
}

/// Every TCP socket (IPv4 and IPv6, all states) of the calling thread's network namespace, of
/// those in TIME_WAIT only the ones `time_wait` asks for.
pub fn dump_tcp(time_wait: &TimeWait) -> io::Result<Vec<DiagSocket>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    let mut sockets = Vec::new();
    let mut dump = |states, filter| {
        request(&socket, states, filter)?;
        receive(&socket, &mut sockets)
    };
    match time_wait {
        TimeWait::All => dump(StateFlags::all(), None)?,
        TimeWait::Toward(destinations) => {
            dump(StateFlags::all() - StateFlags::TIME_WAIT, None)?;
            if !destinations.is_empty() {
                dump(
                    StateFlags::TIME_WAIT,
                    Some(&time_wait::bytecode(destinations)),
                )?;
            }
        }
    }
    Ok(sockets)
}

/// `TCPDIAG_GETSOCK` (`linux/inet_diag.h`): the first inet_diag request, which the kernel keeps
/// for compatibility. Unlike `SOCK_DIAG_BY_FAMILY`, which reads one address family per request,
/// it reads IPv4 and IPv6 in one walk of the kernel's socket table, and a walk costs
/// milliseconds even with nothing to show: it visits every bucket of the host-wide hash of
/// connections (about 3 ms here, 262,144 buckets). Its replies carry the same `inet_diag_msg`.
const TCPDIAG_GETSOCK: u16 = 18;
/// `struct nlmsghdr`: length, type, flags, sequence number, port id.
const NLMSG_HEADER_LEN: usize = 16;
/// `struct inet_diag_req`: family, source and destination prefix lengths, extensions (a byte
/// each), the socket id (48 bytes: none for a dump), states, tables (a `u32` each).
const INET_DIAG_REQ_LEN: usize = 60;

/// Asks for the sockets in `states` that `filter` (inet_diag bytecode) keeps, of both families.
/// Written by hand: `netlink-packet-sock-diag` only writes `SOCK_DIAG_BY_FAMILY` requests.
fn request(socket: &Socket, states: StateFlags, filter: Option<&[u8]>) -> io::Result<()> {
    // TIME_WAIT sockets have no tcp_info.
    let extensions = if states == StateFlags::TIME_WAIT {
        ExtensionFlags::empty()
    } else {
        ExtensionFlags::INFO
    };
    // The filter goes in an INET_DIAG_REQ_BYTECODE attribute: its length and type, then the
    // code, a whole number of 4-byte ops.
    let attribute_len = filter.map_or(0, |code| 4 + code.len());
    let message_len = NLMSG_HEADER_LEN + INET_DIAG_REQ_LEN + attribute_len;
    let too_long = || io::Error::other("the TIME_WAIT filter is over 64 KiB");
    let mut buffer = Vec::with_capacity(message_len);
    buffer.extend_from_slice(
        &u32::try_from(message_len)
            .map_err(|_| too_long())?
            .to_ne_bytes(),
    );
    buffer.extend_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    buffer.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    buffer.extend_from_slice(&[0; 8]);
    // The kernel reads both families whatever this says; AF_INET as `ss` writes it.
    buffer.extend_from_slice(&[AF_INET, 0, 0, extensions.bits()]);
    buffer.extend_from_slice(&[0; 48]);
    buffer.extend_from_slice(&states.bits().to_ne_bytes());
    buffer.extend_from_slice(&0u32.to_ne_bytes());
    if let Some(code) = filter {
        let attribute_len = u16::try_from(attribute_len).map_err(|_| too_long())?;
        buffer.extend_from_slice(&attribute_len.to_ne_bytes());
        buffer.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        buffer.extend_from_slice(code);
    }
    socket.send(&buffer, 0)?;
    Ok(())
}

fn receive(socket: &Socket, sockets: &mut Vec<DiagSocket>) -> io::Result<()> {
    let mut buffer = vec![0; 1 << 16];
    loop {
        let size = socket.recv(&mut &mut buffer[..], 0)?;
        let mut offset = 0;
        while offset < size {
            // Each message is read in place, through the crates' buffer views: a whole
            // `NetlinkMessage<SockDiagMessage>` carries every attribute, inline, in a value of
            // about 2 KiB, moved a few times per socket (a third of a refresh at 200,000
            // sockets went to those copies).
            let message = NetlinkBuffer::new_checked(&buffer[offset..size]).map_err(invalid)?;
            let length = message.length() as usize;
            match message.message_type() {
                TCPDIAG_GETSOCK => sockets.extend(convert(message.payload())?),
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    // Rare: read whole, as the crate reads it, for its message.
                    let message =
                        NetlinkMessage::<SockDiagMessage>::deserialize(&buffer[offset..size])
                            .map_err(invalid)?;
                    let error = match message.payload {
                        NetlinkPayload::Error(error) => error.to_string(),
                        other => format!("{other:?}"),
                    };
                    return Err(io::Error::other(format!(
                        "sock_diag refused the dump: {error}"
                    )));
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

fn invalid(error: DecodeError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

/// One `inet_diag_msg` and its attributes, of which only `tcp_info` is read.
fn convert(payload: &[u8]) -> io::Result<Option<DiagSocket>> {
    let header = InetResponseHeader::parse(payload).map_err(invalid)?;
    let attributes = payload
        .get(size_of::<InetResponseBuffer>()..)
        .unwrap_or_default();
    let mut info = None;
    for attribute in NlasIterator::new(attributes) {
        let attribute = attribute.map_err(invalid)?;
        if attribute.kind() == INET_DIAG_INFO {
            info = Some(TcpInfo::parse(attribute.value()).map_err(invalid)?);
            break;
        }
    }
    Ok(socket_of(&header, info.as_ref()))
}

fn socket_of(header: &InetResponseHeader, info: Option<&TcpInfo>) -> Option<DiagSocket> {
    let id = &header.socket_id;
    let family = if header.family == AF_INET {
        Family::Ipv4
    } else {
        Family::Ipv6
    };
    let last_ack_received = info.map(|info| Duration::from_millis(u64::from(info.last_ack_recv)));
    let state = TcpState::from_raw(header.state)?;
    // Before the handshake completes no data has moved, and tcp_info's "time since the last
    // data" counts from boot; a listener's tcp_info stops after its accept queue. Neither has
    // an activity to report.
    let carries_data = !matches!(
        state,
        TcpState::Listen | TcpState::SynSent | TcpState::SynRecv
    );
    let activity = info.filter(|_| carries_data).map(|info| Activity {
        sampled_at: monotonic_now(),
        last_data_sent: Duration::from_millis(u64::from(info.last_data_sent)),
        last_data_received: Duration::from_millis(u64::from(info.last_data_recv)),
        bytes_acked: info.bytes_acked,
        bytes_received: info.bytes_received,
        unacked: info.unacked,
        retransmits: info.total_retrans,
    });
    Some(DiagSocket {
        family,
        state,
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        inode: u64::from(header.inode),
        cookie: cookie_of(&id.cookie),
        activity,
        last_ack_received,
        queues: Queues {
            recv: header.recv_queue,
            send: header.send_queue,
            zero_window: info.is_some_and(|info| info.snd_wnd == 0 || info.probes > 0),
            listen_overflows: None,
        },
    })
}

/// `idiag_cookie` is two native-endian `u32`s, the low half first.
fn cookie_of(bytes: &[u8; 8]) -> u64 {
    let half = |at: usize| {
        u64::from(u32::from_ne_bytes([
            bytes[at],
            bytes[at + 1],
            bytes[at + 2],
            bytes[at + 3],
        ]))
    };
    half(0) | (half(4) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn finds_a_loopback_connection_with_its_tcp_info() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let sockets = dump_tcp(&TimeWait::All).unwrap();
        // Both ends: a TIME_WAIT socket of an earlier connection may hold the same local port.
        let (local, remote) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        let found = sockets
            .iter()
            .find(|s| s.local == local && s.remote == remote)
            .expect("the client socket is in the dump");
        assert_eq!(found.state, TcpState::Established);
        assert_eq!(found.remote, listener.local_addr().unwrap());
        assert_eq!(found.family, Family::Ipv4);
        assert!(found.inode > 0);
        assert!(found.cookie > 0);
        assert!(found.activity.is_some(), "tcp_info is missing");
        let listening = sockets
            .iter()
            .find(|s| s.state == TcpState::Listen && s.local == listener.local_addr().unwrap())
            .expect("the listener is in the dump");
        assert!(
            listening.activity.is_none(),
            "a listener has no data activity to report"
        );
    }

    /// What tcp_info and the message's header say of a connection whose data waits unread:
    /// the queue, the bytes received, the time since the last ACK.
    #[test]
    fn reads_the_queue_and_tcp_info_of_data_nobody_reads() {
        use std::io::Write;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(&[7; 10_000]).unwrap();
        let (local, remote) = (server.local_addr().unwrap(), server.peer_addr().unwrap());
        // Loopback delivers at once; the kernel's view is read until it shows the bytes.
        let found = (0..100)
            .find_map(|_| {
                let socket = dump_tcp(&TimeWait::All)
                    .unwrap()
                    .into_iter()
                    .find(|s| s.local == local && s.remote == remote)
                    .filter(|s| s.queues.recv == 10_000);
                if socket.is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                socket
            })
            .expect("the server's socket shows 10,000 bytes waiting");
        let activity = found.activity.expect("tcp_info");
        assert_eq!(activity.bytes_received, 10_000);
        assert_eq!(activity.bytes_acked, 0, "the server sent nothing");
        assert!(activity.last_data_received < Duration::from_secs(5));
        assert!(found.last_ack_received.is_some());
        assert_eq!(found.queues.send, 0);
        assert!(!found.queues.zero_window);
    }

    /// Leaves `count` client sockets toward a new listener on `address` in TIME_WAIT (they close
    /// first, the server then); returns the listener's address once `ss` shows them all.
    fn time_wait_toward(address: &str, count: usize) -> SocketAddr {
        use std::io::Read;
        let listener = TcpListener::bind(address).unwrap();
        let destination = listener.local_addr().unwrap();
        for _ in 0..count {
            let client = TcpStream::connect(destination).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            drop(client);
            assert_eq!(server.read(&mut [0; 1]).unwrap(), 0);
        }
        let shown = (0..100).find(|_| {
            std::thread::sleep(Duration::from_millis(20));
            ss_time_wait_toward(destination) == count
        });
        assert!(
            shown.is_some(),
            "ss shows {count} TIME_WAIT sockets toward {destination}"
        );
        destination
    }

    /// How many TIME_WAIT sockets `ss` shows toward `destination`.
    fn ss_time_wait_toward(destination: SocketAddr) -> usize {
        let output = std::process::Command::new("ss")
            .args([
                "-Htn",
                "state",
                "time-wait",
                "dst",
                &destination.to_string(),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).lines().count()
    }

    #[test]
    fn a_dump_reads_time_wait_sockets_toward_the_destinations_asked_only() {
        let first = time_wait_toward("127.0.0.1:0", 3);
        let other = time_wait_toward("127.0.0.1:0", 2);
        let over_ipv6 = time_wait_toward("[::1]:0", 4);
        let toward = |sockets: &[DiagSocket], destination| {
            sockets
                .iter()
                .filter(|s| s.state == TcpState::TimeWait && s.remote == destination)
                .count()
        };
        let filtered = dump_tcp(&TimeWait::Toward(vec![first, over_ipv6])).unwrap();
        assert_eq!(toward(&filtered, first), ss_time_wait_toward(first));
        assert_eq!(toward(&filtered, over_ipv6), ss_time_wait_toward(over_ipv6));
        assert_eq!(toward(&filtered, other), 0);
        assert!(
            filtered
                .iter()
                .filter(|s| s.state == TcpState::TimeWait)
                .all(|s| s.remote == first || s.remote == over_ipv6)
        );
        let all = dump_tcp(&TimeWait::All).unwrap();
        assert_eq!(toward(&all, other), ss_time_wait_toward(other));
        let none = dump_tcp(&TimeWait::Toward(Vec::new())).unwrap();
        assert!(!none.iter().any(|s| s.state == TcpState::TimeWait));
        // The sockets in other states are all there, whatever the filter.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let server_end = (server.local_addr().unwrap(), server.peer_addr().unwrap());
        let none = dump_tcp(&TimeWait::Toward(Vec::new())).unwrap();
        assert!(
            none.iter()
                .any(|s| s.state == TcpState::Listen && s.local == listener.local_addr().unwrap())
        );
        assert!(none.iter().any(|s| (s.local, s.remote) == server_end));
    }
}
