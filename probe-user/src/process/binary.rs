//! The files a traced process controls (its executable, the libraries it maps, the perf map it
//! writes), opened so that it cannot stall or flood probe, and what a Go executable says about
//! itself in its build information.

use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

/// Whether a symbolic link as the last part of the path is followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastLink {
    /// `/proc/PID/exe` is a link the kernel keeps: follow it.
    Follow,
    /// A path the process can plant a link at: refuse it.
    Refuse,
}

/// Opens `path` for reading, only as a regular file: never blocking on a FIFO (a reader would
/// wait for a writer forever), never a device (`/dev/zero` never ends).
pub fn open_regular(path: &Path, last_link: LastLink) -> io::Result<File> {
    let flags = match last_link {
        LastLink::Follow => libc::O_NONBLOCK,
        LastLink::Refuse => libc::O_NONBLOCK | libc::O_NOFOLLOW,
    };
    let file = File::options().read(true).custom_flags(flags).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    Ok(file)
}

/// The bytes of `path` (opened with [`open_regular`]), at most `limit` of them: a longer file is
/// an error ([`io::ErrorKind::FileTooLarge`]), not read on (`/dev/zero` named as a certificate
/// would grow probe until the kernel kills it).
pub fn read_regular(path: &Path, last_link: LastLink, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path, last_link)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// What a Go binary's `.go.buildinfo` section says (Go 1.18 and later write its strings
/// inline; older layouts point elsewhere and give nothing here).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GoBuildInfo {
    /// The minor version of the Go that built it (`go1.19.8` -> 19).
    pub minor_version: Option<u32>,
    /// The main module's path.
    pub main_module: Option<String>,
    /// The section is not build information as any Go writes it (no magic, or inline strings
    /// that do not parse): corrupt, not old.
    pub unreadable: bool,
}

/// The start of every `.go.buildinfo` section.
const MAGIC: &[u8] = b"\xff Go buildinf:";
/// The header flag of Go 1.18 and later: the strings follow the header.
const INLINE_STRINGS: u8 = 2;

impl GoBuildInfo {
    /// Parses a `.go.buildinfo` section: its header, then the version and the module
    /// information as varint-prefixed strings (as `go version -m` reads them).
    pub fn parse(info: &[u8]) -> GoBuildInfo {
        let Some(flags) = info.get(15).filter(|_| info.starts_with(MAGIC)) else {
            return GoBuildInfo {
                unreadable: true,
                ..GoBuildInfo::default()
            };
        };
        if flags & INLINE_STRINGS == 0 {
            // Go 1.17 or older: the strings are elsewhere, behind pointers.
            return GoBuildInfo::default();
        }
        match inline_strings(info) {
            Some((version, modinfo)) => GoBuildInfo {
                minor_version: minor_version(version),
                main_module: main_module(&String::from_utf8_lossy(modinfo)),
                unreadable: false,
            },
            None => GoBuildInfo {
                unreadable: true,
                ..GoBuildInfo::default()
            },
        }
    }
}

/// The version and module information strings of an inline-strings build information section.
fn inline_strings(info: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut rest = info.get(32..)?;
    let mut next_string = || -> Option<&[u8]> {
        let (length, used) = uvarint(rest)?;
        let end = used.checked_add(usize::try_from(length).ok()?)?;
        let string = rest.get(used..end)?;
        rest = &rest[end..];
        Some(string)
    };
    Some((next_string()?, next_string()?))
}

/// `go1.19.8` -> 19.
fn minor_version(version: &[u8]) -> Option<u32> {
    let rest = version.strip_prefix(b"go1.")?;
    let digits = &rest[..rest.iter().take_while(|b| b.is_ascii_digit()).count()];
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The path on the module information's `mod` line.
fn main_module(modinfo: &str) -> Option<String> {
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

    const INLINE: u8 = 2;

    fn build_info(version: &str, modinfo: &str) -> Vec<u8> {
        let mut info = b"\xff Go buildinf:".to_vec();
        info.extend_from_slice(&[8, INLINE]);
        info.resize(32, 0);
        for string in [version, modinfo] {
            info.push(string.len() as u8);
            info.extend_from_slice(string.as_bytes());
        }
        info
    }

    #[test]
    fn version_and_main_module_are_read_from_inline_build_information() {
        let modinfo = "0w\u{af}\u{c}\u{92}t\u{8}\u{2}A\u{e1}\u{c1}\u{7}\u{e6}\u{d6}\u{18}\u{e6}path\texample.com/leaky\nmod\texample.com/leaky\t(devel)\t\nbuild\t-compiler=gc\n";
        let mut info = build_info("go1.19.8", modinfo);
        assert_eq!(
            GoBuildInfo::parse(&info),
            GoBuildInfo {
                minor_version: Some(19),
                main_module: Some("example.com/leaky".into()),
                unreadable: false,
            }
        );
        info[15] = 0;
        assert_eq!(
            GoBuildInfo::parse(&info),
            GoBuildInfo::default(),
            "the pointer layout of Go < 1.18"
        );
        assert_eq!(
            GoBuildInfo::parse(&build_info("devel go1.22-abc", "")).minor_version,
            None
        );
        // Corrupt, not old: no magic, or inline strings that run past the section.
        assert!(GoBuildInfo::parse(b"nothing").unreadable);
        let mut cut = build_info("go1.19.8", "mod\texample.com/leaky\n");
        cut.truncate(40);
        assert!(GoBuildInfo::parse(&cut).unreadable);
        info[15] = 0;
        assert!(!GoBuildInfo::parse(&info).unreadable);
    }

    #[test]
    fn varints() {
        assert_eq!(uvarint(&[0x05]), Some((5, 1)));
        assert_eq!(uvarint(&[0x96, 0x01]), Some((150, 2)));
        assert_eq!(uvarint(&[0x80]), None);
    }

    #[test]
    fn only_a_regular_file_is_opened_and_a_planted_link_is_refused() {
        let dir = std::env::temp_dir().join(format!("probe-binary-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("perf-1.map");
        std::fs::write(&file, "7f0000001000 40 JS:*doRequest /srv/app.js:3:19\n").unwrap();
        assert!(open_regular(&file, LastLink::Refuse).is_ok());
        let link = dir.join("perf-2.map");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(open_regular(&link, LastLink::Refuse).is_err());
        assert!(open_regular(&link, LastLink::Follow).is_ok());
        let fifo = dir.join("perf-3.map");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(open_regular(&fifo, LastLink::Follow).is_err());
        assert!(open_regular(Path::new("/dev/zero"), LastLink::Follow).is_err());
        assert!(open_regular(Path::new("/proc/self/exe"), LastLink::Follow).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
