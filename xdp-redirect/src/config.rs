//! What the XDP program needs to know about its interface: its role and the node's addresses, as the
//! byte layouts of `struct node_config` and the LPM keys in bpf/redirect.bpf.c.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which side of the node an interface is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The node side of a pod's veth: everything the pod sends belongs to the dataplane.
    Pod,
    /// The node's link to the underlay: only tunnel traffic from known nodes, frames for local pods
    /// and replies to masqueraded flows do.
    Uplink,
    /// The dataplane's end of the host port: everything the node's stack sends into the mesh.
    Host,
}

/// The node's underlay addresses, to which tunnel traffic is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeAddrs {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// A prefix of pod addresses hosted on this node, e.g. 100.64.1.0/24.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PodPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl fmt::Display for PodPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The source ports masquerading allocates from, inclusive: replies to them are the dataplane's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasqueradePorts {
    pub first: u16,
    pub last: u16,
}

/// `struct node_config` of the BPF program: role, has_ipv4, has_ipv6 (u32 each), ipv4, ipv6, then
/// the masquerade range's first and last port (u16 each, 0 0 for none).
pub(crate) const NODE_CONFIG_LEN: usize = 36;

pub(crate) fn node_config(
    role: Role,
    node: NodeAddrs,
    masquerade: Option<MasqueradePorts>,
) -> [u8; NODE_CONFIG_LEN] {
    let mut out = [0u8; NODE_CONFIG_LEN];
    let role = match role {
        Role::Pod => 0u32,
        Role::Uplink => 1u32,
        Role::Host => 2u32,
    };
    out[0..4].copy_from_slice(&role.to_ne_bytes());
    out[4..8].copy_from_slice(&u32::from(node.ipv4.is_some()).to_ne_bytes());
    out[8..12].copy_from_slice(&u32::from(node.ipv6.is_some()).to_ne_bytes());
    if let Some(v4) = node.ipv4 {
        out[12..16].copy_from_slice(&v4.octets());
    }
    if let Some(v6) = node.ipv6 {
        out[16..32].copy_from_slice(&v6.octets());
    }
    if let Some(ports) = masquerade {
        // A first port of 0 means "none" to the program: 0 is never a masquerade port.
        out[32..34].copy_from_slice(&ports.first.max(1).to_ne_bytes());
        out[34..36].copy_from_slice(&ports.last.to_ne_bytes());
    }
    out
}

/// An LPM trie key: prefix length in host order, then the address in network order.
pub(crate) enum LpmKey {
    V4([u8; 8]),
    V6([u8; 20]),
}

impl LpmKey {
    /// `None` if the length exceeds the address width.
    pub(crate) fn of(prefix: PodPrefix) -> Option<LpmKey> {
        let len = u32::from(prefix.len);
        match prefix.addr {
            IpAddr::V4(a) if prefix.len <= 32 => {
                let mut k = [0u8; 8];
                k[..4].copy_from_slice(&len.to_ne_bytes());
                k[4..].copy_from_slice(&a.octets());
                Some(LpmKey::V4(k))
            }
            IpAddr::V6(a) if prefix.len <= 128 => {
                let mut k = [0u8; 20];
                k[..4].copy_from_slice(&len.to_ne_bytes());
                k[4..].copy_from_slice(&a.octets());
                Some(LpmKey::V6(k))
            }
            _ => None,
        }
    }

    /// The prefix a key read back from a map stands for.
    pub(crate) fn parse(key: &[u8]) -> Option<PodPrefix> {
        let len = u32::from_ne_bytes(key.get(..4)?.try_into().ok()?);
        let len = u8::try_from(len).ok()?;
        let addr = match key.len() {
            8 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&key[4..]).ok()?)),
            20 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&key[4..]).ok()?)),
            _ => return None,
        };
        Some(PodPrefix { addr, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_config_places_each_field_where_the_c_struct_has_it() {
        let node = NodeAddrs {
            ipv4: Some(Ipv4Addr::new(198, 18, 1, 1)),
            ipv6: None,
        };
        let ports = MasqueradePorts {
            first: 61000,
            last: 65535,
        };
        let c = node_config(Role::Uplink, node, Some(ports));
        assert_eq!(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]), 1);
        assert_eq!(u32::from_ne_bytes([c[4], c[5], c[6], c[7]]), 1);
        assert_eq!(u32::from_ne_bytes([c[8], c[9], c[10], c[11]]), 0);
        assert_eq!(&c[12..16], &[198, 18, 1, 1]);
        assert_eq!(u16::from_ne_bytes([c[32], c[33]]), 61000);
        assert_eq!(u16::from_ne_bytes([c[34], c[35]]), 65535);
        assert_eq!(
            node_config(Role::Pod, NodeAddrs::default(), None),
            [0u8; NODE_CONFIG_LEN]
        );
        let host = node_config(Role::Host, NodeAddrs::default(), None);
        assert_eq!(u32::from_ne_bytes([host[0], host[1], host[2], host[3]]), 2);
    }

    #[test]
    fn lpm_key_rejects_a_length_beyond_the_address() {
        let v4 = |len| PodPrefix {
            addr: IpAddr::V4(Ipv4Addr::new(100, 64, 1, 0)),
            len,
        };
        assert!(matches!(LpmKey::of(v4(24)), Some(LpmKey::V4(k)) if k[4..] == [100, 64, 1, 0]));
        assert!(LpmKey::of(v4(33)).is_none());
        let Some(LpmKey::V4(key)) = LpmKey::of(v4(24)) else {
            panic!("a v4 key")
        };
        assert_eq!(LpmKey::parse(&key), Some(v4(24)));
        let v6 = PodPrefix {
            addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
            len: 129,
        };
        assert!(LpmKey::of(v6).is_none());
    }
}
