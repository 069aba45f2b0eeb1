//! Backends taken out of their service, so that an established flow learns it has to move without
//! looking its service up on every packet.
//!
//! Conntrack pins a flow to its backend. Checking on each packet that the backend is still in the
//! service costs a service lookup (several cache misses at 10k services); instead, the table remembers
//! which (service, backend) pairs it dropped, and a flow moves when its pair is here. The set is small
//! and usually empty. It is bounded: past [`MAX_RETIRED`] pairs it forgets them all and says so, and
//! the pipeline falls back to looking the service up until the control plane clears it.

use std::sync::Arc;

use crate::hash::KeyedSet;

use super::{Backend, ServiceId};
use crate::Addr;

/// Most retired pairs remembered before falling back to looking services up.
pub const MAX_RETIRED: usize = 65_536;

/// What the table knows of a (service, backend) pair an established flow uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendStatus {
    /// Still in the service, or at least never taken out of it.
    Serving,
    /// Taken out: the flow must be balanced again.
    Retired,
    /// Too many pairs were retired to remember: look the service up.
    Unknown,
}

type Pair = (ServiceId, Addr, u16);

#[derive(Clone, Debug, Default)]
pub(super) struct Retired {
    pairs: Arc<KeyedSet<Pair>>,
    overflowed: bool,
}

impl Retired {
    pub fn status(&self, service: ServiceId, addr: Addr, port: u16) -> BackendStatus {
        if self.overflowed {
            BackendStatus::Unknown
        } else if !self.pairs.is_empty() && self.pairs.contains(&(service, addr, port)) {
            BackendStatus::Retired
        } else {
            BackendStatus::Serving
        }
    }

    /// Records that `old` backends of `service` are gone and `new` ones are (back) in.
    pub fn replace(&mut self, service: ServiceId, old: &[Backend], new: &[Backend]) {
        let gone = old
            .iter()
            .filter(|o| !new.iter().any(|n| same(o, n)))
            .map(|b| (service, b.addr, b.port));
        let back: Vec<Pair> = new
            .iter()
            .map(|b| (service, b.addr, b.port))
            .filter(|pair| self.pairs.contains(pair))
            .collect();
        let gone: Vec<Pair> = gone.collect();
        if gone.is_empty() && back.is_empty() {
            return;
        }
        let pairs = Arc::make_mut(&mut self.pairs);
        for pair in back {
            pairs.remove(&pair);
        }
        pairs.extend(gone);
        if pairs.len() > MAX_RETIRED {
            pairs.clear();
            self.overflowed = true;
        }
    }

    /// Forgets every retired pair: for the control plane, once no flow can still use one.
    pub fn clear(&mut self) {
        self.pairs = Arc::default();
        self.overflowed = false;
    }
}

fn same(a: &Backend, b: &Backend) -> bool {
    a.addr == b.addr && a.port == b.port
}
