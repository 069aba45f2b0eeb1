//! Garbage collection of security identities nobody uses any more, as Cilium's kvstore allocator does
//! it (`RunGC` in `pkg/kvstore/allocator`, run by the operator): a master key
//! `cilium/state/identities/v1/id/<id>` with no claim `cilium/state/identities/v1/value/<labels>/<node>`
//! left (claims are bound to their agent's lease, so a dead agent's go by themselves) is marked in one
//! round and deleted in the next if it is still unclaimed and unchanged. The round's interval is the
//! grace period: a pod that comes back within it gets its identity back. The deletion is one
//! transaction that requires the master key unchanged since it was marked and no claim on its labels,
//! so an agent claiming it meanwhile keeps it. Only the agent that leads its cluster runs it.

use std::collections::{BTreeMap, HashSet};

use etcd_client::{Compare, CompareOp, KvClient, Txn, TxnOp};
use meshpath_dataplane::{ClusterId, Identity};

use crate::etcd::{describe, list_prefix};

const VALUES: &str = "cilium/state/identities/v1/value/";
const IDS: &str = "cilium/state/identities/v1/id/";
const PAGE: i64 = 10_000;

/// What one round found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcRound {
    /// Identities with at least one claim.
    pub alive: usize,
    /// Unclaimed identities marked in this round, to be deleted in the next.
    pub marked: usize,
    /// Identities deleted in this round.
    pub deleted: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("identity garbage collection: etcd: {0}")]
pub struct GcError(String);

/// The collector of one cluster's identities; it remembers the keys it marked between rounds.
pub struct IdentityGc {
    kv: KvClient,
    cluster: ClusterId,
    /// Unclaimed master keys seen in the last round, with their modification revision then.
    marked: BTreeMap<Identity, i64>,
}

impl IdentityGc {
    pub fn new(kv: KvClient, cluster: ClusterId) -> Self {
        IdentityGc {
            kv,
            cluster,
            marked: BTreeMap::new(),
        }
    }

    /// Forgets the marks (this agent lost the lead: the next round it runs starts afresh).
    pub fn reset(&mut self) {
        self.marked.clear();
    }

    /// One round: deletes what the last round marked and is still unclaimed and unchanged, marks the
    /// unclaimed rest.
    pub async fn run(&mut self) -> Result<GcRound, GcError> {
        let etcd = |e: etcd_client::Error| GcError(describe(&e));
        let (_, claims) = list_prefix(&mut self.kv, VALUES, PAGE)
            .await
            .map_err(etcd)?;
        let claimed: HashSet<&[u8]> = claims.iter().filter_map(|kv| labels_of(kv.key())).collect();
        let (_, masters) = list_prefix(&mut self.kv, IDS, PAGE).await.map_err(etcd)?;
        let mut round = GcRound::default();
        let mut marked = BTreeMap::new();
        for master in &masters {
            let Some(id) = self.own_identity(master.key()) else {
                continue;
            };
            if claimed.contains(master.value()) {
                round.alive += 1;
                continue;
            }
            let revision = master.mod_revision();
            if self.marked.get(&id) == Some(&revision) {
                if self.delete(master.key(), master.value(), revision).await? {
                    tracing::info!(identity = %id, labels = %String::from_utf8_lossy(master.value()), "unused identity collected");
                    round.deleted += 1;
                }
                continue;
            }
            marked.insert(id, revision);
        }
        round.marked = marked.len();
        self.marked = marked;
        Ok(round)
    }

    /// Deletes `key` if it is unchanged since `revision` and no claim on `labels` appeared.
    async fn delete(&mut self, key: &[u8], labels: &[u8], revision: i64) -> Result<bool, GcError> {
        let mut prefix = VALUES.as_bytes().to_vec();
        prefix.extend_from_slice(labels);
        prefix.push(b'/');
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key, CompareOp::Equal, revision),
                Compare::create_revision(prefix, CompareOp::Equal, 0).with_prefix(),
            ])
            .and_then([TxnOp::delete(key, None)]);
        let resp = self.kv.txn(txn).await.map_err(|e| GcError(describe(&e)))?;
        Ok(resp.succeeded())
    }

    /// The identity a master key names, if it is one of this cluster's (not a reserved one).
    fn own_identity(&self, key: &[u8]) -> Option<Identity> {
        let id = std::str::from_utf8(key.strip_prefix(IDS.as_bytes())?).ok()?;
        let id = Identity::new(id.parse().ok()?)?;
        (id.cluster() == Some(self.cluster) && !id.is_reserved()).then_some(id)
    }
}

/// The label string a claim key names: `<VALUES><labels>/<node>` → `<labels>` (labels may hold `/`,
/// node names do not).
fn labels_of(key: &[u8]) -> Option<&[u8]> {
    let rest = key.strip_prefix(VALUES.as_bytes())?;
    let slash = rest.iter().rposition(|b| *b == b'/')?;
    Some(&rest[..slash])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_names_its_labels_even_with_slashes_in_them() {
        let key = b"cilium/state/identities/v1/value/k8s:app.kubernetes.io/name=web;k8s:x=y;/c2-n1";
        assert_eq!(
            labels_of(key),
            Some(&b"k8s:app.kubernetes.io/name=web;k8s:x=y;"[..])
        );
        assert_eq!(labels_of(b"cilium/state/identities/v1/id/65792"), None);
        assert_eq!(labels_of(b"cilium/state/identities/v1/value/no-node"), None);
    }
}
