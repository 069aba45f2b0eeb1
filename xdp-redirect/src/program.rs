//! The loaded XDP program of one interface and its maps: the XSKMAP the AF_XDP layer registers its
//! sockets in, the node config (role, addresses, masquerade ports), the local pod prefixes, the known
//! tunnel peers and the verdict counters.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use libbpf_rs::{MapCore, MapFlags, MapHandle, ObjectBuilder};

use crate::attach::{self, Attachment};
use crate::config::{node_config, LpmKey, MasqueradePorts, NodeAddrs, PodPrefix, Role};
use crate::{Error, Result};

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/redirect.bpf.o"));

/// Matches `MAX_QUEUES` in bpf/redirect.bpf.c: the rx queues one interface may bind sockets on.
pub const MAX_QUEUES: u32 = 64;

/// What the program did with the frames it saw, summed over CPUs: passed to the kernel, redirected
/// to an AF_XDP socket, dropped because no socket was registered (the agent was not running: the
/// fail-closed count), dropped as tunnel traffic from an address that is no node of the mesh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictCounts {
    pub pass: u64,
    pub to_xsk: u64,
    pub dropped_no_socket: u64,
    pub dropped_unknown_peer: u64,
}

/// The program loaded for one interface of the given role, ready to attach.
#[derive(Debug)]
pub struct XdpRedirect {
    role: Role,
    node: NodeAddrs,
    prog: OwnedFd,
    config: MapHandle,
    xsks: MapHandle,
    prefixes_v4: MapHandle,
    prefixes_v6: MapHandle,
    peers_v4: MapHandle,
    peers_v6: MapHandle,
    verdicts: MapHandle,
    pods: Vec<PodPrefix>,
    peers: Vec<IpAddr>,
}

impl XdpRedirect {
    /// Loads a fresh instance of the program (own maps) configured for `role` on a node with `node`'s
    /// underlay addresses.
    pub fn load(role: Role, node: NodeAddrs) -> Result<XdpRedirect> {
        Self::load_with(role, node, None)
    }

    /// Loads the program with its maps pinned under `dir` (bpffs): a map pinned there by a previous
    /// agent is reused — its tunnel peers, pod prefixes, registered sockets and counters — so a
    /// restarted agent starts where the last one stopped. Pins of another layout (an upgrade that
    /// changed a map) are removed and made anew.
    pub fn load_pinned(role: Role, node: NodeAddrs, dir: &Path) -> Result<XdpRedirect> {
        // libbpf makes only the last directory of a pin path.
        std::fs::create_dir_all(dir).map_err(Error::Pin)?;
        match Self::load_with(role, node, Some(dir)) {
            Err(Error::Load(first)) if dir.exists() => {
                tracing::warn!(dir = %dir.display(), "pinned maps not reusable ({first}); pinning anew");
                std::fs::remove_dir_all(dir).map_err(Error::Pin)?;
                std::fs::create_dir_all(dir).map_err(Error::Pin)?;
                Self::load_with(role, node, Some(dir))
            }
            other => other,
        }
    }

    fn load_with(role: Role, node: NodeAddrs, pins: Option<&Path>) -> Result<XdpRedirect> {
        let mut open = ObjectBuilder::default()
            .open_memory(OBJECT)
            .map_err(Error::Load)?;
        if let Some(dir) = pins {
            for mut map in open.maps_mut() {
                let path = dir.join(map.name());
                map.set_pin_path(path).map_err(Error::Load)?;
            }
        }
        let object = open.load().map_err(Error::Load)?;
        let map = |name: &'static str| {
            let map = object
                .maps()
                .find(|m| m.name() == name)
                .ok_or(Error::Missing(name))?;
            MapHandle::try_from(&map).map_err(|source| Error::Map { map: name, source })
        };
        let config = map("config_map")?;
        let xsks = map("xsks_map")?;
        let prefixes_v4 = map("pod_prefixes_v4")?;
        let prefixes_v6 = map("pod_prefixes_v6")?;
        let peers_v4 = map("tunnel_peers_v4")?;
        let peers_v6 = map("tunnel_peers_v6")?;
        let verdicts = map("verdicts")?;
        let prog = object
            .progs()
            .next()
            .ok_or(Error::Missing("program meshpath_redirect"))?;
        let prog = prog
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::Load(e.into()))?;
        // Pinned maps may hold entries of the last agent: known, so that stale ones get removed.
        let pods: Vec<PodPrefix> = lpm_entries(&prefixes_v4)
            .chain(lpm_entries(&prefixes_v6))
            .collect();
        let peers: Vec<IpAddr> = lpm_entries(&peers_v4)
            .chain(lpm_entries(&peers_v6))
            .map(|p| p.addr)
            .collect();
        let program = XdpRedirect {
            role,
            node,
            prog,
            config,
            xsks,
            prefixes_v4,
            prefixes_v6,
            peers_v4,
            peers_v6,
            verdicts,
            pods,
            peers,
        };
        program.configure(None)?;
        Ok(program)
    }

    /// Replies to ports of `ports` (and ICMP errors quoting them) to the node's address are the
    /// dataplane's on the uplink; `None` leaves them to the kernel.
    pub fn set_masquerade_ports(&self, ports: Option<MasqueradePorts>) -> Result<()> {
        self.configure(ports)
    }

    fn configure(&self, masquerade: Option<MasqueradePorts>) -> Result<()> {
        let value = node_config(self.role, self.node, masquerade);
        self.config
            .update(&0u32.to_ne_bytes(), &value, MapFlags::ANY)
            .map_err(|source| Error::Map {
                map: "config_map",
                source,
            })
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Attaches to `ifindex` in the calling thread's network namespace (see [`crate::netns::Netns`]).
    pub fn attach(&self, ifindex: u32) -> Result<Attachment> {
        attach::attach(self.prog.as_fd(), ifindex)
    }

    /// Sends the frames of rx queue `queue` to the AF_XDP socket `xsk`.
    pub fn register_socket(&self, queue: u32, xsk: BorrowedFd<'_>) -> Result<()> {
        check_queue(queue)?;
        let fd = u32::try_from(xsk.as_raw_fd()).map_err(|_| Error::QueueOutOfRange {
            queue,
            max: MAX_QUEUES,
        })?;
        self.xsks
            .update(&queue.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| Error::Map {
                map: "xsks_map",
                source,
            })
    }

    /// Frames of rx queue `queue` go to the kernel again.
    pub fn unregister_socket(&self, queue: u32) -> Result<()> {
        check_queue(queue)?;
        match self.xsks.delete(&queue.to_ne_bytes()) {
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            other => other.map_err(|source| Error::Map {
                map: "xsks_map",
                source,
            }),
        }
    }

    /// Makes `prefixes` the local pod prefixes the uplink redirects: new ones are added before stale
    /// ones are removed, so a prefix present in both sets is never missing.
    pub fn set_pod_prefixes(&mut self, prefixes: &[PodPrefix]) -> Result<()> {
        let keys = prefixes
            .iter()
            .map(|p| LpmKey::of(*p).ok_or(Error::BadPrefix(*p)))
            .collect::<Result<Vec<_>>>()?;
        for key in &keys {
            self.update_prefix(key, true)?;
        }
        for stale in self.pods.iter().filter(|p| !prefixes.contains(p)) {
            if let Some(key) = LpmKey::of(*stale) {
                self.update_prefix(&key, false)?;
            }
        }
        self.pods = prefixes.to_vec();
        Ok(())
    }

    /// Makes `peers` the node addresses whose tunnel datagrams the uplink takes; tunnel datagrams
    /// from anyone else are dropped and counted. New ones are added before stale ones are removed.
    pub fn set_tunnel_peers(&mut self, peers: &[IpAddr]) -> Result<()> {
        let host = |addr: &IpAddr| PodPrefix {
            addr: *addr,
            len: if addr.is_ipv4() { 32 } else { 128 },
        };
        for peer in peers {
            let key = LpmKey::of(host(peer)).ok_or(Error::BadPeer(*peer))?;
            self.update_peer(&key, true)?;
        }
        for stale in self.peers.iter().filter(|p| !peers.contains(p)) {
            if let Some(key) = LpmKey::of(host(stale)) {
                self.update_peer(&key, false)?;
            }
        }
        self.peers = peers.to_vec();
        Ok(())
    }

    fn update_peer(&self, key: &LpmKey, present: bool) -> Result<()> {
        let (map, name, key) = match key {
            LpmKey::V4(k) => (&self.peers_v4, "tunnel_peers_v4", &k[..]),
            LpmKey::V6(k) => (&self.peers_v6, "tunnel_peers_v6", &k[..]),
        };
        update_lpm(map, name, key, present)
    }

    fn update_prefix(&self, key: &LpmKey, present: bool) -> Result<()> {
        let (map, name, key) = match key {
            LpmKey::V4(k) => (&self.prefixes_v4, "pod_prefixes_v4", &k[..]),
            LpmKey::V6(k) => (&self.prefixes_v6, "pod_prefixes_v6", &k[..]),
        };
        update_lpm(map, name, key, present)
    }

    /// The program's verdict counters, summed over CPUs.
    pub fn verdicts(&self) -> Result<VerdictCounts> {
        read_verdicts(&self.verdicts)
    }

    /// The verdict counters pinned under `dir` by an agent's program (running or not): what a node
    /// without its agent dropped is counted there.
    pub fn pinned_verdicts(dir: &Path) -> Result<VerdictCounts> {
        let map =
            MapHandle::from_pinned_path(dir.join("verdicts")).map_err(|source| Error::Map {
                map: "verdicts",
                source,
            })?;
        read_verdicts(&map)
    }
    /// Runs the program over `frame` without any interface (BPF_PROG_TEST_RUN); returns the XDP action.
    pub fn test_run(&self, frame: &[u8]) -> std::io::Result<u32> {
        crate::sys::test_run(self.prog.as_fd(), frame)
    }
}

fn read_verdicts(verdicts: &MapHandle) -> Result<VerdictCounts> {
    let slot = |i: u32| -> Result<u64> {
        let per_cpu = verdicts
            .lookup_percpu(&i.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| Error::Map {
                map: "verdicts",
                source,
            })?
            .unwrap_or_default();
        Ok(per_cpu
            .iter()
            .filter_map(|v| v.get(..8)?.try_into().ok())
            .map(u64::from_ne_bytes)
            .sum())
    };
    Ok(VerdictCounts {
        pass: slot(0)?,
        to_xsk: slot(1)?,
        dropped_no_socket: slot(2)?,
        dropped_unknown_peer: slot(3)?,
    })
}

/// The prefixes an LPM map holds.
fn lpm_entries(map: &MapHandle) -> impl Iterator<Item = PodPrefix> + '_ {
    map.keys().filter_map(|key| LpmKey::parse(&key))
}

fn update_lpm(map: &MapHandle, name: &'static str, key: &[u8], present: bool) -> Result<()> {
    let result = if present {
        map.update(key, &[1], MapFlags::ANY)
    } else {
        match map.delete(key) {
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    };
    result.map_err(|source| Error::Map { map: name, source })
}

fn check_queue(queue: u32) -> Result<()> {
    if queue < MAX_QUEUES {
        Ok(())
    } else {
        Err(Error::QueueOutOfRange {
            queue,
            max: MAX_QUEUES,
        })
    }
}

#[cfg(test)]
#[path = "program_tests.rs"]
pub(crate) mod tests;
