//! probe: which TCP connections of a process are stuck, since when, and why.
//!
//! Data flows one way: kernel event -> [`track`] (decode, connection table, stuck detection) ->
//! [`output`] sinks. [`bpf`] loads and attaches the kernel program; [`app`] runs the loop that
//! moves events from its ring buffer through the tracker to a sink.

pub mod app;
pub mod bpf;
pub mod cli;
pub mod clock;
pub mod output;
pub mod snapshot;
pub mod symbolize;
pub mod target;
pub mod track;
