//! A traced process's address space, as `/proc/PID/maps` shows it: which file (or anonymous
//! memory) each address of a stack lies in, and whether it can be code at all.

use procfs::process::{MMPermissions, MMapPath};

use crate::track::code_path::classify::Module;

/// One executable mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    /// Where in the file the mapping starts.
    offset: u64,
    /// The file mapped, as the process names it; `None` for anonymous memory (JIT code).
    path: Option<String>,
}

/// The executable mappings of a process, sorted by address.
#[derive(Clone, Debug, Default)]
pub struct AddressSpace {
    mappings: Vec<Mapping>,
    /// The process's executable, as its mappings name it.
    executable: Option<String>,
}

impl AddressSpace {
    /// Reads process `pid`'s mappings; empty when it is gone.
    pub fn read(pid: u32) -> AddressSpace {
        let Ok(process) = procfs::process::Process::new(pid as i32) else {
            return AddressSpace::default();
        };
        let executable = process
            .exe()
            .ok()
            .map(|path| file_path(&path.to_string_lossy()));
        let mut mappings: Vec<Mapping> = process
            .maps()
            .map(|maps| {
                maps.into_iter()
                    .filter(|map| map.perms.contains(MMPermissions::EXECUTE))
                    .map(|map| Mapping {
                        start: map.address.0,
                        end: map.address.1,
                        offset: map.offset,
                        path: match map.pathname {
                            MMapPath::Path(path) => Some(file_path(&path.to_string_lossy())),
                            MMapPath::Vdso => Some("[vdso]".into()),
                            _ => None,
                        },
                    })
                    .collect()
            })
            .unwrap_or_default();
        mappings.sort_by_key(|m| m.start);
        AddressSpace {
            mappings,
            executable,
        }
    }

    fn mapping(&self, address: u64) -> Option<&Mapping> {
        let index = self.mappings.partition_point(|m| m.start <= address);
        let mapping = self.mappings.get(index.checked_sub(1)?)?;
        (address < mapping.end).then_some(mapping)
    }

    /// Whether `address` lies in executable memory: a return address must.
    pub fn is_code(&self, address: u64) -> bool {
        self.mapping(address).is_some()
    }

    /// Which module `address` lies in.
    pub fn module(&self, address: u64) -> Module<'_> {
        match self.mapping(address) {
            None => Module::Unknown,
            Some(Mapping { path: None, .. }) => Module::Jit,
            Some(Mapping {
                path: Some(path), ..
            }) => {
                if self.executable.as_deref() == Some(path.as_str()) {
                    Module::Program
                } else {
                    Module::File(path)
                }
            }
        }
    }

    /// Where `address` lies in the file mapped there: the file's name and the offset in it
    /// (`libcurl.so.4+0x3a2f0`), for a frame no symbol names.
    pub fn file_offset(&self, address: u64) -> Option<String> {
        let mapping = self.mapping(address)?;
        let path = mapping.path.as_deref()?;
        let name = path.rsplit('/').next().unwrap_or(path);
        let offset = mapping.offset.checked_add(address - mapping.start)?;
        Some(format!("{name}+{offset:#x}"))
    }

    /// The first executable mapping of the executable: its start, and where in the file.
    pub fn executable_mapping(&self) -> Option<(u64, u64)> {
        let executable = self.executable.as_deref()?;
        self.mappings
            .iter()
            .find(|m| m.path.as_deref() == Some(executable))
            .map(|m| (m.start, m.offset))
    }

    /// The executable's path.
    pub fn executable(&self) -> Option<&str> {
        self.executable.as_deref()
    }

    #[cfg(test)]
    pub fn of(executable: &str, mappings: &[(u64, u64, Option<&str>)]) -> AddressSpace {
        AddressSpace {
            mappings: mappings
                .iter()
                .map(|&(start, end, path)| Mapping {
                    start,
                    end,
                    offset: 0x1000,
                    path: path.map(file_path),
                })
                .collect(),
            executable: Some(file_path(executable)),
        }
    }
}

/// A mapped file's path, or the executable's, as the kernel names it, without the
/// " (deleted)" it adds to both once the file was replaced on disk (every deploy that renames
/// a new build over the old one): the running process still maps, and runs, the old file.
fn file_path(named: &str) -> String {
    named
        .strip_suffix(" (deleted)")
        .unwrap_or(named)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deploy renamed a new build over the running executable: the kernel says " (deleted)"
    /// after its name in the mappings and in `/proc/PID/exe` alike, and its code is still the
    /// program's.
    #[test]
    fn a_replaced_executable_is_still_the_program() {
        let space = AddressSpace::of(
            "/srv/app (deleted)",
            &[
                (0x1000, 0x2000, Some("/srv/app (deleted)")),
                (0x9000, 0xa000, Some("/usr/lib/libc.so.6 (deleted)")),
            ],
        );
        assert_eq!(space.module(0x1800), Module::Program);
        assert_eq!(space.module(0x9000), Module::File("/usr/lib/libc.so.6"));
        assert_eq!(space.executable(), Some("/srv/app"));
    }

    #[test]
    fn addresses_are_found_in_their_mappings() {
        let space = AddressSpace::of(
            "/srv/app",
            &[
                (0x1000, 0x2000, Some("/srv/app")),
                (0x5000, 0x6000, None),
                (0x9000, 0xa000, Some("/usr/lib/libc.so.6")),
            ],
        );
        assert_eq!(space.module(0x1fff), Module::Program);
        assert_eq!(space.module(0x2000), Module::Unknown);
        assert_eq!(space.module(0x5800), Module::Jit);
        assert_eq!(space.module(0x9000), Module::File("/usr/lib/libc.so.6"));
        assert!(space.is_code(0x1000) && !space.is_code(0x31) && !space.is_code(0xa000));
        // A frame no symbol names is placed in its file (each mapping here is at offset 0x1000).
        assert_eq!(
            space.file_offset(0x9010).as_deref(),
            Some("libc.so.6+0x1010")
        );
        assert_eq!(space.file_offset(0x5800), None);
    }

    #[test]
    fn this_process_is_read() {
        let space = AddressSpace::read(std::process::id());
        let here = this_process_is_read as *const () as u64;
        assert_eq!(space.module(here), Module::Program);
        assert!(space.executable().is_some());
    }
}
