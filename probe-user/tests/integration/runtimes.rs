//! Which code opened a leak, in the languages leaks are written in: a Go HTTP client whose
//! transport dials on a goroutine of its own, C built without frame pointers, node and Java
//! whose functions only their perf maps name. Real toolchains build the clients; `ss` says
//! what they leaked.

use std::{path::Path, process::Command, thread, time::Duration};

use serde_json::Value;

use crate::harness::{
    Helper, Probe, ServerMode, TempPath, TestCgroup, TestResult, WAIT, ensure, render,
    runtimes::{
        c_client, fixture, go_client, java_client, python_with_requests, pythons, rust_client,
        stripped_go_client, tool,
    },
    server, stuck, wait_for_ss,
};

/// How many connections each client leaks.
const LEAKED: usize = 5;

/// What probe said about a leak: its summary's code-path groups and its stderr.
struct Told {
    groups: Vec<Value>,
    stderr: String,
}

/// Runs `command` (a client that leaks [`LEAKED`] connections on `go`) under `probe --pid`,
/// checks with `ss` that they sit in CLOSE_WAIT, and returns what the summary grouped them by.
/// `before_summary` runs while probe still traces (a JVM's perf map is written then).
fn leak_under_probe(
    command: Command,
    before_summary: impl FnOnce(u32) -> TestResult,
) -> Result<Told, String> {
    leak_under_probe_with(command, &[], before_summary)
}

/// [`leak_under_probe`] with `extra` arguments for probe.
fn leak_under_probe_with(
    command: Command,
    extra: &[&str],
    before_summary: impl FnOnce(u32) -> TestResult,
) -> Result<Told, String> {
    leak_under_probe_after(command, extra, |_| Ok(()), before_summary)
}

/// [`leak_under_probe_with`], with `before_go` run once the client is ready, before it leaks
/// (and before probe starts).
fn leak_under_probe_after(
    command: Command,
    extra: &[&str],
    before_go: impl FnOnce(u32) -> TestResult,
    before_summary: impl FnOnce(u32) -> TestResult,
) -> Result<Told, String> {
    let mut client = Helper::program(command)?;
    ensure(client.hear()? == "ready", || {
        "the client did not start".into()
    })?;
    let pid = client.pid();
    before_go(pid)?;
    let pid_text = pid.to_string();
    let mut args = vec!["--pid", pid_text.as_str(), "--close-wait-after", "1s"];
    args.extend_from_slice(extra);
    let mut probe = Probe::start(&args)?;
    client.say("go")?;
    ensure(client.hear()? == "done", || {
        "the client did not finish".into()
    })?;
    probe.wait_until("the leak's CLOSE_WAIT alerts", WAIT, |r| {
        stuck(r, pid, "CLOSE_WAIT").len() >= LEAKED
    })?;
    wait_for_ss(pid, "close-wait", LEAKED)?;
    before_summary(pid)?;
    let (records, stderr) = probe.stop_with_stderr()?;
    let summary = records.last().ok_or("no summary")?;
    let groups = summary["stuck_by_code_path"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    client.finish()?;
    // The perf map a runtime wrote outlives it.
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    Ok(Told { groups, stderr })
}

/// The one group holding all [`LEAKED`] connections.
fn the_group(told: &Told) -> Result<&Value, String> {
    match told.groups.as_slice() {
        [group] if group["connections"] == LEAKED => Ok(group),
        groups => Err(format!("groups: {}", render(groups))),
    }
}

/// Whether `frames` (a JSON stack) has the program's own frame `function`.
fn has_app_frame(frames: &Value, function: &str) -> bool {
    frames.as_array().is_some_and(|frames| {
        frames.iter().any(|f| {
            f["kind"] == "app" && f["function"].as_str().is_some_and(|n| n.contains(function))
        })
    })
}

/// Whether `frames` has any frame of the program.
fn has_any_app_frame(frames: &Value) -> bool {
    frames
        .as_array()
        .is_some_and(|frames| frames.iter().any(|f| f["kind"] == "app"))
}

/// Go's HTTP client dials on a goroutine of the transport's own, whose stack holds no frame of
/// the program: probe names the function that made the request (`main.doRequest`) from the
/// goroutine that asked for the connection (uprobes on the runtime's dial queue), for a
/// transport per request and for the shared default client alike. A plain `net.Dial` is named
/// from the connect's own stack. `--no-runtime-hooks` leaves the transport's connections with
/// their connect stack only.
pub fn a_go_http_clients_leak_is_named_by_the_function_that_made_the_request() -> TestResult {
    let dir = TempPath::directory("go-client")?;
    let binary = go_client(&dir)?;
    let addr = server("127.0.0.1:0", ServerMode::HttpIdleTimeout)?;
    for mode in ["transport", "dialfunc", "default", "dial"] {
        let mut command = Command::new(&binary);
        command.args([mode, &addr.to_string(), &LEAKED.to_string()]);
        let told = leak_under_probe(command, |_| Ok(()))?;
        let group = the_group(&told)?;
        let code = group["code"].as_str().unwrap_or_default();
        eprintln!("go {mode}: {code}");
        ensure(code.starts_with("main.doRequest (leaky.go:"), || {
            format!(
                "{mode}: the group is named {code:?}: {}",
                render(&told.groups)
            )
        })?;
        if mode == "dial" {
            ensure(has_app_frame(&group["opened_at"], "main.doRequest"), || {
                format!("dial: {}", render(&told.groups))
            })?;
        } else if mode == "dialfunc" {
            // The seed: the connect ran in the program's own dial function, on the transport's
            // goroutine. The requester is named first, the dial function after it.
            ensure(
                has_app_frame(&group["opened_at"], "main.dialTimeout")
                    && has_app_frame(&group["requested_at"], "main.doRequest")
                    && group["shown"] == "requested_at"
                    && code.contains("via net/http.")
                    && code.contains("; dialed in main.dialTimeout (leaky.go:"),
                || format!("dialfunc: {}", render(&told.groups)),
            )?;
        } else {
            // The connect ran on the transport's goroutine: only the request names the program.
            ensure(
                !has_any_app_frame(&group["opened_at"])
                    && has_app_frame(&group["requested_at"], "main.doRequest"),
                || format!("{mode}: {}", render(&told.groups)),
            )?;
            ensure(code.contains("via net/http."), || {
                format!("{mode}: {code:?} does not say which library call it made")
            })?;
        }
    }
    // Without the hooks, the transport's connect stack is all there is: no requester, and no
    // frame of the program.
    let mut command = Command::new(&binary);
    command.args(["transport", &addr.to_string(), &LEAKED.to_string()]);
    let told = leak_under_probe_with(command, &["--no-runtime-hooks"], |_| Ok(()))?;
    let group = the_group(&told)?;
    ensure(
        group["requested_at"].is_null() && !has_any_app_frame(&group["opened_at"]),
        || format!("--no-runtime-hooks: {}", render(&told.groups)),
    )?;
    Ok(())
}

/// Host-wide and in its cgroup, the Go client's leak is named as `--pid` names it: probe hooks
/// the runtimes of every process in scope when it starts (the client was running already, as
/// a service in an incident is), and of the ones it meets later.
pub fn a_go_client_is_named_alike_host_wide_and_in_its_cgroup() -> TestResult {
    let dir = TempPath::directory("go-scopes")?;
    let binary = go_client(&dir)?;
    let addr = server("127.0.0.1:0", ServerMode::HttpIdleTimeout)?;
    let cgroup = TestCgroup::create("probe-test-go-scopes")?;
    let mut command = Command::new(&binary);
    command.args(["transport", &addr.to_string(), &LEAKED.to_string()]);
    let mut client = Helper::program(command)?;
    ensure(client.hear()? == "ready", || {
        "the client did not start".into()
    })?;
    let pid = client.pid();
    cgroup.add(pid)?;
    let scopes = [
        Probe::start(&["--all", "--close-wait-after", "1s"])?,
        Probe::start(&["--cgroup", &cgroup.relative(), "--close-wait-after", "1s"])?,
    ];
    client.say("go")?;
    ensure(client.hear()? == "done", || {
        "the client did not finish".into()
    })?;
    wait_for_ss(pid, "close-wait", LEAKED)?;
    for (scope, mut probe) in ["--all", "--cgroup"].into_iter().zip(scopes) {
        probe.wait_until("the leak's CLOSE_WAIT alerts", WAIT, |r| {
            stuck(r, pid, "CLOSE_WAIT").len() >= LEAKED
        })?;
        let records = probe.stop()?;
        let alerts = stuck(&records, pid, "CLOSE_WAIT");
        let named = alerts
            .iter()
            .filter(|alert| has_app_frame(&alert["requested_at"], "main.doRequest"))
            .count();
        eprintln!("go {scope}: {named} of {} named", alerts.len());
        ensure(named == LEAKED, || {
            format!(
                "{scope}: {}",
                render(&alerts.into_iter().cloned().collect::<Vec<_>>())
            )
        })?;
    }
    client.finish()
}

/// A Go binary whose symbol table was stripped (`-ldflags=-s -w`, as Debian's Go packages are)
/// is named from its line table (`.gopclntab`, which the Go runtime keeps for its tracebacks):
/// the function, file and line, as `go tool addr2line` gives them, not bare addresses. The
/// line table also finds the transport's functions to hook: the requester is named too.
pub fn a_stripped_go_binary_is_named_from_its_line_table() -> TestResult {
    let dir = TempPath::directory("go-stripped")?;
    let binary = stripped_go_client(&dir)?;
    let addr = server("127.0.0.1:0", ServerMode::HttpIdleTimeout)?;
    for mode in ["dial", "transport"] {
        let mut command = Command::new(&binary);
        command.args([mode, &addr.to_string(), &LEAKED.to_string()]);
        let told = leak_under_probe(command, |_| Ok(()))?;
        let group = the_group(&told)?;
        let code = group["code"].as_str().unwrap_or_default();
        eprintln!("go stripped {mode}: {code}");
        ensure(
            code.starts_with("main.doRequest (leaky.go:")
                && code.contains("<- main.main (leaky.go:")
                && !told.stderr.contains("stripped"),
            || format!("{mode}: {}\n{}", render(&told.groups), told.stderr),
        )?;
        if mode == "transport" {
            ensure(
                has_app_frame(&group["requested_at"], "main.doRequest"),
                || render(&told.groups),
            )?;
        }
    }
    Ok(())
}

/// A deploy renamed a new build over the running Go service's executable: the process still
/// runs the old file, and probe names its code from that file (through the process), not
/// from what the path holds now (which named it `runtime.goexit`, with `main.main` counted as
/// a library's).
pub fn a_go_service_whose_binary_was_replaced_on_disk_is_still_named() -> TestResult {
    let dir = TempPath::directory("go-deployed")?;
    let built = go_client(&dir)?;
    let deployed = dir.0.join("service");
    std::fs::copy(&built, &deployed).map_err(|e| format!("cannot copy the client: {e}"))?;
    let addr = server("127.0.0.1:0", ServerMode::HttpIdleTimeout)?;
    let mut command = Command::new(&deployed);
    command.args(["transport", &addr.to_string(), &LEAKED.to_string()]);
    let replace = |_pid: u32| -> TestResult {
        // Another build, renamed over the running one, as deploy tools do.
        let next = dir.0.join("service.new");
        std::fs::copy("/bin/true", &next).map_err(|e| format!("cannot copy: {e}"))?;
        std::fs::rename(&next, &deployed).map_err(|e| format!("cannot rename: {e}"))
    };
    let told = leak_under_probe_after(command, &[], replace, |_| Ok(()))?;
    let group = the_group(&told)?;
    let code = group["code"].as_str().unwrap_or_default();
    eprintln!("go, replaced on disk: {code}");
    ensure(
        code.starts_with("main.doRequest (leaky.go:")
            && has_app_frame(&group["requested_at"], "main.main"),
        || format!("replaced: {}", render(&told.groups)),
    )?;
    Ok(())
}

/// C built with and without frame pointers: the function that connected (`do_request`) and
/// its caller (`main`) are named either way; without frame pointers, from the copy of the stack
/// the kernel program takes at the connect, unwound with the binary's `.eh_frame`. Stripped,
/// the program's frames are placed in its file.
pub fn a_c_client_is_named_with_or_without_frame_pointers() -> TestResult {
    let dir = TempPath::directory("c-client")?;
    let addr = server("127.0.0.1:0", ServerMode::HttpIdleTimeout)?;
    let builds: [(&str, &[&str]); 2] = [
        ("leaky-fp", &["-O2", "-g", "-fno-omit-frame-pointer"]),
        ("leaky-nofp", &["-O2", "-g", "-fomit-frame-pointer"]),
    ];
    for (name, flags) in builds {
        let binary = c_client(&dir, name, flags)?;
        let mut command = Command::new(binary);
        command.args(["127.0.0.1", &addr.port().to_string(), &LEAKED.to_string()]);
        let told = leak_under_probe(command, |_| Ok(()))?;
        for group in &told.groups {
            eprintln!("c {name}: {}", group["code"]);
        }
        let opened: usize = told
            .groups
            .iter()
            .filter(|g| {
                has_app_frame(&g["opened_at"], "do_request")
                    && has_app_frame(&g["opened_at"], "main")
            })
            .map(|g| g["connections"].as_u64().unwrap_or(0) as usize)
            .sum();
        ensure(opened == LEAKED, || {
            format!("{name}: {}", render(&told.groups))
        })?;
    }
    // Stripped, as distributions ship their binaries (curl, wget): no names, but the program's
    // own frames are still its own, placed by file and offset (which debug symbols installed
    // later resolve), rather than the C library's `connect` alone.
    let binary = c_client(
        &dir,
        "leaky-stripped",
        &["-O2", "-s", "-fomit-frame-pointer"],
    )?;
    let mut command = Command::new(binary);
    command.args(["127.0.0.1", &addr.port().to_string(), &LEAKED.to_string()]);
    let told = leak_under_probe(command, |_| Ok(()))?;
    let group = the_group(&told)?;
    eprintln!("c leaky-stripped: {}", group["code"]);
    let own_frames = group["opened_at"].as_array().map_or(0, |frames| {
        frames
            .iter()
            .filter(|f| {
                f["kind"] == "app"
                    && f["function"]
                        .as_str()
                        .is_some_and(|name| name.starts_with("leaky-stripped+0x"))
            })
            .count()
    });
    ensure(own_frames >= 2, || render(&told.groups))
}

/// Rust built for release (no frame pointers): its own function and its caller are named,
/// from the stack the kernel program copies at the connect, and the standard library it
/// connects through is a library, not the program. The binary is not named like its crate
/// (`client-rs`, crate `leaky`): the crate of its `main` says which code is the program's.
pub fn a_rust_release_client_is_named_by_its_own_function() -> TestResult {
    let dir = TempPath::directory("rust-client")?;
    let addr = server("127.0.0.1:0", ServerMode::HttpIdleTimeout)?;
    let binary = rust_client(&dir)?;
    let mut command = Command::new(binary);
    command.args([&addr.to_string(), &LEAKED.to_string()]);
    let told = leak_under_probe(command, |_| Ok(()))?;
    let group = the_group(&told)?;
    eprintln!("rust: {}", group["code"]);
    let opened = &group["opened_at"];
    ensure(
        has_app_frame(opened, "leaky::do_request") && has_app_frame(opened, "leaky::main"),
        || opened.to_string(),
    )?;
    ensure(
        group["code"]
            .as_str()
            .is_some_and(|code| code.starts_with("leaky::do_request")),
        || format!("{}", group["code"]),
    )
}

/// The line of `fixture`'s file that contains `text` (1-based): where probe must say the
/// leaking call is, read from the fixture rather than written down twice.
fn line_of(fixture_name: &str, text: &str) -> Result<u64, String> {
    let source = std::fs::read_to_string(fixture(fixture_name)).map_err(|e| e.to_string())?;
    source
        .lines()
        .position(|line| line.contains(text))
        .map(|index| index as u64 + 1)
        .ok_or_else(|| format!("{fixture_name} has no line with {text:?}"))
}

/// CPython as production runs it, with no flags and no restart: probe reads the
/// interpreter's own frames at each connect and names the Python function, file and line
/// that opened the leak, on 3.8 to 3.13 (pyenv's shared builds and Debian's static, stripped
/// 3.11), from plain code, from an `asyncio` coroutine and through a third-party library
/// (`requests`, from the registry), which is a library and not the program.
pub fn python_functions_are_named_from_the_running_interpreter() -> TestResult {
    let addr = server("127.0.0.1:0", ServerMode::HttpIdleTimeout)?.to_string();
    let script = fixture("leaky.py");
    let cases = [
        ("socket", "do_request", "socket.create_connection("),
        ("asyncio", "do_request_async", "asyncio.open_connection("),
        (
            "requests",
            "do_request_with_requests",
            "requests.Session().get(",
        ),
    ];
    for python in pythons()? {
        for (mode, function, call) in cases {
            let interpreter = match mode {
                "requests" => python_with_requests(&python)?,
                _ => python.executable.clone(),
            };
            let mut command = Command::new(interpreter);
            command
                .arg(&script)
                .args([mode, &addr, &LEAKED.to_string()]);
            let told = leak_under_probe(command, |_| Ok(()))?;
            let group = the_group(&told)?;
            let code = group["code"].as_str().unwrap_or_default();
            eprintln!("{} {mode}: {code}", python.label);
            let line = line_of("leaky.py", call)?;
            let first_app = group["opened_at"]
                .as_array()
                .and_then(|frames| frames.iter().find(|frame| frame["kind"] == "app"))
                .cloned()
                .unwrap_or_default();
            ensure(
                first_app["function"] == function
                    && first_app["file"] == "leaky.py"
                    && first_app["line"] == line
                    && code.starts_with(&format!("{function} (leaky.py:{line})")),
                || {
                    format!(
                        "{} {mode}: expected {function} (leaky.py:{line}): {}",
                        python.label,
                        render(&told.groups)
                    )
                },
            )?;
            ensure(!told.stderr.contains("cannot name"), || {
                format!("{} {mode}: a naming hint: {}", python.label, told.stderr)
            })?;
            if mode == "requests" {
                // The library's frames are the library's, not the program's.
                let frames = group["opened_at"].as_array().cloned().unwrap_or_default();
                ensure(
                    frames.iter().any(|frame| {
                        frame["kind"] == "library"
                            && frame["file"] == "requests/sessions.py"
                            && frame["function"]
                                .as_str()
                                .is_some_and(|f| f.ends_with("send"))
                    }) && !frames
                        .iter()
                        .any(|frame| frame["kind"] == "app" && frame["file"] != "leaky.py"),
                    || format!("{} requests: {}", python.label, render(&told.groups)),
                )?;
            }
        }
    }
    Ok(())
}

/// Attached mid-incident: the C client leaked before probe came and goes on leaking after;
/// the summary counts the stuck connections that predate probe (`ss` sees them) and says the
/// leak goes on from `do_request`.
pub fn attached_mid_incident_the_leak_is_traced_to_where_it_goes_on() -> TestResult {
    let dir = TempPath::directory("c-mid-incident")?;
    let addr = server("127.0.0.1:0", ServerMode::HttpIdleTimeout)?;
    let binary = c_client(&dir, "leaky", &["-O2", "-g", "-fno-omit-frame-pointer"])?;
    let mut command = Command::new(binary);
    command.args(["127.0.0.1", &addr.port().to_string(), &LEAKED.to_string()]);
    let mut client = Helper::program(command)?;
    ensure(client.hear()? == "ready", || {
        "the client did not start".into()
    })?;
    let pid = client.pid();
    client.say("go")?;
    ensure(client.hear()? == "done", || "no first round".into())?;
    wait_for_ss(pid, "close-wait", LEAKED)?;

    let mut probe = Probe::start(&["--pid", &pid.to_string(), "--close-wait-after", "1s"])?;
    client.say("go")?;
    ensure(client.hear()? == "done", || "no second round".into())?;
    wait_for_ss(pid, "close-wait", 2 * LEAKED)?;
    probe.wait_until("every CLOSE_WAIT flagged", WAIT, |r| {
        stuck(r, pid, "CLOSE_WAIT").len() >= 2 * LEAKED
    })?;
    let records = probe.stop()?;
    let summary = records.last().ok_or("no summary")?;
    let mid = &summary["mid_incident"];
    ensure(
        mid["predating"] == LEAKED
            && mid["opened_since"] == LEAKED
            && mid["continues_from"]
                .as_str()
                .is_some_and(|place| place.starts_with("do_request (leaky.c:")),
        || format!("mid_incident: {mid}"),
    )?;
    client.finish()
}

/// node with `--perf-basic-prof`: node connects on a later tick, from its own modules, so the
/// JavaScript function that asked (`doRequest`) is named from the stack where the socket was
/// made (a uprobe on libuv's `uv_tcp_init`), its frames named by the perf map; without the
/// flag, probe says which flag would name it.
pub fn node_functions_are_named_from_the_perf_map_or_the_flag_is_named() -> TestResult {
    let node = tool("node", "nodejs")?;
    // node's profiling flags leave logs in its working directory.
    let dir = TempPath::directory("node-client")?;
    let addr = server("127.0.0.1:0", ServerMode::HttpIdleTimeout)?;
    let script = fixture("leaky.js");
    let target = [addr.to_string(), LEAKED.to_string()];
    let mut named = Command::new(&node);
    named
        .current_dir(&dir.0)
        .args(["--perf-basic-prof", "--interpreted-frames-native-stack"])
        .arg(&script)
        .args(&target);
    let told = leak_under_probe(named, |_| Ok(()))?;
    let group = the_group(&told)?;
    eprintln!("node: {}", group["code"]);
    ensure(
        !has_any_app_frame(&group["opened_at"])
            && has_app_frame(&group["requested_at"], "doRequest")
            && group["code"]
                .as_str()
                .is_some_and(|c| c.starts_with("doRequest (leaky.js:")),
        || render(&told.groups),
    )?;
    // Named with the flags: no note asking for them.
    ensure(!told.stderr.contains("cannot name"), || {
        format!("a naming note for node run with the flags: {}", told.stderr)
    })?;
    let mut unnamed = Command::new(&node);
    unnamed.current_dir(&dir.0).arg(&script).args(&target);
    let told = leak_under_probe(unnamed, |_| Ok(()))?;
    ensure(
        told.stderr.contains("start node with --perf-basic-prof"),
        || format!("no hint for node without a perf map: {}", told.stderr),
    )?;
    Ok(())
}

/// A JVM with `-XX:+PreserveFramePointer` whose perf map `jcmd Compiler.perfmap` wrote while
/// probe traced it: the Java method that connected is named.
pub fn java_methods_are_named_from_the_jvms_perf_map() -> TestResult {
    let java = tool("java", "openjdk-17-jdk-headless")?;
    let jcmd = tool("jcmd", "openjdk-17-jdk-headless")?;
    let dir = TempPath::directory("java-client")?;
    let classes = java_client(&dir)?;
    let addr = server("127.0.0.1:0", ServerMode::HttpIdleTimeout)?;
    let mut command = Command::new(java);
    command
        .arg("-XX:+PreserveFramePointer")
        // C1 only: its code for the warmed-up request method keeps the branch that connects.
        // C2's, having never seen that branch taken, deoptimizes at the first real request, and
        // the connects then run in the interpreter, whose frames name no method (as happened
        // under load, when C2 had finished compiling before the requests).
        .arg("-XX:TieredStopAtLevel=1")
        .arg("-cp")
        .arg(&classes)
        .args([
            "Leaky",
            "127.0.0.1",
            &addr.port().to_string(),
            &LEAKED.to_string(),
        ]);
    let told = leak_under_probe(command, |pid| write_perf_map(&jcmd, pid))?;
    let group = the_group(&told)?;
    eprintln!("java: {}", group["code"]);
    ensure(
        group["code"]
            .as_str()
            .is_some_and(|c| c.starts_with("Leaky.")),
        || render(&told.groups),
    )?;
    ensure(!told.stderr.contains("cannot name"), || {
        format!(
            "a naming note for a JVM run with the flags: {}",
            told.stderr
        )
    })?;
    Ok(())
}

/// Asks JVM `pid` for its perf map and waits until it is there.
fn write_perf_map(jcmd: &Path, pid: u32) -> TestResult {
    let output = Command::new(jcmd)
        .args([&pid.to_string(), "Compiler.perfmap"])
        .output()
        .map_err(|e| format!("cannot run jcmd: {e}"))?;
    ensure(output.status.success(), || {
        format!("jcmd failed: {}", String::from_utf8_lossy(&output.stdout))
    })?;
    let map = format!("/tmp/perf-{pid}.map");
    for _ in 0..50 {
        if std::fs::metadata(&map).is_ok_and(|m| m.len() > 0) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(format!("jcmd wrote no {map}"))
}
