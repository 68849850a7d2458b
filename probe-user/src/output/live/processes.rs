//! The live view's process table, like `top`'s: the traced processes with stuck connections or
//! a forecast, sorted by what the user asks (`p`): most stuck, fastest leaking, soonest out of
//! file descriptors.

use std::cmp::Ordering;

use crate::track::triage::{ProcessReport, by_urgency};

/// How the process table is sorted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessSort {
    /// The triage's ranking: what fails first, first ([`by_urgency`]).
    Urgency,
    /// Most stuck connections first.
    Stuck,
    /// Fastest leak first.
    Rate,
    /// Soonest out of file descriptors first.
    TimeLeft,
}

impl ProcessSort {
    /// The next order, for the `p` key.
    pub fn next(self) -> ProcessSort {
        match self {
            ProcessSort::Urgency => ProcessSort::Stuck,
            ProcessSort::Stuck => ProcessSort::Rate,
            ProcessSort::Rate => ProcessSort::TimeLeft,
            ProcessSort::TimeLeft => ProcessSort::Urgency,
        }
    }

    /// As the header says it.
    pub fn label(self) -> &'static str {
        match self {
            ProcessSort::Urgency => "urgency",
            ProcessSort::Stuck => "stuck",
            ProcessSort::Rate => "rate",
            ProcessSort::TimeLeft => "time left",
        }
    }

    /// Sorts `rows` in this order (ties: most stuck, then pid).
    pub fn sort(self, rows: &mut [ProcessReport]) {
        let rate = |r: &ProcessReport| r.leak_per_min.unwrap_or(0.0);
        rows.sort_by(|a, b| {
            let first = match self {
                ProcessSort::Urgency => by_urgency(a, b),
                ProcessSort::Stuck => b.stuck.cmp(&a.stuck),
                ProcessSort::Rate => rate(b).total_cmp(&rate(a)),
                ProcessSort::TimeLeft => match (a.fd_exhaustion, b.fd_exhaustion) {
                    (Some(a), Some(b)) => a.cmp(&b),
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => Ordering::Equal,
                },
            };
            first.then(b.stuck.cmp(&a.stuck)).then(a.pid.cmp(&b.pid))
        });
    }
}

/// The processes worth a row: those with stuck connections or a forecast.
pub fn rows(processes: &[ProcessReport]) -> Vec<ProcessReport> {
    processes
        .iter()
        .filter(|p| p.stuck > 0 || p.fd_exhaustion.is_some())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::track::triage::Rank;

    fn row(pid: u32, stuck: usize, rate: f64, left: Option<u64>) -> ProcessReport {
        ProcessReport {
            pid,
            comm: Arc::from("p"),
            placement: Default::default(),
            open: stuck,
            counts: Default::default(),
            stuck,
            stuck_counts: Default::default(),
            worst: None,
            leak_per_min: Some(rate),
            leak_evidence: None,
            other_ends: Vec::new(),
            onset: None,
            onset_estimated: false,
            fds_open: None,
            fd_limit: None,
            fd_growth: None,
            fd_exhaustion: left.map(Duration::from_secs),
            rank: if left.is_some() {
                Rank::FdsRunOut
            } else {
                Rank::Growing
            },
        }
    }

    #[test]
    fn each_order_puts_its_worst_first() {
        let mut rows = vec![
            row(1, 5, 1.0, None),
            row(2, 2, 9.0, Some(600)),
            row(3, 1, 0.5, Some(60)),
        ];
        ProcessSort::Stuck.sort(&mut rows);
        assert_eq!(rows.iter().map(|r| r.pid).collect::<Vec<_>>(), [1, 2, 3]);
        ProcessSort::Rate.sort(&mut rows);
        assert_eq!(rows.iter().map(|r| r.pid).collect::<Vec<_>>(), [2, 1, 3]);
        ProcessSort::TimeLeft.sort(&mut rows);
        assert_eq!(rows.iter().map(|r| r.pid).collect::<Vec<_>>(), [3, 2, 1]);
        ProcessSort::Stuck.sort(&mut rows);
        ProcessSort::Urgency.sort(&mut rows);
        assert_eq!(rows.iter().map(|r| r.pid).collect::<Vec<_>>(), [3, 2, 1]);
        assert_eq!(ProcessSort::TimeLeft.next(), ProcessSort::Urgency);
        assert_eq!(ProcessSort::Urgency.next(), ProcessSort::Stuck);
    }
}
