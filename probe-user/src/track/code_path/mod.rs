//! Where in a program something happened: a symbolized user stack, each frame classified as
//! the program's own, a library's or the runtime's (see [`classify`]).

pub mod classify;

use std::{fmt, sync::Arc};

pub use classify::FrameKind;

/// How many of the program's frames outputs show (and group stuck connections by).
pub const SHOWN_FRAMES: usize = 3;

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
    /// Whose code it is.
    pub kind: FrameKind,
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

/// The part of a stack a reader wants: the program's own frames, innermost first, and the
/// frame of the library or runtime they called into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shown<'a> {
    pub frames: &'a [Frame],
    /// The library (or runtime) function the first of `frames` called.
    pub via: Option<&'a Frame>,
}

impl CodePath {
    /// The innermost run of the program's own frames and what they called. A stack without a
    /// frame of the program (all library and runtime: a pool's own goroutine) shows its
    /// outermost named frame that is not the runtime's, the closest there is to who asked.
    pub fn shown(&self) -> Shown<'_> {
        let frames = &self.frames;
        if let Some(start) = frames.iter().position(|f| f.kind == FrameKind::App) {
            let length = frames[start..]
                .iter()
                .take_while(|f| f.kind == FrameKind::App)
                .count();
            // The library call the program made; without a library frame (a JVM's
            // interpreted JDK code), the system call's wrapper rather than the interpreter.
            let called = &frames[..start];
            let via = called
                .iter()
                .rev()
                .find(|f| f.kind == FrameKind::Library && !f.function.is_empty())
                .or_else(|| called.iter().find(|f| !f.function.is_empty()));
            return Shown {
                frames: &frames[start..start + length],
                via,
            };
        }
        let outermost = frames
            .iter()
            .rposition(|f| f.kind == FrameKind::Library && !f.function.is_empty())
            .or_else(|| frames.iter().position(|f| !f.function.is_empty()));
        match outermost {
            Some(index) => Shown {
                frames: &frames[index..=index],
                via: None,
            },
            None => Shown {
                frames: &frames[..frames.len().min(1)],
                via: None,
            },
        }
    }

    /// `f (file:line) <- g (file:line) <- ..., via lib.F`: up to `depth` frames of the program
    /// itself and the library function they called.
    pub fn describe(&self, depth: usize) -> String {
        let shown = self.shown();
        let mut text = shown
            .frames
            .iter()
            .take(depth)
            .map(Frame::to_string)
            .collect::<Vec<_>>()
            .join(" <- ");
        if shown.frames.len() > depth {
            text.push_str(" <- ...");
        }
        if text.is_empty() {
            text.push_str("an unknown place (no stack)");
        }
        if let Some(via) = shown.via {
            text.push_str(", via ");
            text.push_str(&via.function);
        }
        text
    }

    /// Whether any frame is the program's own.
    pub fn has_app_frames(&self) -> bool {
        self.frames.iter().any(|f| f.kind == FrameKind::App)
    }
}

/// Where a connection came from: the stack of its connect, and, where a runtime connects on
/// behalf of other code (Go's HTTP transport dials on a goroutine of its own; node connects on
/// a later tick), the stack of the code that asked for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin<'a> {
    pub opened_at: Option<&'a CodePath>,
    pub requested_at: Option<&'a CodePath>,
}

/// Which of an [`Origin`]'s stacks the outputs name first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShownStack {
    /// The connect's own stack.
    OpenedAt,
    /// The stack of the code that asked a runtime for the connection.
    RequestedAt,
}

impl ShownStack {
    /// The JSON field the stack is in: `"opened_at"` or `"requested_at"`.
    pub const fn field(self) -> &'static str {
        match self {
            ShownStack::OpenedAt => "opened_at",
            ShownStack::RequestedAt => "requested_at",
        }
    }
}

impl Origin<'_> {
    /// Which stack names the code to fix. The requester's, where it has a frame of the
    /// program: a runtime dialed on its behalf, and the requester is what leaks (the dialer,
    /// even a custom dial function of the program, only did as asked). Otherwise the connect's
    /// own, or whichever there is.
    pub fn shows(&self) -> Option<ShownStack> {
        match (self.opened_at, self.requested_at) {
            (_, Some(requested)) if requested.has_app_frames() => Some(ShownStack::RequestedAt),
            (Some(_), _) => Some(ShownStack::OpenedAt),
            (None, Some(_)) => Some(ShownStack::RequestedAt),
            (None, None) => None,
        }
    }

    /// The stack that names the code to fix (see [`Origin::shows`]).
    pub fn best(&self) -> Option<&CodePath> {
        match self.shows()? {
            ShownStack::OpenedAt => self.opened_at,
            ShownStack::RequestedAt => self.requested_at,
        }
    }

    /// [`CodePath::describe`] of [`Origin::best`]; where that is the requester's and the
    /// connect ran in the program's own code elsewhere (a custom dial function), that code
    /// follows: `main.doRequest (main.go:28) <- main.main (main.go:44), via
    /// net/http.(*Client).Post; dialed in main.dialTimeout (main.go:20)`. `None` without any
    /// stack.
    pub fn describe(&self, depth: usize) -> Option<String> {
        let best = self.best()?;
        let mut text = best.describe(depth);
        if let (Some(ShownStack::RequestedAt), Some(opened)) = (self.shows(), self.opened_at)
            && opened.has_app_frames()
        {
            let dialer = opened.shown().frames.first();
            if let Some(dialer) = dialer.filter(|d| best.shown().frames.first() != Some(*d)) {
                text.push_str("; dialed in ");
                text.push_str(&dialer.to_string());
            }
        }
        Some(text)
    }
}

#[cfg(test)]
mod tests;
