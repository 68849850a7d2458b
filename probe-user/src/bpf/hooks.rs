//! Uprobes on the runtimes that connect on behalf of other code (see probe-ebpf's `runtimes`
//! module): Go's `net/http` transport and libuv (node). Attached per binary, only to the
//! traced processes' binaries and only where the functions are there to hook: a binary is
//! read once (its symbols, its Go version), and what cannot be hooked is said once per binary.
//!
//! The binaries are the traced processes' files, which they may change: each is opened once,
//! its functions are found in that open file, and the uprobes go on that same file (through
//! `/proc/self/fd`) at the offsets found. Nothing is read again by path, where a file swapped
//! in meanwhile could send the loader to read elsewhere (aya follows a `.gnu_debuglink` to
//! any path when it looks a symbol up itself).

use std::{
    collections::HashSet,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use object::{Object, ObjectKind, ObjectSection, ObjectSymbol, ReadCache};
use probe_common::names;

use crate::{
    output::escape::terminal,
    process::{
        binary::{GoBuildInfo, LastLink, open_regular},
        go_line_table::GoLineTable,
    },
};

/// Go's HTTP transport: where a goroutine asks for a connection, and where another dials it.
const GO_HOOKS: [(&str, &str); 2] = [
    (
        "net/http.(*Transport).queueForDial",
        names::GO_QUEUE_FOR_DIAL,
    ),
    ("net/http.(*Transport).dialConnFor", names::GO_DIAL_CONN_FOR),
];
/// libuv: where a TCP handle is made (inside the JavaScript call), and where it connects.
const NODE_HOOKS: [(&str, &str); 2] = [
    ("uv_tcp_init", names::NODE_TCP_INIT),
    ("uv_tcp_connect", names::NODE_TCP_CONNECT),
];

/// The binaries already looked at, and the programs loaded.
#[derive(Default)]
pub struct RuntimeHooks {
    /// (device, inode) of every binary looked at, hooked or not.
    seen: HashSet<(u64, u64)>,
    loaded: HashSet<&'static str>,
}

/// What a binary offers to hook.
#[derive(Debug, PartialEq, Eq)]
enum Hookable {
    /// Go's transport, with the file offsets of [`GO_HOOKS`]' functions.
    Go([u64; 2]),
    /// libuv, with the file offsets of [`NODE_HOOKS`]' functions.
    Node([u64; 2]),
    /// A Go binary that cannot be hooked, and why.
    GoWithout(&'static str),
    Nothing,
}

/// Why a uprobe could not be attached.
#[derive(Debug, thiserror::Error)]
enum HookError {
    #[error("the kernel object has no program {0} (probe built without stacks?)")]
    NoProgram(&'static str),
    #[error(transparent)]
    Program(#[from] ProgramError),
}

impl RuntimeHooks {
    /// Hooks the runtimes in process `pid`'s executable (`binary` when given: a command not
    /// exec'd yet) and the libraries it maps. Returns what to tell the user, once per binary.
    pub fn hook(&mut self, ebpf: &mut Ebpf, pid: u32, binary: Option<&Path>) -> Vec<String> {
        // The executable through the kernel's link (or the command's file, found by probe);
        // libraries by the paths the process maps, where it could plant a link.
        let mut files: Vec<(PathBuf, LastLink)> = vec![(
            binary
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(format!("/proc/{pid}/exe"))),
            LastLink::Follow,
        )];
        files.extend(
            mapped_runtime_libraries(pid)
                .into_iter()
                .map(|library| (library, LastLink::Refuse)),
        );
        let mut notes = Vec::new();
        for (file, last_link) in files {
            // Known by the file opened, not by where the path leads: a link planted at a
            // library's path is refused before it can mark the real library as seen.
            let Ok(opened) = open_regular(&file, last_link) else {
                continue;
            };
            let Ok(metadata) = opened.metadata() else {
                continue;
            };
            if !self.seen.insert((metadata.dev(), metadata.ino())) {
                continue;
            }
            let (hooks, offsets) = match inspect(&opened) {
                Hookable::Go(offsets) => (&GO_HOOKS, offsets),
                Hookable::Node(offsets) => (&NODE_HOOKS, offsets),
                Hookable::GoWithout(why) => {
                    notes.push(format!(
                        "{} is a Go binary {why}: the connections its HTTP client dials on \
                         goroutines of its own are named by the dialing goroutine only",
                        file.display()
                    ));
                    continue;
                }
                Hookable::Nothing => continue,
            };
            for (&(symbol, program), offset) in hooks.iter().zip(offsets) {
                if let Err(error) = self.attach(ebpf, program, &opened, offset) {
                    log::debug!(
                        "cannot hook {symbol} in {}: {error}",
                        terminal(&file.display().to_string())
                    );
                    notes.push(format!(
                        "cannot hook {symbol} in {} ({error}): connections it makes for other \
                         code are named by its own stack only",
                        file.display()
                    ));
                    break;
                }
            }
        }
        notes
    }

    /// Attaches `program` at `offset` of the open `file`: through its descriptor, so the
    /// kernel puts the uprobe on the very file inspected, whatever its path leads to now.
    fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        program: &'static str,
        file: &File,
        offset: u64,
    ) -> Result<(), HookError> {
        let uprobe: &mut UProbe = ebpf
            .program_mut(program)
            .ok_or(HookError::NoProgram(program))?
            .try_into()?;
        if self.loaded.insert(program) {
            uprobe.load()?;
        }
        let by_descriptor = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        uprobe.attach(
            UProbeAttachLocation::AbsoluteOffset(offset),
            by_descriptor,
            UProbeScope::AllProcesses,
        )?;
        Ok(())
    }
}

/// The libuv or node libraries process `pid` maps, as paths that work across mount namespaces.
fn mapped_runtime_libraries(pid: u32) -> Vec<PathBuf> {
    let Ok(maps) = procfs::process::Process::new(pid as i32).and_then(|p| p.maps()) else {
        return Vec::new();
    };
    let mut libraries: Vec<PathBuf> = maps
        .into_iter()
        .filter_map(|map| match map.pathname {
            procfs::process::MMapPath::Path(path) => Some(path),
            _ => None,
        })
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libuv.so") || name.starts_with("libnode.so"))
        })
        .map(|path| PathBuf::from(format!("/proc/{pid}/root{}", path.display())))
        .collect();
    libraries.dedup();
    libraries
}

/// What `file` (opened with [`open_regular`]) offers to hook, from its symbols and Go build
/// information (only the parts needed are read: the file is the traced process's).
fn inspect(file: &File) -> Hookable {
    let cache = ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return Hookable::Nothing;
    };
    if let Some(info) = elf.section_by_name(".go.buildinfo") {
        let parsed = info.data().map(GoBuildInfo::parse);
        if parsed.as_ref().map_or(true, |info| info.unreadable) {
            return Hookable::GoWithout("whose build information is unreadable (corrupt)");
        }
        let version = parsed.ok().and_then(|info| info.minor_version);
        return match version {
            // Older build information does not say its version inline; Go 1.17 has the
            // register ABI, but cannot be told from older Go here.
            None => Hookable::GoWithout("whose Go version cannot be read (Go 1.17 or older)"),
            Some(minor) if minor < 17 => {
                Hookable::GoWithout("built with Go 1.16 or older (before the register ABI)")
            }
            // Stripped (every Debian Go package): the line table names the functions too.
            _ if elf.section_by_name(".symtab").is_none() => {
                match GoLineTable::read(&elf).and_then(|lines| go_offsets(&elf, &lines)) {
                    Some(offsets) => Hookable::Go(offsets),
                    None => Hookable::GoWithout("without a symbol table or line table"),
                }
            }
            _ => match offsets(&elf, &GO_HOOKS) {
                Some(offsets) => Hookable::Go(offsets),
                // No HTTP client in it: nothing to hook, nothing to say.
                None => Hookable::Nothing,
            },
        };
    }
    offsets(&elf, &NODE_HOOKS).map_or(Hookable::Nothing, Hookable::Node)
}

/// The file offsets of the functions of `hooks` in `elf`, if it has them all.
fn offsets<'data>(
    elf: &object::File<'data, impl object::ReadRef<'data>>,
    hooks: &[(&str, &str); 2],
) -> Option<[u64; 2]> {
    let [first, second] = hooks.map(|(symbol, _)| file_offset(elf, symbol));
    Some([first?, second?])
}

/// The file offsets of [`GO_HOOKS`]' functions in the stripped Go binary `elf`, from its line
/// table `lines`.
fn go_offsets<'data>(
    elf: &object::File<'data, impl object::ReadRef<'data>>,
    lines: &GoLineTable,
) -> Option<[u64; 2]> {
    let text = elf.section_by_name(".text")?;
    let [first, second] = GO_HOOKS.map(|(name, _)| section_offset(&text, lines.entry_of(name)?));
    Some([first?, second?])
}

/// The file offset of function `name`'s first instruction in `elf` (where the kernel puts a
/// uprobe): its address, moved from its section's address to the section's place in the file.
fn file_offset<'data>(
    elf: &object::File<'data, impl object::ReadRef<'data>>,
    name: &str,
) -> Option<u64> {
    if !matches!(elf.kind(), ObjectKind::Executable | ObjectKind::Dynamic) {
        return None;
    }
    let symbol = elf
        .dynamic_symbols()
        .chain(elf.symbols())
        .find(|symbol| symbol.name() == Ok(name) && symbol.is_definition())?;
    let section = elf.section_by_index(symbol.section_index()?).ok()?;
    section_offset(&section, symbol.address())
}

/// The file offset of `address`, which lies in `section`.
fn section_offset<'data>(section: &impl ObjectSection<'data>, address: u64) -> Option<u64> {
    let (section_offset, _) = section.file_range()?;
    match UProbeAttachLocation::from_virtual_address(address, section.address(), section_offset) {
        Ok(UProbeAttachLocation::AbsoluteOffset(offset)) => Some(offset),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_rust_binary_has_nothing_to_hook() {
        let exe = open_regular(Path::new("/proc/self/exe"), LastLink::Follow).unwrap();
        assert_eq!(inspect(&exe), Hookable::Nothing);
    }

    /// A function of this test binary, to find in its symbols and in its memory.
    #[unsafe(no_mangle)]
    #[inline(never)]
    pub extern "C" fn probe_hooks_test_function() -> u64 {
        std::hint::black_box(7)
    }

    #[test]
    fn a_functions_file_offset_is_where_the_process_maps_it_from() {
        let exe = open_regular(Path::new("/proc/self/exe"), LastLink::Follow).unwrap();
        let cache = ReadCache::new(&exe);
        let elf = object::File::parse(&cache).unwrap();
        let found = file_offset(&elf, "probe_hooks_test_function").unwrap();

        // The oracle: the mapping of this executable that holds the function, and the file
        // offset that mapping starts at.
        let address = probe_hooks_test_function as *const () as usize as u64;
        let maps = procfs::process::Process::myself().unwrap().maps().unwrap();
        let map = maps
            .into_iter()
            .find(|map| (map.address.0..map.address.1).contains(&address))
            .unwrap();
        assert_eq!(found, address - map.address.0 + map.offset);
        assert_eq!(file_offset(&elf, "no_such_function_here"), None);
    }
}
