//! CPython's line tables: which source line a byte offset into a code object's instructions
//! is on. Three formats, as CPython's own `PyCode_Addr2Line` reads them (`Objects/codeobject.c`
//! of each version, and `Objects/locations.md` for 3.11's); written here because no crate
//! reads them. The tables come from a traced process: every read is bounded by the table.

/// How a version writes its line table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFormat {
    /// `co_lnotab` (3.8, 3.9): pairs of (bytecode increment, signed line increment).
    Lnotab,
    /// `co_linetable` (3.10): pairs of (bytecode length, signed line delta; -128 for none).
    Linetable,
    /// `co_linetable` (3.11 and later): the location table, entries of code units.
    Locations,
}

/// The line of the instruction at byte `offset` of a code object that starts at `first_line`
/// and whose line table is `table`; `None` where the table gives it none.
pub fn line(format: LineFormat, table: &[u8], first_line: i32, offset: u64) -> Option<u32> {
    let line = match format {
        LineFormat::Lnotab => lnotab(table, first_line, offset),
        LineFormat::Linetable => linetable(table, first_line, offset),
        LineFormat::Locations => locations(table, first_line, offset),
    }?;
    u32::try_from(line).ok()
}

fn lnotab(table: &[u8], first_line: i32, offset: u64) -> Option<i64> {
    let mut line = i64::from(first_line);
    let mut address = 0u64;
    for pair in table.chunks_exact(2) {
        address += u64::from(pair[0]);
        if address > offset {
            break;
        }
        line += i64::from(pair[1] as i8);
    }
    Some(line)
}

fn linetable(table: &[u8], first_line: i32, offset: u64) -> Option<i64> {
    let mut line = i64::from(first_line);
    let mut end = 0u64;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += u64::from(pair[0]);
        let delta = pair[1] as i8;
        let here = (delta != -128).then(|| {
            line += i64::from(delta);
            line
        });
        if (start..end).contains(&offset) {
            return here;
        }
    }
    None
}

fn locations(table: &[u8], first_line: i32, offset: u64) -> Option<i64> {
    let mut bytes = table.iter().copied();
    let mut line = i64::from(first_line);
    let mut end = 0u64;
    while let Some(first) = bytes.next() {
        let code = (first >> 3) & 15;
        let start = end;
        // The entry's length is in code units of two bytes.
        end += (u64::from(first & 7) + 1) * 2;
        let here = match code {
            // No location.
            15 => None,
            // The long form: line delta, end line, column, end column.
            14 => {
                line += signed_varint(&mut bytes)?;
                for _ in 0..3 {
                    varint(&mut bytes)?;
                }
                Some(line)
            }
            // No column: line delta only.
            13 => {
                line += signed_varint(&mut bytes)?;
                Some(line)
            }
            // One line, delta 0 to 2, then the column and end column.
            10..=12 => {
                line += i64::from(code - 10);
                bytes.next()?;
                bytes.next()?;
                Some(line)
            }
            // The short form: the same line, a column byte.
            _ => {
                bytes.next()?;
                Some(line)
            }
        };
        if (start..end).contains(&offset) {
            return here;
        }
    }
    None
}

/// A location table's unsigned varint: six bits a byte, low first; bit 6 says more follow.
fn varint(bytes: &mut impl Iterator<Item = u8>) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(6) {
        let byte = bytes.next()?;
        value |= u64::from(byte & 63) << shift;
        if byte & 64 == 0 {
            return Some(value);
        }
    }
    None
}

/// A location table's signed varint: the sign in the lowest bit.
fn signed_varint(bytes: &mut impl Iterator<Item = u8>) -> Option<i64> {
    let value = varint(bytes)?;
    let magnitude = (value >> 1) as i64;
    Some(if value & 1 != 0 {
        -magnitude
    } else {
        magnitude
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Tables written by the formats' rules; the integration tests check the lines probe
    // prints against the real interpreters' (3.8 to 3.13).
    #[test]
    fn the_lnotab_of_38_gives_the_lines_dis_gives() {
        // def f():        (line 1)
        //     a = 1       (line 2, offsets 0-3)
        //     b = 2       (line 3, offsets 4-7)
        //     return a+b  (line 4, offsets 8-)
        let table = [0, 1, 4, 1, 4, 1];
        assert_eq!(line(LineFormat::Lnotab, &table, 1, 0), Some(2));
        assert_eq!(line(LineFormat::Lnotab, &table, 1, 6), Some(3));
        assert_eq!(line(LineFormat::Lnotab, &table, 1, 10), Some(4));
    }

    #[test]
    fn the_linetable_of_310_gives_the_lines_and_none_where_there_is_none() {
        let table = [4, 1, 4, 1, 6, 1, 2, 0x80];
        assert_eq!(line(LineFormat::Linetable, &table, 1, 0), Some(2));
        assert_eq!(line(LineFormat::Linetable, &table, 1, 5), Some(3));
        assert_eq!(line(LineFormat::Linetable, &table, 1, 13), Some(4));
        assert_eq!(line(LineFormat::Linetable, &table, 1, 14), None);
        assert_eq!(line(LineFormat::Linetable, &table, 1, 100), None);
    }

    #[test]
    fn each_form_of_the_location_table_moves_the_line_as_311_does() {
        let table = [
            // No column, line +1, one code unit (bytes 0-1): line 2.
            0x80 | (13 << 3),
            2,
            // One-line form, +1, two units (bytes 2-5): line 3.
            0x80 | (11 << 3) | 1,
            4,
            9,
            // Short form, same line, one unit (bytes 6-7): line 3.
            0x80 | (3 << 3),
            0x12,
            // Long form, line -2 (signed varint 5), then three varints, one unit: line 1.
            0x80 | (14 << 3),
            5,
            0,
            0x41,
            2,
            3,
            // No location, one unit (bytes 10-11).
            0x80 | (15 << 3),
        ];
        assert_eq!(line(LineFormat::Locations, &table, 1, 0), Some(2));
        assert_eq!(line(LineFormat::Locations, &table, 1, 3), Some(3));
        assert_eq!(line(LineFormat::Locations, &table, 1, 6), Some(3));
        assert_eq!(line(LineFormat::Locations, &table, 1, 8), Some(1));
        assert_eq!(line(LineFormat::Locations, &table, 1, 10), None);
        assert_eq!(line(LineFormat::Locations, &table, 1, 12), None);
    }

    #[test]
    fn a_truncated_or_hostile_table_ends_the_search_without_a_panic() {
        assert_eq!(
            line(LineFormat::Locations, &[0x80 | (14 << 3), 0x7f], 1, 0),
            None
        );
        assert_eq!(line(LineFormat::Locations, &[0xff; 64], 1, 1000), None);
        assert_eq!(line(LineFormat::Linetable, &[1], 1, 0), None);
        // A line that would be negative is no line.
        assert_eq!(line(LineFormat::Lnotab, &[0, 0x80], 1, 0), None);
    }
}
