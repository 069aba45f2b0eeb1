//! The 5-tuple every table keys on.
//!
//! Addresses of both families are held in one 16-byte form (IPv4 as `::ffff:a.b.c.d`) so that conntrack,
//! service and policy tables need one key type, and hashing a key is a few integer writes.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 or IPv6 address, IPv4 mapped into IPv6.
///
/// Aligned to 8 bytes, not a `u128`'s 16: at 16, every pair, entry and `Option` holding an address
/// is padded by 8 bytes (a map of addresses to pointers takes 32 bytes a slot instead of 24), in
/// every table of the control plane and the dataplane. x86-64 and AArch64 load it as two words either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(C, packed(8))]
pub struct Addr(u128);

impl Addr {
    const V4_MAPPED: u128 = 0xffff_0000_0000;

    pub const fn from_v4_bits(bits: u32) -> Self {
        Addr(Self::V4_MAPPED | bits as u128)
    }

    pub const fn from_v6_bits(bits: u128) -> Self {
        Addr(bits)
    }

    pub const fn bits(self) -> u128 {
        self.0
    }

    pub const fn is_ipv4(self) -> bool {
        self.0 >> 32 == Self::V4_MAPPED >> 32
    }

    /// The IPv4 address, if this is one.
    pub const fn v4_bits(self) -> Option<u32> {
        if self.is_ipv4() {
            Some(self.0 as u32)
        } else {
            None
        }
    }

    pub fn ip(self) -> IpAddr {
        match self.v4_bits() {
            Some(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
            None => IpAddr::V6(Ipv6Addr::from(self.0)),
        }
    }
}

impl From<Ipv4Addr> for Addr {
    fn from(ip: Ipv4Addr) -> Self {
        Addr::from_v4_bits(u32::from(ip))
    }
}

impl From<Ipv6Addr> for Addr {
    fn from(ip: Ipv6Addr) -> Self {
        Addr(u128::from(ip))
    }
}

impl From<IpAddr> for Addr {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => v4.into(),
            IpAddr::V6(v6) => v6.into(),
        }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.ip().fmt(f)
    }
}

/// IP protocol numbers the pipeline understands.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// A flow's 5-tuple in the direction the frame travels. For ICMP echo both ports hold the echo
/// identifier, so a request and its reply are each other's reverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
}

impl FlowKey {
    /// The same flow seen from the other end.
    pub const fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            proto: self.proto,
        }
    }

    /// A hash that is the same for both directions of a flow: tunnel source ports and worker steering
    /// use it so that a flow and its replies are spread the same way.
    pub fn symmetric_hash(&self) -> u32 {
        let canonical = if (self.src, self.src_port) <= (self.dst, self.dst_port) {
            *self
        } else {
            self.reversed()
        };
        let mut h = rustc_hash::FxHasher::default();
        canonical.hash(&mut h);
        let x = h.finish();
        (x ^ (x >> 32)) as u32
    }
}

impl Hash for FlowKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(self.src.0);
        state.write_u128(self.dst.0);
        state.write_u64(
            (self.src_port as u64) << 24 | (self.dst_port as u64) << 8 | self.proto as u64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FlowKey {
        FlowKey {
            src: Ipv4Addr::new(100, 64, 1, 10).into(),
            dst: "fd00::1".parse::<Ipv6Addr>().unwrap().into(),
            src_port: 40000,
            dst_port: 80,
            proto: proto::TCP,
        }
    }

    #[test]
    fn addresses_round_trip_both_families() {
        let k = key();
        assert!(k.src.is_ipv4());
        assert!(!k.dst.is_ipv4());
        assert_eq!(k.src.ip().to_string(), "100.64.1.10");
        assert_eq!(k.dst.ip().to_string(), "fd00::1");
    }

    #[test]
    fn symmetric_hash_ignores_direction() {
        let k = key();
        assert_eq!(k.symmetric_hash(), k.reversed().symmetric_hash());
        let mut other = k;
        other.src_port += 1;
        assert_ne!(k.symmetric_hash(), other.symmetric_hash());
    }

    #[test]
    fn an_address_pads_nothing_beside_a_pointer() {
        assert_eq!(std::mem::align_of::<Addr>(), 8);
        assert_eq!(std::mem::size_of::<(Addr, usize)>(), 24);
        assert_eq!(std::mem::size_of::<Option<Addr>>(), 24);
    }
}
