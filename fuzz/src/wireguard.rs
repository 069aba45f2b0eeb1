//! WireGuard datagrams from a known node, under strict encryption: the first byte picks the sending
//! node (bits 1..: the node of remote endpoint j) and whether the rest is the raw UDP payload on port
//! 51871 (bit 0 clear: anything at all, which must be dropped) or an IP packet the node sends through
//! a session it has just handshaken with this one (bit 0 set: boringtun encrypts it, the pipeline
//! decrypts it and checks it as any frame from that node).
//!
//! Invariants: no panic; a raw payload is dropped; a decrypted packet goes nowhere but to a port of
//! the bed, and the pipeline counts every frame once.

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use etherparse::PacketBuilder;
use meshpath_dataplane::frame::HEADROOM;
use meshpath_dataplane::parse::parse;
use meshpath_dataplane::pipeline::{originate, process_one};
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::testbed::{self, NODE_MAC, UPLINK};
use meshpath_dataplane::wireguard::{self, EncryptionMode, Ends, PublicKey, Tunnels};
use meshpath_dataplane::{Frame, Verdict, WorkerState};

use crate::bed;

const NODE_KEY: [u8; 32] = [0x5a; 32];
const PEER_KEY: [u8; 32] = [0xa5; 32];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 2, 0, 1];
const TAILROOM: usize = 64;

pub fn run(data: &[u8]) {
    verdict(data);
}

/// The verdict on what the input makes, if it makes a datagram.
fn verdict(data: &[u8]) -> Option<Verdict> {
    let (&select, payload) = data.split_first()?;
    let j = usize::from(select >> 1) % bed::bed().scale.remote_endpoints;
    let peer = testbed::remote_node(j);
    let mut worker = bed::worker();
    worker.wireguard = Tunnels::new(NODE_KEY);
    if select & 1 == 0 {
        let wire = datagram(peer, payload);
        let (verdict, _) = receive(&mut worker, &wire);
        assert!(matches!(verdict, Verdict::Drop(_)), "{verdict:?}");
        return Some(verdict);
    }
    let Some(mut sender) = handshake(&mut worker, peer) else {
        panic!("the handshake with {peer} failed");
    };
    let packet = ip_packet(payload)?;
    let wire = encrypt(&mut sender, peer, &packet)?;
    let counted = worker.counters.total_forwarded() + worker.counters.total_dropped();
    let (verdict, out) = receive(&mut worker, &wire);
    let now = worker.counters.total_forwarded() + worker.counters.total_dropped();
    assert_eq!(now, counted + 1, "counted once");
    if let Verdict::Transmit(port) = verdict {
        assert!(bed::has_port(port), "{port:?}");
        assert!(out.len() >= 14);
    }
    Some(verdict)
}

/// This node's tables under strict encryption, every remote node keyed with the peer key.
fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = bed::bed().tables.clone();
        t.node.encryption = EncryptionMode::Strict;
        let key = public(PEER_KEY);
        for j in 0..bed::bed().scale.remote_endpoints {
            let addr = testbed::remote_node(j).into();
            if let Some(mut node) = t.nodes.get(addr).copied() {
                node.wireguard_key = Some(key);
                t.nodes.upsert(node).expect("the node is there");
            }
        }
        t
    })
}

fn public(private: [u8; 32]) -> PublicKey {
    Tunnels::new(private)
        .public_key()
        .expect("a key from a private key")
}

/// The datagram `from` sends to this node's WireGuard port.
fn datagram(from: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(42 + payload.len());
    PacketBuilder::ethernet2(PEER_MAC, NODE_MAC)
        .ipv4(from.octets(), testbed::node_ip().octets(), 64)
        .udp(wireguard::PORT, wireguard::PORT)
        .write(&mut wire, payload)
        .expect("a datagram");
    wire
}

fn receive(worker: &mut WorkerState, wire: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; HEADROOM + wire.len() + TAILROOM];
    buf[HEADROOM..][..wire.len()].copy_from_slice(wire);
    let mut frame = Frame::new(&mut buf, HEADROOM, wire.len(), UPLINK).expect("fits");
    let verdict = process_one(tables(), worker, 1_000, &mut frame);
    assert!(frame.head() + frame.len() <= HEADROOM + wire.len() + TAILROOM);
    (verdict, frame.data().to_vec())
}

fn ends(peer: Ipv4Addr) -> Ends {
    Ends {
        src_mac: PEER_MAC,
        dst_mac: NODE_MAC,
        src: peer.into(),
        dst: testbed::node_ip().into(),
    }
}

/// The peer's side of a session with this node: its first packet starts the handshake, this node
/// answers, the peer confirms.
fn handshake(worker: &mut WorkerState, peer: Ipv4Addr) -> Option<Tunnels> {
    let mut sender = Tunnels::new(PEER_KEY);
    let hello = ip_packet(&[0x45; 20])?;
    let initiation = encrypt(&mut sender, peer, &hello)?;
    let (verdict, response) = receive(worker, &initiation);
    if verdict != Verdict::Transmit(UPLINK) {
        return None;
    }
    let mut buf = vec![0u8; HEADROOM + response.len() + TAILROOM];
    buf[HEADROOM..][..response.len()].copy_from_slice(&response);
    let mut frame = Frame::new(&mut buf, HEADROOM, response.len(), UPLINK)?;
    let outer = parse(frame.data()).ok()?;
    sender
        .receive(tables(), &mut frame, &outer, public(NODE_KEY))
        .ok()?;
    originate_nothing(&mut sender);
    Some(sender)
}

fn originate_nothing(sender: &mut Tunnels) {
    let mut state = bed::worker();
    std::mem::swap(&mut state.wireguard, sender);
    originate(&mut state, |_, _| {});
    std::mem::swap(&mut state.wireguard, sender);
}

/// `peer`'s datagram carrying `packet` (an Ethernet header in front) to this node.
fn encrypt(sender: &mut Tunnels, peer: Ipv4Addr, packet: &[u8]) -> Option<Vec<u8>> {
    let len = 14 + packet.len();
    let mut buf = vec![0u8; HEADROOM + len + TAILROOM];
    buf[HEADROOM + 12..HEADROOM + 14].copy_from_slice(&[0x08, 0x00]);
    buf[HEADROOM + 14..][..packet.len()].copy_from_slice(packet);
    let mut frame = Frame::new(&mut buf, HEADROOM, len, UPLINK)?;
    sender
        .encrypt(&mut frame, &ends(peer), public(NODE_KEY))
        .ok()?;
    Some(frame.data().to_vec())
}

/// The input as an IP packet whose length field says its length (what boringtun insists on):
/// IPv4 unless the version nibble says 6.
fn ip_packet(input: &[u8]) -> Option<Vec<u8>> {
    let mut packet = input.get(..input.len().min(1400))?.to_vec();
    let v6 = packet.first().is_some_and(|b| b >> 4 == 6);
    let min = if v6 { 40 } else { 20 };
    if packet.len() < min {
        packet.resize(min, 0);
    }
    let len = packet.len();
    if v6 {
        packet[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    } else {
        packet[0] = 0x40 | (packet[0] & 0x0f);
        packet[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    }
    Some(packet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_dataplane::DropReason;

    #[test]
    fn the_seeds_reach_what_they_stand_for() {
        for (target, name, bytes) in crate::seeds::all() {
            if target != "wireguard" {
                continue;
            }
            let verdict = verdict(&bytes);
            match name {
                "session-vxlan-reply" => assert!(
                    matches!(verdict, Some(Verdict::Transmit(port)) if port != UPLINK),
                    "{verdict:?}: delivered to a pod"
                ),
                _ => assert_eq!(verdict, Some(Verdict::Drop(DropReason::InvalidWireguard))),
            }
        }
    }
}
