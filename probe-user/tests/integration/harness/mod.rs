//! What the integration tests share: the real `probe` ([`Probe`]), helper processes playing a
//! [`Role`] ([`Helper`]), loopback servers, network namespaces, and `ss` as the oracle.

mod cgroups;
mod helper;
mod metrics;
mod netns;
pub mod prerequisites;
mod probe;
mod prometheus;
pub mod registry;
pub mod roles;
pub mod runtimes;
mod servers;
mod ss;
mod temp;

use std::time::Duration;

pub use cgroups::TestCgroup;
pub use helper::{Helper, this_binary};
pub use metrics::{free_port, sample, scrape};
pub use netns::{NetworkNamespace, ip};
pub use probe::{Probe, of_type, render, stuck, stuck_kind, transitions};
pub use prometheus::{Prometheus, deploy_dir, rules_with_short_for};
pub use roles::Role;
pub use servers::{Idle, ServerMode, connect_many, server, traced_client};
pub use ss::{bpf_map_types, ss_sockets_of, ss_state, wait_for_ss};
pub use temp::TempPath;

/// How long a test waits for what it expects.
pub const WAIT: Duration = Duration::from_secs(15);

pub type TestResult = Result<(), String>;

/// Fails the test with `message` unless `condition` holds.
pub fn ensure(condition: bool, message: impl FnOnce() -> String) -> TestResult {
    if condition { Ok(()) } else { Err(message()) }
}
