//! tracefs: where it is (mounting it when it is not), and the field layout of
//! `sock:inet_sock_set_state` from its `format` file.

use std::{
    fs,
    path::{Path, PathBuf},
};

use probe_common::{ForkLayout, SET_STATE_RECORD_BYTES, SetStateLayout};

/// A tracepoint: category and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracepoint {
    pub category: &'static str,
    pub name: &'static str,
    /// The kernel configuration that provides it, for the error message when it is missing.
    pub needs: &'static str,
}

/// TCP state changes.
pub const SET_STATE: Tracepoint = Tracepoint {
    category: "sock",
    name: "inet_sock_set_state",
    needs: "Linux 4.16 or later built with CONFIG_TRACEPOINTS and CONFIG_INET",
};
/// Process forks (for `--follow-forks`).
pub const PROCESS_FORK: Tracepoint = Tracepoint {
    category: "sched",
    name: "sched_process_fork",
    needs: "a kernel built with CONFIG_TRACEPOINTS",
};
/// Process execs (for `--follow-forks` and `--comm`).
pub const PROCESS_EXEC: Tracepoint = Tracepoint {
    category: "sched",
    name: "sched_process_exec",
    needs: "a kernel built with CONFIG_TRACEPOINTS",
};

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
    #[error("this kernel has no {category}:{name} tracepoint ({path}): probe needs {needs}")]
    MissingTracepoint {
        category: &'static str,
        name: &'static str,
        needs: &'static str,
        path: PathBuf,
    },
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
        "the sock:inet_sock_set_state fields probe reads end at byte {0}, past the {max} bytes \
         it copies; this kernel's layout is not supported",
        max = SET_STATE_RECORD_BYTES
    )]
    RecordTooLong(u32),
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

/// The fields of a tracepoint record, from its `format` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    /// (name, offset, size) of each field.
    fields: Vec<(String, u32, u32)>,
}

impl Format {
    /// Reads the `format` file of `tracepoint` under the tracefs `root`.
    pub fn read(root: &Path, tracepoint: Tracepoint) -> Result<Format, TraceFsError> {
        let dir = root
            .join("events")
            .join(tracepoint.category)
            .join(tracepoint.name);
        if !dir.exists() {
            return Err(TraceFsError::MissingTracepoint {
                category: tracepoint.category,
                name: tracepoint.name,
                needs: tracepoint.needs,
                path: dir,
            });
        }
        let path = dir.join("format");
        let text = fs::read_to_string(&path).map_err(|error| TraceFsError::Unreadable {
            path: path.clone(),
            error,
        })?;
        Ok(Format::parse(&text))
    }

    /// Parses the text of a `format` file.
    pub fn parse(text: &str) -> Format {
        Format {
            fields: text
                .lines()
                .filter_map(parse_field)
                .map(|(name, offset, size)| (name.to_string(), offset, size))
                .collect(),
        }
    }

    /// The offset of field `name`, checking that it is `size` bytes.
    pub fn offset(&self, name: &'static str, size: u32) -> Result<u32, TraceFsError> {
        let (_, offset, found) = self
            .fields
            .iter()
            .find(|(field, _, _)| field == name)
            .ok_or(TraceFsError::MissingField(name))?;
        if *found != size {
            return Err(TraceFsError::WrongSize {
                name,
                expected: size,
                found: *found,
            });
        }
        Ok(*offset)
    }

    /// The offsets of `sock:inet_sock_set_state` that the kernel program reads.
    pub fn set_state_layout(&self) -> Result<SetStateLayout, TraceFsError> {
        let layout = SetStateLayout {
            skaddr: self.offset("skaddr", 8)?,
            oldstate: self.offset("oldstate", 4)?,
            newstate: self.offset("newstate", 4)?,
            sport: self.offset("sport", 2)?,
            dport: self.offset("dport", 2)?,
            family: self.offset("family", 2)?,
            protocol: self.offset("protocol", 2)?,
            saddr_v6: self.offset("saddr_v6", 16)?,
            daddr_v6: self.offset("daddr_v6", 16)?,
        };
        // The kernel program copies the start of each record at once and reads the fields there.
        let ends = [
            (layout.skaddr, 8),
            (layout.oldstate, 4),
            (layout.newstate, 4),
            (layout.sport, 2),
            (layout.dport, 2),
            (layout.family, 2),
            (layout.protocol, 2),
            (layout.saddr_v6, 16),
            (layout.daddr_v6, 16),
        ]
        .map(|(offset, size)| offset + size);
        let end = ends.into_iter().max().unwrap_or(0);
        if end > SET_STATE_RECORD_BYTES {
            return Err(TraceFsError::RecordTooLong(end));
        }
        Ok(layout)
    }

    /// The offsets of `sched:sched_process_fork` that the kernel program reads.
    pub fn fork_layout(&self) -> Result<ForkLayout, TraceFsError> {
        Ok(ForkLayout {
            parent_pid: self.offset("parent_pid", 4)?,
            child_pid: self.offset("child_pid", 4)?,
        })
    }
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
        let layout = Format::parse(FORMAT_6_18).set_state_layout().unwrap();
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
    fn a_missing_tracepoint_names_the_kernel_it_needs() {
        let root = std::env::temp_dir().join(format!("probe-tracefs-{}", std::process::id()));
        std::fs::create_dir_all(root.join("events/sched")).unwrap();
        let error = Format::read(&root, SET_STATE).unwrap_err().to_string();
        std::fs::remove_dir_all(&root).unwrap();
        assert!(
            error.contains("no sock:inet_sock_set_state tracepoint")
                && error.contains("Linux 4.16 or later built with CONFIG_TRACEPOINTS"),
            "{error}"
        );
    }

    #[test]
    fn follows_fields_that_move() {
        // A kernel that lays the record out differently: the offsets follow its format file.
        let moved = FORMAT_6_18
            .replace("offset:40;\tsize:16", "offset:44;\tsize:16")
            .replace("offset:8;\tsize:8", "offset:16;\tsize:8");
        let layout = Format::parse(&moved).set_state_layout().unwrap();
        assert_eq!((layout.saddr_v6, layout.skaddr), (44, 16));
    }

    #[test]
    fn refuses_missing_or_resized_fields() {
        let no_protocol = FORMAT_6_18.replace("field:__u16 protocol;", "field:__u16 proto;");
        assert!(matches!(
            Format::parse(&no_protocol).set_state_layout(),
            Err(TraceFsError::MissingField("protocol"))
        ));
        let wide_sport = FORMAT_6_18.replace("offset:24;\tsize:2", "offset:24;\tsize:4");
        let err = Format::parse(&wide_sport).set_state_layout().unwrap_err();
        assert!(err.to_string().contains("`sport` is 4 bytes"), "{err}");
    }

    #[test]
    fn refuses_fields_past_the_bytes_the_kernel_program_copies() {
        let far = FORMAT_6_18.replace("offset:56;\tsize:16", "offset:120;\tsize:16");
        assert_ne!(far, FORMAT_6_18);
        let err = Format::parse(&far).set_state_layout().unwrap_err();
        assert!(
            err.to_string()
                .contains("end at byte 136, past the 128 bytes"),
            "{err}"
        );
    }

    #[test]
    fn reads_the_fork_layout_with_data_loc_fields_before_it() {
        let format = "\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;";
        assert_eq!(
            Format::parse(format).fork_layout().unwrap(),
            ForkLayout {
                parent_pid: 12,
                child_pid: 20
            }
        );
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
