//! tracefs: where it is (mounting it when it is not), and the field layout of
//! `sock:inet_sock_set_state` from its `format` file.

use std::{
    fs,
    path::{Path, PathBuf},
};

use probe_common::SetStateLayout;

/// The tracepoint probe attaches to.
pub const CATEGORY: &str = "sock";
/// The tracepoint probe attaches to.
pub const NAME: &str = "inet_sock_set_state";

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS: &str = "/sys/kernel/debug";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// What went wrong finding the tracepoint's layout.
#[derive(Debug, thiserror::Error)]
pub enum TraceFsError {
    #[error(
        "tracefs is not mounted and mounting it failed ({0}); mount it as root with \
         `mount -t tracefs nodev /sys/kernel/tracing` (the kernel needs CONFIG_TRACING)"
    )]
    NotMounted(String),
    #[error(
        "this kernel has no sock:inet_sock_set_state tracepoint ({path}): probe needs Linux 4.16 \
         or later built with CONFIG_TRACEPOINTS and CONFIG_INET"
    )]
    MissingTracepoint { path: PathBuf },
    #[error("cannot read {path} ({error}); run probe as root (sudo)")]
    Unreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "the sock:inet_sock_set_state format has no `{0}` field; this kernel's layout is not supported"
    )]
    MissingField(&'static str),
    #[error(
        "the sock:inet_sock_set_state field `{name}` is {found} bytes, probe expects {expected}; \
         this kernel's layout is not supported"
    )]
    WrongSize {
        name: &'static str,
        expected: u32,
        found: u32,
    },
}

/// The tracefs root, mounting tracefs (or debugfs) when neither is mounted.
pub fn root() -> Result<PathBuf, TraceFsError> {
    if let Some(found) = mounted_root() {
        return Ok(found);
    }
    let tracefs = mount("tracefs", TRACEFS);
    if let Some(found) = mounted_root() {
        return Ok(found);
    }
    let debugfs = mount("debugfs", DEBUGFS);
    mounted_root().ok_or_else(|| {
        TraceFsError::NotMounted(format!(
            "tracefs on {TRACEFS}: {}; debugfs on {DEBUGFS}: {}",
            describe(tracefs),
            describe(debugfs)
        ))
    })
}

/// Reads the tracepoint's field layout from its `format` file under `root`.
pub fn read_layout(root: &Path) -> Result<SetStateLayout, TraceFsError> {
    let dir = root.join("events").join(CATEGORY).join(NAME);
    if !dir.exists() {
        return Err(TraceFsError::MissingTracepoint { path: dir });
    }
    let path = dir.join("format");
    let text = fs::read_to_string(&path).map_err(|error| TraceFsError::Unreadable {
        path: path.clone(),
        error,
    })?;
    parse_layout(&text)
}

/// Parses a tracepoint `format` file into the offsets probe needs, checking each field's size.
pub fn parse_layout(format: &str) -> Result<SetStateLayout, TraceFsError> {
    let fields: Vec<(&str, u32, u32)> = format.lines().filter_map(parse_field).collect();
    let offset = |name: &'static str, expected: u32| -> Result<u32, TraceFsError> {
        let &(_, offset, size) = fields
            .iter()
            .find(|(field, _, _)| *field == name)
            .ok_or(TraceFsError::MissingField(name))?;
        if size != expected {
            return Err(TraceFsError::WrongSize {
                name,
                expected,
                found: size,
            });
        }
        Ok(offset)
    };
    Ok(SetStateLayout {
        skaddr: offset("skaddr", 8)?,
        oldstate: offset("oldstate", 4)?,
        newstate: offset("newstate", 4)?,
        sport: offset("sport", 2)?,
        dport: offset("dport", 2)?,
        family: offset("family", 2)?,
        protocol: offset("protocol", 2)?,
        saddr_v6: offset("saddr_v6", 16)?,
        daddr_v6: offset("daddr_v6", 16)?,
    })
}

/// `field:__u8 saddr_v6[16]; offset:40; size:16; signed:0;` (tab separated) ->
/// `("saddr_v6", 40, 16)`.
fn parse_field(line: &str) -> Option<(&str, u32, u32)> {
    let mut parts = line.trim().split(';').map(str::trim);
    let declaration = parts.next()?.strip_prefix("field:")?;
    let name = declaration.rsplit([' ', '*']).next()?;
    let name = name.split('[').next()?;
    let mut offset = None;
    let mut size = None;
    for part in parts {
        if let Some(value) = part.strip_prefix("offset:") {
            offset = value.parse().ok();
        } else if let Some(value) = part.strip_prefix("size:") {
            size = value.parse().ok();
        }
    }
    Some((name, offset?, size?))
}

fn mounted_root() -> Option<PathBuf> {
    [TRACEFS, DEBUGFS_TRACING]
        .into_iter()
        .map(PathBuf::from)
        .find(|root| root.join("events").is_dir())
}

fn mount(fstype: &str, target: &str) -> nix::Result<()> {
    nix::mount::mount(
        Some("nodev"),
        target,
        Some(fstype),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
}

fn describe(result: nix::Result<()>) -> String {
    match result {
        Ok(()) => "mounted, but it has no events directory".into(),
        Err(errno) => errno.desc().to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format file of Linux 6.18, as this machine's kernel prints it.
    const FORMAT_6_18: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s protocol=%s\", REC->family, REC->protocol
";

    #[test]
    fn parses_the_offsets_of_this_kernel() {
        let layout = parse_layout(FORMAT_6_18).unwrap();
        assert_eq!(
            layout,
            SetStateLayout {
                skaddr: 8,
                oldstate: 16,
                newstate: 20,
                sport: 24,
                dport: 26,
                family: 28,
                protocol: 30,
                saddr_v6: 40,
                daddr_v6: 56,
            }
        );
    }

    #[test]
    fn follows_fields_that_move() {
        // A kernel that lays the record out differently: the offsets follow its format file.
        let moved = FORMAT_6_18
            .replace("offset:40;\tsize:16", "offset:44;\tsize:16")
            .replace("offset:8;\tsize:8", "offset:16;\tsize:8");
        let layout = parse_layout(&moved).unwrap();
        assert_eq!((layout.saddr_v6, layout.skaddr), (44, 16));
    }

    #[test]
    fn refuses_missing_or_resized_fields() {
        let no_protocol = FORMAT_6_18.replace("field:__u16 protocol;", "field:__u16 proto;");
        assert!(matches!(
            parse_layout(&no_protocol),
            Err(TraceFsError::MissingField("protocol"))
        ));
        let wide_sport = FORMAT_6_18.replace("offset:24;\tsize:2", "offset:24;\tsize:4");
        let err = parse_layout(&wide_sport).unwrap_err();
        assert!(err.to_string().contains("`sport` is 4 bytes"), "{err}");
    }

    #[test]
    fn parses_pointer_and_array_fields() {
        assert_eq!(
            parse_field("\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;"),
            Some(("skaddr", 8, 8))
        );
        assert_eq!(
            parse_field("field:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;"),
            Some(("daddr_v6", 56, 16))
        );
        assert_eq!(parse_field("print fmt: \"x\""), None);
    }
}
