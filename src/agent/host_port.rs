//! The host port: the node's own path into the mesh and out of it, like Cilium's cilium_host /
//! cilium_net. A veth pair in the node's network namespace: the dataplane serves one end
//! (`host-port.interface`) through AF_XDP like a pod's veth; the node's stack owns the other
//! (`host-port.kernel-interface`), and its routes to every pod CIDR of the mesh point there.
//!
//! Why a veth pair and not a TAP device: AF_XDP serves it like every other port (one UMEM, one XDP
//! program, batches; no read/write syscall per frame), and a veth's far end is an ordinary interface
//! the kernel routes to. The kernel end does no ARP or neighbour discovery (its routes are on-link and
//! every frame it sends is ours, addressed to its own MAC, which the dataplane does not check), accepts
//! packets from the node's own address (masqueraded pod traffic the kernel then forwards to the world),
//! uses loose reverse-path filtering for the same reason (with a link-local address of its own, without
//! which the kernel's reverse-path check refuses every source), and the node forwards IP (the world
//! path).
//! The masquerade port range is reserved in the kernel so that no local socket takes one of its ports.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;

use anyhow::{bail, Context};
use meshpath_control::state::Cidr;

use super::config::AgentConfig;

/// The kernel end's own address (IPv4 link-local): the node never uses it as a source (its routes
/// into the host port name the node's address), it only makes reverse-path filtering work.
const KERNEL_END_ADDRESS: &str = "169.254.42.1/32";

/// Creates the pair (if missing) and sets the kernel end up as described above. Idempotent. The pair
/// has a queue per worker (worker `i` serves queue `i` of every port): one left by an agent with fewer
/// workers is made again.
pub fn ensure(config: &AgentConfig) -> anyhow::Result<()> {
    let host = &config.host_port;
    let (ours, kernel) = (host.interface.as_str(), host.kernel_interface.as_str());
    let workers = config.dataplane.cores.len();
    if link_exists(ours) && (rx_queues(ours)? as usize) < workers {
        tracing::info!(
            interface = ours,
            workers,
            "host port made again with a queue per worker"
        );
        ip(&["link", "del", ours])?;
    }
    if !link_exists(ours) {
        let queues = workers.to_string();
        let (tx, rx) = (["numtxqueues", &queues], ["numrxqueues", &queues]);
        // Both ends: a peer left to the kernel's default takes a queue per possible CPU, and what it
        // sent on a queue our end does not have would bypass the XDP program.
        let mut add = vec!["link", "add", ours];
        add.extend(tx.iter().chain(&rx));
        add.extend(["type", "veth", "peer", "name", kernel]);
        add.extend(tx.iter().chain(&rx));
        ip(&add).with_context(|| format!("creating the host port {ours}/{kernel}"))?;
    } else if !link_exists(kernel) {
        bail!("host port: `{ours}` exists but its peer `{kernel}` does not; delete `{ours}` or fix host-port.kernel-interface");
    }
    let mtu = config.dataplane.mtu.to_string();
    ip(&["link", "set", kernel, "addrgenmode", "none"])?;
    ip(&["link", "set", kernel, "arp", "off", "mtu", &mtu, "up"])?;
    // Reverse-path filtering refuses any source on an interface without an address, even a loose
    // one: a link-local address of its own makes the kernel end a routed interface like any other.
    ip(&[
        "addr",
        "replace",
        KERNEL_END_ADDRESS,
        "dev",
        kernel,
        "scope",
        "link",
    ])?;
    ip(&["link", "set", ours, "mtu", &mtu, "up"])?;
    sysctl(&format!("net/ipv4/conf/{kernel}/accept_local"), "1")?;
    sysctl(&format!("net/ipv4/conf/{kernel}/rp_filter"), "2")?;
    sysctl("net/ipv4/ip_forward", "1")?;
    if config.node.ipv6.is_some() {
        sysctl("net/ipv6/conf/all/forwarding", "1")?;
    }
    if config.masquerade.enabled {
        let (first, last) = config.masquerade.port_range().map_err(anyhow::Error::msg)?;
        reserve_ports(first, last)?;
    }
    Ok(())
}

fn rx_queues(name: &str) -> anyhow::Result<u32> {
    meshpath_xdp_redirect::netns::rx_queues(name)
        .with_context(|| format!("receive queues of `{name}`"))
}

/// The MAC address of an interface of this namespace.
pub fn mac(name: &str) -> anyhow::Result<[u8; 6]> {
    super::wiring::interface_mac(name)
}

/// Keeps the kernel's routes to the mesh's pod CIDRs pointing into the host port: adds what is new,
/// removes what is gone (only routes it added itself).
pub struct Routes {
    kernel_interface: String,
    src: Option<IpAddr>,
    installed: BTreeSet<String>,
}

impl Routes {
    pub fn new(config: &AgentConfig) -> Routes {
        Routes {
            kernel_interface: config.host_port.kernel_interface.clone(),
            src: config.node.ipv4.map(IpAddr::V4),
            installed: BTreeSet::new(),
        }
    }

    pub fn sync(&mut self, cidrs: &[Cidr]) -> anyhow::Result<()> {
        let wanted: BTreeSet<String> = cidrs
            .iter()
            .map(|c| format!("{}/{}", c.addr, c.prefix_len))
            .collect();
        for cidr in wanted.difference(&self.installed) {
            let mut args = vec!["route", "replace", cidr, "dev", &self.kernel_interface];
            let src = self.src.map(|a| a.to_string());
            let v4 = !cidr.contains(':');
            if let (true, Some(src)) = (v4, src.as_deref()) {
                args.extend(["src", src]);
            }
            ip(&args).with_context(|| format!("route to {cidr} into the host port"))?;
        }
        for cidr in self.installed.difference(&wanted) {
            // Gone already (the interface was recreated) is fine.
            let _ = ip(&["route", "del", cidr, "dev", &self.kernel_interface]);
        }
        self.installed = wanted;
        Ok(())
    }
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip(8)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes a sysctl of this network namespace (/proc/sys/net is per namespace).
fn sysctl(key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).with_context(|| format!("setting {path} to {value}"))
}

/// Adds `first-last` to ip_local_reserved_ports unless it is there already.
fn reserve_ports(first: u16, last: u16) -> anyhow::Result<()> {
    let key = "net/ipv4/ip_local_reserved_ports";
    let current = std::fs::read_to_string(format!("/proc/sys/{key}")).unwrap_or_default();
    let range = format!("{first}-{last}");
    let current = current.trim();
    if current.split(',').any(|r| r.trim() == range) {
        return Ok(());
    }
    let value = if current.is_empty() {
        range
    } else {
        format!("{current},{range}")
    };
    sysctl(key, &value)
}
