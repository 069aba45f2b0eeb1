//! The local state model: the Kubernetes objects meshpath acts on, reduced to what it needs.
//!
//! Labels are plain `key → value` maps without Cilium's source prefix (`k8s:`); policies are already
//! translated into the dataplane's rule model, with Kubernetes' namespace scoping made explicit through
//! the [`NAMESPACE_LABEL`] label.

use std::collections::BTreeMap;
use std::net::IpAddr;

use meshpath_dataplane::policy::PolicyRule;

/// The label every endpoint carries with its namespace (Cilium's name for it).
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

pub type Labels = BTreeMap<String, String>;

/// Everything the local source knows, at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalState {
    pub nodes: BTreeMap<String, LocalNode>,
    pub pods: BTreeMap<ObjectRef, LocalPod>,
    pub services: BTreeMap<ObjectRef, LocalService>,
    pub endpoint_slices: BTreeMap<ObjectRef, LocalEndpointSlice>,
    pub policies: BTreeMap<PolicyRef, LocalPolicy>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalNode {
    pub name: String,
    /// `status.addresses` of type InternalIP: the underlay addresses.
    pub internal_ips: Vec<IpAddr>,
    /// `spec.podCIDRs`, e.g. `100.64.1.0/24`.
    pub pod_cidrs: Vec<String>,
    pub labels: Labels,
    /// Its WireGuard public key (base64), from Cilium's annotation `network.cilium.io/wg-pub-key`;
    /// checked to be one.
    pub wireguard_pub_key: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPod {
    pub pod: ObjectRef,
    /// `spec.nodeName`; `None` while unscheduled.
    pub node: Option<String>,
    pub labels: Labels,
    /// `status.podIPs`.
    pub ips: Vec<IpAddr>,
    pub service_account: String,
    /// The Ready condition.
    pub ready: bool,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
}

/// Which backends a global service prefers (`service.cilium.io/affinity`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Affinity {
    #[default]
    None,
    Local,
    Remote,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalService {
    pub service: ObjectRef,
    /// `spec.clusterIPs` (none for headless services).
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<LocalServicePort>,
    pub selector: Labels,
    /// `service.cilium.io/global: "true"` (or the legacy `io.cilium/global-service`).
    pub global: bool,
    /// `service.cilium.io/shared` (default true): export local backends to other clusters.
    pub shared: bool,
    pub affinity: Affinity,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalServicePort {
    pub name: String,
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
    pub port: u16,
}

/// An EndpointSlice: backends of the service named by its `kubernetes.io/service-name` label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpointSlice {
    pub slice: ObjectRef,
    pub service: ObjectRef,
    pub ports: Vec<LocalServicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (absent counts as ready, as Kubernetes says).
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
    /// `targetRef` when it names a Pod.
    pub pod: Option<ObjectRef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    NetworkPolicy,
    CiliumNetworkPolicy,
    /// Cluster-scoped: its selectors reach endpoints of every namespace.
    CiliumClusterwideNetworkPolicy,
}

impl PolicyKind {
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
        }
    }

    /// Whether policies of the kind live in a namespace (and select only its endpoints).
    pub fn namespaced(self) -> bool {
        self != PolicyKind::CiliumClusterwideNetworkPolicy
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRef {
    pub kind: PolicyKind,
    pub policy: ObjectRef,
}

impl std::fmt::Display for PolicyRef {
    /// `CiliumNetworkPolicy default/x-wing` (`CiliumClusterwideNetworkPolicy x-wing`), as
    /// `kubectl` names it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = self.kind.name();
        match self.kind.namespaced() {
            true => write!(f, "{kind} {}/{}", self.policy.namespace, self.policy.name),
            false => write!(f, "{kind} {}", self.policy.name),
        }
    }
}

/// A policy object translated into dataplane rules. Selectors are scoped as Kubernetes and Cilium scope
/// them: a namespaced policy selects only endpoints of its namespace (its `endpoint_selector` carries
/// `NAMESPACE_LABEL`), and a peer selector without a namespace means the policy's namespace; a
/// cluster-wide policy's selectors, and its peers', reach every namespace.
///
/// A policy that cannot be enforced as written (`refused`: why) keeps rules that say only what it
/// selects and which directions it covers, with no grants: those endpoints are denied there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPolicy {
    pub policy: PolicyRef,
    pub rules: Vec<PolicyRule>,
    pub refused: Option<String>,
}
