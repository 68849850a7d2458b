//! What a stuck connection means, in plain words, and what usually fixes it: one kind per way
//! a connection gets stuck.

use std::borrow::Cow;

use probe_common::TcpState;

use super::protocol::Protocol;

/// Why a connection is stuck.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Diagnosis {
    /// CLOSE_WAIT for too long: the peer closed, this process did not.
    PeerClosedNeverClosedLocally,
    /// ESTABLISHED and idle for too long.
    OpenAndUnused,
    /// SYN_SENT for too long: nothing answers the connect.
    ConnectUnanswered,
    /// SYN_RECV for too long: the client never finished the handshake.
    HandshakeUnfinished,
    /// FIN_WAIT1 for too long: this side's FIN is never acknowledged.
    FinUnacknowledged,
    /// FIN_WAIT2 for too long: this side shut down its half, the peer never closes its own.
    PeerNeverClosed,
    /// CLOSING for too long: both FINs crossed, the last ACK never came.
    ClosingUnacknowledged,
    /// LAST_ACK for too long: the peer never acknowledged this side's FIN.
    LastAckUnacknowledged,
    /// Data waits in the receive queue and this process does not read it.
    ReceiveStalled,
    /// Data waits to be sent and the peer's window is closed: the peer does not read.
    SendStalled,
    /// A listener's accept queue is full: the process does not accept.
    AcceptQueueFull,
}

impl Diagnosis {
    /// Every kind, in the order outputs list them.
    pub const ALL: [Diagnosis; 11] = [
        Diagnosis::PeerClosedNeverClosedLocally,
        Diagnosis::OpenAndUnused,
        Diagnosis::ConnectUnanswered,
        Diagnosis::HandshakeUnfinished,
        Diagnosis::FinUnacknowledged,
        Diagnosis::PeerNeverClosed,
        Diagnosis::ClosingUnacknowledged,
        Diagnosis::LastAckUnacknowledged,
        Diagnosis::ReceiveStalled,
        Diagnosis::SendStalled,
        Diagnosis::AcceptQueueFull,
    ];

    /// The kind a connection stuck in `state` has, by time in the state alone.
    pub const fn for_state(state: TcpState) -> Option<Diagnosis> {
        Some(match state {
            TcpState::CloseWait => Diagnosis::PeerClosedNeverClosedLocally,
            TcpState::Established => Diagnosis::OpenAndUnused,
            TcpState::SynSent => Diagnosis::ConnectUnanswered,
            TcpState::SynRecv => Diagnosis::HandshakeUnfinished,
            TcpState::FinWait1 => Diagnosis::FinUnacknowledged,
            TcpState::FinWait2 => Diagnosis::PeerNeverClosed,
            TcpState::Closing => Diagnosis::ClosingUnacknowledged,
            TcpState::LastAck => Diagnosis::LastAckUnacknowledged,
            _ => return None,
        })
    }

    /// The name outputs key it by: the state for the kinds that are a time in a state,
    /// `RECEIVE_STALLED`, `SEND_STALLED` and `ACCEPT_QUEUE_FULL` for the others.
    pub const fn key(self) -> &'static str {
        match self {
            Diagnosis::PeerClosedNeverClosedLocally => "CLOSE_WAIT",
            Diagnosis::OpenAndUnused => "ESTABLISHED",
            Diagnosis::ConnectUnanswered => "SYN_SENT",
            Diagnosis::HandshakeUnfinished => "SYN_RECV",
            Diagnosis::FinUnacknowledged => "FIN_WAIT1",
            Diagnosis::PeerNeverClosed => "FIN_WAIT2",
            Diagnosis::ClosingUnacknowledged => "CLOSING",
            Diagnosis::LastAckUnacknowledged => "LAST_ACK",
            Diagnosis::ReceiveStalled => "RECEIVE_STALLED",
            Diagnosis::SendStalled => "SEND_STALLED",
            Diagnosis::AcceptQueueFull => "ACCEPT_QUEUE_FULL",
        }
    }

    /// The kind named `key` (as [`Diagnosis::key`] gives it), for the command line.
    pub fn from_key(key: &str) -> Option<Diagnosis> {
        Diagnosis::ALL.into_iter().find(|kind| kind.key() == key)
    }

    /// One line for a human.
    pub const fn reason(self) -> &'static str {
        match self {
            Diagnosis::PeerClosedNeverClosedLocally => {
                "the peer closed the connection, but this process never closed its socket \
                 (a missing close(): the code that opened it never lets it go)"
            }
            Diagnosis::OpenAndUnused => {
                "open and unused for a long time: an idle keep-alive pool, or a leaked client \
                 that is never reused nor closed"
            }
            Diagnosis::ConnectUnanswered => {
                "connect() has had no answer yet: the destination drops the SYNs (a firewall, a \
                 dead host, a black-holed route); the kernel retries for about 2 minutes unless \
                 the client gives up sooner"
            }
            Diagnosis::HandshakeUnfinished => {
                "a client started a connection to this listener and never finished the \
                 handshake: it vanished, or its ACKs are dropped on the way"
            }
            Diagnosis::FinUnacknowledged => {
                "this side closed, but the peer never acknowledges its FIN: the peer vanished \
                 (crashed, unplugged, firewalled), or its receive window is closed"
            }
            Diagnosis::PeerNeverClosed => {
                "this side shut down its half, and the peer never closes its own; the kernel's \
                 FIN_WAIT2 timeout only applies to sockets no process holds, so this one stays"
            }
            Diagnosis::ClosingUnacknowledged => {
                "both sides closed at once, and the peer never acknowledges this side's FIN: it \
                 vanished before the exchange ended"
            }
            Diagnosis::LastAckUnacknowledged => {
                "the peer closed, this side closed too, and the peer never acknowledges the last \
                 FIN: it vanished (crashed, unplugged, firewalled)"
            }
            Diagnosis::ReceiveStalled => {
                "data waits in the receive queue and this process does not read it: it is \
                 blocked, busy elsewhere, or forgot the connection"
            }
            Diagnosis::SendStalled => {
                "data waits to be sent and the peer advertises a zero window: the peer (or \
                 whatever it feeds) stopped reading"
            }
            Diagnosis::AcceptQueueFull => {
                "this listener's accept queue is full: the process stopped accepting, and the \
                 kernel drops new connections before they become sockets (ListenOverflows)"
            }
        }
    }

    /// [`Diagnosis::reason`], in the words of `protocol` where they differ (a CLOSE_WAIT
    /// PostgreSQL connection is one never returned to its pool).
    pub fn reason_for(self, protocol: Protocol) -> Cow<'static, str> {
        match (self, close_wait_example(protocol)) {
            (Diagnosis::PeerClosedNeverClosedLocally, Some(example)) => Cow::Owned(format!(
                "the peer closed the connection, but this process never closed its socket \
                 (a missing close(): e.g. {example})"
            )),
            _ => Cow::Borrowed(self.reason()),
        }
    }

    /// [`Diagnosis::fix`], in the words of `protocol` where they differ.
    pub fn fix_for(self, protocol: Protocol) -> &'static str {
        match (self, protocol) {
            (Diagnosis::PeerClosedNeverClosedLocally, Protocol::Http) => {
                "Close every socket once the peer is done with it. In an HTTP client, always \
                 close (and drain) the response body, on error paths too (Go: defer \
                 resp.Body.Close(); Python requests: a `with` block or response.close()), and \
                 share one client instead of creating one per request (Go: one http.Client and \
                 Transport for the whole program; requests: one Session). After the fix, this \
                 side closes first: FIN_WAIT and TIME_WAIT instead of CLOSE_WAIT."
            }
            (Diagnosis::PeerClosedNeverClosedLocally, Protocol::Postgres | Protocol::Mysql) => {
                "Return every connection to its pool, or close it, on every path (error paths \
                 too: a `with` block, try/finally, defer), and close cursors and result sets. \
                 Give the pool a client-side idle timeout and a maximum lifetime below the \
                 server's (PostgreSQL idle_session_timeout, MySQL wait_timeout, a proxy's), so \
                 that it drops idle connections before the server does."
            }
            (Diagnosis::PeerClosedNeverClosedLocally, Protocol::Redis | Protocol::Memcached) => {
                "Make one client (with its connection pool) for the whole program instead of one \
                 per request, and close the clients you make. Keep the client's idle timeout \
                 below the server's (Redis `timeout`), or check connections before use \
                 (redis-py: health_check_interval)."
            }
            (
                Diagnosis::PeerClosedNeverClosedLocally,
                Protocol::MongoDb | Protocol::Kafka | Protocol::Grpc,
            ) => {
                "Make one client (MongoClient, producer or consumer, gRPC channel) for the whole \
                 program instead of one per request, and close it when done, on error paths \
                 too."
            }
            _ => self.fix(),
        }
    }

    /// The same, said of a group of connections.
    pub const fn group_reason(self) -> &'static str {
        match self {
            Diagnosis::PeerClosedNeverClosedLocally => {
                "the peer closed them and this process never called close()"
            }
            Diagnosis::OpenAndUnused => "they sit open and unused, never reused nor closed",
            Diagnosis::ConnectUnanswered => "nothing answers their connects",
            Diagnosis::HandshakeUnfinished => "their clients never finished the handshake",
            Diagnosis::FinUnacknowledged => "the peer never acknowledges their FIN",
            Diagnosis::PeerNeverClosed => "this side shut them down and the peer never closes",
            Diagnosis::ClosingUnacknowledged => "their closing exchange never finishes",
            Diagnosis::LastAckUnacknowledged => "the peer never acknowledges their last FIN",
            Diagnosis::ReceiveStalled => "data waits in them and this process does not read it",
            Diagnosis::SendStalled => "the peer stopped reading what they send",
            Diagnosis::AcceptQueueFull => "this process stopped accepting connections",
        }
    }

    /// What usually fixes it, for the incident report.
    pub const fn fix(self) -> &'static str {
        match self {
            Diagnosis::PeerClosedNeverClosedLocally => {
                "Close every socket once the peer is done with it, on error paths too, and \
                 reuse clients instead of making one per request. After the fix, this side \
                 closes first: FIN_WAIT and TIME_WAIT instead of CLOSE_WAIT."
            }
            Diagnosis::OpenAndUnused => {
                "Reuse connections or let them go. Share one client with a bounded idle pool \
                 (Go: one http.Transport with IdleConnTimeout and MaxIdleConnsPerHost), close \
                 clients and pools you create, or turn keep-alive off where connections are \
                 never reused (Go: DisableKeepAlives)."
            }
            Diagnosis::ConnectUnanswered => {
                "Give every connect a timeout of its own (Go: net.Dialer{Timeout}; Java: \
                 connectTimeout; curl: --connect-timeout) so that callers fail fast instead of \
                 piling up, and find why the destination is unreachable: a firewall dropping \
                 SYNs, a dead host, a wrong route (the kernel retries tcp_syn_retries times)."
            }
            Diagnosis::HandshakeUnfinished => {
                "Usually the network's doing, not this process's: check the path back to the \
                 clients (asymmetric routes, dropped ACKs). A flood of these is a SYN flood: \
                 net.ipv4.tcp_syncookies protects the listener."
            }
            Diagnosis::FinUnacknowledged => {
                "The kernel keeps retrying the FIN (tcp_orphan_retries once no process holds \
                 the socket). Find what happened to the peer; for sockets this process keeps, \
                 close with a timeout (SO_LINGER) rather than wait for the peer forever."
            }
            Diagnosis::PeerNeverClosed => {
                "After shutdown(SHUT_WR), read until the peer's EOF with a timeout, then close(); \
                 a held socket never times out in FIN_WAIT2. Or fix the peer, which keeps its \
                 half open (it never reads our EOF, or never closes)."
            }
            Diagnosis::ClosingUnacknowledged => {
                "Nothing in this process: the kernel retries and gives up. Check the path to \
                 the peer, which vanished while both sides were closing."
            }
            Diagnosis::LastAckUnacknowledged => {
                "Nothing in this process: it closed as it should, the kernel retries the FIN and \
                 gives up after tcp_orphan_retries. Check the path to the peer."
            }
            Diagnosis::ReceiveStalled => {
                "Find the thread that owns the connection and why it stopped reading (a lock, a \
                 full downstream queue, a forgotten response). Read (and drain) every response; \
                 give reads and the work behind them timeouts."
            }
            Diagnosis::SendStalled => {
                "The peer stopped reading: find why (it is blocked, overloaded, or gone without \
                 closing). Give writes a timeout (SO_SNDTIMEO, a deadline) so that this process \
                 does not block behind it, and bound what it queues for that peer."
            }
            Diagnosis::AcceptQueueFull => {
                "Accept faster: more accepting threads or workers, no blocking work in the \
                 accept loop. Raise the backlog (the listen() argument, capped by \
                 net.core.somaxconn) only to absorb bursts: a full queue that never drains is a \
                 stuck accept loop."
            }
        }
    }
}

/// What a CLOSE_WAIT connection of `protocol` usually is, for [`Diagnosis::reason_for`].
const fn close_wait_example(protocol: Protocol) -> Option<&'static str> {
    Some(match protocol {
        Protocol::Http => "an HTTP response body never closed",
        Protocol::Postgres => {
            "a PostgreSQL connection never returned to its pool nor closed, which the server \
             ended"
        }
        Protocol::Mysql => {
            "a MySQL connection never returned to its pool nor closed, which the server ended"
        }
        Protocol::Redis => "a Redis client made per request and never closed",
        Protocol::Memcached => "a Memcached client made per request and never closed",
        Protocol::MongoDb => "a MongoDB client made per request and never closed",
        Protocol::Kafka => "a Kafka producer or consumer never closed",
        Protocol::Grpc => "a gRPC channel never closed",
        Protocol::Unknown => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unanswered_connect_is_not_blamed_on_a_missing_timeout() {
        // At 2 s in SYN_SENT (`curl -m 30` included) probe cannot know whether the client set
        // a timeout: the words say what is known, no answer yet, and what the kernel does.
        let reason = Diagnosis::ConnectUnanswered.reason();
        assert!(reason.contains("no answer yet"), "{reason}");
        assert!(!reason.contains("without a timeout"), "{reason}");
    }

    #[test]
    fn a_close_wait_is_said_in_the_words_of_its_protocol() {
        let close_wait = Diagnosis::PeerClosedNeverClosedLocally;
        let http = close_wait.reason_for(Protocol::Http);
        let postgres = close_wait.reason_for(Protocol::Postgres);
        let redis = close_wait.reason_for(Protocol::Redis);
        assert!(http.contains("HTTP response body"), "{http}");
        assert!(
            postgres.contains("PostgreSQL") && postgres.contains("pool"),
            "{postgres}"
        );
        assert!(redis.contains("Redis client"), "{redis}");
        let neutral = close_wait.reason_for(Protocol::Unknown);
        assert!(!neutral.contains("HTTP"), "{neutral}");
        assert!(close_wait.fix_for(Protocol::Postgres).contains("pool"));
        assert!(!close_wait.fix_for(Protocol::Redis).contains("resp.Body"));
        assert!(
            close_wait
                .fix_for(Protocol::Http)
                .contains("resp.Body.Close()")
        );
    }

    #[test]
    fn every_kind_has_a_key_that_names_it_back() {
        for kind in Diagnosis::ALL {
            assert_eq!(Diagnosis::from_key(kind.key()), Some(kind));
            assert!(!kind.reason().is_empty() && !kind.fix().is_empty());
        }
        assert_eq!(Diagnosis::for_state(TcpState::Listen), None);
        assert_eq!(
            Diagnosis::for_state(TcpState::SynSent),
            Some(Diagnosis::ConnectUnanswered)
        );
    }
}
