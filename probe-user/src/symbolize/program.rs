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

/// The facts about process `pid`'s executable (read through `/proc/PID/exe`, which works
/// across mount namespaces; only the parts it needs are read).
pub fn program(pid: u32, executable: Option<&str>) -> Program {
    let mut program = Program {
        path: executable.unwrap_or_default().to_string(),
        ..Program::default()
    };
    if Path::new(&program.path).file_name() == Some("java".as_ref()) {
        program.java_app_prefix = java_app_prefix(pid);
    }
    let exe = format!("/proc/{pid}/exe");
    let Ok(file) = open_regular(Path::new(&exe), LastLink::Follow) else {
        return program;
    };
    let cache = ReadCache::new(file);
    let Ok(file) = object::File::parse(&cache) else {
        return program;
    };
    if let Some(section) = file.section_by_name(".go.buildinfo")
        && let Ok(info) = section.data()
    {
        program.is_go = true;
        program.go_main_module = GoBuildInfo::parse(info).main_module;
    } else {
        program.rust_main_crate = file
            .symbols()
            .find_map(|symbol| rust_main_crate(symbol.name().ok()?).map(str::to_string));
    }
    program
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

/// The Go line table of process `pid`'s executable, where the executable is Go with its symbol
/// table stripped (blazesym then has no names for it), and where the executable is loaded:
/// the table states addresses as the file does.
pub fn stripped_go_lines(pid: u32, space: &AddressSpace) -> Option<(GoLineTable, u64)> {
    let exe = format!("/proc/{pid}/exe");
    let file = open_regular(Path::new(&exe), LastLink::Follow).ok()?;
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    if elf.section_by_name(".symtab").is_some() || elf.section_by_name(".go.buildinfo").is_none() {
        return None;
    }
    let table = GoLineTable::read(&elf)?;
    let (start, offset) = space.executable_mapping()?;
    let base = load_base(&segments(&elf), start, offset)?;
    Some((table, base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_rust_binary_is_not_go() {
        let program = program(std::process::id(), None);
        assert!(!program.is_go && program.go_main_module.is_none());
    }

    /// A test binary's `main` is the test harness's, generated into the crate under test.
    #[test]
    fn this_rust_binarys_crate_is_found() {
        let program = program(std::process::id(), None);
        assert_eq!(program.rust_main_crate.as_deref(), Some("probe_user"));
    }
}
