//! Command-line arguments and their validation.

use std::{
    ffi::OsString,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{CommandFactory, Parser};
use ipnet::IpNet;
use probe_common::TcpState;

use crate::{
    bpf::Attach,
    output::{filter::Filter, metrics::parse_listen_address},
    track::Family,
};

/// Which TCP connections of a process are stuck, since when, and why.
///
/// probe follows every TCP state change of the chosen processes (all their threads) in the
/// kernel, rebuilds each connection's lifecycle, and flags the connections that stay in
/// CLOSE_WAIT or ESTABLISHED for too long, with a diagnosis. Needs root (or CAP_BPF and
/// CAP_PERFMON).
#[derive(Debug, Parser)]
#[command(
    name = "probe",
    version = VERSION,
    after_help = "Examples:\n  sudo probe --pid 4242\n  sudo probe --json --pid 4242 --duration 5m\n  sudo probe --close-wait-after 2s -- ./my-client --url http://127.0.0.1:8080/"
)]
pub struct Cli {
    /// Trace this running process and all its threads (repeatable).
    #[arg(
        short,
        long = "pid",
        value_name = "PID",
        value_parser = parse_pid,
        allow_negative_numbers = true
    )]
    pub pids: Vec<u32>,

    /// Trace every running process with this name (and, with --follow-forks, the ones started
    /// under this name later).
    #[arg(long, value_name = "NAME", value_parser = parse_comm)]
    pub comm: Option<String>,

    /// Also trace the processes the traced ones fork (default with a COMMAND).
    #[arg(long, overrides_with = "no_follow_forks")]
    pub follow_forks: bool,

    /// Do not trace forked processes (default with --pid and --comm).
    #[arg(long, overrides_with = "follow_forks")]
    pub no_follow_forks: bool,

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

    /// Show only connections with this local or remote port (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,

    /// Show only connections to this address or network, e.g. 10.0.0.5 or 10.0.0.0/8
    /// (repeatable).
    #[arg(long = "remote", value_name = "ADDR[/CIDR]", value_parser = parse_network)]
    pub remotes: Vec<IpNet>,

    /// Show only IPv4 connections.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Show only IPv6 connections.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    /// Show only the transitions into or out of this state, e.g. CLOSE_WAIT (repeatable).
    #[arg(long = "state", value_name = "STATE", value_parser = parse_state)]
    pub states: Vec<TcpState>,

    /// Write NDJSON to stdout: one object per line, each with a "type" (transition, stuck,
    /// summary).
    #[arg(long)]
    pub json: bool,

    /// Full-screen live view, like top: per-state counts, stuck connections by remote
    /// endpoint, latest transitions (plain lines when stdout is not a terminal).
    #[arg(long, conflicts_with = "json")]
    pub live: bool,

    /// When probe stops, write a self-contained HTML incident report to this file.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics; a port alone (9464) listens on
    /// 127.0.0.1 only, 0.0.0.0:9464 on every interface.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_address)]
    pub metrics_addr: Option<SocketAddr>,

    /// Size of the kernel ring buffer, in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = parse_ring_kib)]
    pub ring_buffer_kib: u32,

    /// How many sockets the kernel side can track at once.
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    pub max_sockets: u32,

    /// Run `-- COMMAND` as root even under sudo (by default it runs as the user who ran sudo).
    #[arg(long)]
    pub as_root: bool,

    /// Do not capture the user stacks of connects (no stack map is created, and the
    /// output has no `opened_at`).
    #[arg(long)]
    pub no_stacks: bool,

    /// Which kernel program follows the transitions: `btf` (the BTF tracepoint, cheapest: the
    /// kernel fills no trace record), `tracepoint` (the classic one, for kernels built without
    /// BTF), or `auto` (`btf` where /sys/kernel/btf/vmlinux exists).
    #[arg(long, value_enum, value_name = "PROGRAM", default_value_t = Attach::Auto)]
    pub attach: Attach,

    /// Show debug logs, including the kernel program's own diagnostics.
    #[arg(short, long)]
    pub verbose: bool,

    /// Print a shell completion script (for `cargo xtask dist`).
    #[arg(long, value_name = "SHELL", hide = true, exclusive = true)]
    pub generate_completions: Option<clap_complete::Shell>,

    /// Print the man page, in roff (for `cargo xtask dist`).
    #[arg(long, hide = true, exclusive = true)]
    pub generate_man: bool,

    /// Start this command and trace it from its very first connection; probe exits when it
    /// exits.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// The version, with the git revision it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("PROBE_GIT_REVISION"),
    ")"
);

/// How many processes probe can trace at once.
pub const MAX_TARGETS: u32 = 1024;

impl Cli {
    /// Checks what clap cannot: there must be something to trace.
    pub fn validate(&self) -> Result<(), String> {
        if self.pids.is_empty() && self.command.is_empty() && self.comm.is_none() {
            return Err(
                "nothing to trace: give --pid PID, --comm NAME, or a command after `--` \
                 (probe -- COMMAND)"
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

impl Cli {
    /// Whether forked processes are traced: on with a COMMAND unless turned off, off otherwise
    /// unless turned on.
    pub fn follows_forks(&self) -> bool {
        if self.no_follow_forks {
            false
        } else {
            self.follow_forks || !self.command.is_empty()
        }
    }

    /// The `--comm` name as the kernel stores process names: at most 15 bytes, NUL padded.
    pub fn comm_filter(&self) -> Option<[u8; 16]> {
        self.comm.as_ref().map(|name| {
            let mut filter = [0u8; 16];
            let bytes = &name.as_bytes()[..name.len().min(15)];
            filter[..bytes.len()].copy_from_slice(bytes);
            filter
        })
    }
}

impl Cli {
    /// Writes the shell completions or man page `--generate-completions` / `--generate-man`
    /// ask for (for `cargo xtask dist`); false when neither was asked.
    pub fn write_generated(&self, out: &mut dyn std::io::Write) -> std::io::Result<bool> {
        if let Some(shell) = self.generate_completions {
            clap_complete::generate(shell, &mut Cli::command(), "probe", out);
            return Ok(true);
        }
        if self.generate_man {
            clap_mangen::Man::new(Cli::command()).render(out)?;
            return Ok(true);
        }
        Ok(false)
    }
}

impl Cli {
    /// What the user asked to see.
    pub fn filter(&self) -> Filter {
        Filter {
            ports: self.ports.clone(),
            remotes: self.remotes.clone(),
            family: if self.ipv4 {
                Some(Family::Ipv4)
            } else if self.ipv6 {
                Some(Family::Ipv6)
            } else {
                None
            },
            states: self.states.clone(),
        }
    }
}

fn parse_network(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is neither an address nor a network like 10.0.0.0/8"))
}

fn parse_state(text: &str) -> Result<TcpState, String> {
    let wanted = text
        .trim_start_matches("TCP_")
        .to_ascii_uppercase()
        .replace('-', "_");
    TcpState::ALL
        .into_iter()
        .find(|state| state.name() == wanted)
        .ok_or_else(|| {
            let names: Vec<&str> = TcpState::ALL.iter().map(|s| s.name()).collect();
            format!("`{text}` is not a TCP state; one of {}", names.join(", "))
        })
}

fn parse_comm(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains('/') {
        return Err(
            "a process name as `ps -o comm` shows it (no path), e.g. `--comm nginx`".into(),
        );
    }
    // The kernel keeps the first 15 bytes of a name: match what it keeps.
    let mut end = text.len().min(15);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Ok(text[..end].to_string())
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

    /// The container arguments of `deploy/daemonset.yaml` (a flow sequence, which is JSON).
    fn daemonset_args() -> Vec<String> {
        let manifest = include_str!("../../deploy/daemonset.yaml");
        let line = manifest
            .lines()
            .find_map(|line| line.trim().strip_prefix("args: "))
            .expect("the DaemonSet has container args");
        serde_json::from_str(line).expect("args are a list of quoted strings")
    }

    #[test]
    fn the_daemonset_runs_a_valid_command_line() {
        let args = daemonset_args();
        let cli = parse(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        cli.validate().unwrap();
        assert!(cli.follows_forks() && cli.comm.is_some() && cli.json);
        assert_eq!(cli.metrics_addr, Some("0.0.0.0:9464".parse().unwrap()));
    }

    #[test]
    fn metrics_listen_on_loopback_unless_told() {
        let cli = parse(&["--pid", "1", "--metrics-addr", "9464"]).unwrap();
        assert_eq!(cli.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(parse(&["--pid", "1", "--metrics-addr", "everywhere"]).is_err());
        assert!(parse(&["--pid", "1", "--live", "--json"]).is_err());
    }

    #[test]
    fn defaults() {
        let cli = parse(&["--pid", "12"]).unwrap();
        assert_eq!(cli.pids, [12]);
        assert_eq!(cli.close_wait_after, Duration::from_secs(5));
        assert_eq!(cli.established_after, Duration::from_secs(60));
        assert_eq!(cli.ring_buffer_kib, 4096);
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
    fn forks_are_followed_by_default_only_for_a_command() {
        assert!(!parse(&["--pid", "1"]).unwrap().follows_forks());
        assert!(
            parse(&["--pid", "1", "--follow-forks"])
                .unwrap()
                .follows_forks()
        );
        assert!(parse(&["--", "sh"]).unwrap().follows_forks());
        assert!(
            !parse(&["--no-follow-forks", "--", "sh"])
                .unwrap()
                .follows_forks()
        );
        assert!(
            !parse(&["--follow-forks", "--no-follow-forks", "--pid", "1"])
                .unwrap()
                .follows_forks()
        );
    }

    #[test]
    fn comm_names_are_kept_as_the_kernel_keeps_them() {
        let cli = parse(&["--comm", "a-very-long-process-name"]).unwrap();
        assert_eq!(cli.comm.as_deref(), Some("a-very-long-pro"));
        let filter = cli.comm_filter().unwrap();
        assert_eq!(&filter[..15], b"a-very-long-pro");
        assert_eq!(filter[15], 0);
        assert!(parse(&["--comm", "/usr/bin/curl"]).is_err());
        assert!(parse(&["--comm", ""]).is_err());
        assert!(cli.validate().is_ok());
    }

    #[test]
    fn filters_as_ss_users_write_them() {
        let cli = parse(&[
            "--pid",
            "1",
            "--port",
            "5432",
            "--remote",
            "10.0.0.0/8",
            "--remote",
            "192.168.1.7",
            "-6",
            "--state",
            "close-wait",
            "--state",
            "TCP_LAST_ACK",
        ])
        .unwrap();
        let filter = cli.filter();
        assert_eq!(filter.ports, [5432]);
        assert_eq!(filter.remotes[1].to_string(), "192.168.1.7/32");
        assert_eq!(filter.family, Some(Family::Ipv6));
        assert_eq!(filter.states, [TcpState::CloseWait, TcpState::LastAck]);
        let err = parse(&["--pid", "1", "--state", "WAITING"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("CLOSE_WAIT"), "{err}");
        assert!(parse(&["--pid", "1", "-4", "-6"]).is_err());
        assert!(parse(&["--pid", "1", "--remote", "10.0.0.0/99"]).is_err());
    }

    #[test]
    fn nothing_to_trace_is_an_error() {
        let err = parse(&["--json"]).unwrap().validate().unwrap_err();
        assert!(err.contains("--pid"));
    }
}
