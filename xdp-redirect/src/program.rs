//! The loaded XDP program of one interface and its maps: the XSKMAP the AF_XDP layer registers its
//! sockets in, the node config, the local pod prefixes and the pass/redirect counters.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle, ObjectBuilder};

use crate::attach::{self, Attachment};
use crate::config::{node_config, LpmKey, NodeAddrs, PodPrefix, Role};
use crate::{Error, Result};

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/redirect.bpf.o"));

/// Matches `MAX_QUEUES` in bpf/redirect.bpf.c: the rx queues one interface may bind sockets on.
pub const MAX_QUEUES: u32 = 64;

/// How many frames the program passed to the kernel and sent towards an AF_XDP socket, summed over
/// CPUs. A frame counted in `to_xsk` reaches the kernel anyway when no socket is bound on its queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictCounts {
    pub pass: u64,
    pub to_xsk: u64,
}

/// The program loaded for one interface of the given role, ready to attach.
#[derive(Debug)]
pub struct XdpRedirect {
    role: Role,
    prog: OwnedFd,
    xsks: MapHandle,
    prefixes_v4: MapHandle,
    prefixes_v6: MapHandle,
    verdicts: MapHandle,
    pods: Vec<PodPrefix>,
}

impl XdpRedirect {
    /// Loads a fresh instance of the program (own maps) configured for `role` on a node with `node`'s
    /// underlay addresses.
    pub fn load(role: Role, node: NodeAddrs) -> Result<XdpRedirect> {
        let object = ObjectBuilder::default()
            .open_memory(OBJECT)
            .and_then(|o| o.load())
            .map_err(Error::Load)?;
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
        let verdicts = map("verdicts")?;
        let prog = object
            .progs()
            .next()
            .ok_or(Error::Missing("program meshpath_redirect"))?;
        let prog = prog
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::Load(e.into()))?;
        config
            .update(&0u32.to_ne_bytes(), &node_config(role, node), MapFlags::ANY)
            .map_err(|source| Error::Map {
                map: "config_map",
                source,
            })?;
        Ok(XdpRedirect {
            role,
            prog,
            xsks,
            prefixes_v4,
            prefixes_v6,
            verdicts,
            pods: Vec::new(),
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

    fn update_prefix(&self, key: &LpmKey, present: bool) -> Result<()> {
        let (map, name, key) = match key {
            LpmKey::V4(k) => (&self.prefixes_v4, "pod_prefixes_v4", &k[..]),
            LpmKey::V6(k) => (&self.prefixes_v6, "pod_prefixes_v6", &k[..]),
        };
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

    /// The program's pass/redirect counters, summed over CPUs.
    pub fn verdicts(&self) -> Result<VerdictCounts> {
        let slot = |i: u32| -> Result<u64> {
            let per_cpu = self
                .verdicts
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
        })
    }

    /// Runs the program over `frame` without any interface (BPF_PROG_TEST_RUN); returns the XDP action.
    pub fn test_run(&self, frame: &[u8]) -> std::io::Result<u32> {
        crate::sys::test_run(self.prog.as_fd(), frame)
    }
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
