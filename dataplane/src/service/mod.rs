//! Stage 5, service load balancing: a frame addressed to a service frontend (VIP, port, protocol) gets
//! a backend, picked by Maglev from the flow's hash.
//!
//! Runs after the ipcache and before policy; only a flow's first packet gets here, later ones find
//! their backend in [`crate::conntrack`]. The pipeline then rewrites the destination ([`crate::nat`]).
//! Workers read the [`ServiceTable`] of the current snapshot; services are `Arc`ed so that a new
//! snapshot shares every service it does not change.

mod ends;
pub mod maglev;
mod ports;
mod retired;
mod table;

pub use ends::{EndKey, Probe};
pub use maglev::MaglevTable;
pub use retired::{BackendStatus, MAX_RETIRED};
pub use table::{ServiceError, ServiceTable};

use crate::{Addr, ClusterId};

/// A service's id, unique in a snapshot; conntrack remembers it for the reverse translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u32);

/// What a client connects to: the service's virtual address, port and IP protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frontend {
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
}

/// Whether a backend takes new flows. Only Active ones do; the others keep the flows they have
/// (conntrack remembers them) until those end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendState {
    Active,
    Terminating,
    Unhealthy,
}

/// One endpoint behind a service, possibly in another cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: Addr,
    pub port: u16,
    pub state: BackendState,
    /// The cluster the backend lives in; `None` for this cluster.
    pub cluster: Option<ClusterId>,
}

/// A service frontend with its backends and their Maglev table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub id: ServiceId,
    pub frontend: Frontend,
    backends: Vec<Backend>,
    maglev: MaglevTable,
}

impl Service {
    /// A service and its Maglev table. At most 65536 backends: the table stores 16-bit indices.
    pub fn new(
        id: ServiceId,
        frontend: Frontend,
        backends: Vec<Backend>,
    ) -> Result<Self, ServiceError> {
        if backends.len() > usize::from(u16::MAX) + 1 {
            return Err(ServiceError::TooManyBackends {
                id: id.0,
                count: backends.len(),
            });
        }
        let maglev = MaglevTable::build(&backends);
        Ok(Service {
            id,
            frontend,
            backends,
            maglev,
        })
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    pub fn maglev(&self) -> &MaglevTable {
        &self.maglev
    }

    /// The backend for a new flow with this hash (e.g. [`crate::FlowKey::symmetric_hash`]); `None`
    /// when no backend is active (drop with `DropReason::NoBackend`).
    pub fn select(&self, flow_hash: u32) -> Option<(u16, &Backend)> {
        let index = self.maglev.select(flow_hash)?;
        self.backends.get(usize::from(index)).map(|b| (index, b))
    }

    /// Heap bytes this service holds (backends and table), for sizing snapshots.
    pub fn heap_bytes(&self) -> usize {
        self.backends.capacity() * std::mem::size_of::<Backend>() + self.maglev.len() * 2
    }
}
