//! Service load balancing entries: a local service's frontends (ClusterIP × port) with backends from
//! its EndpointSlices and, for a global service, from every remote cluster's service of the same
//! namespace and name (only backends that are that cluster's admitted endpoints), chosen by the
//! service's affinity.
//!
//! An external workload has no services of its own: the global services the cluster it joined
//! exports are its frontends (that cluster's ClusterIPs, as Cilium's external workloads resolve them
//! through the cluster's DNS), with the backends every cluster exports, none preferred.
//!
//! Backend states follow the EndpointSlice conditions as Cilium reads them: ready (and not
//! terminating) → Active; terminating → Terminating (keeps its flows, takes no new ones) — unless no
//! backend of the frontend is Active, when those still `serving` take new flows too (Kubernetes'
//! terminating-endpoint fallback, as Cilium's load balancer does it); neither ready nor terminating →
//! not a backend at all (it counts only towards `local` affinity's threshold). Remote clusters export only ready backends. Backends that affinity does not
//! prefer are kept as Terminating, so that a failover back does not cut the flows they carry.

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
        return match spec.external_workload {
            true => joined_cluster_frontends(sources, spec, name),
            false => Vec::new(),
        };
    };
    let mut plans = Vec::new();
    for ip in &service.cluster_ips {
        for port in &service.ports {
            let frontend = Frontend {
                addr: Addr::from(*ip),
                port: port.port,
                proto: port.protocol,
            };
            let (local, fallback) = local_backends(sources, service, port, frontend.addr);
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
            plans.push((
                frontend,
                serve_terminating_if_none_active(backends, &fallback),
            ));
        }
    }
    plans
}

/// The endpoint's state as a backend, and whether it may stand in when no backend is Active. Unhealthy
/// (neither ready nor terminating) counts for affinity's threshold, then leaves the service.
fn state_of(endpoint: &SliceEndpoint) -> (BackendState, bool) {
    match (endpoint.terminating, endpoint.ready) {
        (true, _) => (BackendState::Terminating, endpoint.serving),
        (false, true) => (BackendState::Active, false),
        (false, false) => (BackendState::Unhealthy, false),
    }
}

/// An external workload's frontends of `name`: those the joined cluster (the remote named as this
/// one) exports, each with every cluster's backends.
fn joined_cluster_frontends(sources: &Sources, spec: &NodeSpec, name: &ServiceName) -> Vec<Plan> {
    let joined = sources.remotes.get(&spec.cluster);
    let Some(service) = joined.and_then(|r| r.state.services.get(name)) else {
        return Vec::new();
    };
    let mut plans = Vec::new();
    for exported in &service.frontends {
        let port = LocalServicePort {
            name: exported.port_name.to_string(),
            protocol: exported.protocol,
            port: exported.port,
        };
        let frontend = Frontend {
            addr: exported.addr,
            port: exported.port,
            proto: exported.protocol,
        };
        let backends = remote_backends(sources, name, &port, frontend.addr);
        plans.push((frontend, backends));
    }
    plans
}

/// The backends the frontend gets: no unhealthy one, and with no Active backend left, the terminating
/// ones still serving take new flows.
fn serve_terminating_if_none_active(
    mut backends: Vec<Backend>,
    fallback: &[(Addr, u16)],
) -> Vec<Backend> {
    backends.retain(|b| b.state != BackendState::Unhealthy);
    if active(&backends) == 0 {
        for b in &mut backends {
            if b.cluster.is_none() && fallback.contains(&(b.addr, b.port)) {
                b.state = BackendState::Active;
            }
        }
    }
    backends
}

/// The local backends, and those of them that may stand in when none is Active.
fn local_backends(
    sources: &Sources,
    service: &LocalService,
    port: &LocalServicePort,
    family: Addr,
) -> (Vec<Backend>, Vec<(Addr, u16)>) {
    let slices = sources.slices_by_service.get(&service.service);
    let slices = slices.into_iter().flatten();
    let slices = slices.filter_map(|s| sources.local.local.endpoint_slices.get(s));
    let mut backends = Vec::new();
    let mut fallback = Vec::new();
    for slice in slices {
        let ports = slice
            .ports
            .iter()
            .filter(|p| p.name == port.name && p.protocol == port.protocol);
        for slice_port in ports {
            for endpoint in &slice.endpoints {
                let (state, stands_in) = state_of(endpoint);
                let addrs = endpoint.addresses.iter().map(|ip| Addr::from(*ip));
                for addr in addrs.filter(|a| a.is_ipv4() == family.is_ipv4()) {
                    backends.push(Backend {
                        addr,
                        port: slice_port.port,
                        state,
                        cluster: None,
                    });
                    if stands_in {
                        fallback.push((addr, slice_port.port));
                    }
                }
            }
        }
    }
    (sorted(backends), fallback)
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
            *b.port_name == *port.name
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn endpoint(ready: bool, serving: bool, terminating: bool) -> SliceEndpoint {
        SliceEndpoint {
            addresses: vec![Ipv4Addr::new(100, 64, 1, 10).into()],
            ready,
            serving,
            terminating,
            node: None,
            pod: None,
        }
    }

    fn backend(last: u8, state: BackendState) -> Backend {
        Backend {
            addr: Addr::from(Ipv4Addr::new(100, 64, 1, last)),
            port: 8080,
            state,
            cluster: None,
        }
    }

    #[test]
    fn conditions_read_as_cilium_reads_them() {
        use BackendState::*;
        assert_eq!(state_of(&endpoint(true, true, false)), (Active, false));
        assert_eq!(state_of(&endpoint(false, true, true)), (Terminating, true));
        assert_eq!(
            state_of(&endpoint(false, false, true)),
            (Terminating, false)
        );
        assert_eq!(state_of(&endpoint(false, false, false)), (Unhealthy, false));
    }

    #[test]
    fn terminating_but_serving_backends_stand_in_only_when_none_is_active() {
        use BackendState::*;
        let draining = backend(2, Terminating);
        let fallback = [(draining.addr, draining.port)];
        let with_active = vec![backend(1, Active), draining, backend(3, Unhealthy)];
        let states: Vec<_> = serve_terminating_if_none_active(with_active, &fallback)
            .iter()
            .map(|b| b.state)
            .collect();
        assert_eq!(states, [Active, Terminating], "the unhealthy one leaves");

        let none_active = vec![draining, backend(4, Terminating)];
        let states: Vec<_> = serve_terminating_if_none_active(none_active, &fallback)
            .iter()
            .map(|b| b.state)
            .collect();
        assert_eq!(
            states,
            [Active, Terminating],
            "only the one still serving takes new flows"
        );
    }
}
