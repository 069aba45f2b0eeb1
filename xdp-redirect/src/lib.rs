//! The XDP side of meshpath: a minimal XDP program on every pod-facing veth, on the node's host port and
//! on the node uplink that redirects what the dataplane owns (pod traffic, the node's traffic into the
//! mesh, tunnel and WireGuard traffic — UDP 8472, 6081, 51871 — from known nodes, local pod addresses,
//! replies to masqueraded flows) into AF_XDP sockets through an XSKMAP and passes everything else to
//! the kernel; and the loader that attaches it.
//! It fails closed: what the dataplane owns is dropped and counted while no socket is registered for
//! it, never handed to the kernel.
//!
//! One [`XdpRedirect`] is loaded per interface (its XSKMAP is keyed by that interface's rx queue), its
//! sockets registered, then [`XdpRedirect::attach`]ed; the [`Attachment`] detaches on drop unless kept
//! (a stopping agent keeps it, so the node stays closed). Attaching where our program already runs
//! replaces it atomically, so a restarting agent never leaves an interface with none or two programs;
//! a program that is not ours is never replaced.
//!
//! Not here: what happens to the redirected frames (the `meshpath-dataplane` crate).

mod attach;
mod config;
pub mod netns;
mod program;
mod sys;

pub use attach::{AttachMode, Attachment};
pub use config::{MasqueradePorts, NodeAddrs, PodPrefix, Role};
pub use program::{VerdictCounts, XdpRedirect};

/// What failed in loading, configuring or attaching the XDP program, and with which input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the XDP program: {0}")]
    Load(#[source] libbpf_rs::Error),
    #[error("the XDP object has no {0}")]
    Missing(&'static str),
    #[error("updating map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("rx queue {queue} is beyond the {max} queues the XSKMAP holds")]
    QueueOutOfRange { queue: u32, max: u32 },
    #[error("pod prefix {0}: prefix length longer than the address")]
    BadPrefix(PodPrefix),
    #[error("interface index {ifindex}: {action}: {source}")]
    Attach {
        ifindex: u32,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace of this thread: {0}")]
    Netns(#[source] std::io::Error),
    #[error("interface index {ifindex} runs XDP program `{name}` (id {id}, tag {tag}), which is not meshpath's: refusing to replace it; detach it first (ip link set dev IFACE xdp off) if it should go")]
    ForeignProgram {
        ifindex: u32,
        id: u32,
        name: String,
        tag: String,
    },
    #[error("the directory of pinned maps: {0}")]
    Pin(#[source] std::io::Error),
    #[error("tunnel peer {0}: not a host address")]
    BadPeer(std::net::IpAddr),
}

pub type Result<T> = std::result::Result<T, Error>;
