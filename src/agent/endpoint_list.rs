//! The pods this node serves, for `meshpath endpoint list`: from the snapshot the workers use now
//! (so it is what is in force), with each identity's labels, each direction's enforcement, and what made
//! each pod known: a port the agent's configuration lists, or one the CNI plugin attached.

use meshpath_api::endpoint::{EndpointOrigin, EndpointRow, EndpointState};
use meshpath_dataplane::policy::DirectionPolicy;
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::PortId;

use super::identities::IdentityDirectory;

/// Every endpoint of `tables`, by id; `interface` names each one's port; `configured`: the ports of the
/// configuration's pods (every other pod port is one the plugin attached).
pub fn rows(
    tables: &Tables,
    identities: &IdentityDirectory,
    interface: impl Fn(PortId) -> Option<String>,
    configured: &[PortId],
) -> Vec<EndpointRow> {
    let mut rows: Vec<EndpointRow> = tables
        .endpoints
        .iter()
        .map(|e| {
            let policy = tables.policy.policy(e.identity);
            EndpointRow {
                id: e.port.0,
                pod: e.name.to_string(),
                interface: interface(e.port),
                identity: e.identity.get(),
                labels: identities.labels(e.identity.get()),
                ipv4: e.ipv4,
                ipv6: e.ipv6,
                ingress_enforced: matches!(policy.ingress, DirectionPolicy::Enforced(_)),
                egress_enforced: matches!(policy.egress, DirectionPolicy::Enforced(_)),
                state: EndpointState::Ready,
                origin: if configured.contains(&e.port) {
                    EndpointOrigin::Config
                } else {
                    EndpointOrigin::Cni
                },
            }
        })
        .collect();
    rows.sort_by_key(|r| r.id);
    rows
}
