//! The builder as a tokio task: waits for a change, takes everything else already queued (up to a
//! batch limit) so that a burst becomes one snapshot, and hands each snapshot to the sink.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use meshpath_dataplane::snapshot::Tables;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Change, SnapshotBuilder};
use crate::clustermesh::RemoteEvent;

/// Where new snapshots go: the agent's `ArcSwap` that workers load from, or a watch channel.
pub trait SnapshotSink: Send {
    fn publish(&mut self, tables: Arc<Tables>);

    /// Publishes the snapshot built from a batch taken off the inputs at `taken`; a sink that
    /// measures the publish latency overrides this.
    fn publish_batch(&mut self, tables: Arc<Tables>, taken: Instant) {
        let _ = taken;
        self.publish(tables);
    }
}

impl SnapshotSink for Arc<ArcSwap<Tables>> {
    fn publish(&mut self, tables: Arc<Tables>) {
        self.store(tables);
    }
}

impl SnapshotSink for watch::Sender<Arc<Tables>> {
    fn publish(&mut self, tables: Arc<Tables>) {
        self.send_replace(tables);
    }
}

/// Runs until cancelled or both inputs close; returns the builder.
pub async fn run_builder(
    mut builder: SnapshotBuilder,
    mut changes: mpsc::Receiver<Change>,
    mut remote: mpsc::Receiver<RemoteEvent>,
    mut sink: impl SnapshotSink,
    cancel: CancellationToken,
    max_batch: usize,
) -> SnapshotBuilder {
    let (mut changes_open, mut remote_open) = (true, true);
    while changes_open || remote_open {
        let first = tokio::select! {
            _ = cancel.cancelled() => break,
            c = changes.recv(), if changes_open => match c {
                Some(change) => change,
                None => {
                    changes_open = false;
                    continue;
                }
            },
            r = remote.recv(), if remote_open => match r {
                Some(event) => Change::Remote(event),
                None => {
                    remote_open = false;
                    continue;
                }
            },
        };
        let taken = Instant::now();
        let mut batch = vec![first];
        while batch.len() < max_batch.max(1) {
            let next = changes
                .try_recv()
                .ok()
                .or_else(|| remote.try_recv().ok().map(Change::Remote));
            match next {
                Some(change) => batch.push(change),
                None => break,
            }
        }
        if let Some(tables) = builder.apply(batch) {
            sink.publish_batch(tables, taken);
        }
    }
    builder
}
