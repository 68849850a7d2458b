//! `cargo xtask demo`: the classic leak, live. A local HTTP server closes idle keep-alive
//! connections; a client that opens a new connection per request and never closes the response
//! piles them up in CLOSE_WAIT, and probe says so. Then the fixed client, for contrast.

use std::{
    env, fs,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{
    build,
    cmd::{is_root, run},
    workload,
};

/// The server closes a keep-alive connection idle for this long.
const SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs the demo; it finishes by itself in about fifteen seconds once built.
pub fn demo() -> Result<()> {
    let built = build::all()?;
    // An HTTP server on HTTP's alternate port where it is free (probe then tells the leak in
    // HTTP's words, as it would for a real service's), on any port otherwise.
    let listener = TcpListener::bind("127.0.0.1:8080")
        .or_else(|_| TcpListener::bind("127.0.0.1:0"))
        .context("cannot bind a loopback port")?;
    let server = listener.local_addr()?;
    thread::spawn(move || workload::serve(listener, SERVER_IDLE_TIMEOUT));

    banner(&format!(
        "1/2  The bug: a new HTTP client per request, response never closed (server {server} \
         closes idle connections after {}s)",
        SERVER_IDLE_TIMEOUT.as_secs()
    ));
    traced_client(&built.probe, server, &[])?;
    banner("2/2  The fix: close each response (or share one client): this side closes first");
    // Let the first client exit before the second run starts.
    thread::sleep(Duration::from_secs(2));
    traced_client(&built.probe, server, &["--fixed"])?;
    println!(
        "\nRead it like this: CLOSE_WAIT means the peer closed and this process did not. In the \
         first run every connection\nwas stuck there, and stays there until the client exits. \
         With the fix, the client closes first\n(ESTABLISHED -> FIN_WAIT1 -> FIN_WAIT2 -> \
         TIME_WAIT) and nothing is flagged."
    );
    Ok(())
}

fn traced_client(probe: &Path, server: SocketAddr, extra: &[&str]) -> Result<()> {
    let client = client_binary(if extra.is_empty() {
        "leaky-client"
    } else {
        "fixed-client"
    })?;
    let mut command = if is_root() {
        Command::new(probe)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(probe);
        sudo
    };
    command
        // probe stops while the leaky client still holds its connections, so the summary shows
        // them stuck; the client exits on its own a moment later.
        .args(["--close-wait-after", "2s", "--duration", "4500ms", "--"])
        .arg(client)
        .args(["demo-client", "--server", &server.to_string()])
        .args(["--requests", "6", "--interval", "200ms", "--hold", "4s"])
        .args(extra);
    run(&mut command)
}

/// The xtask binary under a telling name (a hard link, or a copy across file systems), so the
/// client shows up in probe's output as what it is.
fn client_binary(name: &str) -> Result<PathBuf> {
    let xtask = env::current_exe().context("cannot find the xtask binary")?;
    let dir = build::workspace_root().join("target").join("demo");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(name);
    let _ = fs::remove_file(&path);
    fs::hard_link(&xtask, &path)
        .or_else(|_| fs::copy(&xtask, &path).map(drop))
        .with_context(|| format!("cannot place the demo client at {}", path.display()))?;
    Ok(path)
}

fn banner(text: &str) {
    println!("\n=== {text}\n");
}
