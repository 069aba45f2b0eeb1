//! The worker's WireGuard peers: one boringtun `Tunn` per remote node, keyed by the node's underlay
//! address. A peer is made on first use and kept while the snapshot gives its node the same key; a
//! node whose key changed gets a new `Tunn` at once (its next frame starts a handshake with the new
//! key), and a node gone from the snapshot is forgotten at the next [`Tunnels::tick`].
//!
//! The peer that decrypts a datagram is the one of the datagram's outer source: boringtun accepts a
//! handshake only from the static key it was given, and data only on sessions with that key, so a
//! decrypted packet was sent by the node at that address. What the packet then claims is checked by
//! the pipeline as any frame from that node.

use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use rustc_hash::FxHashMap;

use super::datagram::{self, Ends};
use super::{EncryptionMode, Outbox, PublicKey};
use crate::parse::Parsed;
use crate::route::{NextHop, RemoteNode};
use crate::snapshot::Tables;
use crate::wire::{ethernet, udp};
use crate::{Addr, DropReason, Frame, PortId};

/// Room for any message boringtun writes: a UMEM chunk's frame plus WireGuard's overhead.
const SCRATCH_LEN: usize = 16 * 1024;
/// WireGuard message types (the first byte of a message; the next three are zero).
const HANDSHAKE_INITIATION: u8 = 1;
const DATA: u8 = 4;

struct Peer {
    key: PublicKey,
    tunn: Box<Tunn>,
}

impl Peer {
    /// A new session state with the node whose key is `key`, under the next of our indices.
    fn new(secret: &x25519::StaticSecret, index: &mut u32, key: PublicKey) -> Peer {
        // Boringtun shifts the index left by 8 to number the peer's sessions: 24 bits are ours.
        *index = (*index + 1) & 0x00ff_ffff;
        let tunn = Tunn::new(
            secret.clone(),
            x25519::PublicKey::from(key.0),
            None,
            None,
            *index,
            None,
        );
        Peer {
            key,
            tunn: Box::new(tunn),
        }
    }
}

/// What became of a WireGuard datagram received from a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// The frame now holds the answer to send back (a handshake response, a keepalive, a cookie).
    Reply,
    /// Nothing to forward: a keepalive, a cookie reply.
    Absorbed,
    /// The frame now holds an Ethernet header and the packet the peer sent through the tunnel.
    Decrypted(Decrypted),
}

/// A packet that came out of a peer's tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decrypted {
    /// The node whose session decrypted it.
    pub peer: Addr,
}

/// What an encryption did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// The frame now holds a WireGuard datagram to the node: the packet, or a handshake initiation
    /// while boringtun holds the packet until the handshake completes.
    Datagram,
    /// Boringtun holds the packet for a handshake already under way: nothing to send now.
    Held,
}

/// The worker's WireGuard counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireguardStats {
    pub encrypted: u64,
    pub decrypted: u64,
    pub handshakes_initiated: u64,
    /// Packets boringtun held for a handshake.
    pub held: u64,
    /// Datagrams the outbox had no room for.
    pub outbox_overflowed: u64,
}

/// A peer as `meshpath status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerReport {
    pub addr: Addr,
    pub key: PublicKey,
    /// Since the current session's handshake; `None` before the first one completes.
    pub last_handshake: Option<Duration>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

/// A worker's WireGuard state: its private key and its peers. Without a key (encryption off) every
/// call refuses.
pub struct Tunnels {
    secret: Option<x25519::StaticSecret>,
    public: Option<PublicKey>,
    peers: FxHashMap<Addr, Peer>,
    next_index: u32,
    scratch: Box<[u8]>,
    pub outbox: Outbox,
    pub stats: WireguardStats,
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnels")
            .field("public_key", &self.public_key())
            .field("peers", &self.peers.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels::disabled()
    }
}

impl Tunnels {
    /// No key: encryption is off on this worker.
    pub fn disabled() -> Tunnels {
        Tunnels {
            secret: None,
            public: None,
            peers: FxHashMap::default(),
            next_index: 0,
            scratch: Box::default(),
            outbox: Outbox::default(),
            stats: WireguardStats::default(),
        }
    }

    /// Peers of this node's X25519 private key.
    pub fn new(private_key: [u8; 32]) -> Tunnels {
        let secret = x25519::StaticSecret::from(private_key);
        let public = PublicKey(x25519::PublicKey::from(&secret).to_bytes());
        Tunnels {
            secret: Some(secret),
            public: Some(public),
            scratch: vec![0u8; SCRATCH_LEN].into_boxed_slice(),
            ..Tunnels::disabled()
        }
    }

    /// This node's public key, if it has a private one.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.public
    }

    /// Each peer's state.
    pub fn peers(&self) -> impl Iterator<Item = PeerReport> + '_ {
        self.peers.iter().map(|(addr, peer)| {
            let (last_handshake, tx, rx, _, _) = peer.tunn.stats();
            PeerReport {
                addr: *addr,
                key: peer.key,
                last_handshake,
                tx_bytes: tx as u64,
                rx_bytes: rx as u64,
            }
        })
    }

    /// The peer for the node at `addr` with `key`: kept if the key is the one it has, new otherwise —
    /// with one hash of `addr`, as this runs for every packet sent.
    /// (Apart from `self` so that the scratch buffer stays free to borrow.)
    fn peer<'p>(
        peers: &'p mut FxHashMap<Addr, Peer>,
        secret: Option<&x25519::StaticSecret>,
        index: &mut u32,
        (addr, key): (Addr, PublicKey),
    ) -> Result<&'p mut Peer, DropReason> {
        let secret = secret.ok_or(DropReason::UnknownWireguardPeer)?;
        let peer = peers
            .entry(addr)
            .or_insert_with(|| Peer::new(secret, index, key));
        if peer.key != key {
            *peer = Peer::new(secret, index, key);
        }
        Ok(peer)
    }

    /// Encrypts the frame's IP packet for the node at `ends.dst` (key `key`): the frame becomes the
    /// WireGuard datagram, its Ethernet addresses those of `ends`.
    pub fn encrypt(
        &mut self,
        frame: &mut Frame<'_>,
        ends: &Ends,
        key: PublicKey,
    ) -> Result<Sent, DropReason> {
        let packet_len = ip_packet_len(frame.data())?;
        if packet_len + super::MESSAGE_OVERHEAD > SCRATCH_LEN {
            return Err(DropReason::FrameTooBig);
        }
        let peer = Self::peer(
            &mut self.peers,
            self.secret.as_ref(),
            &mut self.next_index,
            (ends.dst, key),
        )?;
        let packet = &frame.data()[ethernet::HEADER_LEN..ethernet::HEADER_LEN + packet_len];
        let message = match peer.tunn.encapsulate(packet, &mut self.scratch) {
            TunnResult::WriteToNetwork(message) => message,
            TunnResult::Done => {
                self.stats.held += 1;
                return Ok(Sent::Held);
            }
            _ => return Err(DropReason::InvalidWireguard),
        };
        match message.first() {
            Some(&DATA) => self.stats.encrypted += 1,
            Some(&HANDSHAKE_INITIATION) => {
                self.stats.held += 1;
                self.stats.handshakes_initiated += 1;
            }
            _ => {}
        }
        place(frame, ends, message)?;
        Ok(Sent::Datagram)
    }

    /// Takes a WireGuard datagram (UDP to our port 51871, `outer` its parse) from the node at
    /// `outer.flow.src` whose key is `key`. An answer goes back to the frame's sender on the link;
    /// packets boringtun held for the handshake go the same way through the outbox.
    pub fn receive(
        &mut self,
        tables: &Tables,
        frame: &mut Frame<'_>,
        outer: &Parsed,
        key: PublicKey,
    ) -> Result<Received, DropReason> {
        let from = outer.flow.src;
        let start = outer.l4_offset + udp::HEADER_LEN;
        let end = outer.l3_end();
        if start > end || end > frame.len() || end - start > SCRATCH_LEN {
            return Err(DropReason::InvalidHeader);
        }
        if start == end {
            // An empty datagram would ask boringtun for its held packets: no message is empty.
            return Err(DropReason::InvalidWireguard);
        }
        let reply = Ends {
            src_mac: tables.node.underlay.mac,
            dst_mac: outer.eth_src,
            src: outer.flow.dst,
            dst: from,
        };
        let uplink = tables.node.uplink;
        let peer = Self::peer(
            &mut self.peers,
            self.secret.as_ref(),
            &mut self.next_index,
            (from, key),
        )?;
        let datagram = &frame.data()[start..end];
        match peer
            .tunn
            .decapsulate(Some(from.ip()), datagram, &mut self.scratch)
        {
            TunnResult::WriteToNetwork(message) => {
                place(frame, &reply, message)?;
                self.flush(from, &reply, uplink);
                Ok(Received::Reply)
            }
            TunnResult::WriteToTunnelV4(packet, _) | TunnResult::WriteToTunnelV6(packet, _) => {
                let ethertype = match packet.first().map(|b| b >> 4) {
                    Some(4) => ethernet::ETHERTYPE_IPV4,
                    _ => ethernet::ETHERTYPE_IPV6,
                };
                let len = ethernet::HEADER_LEN + packet.len();
                let bytes = frame.set_len(len).ok_or(DropReason::InvalidHeader)?;
                bytes[ethernet::HEADER_LEN..].copy_from_slice(packet);
                let mut eth = ethernet::Frame::new_unchecked(bytes);
                eth.set_dst(outer.eth_dst);
                eth.set_src(outer.eth_src);
                eth.set_ethertype(ethertype);
                self.stats.decrypted += 1;
                Ok(Received::Decrypted(Decrypted { peer: from }))
            }
            TunnResult::Done => Ok(Received::Absorbed),
            TunnResult::Err(_) => Err(DropReason::InvalidWireguard),
        }
    }

    /// Sends what boringtun held for the peer at `addr` now that a session may be up.
    fn flush(&mut self, addr: Addr, ends: &Ends, port: PortId) {
        let Some(peer) = self.peers.get_mut(&addr) else {
            return;
        };
        while let TunnResult::WriteToNetwork(message) =
            peer.tunn.decapsulate(None, &[], &mut self.scratch)
        {
            if message.first() == Some(&DATA) {
                self.stats.encrypted += 1;
            }
            queue(&mut self.outbox, &mut self.stats, (port, ends), message);
        }
    }

    /// Drives every peer's timers (handshake retries, rekeying, keepalives) and forgets the peers
    /// whose node left the snapshot or changed its key. The worker calls it from its loop.
    pub fn tick(&mut self, tables: &Tables) {
        if tables.node.encryption == EncryptionMode::Off {
            self.peers.clear();
            return;
        }
        self.peers.retain(|addr, peer| {
            tables
                .nodes
                .get(*addr)
                .is_some_and(|node| node.wireguard_key == Some(peer.key))
        });
        let uplink = tables.node.uplink;
        for (addr, peer) in &mut self.peers {
            let Some(ends) = tables
                .nodes
                .get(*addr)
                .and_then(|n| ends_to(tables, n).ok())
            else {
                continue;
            };
            // One message per peer and tick at most: a retry, a rekeying or a keepalive.
            if let TunnResult::WriteToNetwork(message) = peer.tunn.update_timers(&mut self.scratch)
            {
                if message.first() == Some(&HANDSHAKE_INITIATION) {
                    self.stats.handshakes_initiated += 1;
                }
                queue(&mut self.outbox, &mut self.stats, (uplink, &ends), message);
            }
        }
    }
}

/// The link and underlay ends of a datagram to `node`, by the routing mode's next hop.
pub fn ends_to(tables: &Tables, node: &RemoteNode) -> Result<Ends, DropReason> {
    let config = &tables.node;
    let mac = match config.routing.next_hop(&config.underlay, node)? {
        NextHop::Tunnel { mac, .. } | NextHop::Direct { mac } => mac,
    };
    Ok(Ends {
        src_mac: config.underlay.mac,
        dst_mac: mac,
        src: config
            .underlay_addr_towards(node.addr)
            .ok_or(DropReason::NoRoute)?,
        dst: node.addr,
    })
}

fn queue(
    outbox: &mut Outbox,
    stats: &mut WireguardStats,
    (port, ends): (PortId, &Ends),
    message: &[u8],
) {
    let before = outbox.overflowed;
    outbox.push(port, |buffer| {
        let at = datagram::header_len(ends.dst.is_ipv4());
        buffer
            .get_mut(at..at + message.len())?
            .copy_from_slice(message);
        datagram::write(buffer, ends, message.len()).ok()
    });
    stats.outbox_overflowed += outbox.overflowed - before;
}

/// Rewrites the frame into the datagram of `message` between `ends`.
fn place(frame: &mut Frame<'_>, ends: &Ends, message: &[u8]) -> Result<(), DropReason> {
    let total = datagram::header_len(ends.dst.is_ipv4()) + message.len();
    let len = frame.len();
    let bytes = if total > len {
        frame
            .push_front(total - len)
            .ok_or(DropReason::NoHeadroom)?
    } else {
        frame.set_len(total).ok_or(DropReason::InvalidHeader)?
    };
    let at = total - message.len();
    bytes[at..].copy_from_slice(message);
    datagram::write(bytes, ends, message.len())?;
    Ok(())
}

/// The length of the IP packet behind the frame's Ethernet header, as its header says.
fn ip_packet_len(frame: &[u8]) -> Result<usize, DropReason> {
    let ip = frame
        .get(ethernet::HEADER_LEN..)
        .ok_or(DropReason::InvalidHeader)?;
    let len = match ip {
        [0x40..=0x4f, _, hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
        [0x60..=0x6f, _, _, _, hi, lo, ..] => 40 + usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => return Err(DropReason::InvalidHeader),
    };
    (len <= ip.len())
        .then_some(len)
        .ok_or(DropReason::InvalidHeader)
}
