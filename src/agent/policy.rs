//! The compiled policy of every pod on this node, for `meshpath policy get`: read from the snapshot
//! the workers use now, so it is what is enforced, not what was written. Off the packet path.

use meshpath_api::policy::{
    AllowRow, DirectionRow, EndpointPolicyRow, PolicyPeer, PolicyRefusalRow, PortGrant,
};
use meshpath_api::Protocol;
use meshpath_dataplane::policy::{DirectionPolicy, PeerGrant, PortSet};
use meshpath_dataplane::snapshot::Tables;

use super::identities;

/// Every endpoint of `tables`, by name.
pub fn rows(tables: &Tables) -> Vec<EndpointPolicyRow> {
    let mut out: Vec<EndpointPolicyRow> = tables
        .endpoints
        .iter()
        .map(|endpoint| {
            let policy = tables.policy.policy(endpoint.identity);
            let denied_by = |ingress: bool| -> Vec<String> {
                let refusals = tables.policy.refusals_of(endpoint.identity);
                refusals
                    .filter(|r| if ingress { r.ingress } else { r.egress })
                    .map(|r| format!("{}: {}", r.policy, r.why))
                    .collect()
            };
            let mut ingress = direction(&policy.ingress);
            ingress.denied_by = denied_by(true);
            let mut egress = direction(&policy.egress);
            egress.denied_by = denied_by(false);
            EndpointPolicyRow {
                endpoint: endpoint.name.to_string(),
                identity: endpoint.identity.get(),
                ingress,
                egress,
            }
        })
        .collect();
    out.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
    out
}

fn direction(policy: &DirectionPolicy) -> DirectionRow {
    let DirectionPolicy::Enforced(enforced) = policy else {
        return DirectionRow {
            enforced: false,
            allow: Vec::new(),
            denied_by: Vec::new(),
        };
    };
    let mut peers: Vec<_> = enforced.peers().collect();
    peers.sort_by_key(|(peer, _)| *peer);
    let any = Some((PolicyPeer::Any, enforced.any_peer()));
    let allow = any
        .into_iter()
        .chain(peers.into_iter().map(|(p, g)| (identities::peer(p), g)))
        .filter_map(|(peer, grant)| {
            let ports = ports(grant);
            (!ports.is_empty()).then_some(AllowRow { peer, ports })
        })
        .collect();
    DirectionRow {
        enforced: true,
        allow,
        denied_by: Vec::new(),
    }
}

/// Every policy refusal of `tables`, for `meshpath status`.
pub fn refusals(tables: &Tables) -> Vec<PolicyRefusalRow> {
    tables
        .policy
        .refusals()
        .iter()
        .map(|r| PolicyRefusalRow {
            policy: r.policy.clone(),
            why: r.why.clone(),
            endpoints: r.endpoints.iter().map(|e| e.get()).collect(),
            ingress: r.ingress,
            egress: r.egress,
        })
        .collect()
}

fn ports(grant: &PeerGrant) -> Vec<PortGrant> {
    if grant.all {
        return vec![PortGrant::All];
    }
    let named = |set: &PortSet, protocol: Protocol| {
        set.ranges()
            .iter()
            .map(move |&(first, last)| PortGrant::Ports {
                first,
                last,
                protocol,
            })
            .collect::<Vec<_>>()
    };
    let mut out = named(&grant.tcp, Protocol::Tcp);
    out.extend(named(&grant.udp, Protocol::Udp));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_dataplane::endpoint::Endpoint;
    use meshpath_dataplane::policy::{
        compile, IdentityLabels, IngressRule, LabelSelector, Labels, Peer, PolicyRule, PortRule,
        Protocol,
    };
    use meshpath_dataplane::snapshot::Capacities;
    use meshpath_dataplane::{testbed, ClusterId, Identity, PortId};

    /// rebel-base admits x-wing of any cluster on 80/TCP; x-wing has no rule.
    #[test]
    fn rows_read_the_compiled_table() {
        let (xwing, base, remote) = (
            Identity::new(0x1_0001).unwrap(),
            Identity::new(0x1_0002).unwrap(),
            Identity::new(0x2_0001).unwrap(),
        );
        let mut ids = IdentityLabels::new();
        ids.insert(xwing, Labels::new().with("app", "x-wing"));
        ids.insert(base, Labels::new().with("app", "rebel-base"));
        ids.insert(remote, Labels::new().with("app", "x-wing"));
        let rule = PolicyRule {
            endpoint_selector: LabelSelector::all().with_label("app", "rebel-base"),
            ingress: Some(vec![IngressRule {
                from: vec![Peer::Endpoints(
                    LabelSelector::all().with_label("app", "x-wing"),
                )],
                to_ports: vec![PortRule::new(Protocol::Tcp, 80)],
            }]),
            egress: None,
        };
        let mut tables = Tables::empty(testbed::node_config(), Capacities::default());
        tables.policy = compile(
            &[rule],
            &ids,
            ClusterId::new(1).unwrap(),
            &Default::default(),
        );
        for (port, id, name) in [
            (1, base, "default/rebel-base"),
            (2, xwing, "default/x-wing"),
        ] {
            let endpoint = Endpoint {
                port: PortId(port),
                mac: [2, 0, 0, 0, 1, port as u8],
                ipv4: Some([10, 1, 0, port as u8].into()),
                ipv6: None,
                identity: id,
                name: name.into(),
            };
            tables.endpoints.insert(endpoint).unwrap();
        }
        let rows = rows(&tables);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].endpoint.as_str(), rows[0].identity),
            ("default/rebel-base", base.get())
        );
        assert!(rows[0].ingress.enforced && !rows[0].egress.enforced);
        let peers: Vec<(String, Vec<String>)> = rows[0]
            .ingress
            .allow
            .iter()
            .map(|a| {
                (
                    a.peer.to_string(),
                    a.ports.iter().map(|p| p.to_string()).collect(),
                )
            })
            .collect();
        let port80 = vec!["80/TCP".to_owned()];
        assert_eq!(
            peers,
            vec![("65537".into(), port80.clone()), ("131073".into(), port80)]
        );
        assert!(!rows[1].ingress.enforced && !rows[1].egress.enforced);
    }

    #[test]
    fn grants_named_with_their_ports() {
        let mut grant = PeerGrant::default();
        grant.tcp.insert(80, 80);
        grant.udp.insert(1000, 2000);
        let text = |grant: &PeerGrant| -> Vec<String> {
            ports(grant).iter().map(ToString::to_string).collect()
        };
        assert_eq!(text(&grant), vec!["80/TCP", "1000-2000/UDP"]);
        grant.all = true;
        assert_eq!(text(&grant), vec!["all"]);
        assert!(ports(&PeerGrant::default()).is_empty());
    }
}
