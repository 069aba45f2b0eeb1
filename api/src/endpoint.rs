//! The pods this node serves: `meshpath endpoint list`, in the shape of `cilium-dbg endpoint list`
//! (each endpoint's policy enforcement per direction, identity, labels with their source, addresses).

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::identity::Label;
use crate::text::Table;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRow {
    /// The endpoint's id on this node: the dataplane port that serves it.
    pub id: u16,
    /// `namespace/name`.
    pub pod: String,
    /// The node-side interface of its veth.
    pub interface: Option<String>,
    pub identity: u32,
    pub labels: Vec<Label>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// Whether policy is enforced on what it receives.
    pub ingress_enforced: bool,
    /// Whether policy is enforced on what it sends.
    pub egress_enforced: bool,
    pub state: EndpointState,
    /// What made its pod: the CNI plugin, or the agent's configuration.
    pub origin: EndpointOrigin,
}

named_enum! {
    /// Who made an endpoint's pod known to the agent.
    pub enum EndpointOrigin ("endpoint origin") {
        /// The CNI plugin `meshpath-cni`, as the container runtime ran it: attached while the agent runs.
        Cni => "cni",
        /// The agent's configuration (`pods`: an interface and MAC each), read at its start.
        Config => "config",
    }
}

named_enum! {
    pub enum EndpointState ("endpoint state") {
        /// In the tables the workers use now.
        Ready => "ready",
    }
}

/// `meshpath endpoint list` as `cilium-dbg endpoint list`: one label per line.
pub fn render(rows: &[EndpointRow]) -> String {
    let mut table = Table::new([
        "ENDPOINT",
        "POLICY (ingress)",
        "POLICY (egress)",
        "IDENTITY",
        "LABELS (source:key[=value])",
        "IPv6",
        "IPv4",
        "STATUS",
    ]);
    table.row(["", "ENFORCEMENT", "ENFORCEMENT"]);
    let enforcement = |on: bool| if on { "Enabled" } else { "Disabled" };
    for row in rows {
        let mut labels = row.labels.iter().map(Label::to_string);
        table.row([
            row.id.to_string(),
            enforcement(row.ingress_enforced).to_owned(),
            enforcement(row.egress_enforced).to_owned(),
            row.identity.to_string(),
            labels.next().unwrap_or_default(),
            row.ipv6.map_or(String::new(), |a| a.to_string()),
            row.ipv4.map_or(String::new(), |a| a.to_string()),
            row.state.to_string(),
        ]);
        for label in labels {
            table.row([
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                label,
            ]);
        }
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_as_cilium_dbg_lists_endpoints() {
        let row = EndpointRow {
            id: 2,
            pod: "default/x-wing".into(),
            interface: Some("pod1".into()),
            identity: 65537,
            labels: vec![
                "k8s:app=x-wing".parse().unwrap(),
                "k8s:io.kubernetes.pod.namespace=default".parse().unwrap(),
            ],
            ipv4: Some("100.64.1.10".parse().unwrap()),
            ipv6: None,
            ingress_enforced: true,
            egress_enforced: false,
            state: EndpointState::Ready,
            origin: EndpointOrigin::Cni,
        };
        let table = render(&[row]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("ENDPOINT  POLICY (ingress)  POLICY (egress)  IDENTITY"),
            "{table}"
        );
        assert_eq!(lines[1].trim(), "ENFORCEMENT       ENFORCEMENT");
        let fields: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            fields,
            [
                "2",
                "Enabled",
                "Disabled",
                "65537",
                "k8s:app=x-wing",
                "100.64.1.10",
                "ready"
            ]
        );
        assert_eq!(lines[3].trim(), "k8s:io.kubernetes.pod.namespace=default");
    }
}
