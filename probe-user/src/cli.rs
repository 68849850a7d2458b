//! Command-line arguments and their validation.

use std::{ffi::OsString, time::Duration};

use clap::Parser;

/// Which TCP connections of a process are stuck, since when, and why.
///
/// probe follows every TCP state change of the chosen processes (all their threads) in the
/// kernel, rebuilds each connection's lifecycle, and flags the connections that stay in
/// CLOSE_WAIT or ESTABLISHED for too long, with a diagnosis. Needs root (or CAP_BPF and
/// CAP_PERFMON).
#[derive(Debug, Parser)]
#[command(
    name = "probe",
    version,
    after_help = "Examples:\n  sudo probe --pid 4242\n  sudo probe --json --pid 4242 --duration 5m\n  sudo probe --close-wait-after 2s -- ./my-client --url http://127.0.0.1:8080/"
)]
pub struct Cli {
    /// Trace this running process and all its threads (repeatable).
    #[arg(short, long = "pid", value_name = "PID", value_parser = parse_pid)]
    pub pids: Vec<u32>,

    /// Flag connections in CLOSE_WAIT for longer than this (the peer closed, we did not).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_threshold)]
    pub close_wait_after: Duration,

    /// Flag connections in ESTABLISHED for longer than this (open and unused).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_threshold)]
    pub established_after: Duration,

    /// Stop after this long (e.g. 30s, 5m); otherwise run until Ctrl-C, or until the traced
    /// processes exit.
    #[arg(short, long, value_name = "DURATION", value_parser = parse_threshold)]
    pub duration: Option<Duration>,

    /// Write NDJSON to stdout: one object per line, each with a "type" (transition, stuck,
    /// summary).
    #[arg(long)]
    pub json: bool,

    /// Size of the kernel ring buffer, in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = 1024, value_parser = parse_ring_kib)]
    pub ring_buffer_kib: u32,

    /// How many sockets the kernel side can track at once.
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    pub max_sockets: u32,

    /// Show debug logs, including the kernel program's own diagnostics.
    #[arg(short, long)]
    pub verbose: bool,

    /// Start this command and trace it from its very first connection; probe exits when it
    /// exits.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// How many processes probe can trace at once.
pub const MAX_TARGETS: u32 = 1024;

impl Cli {
    /// Checks what clap cannot: there must be something to trace.
    pub fn validate(&self) -> Result<(), String> {
        if self.pids.is_empty() && self.command.is_empty() {
            return Err(
                "nothing to trace: give --pid PID, or a command after `--` (probe -- COMMAND)"
                    .into(),
            );
        }
        if self.pids.len() >= MAX_TARGETS as usize {
            return Err(format!(
                "at most {} processes can be traced",
                MAX_TARGETS - 1
            ));
        }
        Ok(())
    }
}

fn parse_pid(text: &str) -> Result<u32, String> {
    match text.parse::<i64>() {
        Ok(pid) if pid > 0 && pid <= i64::from(i32::MAX) => Ok(pid as u32),
        Ok(_) => Err("a pid is a positive number (see `pgrep NAME`)".into()),
        Err(_) => Err(format!("`{text}` is not a pid (a positive number)")),
    }
}

fn parse_threshold(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration ({e}); try 500ms, 5s, 2m or 1h"))?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

fn parse_ring_kib(text: &str) -> Result<u32, String> {
    let kib: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of KiB"))?;
    if kib < 4 || !kib.is_power_of_two() || kib > 1 << 20 {
        return Err("the ring buffer size is a power of two from 4 to 1048576 KiB".into());
    }
    Ok(kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("probe").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let cli = parse(&["--pid", "12"]).unwrap();
        assert_eq!(cli.pids, [12]);
        assert_eq!(cli.close_wait_after, Duration::from_secs(5));
        assert_eq!(cli.established_after, Duration::from_secs(60));
        assert_eq!(cli.ring_buffer_kib, 1024);
        assert!(cli.validate().is_ok());
    }

    #[test]
    fn command_after_double_dash_keeps_its_own_flags() {
        let cli = parse(&["--json", "--", "curl", "--json", "-v"]).unwrap();
        assert!(cli.json);
        assert!(!cli.verbose);
        assert_eq!(cli.command, ["curl", "--json", "-v"]);
        assert!(cli.validate().is_ok());
    }

    #[test]
    fn bad_values_are_refused_with_a_hint() {
        for args in [
            &["--pid", "0"][..],
            &["--pid", "-3"],
            &["--pid", "abc"],
            &["--pid", "99999999999"],
            &["--pid", "1", "--close-wait-after", "soon"],
            &["--pid", "1", "--established-after", "0s"],
            &["--pid", "1", "--ring-buffer-kib", "1000"],
            &["--pid", "1", "--max-sockets", "0"],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
        let err = parse(&["--pid", "1", "--duration", "5 parsecs"]).unwrap_err();
        assert!(err.to_string().contains("try 500ms"), "{err}");
    }

    #[test]
    fn nothing_to_trace_is_an_error() {
        let err = parse(&["--json"]).unwrap().validate().unwrap_err();
        assert!(err.contains("--pid"));
    }
}
