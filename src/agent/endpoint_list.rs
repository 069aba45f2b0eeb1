//! The pods this node serves, for `meshpath endpoint list`: from the snapshot the workers use now
//! (so it is what is in force), with each identity's labels and each direction's enforcement.

use meshpath_api::endpoint::{EndpointRow, EndpointState};
use meshpath_dataplane::policy::DirectionPolicy;
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::PortId;

use super::identities::IdentityDirectory;

/// Every endpoint of `tables`, by id; `interface` names each one's port.
pub fn rows(
    tables: &Tables,
    identities: &IdentityDirectory,
    interface: impl Fn(PortId) -> Option<String>,
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
            }
        })
        .collect();
    rows.sort_by_key(|r| r.id);
    rows
}
