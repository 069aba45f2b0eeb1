//! The builder's loop: waits for a change, takes everything else already queued (up to a batch
//! limit) so that a burst becomes one snapshot, and hands each snapshot to the sink.
//!
//! It runs on a thread of its own ([`spawn_builder`]), never on the runtime of the agent's control
//! tasks: applying a batch is CPU work (a full policy recompile against every identity of the mesh
//! among it) that would hold up the status socket and the remote clusters' keepalives. The bounded
//! input channels are the back-pressure: while the builder works, remote watchers wait to hand over
//! their events, and bursts pile up into bigger batches. Within a burst of remote identities the
//! policy recompile itself is coalesced too (see [`SnapshotBuilder::apply_queued`]).

use std::sync::Arc;
use std::thread::JoinHandle;
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
        let queued = !changes.is_empty() || !remote.is_empty();
        if let Some(tables) = builder.apply_queued(batch, queued) {
            sink.publish_batch(tables, taken);
        }
    }
    builder
}

/// The builder on a thread of its own (named `meshpath-builder`), off the caller's runtime; joining
/// the handle returns the builder once cancelled or once both inputs are closed.
pub fn spawn_builder(
    builder: SnapshotBuilder,
    changes: mpsc::Receiver<Change>,
    remote: mpsc::Receiver<RemoteEvent>,
    sink: impl SnapshotSink + 'static,
    cancel: CancellationToken,
    max_batch: usize,
) -> std::io::Result<JoinHandle<SnapshotBuilder>> {
    // Its own runtime, for this thread only: it waits on the channels, nothing else.
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    std::thread::Builder::new()
        .name("meshpath-builder".into())
        .spawn(move || {
            runtime.block_on(run_builder(
                builder, changes, remote, sink, cancel, max_batch,
            ))
        })
}
