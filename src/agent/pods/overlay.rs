//! The local state as the control task sees it: the local source's, with the addresses the CNI plugin
//! gave this node's pods written into their status. Kubernetes writes a pod's `status.podIPs` only
//! after ADD has returned, and ADD returns only once the pod's endpoint is in the tables: so the agent
//! takes the addresses from the plugin, as kubelet will, and the pod gets its identity, endpoint and
//! ipcache entries at once. Where the source already names addresses for an attached pod, the
//! plugin's win: they are what the pod's veth really has, what anti-spoofing must hold it to.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use meshpath_control::local::{LocalState, ObjectRef};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The attached pods' addresses.
pub type PodAddresses = BTreeMap<ObjectRef, Vec<IpAddr>>;

/// `source` with `attached` written over the pods of `node`: the source itself, not a copy, where
/// that changes nothing (as once kubelet has written the addresses into the pods' status).
pub fn overlay(source: &Arc<LocalState>, attached: &PodAddresses, node: &str) -> Arc<LocalState> {
    let rewrites = |(pod, addresses): (&ObjectRef, &Vec<IpAddr>)| {
        source
            .pods
            .get(pod)
            .is_some_and(|local| local.node.as_deref() == Some(node) && local.ips != *addresses)
    };
    if !attached.iter().any(rewrites) {
        return source.clone();
    }
    let mut state = LocalState::clone(source);
    for (pod, addresses) in attached {
        let Some(local) = state.pods.get_mut(pod) else {
            continue;
        };
        if local.node.as_deref() == Some(node) {
            local.ips = addresses.clone();
        }
    }
    Arc::new(state)
}

/// Follows both inputs until `cancel`, sending the overlaid state whenever either changes.
pub fn spawn(
    mut source: watch::Receiver<Arc<LocalState>>,
    mut attached: watch::Receiver<Arc<PodAddresses>>,
    node: String,
    cancel: CancellationToken,
) -> watch::Receiver<Arc<LocalState>> {
    let first = overlay(
        &source.borrow_and_update(),
        &attached.borrow_and_update(),
        &node,
    );
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = source.changed() => if changed.is_err() { return },
                changed = attached.changed() => if changed.is_err() { return },
            }
            let state = overlay(
                &source.borrow_and_update(),
                &attached.borrow_and_update(),
                &node,
            );
            tx.send_if_modified(|current| {
                let differs = !Arc::ptr_eq(current, &state) && **current != *state;
                if differs {
                    *current = state;
                }
                differs
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_control::local::LocalPod;

    fn pod(name: &str, node: Option<&str>, ips: &[&str]) -> LocalPod {
        LocalPod {
            pod: ObjectRef {
                namespace: "default".into(),
                name: name.into(),
            },
            node: node.map(Into::into),
            labels: [("name".to_owned(), name.to_owned())].into(),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            service_account: "default".into(),
            ready: true,
            terminating: false,
        }
    }

    #[test]
    fn the_plugins_addresses_are_written_into_this_nodes_pods_only() {
        let mut source = LocalState::default();
        for p in [
            pod("new", Some("n1"), &[]),
            pod("stale", Some("n1"), &["100.64.1.99"]),
            pod("elsewhere", Some("n2"), &["100.64.2.10"]),
        ] {
            source.pods.insert(p.pod.clone(), p);
        }
        let key = |n: &str| ObjectRef {
            namespace: "default".into(),
            name: n.into(),
        };
        let attached: PodAddresses = [
            (key("new"), vec!["100.64.1.10".parse().unwrap()]),
            (key("stale"), vec!["100.64.1.11".parse().unwrap()]),
            (key("elsewhere"), vec!["100.64.1.12".parse().unwrap()]),
            (key("unknown"), vec!["100.64.1.13".parse().unwrap()]),
        ]
        .into();
        let source = Arc::new(source);
        let state = overlay(&source, &attached, "n1");
        let ips = |n: &str| state.pods[&key(n)].ips.clone();
        assert_eq!(ips("new"), attached[&key("new")]);
        assert_eq!(ips("stale"), attached[&key("stale")], "the veth's own win");
        assert_eq!(ips("elsewhere"), source.pods[&key("elsewhere")].ips);
        assert!(
            !state.pods.contains_key(&key("unknown")),
            "no pod is made up"
        );
    }

    #[test]
    fn where_the_plugin_changes_nothing_the_source_is_shared_not_copied() {
        let mut source = LocalState::default();
        for p in [
            pod("known", Some("n1"), &["100.64.1.10"]),
            pod("elsewhere", Some("n2"), &["100.64.2.10"]),
        ] {
            source.pods.insert(p.pod.clone(), p);
        }
        let source = Arc::new(source);
        let key = |n: &str| ObjectRef {
            namespace: "default".into(),
            name: n.into(),
        };
        let attached: PodAddresses = [
            (key("known"), vec!["100.64.1.10".parse().unwrap()]),
            (key("elsewhere"), vec!["100.64.1.12".parse().unwrap()]),
        ]
        .into();
        assert!(Arc::ptr_eq(&overlay(&source, &attached, "n1"), &source));
        assert!(Arc::ptr_eq(
            &overlay(&source, &PodAddresses::new(), "n1"),
            &source
        ));
        let moved: PodAddresses = [(key("known"), vec!["100.64.1.11".parse().unwrap()])].into();
        assert!(!Arc::ptr_eq(&overlay(&source, &moved, "n1"), &source));
    }
}
