//! Whose code a frame is: the program's own (app), a library it calls, or the runtime under it
//! (the C library, a language runtime, JIT stubs). By the module the address lies in where it
//! says (a shared library, a runtime's executable), by the naming of the symbols where it does
//! not (a static Go binary holds the standard library too; a JIT's perf map names JavaScript,
//! Java and Python functions with their origin).

/// Whose code a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrameKind {
    /// The program's own code: what a reader wants named.
    App,
    /// A library the program calls (a language's standard library, third-party modules).
    Library,
    /// Under the program: the C library, the language runtime, JIT stubs, unknown code.
    Runtime,
}

impl FrameKind {
    /// `"app"`, `"library"` or `"runtime"`.
    pub const fn name(self) -> &'static str {
        match self {
            FrameKind::App => "app",
            FrameKind::Library => "library",
            FrameKind::Runtime => "runtime",
        }
    }
}

/// Where a frame's address lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Module<'a> {
    /// The traced process's executable.
    Program,
    /// Another file mapped into the process (a shared library), by path.
    File(&'a str),
    /// Anonymous memory: JIT-compiled code, named (if at all) by a perf map.
    Jit,
    /// Nowhere known.
    Unknown,
}

/// What is known of the traced executable, to classify the frames in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Program {
    /// The executable's path.
    pub path: String,
    /// Go's main module path (from the binary's build information), for a Go program.
    pub go_main_module: Option<String>,
    /// The binary is Go (it has Go's build information).
    pub is_go: bool,
    /// For a JVM, the package prefix of the application's own classes (see
    /// [`java_application_prefix`]): `com.acme.` for `com.acme.orders.Main`, empty for a
    /// main class in the unnamed package; `None` when the main class is not known.
    pub java_app_prefix: Option<String>,
    /// For a Rust program, the crate of its `main` function (from the symbol table): the
    /// program's own crate, whatever the executable is named (a renamed or hard-linked binary,
    /// a `[[bin]]` whose name is not its crate's).
    pub rust_main_crate: Option<String>,
}

/// File names of runtimes and the C library: their frames are under the program.
const RUNTIME_FILES: &[&str] = &[
    "libc.so",
    "libc-",
    "ld-linux",
    "libpthread",
    "libdl.so",
    "libm.so",
    "librt.so",
    "libgcc_s",
    "libstdc++",
    "libjvm.so",
    "libjli.so",
    "libjava.so",
    "libnet.so",
    "libnio.so",
    "libpython",
    "libnode.so",
    "libuv.so",
    "[vdso]",
];

/// Parts of the file names of a runtime's own native modules (CPython's `_socket.cpython-312-x86_64-linux-gnu.so`).
const RUNTIME_MODULES: &[&str] = &[".cpython-", "/lib-dynload/"];

/// Executables that are a language runtime: a traced `node`, `java` or `python3` runs the
/// program as data, so the executable's own frames are the runtime's.
fn is_runtime_executable(path: &str) -> bool {
    let name = file_name(path);
    matches!(name, "node" | "nodejs" | "java" | "ruby" | "php" | "perl")
        || name.starts_with("python")
        || name.starts_with("pypy")
}

/// What a runtime needs to be started with for probe to name its program's functions, for a
/// program that is a runtime whose stacks showed none of the program's frames.
pub fn naming_hint(program: &Program) -> Option<&'static str> {
    let name = file_name(&program.path);
    if name == "node" || name == "nodejs" {
        Some("start node with --perf-basic-prof --interpreted-frames-native-stack")
    } else if name == "java" {
        Some(
            "start java with -XX:+PreserveFramePointer and run `jcmd PID Compiler.perfmap` \
             before probe's summary",
        )
    } else if name.starts_with("python") {
        // CPython 3.8 to 3.13 are read as they run: this one is another version (or
        // interpreter), or its frames could not be read.
        Some(
            "run it on CPython 3.8 to 3.13 (probe reads their frames as they run), or on a \
             Python 3.12 or later built with frame pointers (CFLAGS=-fno-omit-frame-pointer) \
             with -X perf (or PYTHONPERFSUPPORT=1)",
        )
    } else {
        None
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whose code the frame of `function` in `module` is, for `program`.
pub fn classify(function: &str, module: Module<'_>, program: &Program) -> FrameKind {
    match module {
        Module::File(path) => {
            let name = file_name(path);
            if RUNTIME_FILES.iter().any(|prefix| name.starts_with(prefix))
                || RUNTIME_MODULES.iter().any(|part| path.contains(part))
                || is_runtime_executable(path)
            {
                FrameKind::Runtime
            } else {
                FrameKind::Library
            }
        }
        Module::Program if is_runtime_executable(&program.path) => FrameKind::Runtime,
        Module::Program if program.is_go => go_symbol(function, program),
        Module::Program => native_symbol(function, program),
        Module::Jit => jit_symbol(function, program),
        Module::Unknown => FrameKind::Runtime,
    }
}

/// A Go symbol (`net/http.(*Transport).dial`, `main.doRequest`, `github.com/x/y.F`) by its
/// package: `runtime` and the runtime's internals are the runtime; the rest of the standard
/// library (a first path element without a dot) and modules other than the main one are
/// libraries; `main` and the main module are the program.
fn go_symbol(function: &str, program: &Program) -> FrameKind {
    if function.is_empty() {
        return FrameKind::Runtime;
    }
    let package = go_package(function);
    if package == "main" {
        return FrameKind::App;
    }
    if package == "runtime" || package.starts_with("runtime/") || package.starts_with("internal/") {
        return FrameKind::Runtime;
    }
    let first = package.split('/').next().unwrap_or(package);
    if !first.contains('.') {
        // The standard library (and `type:` and `go:` pseudo-packages).
        return FrameKind::Library;
    }
    match &program.go_main_module {
        Some(main) if package == main || package.starts_with(&format!("{main}/")) => FrameKind::App,
        Some(_) => FrameKind::Library,
        // Without build information, a module path is as likely the program's own.
        None => FrameKind::App,
    }
}

/// The package path of a Go symbol: up to the first `.` after the last `/`.
fn go_package(function: &str) -> &str {
    let last_slash = function.rfind('/').map_or(0, |i| i + 1);
    match function[last_slash..].find('.') {
        Some(dot) => &function[..last_slash + dot],
        None => function,
    }
}

/// A native (C, C++, Rust) symbol of the program's executable: the program's own unless it is
/// the language's runtime or standard library linked in.
fn native_symbol(function: &str, program: &Program) -> FrameKind {
    const RUNTIME: &[&str] = &[
        "_start",
        "__libc_",
        "_init",
        "_fini",
        "__rust_",
        "rust_begin",
    ];
    const LIBRARY: &[&str] = &[
        "std::",
        "core::",
        "alloc::",
        "<std::",
        "<core::",
        "<alloc::",
        "__gnu_cxx::",
    ];
    if function.is_empty() || RUNTIME.iter().any(|p| function.starts_with(p)) {
        return FrameKind::Runtime;
    }
    if LIBRARY.iter().any(|p| function.starts_with(p)) {
        return FrameKind::Library;
    }
    // A Rust path whose crate is not the program's (named like its executable) is a library
    // crate linked in; a plain C name, or the program's own crate, is the program.
    if let Some((krate, _)) = function.trim_start_matches('<').split_once("::") {
        let own = match &program.rust_main_crate {
            Some(main_crate) => krate == main_crate,
            None => {
                let program_crate = file_name(&program.path).replace('-', "_");
                let program_crate = program_crate.split('_').next().unwrap_or(&program_crate);
                krate.starts_with(program_crate)
            }
        };
        if !own && !krate.contains(' ') {
            return FrameKind::Library;
        }
    }
    FrameKind::App
}

/// The crate of a Rust program's `main` function, from a symbol of its symbol table, if
/// `symbol` is that function: `_ZN5xtask4main17h0123456789abcdefE` (the legacy mangling
/// rustc uses by default) is `xtask::main`. Written by hand: a demangler would name every
/// symbol of the table to find this one pattern.
pub fn rust_main_crate(symbol: &str) -> Option<&str> {
    let rest = symbol.strip_prefix("_ZN")?;
    let digits = rest.find(|c: char| !c.is_ascii_digit())?;
    let length: usize = rest[..digits].parse().ok()?;
    let rest = &rest[digits..];
    let krate = rest.get(..length)?;
    let hash = rest[length..].strip_prefix("4main17h")?.strip_suffix('E')?;
    let is_crate_name = !krate.is_empty()
        && krate
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !matches!(krate, "std" | "core" | "alloc");
    (is_crate_name && hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(krate)
}

/// The qualified method (`com.example.Leaky.doRequest`) of a JDK perf map's name for a
/// compiled method (`jcmd PID Compiler.perfmap` writes the signature:
/// `void com.example.Leaky.doRequest(java.lang.String, int)`).
pub fn java_method(name: &str) -> Option<&str> {
    let (head, arguments) = name.split_once('(')?;
    if !arguments.ends_with(')') {
        return None;
    }
    let (_returns, method) = head.rsplit_once(' ')?;
    (method.contains('.') && !method.contains(['/', ':'])).then_some(method)
}

/// A JIT frame, by the name its perf map gives (see [`super::perf_name`]): JavaScript outside
/// node's own modules and `node_modules`, Java of the application's packages (outside the JDK
/// where those are not known), Python outside the standard library and installed packages are
/// the program; the rest (V8 builtins and stubs, the JVM's interpreter, the JDK, third-party
/// libraries) is not.
fn jit_symbol(function: &str, program: &Program) -> FrameKind {
    if let Some(rest) = function.strip_prefix("JS:") {
        return if rest.contains("node:")
            || rest.contains("internal/")
            || rest.contains("/node_modules/")
        {
            FrameKind::Library
        } else {
            FrameKind::App
        };
    }
    if let Some(rest) = function.strip_prefix("py::") {
        return python_file(rest);
    }
    let java = java_method(function).or_else(|| {
        // perf-map-agent: `package.Class::method`.
        (function.contains("::") && !function.contains(' '))
            .then(|| function.trim_start_matches('L'))
    });
    if let Some(method) = java {
        let method = method.replace('/', ".");
        let is_app = match &program.java_app_prefix {
            // The unnamed package: the application's classes have no package either.
            Some(prefix) if prefix.is_empty() => {
                let class = method.split("::").next().unwrap_or(&method);
                let class = class.rsplit_once('.').map_or(class, |(class, _)| class);
                !class.contains('.')
            }
            Some(prefix) => method.starts_with(prefix.as_str()),
            None => !["java.", "jdk.", "sun.", "com.sun.", "javax."]
                .iter()
                .any(|p| method.starts_with(p)),
        };
        return if is_app {
            FrameKind::App
        } else {
            FrameKind::Library
        };
    }
    FrameKind::Runtime
}

/// Whose code a Python function in file `path` is: the standard library (`/lib/python3.N/`,
/// frozen modules) and installed packages (`site-packages`, `dist-packages`, which live under
/// a `lib/python3...` too) are libraries; any other file is the program's.
pub fn python_file(path: &str) -> FrameKind {
    if path.contains("/lib/python")
        || path.contains("<frozen")
        || path.contains("/site-packages/")
        || path.contains("/dist-packages/")
    {
        FrameKind::Library
    } else {
        FrameKind::App
    }
}

/// The package prefix of a Java application's own classes, from its main class: its first two
/// package names (`com.acme.` for `com.acme.orders.Main`: an organisation's code usually
/// shares them, while third-party libraries such as `org.apache.hc.` do not), or empty for
/// a main class in the unnamed package.
pub fn java_application_prefix(main_class: &str) -> String {
    let parts: Vec<&str> = main_class.split('.').collect();
    let package = &parts[..parts.len().saturating_sub(1)];
    package
        .iter()
        .take(2)
        .map(|part| format!("{part}."))
        .collect()
}

/// The main class of a `java` command line (its arguments after the executable), the first
/// argument that is not an option or an option's value; `--module M/C` gives `C`. `None` for
/// `-jar` (the manifest names it) and anything unrecognised.
pub fn java_main_class<'a>(arguments: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    /// The launcher's options that take the next argument as their value.
    const WITH_VALUE: &[&str] = &[
        "-cp",
        "-classpath",
        "--class-path",
        "-p",
        "--module-path",
        "--upgrade-module-path",
        "--add-modules",
        "--add-opens",
        "--add-exports",
        "--add-reads",
        "--patch-module",
        "--limit-modules",
        "--enable-native-access",
    ];
    let mut arguments = arguments.into_iter();
    while let Some(argument) = arguments.next() {
        match argument {
            "-jar" => return None,
            "-m" | "--module" => {
                return arguments
                    .next()
                    .and_then(|module| module.split_once('/'))
                    .map(|(_, class)| class);
            }
            option if WITH_VALUE.contains(&option) => {
                arguments.next();
            }
            option if option.starts_with('-') => {}
            class => return Some(class),
        }
    }
    None
}
