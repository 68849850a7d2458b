//! Unwinding the user stacks the kernel program copies at connect ([`StackCopy`]): from the
//! registers at the system call, with the unwind tables (`.eh_frame`, `.debug_frame`) of the
//! files the process maps, as `perf --call-graph dwarf` does. This names the callers a
//! frame-pointer walk loses in code built without frame pointers (distribution binaries, Rust
//! release builds, the C library). framehop does the unwinding; this module finds the modules.
//!
//! Everything here comes from a traced process (its stack bytes, the files it maps) and is
//! untrusted: the stack is read only within the copy, section sizes are capped, the frames
//! counted.

use std::{
    collections::HashMap,
    fs::File,
    ops::Range,
    sync::Arc,
    time::{Duration, Instant},
};

use framehop::{ExplicitModuleSectionInfo, Module, Unwinder};
use object::{Object, ObjectSection, ObjectSegment, ReadCache, SegmentFlags};
use probe_common::{STACK_COPY_BYTES, StackCopy};
use procfs::process::{MMPermissions, MMapPath};

/// The frames of one unwind, at most (deeper stacks are cut, as the kernel's walk is).
const MAX_FRAMES: usize = 127;
/// The largest unwind section read from a file; a larger one is not used (no real binary has
/// one near it, and a traced process chooses the files it maps).
const MAX_SECTION_BYTES: u64 = 64 << 20;
/// How many files' unwind tables are kept, and how many processes' module lists.
const MAX_FILES: usize = 256;
const MAX_PROCESSES: usize = 64;
/// The unwind tables kept, in bytes at most, and those one process's modules may hold: a
/// traced process chooses how many files it maps (a real one maps tens to a few hundred, with
/// tables of a few MiB between them).
const MAX_CACHED_BYTES: usize = 512 << 20;
const MAX_PROCESS_BYTES: usize = 256 << 20;
/// How long a process's module list is trusted before it is read again (libraries loaded
/// since are found then, or at once when an unwind starts outside every module).
const MODULES_TTL: Duration = Duration::from_secs(10);

/// Section data, shared by every process that maps the file.
type Data = Arc<[u8]>;

/// A file's unwind tables and where its segments lie, as stated in the file.
struct FileTables {
    eh_frame: Option<(Range<u64>, Data)>,
    eh_frame_hdr: Option<(Range<u64>, Data)>,
    debug_frame: Option<Data>,
    text: Option<Range<u64>>,
    got: Option<Range<u64>>,
    segments: Vec<Segment>,
}

impl FileTables {
    /// Reads the tables of the ELF file `file`; `None` when it is not one or has none.
    fn read(file: File) -> Option<FileTables> {
        let cache = ReadCache::new(file);
        let elf = object::File::parse(&cache).ok()?;
        let section = |name: &str| {
            let section = elf.section_by_name(name)?;
            let range = section.address()..section.address().checked_add(section.size())?;
            Some((section, range))
        };
        let data = |name: &str| -> Option<(Range<u64>, Data)> {
            let (section, range) = section(name)?;
            if section.size() > MAX_SECTION_BYTES {
                return None;
            }
            Some((range, Arc::from(section.data().ok()?)))
        };
        let tables = FileTables {
            eh_frame: data(".eh_frame"),
            eh_frame_hdr: data(".eh_frame_hdr"),
            debug_frame: data(".debug_frame").map(|(_, data)| data),
            text: section(".text").map(|(_, range)| range),
            got: section(".got").map(|(_, range)| range),
            segments: segments(&elf),
        };
        (tables.eh_frame.is_some() || tables.debug_frame.is_some()).then_some(tables)
    }

    /// How many bytes of tables it holds.
    fn bytes(&self) -> usize {
        let section = |data: Option<&Data>| data.map_or(0, |data| data.len());
        section(self.eh_frame.as_ref().map(|(_, data)| data))
            + section(self.eh_frame_hdr.as_ref().map(|(_, data)| data))
            + section(self.debug_frame.as_ref())
    }

    /// Where the file's stated address 0 lies in a process that maps file offset `offset` at
    /// `start`: the start, less the stated address of that offset.
    fn base(&self, start: u64, offset: u64) -> Option<u64> {
        load_base(&self.segments, start, offset)
    }

    fn module(&self, name: String, avma: Range<u64>, base: u64) -> Module<Data> {
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: self.text.clone(),
            got_svma: self.got.clone(),
            eh_frame_svma: self.eh_frame.as_ref().map(|(range, _)| range.clone()),
            eh_frame: self.eh_frame.as_ref().map(|(_, data)| Arc::clone(data)),
            eh_frame_hdr_svma: self.eh_frame_hdr.as_ref().map(|(range, _)| range.clone()),
            eh_frame_hdr: self.eh_frame_hdr.as_ref().map(|(_, data)| Arc::clone(data)),
            debug_frame: self.debug_frame.clone(),
            ..ExplicitModuleSectionInfo::default()
        };
        Module::new(name, avma, base, info)
    }
}

/// The loadable segments of `elf`.
pub(super) fn segments<'data>(
    elf: &object::File<'data, impl object::ReadRef<'data>>,
) -> Vec<Segment> {
    elf.segments()
        .filter_map(|segment| {
            let (offset, size) = segment.file_range();
            let executable = matches!(
                segment.flags(),
                SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0
            );
            (size > 0).then_some(Segment {
                address: segment.address(),
                offset,
                size,
                executable,
            })
        })
        .collect()
}

/// A loadable segment of a file, as the file states it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Segment {
    address: u64,
    offset: u64,
    size: u64,
    executable: bool,
}

/// The load base of a file mapped from `offset` at `start` (an executable mapping): the
/// executable segment the mapping holds says which stated address that offset has. A
/// segment's file offset and address agree modulo the page size, and its mapping starts at
/// its offset rounded down to a page, where the segment before it may end.
pub(super) fn load_base(segments: &[Segment], start: u64, offset: u64) -> Option<u64> {
    const PAGE: u64 = 4096;
    let holds = |segment: &&Segment| {
        (segment.offset & !(PAGE - 1)) <= offset
            && offset < segment.offset.saturating_add(segment.size)
    };
    let segment = segments
        .iter()
        .filter(holds)
        .find(|segment| segment.executable)
        .or_else(|| segments.iter().find(holds))?;
    let stated = segment
        .address
        .checked_add(offset)?
        .checked_sub(segment.offset)?;
    start.checked_sub(stated)
}

#[cfg(target_arch = "x86_64")]
use framehop::x86_64::{CacheX86_64 as ArchCache, UnwinderX86_64 as ArchUnwinder};

#[cfg(target_arch = "aarch64")]
use framehop::aarch64::{CacheAarch64 as ArchCache, UnwinderAarch64 as ArchUnwinder};

/// The registers an unwind starts from: on x86-64 the return address is on the stack.
#[cfg(target_arch = "x86_64")]
fn unwind_registers(copy: &StackCopy) -> framehop::x86_64::UnwindRegsX86_64 {
    framehop::x86_64::UnwindRegsX86_64::new(copy.ip, copy.sp, copy.bp)
}

/// The registers an unwind starts from: on arm64 the innermost return address is in the link
/// register.
#[cfg(target_arch = "aarch64")]
fn unwind_registers(copy: &StackCopy) -> framehop::aarch64::UnwindRegsAarch64 {
    framehop::aarch64::UnwindRegsAarch64::new(copy.lr, copy.sp, copy.bp)
}

/// One process's modules, as framehop wants them.
struct ProcessModules {
    unwinder: ArchUnwinder<Data>,
    code: Vec<Range<u64>>,
    read_at: Instant,
}

impl ProcessModules {
    fn covers(&self, address: u64) -> bool {
        self.code.iter().any(|range| range.contains(&address))
    }
}

/// Unwinds stack copies, keeping what it read of files and processes between them.
#[derive(Default)]
pub struct StackUnwinder {
    files: HashMap<(u64, u64), Option<Arc<FileTables>>>,
    /// The bytes of the tables in `files`.
    cached_bytes: usize,
    processes: HashMap<u32, ProcessModules>,
    cache: ArchCache,
}

impl StackUnwinder {
    /// The addresses of `copy`'s frames, innermost first (the instruction pointer, then the
    /// return addresses), as far as the unwind tables and the copy reach.
    pub fn unwind(&mut self, copy: &StackCopy) -> Unwound {
        let pid = copy.tgid;
        let stale = self.processes.get(&pid).is_none_or(|modules| {
            modules.read_at.elapsed() > MODULES_TTL || !modules.covers(copy.ip)
        });
        if stale {
            if self.processes.len() >= MAX_PROCESSES {
                self.processes.clear();
            }
            let modules = self.read_modules(pid);
            self.processes.insert(pid, modules);
        }
        let Some(modules) = self.processes.get(&pid) else {
            return Unwound {
                frames: vec![copy.ip],
                complete: false,
            };
        };
        let stack = &copy.bytes[..(copy.len as usize).min(STACK_COPY_BYTES)];
        let mut read_stack = |address: u64| read_word(stack, copy.sp, address);
        let regs = unwind_registers(copy);
        let mut frames =
            modules
                .unwinder
                .iter_frames(copy.ip, regs, &mut self.cache, &mut read_stack);
        let mut addresses = Vec::new();
        let mut complete = false;
        loop {
            match frames.next() {
                Ok(Some(frame)) => addresses.push(frame.address()),
                Ok(None) => {
                    complete = true;
                    break;
                }
                Err(error) => {
                    log::debug!(
                        "the unwind of a stack of pid {pid} stopped after {} frames: {error}",
                        addresses.len()
                    );
                    break;
                }
            }
            if addresses.len() >= MAX_FRAMES {
                break;
            }
        }
        Unwound {
            frames: addresses,
            complete,
        }
    }

    /// The modules of process `pid`: every file it maps executable, with its unwind tables.
    fn read_modules(&mut self, pid: u32) -> ProcessModules {
        let mut unwinder = ArchUnwinder::new();
        let mut code = Vec::new();
        let mut held_bytes = 0;
        let maps = procfs::process::Process::new(pid as i32)
            .and_then(|process| process.maps())
            .map(|maps| maps.0)
            .unwrap_or_default();
        for map in maps {
            let MMapPath::Path(path) = &map.pathname else {
                continue;
            };
            if !map.perms.contains(MMPermissions::EXECUTE) || map.inode == 0 {
                continue;
            }
            let (start, end) = map.address;
            let tables = self.tables(pid, &map, start, end);
            let Some(tables) = tables else {
                continue;
            };
            let Some(base) = tables.base(start, map.offset) else {
                continue;
            };
            held_bytes += tables.bytes();
            if held_bytes > MAX_PROCESS_BYTES {
                log::debug!("pid {pid} maps more unwind tables than probe reads: some left out");
                break;
            }
            code.push(start..end);
            unwinder.add_module(tables.module(
                path.to_string_lossy().into_owned(),
                start..end,
                base,
            ));
        }
        ProcessModules {
            unwinder,
            code,
            read_at: Instant::now(),
        }
    }

    /// The unwind tables of the file `map` maps, read once per file (by device and inode),
    /// through `/proc/PID/map_files`: the very file the process maps, whatever its mount
    /// namespace and even when it was replaced or deleted since.
    fn tables(
        &mut self,
        pid: u32,
        map: &procfs::process::MemoryMap,
        start: u64,
        end: u64,
    ) -> Option<Arc<FileTables>> {
        let dev = ((map.dev.0 as u64) << 32) | (map.dev.1 as u64 & 0xffff_ffff);
        let key = (dev, map.inode);
        if let Some(tables) = self.files.get(&key) {
            return tables.clone();
        }
        if self.files.len() >= MAX_FILES || self.cached_bytes > MAX_CACHED_BYTES {
            self.files.clear();
            self.cached_bytes = 0;
        }
        let path = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
        let tables = crate::process::binary::open_regular(
            std::path::Path::new(&path),
            crate::process::binary::LastLink::Follow,
        )
        .ok()
        .and_then(FileTables::read)
        .map(Arc::new);
        self.cached_bytes += tables.as_ref().map_or(0, |tables| tables.bytes());
        self.files.insert(key, tables.clone());
        tables
    }
}

/// The frames of an unwound stack copy.
pub struct Unwound {
    /// The instruction pointer, then the return addresses.
    pub frames: Vec<u64>,
    /// Whether the unwind reached the stack's root (the first function of the thread), rather
    /// than stopping at the end of the copy or of what the unwind tables say.
    pub complete: bool,
}

/// The word at `address` of a stack copied from `sp`; an error outside the copy.
fn read_word(stack: &[u8], sp: u64, address: u64) -> Result<u64, ()> {
    let offset = usize::try_from(address.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
    let bytes = stack
        .get(offset..offset.checked_add(8).ok_or(())?)
        .ok_or(())?;
    Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_read_only_within_the_copy() {
        let stack: Vec<u8> = (0u8..32).collect();
        let sp = 0x7000;
        assert_eq!(read_word(&stack, sp, sp), Ok(0x0706_0504_0302_0100));
        assert_eq!(read_word(&stack, sp, sp + 24), Ok(0x1f1e_1d1c_1b1a_1918));
        assert_eq!(read_word(&stack, sp, sp + 25), Err(()));
        assert_eq!(read_word(&stack, sp, sp - 8), Err(()));
        assert_eq!(read_word(&stack, sp, u64::MAX), Err(()));
    }

    fn segment(address: u64, offset: u64, size: u64, executable: bool) -> Segment {
        Segment {
            address,
            offset,
            size,
            executable,
        }
    }

    #[test]
    fn the_load_base_follows_the_executable_segment_of_the_mapped_offset() {
        // A PIE: text at stated 0x1000 from file offset 0x1000, mapped at 0x5555_0000_1000.
        let pie = [
            segment(0, 0, 0x800, false),
            segment(0x1000, 0x1000, 0x4000, true),
        ];
        assert_eq!(
            load_base(&pie, 0x5555_0000_1000, 0x1000),
            Some(0x5555_0000_0000)
        );
        // As lld lays out Rust binaries: the text segment starts mid-page (file 0x148a0,
        // stated 0x158a0), its mapping at the page below, where the read-only segment ends.
        let lld = [
            segment(0, 0, 0x148a0, false),
            segment(0x158a0, 0x148a0, 0x41e00, true),
        ];
        assert_eq!(
            load_base(&lld, 0x5629_ddac_7000, 0x14000),
            Some(0x5629_ddab_2000)
        );
        // A fixed-address executable: stated where it is mapped.
        let fixed = [
            segment(0x40_0000, 0, 0x800, false),
            segment(0x40_1000, 0x1000, 0x4000, true),
        ];
        assert_eq!(load_base(&fixed, 0x40_1000, 0x1000), Some(0));
        // An offset no segment holds, or a mapping below its stated address: no base.
        assert_eq!(load_base(&pie, 0x5555_0000_1000, 0x9000), None);
        assert_eq!(load_base(&fixed, 0x1000, 0x1000), None);
    }

    /// The registers and 8 KiB of stack of this very thread, as the kernel program copies
    /// them at a connect (on x86-64, where the tests run).
    #[cfg(target_arch = "x86_64")]
    #[inline(never)]
    fn copy_own_stack() -> Box<StackCopy> {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers into outputs; touches no memory.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
            );
        }
        let mut copy = Box::new(StackCopy {
            tgid: std::process::id(),
            stack_id: 0,
            ip,
            sp,
            bp,
            lr: 0,
            len: STACK_COPY_BYTES as u32,
            _pad: 0,
            bytes: [0; STACK_COPY_BYTES],
        });
        // This thread's stack is far deeper than the copy; read through /proc like the
        // kernel would, from the stack pointer up.
        let memory = File::open("/proc/self/mem").expect("own memory");
        std::os::unix::fs::FileExt::read_exact_at(&memory, &mut copy.bytes, sp).expect("stack");
        copy
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(never)]
    fn caller_of_the_copy() -> (Box<StackCopy>, u64) {
        let copy = copy_own_stack();
        (
            std::hint::black_box(copy),
            caller_of_the_copy as *const () as u64,
        )
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_copied_stack_unwinds_through_its_callers() {
        let (copy, caller) = caller_of_the_copy();
        let frames = StackUnwinder::default().unwind(&copy).frames;
        assert!(frames.len() >= 3, "{frames:x?}");
        // The return address into the caller lies just after its start (a short function).
        assert!(
            frames[1..]
                .iter()
                .any(|&address| (caller..caller + 512).contains(&address)),
            "no frame in caller_of_the_copy at {caller:#x}: {frames:x?}"
        );
    }
}
