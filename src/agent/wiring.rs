//! Wiring the node: the XDP program on the uplink and on every pod's veth, one AF_XDP socket per
//! interface on a shared UMEM, each registered in its program's XSKMAP. Everything here happens in the
//! node's network namespace; the attachments detach when dropped.

use std::process::Command;

use anyhow::{anyhow, bail, Context};
use meshpath_dataplane::afxdp::{PortConfig, Worker, WorkerConfig};
use meshpath_dataplane::PortId;
use meshpath_xdp_redirect::netns::ifindex;
use meshpath_xdp_redirect::{Attachment, NodeAddrs, PodPrefix, Role, XdpRedirect};

use super::config::AgentConfig;

pub const UPLINK: PortId = PortId(0);

/// The pod attached as the `i`-th entry of the configuration.
pub fn pod_port(i: usize) -> PortId {
    PortId(1 + i as u16)
}

/// The XDP programs and the bound (not yet running) worker.
pub struct Wiring {
    /// Held for their maps (XSKMAP, pod prefixes) while the attachments run them.
    pub _programs: Vec<XdpRedirect>,
    pub attachments: Vec<Attachment>,
    pub worker: Worker,
}

/// Loads and attaches the programs, binds the worker's sockets, registers them.
pub fn wire(config: &AgentConfig, pod_prefixes: &[PodPrefix]) -> anyhow::Result<Wiring> {
    let node = NodeAddrs {
        ipv4: config.node.ipv4,
        ipv6: config.node.ipv6,
    };
    let uplink = (UPLINK, config.node.uplink.as_str(), Role::Uplink);
    let pods = config
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| (pod_port(i), p.interface.as_str(), Role::Pod));
    let mut programs = Vec::new();
    let mut attachments = Vec::new();
    let mut ports = Vec::new();
    for (id, name, role) in std::iter::once(uplink).chain(pods) {
        let index = ifindex(name).with_context(|| format!("interface `{name}`"))?;
        let mut program =
            XdpRedirect::load(role, node).with_context(|| format!("XDP program for `{name}`"))?;
        if role == Role::Uplink {
            program.set_pod_prefixes(pod_prefixes)?;
        }
        let attachment = program
            .attach(index)
            .with_context(|| format!("attaching XDP to `{name}`"))?;
        tracing::info!(interface = name, mode = ?attachment.mode(), "XDP attached");
        programs.push(program);
        attachments.push(attachment);
        ports.push(PortConfig {
            id,
            ifindex: index,
            queue: 0,
        });
    }
    let mut worker_config = WorkerConfig::new(ports);
    worker_config.core = config.dataplane.cores.first().copied();
    let worker = Worker::bind(worker_config).context("AF_XDP sockets")?;
    for ((_, fd), program) in worker.sockets().zip(&programs) {
        program.register_socket(0, fd)?;
    }
    Ok(Wiring {
        _programs: programs,
        attachments,
        worker,
    })
}

/// The MAC address of an interface of this namespace, as the kernel reports it.
pub fn interface_mac(name: &str) -> anyhow::Result<[u8; 6]> {
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
    let text = links[0]["address"]
        .as_str()
        .ok_or_else(|| anyhow!("interface `{name}` has no MAC address"))?;
    let mac: super::config::Mac = text.parse().map_err(|e: String| anyhow!(e))?;
    Ok(mac.0)
}
