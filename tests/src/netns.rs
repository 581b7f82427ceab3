//! Hosts of their own on one machine: Linux network namespaces joined by a
//! bridge, for tests where several daemons must not share a network stack
//! (the replicas of a shared-state deployment). The test process stays in the
//! machine's own namespace, which holds the bridge's address: servers there
//! (Redis, the cloud double) listen on it, and the tests reach each host's
//! address through the bridge.
//!
//! Making namespaces needs root and iproute2's `ip`. Where they cannot be
//! made, [`Network::create`] says why and the tests fall back to loopback
//! ports on the machine's own stack.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A bridge with the machine at `10.S.N.1/24`, and the hosts made on it.
pub struct Network {
    bridge: String,
    /// The first three octets of the subnet, e.g. `10.123.4`.
    subnet: String,
    /// Names start with this (`sy<pid>-<n>`), so that every interface and
    /// namespace of the network is told apart from other tests' and runs'.
    tag: String,
    hosts: AtomicUsize,
}

/// One network namespace with an address on the bridge; deleted on drop.
pub struct Host {
    pub name: String,
    /// Its address on the bridge.
    pub ip: String,
    /// The machine's end of its link.
    link: String,
}

/// Runs `ip args`: what it printed, or its error output when it fails.
fn ip(args: &[&str]) -> Result<String, String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("ip: {err}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A `10.S.N` /24 that no address or route of this machine is in, starting
/// from one derived from the process and the network's number.
fn free_subnet(pid: u32, n: usize) -> Result<String, String> {
    let taken = ip(&["-4", "-o", "addr", "show"])? + &ip(&["-4", "route", "show", "table", "all"])?;
    (0..156)
        .map(|step| format!("10.{}.{n}", 100 + (pid as usize + step) % 156))
        .find(|subnet| !taken.contains(&format!("{subnet}.")) && !taken.contains(&format!("{subnet}/")))
        .ok_or_else(|| format!("every 10.100-255.{n}.0/24 is in use here"))
}

impl Network {
    /// A new bridge, or why none could be made (then the caller uses
    /// loopback).
    pub fn create() -> Result<Network, String> {
        static NETWORKS: AtomicUsize = AtomicUsize::new(0);
        let n = NETWORKS.fetch_add(1, Ordering::SeqCst) % 100;
        let pid = std::process::id();
        // Interface names have at most 15 bytes: `sy`, 5 digits of the pid,
        // `-`, the network's number (< 100), then `b` for the bridge, or `h`,
        // the host's number (< 200) and `a`/`b` for its link's two ends.
        let tag = format!("sy{}-{n}", pid % 100_000);
        // Namespaces, not only links, must be possible here (CAP_SYS_ADMIN,
        // and `ip netns exec` remounting /sys).
        let probe = format!("{tag}p");
        ip(&["netns", "add", &probe])?;
        let usable = ip(&["netns", "exec", &probe, "true"]);
        let _ = ip(&["netns", "del", &probe]);
        usable?;
        let subnet = free_subnet(pid, n)?;
        let bridge = format!("{tag}b");
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        let network = Network {
            bridge,
            subnet,
            tag,
            hosts: AtomicUsize::new(0),
        };
        ip(&[
            "addr",
            "add",
            &format!("{}/24", network.gateway()),
            "dev",
            &network.bridge,
        ])?;
        ip(&["link", "set", &network.bridge, "up"])?;
        Ok(network)
    }

    /// The machine's own address on the bridge, where the hosts reach
    /// servers of the test process.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// A new host: a namespace linked to the bridge, with loopback up.
    pub fn host(&self) -> Host {
        let n = self.hosts.fetch_add(1, Ordering::SeqCst);
        assert!(n < 200, "a network of at most 200 hosts");
        let name = format!("{}h{n}", self.tag);
        let host = Host {
            ip: format!("{}.{}", self.subnet, n + 2),
            link: format!("{name}a"),
            name,
        };
        let inside = format!("{}b", host.name);
        let made = ip(&["netns", "add", &host.name])
            .and_then(|_| ip(&["link", "add", &host.link, "type", "veth", "peer", "name", &inside]))
            .and_then(|_| ip(&["link", "set", &inside, "netns", &host.name]))
            .and_then(|_| ip(&["link", "set", &host.link, "master", &self.bridge, "up"]))
            .and_then(|_| {
                ip(&[
                    "-n",
                    &host.name,
                    "addr",
                    "add",
                    &format!("{}/24", host.ip),
                    "dev",
                    &inside,
                ])
            })
            .and_then(|_| ip(&["-n", &host.name, "link", "set", &inside, "up"]))
            .and_then(|_| ip(&["-n", &host.name, "link", "set", "lo", "up"]));
        if let Err(err) = made {
            panic!("host {} on {}: {err}", host.name, self.bridge);
        }
        host
    }
}

impl Host {
    /// `command` to run inside this host's namespace (`ip netns exec`
    /// replaces itself with the program, so the child's pid is the
    /// program's).
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Deleting the link removes both ends even if a process still holds
        // the namespace.
        let _ = ip(&["link", "del", &self.link]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
