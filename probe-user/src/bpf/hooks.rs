//! Uprobes on the runtimes that connect on behalf of other code (see probe-ebpf's `runtimes`
//! module): Go's `net/http` transport and libuv (node). Attached per binary, only to the
//! traced processes' binaries and only where the functions are there to hook: a binary is
//! read once (its symbols, its Go version), and what cannot be hooked is said once per binary.

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{UProbe, uprobe::UProbeScope},
};
use object::{Object, ObjectSection, ObjectSymbol};
use probe_common::names;

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
        let mut files: Vec<PathBuf> = vec![
            binary
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(format!("/proc/{pid}/exe"))),
        ];
        files.extend(mapped_runtime_libraries(pid));
        let mut notes = Vec::new();
        for file in files {
            let Ok(metadata) = std::fs::metadata(&file) else {
                continue;
            };
            if !self.seen.insert((metadata.dev(), metadata.ino())) {
                continue;
            }
            let hooks: &[(&str, &str)] = match inspect(&file) {
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
                    log::debug!("cannot hook {symbol} in {}: {error}", file.display());
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

/// What `file` offers to hook, from its symbols and Go build information.
fn inspect(file: &Path) -> Hookable {
    let Ok(data) = std::fs::read(file) else {
        return Hookable::Nothing;
    };
    let Ok(elf) = object::File::parse(&*data) else {
        return Hookable::Nothing;
    };
    let has = |name: &str| {
        elf.symbols()
            .chain(elf.dynamic_symbols())
            .any(|symbol| symbol.name() == Ok(name))
    };
    if let Some(info) = elf.section_by_name(".go.buildinfo") {
        let version = info.data().ok().and_then(go_version);
        return match version {
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

/// The minor version of the Go that built a binary (`go1.19.8` -> 19), from its build
/// information section.
fn go_version(info: &[u8]) -> Option<u32> {
    let start = info.windows(4).position(|w| w == b"go1.")?;
    let digits: String = info[start + 4..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .map(|&b| char::from(b))
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_versions_are_read_from_the_build_information() {
        assert_eq!(
            go_version(b"\xff Go buildinf:\x08\x02....\x08go1.19.8"),
            Some(19)
        );
        assert_eq!(go_version(b"\x08go1.16"), Some(16));
        assert_eq!(go_version(b"nothing"), None);
    }

    #[test]
    fn this_rust_binary_has_nothing_to_hook() {
        assert_eq!(inspect(Path::new("/proc/self/exe")), Hookable::Nothing);
    }
}
