//! Nodes and Pods → [`LocalNode`] and [`LocalPod`]: the underlay addresses and the endpoints.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::error::{Subject, TranslateError};
use super::model::{LocalNode, LocalPod, ObjectRef};
use crate::resolve::parse_wireguard_key;

pub(crate) fn node(
    node: &Node,
    name: &str,
    subject: &Subject,
) -> Result<LocalNode, TranslateError> {
    let status = node.status.as_ref();
    let addresses = status
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    let internal_ips = addresses
        .iter()
        .enumerate()
        .filter(|(_, a)| a.type_ == "InternalIP")
        .map(|(i, a)| {
            ip(
                &a.address,
                subject,
                &format!("status.addresses[{i}].address"),
            )
        })
        .collect::<Result<_, _>>()?;
    let spec = node.spec.as_ref();
    let pod_cidrs = match spec.and_then(|s| s.pod_cidrs.clone()) {
        Some(cidrs) if !cidrs.is_empty() => cidrs,
        _ => spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
    };
    let annotations = node.metadata.annotations.as_ref();
    let wireguard_pub_key = annotations
        .and_then(|a| a.get(WIREGUARD_KEY_ANNOTATION))
        .map(|key| match parse_wireguard_key(key) {
            Some(_) => Ok(key.clone()),
            None => Err(subject.error(
                format!("metadata.annotations.{WIREGUARD_KEY_ANNOTATION}"),
                format!("`{key}` is not a base64 X25519 public key"),
            )),
        })
        .transpose()?;
    Ok(LocalNode {
        name: name.to_string(),
        internal_ips,
        pod_cidrs,
        labels: node.metadata.labels.clone().unwrap_or_default(),
        wireguard_pub_key,
    })
}

/// Where Cilium's agent publishes its node's WireGuard public key on the Node.
pub const WIREGUARD_KEY_ANNOTATION: &str = "network.cilium.io/wg-pub-key";

/// `None` for pods that are not endpoints: host-network pods (their address is the node's) and pods
/// that have finished (their address may already belong to another pod).
pub(crate) fn pod(
    pod: &Pod,
    at: ObjectRef,
    subject: &Subject,
) -> Result<Option<LocalPod>, TranslateError> {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return Ok(None);
    }
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return Ok(None);
    }
    let listed = status
        .and_then(|s| s.pod_ips.as_deref())
        .unwrap_or_default();
    let mut ips = listed
        .iter()
        .enumerate()
        .map(|(i, p)| ip(&p.ip, subject, &format!("status.podIPs[{i}].ip")))
        .collect::<Result<Vec<_>, _>>()?;
    if ips.is_empty() {
        if let Some(single) = status.and_then(|s| s.pod_ip.as_deref()) {
            ips.push(ip(single, subject, "status.podIP")?);
        }
    }
    let conditions = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let ready = conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    Ok(Some(LocalPod {
        pod: at,
        node: spec.and_then(|s| s.node_name.clone()),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ips,
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_string()),
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
    }))
}

pub(crate) fn ip(text: &str, subject: &Subject, field: &str) -> Result<IpAddr, TranslateError> {
    text.parse()
        .map_err(|_| subject.error(field, format!("`{text}` is not an IP address")))
}

#[cfg(test)]
mod tests {
    use super::super::object::LocalObject;
    use super::super::yaml::parse_objects;

    fn translate(yaml: &str) -> Option<LocalObject> {
        parse_objects(yaml)
            .unwrap()
            .remove(0)
            .object
            .translate()
            .unwrap()
            .1
    }

    #[test]
    fn node_addresses_and_cidrs() {
        let yaml = r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "c1-n1", "labels": {"kubernetes.io/hostname": "c1-n1"}},
          "spec": {"podCIDR": "100.64.1.0/24", "podCIDRs": ["100.64.1.0/24"]},
          "status": {"addresses": [{"type": "InternalIP", "address": "198.18.1.11"}, {"type": "Hostname", "address": "c1-n1"}]}}"#;
        let Some(LocalObject::Node(node)) = translate(yaml) else {
            panic!()
        };
        assert_eq!(
            node.internal_ips,
            ["198.18.1.11".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(node.pod_cidrs, ["100.64.1.0/24"]);
        assert_eq!(node.labels.len(), 1);
    }

    #[test]
    fn a_nodes_wireguard_key_is_read_from_ciliums_annotation_and_checked() {
        let node = |key: &str| {
            format!(
                r#"{{"apiVersion": "v1", "kind": "Node", "metadata": {{"name": "n", "annotations": {{"network.cilium.io/wg-pub-key": "{key}"}}}},
          "status": {{"addresses": [{{"type": "InternalIP", "address": "198.18.1.11"}}]}}}}"#
            )
        };
        let key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
        let Some(LocalObject::Node(n)) = translate(&node(key)) else {
            panic!()
        };
        assert_eq!(n.wireguard_pub_key.as_deref(), Some(key));
        let objects = parse_objects(&node("AQID")).unwrap();
        let error = objects[0].object.translate().unwrap_err();
        assert_eq!(
            error.field,
            "metadata.annotations.network.cilium.io/wg-pub-key"
        );
        assert!(
            error.problem.contains("not a base64 X25519 public key"),
            "{error}"
        );
    }

    #[test]
    fn host_network_and_finished_pods_are_not_endpoints() {
        let pod = |extra_spec: &str, phase: &str| {
            format!(
                r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "p", "namespace": "n", "deletionTimestamp": "2026-11-20T09:14:02Z"}},
          "spec": {{"containers": [] {extra_spec}}}, "status": {{"phase": "{phase}", "podIP": "100.64.1.9"}}}}"#
            )
        };
        let Some(LocalObject::Pod(p)) = translate(&pod("", "Running")) else {
            panic!()
        };
        assert_eq!(p.ips.len(), 1, "podIP when podIPs is absent");
        assert!(p.terminating && !p.ready);
        assert_eq!(p.service_account, "default");
        assert!(translate(&pod(r#", "hostNetwork": true"#, "Running")).is_none());
        assert!(translate(&pod("", "Succeeded")).is_none());
    }
}
