//! A pod's identity labels: its own labels that Cilium's default filter keeps ([`label_filter`]), its
//! namespace and its cluster. The dataplane matches them without a source prefix; the kvstore label
//! string carries Cilium's `k8s:` source.
//!
//! [`label_filter`]: super::label_filter

use meshpath_dataplane::policy::{Labels, CLUSTER_LABEL};

use super::label_filter::identity_relevant;
use crate::cluster_name::ClusterName;
use crate::kvstore::{LabelError, LabelSet};
use crate::local::{LocalPod, NAMESPACE_LABEL};

/// The source of every label we derive from Kubernetes objects.
pub const LABEL_SOURCE: &str = "k8s";

/// The labels a pod's security identity is made of.
pub fn identity_labels(pod: &LocalPod, cluster: &ClusterName) -> Labels {
    let mut labels: Labels = pod
        .labels
        .iter()
        .filter(|(key, _)| identity_relevant(key))
        .collect();
    labels.insert(NAMESPACE_LABEL, &pod.pod.namespace);
    labels.insert(CLUSTER_LABEL, cluster.as_str());
    labels
}

/// The kvstore form of `labels`, each under the `k8s` source.
pub fn label_set(labels: &Labels) -> Result<LabelSet, LabelError> {
    let mut set = LabelSet::new();
    for (key, value) in labels.iter() {
        set.insert(LABEL_SOURCE, key, value)?;
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::ObjectRef;
    use proptest::prelude::*;

    fn pod(labels: &[(&str, &str)]) -> LocalPod {
        LocalPod {
            pod: ObjectRef {
                namespace: "empire".into(),
                name: "x-wing-1".into(),
            },
            node: Some("n1".into()),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ips: vec![],
            service_account: "default".into(),
            ready: true,
            terminating: false,
        }
    }

    #[test]
    fn adds_namespace_and_cluster_and_renders_like_cilium() {
        let c = ClusterName::new("cluster1").unwrap();
        let labels = identity_labels(&pod(&[("name", "x-wing")]), &c);
        assert_eq!(labels.get("io.kubernetes.pod.namespace"), Some("empire"));
        assert_eq!(labels.get(CLUSTER_LABEL), Some("cluster1"));
        assert_eq!(
            label_set(&labels).unwrap().to_string(),
            "k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace=empire;k8s:name=x-wing;"
        );
    }

    #[test]
    fn a_rollout_does_not_change_the_identity_labels() {
        let c = ClusterName::new("cluster1").unwrap();
        let before = pod(&[("app", "web"), ("pod-template-hash", "5d8f9c7b6")]);
        let after = pod(&[("app", "web"), ("pod-template-hash", "7c9d4f5b8")]);
        let set = |p: &LocalPod| label_set(&identity_labels(p, &c)).unwrap().to_string();
        assert_eq!(set(&before), set(&after));
        assert!(
            !set(&before).contains("pod-template-hash"),
            "{}",
            set(&before)
        );
    }

    #[test]
    fn a_pod_cannot_override_its_namespace_or_cluster() {
        let c = ClusterName::new("cluster1").unwrap();
        let labels = identity_labels(
            &pod(&[(CLUSTER_LABEL, "cluster9"), (NAMESPACE_LABEL, "other")]),
            &c,
        );
        assert_eq!(labels.get(CLUSTER_LABEL), Some("cluster1"));
        assert_eq!(labels.get(NAMESPACE_LABEL), Some("empire"));
    }

    #[test]
    fn a_label_that_breaks_the_label_string_is_refused() {
        let c = ClusterName::new("cluster1").unwrap();
        let labels = identity_labels(&pod(&[("a", "b;c")]), &c);
        assert!(matches!(label_set(&labels), Err(LabelError::Reserved(_))));
    }

    proptest! {
        #[test]
        fn label_set_parses_back(pairs in prop::collection::btree_map("[a-z][a-z0-9./-]{0,12}", "[a-zA-Z0-9._-]{0,12}", 0..6)) {
            let labels: Labels = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let set = label_set(&labels).unwrap();
            let parsed = LabelSet::parse(&set.to_string()).unwrap();
            prop_assert_eq!(&parsed, &set);
            for (k, v) in &pairs {
                prop_assert_eq!(parsed.get(k), Some(v.as_str()));
            }
        }
    }
}
