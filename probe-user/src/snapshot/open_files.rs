//! Every process's fd table at once, decoded from the records of the kernel's `task_file`
//! iterator (see `bpf::open_files`).

use std::borrow::Cow;

use probe_common::OpenFile;
// Keyed by pid: the kernel's numbers, not input anyone chooses; a fast hash does.
use rustc_hash::FxHashMap;

use super::FdTable;

/// The fd table of every process on the host, from one read of the kernel's iterator.
#[derive(Debug, Default)]
pub struct OpenFiles {
    tables: FxHashMap<u32, FdTable>,
}

impl OpenFiles {
    /// The tables written in `records`: [`OpenFile`]s back to back, in this machine's byte order
    /// (a partial record at the end, which the kernel never writes, is ignored).
    pub fn decode(records: &[u8]) -> OpenFiles {
        let mut tables: FxHashMap<u32, FdTable> = FxHashMap::default();
        for record in records.chunks_exact(size_of::<OpenFile>()) {
            let file = decode(record);
            let table = tables.entry(file.tgid).or_default();
            table.open += 1;
            if file.socket_inode != 0 {
                table.sockets.insert(file.socket_inode);
            }
        }
        OpenFiles { tables }
    }

    /// Process `pid`'s table: empty for a process with no open file (or gone).
    pub(super) fn table(&self, pid: u32) -> Cow<'_, FdTable> {
        self.tables
            .get(&pid)
            .map_or_else(|| Cow::Owned(FdTable::default()), Cow::Borrowed)
    }

    /// Every process's table.
    pub(super) fn tables(&self) -> impl Iterator<Item = (u32, &FdTable)> {
        self.tables.iter().map(|(&pid, table)| (pid, table))
    }
}

/// One record: the fields of `#[repr(C)] OpenFile` at their offsets (read field by field, so
/// no alignment or validity is assumed of the bytes).
fn decode(record: &[u8]) -> OpenFile {
    let u32_at = |at: usize| u32::from_ne_bytes(record[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_ne_bytes(record[at..at + 8].try_into().expect("8 bytes"));
    OpenFile {
        tgid: u32_at(std::mem::offset_of!(OpenFile, tgid)),
        fd: u32_at(std::mem::offset_of!(OpenFile, fd)),
        socket_inode: u64_at(std::mem::offset_of!(OpenFile, socket_inode)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tgid: u32, fd: u32, socket_inode: u64) -> Vec<u8> {
        [
            &tgid.to_ne_bytes()[..],
            &fd.to_ne_bytes(),
            &socket_inode.to_ne_bytes(),
        ]
        .concat()
    }

    #[test]
    fn records_become_each_process_table() {
        let mut records = [
            record(10, 0, 0),
            record(10, 3, 777),
            record(10, 4, 778),
            record(20, 5, 777),
            // A thread with a table of its own repeats a socket: once in the set.
            record(20, 6, 777),
        ]
        .concat();
        records.extend_from_slice(&[1, 2, 3]);
        let files = OpenFiles::decode(&records);
        let ten = files.table(10);
        assert_eq!(ten.open, 3);
        assert_eq!(ten.sockets, [777, 778].into_iter().collect());
        let twenty = files.table(20);
        assert_eq!((twenty.open, twenty.sockets.len()), (2, 1));
        assert_eq!(*files.table(30), FdTable::default());
        assert_eq!(files.tables().count(), 2);
    }
}
