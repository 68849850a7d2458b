//! The run's configuration: the command line, validated once and resolved into what each part
//! of probe needs (ripgrep's `HiArgs`).

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, time::Duration};

use super::{Cli, MAX_TARGETS};
use crate::{
    bpf::{Attach, TracerConfig},
    output::{filter::Filter, metrics::Cardinality},
    track::{Family, Thresholds},
};

/// Everything a run needs to know, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Whose connections are traced.
    pub scope: Scope,
    /// The processes named on the command line (with [`Scope::Processes`]).
    pub targets: Targets,
    /// The text output prints every transition (by default, not host-wide or for cgroups).
    pub transitions: bool,
    pub thresholds: Thresholds,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// What the outputs show.
    pub filter: Filter,
    pub view: View,
    /// Write an HTML incident report here when probe stops.
    pub report: Option<PathBuf>,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<SocketAddr>,
    /// The metrics endpoint's web configuration file (TLS, basic auth).
    pub metrics_web_config: Option<PathBuf>,
    /// How the per-process metrics are labelled and bounded.
    pub metrics_cardinality: Cardinality,
    pub kernel: Kernel,
    /// Debug logs, the kernel program's included.
    pub verbose: bool,
}

/// Whose connections are traced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The processes of [`Config::targets`] (and, with forks followed, their children).
    Processes,
    /// Every process on the host.
    Host,
    /// Every process in these cgroup v2 directories and below them, and in the containers whose
    /// id starts with one of `containers`.
    Cgroups {
        paths: Vec<PathBuf>,
        containers: Vec<String>,
    },
}

/// The processes named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    /// Running processes (or threads of them).
    pub pids: Vec<u32>,
    /// Running processes of this name, as the kernel keeps names (at most 15 bytes).
    pub comm: Option<String>,
    /// A command to start and trace.
    pub command: Option<Command>,
    /// Also trace what the traced processes fork.
    pub follow_forks: bool,
}

impl Targets {
    /// The `--comm` name as the kernel stores process names (NUL padded), when new processes
    /// of that name are to be traced as they exec.
    pub fn comm_filter(&self) -> Option<[u8; 16]> {
        let name = self.comm.as_ref().filter(|_| self.follow_forks)?;
        let mut filter = [0u8; 16];
        let bytes = &name.as_bytes()[..name.len().min(15)];
        filter[..bytes.len()].copy_from_slice(bytes);
        Some(filter)
    }
}

/// A command to start, held until probe is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The program and its arguments.
    pub argv: Vec<OsString>,
    /// Run it as root even under sudo.
    pub as_root: bool,
}

/// What stdout shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Lines for people.
    Text,
    /// NDJSON.
    Json,
    /// The full-screen live view.
    Live,
}

/// Sizes and switches of the kernel side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub ring_buffer_kib: u32,
    /// `None`: sized from the sockets found at attach ([`Kernel::max_sockets_for`]).
    pub max_sockets: Option<u32>,
    /// Capture the user stacks of connects.
    pub stacks: bool,
    /// Hook language runtimes to name the code that asked for a connection (with stacks).
    pub runtime_hooks: bool,
    pub attach: Attach,
}

/// Sockets the kernel side follows at once by default.
pub const DEFAULT_MAX_SOCKETS: u32 = 65_536;

/// Kernel memory one socket slot costs: an entry in OWNERS and in SEEDS (hash maps are
/// preallocated: key, value and the kernel's element header, rounded up).
const BYTES_PER_SOCKET_SLOT: u64 = 192;

impl Kernel {
    /// How many sockets to make room for: as asked, or by default enough for twice the sockets
    /// the targets hold at attach (the kernel's limit for a map is far above what fits here).
    pub fn max_sockets_for(&self, sockets: usize) -> u32 {
        self.max_sockets.unwrap_or_else(|| {
            let wanted = u32::try_from(sockets.saturating_mul(2)).unwrap_or(u32::MAX);
            wanted
                .clamp(DEFAULT_MAX_SOCKETS, 16_777_216)
                .next_power_of_two()
        })
    }

    /// What `max_sockets` slots cost in kernel memory, in MiB.
    pub fn socket_slots_mib(max_sockets: u32) -> u64 {
        u64::from(max_sockets) * BYTES_PER_SOCKET_SLOT / (1 << 20)
    }
}

impl Config {
    /// Validates what clap cannot, and resolves the defaults that depend on other flags.
    pub fn from_cli(cli: Cli) -> Result<Config, String> {
        let named = !cli.pids.is_empty() || !cli.command.is_empty() || cli.comm.is_some();
        let scope = if named {
            Scope::Processes
        } else if !cli.cgroups.is_empty() || !cli.containers.is_empty() {
            Scope::Cgroups {
                paths: cli.cgroups.clone(),
                containers: cli.containers.clone(),
            }
        } else {
            // `sudo probe`, with no target: the whole host, as with --all.
            Scope::Host
        };
        if scope != Scope::Processes && cli.follow_forks {
            return Err(
                "--follow-forks applies to named processes: tracing the host or a \
                 cgroup already includes every process started in it"
                    .into(),
            );
        }
        if cli.pids.len() >= MAX_TARGETS as usize {
            return Err(format!(
                "at most {} processes can be traced",
                MAX_TARGETS - 1
            ));
        }
        if cli.command.is_empty() {
            if cli.as_root {
                return Err("--as-root only applies to a command probe starts \
                     (probe --as-root -- COMMAND)"
                    .into());
            }
            if cli.no_follow_forks {
                return Err(
                    "--no-follow-forks only applies to a command probe starts: with \
                     --pid and --comm, forks are followed only with --follow-forks"
                        .into(),
                );
            }
        }
        // Forks are followed by default with a command (its children are part of it), not
        // otherwise; the last of --follow-forks / --no-follow-forks wins.
        let follow_forks = !cli.no_follow_forks && (cli.follow_forks || !cli.command.is_empty());
        let command = (!cli.command.is_empty()).then_some(Command {
            argv: cli.command,
            as_root: cli.as_root,
        });
        let view = if cli.live {
            View::Live
        } else if cli.json {
            View::Json
        } else {
            View::Text
        };
        Ok(Config {
            transitions: cli.transitions || scope == Scope::Processes,
            scope,
            targets: Targets {
                pids: cli.pids,
                comm: cli.comm,
                command,
                follow_forks,
            },
            thresholds: {
                let mut thresholds =
                    Thresholds::with_classic(cli.close_wait_after, cli.established_after);
                for &(kind, threshold) in &cli.stuck_after {
                    thresholds.set(kind, threshold);
                }
                thresholds
            },
            duration: cli.duration,
            filter: Filter {
                ports: cli.ports,
                remotes: cli.remotes,
                family: if cli.ipv4 {
                    Some(Family::Ipv4)
                } else if cli.ipv6 {
                    Some(Family::Ipv6)
                } else {
                    None
                },
                states: cli.states,
            },
            view,
            report: cli.report,
            metrics_addr: cli.metrics_addr,
            metrics_web_config: cli.metrics_web_config,
            metrics_cardinality: Cardinality {
                pids: cli.metrics_pids,
                top: usize::from(cli.metrics_top),
            },
            kernel: Kernel {
                ring_buffer_kib: cli.ring_buffer_kib,
                max_sockets: cli.max_sockets,
                stacks: !cli.no_stacks,
                runtime_hooks: !cli.no_runtime_hooks,
                attach: cli.attach,
            },
            verbose: cli.verbose,
        })
    }

    /// How the kernel side is to be set up, when the targets hold `sockets` sockets.
    pub fn tracer(&self, sockets: usize) -> TracerConfig {
        TracerConfig {
            ring_buffer_bytes: self.kernel.ring_buffer_kib * 1024,
            max_sockets: self.kernel.max_sockets_for(sockets),
            max_targets: MAX_TARGETS,
            kernel_logs: self.verbose,
            follow_forks: self.targets.follow_forks,
            comm_filter: self.targets.comm_filter(),
            stacks: self.kernel.stacks,
            runtime_hooks: self.kernel.runtime_hooks,
            attach: self.kernel.attach,
            trace_all: self.scope == Scope::Host,
            cgroups: Vec::new(),
        }
    }
}
