//! What the kernel's `tcp_info` says about a connection's use, and sockets found at attach.

use std::{num::NonZeroU64, time::Duration};

use probe_common::TcpState;

use super::{event::Endpoints, time::Timestamp};

/// Recent use of a connection, from `tcp_info`, as sampled at `sampled_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
    pub sampled_at: Timestamp,
    /// Time since data was last sent, at `sampled_at`.
    pub last_data_sent: Duration,
    /// Time since data (or the peer's FIN) was last received, at `sampled_at`.
    pub last_data_received: Duration,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Retransmitted segments over the connection's life.
    pub retransmits: u32,
}

impl Activity {
    /// Time since data last moved either way, as of `now`.
    pub fn idle_at(&self, now: Timestamp) -> Duration {
        self.last_data_sent.min(self.last_data_received) + now.saturating_since(self.sampled_at)
    }
}

/// [`Activity`] in 40 bytes, `Option` included, as the connection table keeps it (tcp_info
/// gives its times in milliseconds, as `u32`, anyway).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedActivity {
    /// When it was sampled, in nanoseconds (0 taken as 1: no sample is taken at the clock's
    /// origin), so that `None` takes no room.
    sampled_at: NonZeroU64,
    last_data_sent_ms: u32,
    last_data_received_ms: u32,
    bytes_acked: u64,
    bytes_received: u64,
    unacked: u32,
    retransmits: u32,
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

impl From<Activity> for PackedActivity {
    fn from(activity: Activity) -> Self {
        PackedActivity {
            sampled_at: NonZeroU64::new(activity.sampled_at.as_nanos()).unwrap_or(NonZeroU64::MIN),
            last_data_sent_ms: millis(activity.last_data_sent),
            last_data_received_ms: millis(activity.last_data_received),
            bytes_acked: activity.bytes_acked,
            bytes_received: activity.bytes_received,
            unacked: activity.unacked,
            retransmits: activity.retransmits,
        }
    }
}

impl From<PackedActivity> for Activity {
    fn from(packed: PackedActivity) -> Self {
        Activity {
            sampled_at: Timestamp::from_nanos(packed.sampled_at.get()),
            last_data_sent: Duration::from_millis(u64::from(packed.last_data_sent_ms)),
            last_data_received: Duration::from_millis(u64::from(packed.last_data_received_ms)),
            bytes_acked: packed.bytes_acked,
            bytes_received: packed.bytes_received,
            unacked: packed.unacked,
            retransmits: packed.retransmits,
        }
    }
}

/// What waits in a socket's queues, as sock_diag reports it at a refresh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Queues {
    /// Bytes received and not yet read by the process; for a listener, the connections waiting
    /// to be accepted.
    pub recv: u32,
    /// Bytes sent and not yet acknowledged; for a listener, its backlog.
    pub send: u32,
    /// The peer advertises a zero window (tcp_info's `snd_wnd` is 0, or zero-window probes are
    /// going out).
    pub zero_window: bool,
    /// For a listener: its network namespace's `ListenOverflows` (connections dropped because
    /// an accept queue was full), where it could be read.
    pub listen_overflows: Option<u64>,
}

/// A TCP socket of a traced process that existed before probe attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingSocket {
    pub pid: u32,
    pub inode: u64,
    /// The socket's cookie, as sock_diag reports it (0 where it does not).
    pub cookie: u64,
    pub state: TcpState,
    pub endpoints: Endpoints,
    pub activity: Option<Activity>,
    /// tcp_info's time since the last ACK arrived, when it was read.
    pub last_ack_received: Option<Duration>,
    /// What waits in its queues.
    pub queues: Queues,
}

impl ExistingSocket {
    /// How long the socket has been in its state at least, as far as tcp_info proves it. A
    /// state entered when a segment arrived (CLOSE_WAIT: the peer's FIN; FIN_WAIT2: the ACK of
    /// ours; ESTABLISHED: the handshake's last segment) was entered no later than the last ACK
    /// that arrived, as every such segment carries one: the time since that ACK is a lower
    /// bound. For the other states nothing proves more than zero.
    pub fn time_in_state_at_least(&self) -> Duration {
        match self.state {
            TcpState::CloseWait | TcpState::FinWait2 | TcpState::Established => {
                self.last_ack_received.unwrap_or_default()
            }
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_time_grows_from_the_sample_and_counts_either_direction() {
        let activity = Activity {
            sampled_at: Timestamp::from_nanos(10_000_000_000),
            last_data_sent: Duration::from_secs(30),
            last_data_received: Duration::from_secs(4),
            bytes_acked: 1,
            bytes_received: 2,
            unacked: 0,
            retransmits: 0,
        };
        assert_eq!(
            activity.idle_at(Timestamp::from_nanos(12_000_000_000)),
            Duration::from_secs(6)
        );
        assert_eq!(Activity::from(PackedActivity::from(activity)), activity);
    }
}
