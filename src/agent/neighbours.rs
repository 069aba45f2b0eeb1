//! The uplink's neighbours: which nodes share its L2 segment, and their MACs, which native and hybrid
//! routing (and tunnels to neighbours) address frames to — the dataplane sends through AF_XDP, past
//! the kernel's routing and neighbour tables, so it needs the MACs handed to it (Cilium's
//! `auto-direct-node-routes`, without a kernel route on the path).
//!
//! The segment is `node.segment-cidrs`, or else the prefixes of the uplink's own addresses. The kernel
//! does the resolving: each neighbour node gets a *managed* neighbour entry (`ip neigh replace ADDR dev
//! UPLINK use managed`, Linux 5.16+), which the kernel keeps resolved without traffic of its own,
//! re-probing as the entry ages, retrying a failed one and noticing a new MAC. On an older kernel the
//! entry is a plain `use` one, which each sync refreshes while it is not reachable. Each sync reads the
//! table back (`ip -j neigh show dev UPLINK`); what it resolved goes to the snapshot builder as
//! `Change::NodeMacs`. The entries of nodes that left are deleted, and so are managed entries an
//! earlier agent left on the segment for nodes gone since. Until a neighbour is resolved,
//! native routing refuses it (`node_mac_unresolved`) and hybrid tunnels to it via the router.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use meshpath_control::snapshot::NodeMacs;
use meshpath_dataplane::ipcache::IpPrefix;
use serde::Deserialize;

use super::config::AgentConfig;

/// The uplink's neighbour nodes, kept resolved.
pub struct Neighbours {
    uplink: String,
    segments: Vec<IpPrefix>,
    /// Whether the kernel takes managed entries; cleared by the first refusal.
    managed: bool,
    /// The entries this agent installed.
    installed: BTreeSet<IpAddr>,
}

/// One entry of `ip -j neigh show`.
#[derive(Debug, Deserialize)]
struct NeighbourEntry {
    dst: IpAddr,
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
    /// ip(8) prints a flag as a key with a null value: `"managed": null`.
    #[serde(default, deserialize_with = "flag")]
    managed: bool,
}

fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// What a sync found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub macs: NodeMacs,
    /// Neighbours without a MAC yet.
    pub pending: usize,
}

impl Neighbours {
    pub fn new(uplink: &str, segments: Vec<IpPrefix>) -> Neighbours {
        Neighbours {
            uplink: uplink.to_owned(),
            segments,
            managed: true,
            installed: BTreeSet::new(),
        }
    }

    pub fn on_segment(&self, addr: IpAddr) -> bool {
        self.segments.iter().any(|s| s.contains(addr.into()))
    }

    /// Resolves the neighbours among `nodes` (other nodes' addresses): installs the entries of new
    /// ones, deletes those of nodes gone, and reads back the MACs the kernel has.
    pub fn sync(&mut self, nodes: &[IpAddr]) -> anyhow::Result<Resolved> {
        let wanted: BTreeSet<IpAddr> = nodes
            .iter()
            .copied()
            .filter(|a| self.on_segment(*a))
            .collect();
        let mut table = self.read()?;
        // Ours that left, and the managed entries an earlier agent left for nodes gone since.
        let leftover = table
            .values()
            .filter(|e| e.managed && self.on_segment(e.dst))
            .map(|e| e.dst);
        let gone: BTreeSet<IpAddr> = self
            .installed
            .iter()
            .copied()
            .chain(leftover)
            .filter(|a| !wanted.contains(a))
            .collect();
        if !gone.is_empty() {
            let lines = gone
                .iter()
                .map(|a| format!("neigh del {a} dev {}", self.uplink));
            // An entry someone else removed already is no failure.
            let _ = ip_batch(lines.collect());
            self.installed.retain(|a| wanted.contains(a));
            table.retain(|a, _| !gone.contains(a));
        }
        let refresh: Vec<IpAddr> = wanted
            .iter()
            .copied()
            .filter(|a| needs_use(table.get(a), self.managed && self.installed.contains(a)))
            .collect();
        if !refresh.is_empty() {
            self.install(&refresh)?;
        }
        let macs: NodeMacs = wanted
            .iter()
            .filter_map(|a| Some(((*a).into(), usable_mac(table.get(a)?)?)))
            .collect();
        Ok(Resolved {
            pending: wanted.len() - macs.len(),
            macs,
        })
    }

    fn install(&mut self, addrs: &[IpAddr]) -> anyhow::Result<()> {
        let lines = |flags: &str| -> Vec<String> {
            addrs
                .iter()
                .map(|a| format!("neigh replace {a} dev {} use{flags}", self.uplink))
                .collect()
        };
        if self.managed {
            match ip_batch(lines(" managed")) {
                Ok(()) => {
                    self.installed.extend(addrs);
                    return Ok(());
                }
                Err(error) => {
                    tracing::info!(%error, "no managed neighbour entries here: refreshing them each sync instead");
                    self.managed = false;
                }
            }
        }
        ip_batch(lines("")).context("neighbour entries for the nodes on the uplink's segment")?;
        self.installed.extend(addrs);
        Ok(())
    }

    fn read(&self) -> anyhow::Result<BTreeMap<IpAddr, NeighbourEntry>> {
        let out = Command::new("ip")
            .args(["-j", "neigh", "show", "dev", &self.uplink])
            .output()
            .context("running ip(8)")?;
        if !out.status.success() {
            bail!(
                "ip neigh show dev {}: {}",
                self.uplink,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        parse_table(&out.stdout)
    }
}

fn parse_table(json: &[u8]) -> anyhow::Result<BTreeMap<IpAddr, NeighbourEntry>> {
    // ip(8) prints nothing at all for an empty table.
    if json.iter().all(u8::is_ascii_whitespace) {
        return Ok(BTreeMap::new());
    }
    let entries: Vec<NeighbourEntry> =
        serde_json::from_slice(json).context("ip -j neigh show: unexpected output")?;
    Ok(entries.into_iter().map(|e| (e.dst, e)).collect())
}

/// The MAC of an entry whose state vouches for it.
fn usable_mac(entry: &NeighbourEntry) -> Option<[u8; 6]> {
    let unusable = ["FAILED", "INCOMPLETE", "NONE"];
    if entry.state.iter().any(|s| unusable.contains(&s.as_str())) {
        return None;
    }
    let mac: super::config::Mac = entry.lladdr.as_deref()?.parse().ok()?;
    Some(mac.0)
}

/// Whether an entry must be (re)installed: it is missing, or — when the kernel does not keep it
/// resolved itself (`managed`) — it is not reachable now.
fn needs_use(entry: Option<&NeighbourEntry>, managed: bool) -> bool {
    let Some(entry) = entry else { return true };
    let settled = ["REACHABLE", "PERMANENT", "NOARP"];
    !managed && !entry.state.iter().any(|s| settled.contains(&s.as_str()))
}

/// Runs `ip -force -batch -` with `lines`: every line is tried; an error if any failed.
fn ip_batch(lines: Vec<String>) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip(8)")?;
    let mut stdin = child.stdin.take().context("ip(8)'s stdin")?;
    stdin.write_all((lines.join("\n") + "\n").as_bytes())?;
    drop(stdin);
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ip -batch: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The prefixes of the uplink's L2 segment: `node.segment-cidrs`, or those of the uplink's addresses
/// (global scope) as the kernel has them.
pub fn segments(config: &AgentConfig) -> anyhow::Result<Vec<IpPrefix>> {
    if let Some(configured) = config.node.segment_prefixes().map_err(anyhow::Error::msg)? {
        return Ok(configured);
    }
    let uplink = &config.node.uplink;
    let out = Command::new("ip")
        .args(["-j", "addr", "show", "dev", uplink])
        .output()
        .context("running ip(8)")?;
    if !out.status.success() {
        bail!(
            "the addresses of `{uplink}`: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let prefixes =
        uplink_prefixes(&out.stdout).with_context(|| format!("the addresses of `{uplink}`"))?;
    if prefixes.is_empty() {
        tracing::warn!(
            uplink,
            "the uplink has no global address and node.segment-cidrs is not set: every other node is taken to be behind the router"
        );
    }
    Ok(prefixes)
}

#[derive(Deserialize)]
struct Link {
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    local: IpAddr,
    prefixlen: u8,
    #[serde(default)]
    scope: String,
}

fn uplink_prefixes(json: &[u8]) -> anyhow::Result<Vec<IpPrefix>> {
    let links: Vec<Link> = serde_json::from_slice(json)?;
    let mut prefixes = Vec::new();
    for info in links.iter().flat_map(|l| &l.addr_info) {
        if info.scope != "global" {
            continue;
        }
        let prefix = network(info.local, info.prefixlen)?;
        if !prefixes.contains(&prefix) {
            prefixes.push(prefix);
        }
    }
    Ok(prefixes)
}

/// The network `addr/len` lies in.
fn network(addr: IpAddr, len: u8) -> anyhow::Result<IpPrefix> {
    let network = match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4) & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(bits.into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(bits.into())
        }
    };
    IpPrefix::new(network.into(), len).map_err(anyhow::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segment_is_the_uplinks_global_prefixes() {
        let json = br#"[{"ifname":"uplink","addr_info":[
            {"family":"inet","local":"198.18.1.1","prefixlen":24,"scope":"global"},
            {"family":"inet6","local":"fd00:18::1","prefixlen":64,"scope":"global"},
            {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]}]"#;
        let prefixes = uplink_prefixes(json).unwrap();
        let expected: Vec<IpPrefix> = ["198.18.1.0/24", "fd00:18::/64"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(prefixes, expected);
        assert_eq!(
            network("10.1.2.3".parse().unwrap(), 0).unwrap(),
            "0.0.0.0/0".parse().unwrap()
        );
    }

    #[test]
    fn only_entries_that_vouch_for_their_mac_are_used() {
        let json = br#"[
            {"dst":"198.18.1.2","lladdr":"02:00:00:01:00:02","state":["REACHABLE"]},
            {"dst":"198.18.1.3","lladdr":"02:00:00:01:00:03","state":["STALE"]},
            {"dst":"198.18.1.4","state":["INCOMPLETE"]},
            {"dst":"198.18.1.5","lladdr":"02:00:00:01:00:05","state":["FAILED"]},
            {"dst":"198.18.1.6","managed":null,"state":["PROBE"],"lladdr":"02:00:00:01:00:06"}]"#;
        let table = parse_table(json).unwrap();
        let mac = |last: u8| {
            table
                .get(&format!("198.18.1.{last}").parse().unwrap())
                .and_then(usable_mac)
        };
        assert_eq!(mac(2), Some([2, 0, 0, 1, 0, 2]));
        assert_eq!(mac(3), Some([2, 0, 0, 1, 0, 3]), "stale is still its MAC");
        assert_eq!(mac(4), None);
        assert_eq!(mac(5), None);
        assert_eq!(mac(6), Some([2, 0, 0, 1, 0, 6]));
        let managed: Vec<bool> = table.values().map(|e| e.managed).collect();
        assert_eq!(managed, [false, false, false, false, true]);
        assert!(parse_table(b"").unwrap().is_empty());
        assert!(parse_table(b"not json").is_err());

        let entry = |ip: &str| table.get(&ip.parse().unwrap());
        assert!(needs_use(None, true), "a missing entry is installed again");
        assert!(
            !needs_use(entry("198.18.1.3"), true),
            "the kernel keeps managed entries"
        );
        assert!(needs_use(entry("198.18.1.3"), false));
        assert!(!needs_use(entry("198.18.1.2"), false));
    }

    /// Two namespaces joined by a veth pair, removed on drop.
    struct Segment {
        ours: String,
        theirs: String,
    }

    impl Segment {
        fn new() -> Segment {
            let tag = format!("nb{}", std::process::id() % 100_000);
            let segment = Segment {
                ours: format!("{tag}-a"),
                theirs: format!("{tag}-b"),
            };
            for ns in [&segment.ours, &segment.theirs] {
                ip(&["netns", "add", ns]);
            }
            ip(
                &["-n", &segment.ours, "link", "add", "uplink", "type", "veth"]
                    .into_iter()
                    .chain(["peer", "name", "eth0", "netns", &segment.theirs])
                    .collect::<Vec<_>>(),
            );
            for (ns, dev, addr) in [
                (&segment.ours, "uplink", "198.18.77.1/24"),
                (&segment.theirs, "eth0", "198.18.77.2/24"),
            ] {
                ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
                ip(&["-n", ns, "link", "set", dev, "up"]);
            }
            segment
        }

        fn their_mac(&self) -> [u8; 6] {
            let out = Command::new("ip")
                .args(["-n", &self.theirs, "-j", "link", "show", "dev", "eth0"])
                .output()
                .unwrap();
            let links: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
            let mac: crate::agent::config::Mac =
                links[0]["address"].as_str().unwrap().parse().unwrap();
            mac.0
        }
    }

    impl Drop for Segment {
        fn drop(&mut self) {
            for ns in [&self.ours, &self.theirs] {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }

    fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }

    #[test]
    fn the_kernel_resolves_the_neighbours_and_forgets_those_that_leave() {
        if !meshpath_testkit::needs_root(
            "the_kernel_resolves_the_neighbours_and_forgets_those_that_leave",
        ) {
            return;
        }
        let segment = Segment::new();
        let their_mac = segment.their_mac();
        let netns = meshpath_xdp_redirect::netns::Netns::named(&segment.ours).unwrap();
        netns
            .run(|| {
                let segments: Vec<IpPrefix> = vec!["198.18.77.0/24".parse().unwrap()];
                let mut neighbours = Neighbours::new("uplink", segments.clone());
                let peer: IpAddr = "198.18.77.2".parse().unwrap();
                let elsewhere: IpAddr = "198.18.78.2".parse().unwrap();
                let resolved = meshpath_testkit::until(
                    "the neighbour's MAC",
                    std::time::Duration::from_secs(10),
                    || {
                        let resolved = neighbours.sync(&[peer, elsewhere]).unwrap();
                        meshpath_testkit::wait::check(resolved.pending == 0, resolved)
                    },
                );
                assert!(resolved.is_ok(), "{resolved:?}");
                let macs = neighbours.sync(&[peer, elsewhere]).unwrap().macs;
                assert_eq!(
                    macs,
                    NodeMacs::from([(peer.into(), their_mac)]),
                    "a node off the segment is not looked up"
                );
                assert_eq!(neighbours.sync(&[]).unwrap(), Resolved::default());
                let table = neighbours.read().unwrap();
                assert!(
                    !table.contains_key(&peer),
                    "the entry of a node gone: {table:?}"
                );

                // A managed entry an earlier agent left goes when the next one finds no such node.
                neighbours.sync(&[peer]).unwrap();
                assert!(neighbours.read().unwrap()[&peer].managed);
                let mut restarted = Neighbours::new("uplink", segments.clone());
                assert_eq!(restarted.sync(&[]).unwrap(), Resolved::default());
                let table = restarted.read().unwrap();
                assert!(!table.contains_key(&peer), "left over: {table:?}");
            })
            .unwrap();
    }
}
