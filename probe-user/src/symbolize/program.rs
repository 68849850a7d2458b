//! What is known of a traced executable, for classifying its frames: whether it is Go, and
//! then its main module (from the build information the Go linker writes in
//! `.go.buildinfo`, as `go version -m` reads it).

use object::{Object, ObjectSection};

use crate::track::code_path::classify::Program;

/// The facts about process `pid`'s executable (read through `/proc/PID/exe`, which works
/// across mount namespaces).
pub fn program(pid: u32, executable: Option<&str>) -> Program {
    let mut program = Program {
        path: executable.unwrap_or_default().to_string(),
        ..Program::default()
    };
    let Ok(data) = std::fs::read(format!("/proc/{pid}/exe")) else {
        return program;
    };
    let Ok(file) = object::File::parse(&*data) else {
        return program;
    };
    if let Some(section) = file.section_by_name(".go.buildinfo")
        && let Ok(info) = section.data()
    {
        program.is_go = true;
        program.go_main_module = go_main_module(info);
    }
    program
}

/// The main module path in a `.go.buildinfo` section (Go 1.18 and later: the strings inline).
fn go_main_module(info: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    const INLINE_STRINGS: u8 = 2;
    if !info.starts_with(MAGIC) || info.get(15)? & INLINE_STRINGS == 0 {
        return None;
    }
    let mut rest = info.get(32..)?;
    let mut next_string = || -> Option<&[u8]> {
        let (length, used) = uvarint(rest)?;
        let start = used;
        let end = start.checked_add(usize::try_from(length).ok()?)?;
        let string = rest.get(start..end)?;
        rest = &rest[end..];
        Some(string)
    };
    let _version = next_string()?;
    let modinfo = String::from_utf8_lossy(next_string()?).into_owned();
    modinfo
        .lines()
        .find_map(|line| line.strip_prefix("mod\t"))
        .and_then(|line| line.split('\t').next())
        .map(str::to_string)
}

/// A Go unsigned varint: the value and the bytes it took.
fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (index, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, index + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_module_is_read_from_inline_build_information() {
        let modinfo = "0w\u{af}\u{c}\u{92}t\u{8}\u{2}A\u{e1}\u{c1}\u{7}\u{e6}\u{d6}\u{18}\u{e6}path\texample.com/leaky\nmod\texample.com/leaky\t(devel)\t\nbuild\t-compiler=gc\n";
        let mut info = b"\xff Go buildinf:".to_vec();
        info.extend_from_slice(&[8, INLINE]);
        info.resize(32, 0);
        for string in ["go1.19.8", modinfo] {
            info.push(string.len() as u8);
            info.extend_from_slice(string.as_bytes());
        }
        assert_eq!(go_main_module(&info).as_deref(), Some("example.com/leaky"));
        info[15] = 0;
        assert_eq!(
            go_main_module(&info),
            None,
            "the pointer layout of Go < 1.18"
        );
    }

    const INLINE: u8 = 2;

    #[test]
    fn varints() {
        assert_eq!(uvarint(&[0x05]), Some((5, 1)));
        assert_eq!(uvarint(&[0x96, 0x01]), Some((150, 2)));
        assert_eq!(uvarint(&[0x80]), None);
    }

    #[test]
    fn this_rust_binary_is_not_go() {
        let program = program(std::process::id(), None);
        assert!(!program.is_go && program.go_main_module.is_none());
    }
}
