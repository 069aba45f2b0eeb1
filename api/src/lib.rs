//! The interface between a meshpath agent and whoever reads it: the operator CLI, the lab's demo and
//! the tests.
//!
//! It owns the documents the agent serves on its status socket ([`status::AgentStatus`] and the rows
//! in it) and on its observe socket ([`flow::FlowResponse`], in Hubble's shape, and the filters of
//! [`flow_filter`]), what the CNI plugin and the agent say on the pod socket ([`cni`]), the
//! [`client`] that fetches them, and the human
//! tables the CLI prints of them. Every field is typed — enums for verdicts, drop reasons, directions
//! and backend states; addresses, frontends and port ranges as values, not strings — and serialises to
//! the JSON `-o json` has always printed.
//!
//! It does not know how the agent computes any of it: the agent converts its dataplane and control
//! state into these types, so this crate depends on serde alone (no tokio, no dataplane), and a reader
//! of the agent builds in seconds.

#[macro_use]
mod text;

pub mod client;
pub mod clustermesh;
pub mod cni;
pub mod drop_reason;
pub mod encryption;
pub mod endpoint;
pub mod flow;
pub mod flow_filter;
pub mod forward;
pub mod health;
pub mod identity;
pub mod kvstore;
pub mod local_source;
pub mod node;
pub mod policy;
pub mod protocol;
pub mod service;
pub mod status;
pub mod version;

pub use client::{Client, ClientError};
pub use drop_reason::DropReason;
pub use forward::ForwardKind;
pub use protocol::Protocol;
pub use status::AgentStatus;
pub use text::{Table, UnknownName};
