//! Stage 8: the pods' gateway. Pods have one address and a default route via a gateway address; the node
//! answers ARP requests and IPv6 neighbour solicitations from its pods with one virtual router MAC, for
//! any address but the asker's own (proxy ARP, as Cilium does), so pods with an on-link prefix work too.
//! The answer is written in place over the request; the caller sends it back out of the port it came in on.

use std::net::Ipv6Addr;

use etherparse::ArpOperation;

use crate::parse::{ArpInfo, IcmpKind, Parsed, L3, L4};
use crate::wire::checksum;
use crate::{DropReason, Frame};

const ETHERNET_LEN: usize = 14;
const ARP_LEN: usize = 28;
const IPV6_LEN: usize = 40;
/// ICMPv6 header (4), flags (4), target (16), target link-layer address option (8).
const ADVERTISEMENT_LEN: usize = 32;
const ICMPV6: u8 = 58;
const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// Router and Solicited set; Override clear, as RFC 4861 §7.2.8 asks of a proxy so that a neighbour's
/// own answer would still win.
const ADVERTISEMENT_FLAGS: u8 = 0b1100_0000;
const ND_OPTION_TARGET_LINK_ADDR: u8 = 2;
/// Neighbour discovery messages from off-link are forged (RFC 4861 §7.1.1).
const ND_HOP_LIMIT: u8 = 255;

/// The node's answer to its pods' neighbour queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// The virtual router MAC, one per node.
    pub mac: [u8; 6],
}

/// Turns an ARP request into a reply, or a neighbour solicitation into a solicited advertisement, with
/// the gateway MAC as the answer. Anything that must not be answered is `UnansweredNeighbour`.
pub fn answer_neighbour(
    frame: &mut Frame<'_>,
    parsed: &Parsed,
    gw: &Gateway,
) -> Result<(), DropReason> {
    match (parsed.l3, parsed.l4) {
        (L3::Arp(arp), _) => answer_arp(frame, parsed, &arp, gw),
        (L3::Ipv6, L4::Icmp(IcmpKind::NeighbourSolicitation { target, .. })) => {
            answer_solicitation(frame, parsed, target, gw)
        }
        _ => Err(DropReason::UnansweredNeighbour),
    }
}

fn answer_arp(
    frame: &mut Frame<'_>,
    parsed: &Parsed,
    arp: &ArpInfo,
    gw: &Gateway,
) -> Result<(), DropReason> {
    // Replies, gratuitous ARP (the asker's own address) and probes (RFC 5227, sender 0.0.0.0) get no answer.
    if arp.op != ArpOperation::REQUEST
        || arp.target_ip == arp.sender_ip
        || arp.sender_ip.is_unspecified()
    {
        return Err(DropReason::UnansweredNeighbour);
    }
    let bytes = frame.data_mut();
    let (eth, rest) = bytes
        .split_first_chunk_mut::<ETHERNET_LEN>()
        .ok_or(DropReason::InvalidHeader)?;
    let body = rest
        .get_mut(parsed.l3_offset - ETHERNET_LEN..)
        .and_then(|b| b.first_chunk_mut::<ARP_LEN>())
        .ok_or(DropReason::InvalidHeader)?;
    eth[0..6].copy_from_slice(&parsed.eth_src);
    eth[6..12].copy_from_slice(&gw.mac);
    body[6..8].copy_from_slice(&ArpOperation::REPLY.0.to_be_bytes());
    body[8..14].copy_from_slice(&gw.mac);
    body[14..18].copy_from_slice(&arp.target_ip.octets());
    body[18..24].copy_from_slice(&arp.sender_mac);
    body[24..28].copy_from_slice(&arp.sender_ip.octets());
    Ok(())
}

fn answer_solicitation(
    frame: &mut Frame<'_>,
    parsed: &Parsed,
    target: Ipv6Addr,
    gw: &Gateway,
) -> Result<(), DropReason> {
    let asker = Ipv6Addr::from(parsed.flow.src.bits());
    // Duplicate address detection comes from `::`; an asker's own address is its to defend.
    if asker.is_unspecified()
        || target == asker
        || target.is_multicast()
        || parsed.ttl != ND_HOP_LIMIT
    {
        return Err(DropReason::UnansweredNeighbour);
    }
    // The advertisement replaces the IPv6 header (dropping any extension headers) and the solicitation.
    let len = parsed.l3_offset + IPV6_LEN + ADVERTISEMENT_LEN;
    // A frame buffer without 8 bytes of tailroom cannot take the link-layer option.
    let bytes = frame.set_len(len).ok_or(DropReason::NoHeadroom)?;
    let (eth, rest) = bytes
        .split_first_chunk_mut::<ETHERNET_LEN>()
        .ok_or(DropReason::InvalidHeader)?;
    let ip_and_icmp = rest
        .get_mut(parsed.l3_offset - ETHERNET_LEN..)
        .and_then(|b| b.first_chunk_mut::<{ IPV6_LEN + ADVERTISEMENT_LEN }>())
        .ok_or(DropReason::InvalidHeader)?;
    let (ip, icmp) = ip_and_icmp.split_at_mut(IPV6_LEN);
    eth[0..6].copy_from_slice(&parsed.eth_src);
    eth[6..12].copy_from_slice(&gw.mac);
    ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    ip[4..6].copy_from_slice(&(ADVERTISEMENT_LEN as u16).to_be_bytes());
    ip[6] = ICMPV6;
    ip[7] = ND_HOP_LIMIT;
    ip[8..24].copy_from_slice(&target.octets());
    ip[24..40].copy_from_slice(&asker.octets());
    icmp[0..8].copy_from_slice(&[
        NEIGHBOUR_ADVERTISEMENT,
        0,
        0,
        0,
        ADVERTISEMENT_FLAGS,
        0,
        0,
        0,
    ]);
    icmp[8..24].copy_from_slice(&target.octets());
    icmp[24..26].copy_from_slice(&[ND_OPTION_TARGET_LINK_ADDR, 1]);
    icmp[26..32].copy_from_slice(&gw.mac);
    let sum = checksum::combine(&[
        checksum::pseudo_header_v6(
            target.octets(),
            asker.octets(),
            ICMPV6,
            ADVERTISEMENT_LEN as u32,
        ),
        checksum::data(icmp),
    ]);
    icmp[2..4].copy_from_slice(&checksum::finish(sum).to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse;
    use crate::parse::tests::{neighbour_solicitation, MAC_A};
    use crate::PortId;
    use etherparse::{ArpEthIpv4Packet, Icmpv6Slice, Ipv6Slice, PacketBuilder};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    const GW: Gateway = Gateway {
        mac: [0x0e, 0xe0, 0, 0, 0, 1],
    };

    fn arp_frame(op: ArpOperation, sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
        let arp = ArpEthIpv4Packet {
            operation: op,
            sender_mac: MAC_A,
            sender_ipv4: sender,
            target_mac: [0; 6],
            target_ipv4: target,
        };
        let mut out = Vec::new();
        PacketBuilder::ethernet2(MAC_A, [0xff; 6])
            .arp(arp.into())
            .write(&mut out)
            .unwrap();
        out.resize(60, 0); // minimum Ethernet frame, as on the wire
        out
    }

    /// Runs the gateway over `request` in a buffer with 16 bytes of tailroom.
    fn answer(request: &[u8]) -> Result<Vec<u8>, DropReason> {
        let mut buf = request.to_vec();
        buf.resize(request.len() + 16, 0xee);
        let mut frame = Frame::new(&mut buf, 0, request.len(), PortId(1)).unwrap();
        let parsed = parse(frame.data())?;
        answer_neighbour(&mut frame, &parsed, &GW)?;
        Ok(frame.data().to_vec())
    }

    #[test]
    fn arp_request_becomes_a_reply_from_the_gateway() {
        let reply = answer(&arp_frame(
            ArpOperation::REQUEST,
            [100, 64, 1, 10],
            [100, 64, 1, 1],
        ))
        .unwrap();
        let eth = etherparse::Ethernet2Header::from_slice(&reply).unwrap().0;
        assert_eq!((eth.destination, eth.source), (MAC_A, GW.mac));
        let arp = etherparse::ArpPacketSlice::from_slice(&reply[14..]).unwrap();
        let arp = arp.to_packet().try_eth_ipv4().unwrap();
        assert_eq!(arp.operation, ArpOperation::REPLY);
        assert_eq!(
            (arp.sender_mac, arp.sender_ipv4_addr()),
            (GW.mac, Ipv4Addr::new(100, 64, 1, 1))
        );
        assert_eq!(
            (arp.target_mac, arp.target_ipv4_addr()),
            (MAC_A, Ipv4Addr::new(100, 64, 1, 10))
        );
        assert_eq!(reply.len(), 60);
    }

    #[test]
    fn gratuitous_probes_and_replies_are_not_answered() {
        let unanswered = Err(DropReason::UnansweredNeighbour);
        let own = [100, 64, 1, 10];
        assert_eq!(
            answer(&arp_frame(ArpOperation::REQUEST, own, own)),
            unanswered
        );
        assert_eq!(
            answer(&arp_frame(ArpOperation::REQUEST, [0; 4], own)),
            unanswered
        );
        assert_eq!(
            answer(&arp_frame(ArpOperation::REPLY, own, [100, 64, 1, 1])),
            unanswered
        );
    }

    /// Checks an NA with etherparse: addresses, type, flags, target, option and checksum.
    fn check_advertisement(na: &[u8], asker: Ipv6Addr, target: Ipv6Addr) {
        let eth = etherparse::Ethernet2Header::from_slice(na).unwrap().0;
        assert_eq!((eth.destination, eth.source), (MAC_A, GW.mac));
        let ip = Ipv6Slice::from_slice(&na[14..]).unwrap();
        let header = ip.header();
        assert_eq!(
            (header.source_addr(), header.destination_addr()),
            (target, asker)
        );
        assert_eq!((header.hop_limit(), header.payload_length()), (255, 32));
        let icmp = Icmpv6Slice::from_slice(ip.payload().payload).unwrap();
        assert!(
            icmp.is_checksum_valid(target.octets(), asker.octets()),
            "bad ICMPv6 checksum"
        );
        assert_eq!(
            (icmp.type_u8(), icmp.code_u8(), icmp.bytes5to8()),
            (136, 0, [0xc0, 0, 0, 0])
        );
        let body = icmp.payload();
        assert_eq!(body[..16], target.octets());
        let [m0, m1, m2, m3, m4, m5] = GW.mac;
        assert_eq!(
            body[16..],
            [2, 1, m0, m1, m2, m3, m4, m5],
            "target link-layer address option"
        );
        assert_eq!(na.len(), 14 + 40 + 32);
    }

    #[test]
    fn solicitation_becomes_an_advertisement_with_and_without_the_source_option() {
        let asker: Ipv6Addr = "fd00:1::10".parse().unwrap();
        let target: Ipv6Addr = "fd00:1::1".parse().unwrap();
        for sllao in [Some(MAC_A), None] {
            let na = answer(&neighbour_solicitation(asker, target, sllao)).unwrap();
            check_advertisement(&na, asker, target);
            assert_eq!(
                parse(&na).unwrap().l4,
                L4::Icmp(IcmpKind::NeighbourAdvertisement)
            );
        }
    }

    #[test]
    fn duplicate_address_detection_and_own_address_are_not_answered() {
        let own: Ipv6Addr = "fd00:1::10".parse().unwrap();
        let unanswered = Err(DropReason::UnansweredNeighbour);
        assert_eq!(
            answer(&neighbour_solicitation(Ipv6Addr::UNSPECIFIED, own, None)),
            unanswered
        );
        assert_eq!(
            answer(&neighbour_solicitation(own, own, Some(MAC_A))),
            unanswered
        );
        let mut forwarded = neighbour_solicitation(own, "fd00:1::1".parse().unwrap(), None);
        forwarded[14 + 7] = 64; // hop limit below 255: not from the link
        assert_eq!(answer(&forwarded), unanswered);
    }

    #[test]
    fn router_solicitations_and_other_traffic_are_not_answered() {
        let mut rs = Vec::new();
        PacketBuilder::ethernet2(MAC_A, [0x33, 0x33, 0, 0, 0, 2])
            .ipv6(
                Ipv6Addr::LOCALHOST.octets(),
                Ipv6Addr::LOCALHOST.octets(),
                255,
            )
            .icmpv6_raw(133, 0, [0; 4])
            .write(&mut rs, &[])
            .unwrap();
        assert_eq!(answer(&rs), Err(DropReason::UnansweredNeighbour));
    }

    #[test]
    fn no_tailroom_for_the_option_is_refused() {
        let asker: Ipv6Addr = "fd00:1::10".parse().unwrap();
        let mut ns = neighbour_solicitation(asker, "fd00:1::1".parse().unwrap(), None);
        let len = ns.len();
        let mut frame = Frame::new(&mut ns, 0, len, PortId(1)).unwrap();
        let parsed = parse(frame.data()).unwrap();
        assert_eq!(
            answer_neighbour(&mut frame, &parsed, &GW),
            Err(DropReason::NoHeadroom)
        );
    }

    proptest! {
        #[test]
        fn any_solicitation_for_another_unicast_address_is_answered(
            asker in any::<u128>(), target in any::<u128>(), sllao in any::<Option<[u8; 6]>>(),
        ) {
            let (asker, target) = (Ipv6Addr::from(asker), Ipv6Addr::from(target));
            prop_assume!(!asker.is_unspecified() && asker != target && !target.is_multicast());
            let na = answer(&neighbour_solicitation(asker, target, sllao)).unwrap();
            check_advertisement(&na, asker, target);
        }

        #[test]
        fn any_arp_request_for_another_address_is_answered(sender in 1u32.., target in any::<u32>()) {
            prop_assume!(sender != target);
            let reply = answer(&arp_frame(ArpOperation::REQUEST, sender.to_be_bytes(), target.to_be_bytes())).unwrap();
            let L3::Arp(arp) = parse(&reply).unwrap().l3 else { panic!("not ARP") };
            prop_assert_eq!(arp.op, ArpOperation::REPLY);
            prop_assert_eq!((arp.sender_mac, u32::from(arp.sender_ip)), (GW.mac, target));
            prop_assert_eq!(u32::from(arp.target_ip), sender);
        }
    }
}
