//! The command line: the flags as clap parses them ([`Cli`]), turned once into the validated
//! [`Config`] the run works from, or into a [`Special`] mode that returns early. Nothing after
//! [`parse`] sees clap types.

mod config;
mod values;

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{CommandFactory, Parser, error::ErrorKind};
use ipnet::IpNet;
use probe_common::TcpState;

pub use config::{Command, Config, Kernel, Scope, Targets, View};
use values::{
    parse_comm, parse_network, parse_pid, parse_ring_kib, parse_state, parse_stuck_after,
    parse_threshold,
};

use crate::{bpf::Attach, output::metrics::parse_listen_address, track::Diagnosis};

/// Which TCP connections of a process are stuck, since when, and why.
///
/// probe follows every TCP state change of the chosen processes (all their threads) in the
/// kernel, rebuilds each connection's lifecycle, and flags the connections that get stuck (in
/// CLOSE_WAIT, idle in ESTABLISHED, in a connect or a close that never ends, with data nobody
/// reads, behind a listener that stopped accepting), with a diagnosis and a fix. Needs root (or
/// CAP_BPF and CAP_PERFMON).
#[derive(Debug, Parser)]
#[command(
    name = "probe",
    version = VERSION,
    after_help = "Examples:\n  sudo probe                       (every process on the host)\n  sudo probe --pid 4242\n  sudo probe --container 9f1c2ab\n  sudo probe --json --pid 4242 --duration 5m\n  sudo probe --close-wait-after 2s -- ./my-client --url http://127.0.0.1:8080/"
)]
pub struct Cli {
    /// Trace every process on the host (the default when no target is given): the triage table
    /// ranks them by stuck connections and leak rate.
    #[arg(long, conflicts_with_all = ["pids", "comm", "command", "cgroups", "containers"])]
    pub all: bool,

    /// Trace every process in this cgroup v2 directory and below it (repeatable): a path under
    /// the cgroup v2 mount, or as /proc/PID/cgroup shows it.
    #[arg(long = "cgroup", value_name = "PATH", conflicts_with_all = ["pids", "comm", "command"])]
    pub cgroups: Vec<PathBuf>,

    /// Trace the container whose id starts with this (repeatable), e.g. 9f1c2ab.
    #[arg(long = "container", value_name = "ID", conflicts_with_all = ["pids", "comm", "command"])]
    pub containers: Vec<String>,

    /// Print every transition in the text output also when tracing the whole host or cgroups
    /// (there, by default, only the stuck connections and the triage table are printed).
    #[arg(long)]
    pub transitions: bool,

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

    /// Flag connections stuck this way for longer than this (repeatable): a state (SYN_SENT,
    /// SYN_RECV, FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK, CLOSE_WAIT, ESTABLISHED), or
    /// RECEIVE_STALLED (data this process does not read), SEND_STALLED (data the peer does not
    /// read), ACCEPT_QUEUE_FULL (a listener that does not accept); `off` turns one off.
    #[arg(long = "stuck-after", value_name = "KIND=DURATION", value_parser = parse_stuck_after)]
    pub stuck_after: Vec<(Diagnosis, Option<Duration>)>,

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

    /// Label per-process metrics with the pid too (by default: name, container and pod, which
    /// outlive a pid; a fleet's series stay bounded).
    #[arg(long, requires = "metrics_addr")]
    pub metrics_pids: bool,

    /// Protect the metrics endpoint as this web configuration file says: TLS
    /// (tls_server_config) and basic auth (basic_auth_users, bcrypt hashes), in the format
    /// Prometheus exporters share.
    #[arg(long, value_name = "FILE", requires = "metrics_addr")]
    pub metrics_web_config: Option<PathBuf>,

    /// Per-process metrics for at most this many processes (the most urgent first); the rest
    /// add up under comm="(other)".
    #[arg(long, value_name = "N", default_value_t = 20, requires = "metrics_addr", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub metrics_top: u16,

    /// Size of the kernel ring buffer, in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = parse_ring_kib)]
    pub ring_buffer_kib: u32,

    /// How many sockets the kernel side can track at once [default: 65536, or twice the
    /// sockets the traced processes hold at attach when that is more].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    pub max_sockets: Option<u32>,

    /// Run `-- COMMAND` as root even under sudo (by default it runs as the user who ran sudo).
    #[arg(long)]
    pub as_root: bool,

    /// Do not capture the user stacks of connects (no stack map is created, and the
    /// output has no `opened_at`).
    #[arg(long)]
    pub no_stacks: bool,

    /// Do not hook Go's and node's runtimes (uprobes on Go's HTTP dial queue and libuv's TCP
    /// handles): connections they open are named by the connect's own stack only. Saves a trap
    /// per dial in programs that open connections all the time.
    #[arg(long)]
    pub no_runtime_hooks: bool,

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

/// The version, with the git revision it was built from, its target and how it is linked.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PROBE_GIT_REVISION"),
    ", ",
    env!("PROBE_BUILT_FOR"),
    ")"
);

/// How many processes probe can trace at once.
pub const MAX_TARGETS: u32 = 1024;

/// What the command line asks for.
#[derive(Debug)]
pub enum ParseResult {
    /// A mode that prints something and returns at once.
    Special(Special),
    /// Trace, as configured.
    Run(Box<Config>),
}

/// The modes that only print something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    /// A shell completion script (for `cargo xtask dist`).
    Completions(clap_complete::Shell),
    /// The man page, in roff (for `cargo xtask dist`).
    Man,
}

impl Special {
    /// Writes what this mode prints.
    pub fn write(self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        match self {
            Special::Completions(shell) => {
                clap_complete::generate(shell, &mut Cli::command(), "probe", out);
                Ok(())
            }
            Special::Man => clap_mangen::Man::new(Cli::command()).render(out),
        }
    }
}

/// Parses and validates this process's command line.
pub fn parse() -> Result<ParseResult, clap::Error> {
    parse_from(std::env::args_os())
}

/// Parses and validates a command line (`args` starts with the program name).
pub fn parse_from<I, T>(args: I) -> Result<ParseResult, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    if let Some(shell) = cli.generate_completions {
        return Ok(ParseResult::Special(Special::Completions(shell)));
    }
    if cli.generate_man {
        return Ok(ParseResult::Special(Special::Man));
    }
    Config::from_cli(cli)
        .map(|config| ParseResult::Run(Box::new(config)))
        .map_err(|message| Cli::command().error(ErrorKind::ArgumentConflict, message))
}

#[cfg(test)]
mod tests {
    use probe_common::TcpState;

    use super::*;
    use crate::track::Family;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        match parse_from(std::iter::once("probe").chain(args.iter().copied()))? {
            ParseResult::Run(config) => Ok(*config),
            ParseResult::Special(special) => panic!("{args:?} is the special mode {special:?}"),
        }
    }

    /// The container arguments of `deploy/daemonset.yaml` (a flow sequence, which is JSON).
    fn daemonset_args() -> Vec<String> {
        let manifest = include_str!("../../../deploy/daemonset.yaml");
        let line = manifest
            .lines()
            .find_map(|line| line.trim().strip_prefix("args: "))
            .expect("the DaemonSet has container args");
        serde_json::from_str(line).expect("args are a list of quoted strings")
    }

    #[test]
    fn the_daemonset_runs_a_valid_command_line() {
        let args = daemonset_args();
        let config = parse(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        assert_eq!(config.scope, Scope::Host, "host-wide on every node");
        assert!(
            !config.transitions,
            "alerts and summaries in the log, not every transition"
        );
        assert_eq!(config.view, View::Json);
        assert_eq!(config.metrics_addr, Some("0.0.0.0:9464".parse().unwrap()));
        assert_eq!(
            config.metrics_web_config.as_deref(),
            Some(std::path::Path::new("/etc/probe/web.yml"))
        );
        assert!(!config.metrics_cardinality.pids);
    }

    #[test]
    fn metrics_listen_on_loopback_unless_told() {
        let config = parse(&["--pid", "1", "--metrics-addr", "9464"]).unwrap();
        assert_eq!(config.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(parse(&["--pid", "1", "--metrics-addr", "everywhere"]).is_err());
        assert!(parse(&["--pid", "1", "--live", "--json"]).is_err());
    }

    #[test]
    fn defaults() {
        let config = parse(&["--pid", "12"]).unwrap();
        assert_eq!(config.targets.pids, [12]);
        assert_eq!(
            config
                .thresholds
                .get(Diagnosis::PeerClosedNeverClosedLocally),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            config.thresholds.get(Diagnosis::OpenAndUnused),
            Some(Duration::from_secs(60))
        );
        assert_eq!(config.kernel.ring_buffer_kib, 4096);
        assert_eq!(config.kernel.max_sockets_for(100), 65_536);
        assert_eq!(config.kernel.max_sockets_for(68_000), 262_144);
        assert_eq!(config.view, View::Text);
        assert!(config.kernel.stacks);
    }

    #[test]
    fn command_after_double_dash_keeps_its_own_flags() {
        let config = parse(&["--json", "--", "curl", "--json", "-v"]).unwrap();
        assert_eq!(config.view, View::Json);
        assert!(!config.verbose);
        let command = config.targets.command.unwrap();
        assert_eq!(command.argv, ["curl", "--json", "-v"]);
        assert!(!command.as_root);
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
            &["--pid", "1", "--duration", "9223372036854775807s"],
            &["--pid", "1", "--close-wait-after", "3651d"],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
        let err = parse(&["--pid", "1", "--duration", "5 parsecs"]).unwrap_err();
        assert!(err.to_string().contains("try 500ms"), "{err}");
    }

    #[test]
    fn forks_are_followed_by_default_only_for_a_command() {
        let follows = |args: &[&str]| parse(args).unwrap().targets.follow_forks;
        assert!(!follows(&["--pid", "1"]));
        assert!(follows(&["--pid", "1", "--follow-forks"]));
        assert!(follows(&["--", "sh"]));
        assert!(!follows(&["--no-follow-forks", "--", "sh"]));
        assert!(!follows(&[
            "--follow-forks",
            "--no-follow-forks",
            "--",
            "sh"
        ]));
        let err = parse(&["--no-follow-forks", "--pid", "1"]).unwrap_err();
        assert!(err.to_string().contains("command"), "{err}");
        let err = parse(&["--as-root", "--pid", "1"]).unwrap_err();
        assert!(err.to_string().contains("command"), "{err}");
    }

    #[test]
    fn comm_names_are_kept_as_the_kernel_keeps_them() {
        let config = parse(&["--comm", "a-very-long-process-name"]).unwrap();
        assert_eq!(config.targets.comm.as_deref(), Some("a-very-long-pro"));
        // Without --follow-forks, only the running processes of that name are traced.
        assert_eq!(config.targets.comm_filter(), None);
        let config = parse(&["--comm", "a-very-long-process-name", "--follow-forks"]).unwrap();
        let filter = config.targets.comm_filter().unwrap();
        assert_eq!(&filter[..15], b"a-very-long-pro");
        assert_eq!(filter[15], 0);
        assert!(parse(&["--comm", "/usr/bin/curl"]).is_err());
        assert!(parse(&["--comm", ""]).is_err());
    }

    #[test]
    fn filters_as_ss_users_write_them() {
        let config = parse(&[
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
        let filter = config.filter;
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
    fn every_kind_of_stuck_has_a_threshold_of_its_own() {
        let config = parse(&[
            "--pid",
            "1",
            "--stuck-after",
            "syn-sent=3s",
            "--stuck-after",
            "ACCEPT_QUEUE_FULL=off",
            "--stuck-after",
            "RECEIVE_STALLED=2s",
        ])
        .unwrap();
        let t = config.thresholds;
        assert_eq!(
            t.get(Diagnosis::ConnectUnanswered),
            Some(Duration::from_secs(3))
        );
        assert_eq!(t.get(Diagnosis::AcceptQueueFull), None);
        assert_eq!(
            t.get(Diagnosis::ReceiveStalled),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            t.get(Diagnosis::PeerNeverClosed),
            Some(Duration::from_secs(60))
        );
        for bad in ["SYN_SENT", "WAITING=5s", "SYN_SENT=soon", "LISTEN=5s"] {
            let err = parse(&["--pid", "1", "--stuck-after", bad])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("SYN_SENT") || err.contains("duration"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn no_target_means_the_whole_host() {
        let config = parse(&["--json"]).unwrap();
        assert_eq!(config.scope, Scope::Host);
        assert!(config.tracer(0).trace_all);
        assert!(
            !config.transitions,
            "the host-wide text output is the triage"
        );
        assert_eq!(
            parse(&["--all", "--transitions"]).unwrap().scope,
            Scope::Host
        );
        assert!(parse(&["--all", "--transitions"]).unwrap().transitions);
        assert!(parse(&["--all", "--pid", "1"]).is_err());
        let err = parse(&["--follow-forks"]).unwrap_err().to_string();
        assert!(err.contains("--follow-forks"), "{err}");
    }

    #[test]
    fn cgroups_and_containers_are_scopes_of_their_own() {
        let config = parse(&["--cgroup", "/kubepods.slice", "--container", "9f1c"]).unwrap();
        assert_eq!(
            config.scope,
            Scope::Cgroups {
                paths: vec!["/kubepods.slice".into()],
                containers: vec!["9f1c".into()],
            }
        );
        assert!(parse(&["--cgroup", "/x", "--pid", "1"]).is_err());
    }

    /// Pieces of command lines: every flag, values of every kind, and the odd ones out.
    fn piece() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let flags: Vec<String> = Cli::command()
            .get_arguments()
            .filter_map(|arg| arg.get_long().map(|long| format!("--{long}")))
            .chain(["-p", "-d", "-4", "-6", "-v", "--", "-"].map(String::from))
            .collect();
        prop_oneof![
            proptest::sample::select(flags),
            proptest::sample::select(
                [
                    "0",
                    "1",
                    "-1",
                    "65535",
                    "4294967296",
                    "9223372036854775807s",
                    "1s",
                    "5m",
                    "0s",
                    "3651d",
                    "::ffff:1.2.3.4",
                    "10.0.0.0/8",
                    "::/0",
                    "close-wait",
                    "TIME_WAIT",
                    "bash",
                    "9464",
                    "0.0.0.0:1",
                    "/dev/null",
                    "auto",
                    "btf",
                    "",
                ]
                .map(String::from)
                .to_vec()
            ),
            any::<String>(),
        ]
    }

    proptest::proptest! {
        /// Whatever a user (or a script) types, parsing ends in a configuration or an error,
        /// never in a panic, and a configuration's derived values never overflow.
        #[test]
        fn any_command_line_parses_or_errs_without_panicking(
            args in proptest::collection::vec(piece(), 0..8),
            sockets in 0usize..usize::MAX,
        ) {
            let argv = std::iter::once("probe".to_string()).chain(args);
            if let Ok(ParseResult::Run(config)) = parse_from(argv) {
                let tracer = config.tracer(sockets);
                proptest::prop_assert!(tracer.max_sockets >= 16);
                proptest::prop_assert!(tracer.ring_buffer_bytes >= 4096);
            }
        }
    }

    #[test]
    fn generating_completions_or_the_man_page_returns_early() {
        let special = |args: &[&str]| match parse_from(args.iter().copied()).unwrap() {
            ParseResult::Special(special) => special,
            ParseResult::Run(config) => panic!("{args:?} runs {config:?}"),
        };
        assert_eq!(special(&["probe", "--generate-man"]), Special::Man);
        assert_eq!(
            special(&["probe", "--generate-completions", "bash"]),
            Special::Completions(clap_complete::Shell::Bash)
        );
        let mut page = Vec::new();
        Special::Man.write(&mut page).unwrap();
        assert!(String::from_utf8_lossy(&page).contains(".TH probe"));
    }
}
