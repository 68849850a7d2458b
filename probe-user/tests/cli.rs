//! The command line as shipped (no root needed): the shell completions and the man page that
//! `cargo xtask dist` generates from it.

use std::process::Command;

fn probe(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(args)
        .output()
        .expect("probe runs");
    assert!(output.status.success(), "probe {args:?} failed: {output:?}");
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

#[test]
fn bash_completes_the_options() {
    let script = probe(&["--generate-completions", "bash"]);
    let file = std::env::temp_dir().join(format!("probe-{}.bash", std::process::id()));
    std::fs::write(&file, script).unwrap();
    // What bash does on `probe --clo<TAB>`.
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(probe --clo); COMP_CWORD=1; _probe probe --clo probe; \
             echo \"${{COMPREPLY[@]}}\"",
            file.display()
        ))
        .output()
        .expect("bash runs");
    std::fs::remove_file(&file).unwrap();
    let words = String::from_utf8_lossy(&output.stdout);
    assert_eq!(words.trim(), "--close-wait-after", "{output:?}");
}

#[test]
fn zsh_and_fish_scripts_name_every_option() {
    for shell in ["zsh", "fish"] {
        let script = probe(&["--generate-completions", shell]);
        for option in [
            "close-wait-after",
            "metrics-addr",
            "report",
            "live",
            "state",
        ] {
            assert!(script.contains(option), "{shell} misses {option}");
        }
    }
}

#[test]
fn the_man_page_documents_the_options() {
    let page = probe(&["--generate-man"]);
    assert!(
        page.starts_with(".ie"),
        "not roff: {}",
        &page[..80.min(page.len())]
    );
    assert!(page.contains(".TH probe 1"), "no title");
    for option in ["close\\-wait\\-after", "metrics\\-addr", "report", "live"] {
        assert!(page.contains(option), "the man page misses {option}");
    }
}

#[test]
fn the_version_names_the_git_revision_and_the_target() {
    let version = probe(&["--version"]);
    let inside = version
        .trim()
        .strip_suffix(')')
        .and_then(|v| v.split_once(" (commit "))
        .map(|(_, inside)| inside)
        .unwrap_or_default();
    let mut parts = inside.split(", ");
    let revision = parts.next().unwrap_or_default();
    assert!(
        revision.len() >= 7 && revision.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
        "{version}"
    );
    let target = parts.next().unwrap_or_default();
    assert!(
        target.ends_with("-linux-gnu") && target.starts_with(std::env::consts::ARCH),
        "{version}"
    );
    assert!(
        matches!(parts.next(), Some("static" | "dynamic")),
        "{version}"
    );
}
