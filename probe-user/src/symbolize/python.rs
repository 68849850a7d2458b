//! Naming the CPython frames the kernel program found at a connect: each frame's code object
//! is read from the process's memory (`/proc/PID/mem`) for its function, file and line table.
//! The process is untrusted: every object is checked to be a code object before it is read,
//! every string and table is bounded, and a frame that cannot be read is left out.

use std::{collections::HashMap, fs::File, os::unix::fs::FileExt, path::Path, sync::Arc};

use probe_common::{PythonFrame, PythonStack};

use crate::{
    process::python::{CodeLayout, InstructionField, PythonRuntime, lines},
    track::{CodePath, Frame, code_path::classify},
};

/// The longest name or path read (CPython's own limit on a path is the system's, 4096).
const MAX_STRING: u64 = 4096;
/// The longest line table read (a function of thousands of lines takes tens of KiB).
const MAX_TABLE: u64 = 256 << 10;
/// The most bytes of names and tables kept for one process in one burst: code objects past it
/// are read for the frame at hand and not kept (a hostile process can point its frames at as
/// many fake code objects as it likes).
const MAX_KEPT: usize = 32 << 20;
/// What one remembered code object costs beside its names and table (the map's entry).
const ENTRY_SIZE: usize = 64;
/// The most type objects remembered per process and burst.
const MAX_TYPES: usize = 4096;
/// `PyObject.ob_type`, `PyTypeObject.tp_name`: the same in every version.
const OB_TYPE: u64 = 8;
const TP_NAME: u64 = 24;
/// `PyASCIIObject`: `length` and `state`; `PyBytesObject`: `ob_size` and `ob_sval`.
const STR_LENGTH: u64 = 16;
const STR_STATE: u64 = 32;
const BYTES_SIZE: u64 = 16;
const BYTES_DATA: u64 = 32;

/// What a code object says of itself.
struct Code {
    function: String,
    path: String,
    first_line: i32,
    line_table: Vec<u8>,
}

/// One CPython process, read for the names of its code objects.
pub struct PythonProcess {
    memory: File,
    runtime: PythonRuntime,
    /// Code objects read, by address (`None`: not a code object, or unreadable).
    codes: HashMap<u64, Option<Arc<Code>>>,
    /// Type objects read, by address: whether each is `code`.
    code_types: HashMap<u64, bool>,
    /// The bytes `codes` holds.
    kept: usize,
}

impl PythonProcess {
    /// Opens process `pid`'s memory, whose interpreter is `runtime`.
    pub fn open(pid: u32, runtime: PythonRuntime) -> Option<PythonProcess> {
        let memory = File::open(format!("/proc/{pid}/mem")).ok()?;
        Some(PythonProcess {
            memory,
            runtime,
            codes: HashMap::new(),
            code_types: HashMap::new(),
            kept: 0,
        })
    }

    /// The code path of `stack`: a frame per Python function, innermost first.
    pub fn code_path(&mut self, stack: &PythonStack) -> Option<CodePath> {
        let len = (stack.len as usize).min(stack.frames.len());
        let frames: Vec<Frame> = stack.frames[..len]
            .iter()
            .filter_map(|frame| self.frame(frame))
            .collect();
        (!frames.is_empty()).then_some(CodePath { frames })
    }

    fn frame(&mut self, frame: &PythonFrame) -> Option<Frame> {
        let code = self.code(frame.code)?;
        let layout = &self.runtime.version.code;
        let offset = instruction_offset(layout, frame)?;
        let file = Some(shown_path(&code.path));
        Some(Frame {
            kind: classify::python_file(&code.path),
            function: code.function.clone(),
            file,
            line: lines::line(
                layout.line_format,
                &code.line_table,
                code.first_line,
                offset,
            ),
            address: frame.code,
        })
    }

    fn code(&mut self, address: u64) -> Option<Arc<Code>> {
        if let Some(known) = self.codes.get(&address) {
            return known.clone();
        }
        let code = self.read_code(address).map(Arc::new);
        // An address that holds no code object is remembered too, and counts as well: a
        // hostile process may point its frames at any number of them.
        let size = ENTRY_SIZE
            + code.as_ref().map_or(0, |code| {
                code.function.len() + code.path.len() + code.line_table.len()
            });
        if self.kept + size <= MAX_KEPT {
            self.kept += size;
            self.codes.insert(address, code.clone());
        }
        code
    }

    fn read_code(&mut self, address: u64) -> Option<Code> {
        let kind = self.word(address.checked_add(OB_TYPE)?)?;
        if !self.is_code_type(kind) {
            return None;
        }
        let layout = &self.runtime.version.code;
        let name_at = layout.qualname.unwrap_or(layout.name);
        let function = self.string(self.word(address.checked_add(name_at)?)?)?;
        let path = self.string(self.word(address.checked_add(layout.filename)?)?)?;
        let first_line = self.read::<4>(address.checked_add(layout.first_line)?)?;
        let line_table = self
            .bytes_object(self.word(address.checked_add(layout.line_table)?)?)
            .unwrap_or_default();
        Some(Code {
            function,
            path,
            first_line: i32::from_le_bytes(first_line),
            line_table,
        })
    }

    /// Whether the type object at `address` is named `code`.
    fn is_code_type(&mut self, address: u64) -> bool {
        if let Some(&known) = self.code_types.get(&address) {
            return known;
        }
        let is_code = address
            .checked_add(TP_NAME)
            .and_then(|at| self.word(at))
            .and_then(|name| self.read::<5>(name))
            == Some(*b"code\0");
        // A real interpreter has a handful of types that frames point at; a hostile one may
        // point at many: only so many are remembered.
        if self.code_types.len() < MAX_TYPES {
            self.code_types.insert(address, is_code);
        }
        is_code
    }

    /// A compact `str` (every name and path the compiler makes): ASCII, Latin-1, UCS-2 or
    /// UCS-4 characters right after its header.
    fn string(&self, address: u64) -> Option<String> {
        let layout = &self.runtime.version.code;
        let length = u64::from_le_bytes(self.read::<8>(address.checked_add(STR_LENGTH)?)?);
        let state = u32::from_le_bytes(self.read::<4>(address.checked_add(STR_STATE)?)?);
        let (kind, compact, ascii) = (
            (state >> 2) & 7,
            state & (1 << 5) != 0,
            state & (1 << 6) != 0,
        );
        if !compact || length > MAX_STRING || !matches!(kind, 1 | 2 | 4) {
            return None;
        }
        let data = address.checked_add(if ascii {
            layout.ascii_size
        } else {
            layout.compact_size
        })?;
        let bytes = self.read_vec(data, length * u64::from(kind))?;
        let characters: Option<String> = match kind {
            1 => Some(bytes.iter().map(|&b| char::from(b)).collect()),
            2 => bytes
                .chunks_exact(2)
                .map(|c| char::from_u32(u32::from(u16::from_le_bytes([c[0], c[1]]))))
                .collect(),
            _ => bytes
                .chunks_exact(4)
                .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        };
        characters
    }

    /// The contents of the `bytes` object at `address`.
    fn bytes_object(&self, address: u64) -> Option<Vec<u8>> {
        let size = u64::from_le_bytes(self.read::<8>(address.checked_add(BYTES_SIZE)?)?);
        if size > MAX_TABLE {
            return None;
        }
        self.read_vec(address.checked_add(BYTES_DATA)?, size)
    }

    fn word(&self, address: u64) -> Option<u64> {
        self.read::<8>(address).map(u64::from_le_bytes)
    }

    fn read<const N: usize>(&self, address: u64) -> Option<[u8; N]> {
        let mut bytes = [0; N];
        self.memory.read_exact_at(&mut bytes, address).ok()?;
        Some(bytes)
    }

    fn read_vec(&self, address: u64, len: u64) -> Option<Vec<u8>> {
        let mut bytes = vec![0; usize::try_from(len).ok()?];
        self.memory.read_exact_at(&mut bytes, address).ok()?;
        Some(bytes)
    }
}

/// How a Python file is shown: a module of the standard library or of an installed package by
/// its path from where imports start (`requests/sessions.py`, `http/client.py`: what names the
/// library), the program's own files by their name.
fn shown_path(path: &str) -> String {
    for root in ["/site-packages/", "/dist-packages/"] {
        if let Some((_, module)) = path.rsplit_once(root) {
            return module.to_string();
        }
    }
    if let Some((_, rest)) = path.rsplit_once("/lib/python3.")
        && let Some((_, module)) = rest.split_once('/')
    {
        return module.to_string();
    }
    Path::new(path).file_name().map_or_else(
        || path.to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

/// The byte offset into its code of `frame`'s instruction.
fn instruction_offset(layout: &CodeLayout, frame: &PythonFrame) -> Option<u64> {
    // `f_lasti` is an `int`: the low half of the word the kernel read.
    let last = frame.instruction as u32 as i32;
    match layout.instruction {
        InstructionField::ByteOffset => u64::try_from(last).ok(),
        InstructionField::Index => u64::try_from(last).ok().map(|index| index * 2),
        InstructionField::Pointer => frame
            .instruction
            .checked_sub(frame.code.checked_add(layout.instructions?)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_module_is_shown_from_where_imports_start_and_the_programs_by_name() {
        assert_eq!(
            shown_path("/srv/venv/lib/python3.11/site-packages/requests/sessions.py"),
            "requests/sessions.py"
        );
        assert_eq!(
            shown_path("/usr/lib/python3/dist-packages/redis/connection.py"),
            "redis/connection.py"
        );
        assert_eq!(
            shown_path("/root/.pyenv/versions/3.12.1/lib/python3.12/http/client.py"),
            "http/client.py"
        );
        assert_eq!(shown_path("/srv/app/leaky.py"), "leaky.py");
        assert_eq!(
            shown_path("<frozen importlib._bootstrap>"),
            "<frozen importlib._bootstrap>"
        );
    }
}
