//! Path MTU discovery for the tunnel. A frame that would exceed the underlay's MTU once encapsulated
//! is not dropped in silence: its sender gets an ICMP "fragmentation needed" (IPv4, DF set) or ICMPv6
//! "packet too big" with the MTU that fits, as a router would, so a pod with MTU 1500 learns the path
//! MTU and its TCP shrinks its segments. The error is written in place over the frame (the quoted
//! packet stays where it is; the new headers go into the headroom) and sent back out of the port the
//! frame came in on. Errors are rate-limited per worker; a frame over the limit, an IPv4 datagram that
//! may be fragmented (no DF: ICMP cannot help it) and an ICMP error itself (RFC 1122 §3.2.2) are
//! dropped as `frame_too_big`.

use std::net::Ipv6Addr;

use crate::parse::{Parsed, L3, L4};
use crate::wire::{ethernet, icmp, ipv4, ipv6};
use crate::{DropReason, Frame};

/// An IPv4 ICMP error carries at most this many bytes of IP packet (RFC 1812 §4.3.2.3).
const IPV4_ERROR_MAX: usize = 576;
/// TTL of the errors the node sends, as Linux's default.
const TTL: u8 = 64;

/// A token bucket: at most `RATE_PER_S` errors a second per worker, bursts of `BURST`.
#[derive(Clone, Copy, Debug)]
pub struct ErrorRateLimit {
    tokens: u32,
    refilled_ms: u64,
}

const RATE_PER_S: u64 = 1000;
const BURST: u32 = 50;

impl Default for ErrorRateLimit {
    fn default() -> Self {
        ErrorRateLimit {
            tokens: BURST,
            refilled_ms: 0,
        }
    }
}

impl ErrorRateLimit {
    /// Takes a token if one is left after refilling for the time since the last refill.
    pub fn allow(&mut self, now_ms: u64) -> bool {
        let earned = now_ms.saturating_sub(self.refilled_ms) * RATE_PER_S / 1000;
        if earned > 0 {
            self.tokens = (u64::from(self.tokens) + earned).min(u64::from(BURST)) as u32;
            self.refilled_ms = now_ms;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Who sends the error: an address of the packet's family and the MAC of the port it leaves by.
#[derive(Clone, Copy, Debug)]
pub struct Sender {
    pub ipv4: Option<u32>,
    pub ipv6: Option<u128>,
    pub mac: [u8; 6],
}

impl Sender {
    /// The IPv6 source: the node's address, else the link-local address of the port's MAC (EUI-64).
    fn ipv6(&self) -> u128 {
        self.ipv6
            .unwrap_or_else(|| u128::from(link_local(self.mac)))
    }
}

fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    let [a, b, c, d, e, f] = mac;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        a ^ 0x02,
        b,
        c,
        0xff,
        0xfe,
        d,
        e,
        f,
    ])
}

/// Turns `frame` (the IP packet `parsed` describes, from `parsed.l3_offset` on) into the error that
/// tells its sender `mtu` bytes fit. `Err(FrameTooBig)` when no error may be sent.
pub fn too_big_reply(
    frame: &mut Frame<'_>,
    parsed: &Parsed,
    mtu: u16,
    sender: &Sender,
) -> Result<(), DropReason> {
    if is_icmp_error(frame.data(), parsed) {
        return Err(DropReason::FrameTooBig);
    }
    match parsed.l3 {
        L3::Ipv4 => reply_v4(frame, parsed, mtu, sender),
        L3::Ipv6 => reply_v6(frame, parsed, mtu, sender),
        L3::Arp(_) => Err(DropReason::FrameTooBig),
    }
}

fn is_icmp_error(bytes: &[u8], parsed: &Parsed) -> bool {
    let ipv6 = parsed.l3 == L3::Ipv6;
    matches!(parsed.l4, L4::Icmp(_))
        && bytes
            .get(parsed.l4_offset)
            .is_some_and(|&t| icmp::is_error(t, ipv6))
}

fn reply_v4(
    frame: &mut Frame<'_>,
    parsed: &Parsed,
    mtu: u16,
    sender: &Sender,
) -> Result<(), DropReason> {
    let l3 = frame.data().get(parsed.l3_offset..).unwrap_or_default();
    let may_fragment = ipv4::Packet::new_checked(l3).is_ok_and(|ip| !ip.dont_fragment());
    let (Some(src), Some(dst), false) = (sender.ipv4, parsed.flow.src.v4_bits(), may_fragment)
    else {
        return Err(DropReason::FrameTooBig);
    };
    let headers = ipv4::HEADER_LEN + icmp::HEADER_LEN;
    let quoted = parsed.ip_len.min(IPV4_ERROR_MAX - headers);
    let bytes = prepend(frame, parsed, headers, quoted)?;
    let mut eth = ethernet::Frame::new_unchecked(&mut *bytes);
    eth.set_dst(parsed.eth_src);
    eth.set_src(sender.mac);
    eth.set_ethertype(ethernet::ETHERTYPE_IPV4);
    let (ip, message) = eth.payload_mut().split_at_mut(ipv4::HEADER_LEN);
    let repr = ipv4::Repr {
        src,
        dst,
        protocol: crate::flow::proto::ICMP,
        payload_len: (icmp::HEADER_LEN + quoted) as u16,
        ttl: TTL,
    };
    repr.emit(&mut ipv4::Packet::new_unchecked(ip));
    let mut error = icmp::Packet::new_unchecked(message);
    error.set_fragmentation_needed(mtu);
    error.fill_checksum_v4();
    Ok(())
}

fn reply_v6(
    frame: &mut Frame<'_>,
    parsed: &Parsed,
    mtu: u16,
    sender: &Sender,
) -> Result<(), DropReason> {
    let (src, dst) = (sender.ipv6(), parsed.flow.src.bits());
    let headers = ipv6::HEADER_LEN + icmp::HEADER_LEN;
    let quoted = parsed.ip_len.min(ipv6::MIN_MTU - headers);
    let bytes = prepend(frame, parsed, headers, quoted)?;
    let mut eth = ethernet::Frame::new_unchecked(&mut *bytes);
    eth.set_dst(parsed.eth_src);
    eth.set_src(sender.mac);
    eth.set_ethertype(ethernet::ETHERTYPE_IPV6);
    let (ip, message) = eth.payload_mut().split_at_mut(ipv6::HEADER_LEN);
    let repr = ipv6::Repr {
        src,
        dst,
        next_header: crate::flow::proto::ICMPV6,
        payload_len: (icmp::HEADER_LEN + quoted) as u16,
        hop_limit: TTL,
        flow_label: 0,
    };
    repr.emit(&mut ipv6::Packet::new_unchecked(ip));
    let mut error = icmp::Packet::new_unchecked(message);
    error.set_packet_too_big(u32::from(mtu));
    error.fill_checksum_v6(src, dst);
    Ok(())
}

/// Makes room for Ethernet and `headers` bytes in front of the IP packet, and cuts what follows to
/// `quoted` bytes of it: the returned bytes are the whole new frame.
fn prepend<'f>(
    frame: &'f mut Frame<'_>,
    parsed: &Parsed,
    headers: usize,
    quoted: usize,
) -> Result<&'f mut [u8], DropReason> {
    let new_l3 = ethernet::HEADER_LEN + headers;
    let grow = new_l3
        .checked_sub(parsed.l3_offset)
        .ok_or(DropReason::InvalidHeader)?;
    frame.push_front(grow).ok_or(DropReason::NoHeadroom)?;
    frame.truncate(new_l3 + quoted);
    Ok(frame.data_mut())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{PortId, HEADROOM};
    use crate::parse::parse;
    use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, SlicedPacket, TransportSlice};

    const POD_MAC: [u8; 6] = [2, 0, 0, 1, 1, 10];
    const GATEWAY: [u8; 6] = [2, 0xaa, 0, 0, 0, 1];

    fn big(v6: bool, df: bool) -> Vec<u8> {
        let mut buf = vec![0u8; HEADROOM];
        let payload = vec![0x5a; 1460];
        let eth = PacketBuilder::ethernet2(POD_MAC, GATEWAY);
        let mut frame = Vec::new();
        if v6 {
            eth.ipv6([0xfd; 16], [0xfe; 16], 64)
                .tcp(40000, 8080, 1, 512)
                .write(&mut frame, &payload[..1440])
                .unwrap();
        } else {
            eth.ipv4([100, 64, 1, 10], [100, 65, 1, 10], 64)
                .tcp(40000, 8080, 1, 512)
                .write(&mut frame, &payload)
                .unwrap();
            if !df {
                frame[14 + 6] &= !0x40;
                let mut ip = ipv4::Packet::new_unchecked(&mut frame[14..]);
                ip.fill_checksum();
            }
        }
        buf.extend_from_slice(&frame);
        buf
    }

    fn sender() -> Sender {
        Sender {
            ipv4: Some(0xc612_0101),
            ipv6: None,
            mac: GATEWAY,
        }
    }

    #[test]
    fn ipv4_with_df_gets_fragmentation_needed_quoting_576_bytes_at_most() {
        let mut buf = big(false, true);
        let len = buf.len() - HEADROOM;
        let mut frame = Frame::new(&mut buf, HEADROOM, len, PortId(1)).unwrap();
        let parsed = parse(frame.data()).unwrap();
        too_big_reply(&mut frame, &parsed, 1450, &sender()).unwrap();
        let sliced = SlicedPacket::from_ethernet(frame.data()).unwrap();
        let Some(etherparse::LinkSlice::Ethernet2(eth)) = sliced.link else {
            panic!("no ethernet")
        };
        assert_eq!((eth.destination(), eth.source()), (POD_MAC, GATEWAY));
        let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
            panic!("no ipv4")
        };
        let header = ip.header().to_header();
        assert_eq!(header.header_checksum, header.calc_header_checksum());
        assert_eq!(header.source, [198, 18, 1, 1]);
        assert_eq!(header.destination, [100, 64, 1, 10]);
        assert_eq!(usize::from(header.total_len), 576);
        let Some(TransportSlice::Icmpv4(icmp)) = sliced.transport else {
            panic!("no icmp")
        };
        assert_eq!(
            icmp.icmp_type(),
            Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1450
                }
            )
        );
        assert_eq!(
            icmp.checksum(),
            icmp.icmp_type().calc_checksum(icmp.payload())
        );
        // The quoted packet is the original's start: its IP header, then the TCP ports.
        let quoted = icmp.payload();
        assert_eq!(&quoted[12..16], &[100, 64, 1, 10]);
        assert_eq!(&quoted[20..22], &40000u16.to_be_bytes());
    }

    #[test]
    fn ipv6_gets_packet_too_big_within_the_minimum_mtu() {
        let mut buf = big(true, true);
        let len = buf.len() - HEADROOM;
        let mut frame = Frame::new(&mut buf, HEADROOM, len, PortId(1)).unwrap();
        let parsed = parse(frame.data()).unwrap();
        too_big_reply(&mut frame, &parsed, 1430, &sender()).unwrap();
        assert_eq!(frame.len(), 14 + 1280);
        let sliced = SlicedPacket::from_ethernet(frame.data()).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = sliced.net else {
            panic!("no ipv6")
        };
        let (src, dst) = (ip.header().source(), ip.header().destination());
        assert_eq!(dst, [0xfd; 16]);
        assert_eq!(Ipv6Addr::from(src), link_local(GATEWAY));
        let Some(TransportSlice::Icmpv6(icmp)) = sliced.transport else {
            panic!("no icmpv6")
        };
        assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1430 });
        let want = icmp
            .icmp_type()
            .calc_checksum(src, dst, icmp.payload())
            .unwrap();
        assert_eq!(icmp.checksum(), want);
    }

    #[test]
    fn datagrams_without_df_and_icmp_errors_get_no_error() {
        let mut buf = big(false, false);
        let len = buf.len() - HEADROOM;
        let mut frame = Frame::new(&mut buf, HEADROOM, len, PortId(1)).unwrap();
        let parsed = parse(frame.data()).unwrap();
        assert_eq!(
            too_big_reply(&mut frame, &parsed, 1450, &sender()),
            Err(DropReason::FrameTooBig)
        );
        let mut error = vec![0u8; HEADROOM];
        let mut bytes = Vec::new();
        PacketBuilder::ethernet2(POD_MAC, GATEWAY)
            .ipv4([100, 64, 1, 10], [100, 65, 1, 10], 64)
            .icmpv4(Icmpv4Type::TimeExceeded(
                etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
            ))
            .write(&mut bytes, &[0x45; 28])
            .unwrap();
        error.extend_from_slice(&bytes);
        let mut frame = Frame::new(&mut error, HEADROOM, bytes.len(), PortId(1)).unwrap();
        let parsed = parse(frame.data()).unwrap();
        assert_eq!(
            too_big_reply(&mut frame, &parsed, 1450, &sender()),
            Err(DropReason::FrameTooBig)
        );
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_its_rate() {
        let mut limit = ErrorRateLimit::default();
        let burst = (0..1000).filter(|_| limit.allow(0)).count();
        assert_eq!(burst, BURST as usize);
        assert!(!limit.allow(0));
        // 10 ms at 1000/s earn 10 more.
        let later = (0..1000).filter(|_| limit.allow(10)).count();
        assert_eq!(later, 10);
    }
}
