//! The storage of the connection table, built for many open connections at a small, steady cost
//! each: records live in fixed-size pages (growing never copies them, and wastes at most one page),
//! freed slots are reused, and two small indexes map kernel socket addresses and socket inodes to
//! slots.

// Looked up on every event; the keys are kernel socket addresses and inode numbers, not input
// anyone can choose, so a fast hash does (SipHash was a tenth of probe's CPU time).
use rustc_hash::FxHashMap as HashMap;

use super::lifecycle::ConnectionKey;

/// Records per page.
const PAGE: usize = 1024;

/// Records of type `T`, each under one [`ConnectionKey`].
#[derive(Debug)]
pub struct Table<T> {
    pages: Vec<Vec<Option<T>>>,
    /// Slots emptied by [`Table::remove`], reused first.
    free: Vec<u32>,
    by_socket: HashMap<u64, u32>,
    by_inode: HashMap<u64, u32>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            pages: Vec::new(),
            free: Vec::new(),
            by_socket: HashMap::default(),
            by_inode: HashMap::default(),
        }
    }
}

impl<T> Table<T> {
    fn index(&self, key: ConnectionKey) -> &HashMap<u64, u32> {
        match key {
            ConnectionKey::Socket(_) => &self.by_socket,
            ConnectionKey::Inode(_) => &self.by_inode,
        }
    }

    fn index_mut(&mut self, key: ConnectionKey) -> (&mut HashMap<u64, u32>, u64) {
        match key {
            ConnectionKey::Socket(address) => (&mut self.by_socket, address),
            ConnectionKey::Inode(inode) => (&mut self.by_inode, inode),
        }
    }

    fn raw(key: ConnectionKey) -> u64 {
        match key {
            ConnectionKey::Socket(raw) | ConnectionKey::Inode(raw) => raw,
        }
    }

    fn slot(&self, slot: u32) -> &Option<T> {
        let slot = slot as usize;
        &self.pages[slot / PAGE][slot % PAGE]
    }

    fn slot_mut(&mut self, slot: u32) -> &mut Option<T> {
        let slot = slot as usize;
        &mut self.pages[slot / PAGE][slot % PAGE]
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
        self.index(key).contains_key(&Self::raw(key))
    }

    /// The record of `key`.
    pub fn get(&self, key: ConnectionKey) -> Option<&T> {
        let slot = *self.index(key).get(&Self::raw(key))?;
        self.slot(slot).as_ref()
    }

    /// The record of `key`, to change.
    pub fn get_mut(&mut self, key: ConnectionKey) -> Option<&mut T> {
        let slot = *self.index(key).get(&Self::raw(key))?;
        self.slot_mut(slot).as_mut()
    }

    /// Stores `record` under `key` (replacing the one there) and returns it.
    pub fn insert(&mut self, key: ConnectionKey, record: T) -> &mut T {
        let (index, raw) = self.index_mut(key);
        let existing = index.get(&raw).copied();
        let slot = match existing {
            Some(slot) => slot,
            None => {
                let slot = self.take_free_slot();
                let (index, raw) = self.index_mut(key);
                index.insert(raw, slot);
                slot
            }
        };
        self.slot_mut(slot).insert(record)
    }

    /// Takes the record of `key` out.
    pub fn remove(&mut self, key: ConnectionKey) -> Option<T> {
        let (index, raw) = self.index_mut(key);
        let slot = index.remove(&raw)?;
        self.free.push(slot);
        let record = self.slot_mut(slot).take();
        self.release_pages_if_empty();
        record
    }

    /// Moves the record of `from` under `to` (where `to` has none); true when it moved.
    pub fn rekey(&mut self, from: ConnectionKey, to: ConnectionKey) -> bool {
        if self.contains_key(to) {
            return false;
        }
        let (index, raw) = self.index_mut(from);
        let Some(slot) = index.remove(&raw) else {
            return false;
        };
        let (index, raw) = self.index_mut(to);
        index.insert(raw, slot);
        true
    }

    /// Every record, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.pages.iter().flatten().flatten()
    }

    /// Every record, to change, in no particular order.
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

    /// Once the table is empty again (a burst of connections is gone), gives its pages back, so
    /// it shrinks; a single page is kept for the next connections.
    fn release_pages_if_empty(&mut self) {
        if !self.is_empty() || self.pages.len() <= 1 {
            return;
        }
        self.pages.clear();
        self.free = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_found_by_either_kind_of_key() {
        let mut table: Table<&str> = Table::default();
        table.insert(ConnectionKey::Socket(7), "by socket");
        table.insert(ConnectionKey::Inode(7), "by inode");
        assert_eq!(table.len(), 2);
        assert_eq!(table.get(ConnectionKey::Socket(7)), Some(&"by socket"));
        assert_eq!(table.get(ConnectionKey::Inode(7)), Some(&"by inode"));
        *table.insert(ConnectionKey::Socket(7), "replaced") = "changed";
        assert_eq!(table.get(ConnectionKey::Socket(7)), Some(&"changed"));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn slots_are_reused_and_pages_do_not_move() {
        let mut table: Table<u64> = Table::default();
        for n in 0..(PAGE as u64 * 3 + 5) {
            table.insert(ConnectionKey::Socket(n), n);
        }
        assert_eq!(table.pages.len(), 4);
        let first_page = table.pages[0].as_ptr();
        for n in 0..PAGE as u64 {
            assert_eq!(table.remove(ConnectionKey::Socket(n)), Some(n));
        }
        for n in 0..PAGE as u64 {
            table.insert(ConnectionKey::Inode(n), n + 1);
        }
        assert_eq!(table.pages.len(), 4, "freed slots were reused");
        assert_eq!(table.pages[0].as_ptr(), first_page);
        assert_eq!(table.len(), PAGE * 3 + 5);
        let sum: u64 = table.values().sum();
        let expected: u64 =
            (PAGE as u64..PAGE as u64 * 3 + 5).sum::<u64>() + (1..=PAGE as u64).sum::<u64>();
        assert_eq!(sum, expected);
    }

    #[test]
    fn rekeying_moves_a_record_without_copying_it() {
        let mut table: Table<&str> = Table::default();
        table.insert(ConnectionKey::Inode(99), "found at attach");
        assert!(table.rekey(ConnectionKey::Inode(99), ConnectionKey::Socket(0xffff_0001)));
        assert_eq!(table.get(ConnectionKey::Inode(99)), None);
        assert_eq!(
            table.get(ConnectionKey::Socket(0xffff_0001)),
            Some(&"found at attach")
        );
        table.insert(ConnectionKey::Inode(5), "other");
        assert!(!table.rekey(ConnectionKey::Inode(5), ConnectionKey::Socket(0xffff_0001)));
        assert!(!table.rekey(ConnectionKey::Inode(6), ConnectionKey::Socket(1)));
    }

    #[test]
    fn an_emptied_table_gives_its_pages_back() {
        let mut table: Table<u64> = Table::default();
        for n in 0..(PAGE as u64 * 2) {
            table.insert(ConnectionKey::Socket(n), n);
        }
        for n in 0..(PAGE as u64 * 2) {
            table.remove(ConnectionKey::Socket(n));
        }
        assert!(table.is_empty() && table.pages.is_empty() && table.free.is_empty());
        table.insert(ConnectionKey::Socket(1), 1);
        assert_eq!(table.values().count(), 1);
    }
}
