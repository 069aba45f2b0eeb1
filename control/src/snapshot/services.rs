//! Service load balancing entries: a local service's frontends (ClusterIP × port) with backends from
//! its EndpointSlices and, for a global service, from every remote cluster's service of the same
//! namespace and name (only backends that are that cluster's admitted endpoints), chosen by the
//! service's affinity.
//!
//! Backend states follow Kubernetes: ready and not terminating → Active; terminating → Terminating
//! (keeps its flows, takes no new ones); not ready → Unhealthy. Remote clusters export only ready
//! backends. Backends that affinity does not prefer are kept as Terminating, so that a failover back
//! does not cut the flows they carry.

use meshpath_dataplane::service::{Backend, BackendState, Frontend};
use meshpath_dataplane::Addr;

use super::sources::Sources;
use super::NodeSpec;
use crate::local::{Affinity, LocalService, LocalServicePort, ObjectRef, SliceEndpoint};
use crate::state::ServiceName;

/// A frontend and its backends, as the table should hold it.
pub type Plan = (Frontend, Vec<Backend>);

/// Every frontend the service `name` should have now.
pub fn desired(sources: &Sources, spec: &NodeSpec, name: &ServiceName) -> Vec<Plan> {
    let obj = ObjectRef {
        namespace: name.namespace.clone(),
        name: name.name.clone(),
    };
    let Some(service) = sources.local.local.services.get(&obj) else {
        return Vec::new();
    };
    let mut plans = Vec::new();
    for ip in &service.cluster_ips {
        for port in &service.ports {
            let frontend = Frontend {
                addr: Addr::from(*ip),
                port: port.port,
                proto: port.protocol,
            };
            let local = local_backends(sources, service, port, frontend.addr);
            let remote = if service.global {
                remote_backends(sources, name, port, frontend.addr)
            } else {
                Vec::new()
            };
            let backends = choose(
                local,
                remote,
                service.affinity,
                spec.local_affinity_threshold,
            );
            plans.push((frontend, backends));
        }
    }
    plans
}

fn state_of(endpoint: &SliceEndpoint) -> BackendState {
    if endpoint.terminating {
        BackendState::Terminating
    } else if endpoint.ready {
        BackendState::Active
    } else {
        BackendState::Unhealthy
    }
}

fn local_backends(
    sources: &Sources,
    service: &LocalService,
    port: &LocalServicePort,
    family: Addr,
) -> Vec<Backend> {
    let slices = sources.slices_by_service.get(&service.service);
    let slices = slices.into_iter().flatten();
    let slices = slices.filter_map(|s| sources.local.local.endpoint_slices.get(s));
    let mut backends = Vec::new();
    for slice in slices {
        let ports = slice
            .ports
            .iter()
            .filter(|p| p.name == port.name && p.protocol == port.protocol);
        for slice_port in ports {
            for endpoint in &slice.endpoints {
                let addrs = endpoint.addresses.iter().map(|ip| Addr::from(*ip));
                backends.extend(
                    addrs
                        .filter(|a| a.is_ipv4() == family.is_ipv4())
                        .map(|addr| Backend {
                            addr,
                            port: slice_port.port,
                            state: state_of(endpoint),
                            cluster: None,
                        }),
                );
            }
        }
    }
    sorted(backends)
}

fn remote_backends(
    sources: &Sources,
    name: &ServiceName,
    port: &LocalServicePort,
    family: Addr,
) -> Vec<Backend> {
    let mut all = Vec::new();
    for remote in sources.remotes.values() {
        let Some(service) = remote.state.services.get(name) else {
            continue;
        };
        let matching = service.backends.iter().filter(|b| {
            b.port_name == port.name
                && b.protocol == port.protocol
                && b.addr.is_ipv4() == family.is_ipv4()
                && remote.admits_backend(b.addr)
        });
        let backends = matching.map(|b| Backend {
            addr: b.addr,
            port: b.port,
            state: BackendState::Active,
            cluster: remote.id,
        });
        all.extend(sorted(backends.collect()));
    }
    all
}

fn sorted(mut backends: Vec<Backend>) -> Vec<Backend> {
    backends.sort_by_key(|b| (b.addr, b.port));
    backends.dedup_by_key(|b| (b.addr, b.port));
    backends
}

fn active(backends: &[Backend]) -> usize {
    backends
        .iter()
        .filter(|b| b.state == BackendState::Active)
        .count()
}

/// Takes new flows off backends that affinity does not prefer, leaving them their current flows.
fn demote(backends: Vec<Backend>) -> Vec<Backend> {
    let demote = |mut b: Backend| {
        if b.state == BackendState::Active {
            b.state = BackendState::Terminating;
        }
        b
    };
    backends.into_iter().map(demote).collect()
}

/// The backends of one frontend under `affinity`. `local`: remote backends join when the ready local
/// ones are fewer than `threshold` of all local ones, or none is ready.
pub fn choose(
    local: Vec<Backend>,
    remote: Vec<Backend>,
    affinity: Affinity,
    threshold: f64,
) -> Vec<Backend> {
    let (local, remote) = match affinity {
        Affinity::None => (local, remote),
        Affinity::Remote if active(&remote) > 0 => (demote(local), remote),
        Affinity::Remote => (local, remote),
        Affinity::Local => {
            let ready = active(&local);
            let enough = ready > 0 && ready as f64 >= threshold * local.len() as f64;
            if enough {
                (local, demote(remote))
            } else {
                (local, remote)
            }
        }
    };
    local.into_iter().chain(remote).collect()
}
