//! The benchmark's namespaces: a generator, a node and a sink, joined by two veth pairs, built fresh
//! for one run and deleted on drop. Nothing is routed to or from the root namespace.
//!
//! ```text
//! mpb-<pid>-<n>-gen [eth0] ── [pod0] mpb-<pid>-<n>-node [uplink] ── [eth0] mpb-<pid>-<n>-sink
//! ```
//! The node is configured for both ways it forwards: its kernel (addresses, IP forwarding, a VXLAN
//! device towards the sink's address, static neighbours), used when no XDP program is attached; and
//! the interfaces the AF_XDP forwarders attach to. The sink stands for the remote node: it owns the
//! tunnel's far end, 198.18.2.1, but its AF_XDP socket takes every frame before its kernel could
//! decapsulate, so each way is measured up to the node's wire.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};
use meshpath_dataplane::testbed;
use meshpath_xdp_redirect::netns::Netns;

/// Interface names, the same in every run (each namespace has its own).
pub const GEN_IF: &str = "eth0";
pub const POD_IF: &str = "pod0";
pub const UPLINK_IF: &str = "uplink";
pub const SINK_IF: &str = "eth0";

const SINK_MAC: &str = "02:00:00:02:00:01";
const REMOTE_INNER_MAC: &str = "02:00:00:02:ff:01";
const NAMESPACE_PREFIX: &str = "mpb-";

/// The three namespaces of one run.
pub struct Lab {
    pub gen: String,
    pub node: String,
    pub sink: String,
}

impl Lab {
    /// Removes namespaces left by runs whose process is gone, then builds this run's.
    pub fn build(forwarder_core: usize) -> anyhow::Result<Lab> {
        remove_orphans();
        // Numbered, so that labs of one process (tests running side by side) do not collide.
        static BUILT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{NAMESPACE_PREFIX}{}-{}",
            std::process::id(),
            BUILT.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            gen: format!("{id}-gen"),
            node: format!("{id}-node"),
            sink: format!("{id}-sink"),
        };
        for ns in [&lab.gen, &lab.node, &lab.sink] {
            ip(&["netns", "add", ns])?;
            lab.sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1")?;
            lab.sysctl(ns, "net.ipv6.conf.default.disable_ipv6=1")?;
        }
        lab.wire()?;
        lab.kernel_forwarding(forwarder_core)?;
        Ok(lab)
    }

    fn wire(&self) -> anyhow::Result<()> {
        let gateway = mac(testbed::GATEWAY_MAC);
        let pod = mac(testbed::pod_mac(0));
        let (gen, node, sink) = (&self.gen, &self.node, &self.sink);
        for (node_if, peer_ns, peer_if) in [(POD_IF, gen, GEN_IF), (UPLINK_IF, sink, SINK_IF)] {
            ip(&[
                "-n", node, "link", "add", node_if, "type", "veth", "peer", "name", peer_if,
                "netns", peer_ns,
            ])?;
        }
        ip(&["-n", node, "link", "set", POD_IF, "address", &gateway])?;
        ip(&[
            "-n",
            node,
            "link",
            "set",
            UPLINK_IF,
            "address",
            &mac(testbed::NODE_MAC),
        ])?;
        ip(&["-n", gen, "link", "set", GEN_IF, "address", &pod])?;
        ip(&["-n", sink, "link", "set", SINK_IF, "address", SINK_MAC])?;
        for (ns, dev) in [
            (node, POD_IF),
            (node, UPLINK_IF),
            (gen, GEN_IF),
            (sink, SINK_IF),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip(&["-n", sink, "addr", "add", "198.18.2.1/15", "dev", SINK_IF])
    }

    /// The kernel's own path: pod traffic to the service range is routed into a VXLAN device whose
    /// only remote is the sink; the node's packet processing is steered to `core` with RPS.
    fn kernel_forwarding(&self, core: usize) -> anyhow::Result<()> {
        let node = &self.node;
        let pod_ip = testbed::pod_ip(0).to_string();
        let node_ip = testbed::node_ip().to_string();
        self.sysctl(node, "net.ipv4.ip_forward=1")?;
        self.sysctl(node, "net.ipv4.conf.all.rp_filter=0")?;
        self.sysctl(node, "net.ipv4.conf.default.rp_filter=0")?;
        ip(&["-n", node, "addr", "add", "100.64.1.1/24", "dev", POD_IF])?;
        ip(&[
            "-n",
            node,
            "addr",
            "add",
            &format!("{node_ip}/15"),
            "dev",
            UPLINK_IF,
        ])?;
        ip(&[
            "-n",
            node,
            "neigh",
            "replace",
            &pod_ip,
            "lladdr",
            &mac(testbed::pod_mac(0)),
            "dev",
            POD_IF,
            "nud",
            "permanent",
        ])?;
        ip(&[
            "-n",
            node,
            "neigh",
            "replace",
            "198.18.2.1",
            "lladdr",
            SINK_MAC,
            "dev",
            UPLINK_IF,
            "nud",
            "permanent",
        ])?;
        ip(&[
            "-n",
            node,
            "link",
            "add",
            "vxlan0",
            "type",
            "vxlan",
            "id",
            "42",
            "dstport",
            "8472",
            "local",
            &node_ip,
            "dev",
            UPLINK_IF,
            "nolearning",
        ])?;
        ip(&["-n", node, "link", "set", "vxlan0", "up"])?;
        ip(&[
            "-n",
            node,
            "addr",
            "add",
            "100.127.255.1/32",
            "dev",
            "vxlan0",
        ])?;
        ip(&[
            "-n",
            node,
            "route",
            "add",
            "100.127.255.2/32",
            "dev",
            "vxlan0",
        ])?;
        ip(&[
            "-n",
            node,
            "neigh",
            "replace",
            "100.127.255.2",
            "lladdr",
            REMOTE_INNER_MAC,
            "dev",
            "vxlan0",
            "nud",
            "permanent",
        ])?;
        run(
            "ip",
            &[
                "netns",
                "exec",
                node,
                "bridge",
                "fdb",
                "add",
                REMOTE_INNER_MAC,
                "dev",
                "vxlan0",
                "dst",
                "198.18.2.1",
            ],
        )?;
        ip(&[
            "-n",
            node,
            "route",
            "add",
            "100.64.240.0/20",
            "via",
            "100.127.255.2",
            "dev",
            "vxlan0",
            "onlink",
        ])?;
        let mask = format!("{:x}", 1u64 << core.min(63));
        let rps = format!("/sys/class/net/{POD_IF}/queues/rx-0/rps_cpus");
        run(
            "ip",
            &[
                "netns",
                "exec",
                node,
                "sh",
                "-c",
                &format!("echo {mask} > {rps}"),
            ],
        )
    }

    fn sysctl(&self, ns: &str, setting: &str) -> anyhow::Result<()> {
        run("ip", &["netns", "exec", ns, "sysctl", "-qw", setting])
    }
}

impl Lab {
    /// On SIGINT, SIGTERM or SIGHUP, deletes this run's namespaces before the process exits (a
    /// signal skips `Drop`). Only one handler per process: a second lab in it keeps the first one's.
    pub fn delete_on_signal(&self) {
        let names = [self.gen.clone(), self.node.clone(), self.sink.clone()];
        let _ = ctrlc::set_handler(move || {
            delete(&names);
            std::process::exit(130);
        });
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        delete(&[&self.gen, &self.node, &self.sink]);
    }
}

fn delete<S: AsRef<str>>(namespaces: &[S]) {
    for ns in namespaces {
        let _ = Command::new("ip")
            .args(["netns", "del", ns.as_ref()])
            .status();
    }
}

/// Runs `f` with the calling thread in namespace `ns`, and brings the thread back whatever `f` did.
pub fn inside<T>(ns: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let home = Netns::current().context("own network namespace")?;
    Netns::named(ns)
        .and_then(|n| n.enter())
        .with_context(|| format!("entering {ns}"))?;
    let result = f();
    home.enter().context("back to own network namespace")?;
    result
}

/// Deletes `mpb-<pid>-<n>-*` namespaces whose process no longer exists (a run that was killed).
fn remove_orphans() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix(NAMESPACE_PREFIX)
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        let alive = std::path::Path::new("/proc").join(pid).exists();
        if pid.parse::<u32>().is_ok() && !alive {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn mac(bytes: [u8; 6]) -> String {
    bytes.map(|b| format!("{b:02x}")).join(":")
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_print_as_iproute2_reads_them() {
        assert_eq!(mac([0x02, 0xaa, 0, 0, 0, 1]), "02:aa:00:00:00:01");
    }
}
