//! The privileges probe needs, checked up front so the user gets one clear message instead of a
//! raw EPERM from the middle of loading.

use caps::{CapSet, Capability};

/// What probe lacks to load and attach its program.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "probe needs privileges to load eBPF programs, and this process lacks {missing}: run it with \
     sudo (`sudo probe ...`), or give it CAP_BPF and CAP_PERFMON (and CAP_DAC_READ_SEARCH to \
     read tracefs), e.g. `sudo setcap cap_bpf,cap_perfmon,cap_dac_read_search+ep ./probe`"
)]
pub struct MissingPrivileges {
    /// The missing capabilities, comma separated.
    pub missing: String,
}

/// Checks the effective capabilities of this process.
pub fn check() -> Result<(), MissingPrivileges> {
    let has = |cap| caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false);
    required_missing(has)
}

/// The check itself, over any source of capabilities: CAP_SYS_ADMIN alone is enough (it is what
/// kernels before 5.8 require); otherwise CAP_BPF and CAP_PERFMON are both needed.
pub fn required_missing(has: impl Fn(Capability) -> bool) -> Result<(), MissingPrivileges> {
    if has(Capability::CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<String> = [Capability::CAP_BPF, Capability::CAP_PERFMON]
        .into_iter()
        .filter(|cap| !has(*cap))
        .map(|cap| cap.to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingPrivileges {
            missing: missing.join(", "),
        })
    }
}

/// What probe still needs once its programs are attached: map updates (new children, seeds),
/// joining a target's network namespace and reading its memory maps (CAP_SYS_ADMIN), reading
/// other processes' `/proc` entries.
pub const KEPT_AFTER_ATTACH: [Capability; 5] = [
    Capability::CAP_BPF,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_DAC_OVERRIDE,
];

/// Drops every capability but [`KEPT_AFTER_ATTACH`] from the effective, permitted and
/// inheritable sets (least privilege for the rest of the run).
pub fn drop_unneeded() -> Result<(), caps::errors::CapsError> {
    let current = caps::read(None, CapSet::Permitted)?;
    let kept: caps::CapsHashSet = KEPT_AFTER_ATTACH
        .into_iter()
        .filter(|cap| current.contains(cap))
        .collect();
    caps::set(None, CapSet::Inheritable, &caps::CapsHashSet::new())?;
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_admin_alone_is_enough() {
        assert!(required_missing(|cap| cap == Capability::CAP_SYS_ADMIN).is_ok());
    }

    #[test]
    fn bpf_and_perfmon_together_are_enough() {
        assert!(
            required_missing(|cap| matches!(cap, Capability::CAP_BPF | Capability::CAP_PERFMON))
                .is_ok()
        );
    }

    #[test]
    fn the_message_names_what_is_missing_and_what_to_run() {
        let err = required_missing(|cap| cap == Capability::CAP_BPF).unwrap_err();
        assert_eq!(err.missing, "CAP_PERFMON");
        let text = err.to_string();
        assert!(text.contains("sudo probe"), "{text}");
        let err = required_missing(|_| false).unwrap_err();
        assert_eq!(err.missing, "CAP_BPF, CAP_PERFMON");
    }
}
