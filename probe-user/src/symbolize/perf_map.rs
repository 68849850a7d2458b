//! JIT runtimes' perf maps (`/tmp/perf-PID.map`: `START SIZE NAME` per line): the names of
//! the code they generate. Parsed here rather than by blazesym, which rejects the maps the JDK
//! writes (`0x`-prefixed addresses) and then drops the whole stack; a map that cannot be read
//! here only leaves its frames unnamed. Also where names are normalized: V8's
//! `JS:*doRequest /srv/app.js:3:19` becomes `doRequest` in `app.js` at line 3.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use crate::process::binary::{LastLink, open_regular};

/// The largest perf map read: a JVM's runs to a few MiB; the traced process writes the file,
/// so it does not get to make probe read without end.
const MAX_PERF_MAP_BYTES: u64 = 64 << 20;

/// One process's perf map, sorted by address.
#[derive(Clone, Debug, Default)]
pub struct PerfMap {
    symbols: Vec<(u64, u64, String)>,
}

/// Where process `pid`'s perf map is: in its own mount namespace's /tmp, named by its pid in
/// its own pid namespace (`NStgid`).
pub fn path(pid: u32) -> PathBuf {
    let inner = procfs::process::Process::new(pid as i32)
        .and_then(|process| process.status())
        .ok()
        .and_then(|status| status.nstgid.and_then(|ids| ids.last().copied()))
        .unwrap_or(pid as i32);
    PathBuf::from(format!("/proc/{pid}/root/tmp/perf-{inner}.map"))
}

/// The text of a file the traced process controls (see [`open_regular`]), at most
/// [`MAX_PERF_MAP_BYTES`].
fn read_untrusted(path: &Path) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    open_regular(path, LastLink::Refuse)?
        .take(MAX_PERF_MAP_BYTES)
        .read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

impl PerfMap {
    /// Reads process `pid`'s perf map; empty when it has none.
    pub fn read(pid: u32) -> PerfMap {
        PerfMap::parse(&read_untrusted(&path(pid)).unwrap_or_default())
    }

    /// Parses a perf map's text; lines that are not `START SIZE NAME` are skipped.
    pub fn parse(text: &str) -> PerfMap {
        let hex = |word: &str| {
            let digits = word
                .strip_prefix("0x")
                .or_else(|| word.strip_prefix("0X"))
                .unwrap_or(word);
            u64::from_str_radix(digits, 16).ok()
        };
        let mut symbols: Vec<(u64, u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ' ');
                let start = hex(parts.next()?)?;
                let size = hex(parts.next()?)?;
                let name = parts.next()?.trim();
                (size > 0 && !name.is_empty())
                    .then(|| (start, start.saturating_add(size), name.to_string()))
            })
            .collect();
        // Later entries for the same code (recompiled, moved) win: keep the last of each start.
        symbols.reverse();
        symbols.sort_by_key(|s| s.0);
        symbols.dedup_by_key(|s| s.0);
        PerfMap { symbols }
    }

    /// The raw name of the code at `address`.
    pub fn name(&self, address: u64) -> Option<&str> {
        let index = self.symbols.partition_point(|s| s.0 <= address);
        let (_, end, name) = self.symbols.get(index.checked_sub(1)?)?;
        (address < *end).then_some(name.as_str())
    }
}

/// A perf-map name as a function, a file and a line, where its runtime writes them.
pub fn normalize(raw: &str) -> (String, Option<String>, Option<u32>) {
    let file_name = |path: &str| path.rsplit('/').next().unwrap_or(path).to_string();
    // V8: `JS:*doRequest /srv/app.js:3:19` (`*` optimized, `~` interpreted).
    for prefix in ["JS:", "LazyCompile:", "Function:"] {
        if let Some(rest) = raw.strip_prefix(prefix) {
            let rest = rest.trim_start_matches(['*', '~', '^', '+']);
            let (function, location) = rest.split_once(' ').unwrap_or((rest, ""));
            let mut location = location.rsplitn(3, ':');
            let (_column, line, path) = (location.next(), location.next(), location.next());
            let function = if function.is_empty() {
                "(anonymous)"
            } else {
                function
            };
            return match (path, line.and_then(|l| l.parse().ok())) {
                (Some(path), Some(line)) => (function.into(), Some(file_name(path)), Some(line)),
                _ => (function.into(), None, None),
            };
        }
    }
    // CPython 3.12+ (`-X perf`): `py::do_request:/srv/app.py`.
    if let Some(rest) = raw.strip_prefix("py::") {
        let (function, path) = rest.split_once(':').unwrap_or((rest, ""));
        let file = (!path.is_empty()).then(|| file_name(path));
        return (function.into(), file, None);
    }
    if let Some(method) = crate::track::code_path::classify::java_method(raw) {
        return (method.into(), None, None);
    }
    (raw.into(), None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perf_map_is_never_read_through_a_link() {
        let dir = std::env::temp_dir().join(format!("probe-perf-map-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let map = dir.join("perf-1.map");
        std::fs::write(&map, "7f0000001000 40 JS:*doRequest /srv/app.js:3:19\n").unwrap();
        assert!(read_untrusted(&map).unwrap().contains("doRequest"));
        let link = dir.join("perf-2.map");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(read_untrusted(&link).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn both_address_forms_parse_and_lookups_find_their_symbol() {
        let map = PerfMap::parse(
            "7f0000001000 40 JS:*doRequest /srv/app.js:3:19\n\
             0x00007f0000002000 0x0000000000000100 Leaky::doRequest\n\
             garbage line\n\
             7f0000003000 0 empty\n",
        );
        assert_eq!(
            map.name(0x7f00_0000_1010),
            Some("JS:*doRequest /srv/app.js:3:19")
        );
        assert_eq!(map.name(0x7f00_0000_1040), None);
        assert_eq!(map.name(0x7f00_0000_20ff), Some("Leaky::doRequest"));
        assert_eq!(map.name(0x7f00_0000_3000), None);
        assert_eq!(map.name(0x10), None);
    }

    #[test]
    fn later_entries_for_the_same_code_win() {
        let map = PerfMap::parse("1000 10 old\n1000 10 new\n");
        assert_eq!(map.name(0x1004), Some("new"));
    }

    #[test]
    fn names_become_function_file_and_line() {
        assert_eq!(
            normalize("JS:*doRequest /srv/app.js:3:19"),
            ("doRequest".into(), Some("app.js".into()), Some(3))
        );
        assert_eq!(
            normalize("JS:~ node:net:1040:16"),
            ("(anonymous)".into(), Some("node:net".into()), Some(1040))
        );
        assert_eq!(
            normalize("py::do_request:/srv/app.py"),
            ("do_request".into(), Some("app.py".into()), None)
        );
        assert_eq!(
            normalize("Leaky::doRequest"),
            ("Leaky::doRequest".into(), None, None)
        );
    }
}
