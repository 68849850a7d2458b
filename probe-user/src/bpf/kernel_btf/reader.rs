//! Just enough of a BTF reader to find struct members: the type section indexed by id, names from
//! the string section, members looked up through anonymous unions and structs.
//!
//! The crates that parse BTF either turn every type of the kernel into owned values first
//! (btfparse: about 60 MiB and 100 ms for a 5 MiB vmlinux, all for three structs) or are LGPL;
//! aya's own parser keeps its types private. This reader indexes the raw bytes (4 bytes a type)
//! and decodes only what a lookup touches. The unit tests check it against btfparse.

/// `BTF_MAGIC` as a little-endian kernel writes it.
const MAGIC: u16 = 0xeb9f;

// Kinds (`BTF_KIND_*` of include/uapi/linux/btf.h).
const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const FWD: u32 = 7;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const FLOAT: u32 = 16;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

/// Raw BTF, indexed.
pub struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Where type `id` starts in `types`, at `starts[id - 1]` (id 0 is void).
    starts: Vec<u32>,
}

/// A struct or union member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member's type id.
    pub type_id: u32,
    /// Offset in bits from the start of the outermost struct looked up.
    pub bit_offset: u32,
    /// Whether the member is a bitfield.
    pub bitfield: bool,
}

impl<'a> Btf<'a> {
    /// Indexes `bytes`, which must be raw little-endian BTF such as `/sys/kernel/btf/vmlinux`.
    pub fn parse(bytes: &'a [u8]) -> Result<Btf<'a>, String> {
        if u16_at(bytes, 0) != Some(MAGIC) {
            return Err("no little-endian BTF magic".into());
        }
        let header = |at| u32_at(bytes, at).ok_or("truncated header");
        let header_len = header(4)? as usize;
        let section = |offset: usize, len: usize| {
            let start = header_len + header(offset)? as usize;
            bytes
                .get(start..start + header(len)? as usize)
                .ok_or("a section runs past the end")
        };
        let types = section(8, 12)?;
        let strings = section(16, 20)?;
        let mut starts = Vec::new();
        let mut at = 0;
        while at < types.len() {
            starts.push(u32::try_from(at).map_err(|_| "type section too large")?);
            at += record_len(types, at)?;
        }
        Ok(Btf {
            types,
            strings,
            starts,
        })
    }

    /// The id of the struct named `name`.
    pub fn struct_named(&self, name: &str) -> Option<u32> {
        (1..=self.starts.len() as u32)
            .find(|&id| self.kind(id) == Some(STRUCT) && self.name(id) == Some(name))
    }

    /// The member at dotted `path` in struct or union `id` (anonymous members looked through).
    pub fn member(&self, id: u32, path: &str) -> Option<Member> {
        let mut found = Member {
            type_id: id,
            bit_offset: 0,
            bitfield: false,
        };
        for name in path.split('.') {
            let inner = self.direct_member(self.resolve(found.type_id)?, name)?;
            found = Member {
                bit_offset: found.bit_offset + inner.bit_offset,
                ..inner
            };
        }
        Some(found)
    }

    /// The size in bytes of type `id`.
    pub fn size(&self, id: u32) -> Option<usize> {
        let id = self.resolve(id)?;
        let at = self.start(id)?;
        match self.kind(id)? {
            INT | STRUCT | UNION | ENUM | ENUM64 | FLOAT => {
                Some(u32_at(self.types, at + 8)? as usize)
            }
            // A kernel pointer: the BPF programs read them as 64-bit values (BPF is 64-bit).
            PTR => Some(8),
            ARRAY => {
                let element = u32_at(self.types, at + 12)?;
                let count = u32_at(self.types, at + 20)? as usize;
                Some(self.size(element)? * count)
            }
            _ => None,
        }
    }

    /// Member `name` of struct or union `id`, searching anonymous members too.
    fn direct_member(&self, id: u32, name: &str) -> Option<Member> {
        if !matches!(self.kind(id)?, STRUCT | UNION) {
            return None;
        }
        let at = self.start(id)?;
        let bitfield_offsets = u32_at(self.types, at + 4)? >> 31 == 1;
        (0..self.vlen(id)?).find_map(|index| {
            let entry = at + 12 + 12 * index;
            let name_offset = u32_at(self.types, entry)?;
            let type_id = u32_at(self.types, entry + 4)?;
            let raw = u32_at(self.types, entry + 8)?;
            let (bit_offset, bitfield) = if bitfield_offsets {
                (raw & 0xff_ffff, raw >> 24 != 0)
            } else {
                (raw, false)
            };
            if name_offset == 0 {
                let inner = self.direct_member(self.resolve(type_id)?, name)?;
                return Some(Member {
                    bit_offset: bit_offset + inner.bit_offset,
                    ..inner
                });
            }
            (self.string(name_offset)? == name).then_some(Member {
                type_id,
                bit_offset,
                bitfield,
            })
        })
    }

    /// `id` with typedefs and qualifiers stripped.
    fn resolve(&self, mut id: u32) -> Option<u32> {
        // A chain longer than the number of types would be a cycle.
        for _ in 0..=self.starts.len() {
            match self.kind(id)? {
                TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => {
                    id = u32_at(self.types, self.start(id)? + 8)?;
                }
                _ => return Some(id),
            }
        }
        None
    }

    fn start(&self, id: u32) -> Option<usize> {
        let index = usize::try_from(id.checked_sub(1)?).ok()?;
        Some(*self.starts.get(index)? as usize)
    }

    fn kind(&self, id: u32) -> Option<u32> {
        Some((u32_at(self.types, self.start(id)? + 4)? >> 24) & 0x1f)
    }

    fn vlen(&self, id: u32) -> Option<usize> {
        Some((u32_at(self.types, self.start(id)? + 4)? & 0xffff) as usize)
    }

    fn name(&self, id: u32) -> Option<&str> {
        self.string(u32_at(self.types, self.start(id)?)?)
    }

    fn string(&self, offset: u32) -> Option<&str> {
        let rest = self.strings.get(offset as usize..)?;
        let end = rest.iter().position(|&byte| byte == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }
}

/// The length of the type record at `at`: the common 12 bytes and what its kind adds.
fn record_len(types: &[u8], at: usize) -> Result<usize, String> {
    let info = u32_at(types, at + 4).ok_or("truncated type record")?;
    let vlen = (info & 0xffff) as usize;
    let kind = (info >> 24) & 0x1f;
    let extra = match kind {
        INT | VAR | DECL_TAG => 4,
        ARRAY => 12,
        STRUCT | UNION | DATASEC | ENUM64 => 12 * vlen,
        ENUM | FUNC_PROTO => 8 * vlen,
        PTR | FWD | TYPEDEF | VOLATILE | CONST | RESTRICT | FUNC | FLOAT | TYPE_TAG => 0,
        _ => return Err(format!("unknown BTF kind {kind}")),
    };
    Ok(12 + extra)
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}
