//! ICMP errors about tracked flows ("related" traffic, as Linux's conntrack calls it). A destination
//! unreachable, time exceeded, parameter problem or packet too big quotes the start of the packet that
//! caused it. The pipeline matches the quoted packet to the conntrack entry of the flow it belongs to:
//! an error with no such flow is dropped (`unrelated_icmp_error`); one with a flow is delivered without
//! facing policy, like a reply, and if that flow was translated the error is translated back so that
//! its receiver recognises its own packet — the quoted packet's addresses, ports and checksums, and the
//! error's own address where it stood for the translated end.
//!
//! Two translations exist: a masqueraded flow (the quoted source is the node's `addr:port`; the pod's
//! is restored, and the error is addressed to the pod) and a service flow (the quoted destination is
//! the backend; the frontend is restored, and so is the error's source if the backend itself sent it).

use crate::conntrack::{CtNat, NatKind};
use crate::flow::proto;
use crate::nat::{self, End};
use crate::parse::{Parsed, L3, L4};
use crate::wire::{checksum, icmp, ipv4, ipv6};
use crate::{Addr, DropReason, FlowKey};

/// The packet an error quotes, as it was sent (after any translation on its way out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted {
    pub flow: FlowKey,
    /// Where the quoted IP header starts in the frame.
    ip_offset: usize,
    /// Where the quoted transport header starts in the frame.
    l4_offset: usize,
}

/// The quoted packet of an ICMP error; `None` for a frame that is no ICMP error, or quotes a packet
/// too short to name its flow (the IP header and the first 8 bytes of transport are required).
pub fn quoted(frame: &[u8], parsed: &Parsed) -> Option<Quoted> {
    let L4::Icmp(_) = parsed.l4 else {
        return None;
    };
    let ipv6 = parsed.l3 == L3::Ipv6;
    let message = icmp::Packet::new_checked(frame.get(parsed.l4_offset..parsed.l3_end())?).ok()?;
    if !icmp::is_error(message.msg_type(), ipv6) {
        return None;
    }
    let ip_offset = parsed.l4_offset + icmp::HEADER_LEN;
    let inner = frame.get(ip_offset..parsed.l3_end())?;
    let (src, dst, protocol, header_len) = if ipv6 {
        let ip = ipv6::Packet::new_checked(inner).ok()?;
        let (src, dst) = (Addr::from_v6_bits(ip.src()), Addr::from_v6_bits(ip.dst()));
        (src, dst, ip.next_header(), ipv6::HEADER_LEN)
    } else {
        let ip = ipv4::Packet::new_checked(inner).ok()?;
        let (src, dst) = (Addr::from_v4_bits(ip.src()), Addr::from_v4_bits(ip.dst()));
        (src, dst, ip.protocol(), ip.header_len())
    };
    let l4 = inner.get(header_len..header_len + 8)?;
    let word = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    let (src_port, dst_port) = match protocol {
        proto::TCP | proto::UDP => (word(0), word(2)),
        proto::ICMP | proto::ICMPV6 if is_echo(l4[0], ipv6) => (word(4), word(4)),
        _ => return None,
    };
    Some(Quoted {
        flow: FlowKey {
            src,
            dst,
            src_port,
            dst_port,
            proto: protocol,
        },
        ip_offset,
        l4_offset: ip_offset + header_len,
    })
}

fn is_echo(msg_type: u8, ipv6: bool) -> bool {
    if ipv6 {
        matches!(
            msg_type,
            icmp::kind::V6_ECHO_REQUEST | icmp::kind::V6_ECHO_REPLY
        )
    } else {
        matches!(
            msg_type,
            icmp::kind::V4_ECHO_REQUEST | icmp::kind::V4_ECHO_REPLY
        )
    }
}

/// How an error about a translated flow is put back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Untranslate {
    quoted: Quoted,
    /// The end of the quoted packet to restore, and what to.
    end: End,
    addr: Addr,
    port: u16,
}

impl Untranslate {
    /// The translation an error quoting `quoted` needs, given the conntrack entry found for the quoted
    /// tuple; `None` for a flow that was not translated.
    pub fn for_entry(quoted: Quoted, nat: Option<CtNat>) -> Option<Untranslate> {
        let nat = nat?;
        let end = match nat.kind {
            NatKind::Unmasquerade => End::Source,
            NatKind::Frontend => End::Destination,
            NatKind::Backend | NatKind::Masquerade => return None,
        };
        Some(Untranslate {
            quoted,
            end,
            addr: nat.addr,
            port: nat.port,
        })
    }

    /// The error's own flow once translated back: what routing and the flow log see.
    pub fn outer_flow(&self, outer: FlowKey) -> FlowKey {
        match self.end {
            End::Source if outer.dst == self.quoted.flow.src => FlowKey {
                dst: self.addr,
                ..outer
            },
            End::Destination if outer.src == self.quoted.flow.dst => FlowKey {
                src: self.addr,
                ..outer
            },
            _ => outer,
        }
    }

    /// Rewrites the quoted packet, the error's address and the error's checksum.
    pub fn apply(&self, frame: &mut [u8], parsed: &Parsed) -> Result<(), DropReason> {
        let ipv6 = parsed.l3 == L3::Ipv6;
        let family = parsed.l3;
        let quoted_ip = frame
            .get_mut(self.quoted.ip_offset..)
            .ok_or(DropReason::InvalidHeader)?;
        let change = nat::rewrite_address(quoted_ip, family, self.end, self.addr)?;
        self.rewrite_quoted_port(frame, ipv6, change)?;
        let outer = self.outer_flow(parsed.flow);
        let l3 = frame
            .get_mut(parsed.l3_offset..)
            .ok_or(DropReason::InvalidHeader)?;
        if outer.dst != parsed.flow.dst {
            nat::rewrite_address(l3, family, End::Destination, outer.dst)?;
        }
        if outer.src != parsed.flow.src {
            nat::rewrite_address(l3, family, End::Source, outer.src)?;
        }
        let message = frame
            .get_mut(parsed.l4_offset..parsed.l3_end())
            .ok_or(DropReason::InvalidHeader)?;
        let mut error = icmp::Packet::new_checked(message).map_err(DropReason::from)?;
        if ipv6 {
            error.fill_checksum_v6(outer.src.bits(), outer.dst.bits());
        } else {
            error.fill_checksum_v4();
        }
        Ok(())
    }

    /// The quoted transport header is often cut at 8 bytes: its ports (or echo identifier) are always
    /// there, its checksum only when enough was quoted (TCP's sits at bytes 16–17).
    fn rewrite_quoted_port(
        &self,
        frame: &mut [u8],
        ipv6: bool,
        change: nat::AddrChange,
    ) -> Result<(), DropReason> {
        let l4 = frame
            .get_mut(self.quoted.l4_offset..)
            .ok_or(DropReason::InvalidHeader)?;
        let (port_at, checksum_at, pseudo) = match self.quoted.flow.proto {
            proto::TCP => (self.port_offset(), 16, true),
            proto::UDP => (self.port_offset(), 6, true),
            _ => (4, 2, ipv6),
        };
        let old = read16(l4, port_at)?;
        write16(l4, port_at, self.port)?;
        if let Ok(sum) = read16(l4, checksum_at) {
            let none = self.quoted.flow.proto == proto::UDP && sum == 0;
            if !none {
                let mut sum = checksum::update16(sum, old, self.port);
                if pseudo {
                    sum = change.update(sum);
                }
                write16(l4, checksum_at, sum)?;
            }
        }
        Ok(())
    }

    fn port_offset(&self) -> usize {
        match self.end {
            End::Source => 0,
            End::Destination => 2,
        }
    }
}

fn read16(bytes: &[u8], at: usize) -> Result<u16, DropReason> {
    match bytes.get(at..at + 2) {
        Some(&[hi, lo]) => Ok(u16::from_be_bytes([hi, lo])),
        _ => Err(DropReason::InvalidHeader),
    }
}

fn write16(bytes: &mut [u8], at: usize, value: u16) -> Result<(), DropReason> {
    bytes
        .get_mut(at..at + 2)
        .ok_or(DropReason::InvalidHeader)?
        .copy_from_slice(&value.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse;
    use etherparse::{icmpv4, Icmpv4Type, Icmpv6Type, PacketBuilder, SlicedPacket, TransportSlice};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const POD: [u8; 4] = [100, 64, 1, 10];
    const NODE: [u8; 4] = [198, 18, 1, 1];
    const WORLD: [u8; 4] = [203, 0, 113, 10];
    const ROUTER: [u8; 4] = [198, 18, 255, 1];

    /// A packet as it left, to be quoted whole or cut.
    fn sent_v4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, udp: bool) -> Vec<u8> {
        let ip = PacketBuilder::ipv4(src, dst, 63);
        let mut out = Vec::new();
        if udp {
            ip.udp(sport, dport).write(&mut out, b"query").unwrap();
        } else {
            ip.tcp(sport, dport, 1, 512)
                .write(&mut out, b"GET /")
                .unwrap();
        }
        out
    }

    fn error_v4(from: [u8; 4], to: [u8; 4], kind: Icmpv4Type, quoted: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2; 6], [3; 6])
            .ipv4(from, to, 64)
            .icmpv4(kind)
            .write(&mut out, quoted)
            .unwrap();
        out
    }

    fn icmp_of(bytes: &[u8]) -> (etherparse::Ipv4Header, Vec<u8>, bool) {
        let sliced = SlicedPacket::from_ethernet(bytes).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
            panic!("no ipv4")
        };
        let Some(TransportSlice::Icmpv4(icmp)) = sliced.transport else {
            panic!("no icmp")
        };
        let ok = icmp.checksum() == icmp.icmp_type().calc_checksum(icmp.payload());
        (ip.header().to_header(), icmp.payload().to_vec(), ok)
    }

    #[test]
    fn a_time_exceeded_for_a_masqueraded_flow_goes_back_to_the_pod_quoting_its_own_packet() {
        // Routers quote the IP header and 8 bytes: the TCP checksum is not in the quote.
        let sent = sent_v4(NODE, 61000, WORLD, 80, false);
        let quote = &sent[..28];
        let mut bytes = error_v4(
            ROUTER,
            NODE,
            Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit),
            quote,
        );
        let parsed = parse(&bytes).unwrap();
        let q = quoted(&bytes, &parsed).unwrap();
        assert_eq!(q.flow.src, Addr::from(Ipv4Addr::from(NODE)));
        assert_eq!((q.flow.src_port, q.flow.dst_port), (61000, 80));
        let pod = Addr::from(Ipv4Addr::from(POD));
        let fix = Untranslate::for_entry(q, Some(CtNat::unmasquerade(pod, 40000))).unwrap();
        assert_eq!(fix.outer_flow(parsed.flow).dst, pod);
        fix.apply(&mut bytes, &parsed).unwrap();
        let (outer, quoted_bytes, checksum_ok) = icmp_of(&bytes);
        assert!(checksum_ok, "ICMP checksum");
        assert_eq!(outer.destination, POD);
        assert_eq!(outer.source, ROUTER);
        assert_eq!(outer.header_checksum, outer.calc_header_checksum());
        let (inner, rest) = etherparse::Ipv4Header::from_slice(&quoted_bytes).unwrap();
        assert_eq!(inner.source, POD);
        assert_eq!(inner.header_checksum, inner.calc_header_checksum());
        assert_eq!(&rest[0..2], &40000u16.to_be_bytes());
    }

    #[test]
    fn a_port_unreachable_from_a_backend_names_the_frontend_with_every_checksum_right() {
        let client = [100, 64, 1, 10];
        let backend = [100, 65, 1, 20];
        let vip = [100, 64, 255, 10];
        let sent = sent_v4(client, 5000, backend, 5353, true);
        let mut bytes = error_v4(
            backend,
            client,
            Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port),
            &sent,
        );
        let parsed = parse(&bytes).unwrap();
        let q = quoted(&bytes, &parsed).unwrap();
        let frontend = CtNat::frontend(Addr::from(Ipv4Addr::from(vip)), 53);
        let fix = Untranslate::for_entry(q, Some(frontend)).unwrap();
        fix.apply(&mut bytes, &parsed).unwrap();
        let (outer, quoted_bytes, checksum_ok) = icmp_of(&bytes);
        assert!(checksum_ok);
        assert_eq!((outer.source, outer.destination), (vip, client));
        let (inner, udp) = etherparse::Ipv4Header::from_slice(&quoted_bytes).unwrap();
        assert_eq!(inner.destination, vip);
        let (header, payload) = etherparse::UdpHeader::from_slice(udp).unwrap();
        assert_eq!(header.destination_port, 53);
        let want = header.calc_checksum_ipv4(&inner, payload).unwrap();
        assert_eq!(header.checksum, want, "quoted UDP checksum");
    }

    #[test]
    fn an_ipv6_packet_too_big_about_an_echo_is_matched_by_its_identifier() {
        let (pod, node, world): (Ipv6Addr, Ipv6Addr, Ipv6Addr) = (
            "fd00::10".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
            "2001:db8:ff::1".parse().unwrap(),
        );
        let mut sent = Vec::new();
        PacketBuilder::ipv6(node.octets(), world.octets(), 63)
            .icmpv6_echo_request(61500, 3)
            .write(&mut sent, &[0u8; 64])
            .unwrap();
        let mut bytes = Vec::new();
        PacketBuilder::ethernet2([2; 6], [3; 6])
            .ipv6(world.octets(), node.octets(), 64)
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
            .write(&mut bytes, &sent)
            .unwrap();
        let parsed = parse(&bytes).unwrap();
        let q = quoted(&bytes, &parsed).unwrap();
        assert_eq!((q.flow.src_port, q.flow.dst_port), (61500, 61500));
        let fix = Untranslate::for_entry(q, Some(CtNat::unmasquerade(pod.into(), 7))).unwrap();
        fix.apply(&mut bytes, &parsed).unwrap();
        let sliced = SlicedPacket::from_ethernet(&bytes).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = sliced.net else {
            panic!("no ipv6")
        };
        assert_eq!(ip.header().destination(), pod.octets());
        let Some(TransportSlice::Icmpv6(icmp)) = sliced.transport else {
            panic!("no icmpv6")
        };
        let want = icmp
            .icmp_type()
            .calc_checksum(ip.header().source(), pod.octets(), icmp.payload())
            .unwrap();
        assert_eq!(icmp.checksum(), want);
        let quoted_echo = &icmp.payload()[40..];
        assert_eq!(&quoted_echo[4..6], &7u16.to_be_bytes());
        let (echo, data) = etherparse::Icmpv6Header::from_slice(quoted_echo).unwrap();
        let expected = echo
            .icmp_type
            .calc_checksum(pod.octets(), world.octets(), data)
            .unwrap();
        assert_eq!(echo.checksum, expected, "quoted echo checksum");
    }

    #[test]
    fn queries_and_short_quotes_are_not_errors_to_match() {
        let mut echo = Vec::new();
        PacketBuilder::ethernet2([2; 6], [3; 6])
            .ipv4(POD, WORLD, 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut echo, b"ping")
            .unwrap();
        assert_eq!(quoted(&echo, &parse(&echo).unwrap()), None);
        let sent = sent_v4(NODE, 61000, WORLD, 80, false);
        let short = error_v4(
            ROUTER,
            NODE,
            Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit),
            &sent[..24],
        );
        assert_eq!(quoted(&short, &parse(&short).unwrap()), None);
    }

    #[test]
    fn an_untranslated_flow_needs_no_rewrite() {
        let sent = sent_v4(POD, 40000, [100, 65, 1, 10], 80, false);
        let bytes = error_v4(
            [100, 65, 1, 10],
            POD,
            Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port),
            &sent,
        );
        let q = quoted(&bytes, &parse(&bytes).unwrap()).unwrap();
        assert_eq!(Untranslate::for_entry(q, None), None);
        let backend = CtNat::backend(Addr::from(Ipv4Addr::new(1, 2, 3, 4)), 80);
        assert_eq!(Untranslate::for_entry(q, Some(backend)), None);
    }
}
