//! Wiring the node: one AF_XDP socket per interface (the uplink, the host port, every pod's veth) on a
//! shared UMEM, each registered in its interface's XDP program before that program is attached, so the
//! node is never open: until a socket is registered the program drops what is the dataplane's, and the
//! program stays attached when the agent stops (planned or not), so it stays closed. The programs'
//! maps are pinned in bpffs, one directory per interface, so the next agent finds its tunnel peers,
//! pod prefixes and counters. Everything here happens in the node's network namespace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use meshpath_dataplane::afxdp::{AfXdpError, PortConfig, Worker, WorkerConfig, XdpMode};
use meshpath_dataplane::PortId;
use meshpath_xdp_redirect::netns::{ifindex, rx_queues};
use meshpath_xdp_redirect::{Attachment, MasqueradePorts, NodeAddrs, PodPrefix, Role, XdpRedirect};

use super::config::AgentConfig;

pub const UPLINK: PortId = PortId(0);
pub const HOST: PortId = PortId(1);

/// The pod attached as the `i`-th entry of the configuration.
pub fn pod_port(i: usize) -> PortId {
    PortId(2 + i as u16)
}

/// The first port of the pods the CNI plugin attaches: after the configuration's.
pub fn first_cni_port(config: &AgentConfig) -> u16 {
    2 + config.pods.len() as u16
}

/// Ring slots of a port the CNI plugin attaches: a pod's veth needs fewer than the uplink, and the
/// UMEM holds room for `dataplane.max-pods` of them from the start (2 × 128 chunks of 2 KiB: 512 KiB a pod).
const POD_RING_SIZE: u32 = 128;

/// The XDP programs (the uplink's first) and the bound (not yet running) worker.
pub struct Wiring {
    /// Held for their maps (XSKMAP, pod prefixes, tunnel peers) while the attachments run them.
    pub programs: Vec<XdpRedirect>,
    pub attachments: Vec<Attachment>,
    pub worker: Worker,
}

/// An interface the dataplane serves.
pub struct Interface<'a> {
    pub port: PortId,
    pub name: &'a str,
    pub role: Role,
}

/// Binds the sockets, loads the programs (maps pinned under `pins`), registers the sockets, attaches.
pub fn wire(
    config: &AgentConfig,
    pod_prefixes: &[PodPrefix],
    pins: &Path,
) -> anyhow::Result<Wiring> {
    check_single_queue(&config.node.uplink)?;
    let interfaces = interfaces(config);
    let mut ports = Vec::new();
    for i in &interfaces {
        let index = ifindex(i.name).with_context(|| format!("interface `{}`", i.name))?;
        ports.push(PortConfig {
            id: i.port,
            ifindex: index,
            queue: 0,
        });
    }
    let mut worker_config = WorkerConfig::new(ports.clone());
    worker_config.core = config.dataplane.cores.first().copied();
    worker_config.spare_ports = config.dataplane.max_pods;
    worker_config.spare_ring_size = POD_RING_SIZE;
    // Copy mode stays forced (the default): pods' veths have no zero-copy, and a pod's socket, added
    // later on the worker's one UMEM, could not share it with a zero-copy uplink.
    let worker = bind(worker_config)?;
    for ((_, mode), i) in worker.modes().zip(&interfaces) {
        let mode = mode.map_or("unknown", XdpMode::name);
        tracing::info!(interface = i.name, mode, "AF_XDP socket bound");
    }
    let node = NodeAddrs {
        ipv4: config.node.ipv4,
        ipv6: config.node.ipv6,
    };
    let masquerade = masquerade_ports(config)?;
    let mut programs = Vec::new();
    let mut attachments = Vec::new();
    for ((i, (_, fd)), port) in interfaces.iter().zip(worker.sockets()).zip(&ports) {
        let dir = pin_dir(pins, i.name);
        let mut program = XdpRedirect::load_pinned(i.role, node, &dir)
            .with_context(|| format!("XDP program for `{}`", i.name))?;
        if i.role == Role::Uplink {
            program.set_pod_prefixes(pod_prefixes)?;
            program.set_masquerade_ports(masquerade)?;
        }
        program.register_socket(0, fd)?;
        let attachment = program
            .attach(port.ifindex)
            .with_context(|| format!("attaching XDP to `{}`", i.name))?;
        tracing::info!(interface = i.name, mode = ?attachment.mode(), "XDP attached");
        programs.push(program);
        attachments.push(attachment);
    }
    Ok(Wiring {
        programs,
        attachments,
        worker,
    })
}

/// Binds the worker's sockets. A queue the last agent's socket held stays busy until the kernel has
/// released that socket's UMEM, which it does after the process is gone (a killed agent's, too):
/// retried for a few seconds.
fn bind(config: WorkerConfig) -> anyhow::Result<Worker> {
    let deadline = Instant::now() + BIND_RETRY;
    loop {
        match Worker::bind(config.clone()) {
            Err(AfXdpError::Bind { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.context("AF_XDP sockets"),
        }
    }
}

/// How long a busy queue is waited for.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// The interfaces of the node, in the order of their ports and programs: uplink, host, pods.
pub fn interfaces(config: &AgentConfig) -> Vec<Interface<'_>> {
    let mut out = vec![
        Interface {
            port: UPLINK,
            name: &config.node.uplink,
            role: Role::Uplink,
        },
        Interface {
            port: HOST,
            name: &config.host_port.interface,
            role: Role::Host,
        },
    ];
    out.extend(config.pods.iter().enumerate().map(|(i, p)| Interface {
        port: pod_port(i),
        name: &p.interface,
        role: Role::Pod,
    }));
    out
}

/// Where an interface's maps are pinned.
pub fn pin_dir(pins: &Path, interface: &str) -> PathBuf {
    pins.join(interface)
}

fn masquerade_ports(config: &AgentConfig) -> anyhow::Result<Option<MasqueradePorts>> {
    if !config.masquerade.enabled {
        return Ok(None);
    }
    let (first, last) = config.masquerade.port_range().map_err(anyhow::Error::msg)?;
    Ok(Some(MasqueradePorts { first, last }))
}

/// One socket serves queue 0. On an uplink with more receive queues, frames hashed to the others would
/// meet a program with no socket there and be dropped (it fails closed), so such an uplink is refused.
fn check_single_queue(uplink: &str) -> anyhow::Result<()> {
    let queues = rx_queues(uplink).with_context(|| format!("receive queues of `{uplink}`"))?;
    if queues > 1 {
        bail!(
            "uplink `{uplink}` has {queues} receive queues, and this agent binds one AF_XDP socket (queue 0): \
             frames on the other queues would be dropped. Use one combined queue \
             (`ethtool -L {uplink} combined 1`) until the agent serves every queue"
        );
    }
    Ok(())
}

/// The MAC address of an interface of this namespace, as the kernel reports it.
pub fn interface_mac(name: &str) -> anyhow::Result<[u8; 6]> {
    let link = link_json(name)?;
    let text = link["address"]
        .as_str()
        .ok_or_else(|| anyhow!("interface `{name}` has no MAC address"))?;
    let mac: super::config::Mac = text.parse().map_err(|e: String| anyhow!(e))?;
    Ok(mac.0)
}

fn link_json(name: &str) -> anyhow::Result<serde_json::Value> {
    let out = Command::new("ip")
        .args(["-j", "link", "show", "dev", name])
        .output()
        .context("running ip(8)")?;
    if !out.status.success() {
        bail!(
            "interface `{name}`: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let links: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(links[0].clone())
}
