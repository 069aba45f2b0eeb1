//! The snapshot's services by frontend.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::{Frontend, Service};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("service table full: {capacity} services")]
    Full { capacity: usize },
    #[error("service {id}: {count} backends, at most 65536")]
    TooManyBackends { id: u32, count: usize },
}

/// Frontend → service, bounded. Cloning copies one `Arc` per service, never a service.
#[derive(Clone, Debug, Default)]
pub struct ServiceTable {
    services: FxHashMap<Frontend, Arc<Service>>,
    capacity: usize,
}

impl ServiceTable {
    pub fn new(capacity: usize) -> Self {
        ServiceTable {
            services: FxHashMap::default(),
            capacity,
        }
    }

    pub fn lookup(&self, frontend: &Frontend) -> Option<&Service> {
        self.services.get(frontend).map(Arc::as_ref)
    }

    /// Adds or replaces the service of its frontend; returns the one it replaced.
    pub fn insert(&mut self, service: Arc<Service>) -> Result<Option<Arc<Service>>, ServiceError> {
        let frontend = service.frontend;
        if !self.services.contains_key(&frontend) && self.services.len() >= self.capacity {
            return Err(ServiceError::Full {
                capacity: self.capacity,
            });
        }
        Ok(self.services.insert(frontend, service))
    }

    pub fn remove(&mut self, frontend: &Frontend) -> Option<Arc<Service>> {
        self.services.remove(frontend)
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn iter(&self) -> impl Iterator<Item = &Service> {
        self.services.values().map(Arc::as_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::proto;
    use crate::service::{Backend, BackendState, ServiceId};
    use crate::{Addr, FlowKey};
    use proptest::prelude::*;
    use std::time::Instant;

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

    /// Figures for the report: `cargo test -p meshpath-dataplane --release -- --ignored --nocapture service`.
    #[test]
    #[ignore]
    fn measure_build_and_memory() {
        let rounds = 1000u32;
        let start = Instant::now();
        for i in 0..rounds {
            std::hint::black_box(service(i, 10));
        }
        let build = start.elapsed().as_micros() as f64 / rounds as f64;
        let mut table = ServiceTable::new(10_000);
        for i in 0..10_000 {
            table.insert(service(i, 10)).unwrap();
        }
        let heap: usize = table.iter().map(Service::heap_bytes).sum();
        let per_entry =
            std::mem::size_of::<Service>() + std::mem::size_of::<(Frontend, Arc<Service>)>() + 16;
        let total = heap + table.len() * per_entry;
        let start = Instant::now();
        let clone = table.clone();
        let clone_us = start.elapsed().as_micros();
        std::hint::black_box(clone);
        let n = 10_000_000u32;
        let start = Instant::now();
        for i in 0..n {
            let svc = table.lookup(std::hint::black_box(&frontend(i % 10_000)));
            std::hint::black_box(svc.and_then(|s| s.select(i.wrapping_mul(2_654_435_761))));
        }
        let lookup = start.elapsed().as_nanos() as f64 / n as f64;
        println!(
            "service: build 10 backends {build:.1} us; 10k x 10: {:.1} MB; clone {clone_us} us; lookup+select {lookup:.1} ns",
            total as f64 / 1e6
        );
    }
}
