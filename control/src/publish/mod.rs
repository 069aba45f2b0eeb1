//! This agent's share of its cluster's state, written to the cluster's own etcd in Cilium's layout so
//! that remote clusters (ours or Cilium's) can read it. As Cilium does it, each agent publishes what is
//! its own — its node, the IP → identity pairs of the endpoints on it, its claims on the identities
//! they use — bound to its own lease: an agent that stops or dies takes away only that. The
//! cluster-wide records (global services, cluster-config, sync canaries) are written by one agent,
//! elected through etcd ([`leader`]), under a lease of their own that outlives a leader's graceful
//! stop long enough for the next one to take the keys over without a gap.
//!
//! [`Publisher::upkeep`], called periodically, notices a lost lease and re-publishes everything under
//! a new one, writes again a key deleted behind the agent's back (an operator, a compaction tool),
//! and campaigns for the lead. Unchanged keys are never rewritten otherwise.

mod leader;
mod lease;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{Client, GetOptions, KvClient, PutOptions};
use meshpath_dataplane::{ClusterId, Identity};

pub use lease::Lease;

use crate::cluster_name::ClusterName;
use crate::etcd::{self, describe, EtcdTarget};
use crate::identity_alloc::{AllocError, IdentityAllocator};
use crate::identity_gc::{GcRound, IdentityGc};
use crate::kvstore::{ClusterConfig, Key, Kind, LabelSet};
use crate::state::{EndpointInfo, NodeInfo, ServiceInfo, ServiceName};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cluster `{cluster}`: etcd: {detail}")]
    Etcd {
        cluster: ClusterName,
        detail: String,
    },
    #[error("{key}: cannot encode the value: {source}")]
    Encode {
        key: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Identity(#[from] AllocError),
    #[error("node `{node}` names cluster id {found}, this cluster is {expected}")]
    WrongCluster {
        node: String,
        found: ClusterId,
        expected: ClusterId,
    },
    #[error("{key}: node `{node}` does not lead cluster `{cluster}`: cluster-wide records are not its to write")]
    NotLeader {
        cluster: ClusterName,
        node: String,
        key: String,
    },
}

/// What one [`Publisher::upkeep`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upkeep {
    /// The lease was gone: a new one was granted and everything written again under it.
    pub lease_recovered: bool,
    /// Label sets whose identity changed while the lease was gone, with the new identity.
    pub identities_changed: Vec<(LabelSet, Identity)>,
    /// Keys that had vanished from etcd (or from the lease) and were written again.
    pub keys_restored: usize,
    /// Whether this agent leads its cluster now, and whether it did before.
    pub leading: bool,
    pub was_leading: bool,
    /// The identity garbage collection's round, when the leader ran one.
    pub gc: Option<GcRound>,
}

impl Upkeep {
    /// The lead was taken or lost: the cluster-wide records change hands.
    pub fn lead_changed(&self) -> bool {
        self.leading != self.was_leading
    }
}

pub struct Publisher {
    client: Client,
    kv: KvClient,
    cluster: ClusterName,
    cluster_id: ClusterId,
    node: String,
    lease: Lease,
    ttl_s: i64,
    identities: IdentityAllocator,
    /// This agent's own lease-bound keys and values, to restore and to write again under a new lease.
    own: BTreeMap<String, Vec<u8>>,
    /// While this agent leads its cluster.
    lead: Option<Lead>,
    gc: IdentityGc,
    /// How often the leader runs a round of identity GC (the grace period of an unused identity).
    gc_every: Duration,
    gc_last: Option<Instant>,
    /// Whether it campaigns for the lead (see [`Publisher::never_leading`]).
    may_lead: bool,
}

/// Cilium's default `identity-gc-interval`.
pub const IDENTITY_GC_EVERY: Duration = Duration::from_secs(15 * 60);

/// The cluster-wide records while this agent leads.
struct Lead {
    lease: Lease,
    records: BTreeMap<String, Vec<u8>>,
    /// Service keys found in etcd when the lead was taken: deleted by [`Publisher::finish_round`]
    /// unless written again meanwhile.
    stale: BTreeSet<String>,
    synced: bool,
}

impl Publisher {
    /// Connects, grants a lease of `ttl` and starts keeping it alive.
    pub async fn connect(
        target: &EtcdTarget<'_>,
        cluster: ClusterName,
        cluster_id: ClusterId,
        node: &str,
        ttl: Duration,
    ) -> Result<Self, PublishError> {
        let etcd = |e: etcd_client::Error| PublishError::Etcd {
            cluster: cluster.clone(),
            detail: describe(&e),
        };
        let client = etcd::connect(target).await.map_err(etcd)?;
        let ttl_s = i64::try_from(ttl.as_secs().max(2)).unwrap_or(i64::MAX);
        let lease = Lease::grant(&client, ttl_s, cluster.clone())
            .await
            .map_err(etcd)?;
        let kv = etcd::kv_client(&client);
        let identities = IdentityAllocator::new(kv.clone(), cluster_id, node, lease.id);
        let gc = IdentityGc::new(kv.clone(), cluster_id);
        Ok(Publisher {
            client,
            kv,
            cluster,
            cluster_id,
            node: node.to_owned(),
            lease,
            ttl_s,
            identities,
            own: BTreeMap::new(),
            lead: None,
            gc,
            gc_every: IDENTITY_GC_EVERY,
            gc_last: None,
            may_lead: true,
        })
    }

    /// An external workload's publisher: it writes its own share only and never campaigns for the
    /// cluster-wide records, which are the cluster's nodes' to write (a host outside the cluster
    /// knows none of its services, and as leader would sweep them all away as stale).
    pub fn never_leading(mut self) -> Self {
        self.may_lead = false;
        self
    }

    /// Runs identity GC rounds `every` this long while leading ([`IDENTITY_GC_EVERY`] by default).
    pub fn with_identity_gc_every(mut self, every: Duration) -> Self {
        self.gc_every = every;
        self
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether this agent writes its cluster's cluster-wide records.
    pub fn leads(&self) -> bool {
        self.lead.is_some()
    }

    /// If etcd let the lease expire (a long partition), grants a new one and writes everything again:
    /// node, endpoints and identity claims. Returns the label sets whose identity changed.
    /// [`Publisher::upkeep`] calls it; so may whoever watches [`Lease::lost`].
    pub async fn recover_lease(&mut self) -> Result<Vec<(LabelSet, Identity)>, PublishError> {
        if !*self.lease.lost.borrow() {
            return Ok(Vec::new());
        }
        self.regrant().await
    }

    async fn regrant(&mut self) -> Result<Vec<(LabelSet, Identity)>, PublishError> {
        let lease = Lease::grant(&self.client, self.ttl_s, self.cluster.clone()).await;
        self.lease = lease.map_err(|e| self.etcd_error(e))?;
        let lease_id = self.lease.id;
        tracing::warn!(cluster = %self.cluster, lease = lease_id, keys = self.own.len(), "etcd lease lost: republishing this agent's keys under a new one");
        for (key, value) in self.own.clone() {
            self.put_raw(key, value, Some(lease_id)).await?;
        }
        Ok(self.identities.reclaim(lease_id).await?)
    }

    /// Periodic care: recovers a lost lease, restores keys that vanished, campaigns for the lead and,
    /// while leading, keeps the cluster-wide records in place.
    pub async fn upkeep(&mut self) -> Result<Upkeep, PublishError> {
        let mut upkeep = Upkeep {
            was_leading: self.leads(),
            ..Upkeep::default()
        };
        let attached = self.lease.attached(&self.client).await;
        match attached.map_err(|e| self.etcd_error(e))? {
            None => {
                upkeep.identities_changed = self.regrant().await?;
                upkeep.lease_recovered = true;
            }
            Some(attached) => {
                let own = std::mem::take(&mut self.own);
                let restored = self.restore(&own, &attached, self.lease.id).await;
                self.own = own;
                upkeep.keys_restored += restored?;
            }
        }
        upkeep.keys_restored += self.campaign().await?;
        upkeep.leading = self.leads();
        upkeep.gc = self.collect_identities().await;
        if upkeep.keys_restored > 0 {
            tracing::warn!(cluster = %self.cluster, keys = upkeep.keys_restored, "keys deleted behind this agent's back written again");
        }
        Ok(upkeep)
    }

    /// A round of identity GC if this agent leads and one is due. A failed round is logged and tried
    /// again at the next upkeep.
    async fn collect_identities(&mut self) -> Option<GcRound> {
        if !self.leads() {
            self.gc.reset();
            self.gc_last = None;
            return None;
        }
        if self
            .gc_last
            .is_some_and(|last| last.elapsed() < self.gc_every)
        {
            return None;
        }
        match self.gc.run().await {
            Ok(round) => {
                self.gc_last = Some(Instant::now());
                Some(round)
            }
            Err(error) => {
                tracing::warn!(cluster = %self.cluster, %error, "identity GC round failed");
                None
            }
        }
    }

    /// Writes again every key of `keys` that is not attached to `lease` (deleted, or overwritten
    /// without it); returns how many.
    async fn restore(
        &mut self,
        keys: &BTreeMap<String, Vec<u8>>,
        attached: &BTreeSet<Vec<u8>>,
        lease: i64,
    ) -> Result<usize, PublishError> {
        let mut restored = 0;
        for (key, value) in keys {
            if !attached.contains(key.as_bytes()) {
                self.put_raw(key.clone(), value.clone(), Some(lease))
                    .await?;
                restored += 1;
            }
        }
        Ok(restored)
    }

    /// Takes the lead if it is free and keeps its records in place while leading; lets it go if
    /// another agent holds it. Returns how many records were restored.
    async fn campaign(&mut self) -> Result<usize, PublishError> {
        if !self.may_lead {
            return Ok(0);
        }
        let key = leader::key(&self.cluster);
        let held = leader::campaign(&mut self.kv, &key, &self.node, self.lease.id).await;
        if !held.map_err(|e| self.etcd_error(e))? {
            if let Some(lead) = self.lead.take() {
                tracing::info!(cluster = %self.cluster, "another agent leads: its cluster-wide records are its own now");
                lead.lease.abandon();
            }
            return Ok(0);
        }
        let Some(mut lead) = self.lead.take() else {
            self.lead = Some(self.take_lead().await?);
            return Ok(0);
        };
        let attached = lead.lease.attached(&self.client).await;
        let restored = match attached.map_err(|e| self.etcd_error(e))? {
            Some(attached) => self.restore(&lead.records, &attached, lead.lease.id).await,
            None => {
                let lease = Lease::grant(&self.client, 2 * self.ttl_s, self.cluster.clone()).await;
                lead.lease = lease.map_err(|e| self.etcd_error(e))?;
                let all = BTreeSet::new();
                self.restore(&lead.records, &all, lead.lease.id).await
            }
        };
        self.lead = Some(lead);
        restored
    }

    /// The lead is this agent's: a lease for the records, twice the agent's TTL so that a leader's
    /// records outlive its own keys, and the services a previous leader left, to be swept.
    async fn take_lead(&mut self) -> Result<Lead, PublishError> {
        let lease = Lease::grant(&self.client, 2 * self.ttl_s, self.cluster.clone()).await;
        let lease = lease.map_err(|e| self.etcd_error(e))?;
        let prefix = format!("{}/{}/", Kind::Services.prefix(), self.cluster);
        let options = GetOptions::new().with_prefix().with_keys_only();
        let found = self.kv.get(prefix, Some(options)).await;
        let stale = found
            .map_err(|e| self.etcd_error(e))?
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok().map(str::to_owned))
            .collect();
        tracing::info!(cluster = %self.cluster, node = %self.node, "this agent leads its cluster: it publishes the cluster-wide records");
        Ok(Lead {
            lease,
            records: BTreeMap::new(),
            stale,
            synced: false,
        })
    }

    pub async fn publish_node(&mut self, node: &NodeInfo) -> Result<(), PublishError> {
        if node.cluster_id != self.cluster_id {
            let (found, expected) = (node.cluster_id, self.cluster_id);
            return Err(PublishError::WrongCluster {
                node: node.name.clone(),
                found,
                expected,
            });
        }
        let key = Key::Node {
            cluster: self.cluster.clone(),
            node: node.name.clone(),
        };
        self.put_own(&key, &node.to_kvstore(&self.cluster)).await
    }

    /// The identity for `labels`, allocated cluster-wide, and its master key's label string.
    pub async fn identity(&mut self, labels: &LabelSet) -> Result<Identity, PublishError> {
        Ok(self.identities.allocate(labels).await?)
    }

    pub async fn release_identity(&mut self, labels: &LabelSet) -> Result<(), PublishError> {
        Ok(self.identities.release(labels).await?)
    }

    pub async fn publish_endpoint(&mut self, endpoint: &EndpointInfo) -> Result<(), PublishError> {
        let key = Key::Endpoint(endpoint.ip.ip());
        self.put_own(&key, &endpoint.to_kvstore()).await
    }

    pub async fn withdraw_endpoint(
        &mut self,
        ip: meshpath_dataplane::Addr,
    ) -> Result<(), PublishError> {
        let key = Key::Endpoint(ip.ip()).to_string();
        self.own.remove(&key);
        self.delete(key).await
    }

    /// Exports a global service (leader only); one that is not shared is withdrawn instead
    /// (`service.cilium.io/shared: "false"`).
    pub async fn publish_service(&mut self, service: &ServiceInfo) -> Result<(), PublishError> {
        if !service.shared {
            return self.withdraw_service(&service.name).await;
        }
        let key = service_key(&self.cluster, &service.name);
        let value = encode(&key, &service.to_kvstore(&self.cluster, self.cluster_id))?;
        self.put_record(&key, value).await
    }

    pub async fn withdraw_service(&mut self, name: &ServiceName) -> Result<(), PublishError> {
        let key = service_key(&self.cluster, name);
        let lead = self.lead_mut(&key)?;
        let key = key.to_string();
        lead.records.remove(&key);
        lead.stale.remove(&key);
        self.delete(key).await
    }

    /// Announces the cluster and that its initial state is written (leader only): cluster-config, then
    /// one canary per kind, under the records' lease.
    pub async fn mark_synced(&mut self) -> Result<(), PublishError> {
        let key = Key::ClusterConfig(self.cluster.clone());
        let config = ClusterConfig::new(self.cluster_id.get());
        self.put_record(&key, encode(&key, &config)?).await?;
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        for kind in Kind::ALL {
            let key = Key::SyncCanary {
                cluster: self.cluster.clone(),
                kind,
            };
            self.put_record(&key, now.clone().into_bytes()).await?;
        }
        if let Some(lead) = self.lead.as_mut() {
            lead.synced = true;
        }
        Ok(())
    }

    /// After the leader's first complete round: the services an earlier leader left and this one did
    /// not write go, and the cluster-config and canaries are written. Nothing for a follower.
    pub async fn finish_round(&mut self) -> Result<(), PublishError> {
        let Some(lead) = self.lead.as_mut() else {
            return Ok(());
        };
        let (stale, synced) = (std::mem::take(&mut lead.stale), lead.synced);
        for key in stale {
            tracing::info!(%key, "a global service no longer in this cluster: withdrawn");
            self.delete(key).await?;
        }
        if !synced {
            self.mark_synced().await?;
        }
        Ok(())
    }

    /// Stops for good (a node taken out): gives up the lead (see [`Publisher::leave`]) and revokes the
    /// agent's lease, so that its own keys go at once.
    pub async fn close(mut self) -> Result<(), PublishError> {
        self.resign().await?;
        let revoked = self.lease.revoke(&self.client).await;
        revoked.map_err(|e| self.etcd_error(e))
    }

    /// Stops, as an agent does for a restart: gives up the lead at once, so that another agent takes
    /// it at its next upkeep, and stops renewing the leases. The records' lease outlives the agent's
    /// own so that the next leader takes the records over without a gap; the agent's own keys expire
    /// with its lease unless the next agent on this node writes them first (same values: the remote
    /// clusters see no change).
    pub async fn leave(mut self) -> Result<(), PublishError> {
        self.resign().await
    }

    async fn resign(&mut self) -> Result<(), PublishError> {
        let Some(lead) = self.lead.take() else {
            return Ok(());
        };
        lead.lease.abandon();
        let key = leader::key(&self.cluster);
        let resigned = leader::resign(&mut self.kv, &key, &self.node, self.lease.id).await;
        resigned.map_err(|e| self.etcd_error(e))
    }

    async fn put_own<T: serde::Serialize>(
        &mut self,
        key: &Key,
        value: &T,
    ) -> Result<(), PublishError> {
        let value = encode(key, value)?;
        let key = key.to_string();
        self.put_raw(key.clone(), value.clone(), Some(self.lease.id))
            .await?;
        self.own.insert(key, value);
        Ok(())
    }

    async fn put_record(&mut self, key: &Key, value: Vec<u8>) -> Result<(), PublishError> {
        let lead = self.lead_mut(key)?;
        let (key, lease) = (key.to_string(), lead.lease.id);
        lead.stale.remove(&key);
        lead.records.insert(key.clone(), value.clone());
        self.put_raw(key, value, Some(lease)).await
    }

    fn lead_mut(&mut self, key: &Key) -> Result<&mut Lead, PublishError> {
        match self.lead.as_mut() {
            Some(lead) => Ok(lead),
            None => Err(PublishError::NotLeader {
                cluster: self.cluster.clone(),
                node: self.node.clone(),
                key: key.to_string(),
            }),
        }
    }

    async fn put_raw(
        &mut self,
        key: String,
        value: Vec<u8>,
        lease: Option<i64>,
    ) -> Result<(), PublishError> {
        let options = lease.map(|id| PutOptions::new().with_lease(id));
        let result = self.kv.put(key, value, options).await;
        result.map(|_| ()).map_err(|e| self.etcd_error(e))
    }

    async fn delete(&mut self, key: String) -> Result<(), PublishError> {
        let result = self.kv.delete(key, None).await;
        result.map(|_| ()).map_err(|e| self.etcd_error(e))
    }

    fn etcd_error(&self, err: etcd_client::Error) -> PublishError {
        PublishError::Etcd {
            cluster: self.cluster.clone(),
            detail: describe(&err),
        }
    }
}

fn service_key(cluster: &ClusterName, name: &ServiceName) -> Key {
    Key::Service {
        cluster: cluster.clone(),
        namespace: name.namespace.clone(),
        name: name.name.clone(),
    }
}

fn encode<T: serde::Serialize>(key: &Key, value: &T) -> Result<Vec<u8>, PublishError> {
    serde_json::to_vec(value).map_err(|source| PublishError::Encode {
        key: key.to_string(),
        source,
    })
}
