//! What is known of a traced executable, for classifying its frames: whether it is Go, and
//! then its main module (from the build information the Go linker writes in
//! `.go.buildinfo`, as `go version -m` reads it).

use std::path::Path;

use object::{Object, ObjectSection, ReadCache};

use crate::{
    process::binary::{GoBuildInfo, LastLink, open_regular},
    track::code_path::classify::Program,
};

/// The facts about process `pid`'s executable (read through `/proc/PID/exe`, which works
/// across mount namespaces; only the parts it needs are read).
pub fn program(pid: u32, executable: Option<&str>) -> Program {
    let mut program = Program {
        path: executable.unwrap_or_default().to_string(),
        ..Program::default()
    };
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
    }
    program
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_rust_binary_is_not_go() {
        let program = program(std::process::id(), None);
        assert!(!program.is_go && program.go_main_module.is_none());
    }
}
