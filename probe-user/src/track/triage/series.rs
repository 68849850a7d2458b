//! A quantity sampled over a run, and how fast it grows: the Theil–Sen slope (the median of the
//! slopes between every two samples), which a few outliers (a burst, a pause) cannot swing the
//! way they swing a least-squares line, let alone a line through two points.

use crate::track::time::Timestamp;

/// Samples kept per series: when full, every other one goes, so the series always spans the
/// whole run, more coarsely as it gets longer.
const CAPACITY: usize = 64;

/// Samples of one quantity, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// (seconds since boot, value).
    points: Vec<(f64, f64)>,
    /// Keep every `stride`-th sample from now on (doubles at each thinning).
    stride: u32,
    /// Samples seen since the last one kept.
    skipped: u32,
}

impl Series {
    /// Adds the value at `at`.
    pub fn push(&mut self, at: Timestamp, value: f64) {
        let stride = self.stride.max(1);
        self.skipped += 1;
        if self.skipped < stride && !self.points.is_empty() {
            // The newest sample always replaces the last kept one between strides, so the
            // series ends at the present.
            if let Some(last) = self.points.last_mut() {
                *last = (seconds(at), value);
            }
            return;
        }
        self.skipped = 0;
        if self.points.len() == CAPACITY {
            let mut index = 0;
            self.points.retain(|_| {
                index += 1;
                index % 2 == 1
            });
            self.stride = stride * 2;
        }
        self.points.push((seconds(at), value));
    }

    /// The latest value.
    pub fn last(&self) -> Option<f64> {
        self.points.last().map(|&(_, value)| value)
    }

    /// Seconds from the latest sample to `now` (0 without samples, or with `now` before it).
    pub fn seconds_since_last(&self, now: Timestamp) -> f64 {
        self.points
            .last()
            .map_or(0.0, |&(at, _)| (seconds(now) - at).max(0.0))
    }

    /// When the first sample was taken.
    pub fn first_at(&self) -> Option<f64> {
        self.points.first().map(|&(at, _)| at)
    }

    /// Growth per second, by Theil–Sen; `None` with fewer than three samples (two points make
    /// a line, not a trend).
    pub fn slope_per_second(&self) -> Option<f64> {
        theil_sen(&self.points)
    }

    /// Growth that goes on: a positive slope over the run, and growth within its latest
    /// third of readings (at least three: a burst that stopped shows flat readings since),
    /// with the readings it rests on and the time they span. `None` where the quantity is not
    /// growing that way.
    pub fn sustained_growth(&self) -> Option<Growth> {
        let per_second = self.slope_per_second().filter(|slope| *slope > 1e-9)?;
        let recent = &self.points[self.points.len() - (self.points.len() / 3).max(3)..];
        let (first, last) = (recent.first()?, recent.last()?);
        if last.1 <= first.1 {
            return None;
        }
        let span = self.points.last()?.0 - self.points.first()?.0;
        Some(Growth {
            per_second,
            samples: self.points.len(),
            span_seconds: span.max(0.0),
        })
    }
}

/// A growth rate and what it rests on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Growth {
    pub per_second: f64,
    /// How many samples it was read from (the series keeps at most 64, thinned evenly).
    pub samples: usize,
    /// The time from the first of them to the last.
    pub span_seconds: f64,
}

/// The Theil–Sen slope of `points`; `None` with fewer than three.
fn theil_sen(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let mut slopes: Vec<f64> = Vec::with_capacity(points.len() * points.len() / 2);
    for (i, &(t0, v0)) in points.iter().enumerate() {
        for &(t1, v1) in &points[i + 1..] {
            if t1 > t0 {
                slopes.push((v1 - v0) / (t1 - t0));
            }
        }
    }
    if slopes.is_empty() {
        return None;
    }
    slopes.sort_by(f64::total_cmp);
    let middle = slopes.len() / 2;
    Some(if slopes.len() % 2 == 1 {
        slopes[middle]
    } else {
        (slopes[middle - 1] + slopes[middle]) / 2.0
    })
}

fn seconds(at: Timestamp) -> f64 {
    at.as_nanos() as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: f64) -> Timestamp {
        Timestamp::from_nanos((seconds * 1e9) as u64)
    }

    #[test]
    fn the_slope_of_a_steady_leak_shrugs_off_outliers() {
        let mut series = Series::default();
        for second in 0..30 {
            // 2 per second, with a burst of 50 at second 10 that went away again.
            let value = if second == 10 {
                70.0
            } else {
                2.0 * second as f64
            };
            series.push(at(second as f64), value);
        }
        let slope = series.slope_per_second().unwrap();
        assert!((slope - 2.0).abs() < 0.01, "{slope}");
        assert_eq!(series.last(), Some(58.0));
    }

    #[test]
    fn two_points_are_no_trend_and_a_flat_series_has_none() {
        let mut series = Series::default();
        series.push(at(0.0), 1.0);
        series.push(at(1.0), 5.0);
        assert_eq!(series.slope_per_second(), None);
        let mut flat = Series::default();
        for second in 0..4 {
            flat.push(at(second as f64), 5.0);
        }
        assert_eq!(flat.slope_per_second(), Some(0.0));
    }

    #[test]
    fn a_burst_that_stopped_is_no_sustained_growth_and_a_steady_leak_is() {
        let mut burst = Series::default();
        let mut leak = Series::default();
        for second in 0..20 {
            // 20 in the first 4 s, then none more.
            burst.push(at(second as f64), (5 * second).min(20) as f64);
            leak.push(at(second as f64), 2.0 * second as f64);
        }
        assert_eq!(burst.sustained_growth(), None);
        let growth = leak.sustained_growth().unwrap();
        assert!((growth.per_second - 2.0).abs() < 1e-9, "{growth:?}");
        assert_eq!((growth.samples, growth.span_seconds), (20, 19.0));
    }

    #[test]
    fn a_long_run_keeps_its_span_in_bounded_memory() {
        let mut series = Series::default();
        for second in 0..10_000 {
            series.push(at(second as f64), second as f64 / 10.0);
        }
        assert!(series.points.len() <= CAPACITY);
        assert_eq!(series.first_at(), Some(0.0));
        assert_eq!(series.last(), Some(999.9));
        let slope = series.slope_per_second().unwrap();
        assert!((slope - 0.1).abs() < 1e-6, "{slope}");
    }
}
