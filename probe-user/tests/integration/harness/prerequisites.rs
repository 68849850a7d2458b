//! What the integration tests need: root, BPF, and a probe binary with its kernel program. A
//! kernel without BPF skips them, loudly; the rest fails under `cargo xtask test`.

use libtest_mimic::Trial;

pub enum Missing {
    /// The kernel has no usable BPF: skip, loudly.
    Bpf(String),
    /// The run lacks root or the kernel program: fail when required, else skip loudly.
    Setup(String),
}

pub fn required() -> bool {
    std::env::var("PROBE_REQUIRE_INTEGRATION").is_ok_and(|v| v == "1")
}

pub fn prerequisites() -> Result<(), Missing> {
    if option_env!("PROBE_EBPF_EMBEDDED").is_none() {
        return Err(Missing::Setup(
            "the probe binary was built without its kernel program: run `cargo xtask test`".into(),
        ));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Missing::Setup(
            "the integration tests need root: run `cargo xtask test` (it uses sudo)".into(),
        ));
    }
    bpf_available().map_err(Missing::Bpf)
}

/// Creates (and closes) a one-entry BPF array map: the smallest proof that BPF works here.
fn bpf_available() -> Result<(), String> {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries; the rest
    // zero.
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[2 /* BPF_MAP_TYPE_ARRAY */, 4, 4, 1]);
    // SAFETY: bpf(BPF_MAP_CREATE) reads `size_of_val(&attr)` bytes of a live, zeroed buffer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0, /* BPF_MAP_CREATE */
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(format!(
            "this kernel has no usable BPF (bpf(BPF_MAP_CREATE) failed: {})",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: closing the fd the syscall just returned.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

pub fn skip_loudly(trials: Vec<Trial>, why: &str) -> Vec<Trial> {
    eprintln!("\n{}", "!".repeat(100));
    eprintln!(
        "!! SKIPPING {} eBPF INTEGRATION TESTS: {why}\n!! A skipped integration test is not a pass.",
        trials.len()
    );
    eprintln!("{}\n", "!".repeat(100));
    trials
        .into_iter()
        .map(|trial| trial.with_ignored_flag(true))
        .collect()
}
