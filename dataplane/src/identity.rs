//! Security identities and cluster ids, as Cilium numbers them.
//!
//! An identity is 24 bits: it travels in the VNI of the tunnel header. Cluster `c` (1..=255) owns the
//! identities `c << 16 ..= (c << 16) | 0xffff`; identities below 256 are reserved for well-known peers.

use std::fmt;

/// A cluster's id in the mesh, 1..=255. Zero means "this cluster, not meshed" and is not a valid mesh id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(u8);

impl ClusterId {
    /// A mesh cluster id; `None` for 0.
    pub const fn new(id: u8) -> Option<Self> {
        if id == 0 {
            None
        } else {
            Some(ClusterId(id))
        }
    }

    pub const fn get(self) -> u8 {
        self.0
    }

    /// The first identity this cluster may allocate for its endpoints.
    pub const fn first_identity(self) -> Identity {
        Identity((self.0 as u32) << 16)
    }

    /// The last identity this cluster owns.
    pub const fn last_identity(self) -> Identity {
        Identity(((self.0 as u32) << 16) | 0xffff)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A 24-bit security identity: what policy is written against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(u32);

impl Identity {
    pub const MAX: u32 = 0x00ff_ffff;
    /// No identity known: the sender did not say, or the peer is not in the ipcache.
    pub const UNKNOWN: Identity = Identity(0);
    /// The local node itself.
    pub const HOST: Identity = Identity(1);
    /// Anything outside the mesh.
    pub const WORLD: Identity = Identity(2);
    /// Another node of the mesh (its own addresses, not its pods).
    pub const REMOTE_NODE: Identity = Identity(6);

    /// An identity from its 24-bit value; `None` if it does not fit in 24 bits.
    pub const fn new(id: u32) -> Option<Self> {
        if id > Self::MAX {
            None
        } else {
            Some(Identity(id))
        }
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    /// Reserved identities (below 256) name well-known peers, not endpoints.
    pub const fn is_reserved(self) -> bool {
        self.0 < 256
    }

    /// The cluster that allocated this identity; `None` for reserved identities.
    pub const fn cluster(self) -> Option<ClusterId> {
        if self.is_reserved() {
            None
        } else {
            ClusterId::new((self.0 >> 16) as u8)
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_must_fit_the_vni() {
        assert_eq!(
            Identity::new(0x00ff_ffff).map(Identity::get),
            Some(0x00ff_ffff)
        );
        assert_eq!(Identity::new(0x0100_0000), None);
    }

    #[test]
    fn cluster_owns_its_identity_range() {
        let c2 = ClusterId::new(2).unwrap();
        assert_eq!(c2.first_identity().get(), 0x2_0000);
        assert_eq!(c2.last_identity().get(), 0x2_ffff);
        assert_eq!(Identity::new(0x2_1234).unwrap().cluster(), Some(c2));
        assert_eq!(Identity::WORLD.cluster(), None);
        assert_eq!(ClusterId::new(0), None);
    }
}
