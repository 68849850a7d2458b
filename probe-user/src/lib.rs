//! probe: which TCP connections of a process are stuck, since when, and why.
//!
//! Data flows one way: kernel event -> [`track`] (decode, connection table, stuck detection) ->
//! [`output`] sinks. [`bpf`] loads and attaches the kernel program and reads its ring buffer.

pub mod track;
