//! An etcd lease kept alive by a task of its own, and what etcd says is attached to it.

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::{Client, LeaseTimeToLiveOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster_name::ClusterName;
use crate::etcd::describe;

/// A lease and its keep-alive task; `lost` turns true if etcd no longer renews it.
pub struct Lease {
    pub id: i64,
    pub lost: watch::Receiver<bool>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Lease {
    /// Grants a lease of `ttl_s` seconds and starts keeping it alive.
    pub(super) async fn grant(
        client: &Client,
        ttl_s: i64,
        cluster: ClusterName,
    ) -> Result<Lease, etcd_client::Error> {
        let id = client.lease_client().grant(ttl_s, None).await?.id();
        keep_alive(client, id, ttl_s, cluster).await
    }

    /// The keys etcd has attached to the lease; `None` if etcd no longer has the lease.
    pub(super) async fn attached(
        &self,
        client: &Client,
    ) -> Result<Option<BTreeSet<Vec<u8>>>, etcd_client::Error> {
        let options = LeaseTimeToLiveOptions::new().with_keys();
        let resp = client
            .lease_client()
            .time_to_live(self.id, Some(options))
            .await?;
        Ok((resp.ttl() > 0).then(|| resp.keys().iter().cloned().collect()))
    }

    /// Stops renewing: the lease and its keys expire after its TTL unless someone else takes the keys.
    pub(super) fn abandon(&self) {
        self.cancel.cancel();
    }

    /// Stops renewing and revokes: every key under the lease goes at once.
    pub(super) async fn revoke(&mut self, client: &Client) -> Result<(), etcd_client::Error> {
        self.cancel.cancel();
        let _ = (&mut self.task).await;
        client.lease_client().revoke(self.id).await.map(|_| ())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
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
                    tracing::error!(%cluster, lease = id, "etcd lease expired: its keys are gone");
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
