//! Network namespaces of the tests' own.

use std::{
    net::IpAddr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use super::{TestResult, ensure};

/// A network namespace of the test's own, with loopback up; deleted on drop.
pub struct NetworkNamespace {
    pub name: String,
    number: u32,
    /// Has a veth pair to this namespace.
    linked: bool,
}

/// Numbers the namespaces of one test run (tests run in parallel).
static NEXT: AtomicU32 = AtomicU32::new(1);

/// Runs `ip ARGS`.
pub fn ip(args: &[&str]) -> TestResult {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip (install iproute2): {e}"))?;
    ensure(output.status.success(), || {
        format!(
            "ip {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

impl NetworkNamespace {
    pub fn create() -> Result<NetworkNamespace, String> {
        let number = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("probe-test-{}-{number}", std::process::id());
        ip(&["netns", "add", &name])?;
        let namespace = NetworkNamespace {
            name,
            number,
            linked: false,
        };
        ip(&["-n", &namespace.name, "link", "set", "lo", "up"])?;
        Ok(namespace)
    }

    /// A namespace joined to this one by a veth pair: this side is [`Self::host_address`], the
    /// namespace's side [`Self::address`], on a /24 of their own.
    pub fn linked() -> Result<NetworkNamespace, String> {
        let mut namespace = NetworkNamespace::create()?;
        let (outside, inside) = namespace.link_names();
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ])?;
        namespace.linked = true;
        ip(&["link", "set", &inside, "netns", &namespace.name])?;
        let host = format!("{}/24", namespace.host_address());
        let far = format!("{}/24", namespace.address());
        ip(&["addr", "add", &host, "dev", &outside])?;
        ip(&["link", "set", &outside, "up"])?;
        ip(&["-n", &namespace.name, "addr", "add", &far, "dev", &inside])?;
        ip(&["-n", &namespace.name, "link", "set", &inside, "up"])?;
        Ok(namespace)
    }

    /// The name of this side's end of the link.
    pub fn outside_link(&self) -> String {
        self.link_names().0
    }

    /// The veth ends: outside (this namespace) and inside.
    fn link_names(&self) -> (String, String) {
        let tag = format!("{}{}", std::process::id() % 10000, self.number);
        (format!("pto{tag}"), format!("pti{tag}"))
    }

    /// This side's address on the link.
    pub fn host_address(&self) -> IpAddr {
        IpAddr::from([10, 201, (self.number % 250) as u8, 1])
    }

    /// The namespace's address on the link.
    pub fn address(&self) -> IpAddr {
        IpAddr::from([10, 201, (self.number % 250) as u8, 2])
    }

    /// Points `address`, on the link, at a MAC address nobody has (a permanent neighbour
    /// entry): what is sent there leaves and nothing comes back.
    pub fn point_nowhere(&self, address: IpAddr) -> TestResult {
        ip(&[
            "neigh",
            "replace",
            &address.to_string(),
            "lladdr",
            "02:00:00:00:00:03",
            "dev",
            &self.outside_link(),
            "nud",
            "permanent",
        ])
    }

    /// An address on the link that nobody has, pointed nowhere: a black hole.
    pub fn black_hole(&self) -> Result<IpAddr, String> {
        let hole = IpAddr::from([10, 201, (self.number % 250) as u8, 3]);
        self.point_nowhere(hole)?;
        Ok(hole)
    }

    /// Narrows the namespace's ephemeral port range (`ip_local_port_range`) to `low..=high`.
    pub fn set_port_range(&self, low: u16, high: u16) -> TestResult {
        ip(&[
            "netns",
            "exec",
            &self.name,
            "sysctl",
            "-qw",
            &format!("net.ipv4.ip_local_port_range={low} {high}"),
        ])
    }

    /// Takes the namespace's end of the link down: nothing it sent or would send arrives any
    /// more.
    pub fn cut(&self) -> TestResult {
        let (_, inside) = self.link_names();
        ip(&["-n", &self.name, "link", "set", &inside, "down"])
    }

    /// `ss` inside the namespace: the lines of `pid` in `state`, once there are `count` (within
    /// 5 seconds).
    pub fn ss(&self, pid: u32, state: &str, count: usize) -> Result<Vec<String>, String> {
        self.ss_within(pid, state, count, Duration::from_secs(5))
    }

    /// The same, waiting at most `timeout`.
    pub fn ss_within(
        &self,
        pid: u32,
        state: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<String>, String> {
        let needle = format!("pid={pid},");
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            let output = Command::new("ip")
                .args(["netns", "exec", &self.name, "ss", "-tanpH", "state", state])
                .output()
                .map_err(|e| e.to_string())?;
            let lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter(|l| l.contains(&needle))
                .map(str::to_string)
                .collect();
            if lines.len() == count {
                return Ok(lines);
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "ss in {} never showed {count} {state} sockets",
            self.name
        ))
    }
}

impl Drop for NetworkNamespace {
    fn drop(&mut self) {
        if self.linked {
            let _ = ip(&["link", "del", &self.link_names().0]);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
