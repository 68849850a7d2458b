//! The destinations the traced processes connect to: where their ephemeral ports go, the only
//! ones whose TIME_WAIT sockets a refresh reads for the port forecast, while there are few.

use std::{collections::BTreeSet, net::SocketAddr};

/// Destinations listed at most: the kernel tries each against every TIME_WAIT socket, so a
/// longer list would cost more than it saves; a process that connects to more (a proxy, a
/// crawler, the whole host) has every TIME_WAIT socket read.
const MOST: usize = 64;

/// The remote ends connected to since probe started (an IPv6 socket reaches an IPv4 address
/// IPv4-mapped: written as IPv4), until there are more than [`MOST`].
#[derive(Debug, Default)]
pub(super) struct Destinations {
    seen: BTreeSet<SocketAddr>,
    too_many: bool,
}

impl Destinations {
    /// Notes a remote end connected to.
    pub(super) fn note(&mut self, remote: SocketAddr) {
        if self.too_many {
            return;
        }
        let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
        if self.seen.len() == MOST && !self.seen.contains(&remote) {
            self.too_many = true;
            self.seen = BTreeSet::new();
            return;
        }
        self.seen.insert(remote);
    }

    /// Every destination noted, or `None` once there were too many to list.
    pub(super) fn list(&self) -> Option<Vec<SocketAddr>> {
        (!self.too_many).then(|| self.seen.iter().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_listed_once_each_until_there_are_too_many() {
        let mut destinations = Destinations::default();
        assert_eq!(destinations.list(), Some(vec![]));
        let address = |n: usize| SocketAddr::from(([10, 0, 0, 1], 1000 + n as u16));
        destinations.note(address(0));
        destinations.note(address(0));
        destinations.note("[::ffff:10.0.0.1]:1000".parse().unwrap());
        assert_eq!(destinations.list(), Some(vec![address(0)]));
        for n in 1..MOST {
            destinations.note(address(n));
        }
        assert_eq!(destinations.list().map(|list| list.len()), Some(MOST));
        destinations.note(address(MOST));
        assert_eq!(destinations.list(), None);
        destinations.note(address(0));
        assert_eq!(destinations.list(), None, "for good");
    }
}
