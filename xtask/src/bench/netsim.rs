//! Hosts on one machine for the scaling measure: network namespaces on a bridge, with a host's
//! link limited to a fixed bandwidth, made with `ip` and `tc` (iproute2) and removed when the
//! guard drops, also on error. (Delays are made by in-process proxies instead, see
//! `pipelining.rs`: `tc netem` needs a kernel module this kind of machine lacks.)
//!
//! Every host is a namespace with one interface, `eth0`, on `10.77.0.0/24`, joined to a bridge
//! that lives in a namespace of its own (the hub), so nothing is added to the machine's own
//! network. A host's link is shaped in both directions with `tbf`: on its `eth0` for what it
//! sends, and on the hub's end of its cable for what it receives.

use std::process::Command;

use anyhow::{Context, bail};

/// One simulated host: its namespace and address.
#[derive(Debug, Clone)]
pub struct Host {
    pub netns: String,
    pub ip: String,
}

/// The namespaces of a simulated network; removed on drop.
pub struct Network {
    hub: String,
    hosts: Vec<Host>,
}

impl Network {
    /// Why this machine cannot make namespaces (not root, no `ip`, no `tc`), if it cannot.
    pub fn unavailable() -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("making network namespaces needs root".to_owned());
        }
        for tool in ["ip", "tc"] {
            if Command::new(tool).arg("-V").output().is_err() {
                return Some(format!("`{tool}` (Debian's iproute2) is not installed"));
            }
        }
        None
    }

    /// Makes `names.len()` hosts on one bridge, in that order `10.77.0.11`, `.12`, ...
    pub fn new(names: &[&str]) -> anyhow::Result<Network> {
        let tag = std::process::id() % 100_000;
        let hub = format!("kb{tag}-hub");
        ip(&["netns", "add", &hub])?;
        let mut network = Network { hub: hub.clone(), hosts: Vec::new() };
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let netns = format!("kb{tag}-{name}");
            ip(&["netns", "add", &netns])?;
            let host = Host { netns: netns.clone(), ip: format!("10.77.0.{}", 11 + i) };
            network.hosts.push(host.clone());
            let port = format!("p{i}");
            ip(&["-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &netns, "addr", "add", &format!("{}/24", host.ip), "dev", "eth0"])?;
            ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    /// The host made as the `i`-th name.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Limits the `i`-th host's link to `mbit` megabits per second each way.
    pub fn limit(&self, i: usize, mbit: u32) -> anyhow::Result<()> {
        let rate = format!("{mbit}mbit");
        let shape = ["root", "tbf", "rate", &rate, "burst", "256kb", "latency", "100ms"];
        tc(&self.hosts[i].netns, "eth0", &shape)?;
        tc(&self.hub, &format!("p{i}"), &shape)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for netns in self.hosts.iter().map(|h| h.netns.as_str()).chain([self.hub.as_str()]) {
            if let Err(error) = ip(&["netns", "del", netns]) {
                eprintln!("cannot remove the network namespace {netns}: {error:#}");
            }
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args))
}

fn tc(netns: &str, dev: &str, shape: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(["netns", "exec", netns, "tc", "qdisc", "add", "dev", dev]).args(shape))
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}
