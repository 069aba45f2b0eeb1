//! The kinds of object the local sources read, and where the Kubernetes API serves each: its group,
//! version, resource name and scope. One table for every place that needs them — decoding a file or a
//! watch event by kind, the watchers' URLs, the RBAC rules in `deploy/rbac.yaml` and their test.

use super::model::PolicyKind;

/// A kind of object meshpath reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Node,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
        Kind::CiliumNetworkPolicy,
        Kind::CiliumClusterwideNetworkPolicy,
    ];

    /// The kind as objects name it (`kind: EndpointSlice`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            Kind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
        }
    }

    /// The API group, `""` for the core group.
    pub fn group(self) -> &'static str {
        match self {
            Kind::Node | Kind::Pod | Kind::Service => "",
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::NetworkPolicy => "networking.k8s.io",
            Kind::CiliumNetworkPolicy | Kind::CiliumClusterwideNetworkPolicy => "cilium.io",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Kind::CiliumNetworkPolicy | Kind::CiliumClusterwideNetworkPolicy => "v2",
            _ => "v1",
        }
    }

    /// `apiVersion` as objects of the kind carry it: `v1`, `discovery.k8s.io/v1`.
    pub fn api_version(self) -> String {
        match self.group() {
            "" => self.version().to_string(),
            group => format!("{group}/{}", self.version()),
        }
    }

    /// The resource's name in URLs and RBAC rules: `endpointslices`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::CiliumNetworkPolicy => "ciliumnetworkpolicies",
            Kind::CiliumClusterwideNetworkPolicy => "ciliumclusterwidenetworkpolicies",
        }
    }

    /// Whether objects of the kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Node | Kind::CiliumClusterwideNetworkPolicy)
    }

    /// The resource as `kubectl` and error messages name it: `pods`, `endpointslices.discovery.k8s.io`.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices.discovery.k8s.io",
            Kind::NetworkPolicy => "networkpolicies.networking.k8s.io",
            Kind::CiliumNetworkPolicy => "ciliumnetworkpolicies.cilium.io",
            Kind::CiliumClusterwideNetworkPolicy => "ciliumclusterwidenetworkpolicies.cilium.io",
        }
    }

    /// The kind of a policy.
    pub fn of_policy(kind: PolicyKind) -> Kind {
        match kind {
            PolicyKind::NetworkPolicy => Kind::NetworkPolicy,
            PolicyKind::CiliumNetworkPolicy => Kind::CiliumNetworkPolicy,
            PolicyKind::CiliumClusterwideNetworkPolicy => Kind::CiliumClusterwideNetworkPolicy,
        }
    }

    /// The policy kind, for the kinds that are policies.
    pub fn policy(self) -> Option<PolicyKind> {
        match self {
            Kind::NetworkPolicy => Some(PolicyKind::NetworkPolicy),
            Kind::CiliumNetworkPolicy => Some(PolicyKind::CiliumNetworkPolicy),
            Kind::CiliumClusterwideNetworkPolicy => {
                Some(PolicyKind::CiliumClusterwideNetworkPolicy)
            }
            _ => None,
        }
    }

    /// The kind an object's `apiVersion` and `kind` name, if meshpath reads it.
    pub fn of_type(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == kind && k.api_version() == api_version)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_found_by_its_type_and_only_by_it() {
        for kind in Kind::ALL {
            assert_eq!(Kind::of_type(&kind.api_version(), kind.name()), Some(kind));
            assert!(kind.resource().starts_with(kind.plural()));
        }
        assert_eq!(Kind::of_type("v1", "Secret"), None);
        assert_eq!(Kind::of_type("v2", "Pod"), None);
        assert_eq!(
            Kind::EndpointSlice.resource(),
            "endpointslices.discovery.k8s.io"
        );
    }
}
