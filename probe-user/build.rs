//! Embeds the kernel objects built by `cargo xtask build` (paths in `PROBE_EBPF_OBJECT`, with
//! stack capture, and `PROBE_EBPF_OBJECT_NO_STACKS`, without), or empty placeholders so that the
//! pure modules build and test without the eBPF toolchain; such a binary says how to get the real
//! thing when it is asked to trace.

use std::{env, fs, path::PathBuf};

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut embedded = true;
    for (variable, file) in [
        ("PROBE_EBPF_OBJECT", "probe.bpf.o"),
        ("PROBE_EBPF_OBJECT_NO_STACKS", "probe-no-stacks.bpf.o"),
    ] {
        println!("cargo:rerun-if-env-changed={variable}");
        let destination = out_dir.join(file);
        match env::var_os(variable) {
            Some(object) => {
                println!("cargo:rerun-if-changed={}", object.to_string_lossy());
                fs::copy(&object, &destination).unwrap_or_else(|error| {
                    panic!(
                        "cannot embed the kernel object {}: {error}",
                        object.to_string_lossy()
                    )
                });
            }
            None => {
                embedded = false;
                fs::write(&destination, []).expect("cannot write to OUT_DIR");
            }
        }
    }
    if embedded {
        println!("cargo:rustc-env=PROBE_EBPF_EMBEDDED=1");
    }
    println!("cargo:rustc-env=PROBE_GIT_REVISION={}", git_revision());
    println!("cargo:rustc-env=PROBE_BUILT_FOR={}", built_for());
}

/// The target triple, and whether the C library is linked in (`static`) or loaded at run time.
fn built_for() -> String {
    let target = env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    let features = env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let linking = if features.split(',').any(|feature| feature == "crt-static") {
        "static"
    } else {
        "dynamic"
    };
    format!("{target}, {linking}")
}

/// The short git revision of the source, `unknown` outside a git checkout.
fn git_revision() -> String {
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .filter(|revision| !revision.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
