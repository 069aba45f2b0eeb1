//! The configuration of an external workload: `mode: external` and its `external` section, checked
//! against the rest of the file.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::super::config::AgentConfig;

/// What the agent serves.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A Kubernetes node: its pods behind veths, its own traffic through the host port.
    #[default]
    Node,
    /// A VM or bare-metal host outside Kubernetes that joins the cluster of `cluster` and `etcd`:
    /// no pods, the host itself its only endpoint, behind the host port.
    External,
}

/// `external`: who the host is in the cluster it joins.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExternalSection {
    /// The host's labels, as a pod's: policies select it by them (e.g. `{app: vm-db}`).
    pub labels: BTreeMap<String, String>,
    /// The namespace its endpoint is in (`io.kubernetes.pod.namespace` of its identity), `default`
    /// unless set, as Cilium's external workloads.
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

fn default_namespace() -> String {
    "default".into()
}

/// The labels Kubernetes and Cilium keep for themselves: an external workload may not claim them.
const RESERVED_PREFIXES: [&str; 3] = ["io.cilium.k8s.", "io.kubernetes.", "k8s:"];

/// Checks that the mode and the `external` section agree with each other and with the rest.
pub fn check(config: &AgentConfig) -> Result<(), (&'static str, String)> {
    let external = match (config.mode, &config.external) {
        (Mode::Node, None) => return Ok(()),
        (Mode::Node, Some(_)) => {
            return Err(("external", "only with `mode: external`".into()));
        }
        (Mode::External, None) => {
            return Err((
                "external",
                "`mode: external` needs `external: {labels: {...}}`".into(),
            ));
        }
        (Mode::External, Some(external)) => external,
    };
    if config.etcd.is_none() {
        return Err((
            "etcd",
            "an external workload joins its cluster through that cluster's etcd".into(),
        ));
    }
    if config.node.ipv4.is_none() {
        return Err((
            "node.ipv4",
            "an external workload is reached at the host's own IPv4 address".into(),
        ));
    }
    if config.dataplane.routing != super::super::config::Routing::Tunnel {
        // Plain frames for the host's address go to its kernel, around its ingress policy.
        return Err((
            "dataplane.routing",
            "an external workload is reached through tunnels only: `routing: tunnel`".into(),
        ));
    }
    if !config.pods.is_empty() {
        return Err(("pods", "an external workload has no pods".into()));
    }
    if config.source.kubernetes.is_some() {
        return Err((
            "source.kubernetes",
            "an external workload is no Kubernetes node: its policies come from `yaml-dir`".into(),
        ));
    }
    if external.labels.is_empty() {
        return Err((
            "external.labels",
            "at least one label: policies select the host by them".into(),
        ));
    }
    let reserved = external
        .labels
        .keys()
        .find(|k| RESERVED_PREFIXES.iter().any(|p| k.starts_with(p)));
    if let Some(key) = reserved {
        return Err((
            "external.labels",
            format!("`{key}` is a label Kubernetes or Cilium sets, not the host's to claim"),
        ));
    }
    if !is_dns_label(&external.namespace) {
        return Err((
            "external.namespace",
            format!(
                "`{}` is no namespace name (1 to 63 of a-z, 0-9 and -, a letter or digit at each end)",
                external.namespace
            ),
        ));
    }
    Ok(())
}

/// A Kubernetes namespace name: an RFC 1123 label.
fn is_dns_label(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&name.len())
        && name.chars().all(|c| alnum(c) || c == '-')
        && name.starts_with(alnum)
        && name.ends_with(alnum)
}
