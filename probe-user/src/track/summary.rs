//! The picture at the end of a run (or at any moment): open connections and totals.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use probe_common::TcpState;

use super::{
    code_path::{CodePath, SHOWN_FRAMES},
    diagnosis::Diagnosis,
    lifecycle::{ClosedFirst, Ending, History, OpenedBy, StateVisit},
    protocol::Protocol,
    time::Timestamp,
    tracker::PairEnd,
    triage::{PortReport, ProcessReport, Triage},
    view::{ConnectionView, Losses},
};

/// An open connection as the summary lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenConnection {
    pub connection: ConnectionView,
    /// Flagged as stuck, and why.
    pub stuck: Option<Diagnosis>,
    /// Where the other end is traced too and the two are stuck as one: which end this is.
    pub pair: Option<PairEnd>,
    pub opened_by: OpenedBy,
    /// Every state it entered, oldest first (the last one is its state).
    pub history: History,
}

impl OpenConnection {
    /// Each state it went through and how long it stayed there (the current one: so far),
    /// where probe saw it enter.
    pub fn lifecycle(&self) -> Vec<Stay> {
        let visits: Vec<StateVisit> = self.history.iter().collect();
        let mut stays: Vec<Stay> = visits
            .windows(2)
            .map(|pair| Stay {
                state: pair[0].state,
                lasted: pair[0]
                    .since
                    .zip(pair[1].since)
                    .map(|(from, to)| to.saturating_since(from)),
                at_least: pair[0].at_least,
            })
            .collect();
        stays.push(Stay {
            state: self.connection.state,
            lasted: self.connection.age,
            at_least: self.connection.since_attach,
        });
        stays
    }
}

/// A state a connection was in, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stay {
    pub state: TcpState,
    /// Unknown when probe did not see the connection enter the state.
    pub lasted: Option<Duration>,
    /// It was already in the state when probe attached: `lasted` is a lower bound.
    pub at_least: bool,
}

/// Totals of the connections that reached CLOSE (listening sockets are not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClosedCounts {
    pub total: u64,
    /// This process sent the first FIN.
    pub local_first: u64,
    /// The peer sent the first FIN.
    pub remote_first: u64,
    /// Both FINs crossed.
    pub simultaneous: u64,
    /// Ended without a complete FIN exchange.
    pub reset: u64,
    /// connect() failed.
    pub connect_failed: u64,
}

impl ClosedCounts {
    /// Counts one connection that ended as `ending`, whoever `closed_first`.
    pub fn record(&mut self, closed_first: Option<ClosedFirst>, ending: Ending) {
        if ending == Ending::ListenerClosed {
            return;
        }
        self.total += 1;
        match closed_first {
            Some(ClosedFirst::Local) => self.local_first += 1,
            Some(ClosedFirst::Remote) => self.remote_first += 1,
            Some(ClosedFirst::Simultaneous) => self.simultaneous += 1,
            None => {}
        }
        match ending {
            Ending::Reset => self.reset += 1,
            Ending::ConnectFailed => self.connect_failed += 1,
            _ => {}
        }
    }
}

/// The open connections of one state to one endpoint (the remote one; a listener's own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointGroup {
    pub state: TcpState,
    /// The endpoint they are known by ([`crate::track::ConnectionView::known_by`]).
    pub endpoint: SocketAddr,
    pub connections: usize,
    pub stuck: usize,
    /// The longest time one of them has been in `state`; `None` when the oldest was already in
    /// it before probe saw it.
    pub oldest: Option<Duration>,
    /// The oldest was already in `state` when probe attached: `oldest` is a lower bound.
    pub since_attach: bool,
    /// The processes that own them, lowest pid first.
    pub pids: Vec<u32>,
    /// Sockets of this state and endpoint that are the other ends of connections counted
    /// elsewhere (both ends on this host, see [`OpenConnection::pair`]): not connections of
    /// their own, so not in `connections`.
    pub held_ends: usize,
    /// The processes that hold those other ends, lowest pid first.
    pub held_by: Vec<u32>,
}

/// The stuck connections of one state opened by one code path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodePathGroup {
    pub state: TcpState,
    /// Why they are stuck.
    pub diagnosis: Diagnosis,
    /// `None` for the connections whose opening probe did not capture.
    pub opened_at: Option<Arc<CodePath>>,
    /// Where the program asked a runtime for them, where probe captured it.
    pub requested_at: Option<Arc<CodePath>>,
    /// What a reader is shown of where they come from ([`super::Origin::describe`] at
    /// [`SHOWN_FRAMES`]): what they are grouped by.
    pub shown: Option<String>,
    /// Which side opened them (groups without a code path are told apart by it).
    pub opened_by: OpenedBy,
    pub connections: usize,
}

impl CodePathGroup {
    /// Where they came from: the first one's connect stack and its requester's.
    pub fn origin(&self) -> super::Origin<'_> {
        super::Origin {
            opened_at: self.opened_at.as_deref(),
            requested_at: self.requested_at.as_deref(),
        }
    }

    /// Where they come from, said in words, for a group without a code path: stacks are taken
    /// at connect() only, and only for connections opened while probe runs.
    pub fn origin_without_stack(&self) -> &'static str {
        match (self.opened_by, self.state) {
            (OpenedBy::Local, TcpState::Listen) => {
                "listening (probe takes stacks at connect() only)"
            }
            (OpenedBy::Local, _) => "opened where no stack was captured",
            (OpenedBy::Remote, _) => "accepted from peers (probe takes stacks at connect() only)",
            (OpenedBy::Unknown, _) => "opened before probe started",
        }
    }
}

/// Attached mid-incident: stuck connections that were open before probe attached (their code
/// unknown: stacks are taken at connect()), next to those opened since, and whether the
/// latter all come from one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MidIncident {
    /// Stuck connections already open when probe attached.
    pub predating: usize,
    /// Stuck connections the traced processes opened since.
    pub opened_since: usize,
    /// Where all of `opened_since` were opened (as [`CodePathGroup::shown`]), when that is one
    /// place: the leak goes on from there.
    pub continues_from: Option<String>,
}

/// Open connections, oldest in their state first, with counts by state.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub open: Vec<OpenConnection>,
    pub closed: ClosedCounts,
    /// What the kernel side could not deliver or follow.
    pub losses: Losses,
    /// The processes, most urgent first, with their forecasts (see [`Summary::add_triage`]).
    pub processes: Vec<ProcessReport>,
    /// The destinations whose ephemeral ports fill up, fullest first.
    pub ports: Vec<PortReport>,
    counts: BTreeMap<TcpState, usize>,
    stuck: BTreeMap<TcpState, usize>,
    stuck_kinds: BTreeMap<Diagnosis, usize>,
}

impl Summary {
    /// A summary of these open connections (already in the order to show) and totals.
    pub fn new(open: Vec<OpenConnection>, closed: ClosedCounts, losses: Losses) -> Summary {
        let mut counts = BTreeMap::new();
        let mut stuck = BTreeMap::new();
        let mut stuck_kinds = BTreeMap::new();
        for open in &open {
            *counts.entry(open.connection.state).or_insert(0) += 1;
            if let Some(kind) = open.stuck {
                *stuck.entry(open.connection.state).or_insert(0) += 1;
                *stuck_kinds.entry(kind).or_insert(0) += 1;
            }
        }
        Summary {
            open,
            closed,
            losses,
            processes: Vec::new(),
            ports: Vec::new(),
            counts,
            stuck,
            stuck_kinds,
        }
    }

    /// Stuck connections per kind, for the kinds that have any.
    pub fn stuck_kinds(&self) -> &BTreeMap<Diagnosis, usize> {
        &self.stuck_kinds
    }

    /// The kinds of the stuck connections in `state`, each once.
    pub fn kinds_in(&self, state: TcpState) -> Vec<Diagnosis> {
        let mut kinds: Vec<Diagnosis> = self
            .open
            .iter()
            .filter(|open| open.connection.state == state)
            .filter_map(|open| open.stuck)
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        kinds
    }

    /// The protocol every connection stuck as `kind` speaks (see [`Protocol::of`]), where
    /// they all speak one; [`Protocol::Unknown`] where they speak several, or nothing says.
    pub fn protocol_of(&self, kind: Diagnosis) -> Protocol {
        let mut protocols = self
            .open
            .iter()
            .filter(|open| open.stuck == Some(kind))
            .map(|open| Protocol::of(&open.connection));
        let Some(first) = protocols.next() else {
            return Protocol::Unknown;
        };
        if protocols.all(|protocol| protocol == first) {
            first
        } else {
            Protocol::Unknown
        }
    }

    /// Adds the per-process and per-destination figures the triage keeps over the run, its
    /// forecasts as of `now`.
    pub fn add_triage(&mut self, triage: &Triage, now: Timestamp) {
        self.processes = triage.processes(&self.open, now);
        self.ports = triage.ports(now);
    }

    /// Keeps only the open connections for which `keep` holds, and recounts.
    pub fn retain(&mut self, keep: impl FnMut(&OpenConnection) -> bool) {
        let mut open = std::mem::take(&mut self.open);
        open.retain(keep);
        let processes = std::mem::take(&mut self.processes);
        let ports = std::mem::take(&mut self.ports);
        *self = Summary::new(open, self.closed, self.losses);
        self.processes = processes;
        self.ports = ports;
    }

    /// Open connections per state, for the states that have any.
    pub fn counts(&self) -> &BTreeMap<TcpState, usize> {
        &self.counts
    }

    /// Stuck connections per state, for the states that have any.
    pub fn stuck(&self) -> &BTreeMap<TcpState, usize> {
        &self.stuck
    }

    /// Open connections in `state`.
    pub fn count(&self, state: TcpState) -> usize {
        self.counts.get(&state).copied().unwrap_or(0)
    }

    /// Stuck connections in `state`.
    pub fn stuck_count(&self, state: TcpState) -> usize {
        self.stuck.get(&state).copied().unwrap_or(0)
    }

    /// Open connections grouped by state (CLOSE_WAIT, then ESTABLISHED, then the rest) and
    /// remote endpoint, the group with the oldest connection first within each state.
    pub fn groups(&self) -> Vec<EndpointGroup> {
        let mut groups: Vec<EndpointGroup> = Vec::new();
        // `open` is already oldest first, so each group's first member is its oldest.
        for open in &self.open {
            let connection = &open.connection;
            let (state, endpoint) = (connection.state, connection.known_by);
            let index = match groups
                .iter()
                .position(|g| g.state == state && g.endpoint == endpoint)
            {
                Some(index) => index,
                None => {
                    groups.push(EndpointGroup {
                        state,
                        endpoint,
                        connections: 0,
                        stuck: 0,
                        oldest: None,
                        since_attach: false,
                        pids: Vec::new(),
                        held_ends: 0,
                        held_by: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            let group = &mut groups[index];
            if matches!(open.pair, Some(PairEnd::HeldFor { .. })) {
                group.held_ends += 1;
                group.held_by.push(connection.owner.pid);
                continue;
            }
            if group.connections == 0 {
                group.oldest = connection.age;
                group.since_attach = connection.since_attach;
            }
            group.connections += 1;
            group.stuck += usize::from(open.stuck.is_some());
            group.pids.push(connection.owner.pid);
            group.pids.extend_from_slice(&connection.also_held_by);
        }
        for group in &mut groups {
            for pids in [&mut group.pids, &mut group.held_by] {
                pids.sort_unstable();
                pids.dedup();
            }
        }
        // Stable sort: keeps oldest-first order inside each state.
        groups.sort_by_key(|g| state_rank(g.state));
        groups
    }
}

impl Summary {
    /// Whether probe attached mid-incident (some stuck connections predate it), and whether
    /// the ones opened since all come from one place; `None` when none predate it.
    pub fn mid_incident(&self) -> Option<MidIncident> {
        let stuck = || self.open.iter().filter(|open| open.stuck.is_some());
        let predating = stuck()
            .filter(|open| open.opened_by == OpenedBy::Unknown)
            .count();
        if predating == 0 {
            return None;
        }
        let since: Vec<Option<String>> = stuck()
            .filter(|open| open.opened_by == OpenedBy::Local)
            .map(|open| open.connection.origin().describe(SHOWN_FRAMES))
            .collect();
        let continues_from = match since.first() {
            Some(Some(first)) if since.iter().all(|shown| shown.as_ref() == Some(first)) => {
                Some(first.clone())
            }
            _ => None,
        };
        Some(MidIncident {
            predating,
            opened_since: since.len(),
            continues_from,
        })
    }

    /// Stuck connections grouped by state and by the code that opened them, as a reader is
    /// shown it (the same code in different processes is one group; so are stacks that differ
    /// only below it), the largest group first.
    pub fn stuck_by_code_path(&self) -> Vec<CodePathGroup> {
        let mut groups: Vec<CodePathGroup> = Vec::new();
        for open in &self.open {
            let Some(diagnosis) = open.stuck else {
                continue;
            };
            let connection = &open.connection;
            let shown = connection.origin().describe(SHOWN_FRAMES);
            let same = |g: &&mut CodePathGroup| {
                g.state == connection.state
                    && g.diagnosis == diagnosis
                    && g.shown == shown
                    && (g.shown.is_some() || g.opened_by == open.opened_by)
            };
            match groups.iter_mut().find(same) {
                Some(group) => group.connections += 1,
                None => groups.push(CodePathGroup {
                    state: connection.state,
                    diagnosis,
                    opened_at: connection.opened_at.clone(),
                    requested_at: connection.requested_at.clone(),
                    shown,
                    opened_by: open.opened_by,
                    connections: 1,
                }),
            }
        }
        groups.sort_by_key(|g| (state_rank(g.state), std::cmp::Reverse(g.connections)));
        groups
    }
}

/// The order states are shown in: the ones that can be stuck first.
pub fn state_rank(state: TcpState) -> (u8, TcpState) {
    let rank = match state {
        TcpState::CloseWait => 0,
        TcpState::Established => 1,
        _ => 2,
    };
    (rank, state)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::track::{
        event::{Endpoints, Family},
        lifecycle::{ConnectionKey, Owner},
        time::Timestamp,
    };

    /// An open connection of `pid` in `state` to `remote`, `age_s` old (stuck where it is in
    /// CLOSE_WAIT), for the tests of what the summary is built from.
    pub(crate) fn open(
        id: u64,
        pid: u32,
        state: TcpState,
        remote: &str,
        age_s: Option<u64>,
    ) -> OpenConnection {
        OpenConnection {
            connection: ConnectionView {
                key: ConnectionKey::Socket(id),
                cookie: None,
                inode: None,
                owner: Owner {
                    pid,
                    comm: "c".into(),
                },
                also_held_by: Vec::new(),
                endpoints: Endpoints {
                    family: Family::Ipv4,
                    local: "127.0.0.1:1".parse().unwrap(),
                    remote: remote.parse().unwrap(),
                },
                known_by: remote.parse().unwrap(),
                state,
                since: age_s.map(|s| Timestamp::from_nanos(1_000_000_000_000 - s * 1_000_000_000)),
                age: age_s.map(Duration::from_secs),
                since_attach: false,
                idle: None,
                activity: None,
                opened_at: None,
                requested_at: None,
            },
            stuck: (state == TcpState::CloseWait)
                .then_some(Diagnosis::PeerClosedNeverClosedLocally),
            pair: None,
            opened_by: OpenedBy::Local,
            history: History::default(),
        }
    }

    #[test]
    fn the_other_end_of_a_connection_on_this_host_is_not_a_connection_of_its_own() {
        // A client's idle pooled connection and the backend's end of it, both on this host.
        let client = open(1, 100, TcpState::Established, "127.0.0.1:5432", Some(60));
        let mut backend = open(2, 200, TcpState::Established, "127.0.0.1:41000", Some(60));
        backend.connection.known_by = "127.0.0.1:5432".parse().unwrap();
        backend.pair = Some(PairEnd::HeldFor { by: 100 });
        let summary = Summary::new(
            vec![backend, client],
            ClosedCounts::default(),
            Losses::default(),
        );
        let groups = summary.groups();
        assert_eq!(groups.len(), 1, "{groups:?}");
        let group = &groups[0];
        assert_eq!((group.connections, group.pids.as_slice()), (1, &[100][..]));
        assert_eq!((group.held_ends, group.held_by.as_slice()), (1, &[200][..]));
        assert_eq!(group.oldest, Some(Duration::from_secs(60)));
    }

    #[test]
    fn groups_by_state_then_endpoint_with_stuck_states_first() {
        let summary = Summary::new(
            vec![
                open(1, 9, TcpState::Established, "10.0.0.1:5432", None),
                open(2, 8, TcpState::CloseWait, "10.0.0.2:80", Some(30)),
                open(3, 7, TcpState::CloseWait, "10.0.0.2:80", Some(20)),
                open(4, 7, TcpState::CloseWait, "10.0.0.3:80", Some(10)),
                open(5, 7, TcpState::FinWait2, "10.0.0.3:80", Some(5)),
            ],
            ClosedCounts::default(),
            Losses::default(),
        );
        let groups = summary.groups();
        let shape: Vec<(&str, String, usize, usize)> = groups
            .iter()
            .map(|g| {
                (
                    g.state.name(),
                    g.endpoint.to_string(),
                    g.connections,
                    g.stuck,
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("CLOSE_WAIT", "10.0.0.2:80".to_string(), 2, 2),
                ("CLOSE_WAIT", "10.0.0.3:80".to_string(), 1, 1),
                ("ESTABLISHED", "10.0.0.1:5432".to_string(), 1, 0),
                ("FIN_WAIT2", "10.0.0.3:80".to_string(), 1, 0),
            ]
        );
        assert_eq!(groups[0].oldest, Some(Duration::from_secs(30)));
        assert_eq!(groups[0].pids, [7, 8]);
        assert_eq!(groups[2].oldest, None);
        assert_eq!(summary.count(TcpState::CloseWait), 3);
        assert_eq!(summary.stuck_count(TcpState::CloseWait), 3);
        assert_eq!(summary.stuck_count(TcpState::Established), 0);
    }

    fn opened_at(function: &str) -> Arc<CodePath> {
        Arc::new(CodePath {
            frames: vec![crate::track::Frame {
                function: function.into(),
                file: None,
                line: None,
                address: 0x1000,
                kind: crate::track::FrameKind::App,
            }],
        })
    }

    #[test]
    fn attached_mid_incident_says_what_predates_probe_and_where_the_leak_goes_on() {
        let found_at_attach = |id| OpenConnection {
            opened_by: OpenedBy::Unknown,
            ..open(id, 7, TcpState::CloseWait, "10.0.0.2:80", Some(60))
        };
        let opened_by = |id, function: &str| {
            let mut connection = open(id, 7, TcpState::CloseWait, "10.0.0.2:80", Some(5));
            connection.connection.opened_at = Some(opened_at(function));
            connection
        };
        let summary = |open| Summary::new(open, ClosedCounts::default(), Losses::default());

        let one_place = summary(vec![
            found_at_attach(1),
            found_at_attach(2),
            opened_by(3, "do_request"),
            opened_by(4, "do_request"),
        ]);
        assert_eq!(
            one_place.mid_incident(),
            Some(MidIncident {
                predating: 2,
                opened_since: 2,
                continues_from: Some("do_request".into()),
            })
        );
        let two_places = summary(vec![
            found_at_attach(1),
            opened_by(3, "do_request"),
            opened_by(4, "refresh_cache"),
        ]);
        assert_eq!(two_places.mid_incident().unwrap().continues_from, None);
        let none_since = summary(vec![found_at_attach(1)]);
        assert_eq!(
            none_since.mid_incident(),
            Some(MidIncident {
                predating: 1,
                opened_since: 0,
                continues_from: None,
            })
        );
        assert_eq!(
            summary(vec![opened_by(3, "do_request")]).mid_incident(),
            None
        );
    }
}
