//! Stage 4, identity-based policy as Cilium does it: may this peer identity talk to this local
//! endpoint identity, on this protocol and port, in this direction?
//!
//! Runs after the ipcache (which gave the peer's identity) and service selection, for a flow's first
//! packet; conntrack lets the rest of the flow through. Rules ([`rule`]) select endpoints and peers by
//! labels ([`selector`]); [`compile`] turns them and the identity table into a [`PolicyTable`] in the
//! control plane, and workers only do hash lookups in it.

pub mod compile;
pub mod rule;
pub mod selector;
pub mod table;

pub use compile::{
    compile, compile_policies, IdentityLabels, PolicyError, PolicyLimits, PolicySource,
};
pub use rule::{
    DirectionRule, EgressRule, Entity, IngressRule, Peer, PolicyRule, PortRule, Protocol,
};
pub use selector::{LabelExpression, LabelSelector, Labels, Operator, CLUSTER_LABEL};
pub use table::{
    DirectionPolicy, EndpointPolicy, EnforcedPolicy, PeerGrant, PolicyRefusal, PolicyTable, PortSet,
};
