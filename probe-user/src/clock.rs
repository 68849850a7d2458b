//! Reading the clocks: the monotonic clock the kernel stamps events with, and the wall clock
//! that people read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime};

use crate::track::Timestamp;

/// Now, on the kernel's `bpf_ktime_get_ns()` clock (CLOCK_MONOTONIC).
pub fn monotonic_now() -> Timestamp {
    // CLOCK_MONOTONIC cannot fail on Linux; fall back to zero rather than panic.
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(Duration::ZERO, Duration::from);
    Timestamp::from_nanos(u64::try_from(now.as_nanos()).unwrap_or(u64::MAX))
}

/// Converts kernel timestamps to wall-clock time, from one reading of both clocks.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// Wall-clock time at monotonic zero, in nanoseconds since the Unix epoch.
    epoch_at_zero_ns: i128,
}

impl WallClock {
    /// Reads both clocks now.
    pub fn now() -> WallClock {
        let monotonic = monotonic_now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        WallClock::from_readings(monotonic, wall)
    }

    /// From a monotonic reading and the wall-clock time (since the Unix epoch) taken with it.
    pub fn from_readings(monotonic: Timestamp, wall_since_epoch: Duration) -> WallClock {
        WallClock {
            epoch_at_zero_ns: wall_since_epoch.as_nanos() as i128
                - i128::from(monotonic.as_nanos()),
        }
    }

    /// The wall-clock time of a kernel timestamp.
    pub fn to_system_time(self, at: Timestamp) -> SystemTime {
        let nanos = self.epoch_at_zero_ns + i128::from(at.as_nanos());
        UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos.max(0)).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_kernel_time_to_wall_time() {
        let clock = WallClock::from_readings(
            Timestamp::from_nanos(5_000_000_000),
            Duration::from_secs(1_700_000_000),
        );
        let later = clock.to_system_time(Timestamp::from_nanos(6_500_000_000));
        assert_eq!(
            later.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_millis(1_700_000_001_500)
        );
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_now();
        let b = monotonic_now();
        assert!(b >= a && a.as_nanos() > 0);
    }
}
