//! What the XDP program needs to know about its interface: its role and the node's addresses, as the
//! byte layouts of `struct node_config` and the LPM keys in bpf/redirect.bpf.c.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which side of the node an interface is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The node side of a pod's veth: everything the pod sends belongs to the dataplane.
    Pod,
    /// The node's link to the underlay: only tunnel traffic and frames for local pods do.
    Uplink,
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

/// `struct node_config` of the BPF program: role, has_ipv4, has_ipv6 (u32 each), ipv4, ipv6.
pub(crate) const NODE_CONFIG_LEN: usize = 32;

pub(crate) fn node_config(role: Role, node: NodeAddrs) -> [u8; NODE_CONFIG_LEN] {
    let mut out = [0u8; NODE_CONFIG_LEN];
    let role = match role {
        Role::Pod => 0u32,
        Role::Uplink => 1u32,
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
        let c = node_config(Role::Uplink, node);
        assert_eq!(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]), 1);
        assert_eq!(u32::from_ne_bytes([c[4], c[5], c[6], c[7]]), 1);
        assert_eq!(u32::from_ne_bytes([c[8], c[9], c[10], c[11]]), 0);
        assert_eq!(&c[12..16], &[198, 18, 1, 1]);
        assert_eq!(
            node_config(Role::Pod, NodeAddrs::default()),
            [0u8; NODE_CONFIG_LEN]
        );
    }

    #[test]
    fn lpm_key_rejects_a_length_beyond_the_address() {
        let v4 = |len| PodPrefix {
            addr: IpAddr::V4(Ipv4Addr::new(100, 64, 1, 0)),
            len,
        };
        assert!(matches!(LpmKey::of(v4(24)), Some(LpmKey::V4(k)) if k[4..] == [100, 64, 1, 0]));
        assert!(LpmKey::of(v4(33)).is_none());
        let v6 = PodPrefix {
            addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
            len: 129,
        };
        assert!(LpmKey::of(v6).is_none());
    }
}
