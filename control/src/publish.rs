//! This agent's share of its cluster's state, written to the cluster's own etcd in Cilium's layout so
//! that remote clusters (ours or Cilium's) can read it: the node, its endpoints' IP → identity pairs,
//! the identities they use and the shared global services, all bound to one lease that a background
//! task keeps alive — if the agent dies, its keys expire. Then the cluster-config and the sync canaries.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use etcd_client::{Client, KvClient, PutOptions};
use meshpath_dataplane::{Addr, ClusterId, Identity};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster_name::ClusterName;
use crate::etcd::{self, describe, EtcdTarget};
use crate::identity_alloc::{AllocError, IdentityAllocator};
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
}

/// The lease that binds this agent's keys; `lost` turns true if etcd no longer renews it.
pub struct Lease {
    pub id: i64,
    pub lost: watch::Receiver<bool>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

pub struct Publisher {
    client: Client,
    kv: KvClient,
    cluster: ClusterName,
    cluster_id: ClusterId,
    lease: Lease,
    ttl_s: i64,
    identities: IdentityAllocator,
    /// Every lease-bound key and value, to write again under a new lease if the old one is lost.
    leased: BTreeMap<String, Vec<u8>>,
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
        let lease_id = client
            .lease_client()
            .grant(ttl_s, None)
            .await
            .map_err(etcd)?
            .id();
        let lease = keep_alive(&client, lease_id, ttl_s, cluster.clone())
            .await
            .map_err(etcd)?;
        let kv = etcd::kv_client(&client);
        let identities = IdentityAllocator::new(kv.clone(), cluster_id, node, lease_id);
        Ok(Publisher {
            client,
            kv,
            cluster,
            cluster_id,
            lease,
            ttl_s,
            identities,
            leased: BTreeMap::new(),
        })
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// If etcd let the lease expire (a long partition), grants a new one and writes everything again:
    /// node, endpoints, services and identity claims. Returns the label sets whose identity changed.
    /// Call it when [`Lease::lost`] turns true.
    pub async fn recover_lease(&mut self) -> Result<Vec<(LabelSet, Identity)>, PublishError> {
        if !*self.lease.lost.borrow() {
            return Ok(Vec::new());
        }
        let lease_id = self
            .client
            .lease_client()
            .grant(self.ttl_s, None)
            .await
            .map_err(|e| self.etcd_error(e))?
            .id();
        let lease = keep_alive(&self.client, lease_id, self.ttl_s, self.cluster.clone()).await;
        self.lease.cancel.cancel();
        self.lease = lease.map_err(|e| self.etcd_error(e))?;
        tracing::warn!(cluster = %self.cluster, lease = lease_id, keys = self.leased.len(), "etcd lease lost: republishing");
        for (key, value) in self.leased.clone() {
            let options = PutOptions::new().with_lease(lease_id);
            self.kv
                .put(key, value, Some(options))
                .await
                .map_err(|e| self.etcd_error(e))?;
        }
        Ok(self.identities.reclaim(lease_id).await?)
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
        self.put_json(&key, &node.to_kvstore(&self.cluster)).await
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
        self.put_json(&key, &endpoint.to_kvstore()).await
    }

    pub async fn withdraw_endpoint(&mut self, ip: Addr) -> Result<(), PublishError> {
        self.delete(&Key::Endpoint(ip.ip())).await
    }

    /// Exports a global service; one that is not shared is withdrawn instead (`service.cilium.io/shared: "false"`).
    pub async fn publish_service(&mut self, service: &ServiceInfo) -> Result<(), PublishError> {
        if !service.shared {
            return self.withdraw_service(&service.name).await;
        }
        let key = service_key(&self.cluster, &service.name);
        self.put_json(&key, &service.to_kvstore(&self.cluster, self.cluster_id))
            .await
    }

    pub async fn withdraw_service(&mut self, name: &ServiceName) -> Result<(), PublishError> {
        self.delete(&service_key(&self.cluster, name)).await
    }

    /// Announces the cluster and that its initial state is written: cluster-config, then one canary per
    /// kind. Neither is bound to the lease: they describe the cluster, not this agent.
    pub async fn mark_synced(&mut self) -> Result<(), PublishError> {
        let key = Key::ClusterConfig(self.cluster.clone());
        let config = ClusterConfig::new(self.cluster_id.get());
        self.put(&key, encode(&key, &config)?, None).await?;
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        for kind in Kind::ALL {
            let key = Key::SyncCanary {
                cluster: self.cluster.clone(),
                kind,
            };
            self.put(&key, now.clone().into_bytes(), None).await?;
        }
        Ok(())
    }

    /// Revokes the lease: every key this agent wrote under it goes at once.
    pub async fn close(mut self) -> Result<(), PublishError> {
        self.lease.cancel.cancel();
        let _ = (&mut self.lease.task).await;
        let result = self.client.lease_client().revoke(self.lease.id).await;
        result.map(|_| ()).map_err(|e| self.etcd_error(e))
    }

    async fn put_json<T: serde::Serialize>(
        &mut self,
        key: &Key,
        value: &T,
    ) -> Result<(), PublishError> {
        let value = encode(key, value)?;
        self.put(key, value.clone(), Some(self.lease.id)).await?;
        self.leased.insert(key.to_string(), value);
        Ok(())
    }

    async fn put(
        &mut self,
        key: &Key,
        value: Vec<u8>,
        lease: Option<i64>,
    ) -> Result<(), PublishError> {
        let options = lease.map(|id| PutOptions::new().with_lease(id));
        let result = self.kv.put(key.to_string(), value, options).await;
        result.map(|_| ()).map_err(|e| self.etcd_error(e))
    }

    async fn delete(&mut self, key: &Key) -> Result<(), PublishError> {
        self.leased.remove(&key.to_string());
        let result = self.kv.delete(key.to_string(), None).await;
        result.map(|_| ()).map_err(|e| self.etcd_error(e))
    }

    fn etcd_error(&self, err: etcd_client::Error) -> PublishError {
        PublishError::Etcd {
            cluster: self.cluster.clone(),
            detail: describe(&err),
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.lease.cancel.cancel();
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

/// Renews the lease every third of its TTL until cancelled. A broken keep-alive stream (etcd
/// restarting) is reopened on the next tick; `lost` turns true once etcd says the lease is gone.
async fn keep_alive(
    client: &Client,
    id: i64,
    ttl_s: i64,
    cluster: ClusterName,
) -> Result<Lease, etcd_client::Error> {
    let mut stream = Some(client.lease_client().keep_alive(id).await?);
    let mut leases = client.lease_client();
    let (lost_tx, lost) = watch::channel(false);
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let period = Duration::from_millis(u64::try_from(ttl_s).unwrap_or(1) * 1000 / 3);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let renewed = match stream.take() {
                Some(s) => renew(s).await,
                None => match leases.keep_alive(id).await {
                    Ok(s) => renew(s).await,
                    Err(e) => Err(e),
                },
            };
            match renewed {
                Ok((ttl, s)) if ttl > 0 => stream = Some(s),
                Ok(_) => {
                    tracing::error!(%cluster, lease = id, "etcd lease expired: this agent's keys are gone");
                    lost_tx.send_replace(true);
                    return;
                }
                Err(err) => {
                    tracing::warn!(%cluster, lease = id, err = %describe(&err), "etcd lease renewal failed");
                }
            }
        }
    });
    Ok(Lease {
        id,
        lost,
        cancel,
        task,
    })
}

type KeepAlive = (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream);

/// One renewal: the TTL etcd granted (0 for a lease it no longer has), and the stream to reuse.
async fn renew(
    (mut keeper, mut responses): KeepAlive,
) -> Result<(i64, KeepAlive), etcd_client::Error> {
    keeper.keep_alive().await?;
    let ttl = match responses.message().await? {
        Some(resp) => resp.ttl(),
        None => {
            return Err(etcd_client::Error::WatchError(
                "keep-alive stream closed".into(),
            ))
        }
    };
    Ok((ttl, (keeper, responses)))
}
