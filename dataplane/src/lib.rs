//! The meshpath dataplane: everything that happens to a frame between the AF_XDP receive ring and the
//! transmit ring, as a pure function of the frame, an immutable snapshot of the tables and the worker's
//! own state (conntrack, counters).
//!
//! Packet path, one module per stage:
//! [`parse`] → [`wireguard`] (decrypt) → [`tunnel`] (decap) → [`endpoint`] (anti-spoofing) →
//! [`gateway`] (ARP/ND) → [`ipcache`] → [`service`] + [`conntrack`] + [`nat`] → [`policy`] → [`route`] →
//! [`tunnel`] (encap) → [`wireguard`] (encrypt) → transmit.
//! [`pipeline`] runs the stages over a batch, on the worker that owns the frame's flow ([`steering`]).
//!
//! Not here: AF_XDP sockets and worker threads (the `meshpath-xdp-redirect` crate and the agent), and
//! where the tables come from (the `meshpath-control` crate builds [`snapshot::Tables`]).

#[cfg(feature = "afxdp")]
pub mod afxdp;
pub mod conntrack;
pub mod drop;
pub mod endpoint;
pub mod flow;
pub mod flowlog;
pub mod frame;
pub mod gateway;
pub mod handover;
pub mod hash;
pub mod icmp_error;
pub mod identity;
pub mod ipcache;
pub mod masquerade;
pub mod nat;
pub mod offload;
pub mod parse;
pub mod pipeline;
pub mod pmtu;
pub mod policy;
pub mod prefetch;
pub mod route;
pub mod service;
pub mod snapshot;
pub mod stats;
pub mod steering;
#[cfg(feature = "testbed")]
pub mod testbed;
pub mod tunnel;
pub mod wire;
pub mod wireguard;

pub use drop::DropReason;
pub use flow::{Addr, FlowKey};
pub use frame::{Frame, PortId};
pub use identity::{ClusterId, Identity};
pub use pipeline::{Verdict, WorkerState};
