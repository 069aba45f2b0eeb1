//! The snapshot's services by frontend: what stage 5 looks a new flow's destination up in.

use std::sync::Arc;

use crate::hash::KeyedMap;

use super::ends::{EndKey, Probe, Role, ServiceEnds};
use super::ports::ServicePorts;
use super::retired::{BackendStatus, Retired};
use super::{Frontend, Service, ServiceId};
use crate::Addr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("service table full: {capacity} services")]
    Full { capacity: usize },
    #[error("service {id}: {count} backends, at most 65536")]
    TooManyBackends { id: u32, count: usize },
}

/// Shards of the frontend map: the unit of copy-on-write.
const SHARDS: usize = 64;

type Shard = Arc<KeyedMap<Frontend, Arc<Service>>>;

/// Frontend → service, bounded. The map is split into `Arc`ed shards: cloning copies 64 pointers,
/// and a change to the clone copies one shard's `Arc`s, never a service.
#[derive(Clone, Debug)]
pub struct ServiceTable {
    shards: Box<[Shard]>,
    len: usize,
    capacity: usize,
    retired: Retired,
    ends: ServiceEnds,
    ports: ServicePorts,
}

impl Default for ServiceTable {
    fn default() -> Self {
        ServiceTable::new(0)
    }
}

fn shard_of(frontend: &Frontend) -> usize {
    (crate::hash::hash_one(frontend) >> 58) as usize % SHARDS
}

fn end_of(frontend: &Frontend) -> EndKey {
    EndKey {
        addr: frontend.addr,
        port: frontend.port,
        proto: frontend.proto,
    }
}

impl ServiceTable {
    pub fn new(capacity: usize) -> Self {
        ServiceTable {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            len: 0,
            capacity,
            retired: Retired::default(),
            ends: ServiceEnds::default(),
            ports: ServicePorts::default(),
        }
    }

    pub fn lookup(&self, frontend: &Frontend) -> Option<&Service> {
        self.shards
            .get(shard_of(frontend))?
            .get(frontend)
            .map(Arc::as_ref)
    }

    /// Adds or replaces the service of its frontend; returns the one it replaced.
    pub fn insert(&mut self, service: Arc<Service>) -> Result<Option<Arc<Service>>, ServiceError> {
        let frontend = service.frontend;
        if self.lookup(&frontend).is_none() && self.len >= self.capacity {
            return Err(ServiceError::Full {
                capacity: self.capacity,
            });
        }
        let Some(shard) = self.shards.get_mut(shard_of(&frontend)) else {
            return Ok(None);
        };
        let new = service.clone();
        let old = Arc::make_mut(shard).insert(frontend, service);
        let was = old
            .as_ref()
            .map_or((&[][..], 0), |o| (o.backends(), o.frontend.proto));
        if old.is_none() {
            self.ends.hold(&end_of(&frontend), Role::Frontend);
        }
        self.ends
            .replace_backends(was, (new.backends(), new.frontend.proto));
        let backend_ports = new.backends().iter().map(|b| b.port);
        self.ports
            .insert_all(std::iter::once(frontend.port).chain(backend_ports));
        match &old {
            Some(old) if old.id == new.id => {
                self.retired.replace(new.id, old.backends(), new.backends());
            }
            Some(old) => {
                self.retired.replace(old.id, old.backends(), &[]);
                self.retired.replace(new.id, &[], new.backends());
            }
            None => {
                self.len += 1;
                self.retired.replace(new.id, &[], new.backends());
            }
        }
        Ok(old)
    }

    pub fn remove(&mut self, frontend: &Frontend) -> Option<Arc<Service>> {
        self.lookup(frontend)?;
        let old = Arc::make_mut(self.shards.get_mut(shard_of(frontend))?).remove(frontend)?;
        self.len -= 1;
        self.retired.replace(old.id, old.backends(), &[]);
        self.ends.release(&end_of(frontend), Role::Frontend);
        self.ends
            .replace_backends((old.backends(), old.frontend.proto), (&[], 0));
        Some(old)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether an established flow of `service` may stay on backend `addr:port`.
    pub fn backend_status(&self, service: ServiceId, addr: Addr, port: u16) -> BackendStatus {
        self.retired.status(service, addr, port)
    }

    /// Whether `key` is a backend of some service of this table (whatever its state).
    pub fn is_backend(&self, key: &EndKey) -> bool {
        self.ends.is_backend(key)
    }

    /// `key` hashed once, for [`Self::prefetch_end`] and [`Self::is_end`]: a burst prefetches
    /// every frame's line before it asks of any.
    pub fn probe_end(key: &EndKey) -> Probe {
        ServiceEnds::probe(key)
    }

    pub fn prefetch_end(&self, probe: &Probe) {
        self.ends.prefetch(probe);
    }

    /// Whether the probed key is some service's frontend or one of its backends.
    pub fn is_end(&self, probe: &Probe) -> bool {
        self.ends.is_end(probe)
    }

    /// Whether `port` may be a frontend's or a backend's: `false` means surely not, without a
    /// lookup ([`Self::lookup`] and [`Self::is_end`] say for sure).
    pub fn may_use_port(&self, port: u16) -> bool {
        self.ports.contains(port)
    }

    /// Forgets which backends were taken out of their services: call once no flow can still use one
    /// (after conntrack's longest timeout), or to leave the fallback after [`super::MAX_RETIRED`].
    pub fn clear_retired(&mut self) {
        self.retired.clear();
    }

    pub fn iter(&self) -> impl Iterator<Item = &Service> {
        self.shards
            .iter()
            .flat_map(|shard| shard.values().map(Arc::as_ref))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::proto;
    use crate::service::{Backend, BackendState, BackendStatus, EndKey, ServiceId};
    use crate::{Addr, FlowKey};
    use proptest::prelude::*;

    fn frontend(i: u32) -> Frontend {
        Frontend {
            addr: Addr::from_v4_bits(0x6440_ff00 + i),
            port: 80,
            proto: proto::TCP,
        }
    }

    fn service(i: u32, backends: u32) -> Arc<Service> {
        let backends = (0..backends)
            .map(|b| Backend {
                addr: Addr::from_v4_bits(0x6440_0000 + (i << 8) + b),
                port: 8080,
                state: BackendState::Active,
                cluster: None,
            })
            .collect();
        Arc::new(Service::new(ServiceId(i), frontend(i), backends).unwrap())
    }

    fn backend_key(i: u32, b: u32) -> EndKey {
        EndKey {
            addr: Addr::from_v4_bits(0x6440_0000 + (i << 8) + b),
            port: 8080,
            proto: proto::TCP,
        }
    }

    #[test]
    fn a_frontend_is_a_service_end_while_its_service_is_there() {
        let mut table = ServiceTable::new(8);
        let end = |i| ServiceTable::probe_end(&end_of(&frontend(i)));
        table.insert(service(1, 2)).unwrap();
        table.insert(service(1, 3)).unwrap();
        assert!(table.is_end(&end(1)));
        assert!(table.is_end(&ServiceTable::probe_end(&backend_key(1, 2))));
        assert!(!table.is_end(&end(2)));
        table.remove(&frontend(1));
        assert!(!table.is_end(&end(1)), "replaced once, let go once");
        assert!(!table.is_end(&ServiceTable::probe_end(&backend_key(1, 0))));
    }

    #[test]
    fn an_endpoint_backing_two_services_stays_a_backend_until_both_let_it_go() {
        let mut table = ServiceTable::new(8);
        let shared = service(1, 2).backends().to_vec();
        let both = Service::new(ServiceId(2), frontend(2), shared).unwrap();
        table.insert(service(1, 2)).unwrap();
        table.insert(Arc::new(both)).unwrap();
        let key = backend_key(1, 1);
        assert!(table.is_backend(&key));
        assert!(table.may_use_port(8080) && table.may_use_port(80));
        assert!(!table.may_use_port(40000), "no service uses it");
        assert!(
            !table.is_backend(&EndKey {
                proto: proto::UDP,
                ..key
            }),
            "a backend of TCP services only"
        );
        let before = table.clone();
        table.remove(&frontend(1));
        assert!(table.is_backend(&key), "service 2 still holds it");
        table.insert(service(2, 1)).unwrap();
        assert!(!table.is_backend(&key), "nobody holds it any more");
        assert!(table.is_backend(&backend_key(2, 0)));
        assert!(before.is_backend(&key), "an older snapshot keeps its view");
    }

    #[test]
    fn backends_taken_out_are_retired_until_they_come_back() {
        let mut table = ServiceTable::new(8);
        table.insert(service(1, 3)).unwrap();
        let b = |i: u32| Addr::from_v4_bits(0x6440_0000 + (1 << 8) + i);
        assert_eq!(
            table.backend_status(ServiceId(1), b(2), 8080),
            BackendStatus::Serving
        );
        table.insert(service(1, 2)).unwrap();
        assert_eq!(
            table.backend_status(ServiceId(1), b(2), 8080),
            BackendStatus::Retired
        );
        assert_eq!(
            table.backend_status(ServiceId(1), b(1), 8080),
            BackendStatus::Serving
        );
        let snapshot = table.clone();
        table.insert(service(1, 3)).unwrap();
        assert_eq!(
            table.backend_status(ServiceId(1), b(2), 8080),
            BackendStatus::Serving
        );
        assert_eq!(
            snapshot.backend_status(ServiceId(1), b(2), 8080),
            BackendStatus::Retired,
            "an older snapshot keeps its view"
        );
        table.remove(&frontend(1));
        assert_eq!(
            table.backend_status(ServiceId(1), b(0), 8080),
            BackendStatus::Retired
        );
        table.clear_retired();
        assert_eq!(
            table.backend_status(ServiceId(1), b(0), 8080),
            BackendStatus::Serving
        );
    }

    #[test]
    fn too_many_retired_backends_fall_back_to_unknown() {
        let mut table = ServiceTable::new(8);
        let per_round = 1000;
        for round in 0..(crate::service::MAX_RETIRED / per_round as usize) as u32 + 3 {
            let backends = (0..per_round)
                .map(|b| Backend {
                    addr: Addr::from_v4_bits(round * per_round + b),
                    port: 1,
                    state: BackendState::Active,
                    cluster: None,
                })
                .collect();
            let s = Service::new(ServiceId(1), frontend(1), backends).unwrap();
            table.insert(Arc::new(s)).unwrap();
        }
        let any = Addr::from_v4_bits(0);
        assert_eq!(
            table.backend_status(ServiceId(1), any, 1),
            BackendStatus::Unknown
        );
        table.clear_retired();
        assert_eq!(
            table.backend_status(ServiceId(1), any, 1),
            BackendStatus::Serving
        );
    }

    #[test]
    fn bounded_lookup_replace_remove() {
        let mut table = ServiceTable::new(2);
        table.insert(service(1, 3)).unwrap();
        table.insert(service(2, 3)).unwrap();
        assert!(table.insert(service(2, 4)).unwrap().is_some());
        assert_eq!(
            table.insert(service(3, 1)),
            Err(ServiceError::Full { capacity: 2 })
        );
        assert_eq!(
            table.lookup(&frontend(2)).map(|s| s.backends().len()),
            Some(4)
        );
        let mut other_port = frontend(1);
        other_port.port = 443;
        assert!(table.lookup(&other_port).is_none());
        let snapshot = table.clone();
        assert!(table.remove(&frontend(1)).is_some());
        assert!(table.lookup(&frontend(1)).is_none());
        assert!(snapshot.lookup(&frontend(1)).is_some());
        assert_eq!((table.len(), snapshot.len()), (1, 2));
        assert!(table.remove(&frontend(1)).is_none());
    }

    #[test]
    fn select_skips_inactive_and_reports_no_backend() {
        let mut backends = service(1, 3).backends().to_vec();
        backends[0].state = BackendState::Terminating;
        backends[2].state = BackendState::Unhealthy;
        let svc = Service::new(ServiceId(1), frontend(1), backends.clone()).unwrap();
        for hash in 0..1000 {
            assert_eq!(
                svc.select(hash).map(|(i, b)| (i, b.addr)),
                Some((1, backends[1].addr))
            );
        }
        backends[1].state = BackendState::Unhealthy;
        let svc = Service::new(ServiceId(1), frontend(1), backends).unwrap();
        assert!(svc.select(5).is_none());
    }

    proptest! {
        #[test]
        fn agrees_with_a_hash_map_model(
            capacity in 0usize..12,
            ops in prop::collection::vec((any::<bool>(), 0u32..16, 1u32..4), 0..60),
        ) {
            let mut table = ServiceTable::new(capacity);
            let mut model: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
            let mut snapshots = Vec::new();
            for (insert, i, backends) in ops {
                snapshots.push((table.clone(), model.clone()));
                if insert {
                    let result = table.insert(service(i, backends));
                    if model.contains_key(&i) || model.len() < capacity {
                        prop_assert_eq!(result.map(|o| o.is_some()), Ok(model.insert(i, backends).is_some()));
                    } else {
                        prop_assert_eq!(result, Err(ServiceError::Full { capacity }));
                    }
                } else {
                    prop_assert_eq!(table.remove(&frontend(i)).is_some(), model.remove(&i).is_some());
                }
                prop_assert!(table.len() <= capacity);
            }
            snapshots.push((table, model));
            for (table, model) in snapshots {
                prop_assert_eq!(table.len(), model.len());
                prop_assert_eq!(table.iter().count(), model.len());
                for i in 0..16 {
                    let got = table.lookup(&frontend(i)).map(|s| s.backends().len() as u32);
                    prop_assert_eq!(got, model.get(&i).copied());
                    for b in 0..4 {
                        let held = model.get(&i).is_some_and(|&n| b < n);
                        prop_assert_eq!(table.is_backend(&backend_key(i, b)), held, "service {} backend {}", i, b);
                    }
                }
            }
        }

        #[test]
        fn a_flow_always_gets_the_same_backend(src in any::<u32>(), port in any::<u16>(), n in 1u32..20) {
            let svc = service(9, n);
            let flow = FlowKey {
                src: Addr::from_v4_bits(src),
                dst: svc.frontend.addr,
                src_port: port,
                dst_port: 80,
                proto: proto::TCP,
            };
            let rebuilt = service(9, n);
            let first = svc.select(flow.symmetric_hash()).map(|(i, _)| i);
            prop_assert!(first.is_some_and(|i| u32::from(i) < n));
            prop_assert_eq!(first, rebuilt.select(flow.symmetric_hash()).map(|(i, _)| i));
        }
    }
}
