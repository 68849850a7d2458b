//! What the live view shows, without a terminal: per-state counts with their recent history, the
//! stuck connections grouped by remote endpoint, the latest transitions, and what the keys do.

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    time::Duration,
};

use probe_common::TcpState;

use super::processes::{self, ProcessSort};
use crate::{
    output::{Key, KeyOutcome},
    track::{
        Diagnosis, StateChange, Summary, Timestamp, summary::state_rank, triage::ProcessReport,
    },
};

/// Samples of history per state (one per tick: three minutes).
pub const HISTORY: usize = 180;
/// Transitions kept for the "latest" pane.
pub const RECENT: usize = 100;

/// How the stuck groups are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    /// Most stuck connections first.
    Count,
    /// Oldest connection first.
    Oldest,
    /// By remote endpoint.
    Remote,
}

impl SortBy {
    fn next(self) -> SortBy {
        match self {
            SortBy::Count => SortBy::Oldest,
            SortBy::Oldest => SortBy::Remote,
            SortBy::Remote => SortBy::Count,
        }
    }

    /// As the header says it.
    pub fn label(self) -> &'static str {
        match self {
            SortBy::Count => "count",
            SortBy::Oldest => "oldest",
            SortBy::Remote => "remote",
        }
    }
}

/// Stuck connections of one state to one remote endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StuckGroup {
    pub state: TcpState,
    /// Why they are stuck.
    pub kind: Diagnosis,
    /// The remote endpoint, or a listener's own address.
    pub endpoint: SocketAddr,
    pub count: usize,
    /// The longest time in state among them, where known.
    pub oldest: Option<Duration>,
    /// Some connection was already in its state at attach: `oldest` is a lower bound.
    pub since_attach: bool,
    /// The shortest idle time among them, where tcp_info tells: all are idle at least this long.
    pub idle: Option<Duration>,
    pub pids: Vec<u32>,
    /// The program's innermost frame where the first of them with a stack was opened (or
    /// requested): the code to look at.
    pub code: Option<String>,
}

/// The live view's state.
#[derive(Debug)]
pub struct View {
    /// What is traced, for the header.
    pub targets: String,
    pub started: Option<Timestamp>,
    pub now: Option<Timestamp>,
    /// Open connections per state, oldest sample first.
    pub history: BTreeMap<TcpState, VecDeque<u64>>,
    /// The latest tick's counts: open and stuck per state.
    pub counts: BTreeMap<TcpState, (usize, usize)>,
    pub stuck: Vec<StuckGroup>,
    pub recent: VecDeque<StateChange>,
    pub transitions: u64,
    pub sort: SortBy,
    /// Show only this state's groups and transitions.
    pub only: Option<TcpState>,
    /// The processes with stuck connections or a forecast, in `process_sort` order.
    pub processes: Vec<ProcessReport>,
    pub process_sort: ProcessSort,
}

impl View {
    /// An empty view of `targets`.
    pub fn new(targets: String) -> View {
        View {
            targets,
            started: None,
            now: None,
            history: BTreeMap::new(),
            counts: BTreeMap::new(),
            stuck: Vec::new(),
            recent: VecDeque::with_capacity(RECENT),
            transitions: 0,
            sort: SortBy::Count,
            only: None,
            processes: Vec::new(),
            process_sort: ProcessSort::Urgency,
        }
    }

    /// Notes one transition.
    pub fn transition(&mut self, change: &StateChange) {
        self.transitions += 1;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(change.clone());
    }

    /// Takes in the table as of `now`.
    pub fn tick(&mut self, now: Timestamp, table: &Summary) {
        self.started.get_or_insert(now);
        self.now = Some(now);
        self.counts = TcpState::ALL
            .into_iter()
            .filter(|state| table.count(*state) > 0)
            .map(|state| (state, (table.count(state), table.stuck_count(state))))
            .collect();
        // Every state seen so far keeps a line, dropping to zero when it empties.
        for state in self.counts.keys() {
            self.history.entry(*state).or_default();
        }
        for (state, samples) in &mut self.history {
            if samples.len() == HISTORY {
                samples.pop_front();
            }
            samples.push_back(self.counts.get(state).map_or(0, |c| c.0) as u64);
        }
        self.stuck = stuck_groups(table);
        self.sort_groups();
        self.processes = processes::rows(&table.processes);
        self.process_sort.sort(&mut self.processes);
    }

    /// Applies a key press.
    pub fn key(&mut self, key: Key) -> KeyOutcome {
        match key {
            Key::Char('q') | Key::Escape | Key::Interrupt => KeyOutcome::Quit,
            Key::Char('s') => {
                self.sort = self.sort.next();
                self.sort_groups();
                KeyOutcome::Redraw
            }
            Key::Char('f') => {
                self.only = self.next_filter();
                KeyOutcome::Redraw
            }
            Key::Char('p') => {
                self.process_sort = self.process_sort.next();
                self.process_sort.sort(&mut self.processes);
                KeyOutcome::Redraw
            }
            Key::Resize => KeyOutcome::Redraw,
            _ => KeyOutcome::Ignored,
        }
    }

    /// The states in the order shown: stuck-prone first.
    pub fn states(&self) -> Vec<TcpState> {
        let mut states: Vec<TcpState> = self.history.keys().copied().collect();
        states.sort_by_key(|state| state_rank(*state));
        states
    }

    /// The stuck groups the filter lets through, in the chosen order.
    pub fn shown_groups(&self) -> impl Iterator<Item = &StuckGroup> {
        self.stuck
            .iter()
            .filter(|g| self.only.is_none_or(|state| g.state == state))
    }

    /// The latest transitions the filter lets through, newest first.
    pub fn shown_transitions(&self) -> impl Iterator<Item = &StateChange> {
        self.recent.iter().rev().filter(|c| {
            self.only
                .is_none_or(|state| c.old == state || c.new == state)
        })
    }

    /// The state filter after this one: all, then each state seen, then all again.
    fn next_filter(&self) -> Option<TcpState> {
        let states = self.states();
        match self.only {
            None => states.first().copied(),
            Some(current) => states.iter().skip_while(|s| **s != current).nth(1).copied(),
        }
    }

    fn sort_groups(&mut self) {
        match self.sort {
            SortBy::Count => self
                .stuck
                .sort_by_key(|g| (std::cmp::Reverse(g.count), state_rank(g.state), g.endpoint)),
            SortBy::Oldest => self
                .stuck
                .sort_by_key(|g| (std::cmp::Reverse(g.oldest), g.endpoint)),
            SortBy::Remote => self
                .stuck
                .sort_by_key(|g| (g.endpoint, state_rank(g.state))),
        }
    }
}

fn stuck_groups(table: &Summary) -> Vec<StuckGroup> {
    let mut groups: BTreeMap<(TcpState, Diagnosis, SocketAddr), StuckGroup> = BTreeMap::new();
    for (kind, connection) in table
        .open
        .iter()
        .filter_map(|c| Some((c.stuck?, &c.connection)))
    {
        let endpoint = connection.known_by;
        let key = (connection.state, kind, endpoint);
        let group = groups.entry(key).or_insert_with(|| StuckGroup {
            state: connection.state,
            kind,
            endpoint,
            count: 0,
            oldest: None,
            since_attach: false,
            idle: connection.idle,
            pids: Vec::new(),
            code: None,
        });
        if group.code.is_none() {
            group.code = connection
                .origin()
                .best()
                .and_then(|path| path.shown().frames.first().map(ToString::to_string));
        }
        group.count += 1;
        group.oldest = group.oldest.max(connection.age);
        group.since_attach |= connection.since_attach;
        group.idle = match (group.idle, connection.idle) {
            (Some(shortest), Some(idle)) => Some(shortest.min(idle)),
            (shortest, idle) => shortest.or(idle),
        };
        if !group.pids.contains(&connection.owner.pid) {
            group.pids.push(connection.owner.pid);
        }
    }
    groups.into_values().collect()
}

#[cfg(test)]
mod tests {
    use probe_common::{Attribution, TcpState::*};

    use super::*;
    use crate::track::{Endpoints, Losses, NoCodePaths, Thresholds, Tracker, Transition};

    const MS: u64 = 1_000_000;

    fn step(id: u64, port: u16, remote: &str, old: TcpState, new: TcpState, ms: u64) -> Transition {
        Transition {
            sock_id: id,
            cookie: None,
            pid: 10,
            at: Timestamp::from_nanos(ms * MS),
            endpoints: Endpoints::parse(&format!("127.0.0.1:{port}"), remote),
            old,
            new,
            attribution: Attribution::Known,
            stack: None,
            requested: None,
        }
    }

    /// Three CLOSE_WAIT leaks to one server, one to another, one busy ESTABLISHED.
    fn view_after(seconds: u64) -> View {
        let mut tracker = Tracker::new(Thresholds::with_classic(
            Duration::from_secs(1),
            Duration::from_secs(60),
        ));
        let mut view = View::new("10 (client)".into());
        let mut connections: Vec<(u64, &str)> = vec![(1, "10.0.0.1:80"), (2, "10.0.0.1:80")];
        connections.push((3, "10.0.0.1:80"));
        connections.push((4, "10.0.0.2:443"));
        for (id, remote) in &connections {
            let port = 5000 + *id as u16;
            for (old, new) in [(Close, SynSent), (SynSent, Established)] {
                view.transition(&tracker.apply(&step(*id, port, remote, old, new, *id)));
            }
            let closed_at = if *id == 4 { 400 } else { 100 };
            let change = tracker.apply(&step(*id, port, remote, Established, CloseWait, closed_at));
            view.transition(&change);
        }
        for (old, new) in [(Close, SynSent), (SynSent, Established)] {
            view.transition(&tracker.apply(&step(9, 6000, "10.0.0.3:5432", old, new, 5)));
        }
        for second in 1..=seconds {
            let now = Timestamp::from_nanos(second * 1000 * MS + 500 * MS);
            let _ = tracker.due_stuck(now, &NoCodePaths);
            view.tick(now, &tracker.summary(now, &NoCodePaths, Losses::default()));
        }
        view
    }

    #[test]
    fn groups_stuck_connections_by_remote_endpoint() {
        let view = view_after(3);
        let shape: Vec<(String, usize)> = view
            .shown_groups()
            .map(|g| (g.endpoint.to_string(), g.count))
            .collect();
        assert_eq!(
            shape,
            [("10.0.0.1:80".into(), 3), ("10.0.0.2:443".into(), 1)]
        );
        assert_eq!(view.stuck[0].oldest, Some(Duration::from_millis(3400)));
        assert_eq!(view.counts[&CloseWait], (4, 4));
        assert_eq!(view.counts[&Established], (1, 0));
        assert_eq!(view.history[&CloseWait], [4, 4, 4]);
        assert_eq!(view.transitions, 14);
    }

    #[test]
    fn keys_sort_filter_and_quit() {
        let mut view = view_after(2);
        assert_eq!(view.key(Key::Char('s')), KeyOutcome::Redraw);
        assert_eq!(view.sort, SortBy::Oldest);
        assert_eq!(view.key(Key::Char('s')), KeyOutcome::Redraw);
        let remotes: Vec<String> = view
            .shown_groups()
            .map(|g| g.endpoint.to_string())
            .collect();
        assert_eq!(remotes, ["10.0.0.1:80", "10.0.0.2:443"]);

        assert_eq!(view.key(Key::Char('f')), KeyOutcome::Redraw);
        assert_eq!(view.only, Some(CloseWait));
        assert!(
            view.shown_transitions()
                .all(|c| c.old == CloseWait || c.new == CloseWait)
        );
        assert_eq!(view.shown_transitions().count(), 4);
        view.key(Key::Char('f'));
        assert_eq!(view.only, Some(Established));
        assert_eq!(view.shown_groups().count(), 0);
        view.key(Key::Char('f'));
        assert_eq!(view.only, None);

        assert_eq!(view.key(Key::Char('x')), KeyOutcome::Ignored);
        assert_eq!(view.key(Key::Char('q')), KeyOutcome::Quit);
        assert_eq!(view.key(Key::Interrupt), KeyOutcome::Quit);
    }

    #[test]
    fn history_is_bounded_and_keeps_emptied_states() {
        let mut view = view_after(HISTORY as u64 + 20);
        assert_eq!(view.history[&CloseWait].len(), HISTORY);
        view.tick(
            Timestamp::from_nanos(u64::MAX / 2),
            &Summary::new(Vec::new(), Default::default(), Default::default()),
        );
        assert_eq!(view.history[&CloseWait].back(), Some(&0));
        assert!(view.counts.is_empty());
    }
}
