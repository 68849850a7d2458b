//! Why the kernel side could not be set up: each error says what to do, and keeps its cause
//! (`{:#}` prints the chain).

use std::io;

use aya::{EbpfError, maps::MapError, programs::ProgramError};

use super::{kernel_btf::BtfError, privilege::MissingPrivileges, tracefs::TraceFsError};

/// Why the kernel side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this probe binary was built without its kernel program; build it with `cargo xtask build`"
    )]
    NoKernelObject,
    #[error(transparent)]
    Privileges(#[from] MissingPrivileges),
    #[error(transparent)]
    TraceFs(#[from] TraceFsError),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(
        "this kernel has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF), which probe needs: run it \
         on Linux 5.8 or later"
    )]
    NoRingBuffer,
    #[error(
        "the kernel refused probe's eBPF object (its maps or their sizes); run with -v for \
         details, or try smaller --max-sockets / --ring-buffer-kib"
    )]
    Load(#[source] Box<EbpfError>),
    #[error(
        "the kernel's verifier refused probe's program `{program}`; run with -v to see the \
         verifier log{hint}"
    )]
    Verify {
        program: &'static str,
        /// What else to try, if anything.
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "the kernel object's `{program}` is not a {expected} program: it does not match this \
         probe binary; rebuild with `cargo xtask build`"
    )]
    ProgramType {
        program: &'static str,
        expected: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error(
        "cannot load or attach `{program}` on {tracepoint}; the kernel needs \
         CONFIG_BPF_EVENTS{hint}"
    )]
    Attach {
        program: &'static str,
        tracepoint: String,
        hint: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error(
        "cannot read the kernel's BTF to load the BTF tracepoint program; use `--attach \
         tracepoint`"
    )]
    KernelBtf(#[source] aya::BtfError),
    #[error(
        "the kernel object has no `{0}`: it does not match this probe binary; rebuild with \
         `cargo xtask build`"
    )]
    Missing(&'static str),
    #[error(
        "the traced cgroups sit at more than {} different depths of the hierarchy; trace fewer \
         at once, or their common parent",
        probe_common::CgroupLevels::MAX
    )]
    CgroupDepths,
    #[error("cannot use the kernel map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

/// What to add to a BTF program's errors.
pub const BTF_HINT: &str = ", or use `--attach tracepoint`";

/// The error for a program the kernel refused: the verifier's log goes to the debug log (it is
/// long), the error keeps the syscall's.
pub fn refused(program: &'static str, hint: &'static str, error: ProgramError) -> LoadError {
    match error {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            log::debug!("verifier log of {program}:\n{verifier_log}");
            LoadError::Verify {
                program,
                hint,
                source: io_error,
            }
        }
        source => LoadError::Attach {
            program,
            tracepoint: "its tracepoint".into(),
            hint,
            source: Box::new(source),
        },
    }
}

/// The error for a map operation that failed.
pub fn map_error(name: &'static str, source: MapError) -> LoadError {
    LoadError::Map { name, source }
}

/// Every cause down the chain, as `{:#}` of anyhow prints it (for what is logged, not returned).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_kept_and_a_verifier_refusal_is_not_an_attach_failure() {
        let refusal = refused(
            "p",
            BTF_HINT,
            ProgramError::LoadError {
                io_error: io::Error::from_raw_os_error(libc::EACCES),
                verifier_log: aya_obj::VerifierLog::new("R1 invalid mem access".into()),
            },
        );
        let text = chain(&refusal);
        assert!(matches!(refusal, LoadError::Verify { .. }), "{refusal:?}");
        assert!(
            text.contains("verifier") && text.contains("--attach tracepoint"),
            "{text}"
        );
        assert!(text.contains("Permission denied"), "{text}");
        assert!(
            !text.contains("R1 invalid"),
            "the verifier log is for -v only: {text}"
        );
        let other = refused("p", "", ProgramError::NotLoaded);
        assert!(matches!(other, LoadError::Attach { .. }), "{other:?}");

        let map = map_error("TARGETS", MapError::KeyNotFound);
        assert!(
            chain(&map).ends_with("`TARGETS`: key not found"),
            "{}",
            chain(&map)
        );
    }
}
