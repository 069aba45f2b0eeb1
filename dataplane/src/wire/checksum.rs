//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Used wherever the path writes headers: encapsulation (outer IPv4 header, outer UDP over IPv6), the
//! pods' gateway (ICMPv6 neighbour advertisements), NAT (address and port rewrites) and TTL decrement.
//! Sums are kept folded to 16 bits in host order; [`finish`] complements a sum into a checksum.

/// The one's complement sum of `data` as big-endian 16-bit words (an odd last byte is padded with 0).
pub fn data(data: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        acc += u64::from(u32::from_be_bytes([word[0], word[1], word[2], word[3]]));
    }
    let mut tail = [0u8; 4];
    let rest = words.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_be_bytes(tail));
    fold(acc)
}

/// Folds a wide one's complement accumulator to 16 bits.
pub const fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The one's complement sum of several partial sums.
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// The checksum field value for a sum.
pub const fn finish(sum: u16) -> u16 {
    !sum
}

/// The sum of the IPv4 pseudo-header for a transport checksum over `len` bytes of `proto`.
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u16 {
    let acc = u64::from(u32::from_be_bytes(src))
        + u64::from(u32::from_be_bytes(dst))
        + u64::from(proto)
        + u64::from(len);
    fold(acc)
}

/// The sum of the IPv6 pseudo-header (RFC 8200 §8.1) for `len` bytes of upper-layer `next_header`.
pub fn pseudo_header_v6(src: [u8; 16], dst: [u8; 16], next_header: u8, len: u32) -> u16 {
    let acc = sum128(u128::from_be_bytes(src))
        + sum128(u128::from_be_bytes(dst))
        + u64::from(len >> 16)
        + u64::from(len & 0xffff)
        + u64::from(next_header);
    fold(acc)
}

/// A UDP checksum that came out as 0 is sent as 0xffff: 0 means "no checksum" (RFC 768).
pub const fn udp_nonzero(checksum: u16) -> u16 {
    if checksum == 0 {
        0xffff
    } else {
        checksum
    }
}

/// The checksum after one 16-bit word of the covered data changed from `old` to `new` (RFC 1624 eqn 3).
pub const fn update16(checksum: u16, old: u16, new: u16) -> u16 {
    let acc = (!checksum) as u64 + (!old) as u64 + new as u64;
    !fold(acc)
}

/// The checksum after a 32-bit word (an IPv4 address, a port pair) changed.
pub const fn update32(checksum: u16, old: u32, new: u32) -> u16 {
    let acc = (!checksum) as u64 + sum32(!old) + sum32(new);
    !fold(acc)
}

/// The checksum after a 128-bit word (an IPv6 address) changed.
pub const fn update128(checksum: u16, old: u128, new: u128) -> u16 {
    let acc = (!checksum) as u64 + sum128(!old) + sum128(new);
    !fold(acc)
}

/// The IPv4 header checksum after the TTL went from `ttl` to `ttl - 1`: TTL and protocol share a word.
pub const fn ipv4_ttl_decremented(checksum: u16, ttl: u8, protocol: u8) -> u16 {
    let old = (ttl as u16) << 8 | protocol as u16;
    let new = (ttl.wrapping_sub(1) as u16) << 8 | protocol as u16;
    update16(checksum, old, new)
}

const fn sum32(word: u32) -> u64 {
    (word >> 16) as u64 + (word & 0xffff) as u64
}

const fn sum128(word: u128) -> u64 {
    sum32((word >> 96) as u32)
        + sum32((word >> 64) as u32)
        + sum32((word >> 32) as u32)
        + sum32(word as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 1071 §3's worked example.
    #[test]
    fn sum_matches_rfc1071_example() {
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(data(&bytes), 0xddf2);
        assert_eq!(data(&bytes[..7]), fold(0x0001 + 0xf203 + 0xf4f5 + 0xf600));
    }

    #[test]
    fn ipv4_header_checksum_matches_etherparse() {
        let header = etherparse::Ipv4Header::new(
            100,
            64,
            etherparse::IpNumber::UDP,
            [198, 18, 1, 10],
            [198, 18, 2, 20],
        )
        .unwrap();
        let mut bytes = header.to_bytes();
        bytes[10..12].fill(0);
        assert_eq!(finish(data(&bytes)), header.calc_header_checksum());
    }

    fn word16(bytes: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([bytes[at], bytes[at + 1]])
    }

    fn checksum_of(bytes: &[u8]) -> u16 {
        finish(data(bytes))
    }

    proptest! {
        #[test]
        fn update16_equals_recomputation(
            mut bytes in proptest::collection::vec(any::<u8>(), 2..200),
            at in any::<prop::sample::Index>(),
            new in any::<u16>(),
        ) {
            let at = at.index(bytes.len() / 2) * 2;
            let before = checksum_of(&bytes);
            let old = word16(&bytes, at);
            bytes[at..at + 2].copy_from_slice(&new.to_be_bytes());
            // One's complement has two zeros; compare sums in the same representation.
            prop_assert_eq!(fold_zero(update16(before, old, new)), fold_zero(checksum_of(&bytes)));
        }

        #[test]
        fn update32_equals_recomputation(
            mut bytes in proptest::collection::vec(any::<u8>(), 4..200),
            at in any::<prop::sample::Index>(),
            new in any::<u32>(),
        ) {
            let at = at.index(bytes.len() / 2 - 1) * 2;
            let before = checksum_of(&bytes);
            let old = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
            bytes[at..at + 4].copy_from_slice(&new.to_be_bytes());
            prop_assert_eq!(fold_zero(update32(before, old, new)), fold_zero(checksum_of(&bytes)));
        }

        #[test]
        fn update128_equals_recomputation(
            mut bytes in proptest::collection::vec(any::<u8>(), 16..200),
            at in any::<prop::sample::Index>(),
            new in any::<u128>(),
        ) {
            let at = at.index(bytes.len() / 2 - 7) * 2;
            let before = checksum_of(&bytes);
            let mut old = [0u8; 16];
            old.copy_from_slice(&bytes[at..at + 16]);
            bytes[at..at + 16].copy_from_slice(&new.to_be_bytes());
            let updated = update128(before, u128::from_be_bytes(old), new);
            prop_assert_eq!(fold_zero(updated), fold_zero(checksum_of(&bytes)));
        }

        #[test]
        fn ttl_decrement_equals_recomputation(ttl in 1u8.., proto in any::<u8>(), rest in any::<[u8; 18]>()) {
            let mut header = [0u8; 20];
            header[..8].copy_from_slice(&rest[..8]);
            header[8] = ttl;
            header[9] = proto;
            header[12..20].copy_from_slice(&rest[10..18]);
            let before = checksum_of(&header);
            header[8] = ttl - 1;
            prop_assert_eq!(
                fold_zero(ipv4_ttl_decremented(before, ttl, proto)),
                fold_zero(checksum_of(&header))
            );
        }

        #[test]
        fn pseudo_header_v6_matches_etherparse_udp(
            src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(),
            sport in any::<u16>(), dport in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let ip = etherparse::Ipv6Header {
                source: src, destination: dst, next_header: etherparse::IpNumber::UDP,
                payload_length: (8 + payload.len()) as u16, ..Default::default()
            };
            let udp = etherparse::UdpHeader::with_ipv6_checksum(sport, dport, &ip, &payload).unwrap();
            let mut header = udp.to_bytes();
            header[6..8].fill(0);
            let len = (8 + payload.len()) as u32;
            let sum = combine(&[pseudo_header_v6(src, dst, 17, len), data(&header), data(&payload)]);
            prop_assert_eq!(udp_nonzero(finish(sum)), udp.checksum);
        }

        #[test]
        fn pseudo_header_v4_matches_etherparse_udp(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let ip = etherparse::Ipv4Header::new((8 + payload.len()) as u16, 64,
                etherparse::IpNumber::UDP, src, dst).unwrap();
            let udp = etherparse::UdpHeader::with_ipv4_checksum(1, 2, &ip, &payload).unwrap();
            let mut header = udp.to_bytes();
            header[6..8].fill(0);
            let len = (8 + payload.len()) as u16;
            let sum = combine(&[pseudo_header_v4(src, dst, 17, len), data(&header), data(&payload)]);
            prop_assert_eq!(udp_nonzero(finish(sum)), udp.checksum);
        }
    }

    /// 0x0000 and 0xffff are the same one's complement number.
    fn fold_zero(checksum: u16) -> u16 {
        if checksum == 0xffff {
            0
        } else {
            checksum
        }
    }
}
