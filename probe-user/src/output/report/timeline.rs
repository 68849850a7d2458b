//! Open connections per state over time, sampled once a tick, with a bounded number of samples:
//! when full, every other sample goes and the sampling interval doubles, so a run of any length
//! keeps its whole shape.

use std::collections::BTreeMap;

use probe_common::TcpState;

use crate::track::Timestamp;

/// Samples kept at most.
const MAX_SAMPLES: usize = 2048;

/// Counts per state, indexed by the state's kernel number.
pub type StateCounts = [u32; 16];

/// One sample: when, and how many open connections in each state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub at: Timestamp,
    pub counts: StateCounts,
}

impl Sample {
    /// How many connections were open in `state`.
    pub fn count(&self, state: TcpState) -> u32 {
        self.counts[state as usize]
    }
}

/// The samples of one run.
#[derive(Debug, Default)]
pub struct Timeline {
    samples: Vec<Sample>,
    /// Keep one tick out of this many.
    stride: u64,
    ticks: u64,
}

impl Timeline {
    /// Records the table as of `at` (or skips it, once the timeline has thinned out).
    pub fn record(&mut self, at: Timestamp, open: &BTreeMap<TcpState, usize>) {
        let stride = self.stride.max(1);
        self.ticks += 1;
        if !(self.ticks - 1).is_multiple_of(stride) {
            return;
        }
        let mut counts = StateCounts::default();
        for (state, count) in open {
            counts[*state as usize] = u32::try_from(*count).unwrap_or(u32::MAX);
        }
        self.samples.push(Sample { at, counts });
        if self.samples.len() >= MAX_SAMPLES {
            let mut index = 0;
            self.samples.retain(|_| {
                index += 1;
                index % 2 == 1
            });
            self.stride = stride * 2;
        }
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The states that had an open connection at some point, in the order they are shown.
    pub fn states_seen(&self) -> Vec<TcpState> {
        let mut states: Vec<TcpState> = TcpState::ALL
            .into_iter()
            .filter(|state| self.samples.iter().any(|s| s.count(*state) > 0))
            .collect();
        states.sort_by_key(|state| crate::track::summary::state_rank(*state));
        states
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with(close_wait: usize) -> BTreeMap<TcpState, usize> {
        BTreeMap::from([(TcpState::CloseWait, close_wait), (TcpState::Listen, 0)])
    }

    #[test]
    fn thins_out_instead_of_growing() {
        let mut timeline = Timeline::default();
        for tick in 0..(MAX_SAMPLES as u64 * 4) {
            timeline.record(Timestamp::from_nanos(tick), &table_with(tick as usize));
        }
        let samples = timeline.samples();
        assert!(samples.len() < MAX_SAMPLES && samples.len() >= MAX_SAMPLES / 4);
        // Still the whole run, in order, evenly spaced.
        assert_eq!(samples[0].at, Timestamp::from_nanos(0));
        assert!(samples.last().unwrap().at.as_nanos() >= MAX_SAMPLES as u64 * 3);
        let gaps: Vec<u64> = samples
            .windows(2)
            .map(|w| w[1].at.as_nanos() - w[0].at.as_nanos())
            .collect();
        assert!(gaps.iter().all(|gap| *gap == gaps[0]), "{gaps:?}");
        assert_eq!(
            samples[5].count(TcpState::CloseWait) as u64,
            samples[5].at.as_nanos()
        );
        assert_eq!(timeline.states_seen(), [TcpState::CloseWait]);
    }
}
