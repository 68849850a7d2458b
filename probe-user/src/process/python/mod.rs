//! CPython in a traced process, as it runs (no flags): which version it is, where its
//! `_PyRuntime` lies, and the layouts of the structures probe reads, for the kernel program's
//! walk of the interpreter's frames at a connect ([`PythonLayout`]) and for naming the code
//! objects it found ([`CodeLayout`], [`lines`]).
//!
//! The offsets are those of CPython 3.8 to 3.13 on x86-64, as the interpreter's own headers
//! give them (`offsetof` over `Include/internal`, checked against pyenv's builds and Debian's
//! 3.11). They are written down here rather than read from the interpreter because production
//! Pythons are stripped of their debug information; only 3.13 publishes its offsets
//! (`_Py_DebugOffsets`), and the table agrees with them.

pub mod lines;

use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use object::{Object, ObjectKind, ObjectSection, ObjectSegment, ObjectSymbol, ReadCache};
use probe_common::PythonLayout;

use crate::process::binary::{LastLink, open_regular};
use lines::LineFormat;

/// The CPython interpreter of one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PythonRuntime {
    /// The minor version (3.`minor`), one of those [`Version::of`] knows.
    pub version: &'static Version,
    /// The address of `_PyRuntime` in the process.
    pub runtime: u64,
}

/// Where one CPython version keeps what probe reads.
#[derive(Debug, PartialEq, Eq)]
pub struct Version {
    /// 3.`minor`.
    pub minor: u8,
    /// `_PyRuntimeState`: `interpreters.main`.
    runtime_main: u32,
    interpreter_threads: u32,
    thread_next: u32,
    thread_id: u32,
    thread_frame: u32,
    cframe_frame: u32,
    frame_previous: u32,
    frame_code: u32,
    frame_instruction: u32,
    frame_owner: u32,
    cstack_owner: u32,
    /// Where code objects keep their names, file and line table.
    pub code: CodeLayout,
}

/// Where a CPython version's code objects and strings keep what names a frame.
#[derive(Debug, PartialEq, Eq)]
pub struct CodeLayout {
    /// `co_filename` (a `str`).
    pub filename: u64,
    /// `co_name` (a `str`).
    pub name: u64,
    /// `co_qualname` (a `str`, 3.11 and later): `Class.method`.
    pub qualname: Option<u64>,
    /// `co_firstlineno` (an `int`).
    pub first_line: u64,
    /// The line table (`co_lnotab`, `co_linetable`: a `bytes`).
    pub line_table: u64,
    /// `co_code_adaptive`, where the instructions start (3.11 and later: a frame points into
    /// them); `None` where a frame holds an instruction index (`f_lasti`).
    pub instructions: Option<u64>,
    /// How the line table is written.
    pub line_format: LineFormat,
    /// `sizeof(PyASCIIObject)`: where a compact ASCII string's characters start.
    pub ascii_size: u64,
    /// `sizeof(PyCompactUnicodeObject)`: where another compact string's characters start.
    pub compact_size: u64,
    /// How a frame's instruction field becomes a byte offset into the code.
    pub instruction: InstructionField,
}

/// What a frame's instruction field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstructionField {
    /// `f_lasti` (an `int`): the byte offset of the last instruction (3.8, 3.9).
    ByteOffset,
    /// `f_lasti` (an `int`): the index of the last instruction, two bytes each (3.10).
    Index,
    /// `prev_instr`/`instr_ptr`: a pointer into `co_code_adaptive` (3.11 and later).
    Pointer,
}

/// Offsets shared by 3.8 to 3.10, whose layouts differ only in `f_lasti` and the line table.
const fn before_311(minor: u8, frame_instruction: u32, line_format: LineFormat) -> Version {
    Version {
        minor,
        runtime_main: 40,
        interpreter_threads: 8,
        thread_next: 8,
        thread_id: 176,
        thread_frame: 24,
        cframe_frame: PythonLayout::NONE,
        frame_previous: 24,
        frame_code: 32,
        frame_instruction,
        frame_owner: PythonLayout::NONE,
        cstack_owner: PythonLayout::NO_OWNER,
        code: CodeLayout {
            filename: 104,
            name: 112,
            qualname: None,
            first_line: 40,
            line_table: 120,
            instructions: None,
            line_format,
            ascii_size: 48,
            compact_size: 72,
            instruction: if minor < 10 {
                InstructionField::ByteOffset
            } else {
                InstructionField::Index
            },
        },
    }
}

/// The code objects of 3.11 and later, whose layouts differ only in where the first line and
/// the instructions are, and in the size of a string's header (3.12 dropped `wstr`).
const fn from_311(
    first_line: u64,
    instructions: u64,
    ascii_size: u64,
    compact_size: u64,
) -> CodeLayout {
    CodeLayout {
        filename: 112,
        name: 120,
        qualname: Some(128),
        first_line,
        line_table: 136,
        instructions: Some(instructions),
        line_format: LineFormat::Locations,
        ascii_size,
        compact_size,
        instruction: InstructionField::Pointer,
    }
}

/// The versions probe reads, by minor version.
static VERSIONS: [Version; 6] = [
    before_311(8, 104, LineFormat::Lnotab),
    before_311(9, 104, LineFormat::Lnotab),
    before_311(10, 96, LineFormat::Linetable),
    Version {
        minor: 11,
        runtime_main: 48,
        interpreter_threads: 16,
        thread_next: 8,
        thread_id: 152,
        thread_frame: 56,
        cframe_frame: 8,
        frame_previous: 48,
        frame_code: 32,
        frame_instruction: 56,
        frame_owner: 69,
        cstack_owner: PythonLayout::NO_OWNER,
        code: from_311(72, 184, 48, 72),
    },
    Version {
        minor: 12,
        runtime_main: 48,
        interpreter_threads: 72,
        thread_next: 8,
        thread_id: 136,
        thread_frame: 56,
        cframe_frame: 0,
        frame_previous: 8,
        frame_code: 0,
        frame_instruction: 56,
        frame_owner: 70,
        cstack_owner: 3,
        code: from_311(68, 192, 40, 56),
    },
    Version {
        minor: 13,
        runtime_main: 640,
        interpreter_threads: 7344,
        thread_next: 8,
        thread_id: 152,
        thread_frame: 72,
        cframe_frame: PythonLayout::NONE,
        frame_previous: 8,
        frame_code: 0,
        frame_instruction: 56,
        frame_owner: 70,
        cstack_owner: 3,
        code: from_311(68, 200, 40, 56),
    },
];

impl Version {
    /// The layout of CPython 3.`minor`, if probe knows it.
    pub fn of(minor: u8) -> Option<&'static Version> {
        VERSIONS.iter().find(|version| version.minor == minor)
    }
}

impl PythonRuntime {
    /// What the kernel program needs to walk this interpreter's frames.
    pub fn kernel_layout(&self) -> PythonLayout {
        let v = self.version;
        PythonLayout {
            main_interpreter: self.runtime + u64::from(v.runtime_main),
            interpreter_threads: v.interpreter_threads,
            thread_next: v.thread_next,
            thread_id: v.thread_id,
            thread_frame: v.thread_frame,
            cframe_frame: v.cframe_frame,
            frame_previous: v.frame_previous,
            frame_code: v.frame_code,
            frame_instruction: v.frame_instruction,
            frame_owner: v.frame_owner,
            cstack_owner: v.cstack_owner,
        }
    }
}

/// What a file that holds a CPython interpreter says about it: its version and where
/// `_PyRuntime` lies, as the file states it (before the load bias).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interpreter {
    pub minor: u8,
    /// `_PyRuntime`'s stated address.
    pub runtime: u64,
    /// For a position-independent file (a shared library, a PIE, loaded at a bias): the
    /// stated address of its first loadable segment, which is mapped from the file's start;
    /// `None` for an executable loaded where it says.
    pub first_segment: Option<u64>,
}

/// The interpreter in `file` (the executable, or a `libpython3.N.so`), named `name`: the one
/// that defines `_PyRuntime`. Its version is `Py_Version` (3.11 and later), else the `3.N` of
/// its name (`python3.9`, `libpython3.9.so.1.0`).
pub fn interpreter(file: &File, name: &str) -> Option<Interpreter> {
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let mut runtime = None;
    let mut version = None;
    for symbol in elf.dynamic_symbols() {
        match symbol.name() {
            Ok("_PyRuntime") if symbol.is_definition() => runtime = Some(symbol.address()),
            Ok("Py_Version") if symbol.is_definition() => version = Some(symbol.address()),
            _ => {}
        }
    }
    let runtime = runtime?;
    let minor = version
        .and_then(|address| read_stated(&elf, address))
        .map(|hex| (hex >> 16) as u8)
        .or_else(|| minor_in_name(name))?;
    let first_segment = if elf.kind() == ObjectKind::Dynamic {
        Some(elf.segments().map(|segment| segment.address()).min()?)
    } else {
        None
    };
    Some(Interpreter {
        minor,
        runtime,
        first_segment,
    })
}

/// The 4 bytes at stated address `address` of `elf` (a constant in a section of the file).
fn read_stated<'data>(
    elf: &object::File<'data, impl object::ReadRef<'data>>,
    address: u64,
) -> Option<u32> {
    let section = elf.sections().find(|section| {
        (section.address()..section.address().saturating_add(section.size())).contains(&address)
    })?;
    let data = section.data().ok()?;
    let at = usize::try_from(address - section.address()).ok()?;
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// The minor version in a CPython file's name: `python3.9` and `libpython3.9.so.1.0` -> 9.
fn minor_in_name(name: &str) -> Option<u8> {
    let rest = name
        .strip_prefix("libpython3.")
        .or_else(|| name.strip_prefix("python3."))?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// Finds the CPython interpreters of processes, each file looked at once (a host runs many
/// processes of few binaries).
#[derive(Default)]
pub struct Finder {
    /// By (device, inode): the interpreter the file holds, if any.
    files: HashMap<(u64, u64), Option<Interpreter>>,
}

impl Finder {
    /// The CPython interpreter process `pid` runs, if it runs one probe knows: found in its
    /// executable or the `libpython3.N` it maps (through `/proc/PID/map_files`, the very files
    /// it maps), with `_PyRuntime`'s address in the process.
    pub fn find(&mut self, pid: u32) -> Option<PythonRuntime> {
        let maps = procfs::process::Process::new(pid as i32)
            .and_then(|process| process.maps())
            .ok()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        for map in &maps {
            let procfs::process::MMapPath::Path(path) = &map.pathname else {
                continue;
            };
            let name = file_name(path);
            let is_executable = exe.as_deref() == Some(path.as_path());
            if !(is_executable || name.starts_with("libpython3.")) || map.offset != 0 {
                continue;
            }
            let mapped = PathBuf::from(format!(
                "/proc/{pid}/map_files/{:x}-{:x}",
                map.address.0, map.address.1
            ));
            let Ok(file) = open_regular(&mapped, LastLink::Follow) else {
                continue;
            };
            let Ok(metadata) = file.metadata() else {
                continue;
            };
            let found = *self
                .files
                .entry((metadata.dev(), metadata.ino()))
                .or_insert_with(|| interpreter(&file, &name));
            let Some(found) = found else {
                continue;
            };
            let version = Version::of(found.minor)?;
            // The file's start is mapped at `map`'s start, with its first loadable segment.
            let bias = match found.first_segment {
                Some(first) => map.address.0.checked_sub(first & !0xfff)?,
                None => 0,
            };
            return Some(PythonRuntime {
                version,
                runtime: found.runtime.checked_add(bias)?,
            });
        }
        None
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minor_version_is_read_from_a_cpython_files_name() {
        assert_eq!(minor_in_name("python3.9"), Some(9));
        assert_eq!(minor_in_name("libpython3.12.so.1.0"), Some(12));
        assert_eq!(minor_in_name("python3"), None);
        assert_eq!(minor_in_name("libpython3.x.so"), None);
        assert_eq!(minor_in_name("notpython3.9"), None);
    }

    #[test]
    fn every_version_has_its_own_layout_and_the_kernel_offsets_follow_the_runtime() {
        for minor in 8..=13 {
            assert_eq!(Version::of(minor).map(|v| v.minor), Some(minor));
        }
        assert!(Version::of(7).is_none() && Version::of(14).is_none());
        let runtime = PythonRuntime {
            version: Version::of(13).unwrap(),
            runtime: 0x7f00_0000_0000,
        };
        let layout = runtime.kernel_layout();
        assert_eq!(layout.main_interpreter, 0x7f00_0000_0000 + 640);
        assert_eq!(layout.cframe_frame, PythonLayout::NONE);
        assert_eq!(Version::of(12).unwrap().cframe_frame, 0);
    }

    #[test]
    fn this_process_runs_no_python() {
        assert_eq!(Finder::default().find(std::process::id()), None);
    }
}
