//! Wiring the node: one AF_XDP socket per worker and interface (the uplink, the host port, every pod's
//! veth), worker `i`'s on receive queue `i`, all on one shared UMEM, each registered in its interface's
//! XDP program (XSKMAP, at its queue) before that program is attached, so the
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
/// UMEM holds room for `dataplane.max-pods` of them from the start (a fill ring of 128 chunks of 2 KiB:
/// 256 KiB a pod).
const POD_RING_SIZE: u32 = 128;

/// The XDP programs (the uplink's first) and the bound (not yet running) workers, one per core of
/// `dataplane.cores` in its order: worker `i` serves queue `i`.
pub struct Wiring {
    /// Held for their maps (XSKMAP, pod prefixes, tunnel peers) while the attachments run them.
    pub programs: Vec<XdpRedirect>,
    pub attachments: Vec<Attachment>,
    pub workers: Vec<Worker>,
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
    let cores = &config.dataplane.cores;
    check_queues(&config.node.uplink, cores.len())?;
    let interfaces = interfaces(config);
    let mut ifindexes = Vec::new();
    for i in &interfaces {
        ifindexes.push(ifindex(i.name).with_context(|| format!("interface `{}`", i.name))?);
    }
    let configs = cores
        .iter()
        .enumerate()
        .map(|(queue, &core)| worker_config(config, &interfaces, &ifindexes, queue as u32, core))
        .collect();
    let workers = bind(configs)?;
    for (queue, worker) in workers.iter().enumerate() {
        for ((_, mode), i) in worker.modes().zip(&interfaces) {
            let mode = mode.map_or("unknown", XdpMode::name);
            tracing::info!(interface = i.name, queue, mode, "AF_XDP socket bound");
        }
    }
    let node = NodeAddrs {
        ipv4: config.node.ipv4,
        ipv6: config.node.ipv6,
    };
    let masquerade = masquerade_ports(config)?;
    let mut programs = Vec::new();
    let mut attachments = Vec::new();
    for (i, &index) in interfaces.iter().zip(&ifindexes) {
        let dir = pin_dir(pins, i.name);
        let mut program = XdpRedirect::load_pinned(i.role, node, &dir)
            .with_context(|| format!("XDP program for `{}`", i.name))?;
        if i.role == Role::Uplink {
            program.set_pod_prefixes(pod_prefixes)?;
            program.set_masquerade_ports(masquerade)?;
        }
        for worker in &workers {
            for (port, fd) in worker.sockets().filter(|(p, _)| p.id == i.port) {
                program.register_socket(port.queue, fd)?;
            }
        }
        let attachment = program
            .attach(index)
            .with_context(|| format!("attaching XDP to `{}`", i.name))?;
        tracing::info!(interface = i.name, mode = ?attachment.mode(), "XDP attached");
        programs.push(program);
        attachments.push(attachment);
    }
    Ok(Wiring {
        programs,
        attachments,
        workers,
    })
}

/// Worker `queue`'s configuration: pinned to `core`, a socket on queue `queue` of every interface.
fn worker_config(
    config: &AgentConfig,
    interfaces: &[Interface<'_>],
    ifindexes: &[u32],
    queue: u32,
    core: usize,
) -> WorkerConfig {
    let ports = interfaces
        .iter()
        .zip(ifindexes)
        .map(|(i, &ifindex)| PortConfig {
            id: i.port,
            ifindex,
            queue,
        })
        .collect();
    let mut worker = WorkerConfig::new(ports);
    worker.core = Some(core);
    worker.spare_ports = config.dataplane.max_pods;
    worker.spare_ring_size = POD_RING_SIZE;
    // Copy mode stays forced (the default): pods' veths have no zero-copy, and a pod's socket, added
    // later on the workers' one UMEM, could not share it with a zero-copy uplink.
    worker
}

/// Binds the workers' sockets. A queue the last agent's socket held stays busy until the kernel has
/// released that socket's UMEM, which it does after the process is gone (a killed agent's, too):
/// retried for a few seconds.
fn bind(configs: Vec<WorkerConfig>) -> anyhow::Result<Vec<Worker>> {
    let deadline = Instant::now() + BIND_RETRY;
    loop {
        match Worker::bind_group(configs.clone()) {
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

/// Worker `i` binds receive queue `i` of the uplink, so the uplink needs exactly as many receive
/// queues as there are workers: a queue it does not have cannot be bound, and what the device spreads
/// onto a queue no worker serves meets a program with no socket there and is dropped (it fails
/// closed) — a NIC of eight queues under two workers would drop three frames of four. Both are
/// refused at start, with the command that fixes them.
fn check_queues(uplink: &str, workers: usize) -> anyhow::Result<()> {
    let queues = rx_queues(uplink).with_context(|| format!("receive queues of `{uplink}`"))?;
    queue_problem(uplink, queues as usize, workers).map_or(Ok(()), |problem| bail!(problem))
}

fn queue_problem(uplink: &str, queues: usize, workers: usize) -> Option<String> {
    let fix = format!(
        "give it one receive queue per worker (`ethtool -L {uplink} combined {workers}`) or list \
         as many `dataplane.cores` as it has queues"
    );
    match queues.cmp(&workers) {
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Less => Some(format!(
            "uplink `{uplink}` has {queues} receive queue(s) and the agent runs {workers} workers, \
             worker i on queue i: {fix}"
        )),
        std::cmp::Ordering::Greater => Some(format!(
            "uplink `{uplink}` has {queues} receive queues and the agent runs {workers} worker(s): \
             frames on queues {workers} and up would meet no socket and be dropped; {fix}"
        )),
    }
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

#[cfg(test)]
mod tests {
    use super::queue_problem;

    #[test]
    fn the_uplink_has_exactly_one_receive_queue_per_worker() {
        assert_eq!(queue_problem("eth0", 1, 1), None);
        assert_eq!(queue_problem("eth0", 4, 4), None);
        let fewer = queue_problem("eth0", 1, 2).expect("refused");
        assert!(fewer.contains("has 1 receive queue(s)"), "{fewer}");
        assert!(fewer.contains("ethtool -L eth0 combined 2"), "{fewer}");
        let more = queue_problem("eth0", 8, 2).expect("refused");
        assert!(
            more.contains("queues 2 and up would meet no socket"),
            "{more}"
        );
    }
}
