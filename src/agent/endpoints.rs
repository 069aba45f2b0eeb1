//! Every pod the agent can name by its address, for `meshpath observe`: this cluster's (on any node)
//! from the local state, the remote clusters' from their endpoints' kvstore values, which carry the
//! pod's namespace and name (`K8sNamespace`, `K8sPodName`). Control-plane bookkeeping, off the
//! packet path. A remote pod is held as the remote state's own entry (shared, not copied: at 100k
//! remote endpoints three strings each cost 15 MB) and named when asked.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use meshpath_control::clustermesh::RemoteEvent;
use meshpath_control::local::LocalState;
use meshpath_control::state::{EndpointInfo, Entry, EntryKey, StateEvent};

use super::cluster_names::ClusterNames;

/// A pod by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodName {
    pub cluster: String,
    pub namespace: String,
    pub pod: String,
}

/// What the directory holds of one address.
enum Named {
    // Boxed: most of a directory at scale is remote pods, whose entry is two pointers.
    Local(Box<PodName>),
    Remote {
        cluster: Arc<str>,
        endpoint: Arc<EndpointInfo>,
    },
}

impl Named {
    fn cluster(&self) -> &str {
        match self {
            Named::Local(name) => &name.cluster,
            Named::Remote { cluster, .. } => cluster,
        }
    }

    fn name(&self) -> PodName {
        match self {
            Named::Local(name) => (**name).clone(),
            Named::Remote { cluster, endpoint } => PodName {
                cluster: cluster.to_string(),
                namespace: endpoint.namespace.clone(),
                pod: endpoint.pod_name.clone(),
            },
        }
    }
}

#[derive(Default)]
struct Pods {
    by_ip: HashMap<IpAddr, Named>,
    /// The addresses the local state gave.
    local: HashSet<IpAddr>,
    /// One copy of each remote cluster's name, shared by its pods.
    clusters: ClusterNames,
}

/// Pods by address, and the addresses the local state gave (see [`super::nodes::NodeDirectory`]).
#[derive(Clone, Default)]
pub struct EndpointDirectory(Arc<RwLock<Pods>>);

impl EndpointDirectory {
    /// Replaces this cluster's own pods with those of `state`.
    pub fn record_local(&self, cluster: &str, state: &LocalState) {
        let Ok(mut pods) = self.0.write() else {
            return;
        };
        let pods = &mut *pods;
        for ip in std::mem::take(&mut pods.local) {
            pods.by_ip.remove(&ip);
        }
        for pod in state.pods.values() {
            for ip in &pod.ips {
                pods.local.insert(*ip);
                let name = PodName {
                    cluster: cluster.to_owned(),
                    namespace: pod.pod.namespace.clone(),
                    pod: pod.pod.name.clone(),
                };
                pods.by_ip.insert(*ip, Named::Local(Box::new(name)));
            }
        }
    }

    /// Follows a remote cluster's endpoint events; an address another cluster names stays theirs
    /// until they withdraw it.
    pub fn record_remote(&self, event: &RemoteEvent) {
        let cluster = event.cluster.as_str();
        let Ok(mut pods) = self.0.write() else { return };
        match &event.event {
            StateEvent::Upsert(Entry::Endpoint(e)) if !e.pod_name.is_empty() => {
                let ip = e.ip.ip();
                if pods.by_ip.get(&ip).is_none_or(|p| p.cluster() == cluster) {
                    let named = Named::Remote {
                        cluster: pods.clusters.shared(cluster),
                        endpoint: e.clone(),
                    };
                    pods.by_ip.insert(ip, named);
                }
            }
            StateEvent::Delete(EntryKey::Endpoint(addr)) => {
                let ip = addr.ip();
                if pods.by_ip.get(&ip).is_some_and(|p| p.cluster() == cluster) {
                    pods.by_ip.remove(&ip);
                }
            }
            _ => {}
        }
    }

    pub fn get(&self, ip: IpAddr) -> Option<PodName> {
        self.0.read().ok()?.by_ip.get(&ip).map(Named::name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_control::local::{LocalPod, ObjectRef};
    use meshpath_control::ClusterName;
    use meshpath_dataplane::Identity;

    fn remote(cluster: &str, event: StateEvent) -> RemoteEvent {
        RemoteEvent {
            cluster: ClusterName::new(cluster).unwrap(),
            event,
        }
    }

    fn endpoint(ip: &str, pod: &str) -> Entry {
        Entry::Endpoint(
            EndpointInfo {
                ip: ip.parse::<IpAddr>().unwrap().into(),
                identity: Identity::new(0x2_0100).unwrap(),
                host_ip: None,
                namespace: "default".into(),
                pod_name: pod.into(),
            }
            .into(),
        )
    }

    #[test]
    fn local_pods_replaced_remote_ones_followed() {
        let dir = EndpointDirectory::default();
        let pod = ObjectRef {
            namespace: "default".into(),
            name: "x-wing".into(),
        };
        let local = LocalState {
            pods: [(
                pod.clone(),
                LocalPod {
                    pod,
                    node: Some("c1-n2".into()),
                    labels: Default::default(),
                    ips: vec!["100.64.2.10".parse().unwrap()],
                    service_account: "default".into(),
                    ready: true,
                    terminating: false,
                },
            )]
            .into(),
            ..Default::default()
        };
        dir.record_local("cluster1", &local);
        let x_wing = dir.get("100.64.2.10".parse().unwrap()).unwrap();
        assert_eq!(
            (x_wing.cluster.as_str(), x_wing.pod.as_str()),
            ("cluster1", "x-wing")
        );

        let rebel = "100.65.1.10";
        dir.record_remote(&remote(
            "cluster2",
            StateEvent::Upsert(endpoint(rebel, "rebel-base")),
        ));
        let named = dir.get(rebel.parse().unwrap()).unwrap();
        assert_eq!(named.cluster, "cluster2");
        assert_eq!(named.pod, "rebel-base");
        // Another remote cannot take or withdraw it.
        dir.record_remote(&remote(
            "cluster3",
            StateEvent::Upsert(endpoint(rebel, "imposter")),
        ));
        let key = EntryKey::Endpoint(rebel.parse::<IpAddr>().unwrap().into());
        dir.record_remote(&remote("cluster3", StateEvent::Delete(key.clone())));
        assert_eq!(dir.get(rebel.parse().unwrap()).unwrap().pod, "rebel-base");
        dir.record_remote(&remote("cluster2", StateEvent::Delete(key)));
        assert_eq!(dir.get(rebel.parse().unwrap()), None);

        dir.record_local("cluster1", &LocalState::default());
        assert_eq!(dir.get("100.64.2.10".parse().unwrap()), None);
    }
}
