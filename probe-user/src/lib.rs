//! probe: which TCP connections of a process are stuck, since when, and why.
//!
//! Data flows one way: kernel event -> [`track`] (decode, connection table, stuck detection) ->
//! [`output`] sinks. [`cli`] turns the command line into one validated configuration; [`bpf`]
//! loads and attaches the kernel programs; [`snapshot`] reads the sockets that predate probe;
//! [`process`] finds, starts and follows the traced processes; [`app`] runs the session that
//! moves events from the ring buffer through the tracker to the sinks.

pub mod app;
pub mod bpf;
pub mod cli;
pub mod clock;
pub mod output;
pub mod process;
pub mod snapshot;
pub mod symbolize;
pub mod track;
