//! Transparent encryption between nodes with WireGuard, as Cilium's WireGuard mode does it: UDP port
//! 51871 (source and destination), one WireGuard peer per remote node that publishes a key (its node
//! record's `WireguardPubKey`), and inside the tunnel exactly what Cilium puts there — the node-to-node
//! VXLAN/Geneve IP datagram in tunnel routing, the pod's own IP packet in native routing.
//!
//! The handshake, the sessions, the cryptography and the timers are boringtun's ([`boringtun::noise::Tunn`],
//! its userspace state machine); this module only carries its messages to and from the wire:
//! - [`Tunnels`]: the worker's own peers (one `Tunn` per remote node, kept across snapshots while the
//!   node's key stays the same, replaced as soon as the snapshot carries a new key), encrypting after
//!   route/encap and decrypting before decap;
//! - [`datagram`]: the outer Ethernet/IP/UDP headers around a WireGuard message;
//! - [`Outbox`]: messages the worker originates rather than answers — handshake initiations and
//!   keepalives from the timers, packets boringtun held while a handshake was under way — in
//!   preallocated buffers that the AF_XDP worker sends from free UMEM chunks after each turn.
//!
//! Overhead: WireGuard adds its 32 bytes (16 of header, 16 of tag; boringtun pads nothing) and an outer
//! IPv4 and UDP header (20 + 8) or IPv6 and UDP (40 + 8): 60 bytes over IPv4, 80 over IPv6, on top of
//! the VXLAN/Geneve overhead in tunnel routing. Both enter the path MTU the pipeline answers with.

mod datagram;
mod outbox;
mod tunnels;

pub use datagram::{header_len as datagram_header_len, write as write_datagram, Ends};
pub use outbox::{Outbox, OUTBOX_FRAMES, OUTBOX_FRAME_LEN};
pub use tunnels::{ends_to, Decrypted, PeerReport, Received, Sent, Tunnels, WireguardStats};

use crate::Addr;

/// Cilium's WireGuard port, used as both source and destination port.
pub const PORT: u16 = 51871;

/// WireGuard's own bytes per data message: type, receiver index and counter (16), and the tag (16).
pub const MESSAGE_OVERHEAD: usize = 32;

/// How pod traffic between nodes is protected (the agent's `encryption`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EncryptionMode {
    /// Everything travels as routing sends it.
    #[default]
    Off,
    /// Encrypted to every node that publishes a key, plain to the others; plain frames are still
    /// accepted.
    On,
    /// Never in clear: a node without a key is unreachable (`node_without_key`), plain frames from
    /// mesh nodes are dropped (`unencrypted_traffic`).
    Strict,
}

impl EncryptionMode {
    pub const fn name(self) -> &'static str {
        match self {
            EncryptionMode::Off => "off",
            EncryptionMode::On => "on",
            EncryptionMode::Strict => "strict",
        }
    }
}

/// A node's X25519 public key, as its node record carries it (base64 there).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// The bytes WireGuard adds to a packet sent to `peer`: outer IP and UDP headers and its own 32.
pub const fn overhead(peer_is_ipv4: bool) -> usize {
    let ip = if peer_is_ipv4 { 20 } else { 40 };
    ip + crate::wire::udp::HEADER_LEN + MESSAGE_OVERHEAD
}

/// The WireGuard overhead towards `peer`.
pub fn overhead_to(peer: Addr) -> usize {
    overhead(peer.is_ipv4())
}
