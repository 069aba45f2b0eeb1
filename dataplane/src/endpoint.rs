//! The pods on this node: which port each is behind, its MAC, addresses and security identity; and
//! anti-spoofing (stage 7), which holds a pod to its own source MAC and addresses.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::hash::KeyedMap;
use thiserror::Error;

use crate::{Addr, DropReason, Identity, PortId};

/// A pod (or any workload) attached to this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub port: PortId,
    pub mac: [u8; 6],
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub identity: Identity,
    /// `namespace/name`, for flow logs and the CLI.
    pub name: Arc<str>,
}

impl Endpoint {
    /// Whether `addr` is one of this endpoint's own addresses.
    pub fn owns(&self, addr: Addr) -> bool {
        match addr.ip() {
            std::net::IpAddr::V4(v4) => self.ipv4 == Some(v4),
            std::net::IpAddr::V6(v6) => self.ipv6 == Some(v6),
        }
    }

    /// Anti-spoofing: the frame's source MAC and source address must be the endpoint's own.
    pub fn check_source(&self, src_mac: [u8; 6], src: Addr) -> Result<(), DropReason> {
        if src_mac == self.mac && self.owns(src) {
            Ok(())
        } else {
            Err(DropReason::SpoofedSource)
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("endpoint table is full ({0} endpoints)")]
    Full(usize),
    #[error("port {0:?} is already bound to endpoint {1}")]
    PortTaken(PortId, Arc<str>),
    #[error("address {0} is already owned by endpoint {1}")]
    AddressTaken(Addr, Arc<str>),
}

/// The local endpoints, by port and by address. Read-only on the packet path.
#[derive(Clone, Debug, Default)]
pub struct EndpointTable {
    by_port: Vec<Option<Arc<Endpoint>>>,
    by_addr: KeyedMap<Addr, Arc<Endpoint>>,
    len: usize,
    capacity: usize,
}

impl EndpointTable {
    /// An empty table that holds at most `capacity` endpoints.
    pub fn with_capacity(capacity: usize) -> Self {
        EndpointTable {
            capacity,
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn by_port(&self, port: PortId) -> Option<&Endpoint> {
        self.by_port.get(port.0 as usize)?.as_deref()
    }

    pub fn by_addr(&self, addr: Addr) -> Option<&Endpoint> {
        self.by_addr.get(&addr).map(|e| &**e)
    }

    /// Adds an endpoint; its port and addresses must be free.
    pub fn insert(&mut self, endpoint: Endpoint) -> Result<(), EndpointError> {
        let slot = endpoint.port.0 as usize;
        if let Some(Some(taken)) = self.by_port.get(slot) {
            return Err(EndpointError::PortTaken(endpoint.port, taken.name.clone()));
        }
        if self.len() >= self.capacity {
            return Err(EndpointError::Full(self.capacity));
        }
        let addrs = addresses(&endpoint);
        for addr in &addrs {
            if let Some(owner) = self.by_addr.get(addr) {
                return Err(EndpointError::AddressTaken(*addr, owner.name.clone()));
            }
        }
        let endpoint = Arc::new(endpoint);
        for addr in addrs {
            self.by_addr.insert(addr, endpoint.clone());
        }
        if self.by_port.len() <= slot {
            self.by_port.resize(slot + 1, None);
        }
        self.by_port[slot] = Some(endpoint);
        self.len += 1;
        Ok(())
    }

    /// Removes the endpoint behind `port`, returning it.
    pub fn remove(&mut self, port: PortId) -> Option<Arc<Endpoint>> {
        let endpoint = self.by_port.get_mut(port.0 as usize)?.take()?;
        for addr in addresses(&endpoint) {
            self.by_addr.remove(&addr);
        }
        self.len -= 1;
        Some(endpoint)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Endpoint> {
        self.by_port.iter().flatten().map(|e| &**e)
    }
}

fn addresses(endpoint: &Endpoint) -> Vec<Addr> {
    let v4 = endpoint.ipv4.map(Addr::from);
    let v6 = endpoint.ipv6.map(Addr::from);
    v4.into_iter().chain(v6).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(port: u16, last: u8) -> Endpoint {
        Endpoint {
            port: PortId(port),
            mac: [2, 0, 0, 0, 0, last],
            ipv4: Some(Ipv4Addr::new(100, 64, 1, last)),
            ipv6: Some(format!("fd00::{last}").parse().unwrap()),
            identity: Identity::new(0x1_0100 + last as u32).unwrap(),
            name: format!("default/pod-{last}").into(),
        }
    }

    #[test]
    fn finds_endpoints_by_port_and_by_either_address() {
        let mut table = EndpointTable::with_capacity(8);
        table.insert(pod(3, 10)).unwrap();
        table.insert(pod(1, 11)).unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.by_port(PortId(3)).unwrap().name.as_ref(),
            "default/pod-10"
        );
        assert!(table.by_port(PortId(2)).is_none());
        assert!(table.by_port(PortId(900)).is_none());
        let v6: Ipv6Addr = "fd00::11".parse().unwrap();
        assert_eq!(table.by_addr(v6.into()).unwrap().port, PortId(1));
        assert_eq!(table.remove(PortId(1)).unwrap().port, PortId(1));
        assert!(table.by_addr(v6.into()).is_none());
    }

    #[test]
    fn refuses_taken_ports_taken_addresses_and_overflow() {
        let mut table = EndpointTable::with_capacity(2);
        table.insert(pod(1, 10)).unwrap();
        assert!(matches!(
            table.insert(pod(1, 11)),
            Err(EndpointError::PortTaken(..))
        ));
        assert!(matches!(
            table.insert(pod(2, 10)),
            Err(EndpointError::AddressTaken(..))
        ));
        table.insert(pod(2, 11)).unwrap();
        assert_eq!(table.insert(pod(3, 12)), Err(EndpointError::Full(2)));
    }

    #[test]
    fn a_pod_may_only_send_as_itself() {
        let ep = pod(1, 10);
        let own = Addr::from(Ipv4Addr::new(100, 64, 1, 10));
        let other = Addr::from(Ipv4Addr::new(100, 64, 1, 99));
        assert_eq!(ep.check_source(ep.mac, own), Ok(()));
        assert_eq!(
            ep.check_source(ep.mac, other),
            Err(DropReason::SpoofedSource)
        );
        assert_eq!(
            ep.check_source([2, 0, 0, 0, 0, 99], own),
            Err(DropReason::SpoofedSource)
        );
    }
}
