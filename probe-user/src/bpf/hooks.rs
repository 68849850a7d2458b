//! Uprobes on the runtimes that connect on behalf of other code (see probe-ebpf's `runtimes`
//! module): Go's `net/http` transport and libuv (node). Attached per binary, only to the
//! traced processes' binaries and only where the functions are there to hook: a binary is
//! read once (its symbols, its Go version), and what cannot be hooked is said once per binary.

use std::{
    collections::HashSet,
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{UProbe, uprobe::UProbeScope},
};
use object::{Object, ObjectSection, ObjectSymbol, ReadCache};
use probe_common::names;

use crate::{
    output::escape::terminal,
    process::binary::{GoBuildInfo, LastLink, open_regular},
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
    Go,
    Node,
    /// A Go binary that cannot be hooked, and why.
    GoWithout(&'static str),
    Nothing,
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
            let hooks: &[(&str, &str)] = match inspect(opened) {
                Hookable::Go => &GO_HOOKS,
                Hookable::Node => &NODE_HOOKS,
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
            for &(symbol, program) in hooks {
                if let Err(error) = self.attach(ebpf, program, symbol, &file) {
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

    fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        program: &'static str,
        symbol: &str,
        file: &Path,
    ) -> anyhow::Result<()> {
        let uprobe: &mut UProbe = ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow::anyhow!("no program {program} (probe built without stacks?)"))?
            .try_into()?;
        if self.loaded.insert(program) {
            uprobe.load()?;
        }
        uprobe.attach(symbol, file, UProbeScope::AllProcesses)?;
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
fn inspect(file: File) -> Hookable {
    let cache = ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return Hookable::Nothing;
    };
    let has = |name: &str| {
        elf.symbols()
            .chain(elf.dynamic_symbols())
            .any(|symbol| symbol.name() == Ok(name))
    };
    if let Some(info) = elf.section_by_name(".go.buildinfo") {
        let version = info
            .data()
            .ok()
            .and_then(|info| GoBuildInfo::parse(info).minor_version);
        return match version {
            // Older build information does not say its version inline; Go 1.17 has the
            // register ABI, but cannot be told from older Go here.
            None => Hookable::GoWithout("whose Go version cannot be read (Go 1.17 or older)"),
            Some(minor) if minor < 17 => {
                Hookable::GoWithout("built with Go 1.16 or older (before the register ABI)")
            }
            _ if elf.section_by_name(".symtab").is_none() => {
                Hookable::GoWithout("without a symbol table (stripped)")
            }
            _ if GO_HOOKS.iter().all(|(symbol, _)| has(symbol)) => Hookable::Go,
            // No HTTP client in it: nothing to hook, nothing to say.
            _ => Hookable::Nothing,
        };
    }
    if NODE_HOOKS.iter().all(|(symbol, _)| has(symbol)) {
        return Hookable::Node;
    }
    Hookable::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_rust_binary_has_nothing_to_hook() {
        let exe = open_regular(Path::new("/proc/self/exe"), LastLink::Follow).unwrap();
        assert_eq!(inspect(exe), Hookable::Nothing);
    }
}
