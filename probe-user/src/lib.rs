//! probe: which TCP connections of a process are stuck, since when, and why.
//!
//! Data flows one way: kernel event -> [`track`] (decode, connection table, stuck detection) ->
//! [`output`] sinks. [`cli`] turns the command line into one validated configuration; [`bpf`]
//! loads and attaches the kernel programs; [`snapshot`] reads the sockets that predate probe;
//! [`process`] finds, starts and follows the traced processes; [`app`] runs the session that
//! moves events from the ring buffer through the tracker to the sinks.

/// `eprintln!` that cannot panic: a line for the person at the terminal, on stderr. When
/// stderr's reader has gone away (`probe 2>&1 >/dev/null | true`) the line has nobody to reach,
/// and probe carries on (its stdout, report or metrics may still be read); `eprintln!` would
/// panic there. Every message probe writes to stderr goes through it (clippy disallows
/// `eprintln!` in this crate).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr().lock(), $($arg)*);
    }};
}

pub mod app;
pub mod bpf;
pub mod cli;
pub mod clock;
pub mod output;
pub mod process;
pub mod snapshot;
pub mod symbolize;
pub mod track;
