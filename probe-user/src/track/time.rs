//! Kernel timestamps.

use std::time::Duration;

/// A point in time as the kernel's `bpf_ktime_get_ns()` gives it: CLOCK_MONOTONIC nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The timestamp `nanos` nanoseconds after the monotonic clock's origin.
    pub const fn from_nanos(nanos: u64) -> Self {
        Timestamp(nanos)
    }

    /// Nanoseconds since the monotonic clock's origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`; zero if `earlier` is later (events from different
    /// CPUs can arrive a few nanoseconds out of order, and an age is never negative).
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// The timestamp `duration` earlier, saturating at the clock's origin.
    pub fn saturating_sub(self, duration: Duration) -> Timestamp {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_sub(nanos))
    }

    /// The timestamp `duration` later, saturating at the end of time.
    pub fn saturating_add(self, duration: Duration) -> Timestamp {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_never_go_negative() {
        let early = Timestamp::from_nanos(10);
        let late = Timestamp::from_nanos(1_000_000_010);
        assert_eq!(late.saturating_since(early), Duration::from_secs(1));
        assert_eq!(early.saturating_since(late), Duration::ZERO);
    }

    #[test]
    fn adding_saturates() {
        let t = Timestamp::from_nanos(u64::MAX - 1);
        assert_eq!(
            t.saturating_add(Duration::from_secs(5)).as_nanos(),
            u64::MAX
        );
        assert_eq!(
            Timestamp::from_nanos(1).saturating_add(Duration::from_nanos(2)),
            Timestamp::from_nanos(3)
        );
        assert_eq!(
            Timestamp::from_nanos(5).saturating_sub(Duration::from_nanos(9)),
            Timestamp::from_nanos(0)
        );
    }
}
