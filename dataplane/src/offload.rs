//! Checksum offload. A Linux stack sending on a veth with TX checksum offload on (the kernel's default)
//! leaves TCP and UDP checksums for the device to finish (CHECKSUM_PARTIAL): the checksum field holds
//! only the folded sum of the pseudo-header. Through AF_XDP no device finishes them, so the pipeline
//! does, for frames from pods and from the node's own stack, before anything else reads or rewrites them.
//!
//! A partial checksum is recognised by its value: the field equals the pseudo-header's sum. A complete
//! checksum that happens to have that value (one in 65,536) is recomputed to the same value, so the test
//! never corrupts a frame; it costs a pass over the segment only for frames that need one.

use crate::flow::proto;
use crate::parse::{Parsed, L3};
use crate::wire::{checksum, ipv4, tcp, udp};
use crate::DropReason;

/// Finishes the TCP or UDP checksum of `frame` if its stack left it partial.
pub fn complete_partial_checksum(frame: &mut [u8], parsed: &Parsed) -> Result<(), DropReason> {
    let checksum_at = match parsed.flow.proto {
        proto::TCP => tcp::CHECKSUM_AT,
        proto::UDP => udp::CHECKSUM_AT,
        _ => return Ok(()),
    };
    if is_fragment(frame, parsed) {
        return Ok(());
    }
    let (l4_start, l4_end) = (parsed.l4_offset, parsed.l3_end());
    let segment_len = l4_end
        .checked_sub(l4_start)
        .ok_or(DropReason::InvalidHeader)?;
    let pseudo = pseudo_header(parsed, segment_len)?;
    let segment = frame
        .get_mut(l4_start..l4_end)
        .ok_or(DropReason::InvalidHeader)?;
    let field = segment
        .get_mut(checksum_at..checksum_at + 2)
        .ok_or(DropReason::InvalidHeader)?;
    if u16::from_be_bytes([field[0], field[1]]) != pseudo {
        return Ok(());
    }
    field.fill(0);
    let mut sum = checksum::finish(checksum::combine(&[pseudo, checksum::data(segment)]));
    if parsed.flow.proto == proto::UDP {
        sum = checksum::udp_nonzero(sum);
    }
    segment[checksum_at..checksum_at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// A fragment's checksum covers bytes other fragments carry: a stack never leaves it partial.
fn is_fragment(frame: &[u8], parsed: &Parsed) -> bool {
    match parsed.l3 {
        L3::Ipv4 => frame
            .get(parsed.l3_offset..)
            .and_then(|l3| ipv4::Packet::new_checked(l3).ok())
            .is_none_or(|ip| ip.is_fragment()),
        // parse() leaves no fragment header unnoticed: the transport starts right after a fixed
        // header, or after extension headers that are then not a fragment header of a later fragment.
        L3::Ipv6 => parsed.l4_offset != parsed.l3_offset + crate::wire::ipv6::HEADER_LEN,
        L3::Arp(_) => true,
    }
}

fn pseudo_header(parsed: &Parsed, len: usize) -> Result<u16, DropReason> {
    let proto = parsed.flow.proto;
    match (
        parsed.flow.src.v4_bits(),
        parsed.flow.dst.v4_bits(),
        parsed.l3,
    ) {
        (Some(src), Some(dst), L3::Ipv4) => {
            let len = u16::try_from(len).map_err(|_| DropReason::InvalidHeader)?;
            Ok(checksum::pseudo_header_v4(
                src.to_be_bytes(),
                dst.to_be_bytes(),
                proto,
                len,
            ))
        }
        (_, _, L3::Ipv6) => {
            let len = u32::try_from(len).map_err(|_| DropReason::InvalidHeader)?;
            Ok(checksum::pseudo_header_v6(
                parsed.flow.src.bits().to_be_bytes(),
                parsed.flow.dst.bits().to_be_bytes(),
                proto,
                len,
            ))
        }
        _ => Err(DropReason::InvalidHeader),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
    use proptest::prelude::*;

    fn frame(v6: bool, udp: bool, payload: &[u8]) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let ip = if v6 {
            eth.ipv6([0xfd; 16], [0xfe; 16], 64)
        } else {
            eth.ipv4([100, 64, 1, 10], [100, 65, 1, 10], 64)
        };
        let mut out = Vec::new();
        if udp {
            ip.udp(1000, 2000).write(&mut out, payload).unwrap();
        } else {
            ip.tcp(1000, 2000, 7, 512).write(&mut out, payload).unwrap();
        }
        out
    }

    fn transport_checksum(bytes: &[u8]) -> u16 {
        match SlicedPacket::from_ethernet(bytes)
            .unwrap()
            .transport
            .unwrap()
        {
            TransportSlice::Tcp(t) => t.checksum(),
            TransportSlice::Udp(u) => u.checksum(),
            _ => unreachable!(),
        }
    }

    /// What the stack leaves with offload on: the pseudo-header's folded sum in the checksum field.
    fn make_partial(bytes: &mut [u8]) {
        let parsed = parse(bytes).unwrap();
        let len = parsed.l3_end() - parsed.l4_offset;
        let pseudo = pseudo_header(&parsed, len).unwrap();
        let at = parsed.l4_offset
            + if parsed.flow.proto == proto::TCP {
                tcp::CHECKSUM_AT
            } else {
                udp::CHECKSUM_AT
            };
        bytes[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
    }

    proptest! {
        #[test]
        fn partial_checksums_are_finished_as_the_device_would(
            v6 in any::<bool>(), udp in any::<bool>(),
            payload in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let complete = frame(v6, udp, &payload);
            let mut partial = complete.clone();
            make_partial(&mut partial);
            let parsed = parse(&partial).unwrap();
            complete_partial_checksum(&mut partial, &parsed).unwrap();
            prop_assert_eq!(transport_checksum(&partial), transport_checksum(&complete));
            prop_assert_eq!(partial, complete);
        }

        #[test]
        fn complete_checksums_are_left_alone(
            v6 in any::<bool>(), udp in any::<bool>(),
            payload in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let complete = frame(v6, udp, &payload);
            let mut bytes = complete.clone();
            let parsed = parse(&bytes).unwrap();
            complete_partial_checksum(&mut bytes, &parsed).unwrap();
            prop_assert_eq!(bytes, complete);
        }
    }

    #[test]
    fn an_ipv4_udp_datagram_without_checksum_stays_without() {
        let mut bytes = frame(false, true, b"no checksum");
        let parsed = parse(&bytes).unwrap();
        let at = parsed.l4_offset + udp::CHECKSUM_AT;
        bytes[at..at + 2].fill(0);
        let before = bytes.clone();
        complete_partial_checksum(&mut bytes, &parsed).unwrap();
        assert_eq!(bytes, before);
    }
}
