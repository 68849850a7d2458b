//! The storage of the connection table, built for many open connections at a small, steady cost
//! each: records live in fixed-size pages (growing never copies them, and wastes at most one page),
//! freed slots are reused, and two small indexes map kernel socket addresses and socket inodes to
//! slots. An index holds only slot numbers (5 bytes a bucket, where a map of key to slot takes
//! 17): the key it is looked up by is the record's own ([`Keyed`]).

use std::hash::BuildHasher;

use hashbrown::HashTable;
// Looked up on every event; the keys are kernel socket addresses and inode numbers, not input
// anyone can choose, so a fast hash does (SipHash was a tenth of probe's CPU time).
use rustc_hash::FxBuildHasher;

use super::lifecycle::ConnectionKey;

/// Records per page.
const PAGE: usize = 1024;

/// A record that knows the key it is stored under. The key must not change while the record is
/// in a [`Table`], except through [`Table::rekey`].
pub trait Keyed {
    /// The key it is stored under.
    fn key(&self) -> ConnectionKey;
}

/// Records of type `T`, each under its [`ConnectionKey`], at a stable slot number.
#[derive(Debug)]
pub struct Table<T> {
    pages: Vec<Vec<Option<T>>>,
    /// Slots emptied by [`Table::remove`], reused first.
    free: Vec<u32>,
    by_socket: HashTable<u32>,
    by_inode: HashTable<u32>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            pages: Vec::new(),
            free: Vec::new(),
            by_socket: HashTable::new(),
            by_inode: HashTable::new(),
        }
    }
}

fn hash(key: ConnectionKey) -> u64 {
    match key {
        ConnectionKey::Socket(raw) | ConnectionKey::Inode(raw) => FxBuildHasher.hash_one(raw),
    }
}

/// The key of the record in `slot` (an indexed slot always holds one).
fn key_at<T: Keyed>(pages: &[Vec<Option<T>>], slot: u32) -> Option<ConnectionKey> {
    let slot = slot as usize;
    pages[slot / PAGE][slot % PAGE].as_ref().map(Keyed::key)
}

impl<T: Keyed> Table<T> {
    fn index_mut(&mut self, key: ConnectionKey) -> (&mut HashTable<u32>, &[Vec<Option<T>>]) {
        let index = match key {
            ConnectionKey::Socket(_) => &mut self.by_socket,
            ConnectionKey::Inode(_) => &mut self.by_inode,
        };
        (index, &self.pages)
    }

    /// Files `slot` in the index of `key`'s kind, under `key`.
    fn file(&mut self, key: ConnectionKey, slot: u32) {
        let (index, pages) = self.index_mut(key);
        index.insert_unique(hash(key), slot, |&other| {
            hash(key_at(pages, other).expect("indexed slots hold a record"))
        });
    }

    /// Takes `key` out of its index; returns the slot it named.
    fn unfile(&mut self, key: ConnectionKey) -> Option<u32> {
        let (index, pages) = self.index_mut(key);
        let entry = index
            .find_entry(hash(key), |&slot| key_at(pages, slot) == Some(key))
            .ok()?;
        Some(entry.remove().0)
    }

    /// The slot of `key`'s record.
    pub fn find(&self, key: ConnectionKey) -> Option<u32> {
        let index = match key {
            ConnectionKey::Socket(_) => &self.by_socket,
            ConnectionKey::Inode(_) => &self.by_inode,
        };
        index
            .find(hash(key), |&slot| key_at(&self.pages, slot) == Some(key))
            .copied()
    }

    /// How many records there are.
    pub fn len(&self) -> usize {
        self.by_socket.len() + self.by_inode.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` has a record.
    pub fn contains_key(&self, key: ConnectionKey) -> bool {
        self.find(key).is_some()
    }

    /// The record of `key`.
    pub fn get(&self, key: ConnectionKey) -> Option<&T> {
        self.at(self.find(key)?)
    }

    /// The record of `key`, to change (not its key).
    pub fn get_mut(&mut self, key: ConnectionKey) -> Option<&mut T> {
        let slot = self.find(key)?;
        self.at_mut(slot)
    }

    /// The record in `slot`, if any.
    pub fn at(&self, slot: u32) -> Option<&T> {
        let slot = slot as usize;
        self.pages.get(slot / PAGE)?.get(slot % PAGE)?.as_ref()
    }

    /// The record in `slot`, if any, to change (not its key).
    pub fn at_mut(&mut self, slot: u32) -> Option<&mut T> {
        let slot = slot as usize;
        self.pages
            .get_mut(slot / PAGE)?
            .get_mut(slot % PAGE)?
            .as_mut()
    }

    /// Stores `record` under its key (replacing the one there); returns its slot.
    pub fn insert(&mut self, record: T) -> u32 {
        let key = record.key();
        let slot = match self.find(key) {
            Some(slot) => slot,
            None => {
                let slot = self.take_free_slot();
                // A resize rehashes only the slots already filed, never this one.
                self.file(key, slot);
                slot
            }
        };
        let slot_index = slot as usize;
        self.pages[slot_index / PAGE][slot_index % PAGE] = Some(record);
        slot
    }

    /// Takes the record of `key` out.
    pub fn remove(&mut self, key: ConnectionKey) -> Option<T> {
        let slot = self.unfile(key)?;
        self.free.push(slot);
        let slot_index = slot as usize;
        let record = self.pages[slot_index / PAGE][slot_index % PAGE].take();
        self.release_pages_if_empty();
        record
    }

    /// Moves the record of `from` under `to` (where `to` has none): `change` makes its key `to`.
    /// True when it moved.
    pub fn rekey(
        &mut self,
        from: ConnectionKey,
        to: ConnectionKey,
        change: impl FnOnce(&mut T),
    ) -> bool {
        if self.contains_key(to) {
            return false;
        }
        let Some(slot) = self.unfile(from) else {
            return false;
        };
        let record = self.at_mut(slot).expect("an indexed slot holds a record");
        change(record);
        debug_assert_eq!(record.key(), to, "the change gives the record its new key");
        self.file(to, slot);
        true
    }

    /// Every record, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.pages.iter().flatten().flatten()
    }

    /// Every record, to change (not its key), in no particular order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.pages.iter_mut().flatten().flatten()
    }

    fn take_free_slot(&mut self) -> u32 {
        if let Some(slot) = self.free.pop() {
            return slot;
        }
        if self.pages.last().is_none_or(|page| page.len() == PAGE) {
            // Exactly one page: a Vec with this capacity is never reallocated.
            self.pages.push(Vec::with_capacity(PAGE));
        }
        let full_pages = self.pages.len() - 1;
        let page = self.pages.last_mut().expect("a page was just ensured");
        let slot = full_pages * PAGE + page.len();
        page.push(None);
        u32::try_from(slot).expect("fewer than 4 billion connections")
    }

    /// Once the table is empty again (a burst of connections is gone), gives its pages and
    /// indexes back, so it shrinks; a single page is kept for the next connections.
    fn release_pages_if_empty(&mut self) {
        if !self.is_empty() || self.pages.len() <= 1 {
            return;
        }
        self.pages.clear();
        self.free = Vec::new();
        self.by_socket = HashTable::new();
        self.by_inode = HashTable::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of the tests: a value under a key.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Record {
        key: ConnectionKey,
        value: u64,
    }

    impl Keyed for Record {
        fn key(&self) -> ConnectionKey {
            self.key
        }
    }

    fn socket(n: u64, value: u64) -> Record {
        Record {
            key: ConnectionKey::Socket(n),
            value,
        }
    }

    fn inode(n: u64, value: u64) -> Record {
        Record {
            key: ConnectionKey::Inode(n),
            value,
        }
    }

    fn value(table: &Table<Record>, key: ConnectionKey) -> Option<u64> {
        table.get(key).map(|record| record.value)
    }

    #[test]
    fn records_are_found_by_either_kind_of_key() {
        let mut table = Table::default();
        table.insert(socket(7, 1));
        table.insert(inode(7, 2));
        assert_eq!(table.len(), 2);
        assert_eq!(value(&table, ConnectionKey::Socket(7)), Some(1));
        assert_eq!(value(&table, ConnectionKey::Inode(7)), Some(2));
        let slot = table.insert(socket(7, 3));
        table.at_mut(slot).expect("just inserted").value = 4;
        assert_eq!(value(&table, ConnectionKey::Socket(7)), Some(4));
        assert_eq!(table.find(ConnectionKey::Socket(7)), Some(slot));
        assert_eq!(table.len(), 2);
        assert_eq!(value(&table, ConnectionKey::Socket(8)), None);
    }

    #[test]
    fn slots_are_reused_and_pages_do_not_move() {
        let mut table = Table::default();
        for n in 0..(PAGE as u64 * 3 + 5) {
            table.insert(socket(n, n));
        }
        assert_eq!(table.pages.len(), 4);
        let first_page = table.pages[0].as_ptr();
        for n in 0..PAGE as u64 {
            assert_eq!(table.remove(ConnectionKey::Socket(n)), Some(socket(n, n)));
        }
        for n in 0..PAGE as u64 {
            table.insert(inode(n, n + 1));
        }
        assert_eq!(table.pages.len(), 4, "freed slots were reused");
        assert_eq!(table.pages[0].as_ptr(), first_page);
        assert_eq!(table.len(), PAGE * 3 + 5);
        let sum: u64 = table.values().map(|record| record.value).sum();
        let expected: u64 =
            (PAGE as u64..PAGE as u64 * 3 + 5).sum::<u64>() + (1..=PAGE as u64).sum::<u64>();
        assert_eq!(sum, expected);
        for n in PAGE as u64..PAGE as u64 * 3 + 5 {
            assert_eq!(
                value(&table, ConnectionKey::Socket(n)),
                Some(n),
                "found after growth"
            );
        }
    }

    #[test]
    fn rekeying_moves_a_record_without_copying_it() {
        let mut table = Table::default();
        let slot = table.insert(inode(99, 1));
        let moved = table.rekey(
            ConnectionKey::Inode(99),
            ConnectionKey::Socket(0xffff_0001),
            |record| record.key = ConnectionKey::Socket(0xffff_0001),
        );
        assert!(moved);
        assert_eq!(table.get(ConnectionKey::Inode(99)), None);
        assert_eq!(table.find(ConnectionKey::Socket(0xffff_0001)), Some(slot));
        table.insert(inode(5, 2));
        let rename = |record: &mut Record| record.key = ConnectionKey::Socket(0xffff_0001);
        assert!(!table.rekey(
            ConnectionKey::Inode(5),
            ConnectionKey::Socket(0xffff_0001),
            rename
        ));
        assert!(!table.rekey(ConnectionKey::Inode(6), ConnectionKey::Socket(1), rename));
        assert_eq!(value(&table, ConnectionKey::Inode(5)), Some(2));
    }

    #[test]
    fn an_emptied_table_gives_its_pages_back() {
        let mut table = Table::default();
        for n in 0..(PAGE as u64 * 2) {
            table.insert(socket(n, n));
        }
        for n in 0..(PAGE as u64 * 2) {
            table.remove(ConnectionKey::Socket(n));
        }
        assert!(table.is_empty() && table.pages.is_empty() && table.free.is_empty());
        table.insert(socket(1, 1));
        assert_eq!(table.values().count(), 1);
        assert_eq!(table.at(0), Some(&socket(1, 1)));
        assert_eq!(table.at(1), None);
    }
}
