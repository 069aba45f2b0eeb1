//! Pods the CNI plugin makes and deletes while the agent runs: attached to the running worker (a port
//! on its UMEM, the XDP program on the veth), given their endpoint in the tables, remembered in
//! `state-dir` so that a restarted agent attaches them again; detached with every socket, UMEM chunk,
//! pin and table entry released — without a restart, and without touching other pods' ports.
//!
//! [`server`] serves the pod socket; [`port`] wires one veth; [`overlay`] gives the control task the
//! plugin's addresses; [`store`] remembers. Requests are handled one at a time (a lock around the set
//! of attached pods), except the wait for a new pod's endpoint, which holds nothing.

mod overlay;
mod port;
mod server;
mod store;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use meshpath_api::cni::{
    AttachedPod, ContainerRef, PodAttachment, PodNetwork, PodRefusal, PodRequest, PodResponse,
    RefusalReason,
};
use meshpath_api::node::Cidr;
use meshpath_api::status::PortRole;
use meshpath_control::local::{LocalState, ObjectRef};
use meshpath_control::snapshot::PodPorts;
use meshpath_dataplane::afxdp::PortControl;
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::PortId;
use meshpath_xdp_redirect::NodeAddrs;
use tokio::sync::{watch, Mutex};

use super::port_names::PortNames;
use super::xdp_counters::XdpPrograms;
pub use overlay::{spawn as overlay, PodAddresses};
use port::PodPort;
pub use server::serve;
pub use store::{PodRecord, Store};

/// How long ADD waits for a new pod's endpoint to be in the tables (its pod object may reach the
/// local source a moment after the plugin asks).
const ENDPOINT_WAIT: Duration = Duration::from_secs(15);
/// How long DEL waits for a pod's endpoint to leave the tables before its port goes.
const REMOVAL_WAIT: Duration = Duration::from_secs(5);

/// What the pods of this node are attached with.
pub struct PodsConfig {
    pub node_name: String,
    pub node: NodeAddrs,
    /// Where the pods' XDP maps are pinned, one directory per veth.
    pub pins: PathBuf,
    pub store: Store,
    /// The port numbers the plugin's pods take: `first_port ..first_port + max_pods`.
    pub first_port: u16,
    pub max_pods: u32,
    /// The pods' MTU.
    pub mtu: u32,
    /// Queues of a pod's veth: one per worker.
    pub queues: u32,
}

/// The pods the plugin attached, and what attaching one touches.
pub struct Pods {
    attached: Mutex<BTreeMap<ContainerRef, Attached>>,
    config: PodsConfig,
    /// Worker `i`'s at index `i`.
    controls: Vec<PortControl>,
    tables: Arc<ArcSwap<Tables>>,
    /// The local source's state, before the plugin's addresses are written in.
    source: watch::Receiver<Arc<LocalState>>,
    ports: watch::Sender<PodPorts>,
    addresses: watch::Sender<Arc<PodAddresses>>,
    names: PortNames,
    programs: XdpPrograms,
}

struct Attached {
    record: PodRecord,
    port: Option<PodPort>,
}

/// Where the pods' ports and addresses go: to the snapshot builder and the control task's state.
pub struct PodOutputs {
    pub ports: watch::Sender<PodPorts>,
    pub addresses: watch::Sender<Arc<PodAddresses>>,
    pub names: PortNames,
    pub programs: XdpPrograms,
}

impl Pods {
    pub fn new(
        config: PodsConfig,
        controls: Vec<PortControl>,
        tables: Arc<ArcSwap<Tables>>,
        source: watch::Receiver<Arc<LocalState>>,
        outputs: PodOutputs,
    ) -> Pods {
        Pods {
            attached: Mutex::new(BTreeMap::new()),
            config,
            controls,
            tables,
            source,
            ports: outputs.ports,
            addresses: outputs.addresses,
            names: outputs.names,
            programs: outputs.programs,
        }
    }

    pub async fn handle(&self, request: PodRequest) -> PodResponse {
        match request {
            PodRequest::Network => self.network(),
            PodRequest::Attach(attachment) => self.attach(attachment).await,
            PodRequest::Detach(container) => self.detach(&container).await,
            PodRequest::Check(container) => self.check(&container).await,
        }
    }

    /// Attaches the pods a previous agent left in `state-dir` whose veths are still there; forgets
    /// the others (their plugin DEL came while no agent ran).
    pub async fn restore(&self) {
        for record in self.config.store.load() {
            let attachment = PodAttachment {
                container: record.container.clone(),
                pod: record.pod.clone(),
                host_interface: record.host_interface.clone(),
                mac: record.mac,
                addresses: record.addresses.clone(),
            };
            let wired = match self.admit(&attachment) {
                Ok(()) => self.wire(record.clone()).await.map(drop),
                Err(refusal) => Err(refusal),
            };
            match wired {
                Err(refusal) => {
                    tracing::info!(container = %record.container, pod = %record.pod, why = %refusal.message, "pod not attached again; forgotten");
                    let _ = self.config.store.remove(&record.container);
                    let pins = super::wiring::pin_dir(&self.config.pins, &record.host_interface);
                    let _ = std::fs::remove_dir_all(pins);
                }
                Ok(()) => {
                    tracing::info!(container = %record.container, pod = %record.pod, "pod attached again")
                }
            }
        }
    }

    /// The agent stops: every pod's program stays attached, closed, until the next agent.
    pub async fn keep_all(&self) {
        let mut attached = self.attached.lock().await;
        for entry in attached.values_mut() {
            if let Some(port) = entry.port.take() {
                port.keep();
            }
        }
    }

    fn network(&self) -> PodResponse {
        let source = self.source.borrow().clone();
        let Some(node) = source.nodes.get(&self.config.node_name) else {
            return refused(
                RefusalReason::TryAgainLater,
                format!(
                    "node `{}` is not in the local state yet",
                    self.config.node_name
                ),
            );
        };
        let pod_cidrs: Vec<Cidr> = node
            .pod_cidrs
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        if pod_cidrs.is_empty() {
            return refused(
                RefusalReason::TryAgainLater,
                format!("node `{}` has no pod CIDR yet", self.config.node_name),
            );
        }
        PodResponse::Network(PodNetwork {
            pod_cidrs,
            mtu: self.config.mtu,
            queues: self.config.queues,
        })
    }

    async fn attach(&self, attachment: PodAttachment) -> PodResponse {
        if let Err(refusal) = self.admit(&attachment) {
            return PodResponse::Refused(refusal);
        }
        let record = PodRecord::from(attachment);
        let port = {
            let mut attached = self.attached.lock().await;
            match attached.get(&record.container) {
                Some(entry) if entry.record == record => entry.port.as_ref().map(|p| p.id),
                Some(_) => {
                    self.remove(&mut attached, &record.container).await;
                    None
                }
                None => None,
            }
        };
        let id = match port {
            Some(id) => id,
            None => match self.wire(record.clone()).await {
                Ok(id) => id,
                Err(refusal) => return PodResponse::Refused(refusal),
            },
        };
        match self.endpoint(id, &record.addresses, ENDPOINT_WAIT).await {
            Some(identity) => PodResponse::Attached(attached_pod(&record, id, identity)),
            None => {
                let mut attached = self.attached.lock().await;
                if attached
                    .get(&record.container)
                    .is_some_and(|e| e.record == record)
                {
                    self.remove(&mut attached, &record.container).await;
                }
                refused(
                    RefusalReason::TryAgainLater,
                    format!(
                        "pod {} has no endpoint after {}s: it is not in the local state on node `{}` yet, or has no identity",
                        record.pod,
                        ENDPOINT_WAIT.as_secs(),
                        self.config.node_name
                    ),
                )
            }
        }
    }

    /// What must hold before anything is touched: a veth name the kernel allows, one address per
    /// family inside this node's pod CIDRs, and no pod of another node.
    fn admit(&self, a: &PodAttachment) -> Result<(), PodRefusal> {
        let invalid = |m: String| PodRefusal {
            reason: RefusalReason::Invalid,
            message: m,
        };
        let name = &a.host_interface;
        let name_ok = (1..=15).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !name.starts_with('-');
        if !name_ok {
            return Err(invalid(format!("`{name}` is no interface name")));
        }
        if a.container.container_id.is_empty() || a.container.ifname.is_empty() {
            return Err(invalid(
                "the container id and interface name are required".into(),
            ));
        }
        let v4 = a.addresses.iter().filter(|ip| ip.is_ipv4()).count();
        let v6 = a.addresses.len() - v4;
        if a.addresses.is_empty() || v4 > 1 || v6 > 1 {
            return Err(invalid(format!(
                "a pod has one address per family, not {:?}",
                a.addresses
            )));
        }
        let source = self.source.borrow().clone();
        let node = source
            .nodes
            .get(&self.config.node_name)
            .ok_or_else(|| PodRefusal {
                reason: RefusalReason::TryAgainLater,
                message: format!(
                    "node `{}` is not in the local state yet",
                    self.config.node_name
                ),
            })?;
        let cidrs: Vec<Cidr> = node
            .pod_cidrs
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        if let Some(outside) = a
            .addresses
            .iter()
            .find(|ip| !cidrs.iter().any(|c| contains(c, **ip)))
        {
            return Err(invalid(format!(
                "{outside} is outside node `{}`'s pod CIDRs",
                self.config.node_name
            )));
        }
        let pod = ObjectRef {
            namespace: a.pod.namespace.clone(),
            name: a.pod.name.clone(),
        };
        let node_of = source.pods.get(&pod).and_then(|p| p.node.clone());
        if let Some(other) = node_of.filter(|n| *n != self.config.node_name) {
            return Err(invalid(format!(
                "pod {} is scheduled on node `{other}`",
                a.pod
            )));
        }
        // Two endpoints with one address would each pass anti-spoofing as the other: fail closed.
        let holder = self.tables.load().endpoints.iter().find_map(|e| {
            let held = a.addresses.iter().find(|ip| match ip {
                IpAddr::V4(v4) => e.ipv4 == Some(*v4),
                IpAddr::V6(v6) => e.ipv6 == Some(*v6),
            })?;
            let ours = self
                .names
                .get(e.port)
                .is_some_and(|(i, _)| i == a.host_interface);
            (!ours).then_some((*held, e.port))
        });
        if let Some((ip, port)) = holder {
            return Err(invalid(format!(
                "{ip} is the address of the endpoint on port {}",
                port.0
            )));
        }
        Ok(())
    }

    /// Opens the pod's port and makes it known: to the builder (port and MAC), to the control task
    /// (addresses), to the status, and to `state-dir`.
    async fn wire(&self, record: PodRecord) -> Result<PortId, PodRefusal> {
        let mut attached = self.attached.lock().await;
        let taken = |i: &str| attached.values().any(|e| e.record.host_interface == i);
        if taken(&record.host_interface) {
            return Err(PodRefusal {
                reason: RefusalReason::Invalid,
                message: format!(
                    "`{}` is attached for another container",
                    record.host_interface
                ),
            });
        }
        let in_use: Vec<PortId> = attached
            .values()
            .filter_map(|e| e.port.as_ref().map(|p| p.id))
            .collect();
        let first = self.config.first_port;
        let id = (0..self.config.max_pods)
            .filter_map(|i| first.checked_add(u16::try_from(i).ok()?))
            .map(PortId)
            .find(|id| !in_use.contains(id))
            .ok_or_else(|| PodRefusal {
                reason: RefusalReason::NoRoom,
                message: format!(
                    "the node holds {} pods (`dataplane.max-pods`)",
                    self.config.max_pods
                ),
            })?;
        let (controls, interface) = (self.controls.clone(), record.host_interface.clone());
        let (node, pins) = (self.config.node, self.config.pins.clone());
        let opened =
            tokio::task::spawn_blocking(move || port::open(&controls, id, &interface, node, &pins))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
                .and_then(|r| r);
        let port = opened.map_err(|error| PodRefusal {
            reason: RefusalReason::Failed,
            message: format!("attaching `{}`: {error:#}", record.host_interface),
        })?;
        self.names
            .insert(id, record.host_interface.clone(), PortRole::Pod);
        self.programs
            .add(record.host_interface.clone(), port.program.clone());
        let pod = object_ref(&record);
        self.addresses.send_modify(|a| {
            Arc::make_mut(a).insert(pod.clone(), record.addresses.clone());
        });
        self.ports.send_modify(|p| {
            p.insert(pod, (id, record.mac.0));
        });
        if let Err(error) = self.config.store.save(&record) {
            tracing::warn!(container = %record.container, %error, "pod not remembered in state-dir");
        }
        tracing::info!(container = %record.container, pod = %record.pod, interface = %record.host_interface, port = id.0, "pod attached");
        attached.insert(
            record.container.clone(),
            Attached {
                record,
                port: Some(port),
            },
        );
        Ok(id)
    }

    async fn detach(&self, container: &ContainerRef) -> PodResponse {
        let mut attached = self.attached.lock().await;
        let was_attached = self.remove(&mut attached, container).await;
        PodResponse::Detached { was_attached }
    }

    /// Takes a pod out of the tables, then its port off the worker and its veth.
    async fn remove(
        &self,
        attached: &mut BTreeMap<ContainerRef, Attached>,
        container: &ContainerRef,
    ) -> bool {
        let Some(mut entry) = attached.remove(container) else {
            return false;
        };
        let record = &entry.record;
        let pod = object_ref(record);
        if let Some(port) = entry.port.take() {
            let id = port.id;
            self.ports.send_if_modified(|p| {
                let ours = p.get(&pod).is_some_and(|(port, _)| *port == id);
                if ours {
                    p.remove(&pod);
                }
                ours
            });
            self.addresses.send_if_modified(|a| {
                let ours = !attached.values().any(|e| object_ref(&e.record) == pod);
                if ours {
                    Arc::make_mut(a).remove(&pod);
                }
                ours
            });
            self.gone_from_tables(id).await;
            let controls = self.controls.clone();
            let closed = tokio::task::spawn_blocking(move || port.close(&controls)).await;
            match closed {
                Ok(Ok(released)) => {
                    tracing::info!(container = %record.container, pod = %record.pod, port = id.0, chunks = released.chunks, "pod detached")
                }
                Ok(Err(error)) => {
                    tracing::warn!(container = %record.container, error = %format!("{error:#}"), "pod detached with an error")
                }
                Err(error) => {
                    tracing::warn!(container = %record.container, %error, "pod detach failed")
                }
            }
            self.names.remove(id);
            self.programs.remove(&record.host_interface);
        }
        if let Err(error) = self.config.store.remove(container) {
            tracing::warn!(%container, %error, "pod record not removed from state-dir");
        }
        true
    }

    async fn check(&self, container: &ContainerRef) -> PodResponse {
        let attached = self.attached.lock().await;
        let Some(entry) = attached.get(container) else {
            return refused(
                RefusalReason::UnknownContainer,
                format!("container {container} is not attached"),
            );
        };
        let Some(id) = entry.port.as_ref().map(|p| p.id) else {
            return refused(
                RefusalReason::UnknownContainer,
                format!("container {container} is not attached"),
            );
        };
        match self
            .endpoint(id, &entry.record.addresses, Duration::ZERO)
            .await
        {
            Some(identity) => PodResponse::Attached(attached_pod(&entry.record, id, identity)),
            None => refused(
                RefusalReason::Failed,
                format!(
                    "pod {} is attached on port {} but has no endpoint in the tables",
                    entry.record.pod, id.0
                ),
            ),
        }
    }

    /// The identity of the endpoint on `port` once it holds `addresses`, waiting up to `wait`.
    async fn endpoint(&self, port: PortId, addresses: &[IpAddr], wait: Duration) -> Option<u32> {
        let deadline = Instant::now() + wait;
        loop {
            let tables = self.tables.load();
            if let Some(endpoint) = tables.endpoints.by_port(port) {
                let holds = addresses.iter().all(|ip| match ip {
                    IpAddr::V4(v4) => endpoint.ipv4 == Some(*v4),
                    IpAddr::V6(v6) => endpoint.ipv6 == Some(*v6),
                });
                if holds {
                    return Some(endpoint.identity.get());
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn gone_from_tables(&self, port: PortId) {
        let deadline = Instant::now() + REMOVAL_WAIT;
        while self.tables.load().endpoints.by_port(port).is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn object_ref(record: &PodRecord) -> ObjectRef {
    ObjectRef {
        namespace: record.pod.namespace.clone(),
        name: record.pod.name.clone(),
    }
}

fn attached_pod(record: &PodRecord, port: PortId, identity: u32) -> AttachedPod {
    AttachedPod {
        container: record.container.clone(),
        pod: record.pod.clone(),
        host_interface: record.host_interface.clone(),
        port: port.0,
        addresses: record.addresses.clone(),
        identity,
    }
}

fn refused(reason: RefusalReason, message: String) -> PodResponse {
    PodResponse::Refused(PodRefusal { reason, message })
}

/// Whether `cidr` holds `ip`.
fn contains(cidr: &Cidr, ip: IpAddr) -> bool {
    match (cidr.address, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let len = u32::from(cidr.prefix_len.min(32));
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let len = u32::from(cidr.prefix_len.min(128));
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_hold_their_own_family_only() {
        let v4: Cidr = "100.64.1.0/24".parse().unwrap();
        let v6: Cidr = "fd00:1::/64".parse().unwrap();
        assert!(contains(&v4, "100.64.1.200".parse().unwrap()));
        assert!(!contains(&v4, "100.64.2.1".parse().unwrap()));
        assert!(!contains(&v4, "::ffff:100.64.1.1".parse().unwrap()));
        assert!(contains(&v6, "fd00:1::a".parse().unwrap()));
        assert!(!contains(&v6, "fd00:2::a".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(contains(&all, "1.2.3.4".parse().unwrap()));
    }
}
