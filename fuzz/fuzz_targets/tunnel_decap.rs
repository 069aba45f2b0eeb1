//! Stage 2 on arbitrary bytes from the uplink: parse, then decap with the protocol the UDP port names.
//! Neither may panic; a decapsulated frame must start with a whole Ethernet header and lie inside the
//! original bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpath_dataplane::frame::HEADROOM;
use meshpath_dataplane::parse::parse;
use meshpath_dataplane::tunnel::{decap, TunnelProtocol};
use meshpath_dataplane::{Frame, PortId};

fuzz_target!(|bytes: &[u8]| {
    let mut buf = vec![0u8; HEADROOM + bytes.len()];
    buf[HEADROOM..].copy_from_slice(bytes);
    let Some(mut frame) = Frame::new(&mut buf, HEADROOM, bytes.len(), PortId(0)) else {
        return;
    };
    let Ok(outer) = parse(frame.data()) else {
        return;
    };
    // Try both protocols whatever the port says: decap must hold up against a wrong guess too.
    let protocol = match outer.tunnel_port().and_then(TunnelProtocol::from_port) {
        Some(protocol) => protocol,
        None if bytes.last().is_some_and(|b| b & 1 == 0) => TunnelProtocol::Vxlan,
        None => TunnelProtocol::Geneve,
    };
    if decap(&mut frame, &outer, protocol).is_ok() {
        assert!(frame.len() >= 14);
        assert!(frame.head() >= HEADROOM && frame.head() + frame.len() <= HEADROOM + bytes.len());
    }
});
