//! What is known of a traced executable, for classifying its frames: whether it is Go, and
//! then its main module (from the build information the Go linker writes in
//! `.go.buildinfo`, as `go version -m` reads it); for Rust, the crate of its `main`.

use std::path::Path;

use object::{Object, ObjectSection, ObjectSymbol, ReadCache};

use super::{
    memory::AddressSpace,
    unwind::{load_base, segments},
};
use crate::{
    process::{
        binary::{GoBuildInfo, LastLink, open_regular},
        go_line_table::GoLineTable,
    },
    track::code_path::classify::{
        Program, java_application_prefix, java_main_class, rust_main_crate,
    },
};

/// What is read of a traced process's executable.
pub struct Executable {
    /// The facts that classify its frames.
    pub program: Program,
    /// A stripped Go executable's line table (blazesym has no names for it then), and where
    /// the executable is loaded: the table states addresses as the file does.
    pub go_lines: Option<(GoLineTable, u64)>,
}

/// The facts about process `pid`'s executable, mapped as `space` shows (read once through
/// `/proc/PID/exe`, which works across mount namespaces; only the parts needed are read).
pub fn executable(pid: u32, space: &AddressSpace) -> Executable {
    let mut program = Program {
        path: space.executable().unwrap_or_default().to_string(),
        ..Program::default()
    };
    if Path::new(&program.path).file_name() == Some("java".as_ref()) {
        program.java_app_prefix = java_app_prefix(pid);
    }
    let mut go_lines = None;
    let exe = format!("/proc/{pid}/exe");
    if let Ok(file) = open_regular(Path::new(&exe), LastLink::Follow) {
        let cache = ReadCache::new(file);
        if let Ok(elf) = object::File::parse(&cache) {
            if let Some(section) = elf.section_by_name(".go.buildinfo")
                && let Ok(info) = section.data()
            {
                program.is_go = true;
                program.go_main_module = GoBuildInfo::parse(info).main_module;
                if elf.section_by_name(".symtab").is_none() {
                    go_lines = stripped_go_lines(&elf, space);
                }
            } else {
                program.rust_main_crate = elf
                    .symbols()
                    .find_map(|symbol| rust_main_crate(symbol.name().ok()?).map(str::to_string));
            }
        }
    }
    Executable { program, go_lines }
}

/// The line table of the stripped Go executable `elf`, and where `space` has it loaded.
fn stripped_go_lines<'data>(
    elf: &object::File<'data, impl object::ReadRef<'data>>,
    space: &AddressSpace,
) -> Option<(GoLineTable, u64)> {
    let table = GoLineTable::read(elf)?;
    let (start, offset) = space.executable_mapping()?;
    let base = load_base(&segments(elf), start, offset)?;
    Some((table, base))
}

/// The package prefix of JVM `pid`'s application classes, from the main class on its command
/// line (read once per process; the kernel bounds a command line by the exec's argument
/// limit, a quarter of the stack limit).
fn java_app_prefix(pid: u32) -> Option<String> {
    let command_line = procfs::process::Process::new(pid as i32)
        .and_then(|process| process.cmdline())
        .ok()?;
    let main_class = java_main_class(command_line.iter().skip(1).map(String::as_str))?;
    Some(java_application_prefix(main_class))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn this_process() -> Executable {
        let pid = std::process::id();
        executable(pid, &AddressSpace::read(pid))
    }

    #[test]
    fn this_rust_binary_is_not_go() {
        let this = this_process();
        assert!(!this.program.is_go && this.program.go_main_module.is_none());
        assert!(this.go_lines.is_none());
    }

    /// A test binary's `main` is the test harness's, generated into the crate under test.
    #[test]
    fn this_rust_binarys_crate_is_found() {
        let this = this_process();
        assert_eq!(this.program.rust_main_crate.as_deref(), Some("probe_user"));
    }
}
