//! Names from a Go binary's own line table (`.gopclntab`), for binaries whose symbol table was
//! stripped (`-ldflags=-s`, every Debian Go package): the Go runtime keeps this table for its
//! tracebacks, so it is always there, and `go tool addr2line` reads it. Go 1.18 and later
//! (the header Go's `debug/gosym` calls `ver118` and `ver120`, which share a layout).
//!
//! Written by hand: no maintained crate reads it (the ones on crates.io belong to disassemblers
//! and decompilers), and the part probe needs, a function's name, file and line at an address,
//! is a binary search and two small value tables (Go's `runtime/symtab.go` is the reference).
//! The table comes from a traced process's file: every offset is checked against the table's
//! size, every loop is bounded by it.

use object::{Object, ObjectSection};

/// The largest table read (prometheus's is 14 MiB).
const MAX_TABLE_BYTES: u64 = 128 << 20;

const MAGIC_GO118: u32 = 0xffff_fff0;
const MAGIC_GO120: u32 = 0xffff_fff1;

/// A Go line table.
pub struct GoLineTable {
    table: Vec<u8>,
    min_instruction: u64,
    functions: usize,
    text_start: u64,
    names: usize,
    compile_units: usize,
    files: usize,
    values: usize,
    function_table: usize,
}

/// A function, and the file and line of an address in it.
#[derive(Debug, PartialEq, Eq)]
pub struct GoLocation {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

impl GoLineTable {
    /// The line table of the Go binary `elf`, where it has one of a layout known here.
    pub fn read<'data>(
        elf: &object::File<'data, impl object::ReadRef<'data>>,
    ) -> Option<GoLineTable> {
        let section = elf.section_by_name(".gopclntab")?;
        if section.size() > MAX_TABLE_BYTES {
            return None;
        }
        let text = elf
            .section_by_name(".text")
            .map_or(0, |text| text.address());
        GoLineTable::parse(section.data().ok()?.to_vec(), text)
    }

    /// Where function `name` starts, as the binary states it (what a symbol table would say
    /// of it): how hooks find the runtime's functions in a binary whose symbols were stripped.
    pub fn entry_of(&self, name: &str) -> Option<u64> {
        // The name and its NUL, compared in place: a table's names are read no further than
        // the length of the one sought (a hostile table's could be 4 KiB each, millions of them).
        let sought = [name.as_bytes(), &[0]].concat();
        (0..self.functions).find_map(|index| {
            let function = self.function(index)?;
            let at = self
                .names
                .checked_add(usize::try_from(self.i32_at(function + 4)?).ok()?)?;
            (self.table.get(at..at.checked_add(sought.len())?)? == sought.as_slice())
                .then(|| {
                    self.text_start
                        .checked_add(u64::from(self.u32_at(function)?))
                })
                .flatten()
        })
    }

    /// Where the `_func` record of function `index` starts.
    fn function(&self, index: usize) -> Option<usize> {
        let offset = self.u32_at(
            self.function_table
                .checked_add(index.checked_mul(8)?.checked_add(4)?)?,
        )?;
        self.function_table
            .checked_add(usize::try_from(offset).ok()?)
    }
    /// Parses `table`, the contents of `.gopclntab`, of a binary whose `.text` starts at
    /// `text` (where the header's own text address is left to a relocation: a position
    /// independent build); `None` for a layout other than Go 1.18's and later's, or a header
    /// that does not fit the table.
    pub fn parse(table: Vec<u8>, text: u64) -> Option<GoLineTable> {
        let magic = u32::from_le_bytes(table.get(0..4)?.try_into().ok()?);
        if !matches!(magic, MAGIC_GO118 | MAGIC_GO120) || table.get(7) != Some(&8) {
            return None;
        }
        let word = |index: usize| -> Option<u64> {
            let at = 8 + index * 8;
            Some(u64::from_le_bytes(table.get(at..at + 8)?.try_into().ok()?))
        };
        let offset = |index: usize| -> Option<usize> {
            let offset = usize::try_from(word(index)?).ok()?;
            (offset < table.len()).then_some(offset)
        };
        let parsed = GoLineTable {
            min_instruction: u64::from(*table.get(6)?).max(1),
            functions: usize::try_from(word(0)?).ok()?,
            text_start: match word(2)? {
                0 => text,
                stated => stated,
            },
            names: offset(3)?,
            compile_units: offset(4)?,
            files: offset(5)?,
            values: offset(6)?,
            function_table: offset(7)?,
            table: Vec::new(),
        };
        // The function table: (entry, offset) pairs and a last entry, of 4 bytes each.
        let end = parsed
            .functions
            .checked_mul(8)?
            .checked_add(4)?
            .checked_add(parsed.function_table)?;
        (end <= table.len()).then_some(GoLineTable { table, ..parsed })
    }

    /// The function at `address` (as the binary states it), with its file and line.
    pub fn locate(&self, address: u64) -> Option<GoLocation> {
        let relative = address.checked_sub(self.text_start)?;
        if relative >= self.entry(self.functions)? {
            return None;
        }
        // The last function whose entry is at or below the address.
        let index = self
            .partition_point(|index| self.entry(index).is_some_and(|entry| entry <= relative))
            .checked_sub(1)?;
        let function = self.function_table
            + usize::try_from(self.u32_at(self.function_table + index * 8 + 4)?).ok()?;
        let entry = u64::from(self.u32_at(function)?);
        let name_offset = usize::try_from(self.i32_at(function + 4)?).ok()?;
        let name = self.c_string(self.names.checked_add(name_offset)?)?;
        let target = relative.checked_add(self.text_start)?;
        let start = entry.checked_add(self.text_start)?;
        let line = self
            .value_at(self.u32_at(function + 24)?, start, target)
            .and_then(|line| u32::try_from(line).ok());
        let file = self
            .value_at(self.u32_at(function + 20)?, start, target)
            .and_then(|index| self.file(self.u32_at(function + 32)?, index));
        Some(GoLocation {
            function: name,
            file,
            line,
        })
    }

    /// The entry (relative to the text start) of function `index`; `functions` gives the end.
    fn entry(&self, index: usize) -> Option<u64> {
        Some(u64::from(self.u32_at(
            self.function_table.checked_add(index.checked_mul(8)?)?,
        )?))
    }

    /// The first function index for which `below` is false (functions are sorted by entry).
    fn partition_point(&self, below: impl Fn(usize) -> bool) -> usize {
        let (mut low, mut high) = (0, self.functions);
        while low < high {
            let middle = low + (high - low) / 2;
            if below(middle) {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    /// The value a pc-value table (at `offset` in the value tables) holds for `target`, in a
    /// function starting at `start`: Go's `pcvalue`.
    fn value_at(&self, offset: u32, start: u64, target: u64) -> Option<i64> {
        let mut at = self.values.checked_add(usize::try_from(offset).ok()?)?;
        let mut value: i64 = -1;
        let mut pc = start;
        let mut first = true;
        while at < self.table.len() {
            let (delta, next) = self.uvarint(at)?;
            if delta == 0 && !first {
                return None;
            }
            first = false;
            let delta = if delta & 1 != 0 {
                !(delta >> 1) as i64
            } else {
                (delta >> 1) as i64
            };
            value = value.checked_add(delta)?;
            let (pc_delta, next) = self.uvarint(next)?;
            pc = pc.checked_add(pc_delta.checked_mul(self.min_instruction)?)?;
            at = next;
            if target < pc {
                return Some(value);
            }
        }
        None
    }

    /// The name of file `index` of the compile unit at `unit`, without its directory.
    fn file(&self, unit: u32, index: i64) -> Option<String> {
        let slot = usize::try_from(unit)
            .ok()?
            .checked_add(usize::try_from(index).ok()?)?;
        let at = self.compile_units.checked_add(slot.checked_mul(4)?)?;
        let offset = self.u32_at(at)?;
        if offset == u32::MAX {
            return None;
        }
        let path = self.c_string(self.files.checked_add(usize::try_from(offset).ok()?)?)?;
        Some(path.rsplit('/').next().unwrap_or(&path).to_string())
    }

    fn u32_at(&self, at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(
            self.table.get(at..at.checked_add(4)?)?.try_into().ok()?,
        ))
    }

    fn i32_at(&self, at: usize) -> Option<i32> {
        Some(self.u32_at(at)? as i32)
    }

    /// A NUL-terminated string at `at` (at most 4 KiB: Go's longest names are far shorter).
    fn c_string(&self, at: usize) -> Option<String> {
        let rest = self.table.get(at..)?;
        let rest = &rest[..rest.len().min(4096)];
        let end = rest.iter().position(|&byte| byte == 0)?;
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    }

    /// An unsigned LEB128 varint at `at`, and where the next value starts.
    fn uvarint(&self, mut at: usize) -> Option<(u64, usize)> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.table.get(at)?;
            at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some((value, at));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Go 1.20 table of one function, `main.f`, at 0x1000-0x1010 of text; its name ends
    /// with `name_end` (a NUL, or not).
    fn one_function(name_end: u8) -> Vec<u8> {
        let mut table = vec![0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        // nfunc, nfiles, textStart, then the offsets of names, compile units, files, values
        // and the function table.
        for word in [1u64, 0, 0x1000, 128, 127, 127, 127, 72] {
            table.extend_from_slice(&word.to_le_bytes());
        }
        // The function table: (entry 0, record at +16), and the end entry 0x10.
        for word in [0u32, 16, 0x10] {
            table.extend_from_slice(&word.to_le_bytes());
        }
        table.resize(88, 0);
        // The record: entry 0, name at 0 of the names; every table offset 0.
        table.resize(128, 0);
        table.extend_from_slice(b"main.f");
        table.push(name_end);
        table
    }

    #[test]
    fn a_function_is_found_by_name_and_by_address() {
        let table = GoLineTable::parse(one_function(0), 0).unwrap();
        assert_eq!(table.entry_of("main.f"), Some(0x1000));
        assert_eq!(table.entry_of("main.g"), None);
        assert_eq!(table.entry_of("main"), None);
        let located = table.locate(0x1008).unwrap();
        assert_eq!(located.function, "main.f");
        assert_eq!(table.locate(0x1010), None);
        assert_eq!(table.locate(0xfff), None);
    }

    #[test]
    fn a_name_that_runs_off_the_table_names_nothing() {
        let table = GoLineTable::parse(one_function(b'x'), 0).unwrap();
        assert_eq!(table.entry_of("main.f"), None);
        assert_eq!(table.locate(0x1008), None);
    }

    #[test]
    fn tables_of_other_layouts_or_cut_short_are_refused() {
        assert!(GoLineTable::parse(Vec::new(), 0).is_none());
        // Go 1.16's magic.
        let mut old = vec![0xfa, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        old.resize(128, 0);
        assert!(GoLineTable::parse(old, 0).is_none());
        // Go 1.20's magic, a header claiming more functions than the table holds.
        let mut short = vec![0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        short.extend_from_slice(&u64::MAX.to_le_bytes());
        short.resize(128, 0);
        assert!(GoLineTable::parse(short, 0).is_none());
    }
}
