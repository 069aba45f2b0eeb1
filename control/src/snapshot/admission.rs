//! What of a remote cluster's state the tables take. A remote is believed only about itself:
//!
//! - a pod CIDR is admitted if it is at least the minimum length ([`AdmissionRules`]) and overlaps
//!   no prefix of another cluster. This cluster's own pod CIDRs always win; between remotes, the
//!   first to claim a prefix keeps it (claims are ordered by arrival, not by name), and when it lets
//!   go, the next claim in that order is admitted.
//! - an endpoint is admitted if its address lies inside an admitted pod CIDR of its own cluster and
//!   its `HostIP` is an address of one of that cluster's nodes (without a `HostIP`, the node holding
//!   its pod CIDR carries it) — or, for an external workload (a VM or bare-metal host that joined
//!   the cluster), if it is the address of one of the cluster's nodes that claims no pod CIDR and
//!   names itself as `HostIP`: the host is its own endpoint. Between remotes, the first by name
//!   places such an address; this cluster's own pods and pod CIDRs always win.
//! - a service backend is used only if it is an admitted endpoint of the service's cluster.
//!
//! Since admitted pod CIDRs of different clusters never overlap, no two clusters can both place an
//! address in the ipcache. What is refused is recorded per remote in [`AdmissionLog`], counted per
//! reason, logged once per key and published into the remotes' status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use meshpath_dataplane::ipcache::IpPrefix;
use meshpath_dataplane::Addr;

use super::sources::{RemoteCluster, Sources};
use crate::cluster_name::ClusterName;
use crate::clustermesh::{CidrConflict, StatusBoard};
use crate::refusal::{Refusal, RefusalCounts, Refusals};
use crate::state::{EndpointInfo, ServiceName};

/// The shortest pod CIDRs a remote may claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionRules {
    pub min_pod_cidr_ipv4: u8,
    pub min_pod_cidr_ipv6: u8,
}

impl Default for AdmissionRules {
    fn default() -> Self {
        AdmissionRules {
            min_pod_cidr_ipv4: 16,
            min_pod_cidr_ipv6: 48,
        }
    }
}

impl AdmissionRules {
    fn too_short(&self, prefix: &IpPrefix) -> bool {
        let min = match prefix.addr().is_ipv4() {
            true => self.min_pod_cidr_ipv4,
            false => self.min_pod_cidr_ipv6,
        };
        prefix.family_len() < min
    }
}

/// A refused piece of a remote's state, as the builder names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AdmissionKey {
    PodCidr(IpPrefix),
    Endpoint(Addr),
    Service(ServiceName),
}

impl fmt::Display for AdmissionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdmissionKey::PodCidr(prefix) => write!(f, "pod CIDR {prefix}"),
            AdmissionKey::Endpoint(addr) => write!(f, "endpoint {addr}"),
            AdmissionKey::Service(s) => write!(f, "service {}/{}", s.namespace, s.name),
        }
    }
}

/// Who holds a prefix while claims are weighed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder<'a> {
    Local,
    Remote(&'a ClusterName),
}

/// The prefixes admitted so far, to find one of another holder overlapping a claim.
#[derive(Default)]
struct Taken<'a> {
    by_prefix: HashMap<IpPrefix, Holder<'a>>,
    by_start: BTreeMap<Addr, Vec<IpPrefix>>,
}

impl<'a> Taken<'a> {
    fn insert(&mut self, prefix: IpPrefix, holder: Holder<'a>) {
        self.by_prefix.insert(prefix, holder);
        self.by_start.entry(prefix.addr()).or_default().push(prefix);
    }

    /// A prefix of another holder that contains `prefix` or lies inside it.
    fn overlapping(&self, prefix: IpPrefix, holder: Holder<'a>) -> Option<(Holder<'a>, IpPrefix)> {
        let other = |p: &IpPrefix| {
            let h = *self.by_prefix.get(p)?;
            (h != holder).then_some((h, *p))
        };
        let family_start = if prefix.addr().is_ipv4() { 96 } else { 0 };
        let around = (family_start..prefix.mapped_len())
            .filter_map(|len| covering(prefix.addr(), len))
            .find_map(|p| other(&p));
        let inside = || {
            self.by_start
                .range(prefix.addr()..=last(&prefix))
                .flat_map(|(_, ps)| ps)
                .filter(|p| p.addr().is_ipv4() == prefix.addr().is_ipv4())
                .find_map(other)
        };
        around.or_else(inside)
    }
}

/// The prefix of `len` mapped bits holding `addr`.
pub fn covering(addr: Addr, len: u8) -> Option<IpPrefix> {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    IpPrefix::mapped(Addr::from_v6_bits(addr.bits() & mask), len)
}

/// The last address of `prefix`.
pub fn last(prefix: &IpPrefix) -> Addr {
    let host = if prefix.mapped_len() == 0 {
        u128::MAX
    } else {
        u128::MAX >> prefix.mapped_len()
    };
    Addr::from_v6_bits(prefix.addr().bits() | host)
}

/// The verdict on one remote pod CIDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CidrVerdict {
    Admitted,
    TooShort,
    /// It overlaps `prefix` of `cluster` (this cluster's own, or a remote's that came first).
    Overlaps {
        cluster: String,
        prefix: IpPrefix,
    },
}

/// Every remote's claim weighed, in order.
pub type CidrVerdicts = Vec<(ClusterName, IpPrefix, CidrVerdict)>;

impl Sources {
    /// Weighs every remote's pod CIDR claims afresh; marks what an admission change touched.
    pub fn readmit(
        &mut self,
        local: &ClusterName,
        rules: &AdmissionRules,
        dirty: &mut super::sources::Dirty,
    ) -> CidrVerdicts {
        let mut claims: Vec<(u64, &ClusterName, IpPrefix)> = self
            .remotes
            .iter()
            .flat_map(|(name, r)| r.claimed_at.iter().map(move |(p, at)| (*at, name, *p)))
            .collect();
        claims.sort();
        let mut taken = Taken::default();
        for prefix in self.local_cidrs.keys() {
            taken.insert(*prefix, Holder::Local);
        }
        let mut verdicts = Vec::with_capacity(claims.len());
        let mut admitted: BTreeMap<ClusterName, BTreeSet<IpPrefix>> = BTreeMap::new();
        for (_, cluster, prefix) in claims {
            let verdict = if rules.too_short(&prefix) {
                CidrVerdict::TooShort
            } else if let Some((holder, other)) = taken.overlapping(prefix, Holder::Remote(cluster))
            {
                let cluster = match holder {
                    Holder::Local => local.to_string(),
                    Holder::Remote(name) => name.to_string(),
                };
                CidrVerdict::Overlaps {
                    cluster,
                    prefix: other,
                }
            } else {
                taken.insert(prefix, Holder::Remote(cluster));
                admitted.entry(cluster.clone()).or_default().insert(prefix);
                CidrVerdict::Admitted
            };
            verdicts.push((cluster.clone(), prefix, verdict));
        }
        for (name, remote) in &mut self.remotes {
            let now = admitted.remove(name).unwrap_or_default();
            remote.set_admitted(now, dirty);
        }
        verdicts
    }
}

impl RemoteCluster {
    /// The longest admitted pod CIDR of this cluster holding `addr`.
    pub fn admitted_cidr(&self, addr: Addr) -> Option<IpPrefix> {
        self.admitted_lens
            .iter()
            .rev()
            .filter_map(|len| covering(addr, *len))
            .find(|p| self.admitted.contains(p) && p.contains(addr))
    }

    /// The endpoint at `addr` and the node address to tunnel to, if admitted; `None` if there is
    /// no endpoint at `addr`.
    pub fn admitted_endpoint(&self, addr: Addr) -> Option<Result<(&EndpointInfo, Addr), Refusal>> {
        let endpoint: &EndpointInfo = self.state.endpoints.get(&addr)?;
        let Some(cidr) = self.admitted_cidr(addr) else {
            return Some(match self.is_external_workload(endpoint) {
                true => Ok((endpoint, addr)),
                false => Err(Refusal::EndpointOutsidePodCidrs),
            });
        };
        let tunnel = match endpoint.host_ip {
            Some(host) => self.node_addrs.contains_key(&host).then_some(host),
            None => self
                .cidrs
                .get(&cidr)
                .and_then(|nodes| nodes.first())
                .and_then(|node| self.state.nodes.get(node))
                .and_then(|node| node.tunnel_addr()),
        };
        Some(tunnel.map(|t| (endpoint, t)).ok_or(Refusal::HostIpNotANode))
    }

    /// An external workload's endpoint: at the address of a node of this cluster without pod CIDRs,
    /// which it names as its `HostIP`.
    fn is_external_workload(&self, endpoint: &EndpointInfo) -> bool {
        let addr = endpoint.ip;
        endpoint.host_ip == Some(addr)
            && self
                .state
                .nodes
                .values()
                .any(|n| n.tunnel_addr() == Some(addr) && n.pod_cidrs.is_empty())
    }

    /// Is `addr` an admitted endpoint of this cluster?
    pub fn admits_backend(&self, addr: Addr) -> bool {
        matches!(self.admitted_endpoint(addr), Some(Ok(_)))
    }
}

/// What the builder refused of one remote.
#[derive(Debug)]
struct RemoteLog {
    refusals: Refusals<AdmissionKey>,
    conflicts: BTreeMap<IpPrefix, CidrConflict>,
}

/// The builder's record of what it refused, per remote, and the status board it reports into.
#[derive(Debug, Default)]
pub struct AdmissionLog {
    remotes: BTreeMap<ClusterName, RemoteLog>,
    board: Option<StatusBoard>,
}

impl AdmissionLog {
    pub fn set_board(&mut self, board: StatusBoard) {
        self.board = Some(board);
    }

    fn remote(&mut self, cluster: &ClusterName) -> &mut RemoteLog {
        self.remotes
            .entry(cluster.clone())
            .or_insert_with(|| RemoteLog {
                refusals: Refusals::new(cluster.to_string()),
                conflicts: BTreeMap::new(),
            })
    }

    /// Records the verdict on every claim; claims no longer made are forgotten.
    pub fn record_cidrs(&mut self, sources: &Sources, verdicts: &CidrVerdicts) {
        let claimed = |cluster: &ClusterName, prefix: &IpPrefix| {
            verdicts.iter().any(|(c, p, _)| c == cluster && p == prefix)
        };
        for (name, log) in &mut self.remotes {
            log.refusals.retain(|key| match key {
                AdmissionKey::PodCidr(p) => claimed(name, p),
                _ => true,
            });
            log.conflicts.retain(|p, _| claimed(name, p));
        }
        for (cluster, prefix, verdict) in verdicts {
            let node = sources
                .remotes
                .get(cluster)
                .and_then(|r| r.cidrs.get(prefix))
                .and_then(|nodes| nodes.first().cloned())
                .unwrap_or_default();
            let log = self.remote(cluster);
            let key = AdmissionKey::PodCidr(*prefix);
            log.conflicts.remove(prefix);
            match verdict {
                CidrVerdict::Admitted => {
                    log.refusals.clear(&key);
                }
                CidrVerdict::TooShort => {
                    log.refusals.refuse(key, Refusal::PodCidrTooShort, || {
                        format!("node {node}: shorter than the minimum prefix length")
                    });
                }
                CidrVerdict::Overlaps {
                    cluster: other,
                    prefix: other_prefix,
                } => {
                    let conflict = CidrConflict {
                        node,
                        prefix: prefix.to_string(),
                        other_cluster: other.clone(),
                        other_prefix: other_prefix.to_string(),
                    };
                    log.refusals.refuse(key, Refusal::PodCidrOverlap, || {
                        format!("{cluster}: {conflict}")
                    });
                    log.conflicts.insert(*prefix, conflict);
                }
            }
        }
    }

    /// Records whether the endpoint at `addr` of each remote is admitted.
    pub fn record_endpoint(&mut self, sources: &Sources, addr: Addr) {
        for (name, remote) in &sources.remotes {
            let key = AdmissionKey::Endpoint(addr);
            match remote.admitted_endpoint(addr) {
                Some(Err(reason)) => {
                    let host = remote.state.endpoints.get(&addr).and_then(|e| e.host_ip);
                    self.remote(name)
                        .refusals
                        .refuse(key, reason, || match reason {
                            Refusal::HostIpNotANode => match host {
                                Some(host) => format!("HostIP {host} is no node of {name}"),
                                None => "no HostIP, and its pod CIDR's node has no address".into(),
                            },
                            _ => format!("outside every admitted pod CIDR of {name}"),
                        });
                }
                _ => {
                    if let Some(log) = self.remotes.get_mut(name) {
                        log.refusals.clear(&key);
                    }
                }
            }
        }
    }

    /// Records, for each remote's service `name`, whether every backend is its admitted endpoint.
    pub fn record_service(&mut self, sources: &Sources, name: &ServiceName) {
        for (cluster, remote) in &sources.remotes {
            let key = AdmissionKey::Service(name.clone());
            let strangers: Vec<Addr> = remote
                .state
                .services
                .get(name)
                .map(|s| s.backends.iter().map(|b| b.addr))
                .into_iter()
                .flatten()
                .filter(|addr| !remote.admits_backend(*addr))
                .collect();
            if strangers.is_empty() {
                if let Some(log) = self.remotes.get_mut(cluster) {
                    log.refusals.clear(&key);
                }
                continue;
            }
            let reason = Refusal::BackendNotAnEndpoint;
            self.remote(cluster).refusals.refuse(key, reason, || {
                let shown: Vec<String> = strangers.iter().take(4).map(Addr::to_string).collect();
                format!(
                    "{} backends are no endpoints of {cluster} ({}{}): left out",
                    strangers.len(),
                    shown.join(", "),
                    if strangers.len() > 4 { ", …" } else { "" }
                )
            });
        }
    }

    /// What the builder refuses of `cluster` now, per reason.
    pub fn counts(&self, cluster: &ClusterName) -> RefusalCounts {
        self.remotes
            .get(cluster)
            .map(|l| l.refusals.counts().clone())
            .unwrap_or_default()
    }

    pub fn conflicts(&self, cluster: &ClusterName) -> Vec<CidrConflict> {
        self.remotes
            .get(cluster)
            .map(|l| l.conflicts.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Writes what changed into the status board, for remotes it lists.
    pub fn publish(&mut self) {
        let Some(board) = &self.board else {
            return;
        };
        for (name, log) in &self.remotes {
            let now = (
                log.refusals.counts().clone(),
                log.conflicts.values().cloned().collect::<Vec<_>>(),
            );
            board.send_if_modified(|b| {
                let Some(status) = b.get_mut(name) else {
                    return false;
                };
                let changed =
                    status.refused_on_admission != now.0 || status.cidr_conflicts != now.1;
                if changed {
                    status.set_refused_on_admission(now.0.clone());
                    status.cidr_conflicts = now.1.clone();
                }
                changed
            });
        }
    }
}
