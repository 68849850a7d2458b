//! The connections found at attach that no transition has named yet, found again by what their
//! first transition carries: the socket's cookie (exact), or its endpoints (the classic
//! program's events carry no cookie). Both indexes hold table slots only, 5 bytes a bucket
//! where a map keyed by two socket addresses takes 73: what a slot is found by is read from the
//! connection in it, so a slot whose connection was named, or ended, since matches nothing.

use std::{hash::BuildHasher, net::SocketAddr};

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use super::Tracked;
use crate::track::{lifecycle::ConnectionKey, table::Table};

/// Indexes of the unnamed connections' slots.
#[derive(Debug, Default)]
pub(super) struct Unnamed {
    by_cookie: HashTable<u32>,
    by_endpoints: HashTable<u32>,
}

type Pair = (SocketAddr, SocketAddr);

fn hash_cookie(cookie: u64) -> u64 {
    FxBuildHasher.hash_one(cookie)
}

fn hash_pair(pair: Pair) -> u64 {
    FxBuildHasher.hash_one(pair)
}

/// The connection in `slot`, while no transition has named it.
fn unnamed(table: &Table<Tracked>, slot: u32) -> Option<&Tracked> {
    table
        .at(slot)
        .filter(|tracked| matches!(tracked.connection.key(), ConnectionKey::Inode(_)))
}

fn pair_of(tracked: &Tracked) -> Pair {
    let endpoints = tracked.connection.endpoints();
    (endpoints.local, endpoints.remote)
}

/// The hash a slot's entry is filed under in each index (0 for a slot that holds no unnamed
/// connection any more: such an entry is found by nothing, wherever it sits).
fn rehash_cookie(table: &Table<Tracked>, slot: u32) -> u64 {
    unnamed(table, slot)
        .and_then(|tracked| tracked.connection.cookie())
        .map_or(0, hash_cookie)
}

fn rehash_pair(table: &Table<Tracked>, slot: u32) -> u64 {
    unnamed(table, slot).map_or(0, |tracked| hash_pair(pair_of(tracked)))
}

impl Unnamed {
    /// True when no connection waits to be named.
    pub(super) fn is_empty(&self) -> bool {
        self.by_cookie.is_empty() && self.by_endpoints.is_empty()
    }

    /// Notes the unnamed connection in `slot`.
    pub(super) fn note(&mut self, table: &Table<Tracked>, slot: u32) {
        let Some(tracked) = unnamed(table, slot) else {
            return;
        };
        if let Some(cookie) = tracked.connection.cookie() {
            self.by_cookie
                .insert_unique(hash_cookie(cookie), slot, |&other| {
                    rehash_cookie(table, other)
                });
        }
        self.by_endpoints
            .insert_unique(hash_pair(pair_of(tracked)), slot, |&other| {
                rehash_pair(table, other)
            });
    }

    /// The slot of the unnamed connection with this cookie or, without one, these endpoints,
    /// taken out of the indexes.
    pub(super) fn take(
        &mut self,
        table: &Table<Tracked>,
        cookie: Option<u64>,
        pair: Pair,
    ) -> Option<u32> {
        let slot = match cookie {
            Some(cookie) => *self.by_cookie.find(hash_cookie(cookie), |&slot| {
                unnamed(table, slot).is_some_and(|t| t.connection.cookie() == Some(cookie))
            })?,
            None => *self.by_endpoints.find(hash_pair(pair), |&slot| {
                unnamed(table, slot).is_some_and(|t| pair_of(t) == pair)
            })?,
        };
        self.forget(table, slot);
        Some(slot)
    }

    /// Takes the unnamed connection in `slot` out of the indexes.
    pub(super) fn forget(&mut self, table: &Table<Tracked>, slot: u32) {
        let Some(tracked) = unnamed(table, slot) else {
            return;
        };
        if let Some(cookie) = tracked.connection.cookie()
            && let Ok(entry) = self
                .by_cookie
                .find_entry(hash_cookie(cookie), |&s| s == slot)
        {
            entry.remove();
        }
        if let Ok(entry) = self
            .by_endpoints
            .find_entry(hash_pair(pair_of(tracked)), |&s| s == slot)
        {
            entry.remove();
        }
    }
}
