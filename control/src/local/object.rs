//! One Kubernetes object of a kind meshpath reads, its key in [`LocalState`], and its translation:
//! the step both local sources share between "an object arrived" and "the state changed".

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::cilium::{self, CiliumNetworkPolicy};
use super::error::{Subject, TranslateError};
use super::kind::Kind;
use super::model::{
    LocalEndpointSlice, LocalNode, LocalPod, LocalPolicy, LocalService, LocalState, ObjectRef,
    PolicyKind, PolicyRef,
};
use super::refused::{cilium_coverage, netpol_coverage, refused_policy, UnsupportedPolicy};
use super::selector::Scope;
use super::{netpol, service, workload};

/// A namespaced object without `metadata.namespace` (as in a hand-written file) is in this one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// An object of one of the kinds the local sources read.
#[derive(Clone, Debug, PartialEq)]
pub enum KubeObject {
    Node(Box<Node>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    NetworkPolicy(Box<NetworkPolicy>),
    CiliumNetworkPolicy(Box<CiliumNetworkPolicy>),
    /// The same fields as a CiliumNetworkPolicy, cluster-scoped.
    CiliumClusterwideNetworkPolicy(Box<CiliumNetworkPolicy>),
    /// A policy document that does not parse as its kind: it is refused, and fails closed.
    UnsupportedPolicy(Box<UnsupportedPolicy>),
}

/// Where an object lives in [`LocalState`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKey {
    Node(String),
    Pod(ObjectRef),
    Service(ObjectRef),
    EndpointSlice(ObjectRef),
    Policy(PolicyRef),
}

/// A translated object, ready to go into [`LocalState`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalObject {
    Node(LocalNode),
    Pod(LocalPod),
    Service(LocalService),
    EndpointSlice(LocalEndpointSlice),
    Policy(LocalPolicy),
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, at) = match self {
            ObjectKey::Node(name) => return write!(f, "Node {name}"),
            ObjectKey::Pod(at) => ("Pod", at),
            ObjectKey::Service(at) => ("Service", at),
            ObjectKey::EndpointSlice(at) => ("EndpointSlice", at),
            ObjectKey::Policy(p) => return write!(f, "{p}"),
        };
        write!(f, "{kind} {}/{}", at.namespace, at.name)
    }
}

impl ObjectKey {
    /// The key of the object of `kind` named `name` (in `namespace`, for a namespaced kind).
    pub fn new(kind: Kind, namespace: Option<&str>, name: String) -> ObjectKey {
        let namespace = match kind.namespaced() {
            true => namespace.unwrap_or(DEFAULT_NAMESPACE).to_string(),
            false => String::new(),
        };
        let at = ObjectRef { namespace, name };
        let policy = |kind| {
            ObjectKey::Policy(PolicyRef {
                kind,
                policy: at.clone(),
            })
        };
        match kind {
            Kind::Node => ObjectKey::Node(at.name),
            Kind::Pod => ObjectKey::Pod(at),
            Kind::Service => ObjectKey::Service(at),
            Kind::EndpointSlice => ObjectKey::EndpointSlice(at),
            Kind::NetworkPolicy => policy(PolicyKind::NetworkPolicy),
            Kind::CiliumNetworkPolicy => policy(PolicyKind::CiliumNetworkPolicy),
            Kind::CiliumClusterwideNetworkPolicy => {
                policy(PolicyKind::CiliumClusterwideNetworkPolicy)
            }
        }
    }

    /// The kind of the object at this key.
    pub fn kind(&self) -> Kind {
        match self {
            ObjectKey::Node(_) => Kind::Node,
            ObjectKey::Pod(_) => Kind::Pod,
            ObjectKey::Service(_) => Kind::Service,
            ObjectKey::EndpointSlice(_) => Kind::EndpointSlice,
            ObjectKey::Policy(p) => Kind::of_policy(p.kind),
        }
    }
}

impl KubeObject {
    /// The object's kind as it names it: `Pod`.
    pub fn kind(&self) -> &'static str {
        self.object_kind().name()
    }

    pub fn object_kind(&self) -> Kind {
        match self {
            KubeObject::Node(_) => Kind::Node,
            KubeObject::Pod(_) => Kind::Pod,
            KubeObject::Service(_) => Kind::Service,
            KubeObject::EndpointSlice(_) => Kind::EndpointSlice,
            KubeObject::NetworkPolicy(_) => Kind::NetworkPolicy,
            KubeObject::CiliumNetworkPolicy(_) => Kind::CiliumNetworkPolicy,
            KubeObject::CiliumClusterwideNetworkPolicy(_) => Kind::CiliumClusterwideNetworkPolicy,
            KubeObject::UnsupportedPolicy(p) => Kind::of_policy(p.kind),
        }
    }

    fn metadata(&self) -> &ObjectMeta {
        match self {
            KubeObject::Node(o) => &o.metadata,
            KubeObject::Pod(o) => &o.metadata,
            KubeObject::Service(o) => &o.metadata,
            KubeObject::EndpointSlice(o) => &o.metadata,
            KubeObject::NetworkPolicy(o) => &o.metadata,
            KubeObject::CiliumNetworkPolicy(o) => &o.metadata,
            KubeObject::CiliumClusterwideNetworkPolicy(o) => &o.metadata,
            KubeObject::UnsupportedPolicy(o) => &o.metadata,
        }
    }

    fn subject(&self) -> Subject<'_> {
        let meta = self.metadata();
        let namespaced = self.object_kind().namespaced();
        Subject {
            kind: self.kind(),
            namespace: namespaced.then(|| meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)),
            name: meta.name.as_deref().unwrap_or("<unnamed>"),
        }
    }

    /// The object's key; fails only for an object without `metadata.name`.
    pub fn key(&self) -> Result<ObjectKey, TranslateError> {
        let subject = self.subject();
        let Some(name) = self.metadata().name.clone() else {
            return Err(subject.error("metadata.name", "missing"));
        };
        Ok(ObjectKey::new(self.object_kind(), subject.namespace, name))
    }

    /// The object as local state: `None` if it is valid but not part of it (a host-network pod). A
    /// policy that cannot be translated is not an error: it is refused, and denies what it covers.
    pub fn translate(&self) -> Result<(ObjectKey, Option<LocalObject>), TranslateError> {
        let key = self.key()?;
        let subject = self.subject();
        let object = match (&key, self) {
            (ObjectKey::Node(name), KubeObject::Node(n)) => {
                Some(LocalObject::Node(workload::node(n, name, &subject)?))
            }
            (ObjectKey::Pod(at), KubeObject::Pod(p)) => {
                workload::pod(p, at.clone(), &subject)?.map(LocalObject::Pod)
            }
            (ObjectKey::Service(at), KubeObject::Service(s)) => Some(LocalObject::Service(
                service::service(s, at.clone(), &subject)?,
            )),
            (ObjectKey::EndpointSlice(at), KubeObject::EndpointSlice(s)) => Some(
                LocalObject::EndpointSlice(service::endpoint_slice(s, at.clone(), &subject)?),
            ),
            (ObjectKey::Policy(policy), KubeObject::NetworkPolicy(p)) => {
                let ns = &policy.policy.namespace;
                let rules = netpol::translate(p, ns, &subject);
                Some(LocalObject::Policy(enforceable(policy, rules, || {
                    netpol_coverage(p)
                })))
            }
            (ObjectKey::Policy(policy), KubeObject::CiliumNetworkPolicy(p)) => {
                let scope = Scope::Namespace(&policy.policy.namespace);
                let rules = cilium::translate(p, scope, &subject);
                Some(LocalObject::Policy(enforceable(policy, rules, || {
                    cilium_coverage(p)
                })))
            }
            (ObjectKey::Policy(policy), KubeObject::CiliumClusterwideNetworkPolicy(p)) => {
                let rules = cilium::translate(p, Scope::Cluster, &subject);
                Some(LocalObject::Policy(enforceable(policy, rules, || {
                    cilium_coverage(p)
                })))
            }
            (ObjectKey::Policy(policy), KubeObject::UnsupportedPolicy(p)) => {
                let why = format!("{key}: {}", p.problem);
                Some(LocalObject::Policy(refused_policy(
                    policy.clone(),
                    why,
                    &p.coverage,
                )))
            }
            _ => None,
        };
        Ok((key, object))
    }
}

/// The policy as translated, or, if it cannot be, refused: what it covers is denied (fail closed).
fn enforceable(
    policy: &PolicyRef,
    rules: Result<Vec<meshpath_dataplane::policy::PolicyRule>, TranslateError>,
    coverage: impl FnOnce() -> Vec<super::refused::Coverage>,
) -> LocalPolicy {
    match rules {
        Ok(rules) => LocalPolicy {
            policy: policy.clone(),
            rules,
            refused: None,
        },
        Err(e) => refused_policy(policy.clone(), e.to_string(), &coverage()),
    }
}

impl LocalState {
    /// Puts `object` at `key`, or removes what is there when `object` is `None`.
    pub fn set(&mut self, key: &ObjectKey, object: Option<LocalObject>) {
        match object {
            None => self.remove(key),
            Some(LocalObject::Node(n)) => drop(self.nodes.insert(n.name.clone(), n)),
            Some(LocalObject::Pod(p)) => drop(self.pods.insert(p.pod.clone(), p)),
            Some(LocalObject::Service(s)) => drop(self.services.insert(s.service.clone(), s)),
            Some(LocalObject::EndpointSlice(s)) => {
                drop(self.endpoint_slices.insert(s.slice.clone(), s))
            }
            Some(LocalObject::Policy(p)) => drop(self.policies.insert(p.policy.clone(), p)),
        }
    }

    /// Does the state hold exactly `object` at `key` (nothing, for `None`)? Lets a source skip
    /// updates that change nothing it keeps, such as a pod's status heartbeat.
    pub fn holds(&self, key: &ObjectKey, object: Option<&LocalObject>) -> bool {
        match (key, object) {
            (ObjectKey::Node(k), Some(LocalObject::Node(o))) => self.nodes.get(k) == Some(o),
            (ObjectKey::Pod(k), Some(LocalObject::Pod(o))) => self.pods.get(k) == Some(o),
            (ObjectKey::Service(k), Some(LocalObject::Service(o))) => {
                self.services.get(k) == Some(o)
            }
            (ObjectKey::EndpointSlice(k), Some(LocalObject::EndpointSlice(o))) => {
                self.endpoint_slices.get(k) == Some(o)
            }
            (ObjectKey::Policy(k), Some(LocalObject::Policy(o))) => self.policies.get(k) == Some(o),
            (key, None) => !self.contains(key),
            _ => false,
        }
    }

    pub fn contains(&self, key: &ObjectKey) -> bool {
        match key {
            ObjectKey::Node(k) => self.nodes.contains_key(k),
            ObjectKey::Pod(k) => self.pods.contains_key(k),
            ObjectKey::Service(k) => self.services.contains_key(k),
            ObjectKey::EndpointSlice(k) => self.endpoint_slices.contains_key(k),
            ObjectKey::Policy(k) => self.policies.contains_key(k),
        }
    }

    pub fn remove(&mut self, key: &ObjectKey) {
        match key {
            ObjectKey::Node(name) => drop(self.nodes.remove(name)),
            ObjectKey::Pod(at) => drop(self.pods.remove(at)),
            ObjectKey::Service(at) => drop(self.services.remove(at)),
            ObjectKey::EndpointSlice(at) => drop(self.endpoint_slices.remove(at)),
            ObjectKey::Policy(policy) => drop(self.policies.remove(policy)),
        }
    }
}
