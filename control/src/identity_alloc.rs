//! Cluster-wide security identity allocation through the cluster's etcd, in Cilium's layout: the master
//! key `cilium/state/identities/v1/id/<id>` holds the label string, and each agent using it holds a
//! lease-bound `cilium/state/identities/v1/value/<labels>/<node>` → id. Both are created in one
//! transaction that requires the id to be free and the label set to have no id yet, so two agents never
//! give one label set two ids, nor one id to two label sets. Ids come from the cluster's own range.

use std::collections::BTreeMap;

use etcd_client::{Compare, CompareOp, GetOptions, KvClient, PutOptions, Txn, TxnOp};
use meshpath_dataplane::{ClusterId, Identity};

use crate::etcd::{describe, list_prefix};
use crate::kvstore::{Key, LabelSet};

const VALUES: &str = "cilium/state/identities/v1/value/";
const IDS: &str = "cilium/state/identities/v1/id/";
/// Transactions lost to other agents before giving up.
const MAX_ATTEMPTS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("allocating an identity for `{labels}`: etcd: {detail}")]
    Etcd { labels: String, detail: String },
    #[error("cluster {cluster} has no free identity left for `{labels}`")]
    Exhausted { cluster: ClusterId, labels: String },
    #[error("allocating an identity for `{labels}`: {attempts} transactions lost to other agents")]
    Contended { labels: String, attempts: usize },
    #[error("{key}: `{value}` is not an identity this cluster owns")]
    Corrupt { key: String, value: String },
}

/// One agent's allocator; `node` names its value keys, `lease` binds them to the agent's life.
pub struct IdentityAllocator {
    kv: KvClient,
    cluster: ClusterId,
    node: String,
    lease: i64,
    /// Label sets this agent holds, for re-claiming them under a new lease.
    held: BTreeMap<LabelSet, Identity>,
}

impl IdentityAllocator {
    pub fn new(kv: KvClient, cluster: ClusterId, node: &str, lease: i64) -> Self {
        IdentityAllocator {
            kv,
            cluster,
            node: node.to_owned(),
            lease,
            held: BTreeMap::new(),
        }
    }

    /// Re-claims every held label set under `lease` (the old one expired); returns the label sets whose
    /// identity changed meanwhile, with the new identity.
    pub async fn reclaim(&mut self, lease: i64) -> Result<Vec<(LabelSet, Identity)>, AllocError> {
        self.lease = lease;
        let mut changed = Vec::new();
        for (labels, old) in std::mem::take(&mut self.held) {
            let new = self.allocate(&labels).await?;
            if new != old {
                changed.push((labels, new));
            }
        }
        Ok(changed)
    }

    /// The identity of `labels`: the existing one if any agent allocated it, else a new one.
    pub async fn allocate(&mut self, labels: &LabelSet) -> Result<Identity, AllocError> {
        let id = self.claim(labels).await?;
        self.held.insert(labels.clone(), id);
        Ok(id)
    }

    async fn claim(&mut self, labels: &LabelSet) -> Result<Identity, AllocError> {
        let text = labels.to_string();
        let etcd = |e: etcd_client::Error| AllocError::Etcd {
            labels: text.clone(),
            detail: describe(&e),
        };
        let value_prefix = format!("{VALUES}{text}/");
        let own_key = format!("{value_prefix}{}", self.node);
        for _ in 0..MAX_ATTEMPTS {
            if let Some(id) = self.existing(&value_prefix).await? {
                let put = PutOptions::new().with_lease(self.lease);
                self.kv
                    .put(own_key.clone(), id.get().to_string(), Some(put))
                    .await
                    .map_err(etcd)?;
                return Ok(id);
            }
            let (id, reuse) = self.candidate(&text).await?;
            let id_key = Key::Identity(id).to_string();
            let id_free = if reuse {
                Compare::value(id_key.clone(), CompareOp::Equal, text.clone())
            } else {
                Compare::create_revision(id_key.clone(), CompareOp::Equal, 0)
            };
            let no_owner =
                Compare::create_revision(value_prefix.clone(), CompareOp::Equal, 0).with_prefix();
            let put_own = TxnOp::put(
                own_key.clone(),
                id.get().to_string(),
                Some(PutOptions::new().with_lease(self.lease)),
            );
            let txn = Txn::new()
                .when([id_free, no_owner])
                .and_then([TxnOp::put(id_key, text.clone(), None), put_own]);
            if self.kv.txn(txn).await.map_err(etcd)?.succeeded() {
                return Ok(id);
            }
        }
        Err(AllocError::Contended {
            labels: text,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Drops this agent's claim on `labels`; the id key stays for the other users (and for a GC).
    pub async fn release(&mut self, labels: &LabelSet) -> Result<(), AllocError> {
        self.held.remove(labels);
        let text = labels.to_string();
        let own_key = format!("{VALUES}{text}/{}", self.node);
        self.kv
            .delete(own_key, None)
            .await
            .map_err(|e| AllocError::Etcd {
                labels: text,
                detail: describe(&e),
            })?;
        Ok(())
    }

    /// The id some agent holds for this label set.
    async fn existing(&mut self, value_prefix: &str) -> Result<Option<Identity>, AllocError> {
        let labels = value_prefix
            .trim_start_matches(VALUES)
            .trim_end_matches('/')
            .to_owned();
        let options = GetOptions::new().with_prefix().with_limit(1);
        let resp = self
            .kv
            .get(value_prefix, Some(options))
            .await
            .map_err(|e| AllocError::Etcd {
                labels,
                detail: describe(&e),
            })?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        self.owned(kv.key_str().unwrap_or_default(), kv.value())
            .map(Some)
    }

    /// An id whose master key already names these labels (left by agents gone), else the lowest free one.
    async fn candidate(&mut self, labels: &str) -> Result<(Identity, bool), AllocError> {
        let etcd = |e: etcd_client::Error| AllocError::Etcd {
            labels: labels.to_owned(),
            detail: describe(&e),
        };
        let (_, kvs) = list_prefix(&mut self.kv, IDS, 10_000).await.map_err(etcd)?;
        let mut taken = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            let Some(id) = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(IDS))
                .and_then(|n| n.parse().ok())
            else {
                continue;
            };
            if kv.value() == labels.as_bytes() {
                if let Some(id) = Identity::new(id).filter(|i| i.cluster() == Some(self.cluster)) {
                    return Ok((id, true));
                }
            }
            taken.push(id);
        }
        taken.sort_unstable();
        let first = self.cluster.first_identity().get().max(256);
        let mut next = first;
        for id in taken.into_iter().filter(|id| *id >= first) {
            if id > next {
                break;
            }
            next = id + 1;
        }
        match Identity::new(next).filter(|_| next <= self.cluster.last_identity().get()) {
            Some(id) => Ok((id, false)),
            None => Err(AllocError::Exhausted {
                cluster: self.cluster,
                labels: labels.to_owned(),
            }),
        }
    }

    fn owned(&self, key: &str, value: &[u8]) -> Result<Identity, AllocError> {
        let text = String::from_utf8_lossy(value);
        let corrupt = || AllocError::Corrupt {
            key: key.to_owned(),
            value: text.to_string(),
        };
        let id = text
            .parse::<u32>()
            .ok()
            .and_then(Identity::new)
            .ok_or_else(corrupt)?;
        if id.cluster() != Some(self.cluster) {
            return Err(corrupt());
        }
        Ok(id)
    }
}
