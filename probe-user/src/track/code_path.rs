//! Where in a program something happened: a symbolized user stack.

use std::{fmt, sync::Arc};

/// A user stack the kernel captured: its id in the kernel's stack map, in the process it was
/// captured in (symbolized later, away from the event path).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackRef {
    pub pid: u32,
    pub id: u32,
}

/// Where the symbolized stacks come from, for the tracker to name the code that opened a
/// connection when it reports one.
pub trait CodePathSource {
    /// The code path of `stack`, once it has been symbolized.
    fn code_path(&self, stack: StackRef) -> Option<Arc<CodePath>>;
}

/// Any function from stacks to code paths (a table in tests, for instance).
impl<F: Fn(StackRef) -> Option<Arc<CodePath>>> CodePathSource for F {
    fn code_path(&self, stack: StackRef) -> Option<Arc<CodePath>> {
        self(stack)
    }
}

/// No stacks (`--no-stacks`): no connection has a code path.
pub struct NoCodePaths;

impl CodePathSource for NoCodePaths {
    fn code_path(&self, _stack: StackRef) -> Option<Arc<CodePath>> {
        None
    }
}

/// One frame of a user stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// The function, demangled; empty when the address could not be symbolized.
    pub function: String,
    /// The source file name, where debug information has it.
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The instruction address in the process.
    pub address: u64,
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.function.is_empty() {
            return write!(f, "{:#x}", self.address);
        }
        write!(f, "{}", self.function)?;
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, " ({file}:{line})"),
            (Some(file), None) => write!(f, " ({file})"),
            _ => Ok(()),
        }
    }
}

/// A user stack, innermost frame first (outermost last).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CodePath {
    pub frames: Vec<Frame>,
}

/// Functions that only wrap the system call: the C library, the runtimes' socket layers. The
/// frames a reader wants start below them.
const WRAPPERS: &[&str] = &[
    "__",
    "connect",
    "close",
    "shutdown",
    "std::",
    "<std::",
    "core::",
    "<core::",
    "alloc::",
    "syscall.",
    "internal/poll.",
    "net.",
    "net/http.",
    "crypto/tls.",
    "runtime.",
];

impl CodePath {
    /// The frames of the program itself: the first run of frames below the system call and
    /// socket library wrappers, up to the runtime's own frames (all of the stack, if it has no
    /// such run).
    pub fn application_frames(&self) -> &[Frame] {
        let is_program = |frame: &Frame| {
            !frame.function.is_empty() && !WRAPPERS.iter().any(|w| frame.function.starts_with(w))
        };
        let Some(start) = self.frames.iter().position(is_program) else {
            return &self.frames;
        };
        let length = self.frames[start..]
            .iter()
            .take_while(|frame| is_program(frame))
            .count();
        &self.frames[start..start + length]
    }

    /// `f (file:line) <- g (file:line) <- ...`: up to `depth` frames of the program itself.
    pub fn describe(&self, depth: usize) -> String {
        let frames = self.application_frames();
        let mut text = frames
            .iter()
            .take(depth)
            .map(Frame::to_string)
            .collect::<Vec<_>>()
            .join(" <- ");
        if frames.len() > depth {
            text.push_str(" <- ...");
        }
        if text.is_empty() {
            text.push_str("an unknown place (no stack)");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, file: Option<&str>, line: Option<u32>) -> Frame {
        Frame {
            function: function.into(),
            file: file.map(Into::into),
            line,
            address: 0x4010,
        }
    }

    fn go_stack() -> CodePath {
        CodePath {
            frames: vec![
                frame("syscall.connect", None, None),
                frame("net.(*netFD).connect", Some("fd_unix.go"), Some(59)),
                frame(
                    "net/http.(*Transport).dialConn",
                    Some("transport.go"),
                    Some(1776),
                ),
                frame("main.doRequest", Some("main.go"), Some(31)),
                frame("main.main", Some("main.go"), Some(52)),
                frame("runtime.main", Some("proc.go"), Some(271)),
            ],
        }
    }

    #[test]
    fn describes_the_program_frames_below_the_socket_library() {
        assert_eq!(
            go_stack().describe(3),
            "main.doRequest (main.go:31) <- main.main (main.go:52)"
        );
        assert_eq!(go_stack().describe(1), "main.doRequest (main.go:31) <- ...");
        assert_eq!(go_stack().application_frames().len(), 2);
    }

    #[test]
    fn unknown_frames_show_their_address_and_an_empty_stack_says_so() {
        assert_eq!(frame("", None, None).to_string(), "0x4010");
        assert_eq!(frame("f", Some("a.rs"), None).to_string(), "f (a.rs)");
        let empty = CodePath { frames: vec![] };
        assert_eq!(empty.describe(3), "an unknown place (no stack)");
        // Only wrappers: all of it is shown rather than nothing.
        let wrappers = CodePath {
            frames: vec![frame("__connect", None, None)],
        };
        assert_eq!(wrappers.describe(3), "__connect");
    }
}
