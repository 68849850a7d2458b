//! What a reader is shown of a stack, and whose code each frame is.

use super::{
    classify::{Module, Program, classify, naming_hint, rust_main_crate},
    *,
};

fn frame(function: &str, file: Option<&str>, line: Option<u32>, kind: FrameKind) -> Frame {
    Frame {
        function: function.into(),
        file: file.map(Into::into),
        line,
        address: 0x4010,
        kind,
    }
}

/// A Go program's stack, each frame classified as probe classifies Go symbols.
fn go(functions: &[(&str, Option<(&str, u32)>)]) -> CodePath {
    let program = Program {
        path: "/srv/leaky".into(),
        go_main_module: Some("example.com/leaky".into()),
        is_go: true,
        java_app_prefix: None,
        rust_main_crate: None,
    };
    CodePath {
        frames: functions
            .iter()
            .map(|&(function, at)| {
                let kind = classify(function, Module::Program, &program);
                frame(function, at.map(|a| a.0), at.map(|a| a.1), kind)
            })
            .collect(),
    }
}

/// net.Dial inside doRequest, as Go 1.19 enters the kernel (runtime/internal/syscall).
fn go_dial() -> CodePath {
    go(&[
        (
            "runtime/internal/syscall.Syscall6",
            Some(("asm_linux_amd64.s", 36)),
        ),
        ("syscall.Syscall", Some(("syscall_linux.go", 81))),
        ("syscall.connect", None),
        ("net.(*netFD).connect", Some(("fd_unix.go", 60))),
        ("net.(*Dialer).DialContext", Some(("dial.go", 429))),
        ("net.Dial", Some(("dial.go", 322))),
        ("main.doRequest", Some(("main.go", 32))),
        ("main.main", Some(("main.go", 44))),
        ("runtime.main", Some(("proc.go", 259))),
        ("runtime.goexit", None),
    ])
}

#[test]
fn go_shows_the_programs_frames_and_the_library_call_they_made() {
    assert_eq!(
        go_dial().describe(3),
        "main.doRequest (main.go:32) <- main.main (main.go:44), via net.Dial"
    );
    assert_eq!(
        go_dial().describe(1),
        "main.doRequest (main.go:32) <- ..., via net.Dial"
    );
}

#[test]
fn a_stack_of_library_frames_only_shows_its_outermost_library_frame() {
    let pool = go(&[
        ("runtime/internal/syscall.Syscall6", None),
        ("net.(*Dialer).DialContext", Some(("dial.go", 429))),
        ("net/http.(*Transport).dial", Some(("transport.go", 1170))),
        (
            "net/http.(*Transport).dialConnFor",
            Some(("transport.go", 1450)),
        ),
        (
            "net/http.(*Transport).queueForDial.func1",
            Some(("transport.go", 1419)),
        ),
        ("runtime.goexit", None),
    ]);
    assert_eq!(
        pool.describe(3),
        "net/http.(*Transport).queueForDial.func1 (transport.go:1419)"
    );
    assert!(!pool.has_app_frames());
}

#[test]
fn the_requesters_stack_names_the_program_when_the_connects_does_not() {
    let pool = go(&[
        ("net/http.(*Transport).dialConnFor", None),
        ("runtime.goexit", None),
    ]);
    let requester = go(&[
        ("net/http.(*Transport).queueForDial", None),
        ("net/http.(*Transport).getConn", None),
        ("net/http.(*Client).Get", Some(("client.go", 479))),
        ("main.doRequest", Some(("main.go", 19))),
        ("main.main", Some(("main.go", 44))),
    ]);
    let origin = Origin {
        opened_at: Some(&pool),
        requested_at: Some(&requester),
    };
    assert_eq!(
        origin.describe(2).as_deref(),
        Some("main.doRequest (main.go:19) <- main.main (main.go:44), via net/http.(*Client).Get")
    );
    // The connect's own stack wins when it names the program.
    let direct = Origin {
        opened_at: Some(&requester),
        requested_at: Some(&pool),
    };
    assert_eq!(direct.best(), Some(&requester));
    assert_eq!(Origin::default().describe(2), None);
}

/// The project's seed: a Transport per request with a custom dial function of the program's
/// own. The connect's stack names the program (the dial function), but the code to fix is the
/// requester's: it is named first, the dial function after it.
#[test]
fn the_requester_is_named_first_and_the_programs_dial_function_after_it() {
    let dialer = go(&[
        ("syscall.connect", None),
        ("net.(*netFD).connect", Some(("fd_unix.go", 60))),
        ("net.DialTimeout", Some(("dial.go", 333))),
        ("main.dialTimeout", Some(("main.go", 20))),
        ("net/http.(*Transport).dial", Some(("transport.go", 1166))),
        ("net/http.(*Transport).dialConnFor", None),
        ("runtime.goexit", None),
    ]);
    let requester = go(&[
        ("net/http.(*Transport).queueForDial", None),
        ("net/http.(*Client).Post", Some(("client.go", 845))),
        ("main.doRequest", Some(("main.go", 28))),
        ("main.main", Some(("main.go", 44))),
    ]);
    let origin = Origin {
        opened_at: Some(&dialer),
        requested_at: Some(&requester),
    };
    assert_eq!(origin.shows(), Some(ShownStack::RequestedAt));
    assert_eq!(origin.best(), Some(&requester));
    assert_eq!(
        origin.describe(3).as_deref(),
        Some(
            "main.doRequest (main.go:28) <- main.main (main.go:44), via \
             net/http.(*Client).Post; dialed in main.dialTimeout (main.go:20)"
        )
    );
    // Where the runtime's hook saw the same code ask and connect, it is said once.
    let same = Origin {
        opened_at: Some(&requester),
        requested_at: Some(&requester),
    };
    assert_eq!(
        same.describe(3).as_deref(),
        Some("main.doRequest (main.go:28) <- main.main (main.go:44), via net/http.(*Client).Post")
    );
    // Without a requester, the connect's own stack, with no mention of a dialer.
    let alone = Origin {
        opened_at: Some(&dialer),
        requested_at: None,
    };
    assert_eq!(alone.shows(), Some(ShownStack::OpenedAt));
    assert!(alone.describe(3).is_some_and(|text| text.starts_with("main.dialTimeout")
        && !text.contains("dialed in")));
}

#[test]
fn unknown_frames_show_their_address_and_an_empty_stack_says_so() {
    assert_eq!(
        frame("", None, None, FrameKind::Runtime).to_string(),
        "0x4010"
    );
    assert_eq!(
        frame("f", Some("a.rs"), None, FrameKind::App).to_string(),
        "f (a.rs)"
    );
    let empty = CodePath { frames: vec![] };
    assert_eq!(empty.describe(3), "an unknown place (no stack)");
    let unknown = CodePath {
        frames: vec![frame("", None, None, FrameKind::Runtime)],
    };
    assert_eq!(unknown.describe(3), "0x4010");
}

#[test]
fn go_packages_are_told_apart_by_path() {
    let program = Program {
        path: "/srv/api".into(),
        go_main_module: Some("example.com/api".into()),
        is_go: true,
        java_app_prefix: None,
        rust_main_crate: None,
    };
    let kind = |f: &str| classify(f, Module::Program, &program);
    assert_eq!(
        kind("runtime/internal/syscall.Syscall6"),
        FrameKind::Runtime
    );
    assert_eq!(kind("runtime.goexit"), FrameKind::Runtime);
    assert_eq!(kind("internal/poll.(*FD).Write"), FrameKind::Runtime);
    assert_eq!(kind("syscall.connect"), FrameKind::Library);
    assert_eq!(kind("net/http.(*Client).Get"), FrameKind::Library);
    assert_eq!(kind("vendor/golang.org/x/net/http2.F"), FrameKind::Library);
    assert_eq!(kind("github.com/lib/pq.(*conn).Open"), FrameKind::Library);
    assert_eq!(kind("example.com/api/store.(*DB).Query"), FrameKind::App);
    assert_eq!(kind("example.com/apiary.F"), FrameKind::Library);
    assert_eq!(kind("main.doRequest.func1"), FrameKind::App);
    let unknown_module = Program {
        go_main_module: None,
        ..program
    };
    assert_eq!(
        classify("example.com/x.F", Module::Program, &unknown_module),
        FrameKind::App
    );
}

#[test]
fn a_rust_programs_crate_is_the_one_of_its_main() {
    assert_eq!(
        rust_main_crate("_ZN5xtask4main17h0123456789abcdefE"),
        Some("xtask")
    );
    assert_eq!(
        rust_main_crate("_ZN11leaky_agent4main17hfedcba9876543210E"),
        Some("leaky_agent")
    );
    // Other functions, the standard library's, and malformed names are not.
    for symbol in [
        "_ZN5xtask6client17h0123456789abcdefE",
        "_ZN3std4main17h0123456789abcdefE",
        "_ZN5xtask4main17h0123E",
        "_ZN99xtask4main17h0123456789abcdefE",
        "_ZN5xt\x1bk4main17h0123456789abcdefE",
        "main",
        "_ZN",
    ] {
        assert_eq!(rust_main_crate(symbol), None, "{symbol}");
    }
}

#[test]
fn native_frames_by_module_and_crate() {
    let program = Program {
        path: "/usr/local/bin/leaky-client".into(),
        ..Program::default()
    };
    let kind = |f: &str, m| classify(f, m, &program);
    assert_eq!(kind("do_request", Module::Program), FrameKind::App);
    assert_eq!(
        kind(
            "internal_connect",
            Module::File("/usr/lib/python3.12/lib-dynload/_socket.cpython-312-x86_64-linux-gnu.so")
        ),
        FrameKind::Runtime
    );
    assert_eq!(
        kind("leaky_client::do_request", Module::Program),
        FrameKind::App
    );
    assert_eq!(
        kind("std::net::TcpStream::connect", Module::Program),
        FrameKind::Library
    );
    assert_eq!(
        kind("<std::io::Error as core::fmt::Debug>::fmt", Module::Program),
        FrameKind::Library
    );
    assert_eq!(
        kind("hyper::client::conn::F", Module::Program),
        FrameKind::Library
    );
    assert_eq!(kind("_start", Module::Program), FrameKind::Runtime);
    // The crate of `main` decides, whatever the executable is called.
    let renamed = Program {
        path: "/srv/demo/leaky-client".into(),
        rust_main_crate: Some("xtask".into()),
        ..Program::default()
    };
    let renamed_kind = |f: &str| classify(f, Module::Program, &renamed);
    assert_eq!(renamed_kind("xtask::workload::client"), FrameKind::App);
    assert_eq!(renamed_kind("leaky_client::do_request"), FrameKind::Library);
    assert_eq!(renamed_kind("do_request"), FrameKind::App);
    assert_eq!(
        kind(
            "__libc_connect",
            Module::File("/usr/lib/x86_64-linux-gnu/libc.so.6")
        ),
        FrameKind::Runtime
    );
    assert_eq!(
        kind("curl_easy_perform", Module::File("/usr/lib/libcurl.so.4")),
        FrameKind::Library
    );
    assert_eq!(kind("", Module::Unknown), FrameKind::Runtime);
    let node = Program {
        path: "/usr/bin/node".into(),
        ..Program::default()
    };
    assert_eq!(
        classify("node::TCPWrap::Connect", Module::Program, &node),
        FrameKind::Runtime
    );
}

/// Java: the application's own classes are the main class's packages; a third-party library
/// (Apache HttpClient) is a library, not the program, once the main class is known.
#[test]
fn java_frames_are_the_programs_by_the_main_classs_package() {
    let java = |main: &str| Program {
        path: "/usr/lib/jvm/java-17-openjdk-amd64/bin/java".into(),
        java_app_prefix: Some(classify::java_application_prefix(main)),
        ..Program::default()
    };
    let acme = java("com.acme.orders.Main");
    let kind = |f: &str, p: &Program| classify(f, Module::Jit, p);
    assert_eq!(
        kind(
            "void com.acme.orders.http.Client.fetch(java.lang.String)",
            &acme
        ),
        FrameKind::App
    );
    assert_eq!(
        kind("void com.acme.common.Pool.open()", &acme),
        FrameKind::App
    );
    let apache = "org.apache.hc.client5.http.impl.classic.ExecChainElement.execute";
    assert_eq!(kind(&format!("void {apache}()"), &acme), FrameKind::Library);
    assert_eq!(
        kind(
            "void java.net.Socket.connect(java.net.SocketAddress, int)",
            &acme
        ),
        FrameKind::Library
    );
    // A main class in the unnamed package: only unpackaged classes are the program's.
    let leaky = java("Leaky");
    assert_eq!(
        kind("void Leaky.fetchWithHttpClient5(java.lang.String)", &leaky),
        FrameKind::App
    );
    assert_eq!(
        kind(&format!("void {apache}()"), &leaky),
        FrameKind::Library
    );
    assert_eq!(kind("Leaky::doRequest", &leaky), FrameKind::App);
    // Without a main class, everything outside the JDK, as before.
    assert_eq!(
        kind(&format!("void {apache}()"), &Program::default()),
        FrameKind::App
    );
}

#[test]
fn a_java_command_lines_main_class() {
    fn main(line: &str) -> Option<&str> {
        classify::java_main_class(line.split(' '))
    }
    assert_eq!(
        main("-XX:+PreserveFramePointer -cp /srv/app Leaky 127.0.0.1 80"),
        Some("Leaky")
    );
    assert_eq!(
        main("-Xmx1g --class-path a.jar:b.jar -Dx=y com.acme.orders.Main --port 9"),
        Some("com.acme.orders.Main")
    );
    assert_eq!(
        main("-p mods -m com.acme/com.acme.orders.Main"),
        Some("com.acme.orders.Main")
    );
    assert_eq!(main("-jar app.jar Leaky"), None);
    assert_eq!(main("-version"), None);
    assert_eq!(
        classify::java_application_prefix("com.acme.orders.Main"),
        "com.acme."
    );
    assert_eq!(classify::java_application_prefix("app.Main"), "app.");
    assert_eq!(classify::java_application_prefix("Leaky"), "");
}

/// node: modules installed under `node_modules` are libraries, like node's own.
#[test]
fn node_modules_are_libraries() {
    let kind = |f: &str| classify(f, Module::Jit, &Program::default());
    assert_eq!(
        kind("JS:*request /srv/app/node_modules/axios/lib/core/dispatch.js:10:3"),
        FrameKind::Library
    );
    assert_eq!(kind("JS:*doRequest /srv/app/leaky.js:3:19"), FrameKind::App);
}

#[test]
fn jit_frames_by_the_names_their_perf_maps_give() {
    let kind = |f: &str| classify(f, Module::Jit, &Program::default());
    assert_eq!(kind("JS:*doRequest /srv/leaky.js:3:19"), FrameKind::App);
    assert_eq!(kind("JS:~connect node:net:1040:16"), FrameKind::Library);
    assert_eq!(
        kind("Builtin:InterpreterEntryTrampoline"),
        FrameKind::Runtime
    );
    assert_eq!(kind("Leaky::doRequest"), FrameKind::App);
    assert_eq!(kind("java.net.Socket::connect"), FrameKind::Library);
    assert_eq!(kind("Interpreter"), FrameKind::Runtime);
    assert_eq!(kind("void Leaky.main(java.lang.String[])"), FrameKind::App);
    assert_eq!(
        kind("void java.net.Socket.connect(java.net.SocketAddress, int)"),
        FrameKind::Library
    );
    assert_eq!(kind("StubRoutines (1)"), FrameKind::Runtime);
    assert_eq!(
        classify::java_method("int com.example.Pool.open(java.lang.String, int)"),
        Some("com.example.Pool.open")
    );
    assert_eq!(kind("py::do_request:/srv/leaky.py"), FrameKind::App);
    assert_eq!(
        kind("py::create_connection:/usr/lib/python3.12/socket.py"),
        FrameKind::Library
    );
}

#[test]
fn runtimes_get_a_hint_to_name_their_programs_frames() {
    let program = |path: &str| Program {
        path: path.to_string(),
        ..Program::default()
    };
    assert!(
        naming_hint(&program("/usr/bin/node"))
            .unwrap()
            .contains("--perf-basic-prof")
    );
    assert!(
        naming_hint(&program("/usr/lib/jvm/java-17/bin/java"))
            .unwrap()
            .contains("perfmap")
    );
    assert!(
        naming_hint(&program("/root/.pyenv/versions/3.12.1/bin/python3.12"))
            .unwrap()
            .contains("-X perf")
    );
    assert_eq!(naming_hint(&program("/usr/bin/curl")), None);
    assert_eq!(naming_hint(&program("/opt/leaky-go")), None);
}

#[test]
fn without_a_library_frame_the_call_shown_is_the_system_calls_wrapper() {
    let path = CodePath {
        frames: vec![
            frame(
                "__libc_connect",
                Some("connect.c"),
                Some(26),
                FrameKind::Runtime,
            ),
            frame("Interpreter", None, None, FrameKind::Runtime),
            frame("Leaky.main", None, None, FrameKind::App),
        ],
    };
    assert_eq!(
        path.describe(SHOWN_FRAMES),
        "Leaky.main, via __libc_connect"
    );
}
