//! Tunnel frames from a known node: the input is what follows the outer UDP header (a VXLAN or Geneve
//! header and the inner frame), sent by one of the bed's remote nodes to this node's tunnel port. The
//! first byte picks the protocol (bit 0: Geneve) and the sending node.
//!
//! Decapsulation alone must leave a whole Ethernet header inside the original bytes; then the whole
//! pipeline takes the frame on the uplink, with the invariants of [`crate::pipeline`].

use std::net::Ipv4Addr;

use etherparse::PacketBuilder;
use meshpath_dataplane::frame::HEADROOM;
use meshpath_dataplane::parse::parse;
use meshpath_dataplane::testbed::{self, NODE_MAC, UPLINK};
use meshpath_dataplane::tunnel::{decap, TunnelProtocol};
use meshpath_dataplane::Frame;

use crate::input::Record;
use crate::{bed, pipeline};

pub fn run(data: &[u8]) {
    let Some((&select, payload)) = data.split_first() else {
        return;
    };
    let protocol = if select & 1 == 0 {
        TunnelProtocol::Vxlan
    } else {
        TunnelProtocol::Geneve
    };
    let node = usize::from(select >> 1) % bed::bed().scale.remote_endpoints;
    let Some(wire) = outer(testbed::remote_node(node), protocol, payload) else {
        return;
    };
    decap_alone(&wire, protocol);
    let record = Record {
        port: UPLINK,
        clock_step: 0,
        new_batch: true,
        bytes: &wire,
    };
    pipeline::run_records(&mut bed::worker(), &[record]);
}

/// The datagram `from` sends this node on `protocol`'s port, `payload` after its UDP header.
pub fn outer(from: Ipv4Addr, protocol: TunnelProtocol, payload: &[u8]) -> Option<Vec<u8>> {
    let mut wire = Vec::with_capacity(42 + payload.len());
    PacketBuilder::ethernet2([0x02, 0, 0, 2, 0, 1], NODE_MAC)
        .ipv4(from.octets(), testbed::node_ip().octets(), 64)
        .udp(49152, protocol.port())
        .write(&mut wire, payload)
        .ok()?;
    Some(wire)
}

fn decap_alone(wire: &[u8], protocol: TunnelProtocol) {
    let mut buf = vec![0u8; HEADROOM + wire.len()];
    buf[HEADROOM..].copy_from_slice(wire);
    let Some(mut frame) = Frame::new(&mut buf, HEADROOM, wire.len(), UPLINK) else {
        return;
    };
    let outer = parse(frame.data()).expect("a valid outer header");
    if decap(&mut frame, &outer, protocol).is_ok() {
        assert!(frame.len() >= 14);
        assert!(frame.head() >= HEADROOM && frame.head() + frame.len() <= HEADROOM + wire.len());
    }
}
