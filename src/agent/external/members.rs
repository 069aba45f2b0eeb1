//! The external workloads that joined this node's own cluster, as a node sees them: its cluster's etcd
//! watched read-only like a remote's, of which only the external workloads' records are taken — a host
//! that is its own endpoint (`HostIP` its own address, on no node of the local state), its node record,
//! and the identities those endpoints use. Everything else there is the local state's already (the
//! nodes, their pods, the services) and stays out. The watch is no remote of the mesh: it is not
//! counted among the ClusterMesh's remotes, nor remembered among their last known state; its own
//! status board is the status API's `external_workloads_watch` and the `meshpath_external_workloads_*`
//! metrics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use meshpath_control::clustermesh::config::RemoteConfig;
use meshpath_control::clustermesh::{spawn_remote, RemoteEvent, RemoteOptions, StatusBoard};
use meshpath_control::kvstore::LabelSet;
use meshpath_control::local::LocalState;
use meshpath_control::state::{ClusterState, EndpointInfo, Entry, EntryKey, StateEvent};
use meshpath_dataplane::{Addr, Identity};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::super::control::Directories;

/// What of the own cluster's events passes: the external workloads' records.
#[derive(Debug, Default)]
pub struct ExternalOnly {
    nodes: BTreeSet<String>,
    endpoints: HashMap<Addr, Identity>,
    /// Every identity seen, with its labels: one passes once an external endpoint uses it.
    identities: BTreeMap<Identity, LabelSet>,
    passed_identities: BTreeSet<Identity>,
}

impl ExternalOnly {
    /// The events that pass for `event`, given the local state's nodes.
    pub fn filter(&mut self, event: RemoteEvent, local: &LocalState) -> Vec<RemoteEvent> {
        let cluster = event.cluster.clone();
        let out = match event.event {
            StateEvent::Upsert(Entry::Node(node)) => {
                if local.nodes.contains_key(&node.name) {
                    self.forget_node(&node.name)
                } else {
                    self.nodes.insert(node.name.clone());
                    vec![StateEvent::Upsert(Entry::Node(node))]
                }
            }
            StateEvent::Delete(EntryKey::Node(name)) => self.forget_node(&name),
            StateEvent::Upsert(Entry::Endpoint(endpoint)) => {
                if is_external(&endpoint, local) {
                    self.endpoint(endpoint)
                } else {
                    self.forget_endpoint(endpoint.ip)
                }
            }
            StateEvent::Delete(EntryKey::Endpoint(ip)) => self.forget_endpoint(ip),
            StateEvent::Upsert(Entry::Identity(id, labels)) => {
                let used = self.endpoints.values().any(|e| *e == id);
                self.identities.insert(id, labels.clone());
                match used {
                    true => {
                        self.passed_identities.insert(id);
                        vec![StateEvent::Upsert(Entry::Identity(id, labels))]
                    }
                    false => Vec::new(),
                }
            }
            StateEvent::Delete(EntryKey::Identity(id)) => {
                self.identities.remove(&id);
                match self.passed_identities.remove(&id) {
                    true => vec![StateEvent::Delete(EntryKey::Identity(id))],
                    false => Vec::new(),
                }
            }
            StateEvent::Upsert(Entry::Service(_)) | StateEvent::Delete(EntryKey::Service(_)) => {
                Vec::new()
            }
        };
        out.into_iter()
            .map(|event| RemoteEvent {
                cluster: cluster.clone(),
                event,
            })
            .collect()
    }

    fn forget_node(&mut self, name: &str) -> Vec<StateEvent> {
        match self.nodes.remove(name) {
            true => vec![StateEvent::Delete(EntryKey::Node(name.to_owned()))],
            false => Vec::new(),
        }
    }

    fn endpoint(&mut self, endpoint: Arc<EndpointInfo>) -> Vec<StateEvent> {
        let id = endpoint.identity;
        self.endpoints.insert(endpoint.ip, id);
        let mut out = Vec::new();
        if !self.passed_identities.contains(&id) {
            if let Some(labels) = self.identities.get(&id) {
                self.passed_identities.insert(id);
                out.push(StateEvent::Upsert(Entry::Identity(id, labels.clone())));
            }
        }
        out.push(StateEvent::Upsert(Entry::Endpoint(endpoint)));
        out
    }

    fn forget_endpoint(&mut self, ip: Addr) -> Vec<StateEvent> {
        match self.endpoints.remove(&ip) {
            Some(_) => vec![StateEvent::Delete(EntryKey::Endpoint(ip))],
            None => Vec::new(),
        }
    }
}

/// A host that is its own endpoint, on none of the local state's nodes.
fn is_external(endpoint: &EndpointInfo, local: &LocalState) -> bool {
    let ip: IpAddr = endpoint.ip.ip();
    endpoint.host_ip == Some(endpoint.ip)
        && !local.nodes.values().any(|n| n.internal_ips.contains(&ip))
}

/// Watches the own cluster's etcd (`own`) until `cancel`, passing the external workloads' records to
/// the builder (`builder`) and the directories.
pub async fn watch(
    own: RemoteConfig,
    options: RemoteOptions,
    board: StatusBoard,
    local: watch::Receiver<Arc<LocalState>>,
    builder: mpsc::Sender<RemoteEvent>,
    directories: Directories,
    cancel: CancellationToken,
) {
    let (tx, mut events) = mpsc::channel(1024);
    let handle = spawn_remote(
        own,
        options,
        ClusterState::default(),
        tx,
        board,
        cancel.clone(),
    );
    let mut filter = ExternalOnly::default();
    while let Some(event) = events.recv().await {
        let passed = filter.filter(event, &local.borrow());
        for event in passed {
            directories.nodes.record_remote(&event);
            directories.identities.record_remote(&event);
            directories.endpoints.record_remote(&event);
            if builder.send(event).await.is_err() {
                return;
            }
        }
    }
    drop(handle);
}

#[cfg(test)]
mod tests {
    use meshpath_control::local::LocalNode;
    use meshpath_control::state::{NodeAddressKind, NodeInfo};
    use meshpath_control::ClusterName;
    use meshpath_dataplane::ClusterId;

    use super::*;

    const VM: [u8; 4] = [198, 18, 100, 10];
    const NODE: [u8; 4] = [198, 18, 1, 1];

    fn addr(octets: [u8; 4]) -> Addr {
        Addr::from(IpAddr::from(octets))
    }

    fn local() -> LocalState {
        let node = LocalNode {
            name: "c1-n1".into(),
            internal_ips: vec![IpAddr::from(NODE)],
            pod_cidrs: vec!["100.64.1.0/24".into()],
            labels: Default::default(),
            wireguard_pub_key: None,
        };
        LocalState {
            nodes: [("c1-n1".to_owned(), node)].into(),
            ..LocalState::default()
        }
    }

    fn event(event: StateEvent) -> RemoteEvent {
        RemoteEvent {
            cluster: ClusterName::new("cluster1").unwrap(),
            event,
        }
    }

    fn node(name: &str, at: [u8; 4]) -> StateEvent {
        StateEvent::Upsert(Entry::Node(
            NodeInfo {
                name: name.into(),
                cluster_id: ClusterId::new(1).unwrap(),
                addresses: vec![(NodeAddressKind::Internal, addr(at))],
                pod_cidrs: vec![],
                health_ips: vec![],
                encryption_key: 0,
                wireguard_pub_key: None,
            }
            .into(),
        ))
    }

    fn endpoint(ip: [u8; 4], host: [u8; 4], id: u32) -> StateEvent {
        StateEvent::Upsert(Entry::Endpoint(
            EndpointInfo {
                ip: addr(ip),
                identity: Identity::new(id).unwrap(),
                host_ip: Some(addr(host)),
                namespace: "default".into(),
                pod_name: "vm1".into(),
            }
            .into(),
        ))
    }

    fn identity(id: u32, app: &str) -> StateEvent {
        let text = format!("k8s:app={app};k8s:io.cilium.k8s.policy.cluster=cluster1;");
        StateEvent::Upsert(Entry::Identity(
            Identity::new(id).unwrap(),
            LabelSet::parse(&text).unwrap(),
        ))
    }

    fn passed(filter: &mut ExternalOnly, e: StateEvent) -> Vec<StateEvent> {
        let out = filter.filter(event(e), &local());
        out.into_iter().map(|e| e.event).collect()
    }

    #[test]
    fn only_the_external_workloads_records_pass_with_their_identities() {
        let mut filter = ExternalOnly::default();
        assert!(
            passed(&mut filter, node("c1-n1", NODE)).is_empty(),
            "a node of the local state"
        );
        assert!(passed(&mut filter, identity(0x1_0100, "x-wing")).is_empty());
        assert!(
            passed(&mut filter, identity(0x1_0200, "vm-db")).is_empty(),
            "not used yet"
        );
        let pod = endpoint([100, 64, 1, 10], NODE, 0x1_0100);
        assert!(passed(&mut filter, pod).is_empty(), "a pod of a local node");
        assert_eq!(passed(&mut filter, node("vm1", VM)).len(), 1);
        let vm = passed(&mut filter, endpoint(VM, VM, 0x1_0200));
        assert_eq!(vm.len(), 2, "its identity, then itself: {vm:?}");
        assert!(
            matches!(&vm[0], StateEvent::Upsert(Entry::Identity(id, _)) if id.get() == 0x1_0200)
        );
        let service = StateEvent::Delete(EntryKey::Service(meshpath_control::state::ServiceName {
            namespace: "default".into(),
            name: "rebel-base".into(),
        }));
        assert!(passed(&mut filter, service).is_empty());

        let gone = passed(
            &mut filter,
            StateEvent::Delete(EntryKey::Endpoint(addr(VM))),
        );
        assert_eq!(gone, vec![StateEvent::Delete(EntryKey::Endpoint(addr(VM)))]);
        let pod_gone = StateEvent::Delete(EntryKey::Endpoint(addr([100, 64, 1, 10])));
        assert!(passed(&mut filter, pod_gone).is_empty(), "never passed");
        let id_gone = StateEvent::Delete(EntryKey::Identity(Identity::new(0x1_0200).unwrap()));
        assert_eq!(passed(&mut filter, id_gone).len(), 1);
        let node_gone = passed(
            &mut filter,
            StateEvent::Delete(EntryKey::Node("vm1".into())),
        );
        assert_eq!(node_gone.len(), 1);
    }
}
