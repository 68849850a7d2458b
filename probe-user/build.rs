//! Embeds the kernel object built by `cargo xtask build` (path in `PROBE_EBPF_OBJECT`), or an
//! empty placeholder so that the pure modules build and test without the eBPF toolchain; such a
//! binary says how to get the real thing when it is asked to trace.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=PROBE_EBPF_OBJECT");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let embedded = out_dir.join("probe.bpf.o");
    match env::var_os("PROBE_EBPF_OBJECT") {
        Some(object) => {
            println!("cargo:rerun-if-changed={}", object.to_string_lossy());
            fs::copy(&object, &embedded).unwrap_or_else(|error| {
                panic!(
                    "cannot embed the kernel object {}: {error}",
                    object.to_string_lossy()
                )
            });
            println!("cargo:rustc-env=PROBE_EBPF_EMBEDDED=1");
        }
        None => fs::write(&embedded, []).expect("cannot write to OUT_DIR"),
    }
}
