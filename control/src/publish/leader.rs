//! The election of the agent that writes its cluster's cluster-wide records: a key bound to the
//! candidate's own lease, created only if absent (one transaction), so that exactly one live agent
//! holds it and it frees itself when that agent's lease goes. It lives outside `cilium/`: it is
//! meshpath's own, not part of Cilium's layout that remote clusters read.

use etcd_client::{Compare, CompareOp, KvClient, PutOptions, Txn, TxnOp, TxnOpResponse};

use crate::cluster_name::ClusterName;

/// The leader key of `cluster`; its value names the leading node.
pub fn key(cluster: &ClusterName) -> String {
    format!("meshpath/clusterwide-leader/{cluster}")
}

/// Takes `key` for `node` under `lease` if no one holds it; whether `node` holds it (now or before).
pub async fn campaign(
    kv: &mut KvClient,
    key: &str,
    node: &str,
    lease: i64,
) -> Result<bool, etcd_client::Error> {
    let take = TxnOp::put(key, node, Some(PutOptions::new().with_lease(lease)));
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([take])
        .or_else([TxnOp::get(key, None)]);
    let resp = kv.txn(txn).await?;
    if resp.succeeded() {
        return Ok(true);
    }
    let held = resp.op_responses().into_iter().any(|op| match op {
        TxnOpResponse::Get(get) => get
            .kvs()
            .first()
            .is_some_and(|kv| kv.lease() == lease && kv.value() == node.as_bytes()),
        _ => false,
    });
    Ok(held)
}

/// Gives `key` up if `node` still holds it under `lease`.
pub async fn resign(
    kv: &mut KvClient,
    key: &str,
    node: &str,
    lease: i64,
) -> Result<(), etcd_client::Error> {
    let txn = Txn::new()
        .when([
            Compare::value(key, CompareOp::Equal, node),
            Compare::lease(key, CompareOp::Equal, lease),
        ])
        .and_then([TxnOp::delete(key, None)]);
    kv.txn(txn).await.map(|_| ())
}
