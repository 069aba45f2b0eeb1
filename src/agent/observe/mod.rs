//! `meshpath observe`: the workers' flow logs as a stream of named flows and lost events (Hubble's
//! `GetFlowsResponse`, `meshpath_api::flow`), off the packet path.
//!
//! The worker drains its flow log after each batch into a bounded lock-free queue (`try_send`: no
//! lock and no syscall, since the reader never blocks on it; a full queue loses events, counted). A
//! control-plane task polls the queue, names each flow's ends ([`names`]), turns losses — the
//! queue's, and the kernel's drops on the AF_XDP sockets, read every second — into lost events
//! ([`lost`]), keeps the last [`KEEP`] events and fans new ones out to the observers of the socket
//! `<status-socket>.observe`. Each observer's request says what it wants (filters, time window,
//! the last N, follow), and the agent applies it: only what is wanted crosses the socket.

mod lost;
mod names;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshpath_api::client::ObserveRequest;
use meshpath_api::flow::{Event, FlowResponse, FlowTime, LostEventSource, LostEvents};
use meshpath_api::status::FlowLogStatus;
use meshpath_dataplane::afxdp::PortStats;
use meshpath_dataplane::flowlog::FlowEvent;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::port_names::PortNames;
use super::socket::{self, ConnectionError};
use super::workers::NodeWorkers;
use lost::LostCounters;
pub use names::Names;
use names::View;

/// Events the agent keeps for `meshpath observe` without `--follow`.
pub const KEEP: usize = 1024;
/// Events in flight between the worker and the control task.
const QUEUE: usize = 8192;
const POLL: Duration = Duration::from_millis(20);
/// How often the kernel's per-socket drops are read into lost events.
const KERNEL_EVERY: Duration = Duration::from_secs(1);

/// A worker's end of the queue (each worker has a clone).
#[derive(Clone)]
pub struct FlowSink {
    queue: SyncSender<FlowEvent>,
    lost: Arc<AtomicU64>,
    /// The clock the worker stamps events with.
    pub epoch: Instant,
}

impl FlowSink {
    /// Hands an event on; never blocks: if the control task is behind, the event is lost and counted.
    pub fn send(&self, event: FlowEvent) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(event)
        {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The control task's end of the queue.
pub struct FlowSource {
    queue: Receiver<FlowEvent>,
    lost: Arc<AtomicU64>,
    epoch: Instant,
}

pub fn channel() -> (FlowSink, FlowSource) {
    let (tx, rx) = sync_channel(QUEUE);
    let lost = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    (
        FlowSink {
            queue: tx,
            lost: lost.clone(),
            epoch,
        },
        FlowSource {
            queue: rx,
            lost,
            epoch,
        },
    )
}

/// The kernel's drops, per port: where to read them and how to name each port.
pub struct KernelDrops {
    /// The worker's per-port counters, as it last published them.
    pub ports: Box<dyn Fn() -> Vec<PortStats> + Send>,
    pub interfaces: PortNames,
}

impl KernelDrops {
    pub fn of(workers: NodeWorkers, interfaces: PortNames) -> KernelDrops {
        KernelDrops {
            ports: Box::new(move || workers.read().ports),
            interfaces,
        }
    }
}

/// The events kept for observers that do not follow, the stream of new ones, and how many flows
/// were seen and lost.
#[derive(Clone)]
pub struct FlowHub {
    recent: Arc<Mutex<VecDeque<FlowResponse>>>,
    live: broadcast::Sender<FlowResponse>,
    seen: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
}

impl Default for FlowHub {
    fn default() -> Self {
        FlowHub {
            recent: Arc::default(),
            live: broadcast::channel(KEEP).0,
            seen: Arc::default(),
            lost: Arc::default(),
        }
    }
}

impl FlowHub {
    /// What the status reports of the flow log.
    pub fn status(&self) -> FlowLogStatus {
        FlowLogStatus {
            kept: self.recent.lock().map_or(0, |r| r.len() as u64),
            capacity: KEEP as u64,
            seen: self.seen.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
        }
    }

    fn publish(&self, event: FlowResponse) {
        if matches!(event.event, Event::Flow(_)) {
            self.seen.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == KEEP {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        let _ = self.live.send(event);
    }

    fn recent(&self) -> Vec<FlowResponse> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Polls the workers' queue until cancelled, naming each event and publishing it with the losses.
pub async fn collect(
    source: FlowSource,
    names: Names,
    kernel: KernelDrops,
    hub: FlowHub,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(POLL);
    let mut lost = LostCounters::default();
    let mut kernel_read = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let tables = names.tables.load();
        let mesh = names.mesh.as_ref().map(|m| m.borrow().clone());
        let view = View {
            tables: &tables,
            mesh: mesh.as_ref(),
        };
        let wall_now = unix_ms(SystemTime::now());
        let mono_now = source.epoch.elapsed().as_millis() as u64;
        while let Ok(event) = source.queue.try_recv() {
            let wall = wall_now.saturating_sub(mono_now.saturating_sub(event.time_ms));
            let flow = names.flow(&view, wall, &event);
            hub.publish(FlowResponse {
                node_name: names.node_name.clone(),
                time: flow.time,
                event: Event::Flow(Box::new(flow)),
            });
        }
        let queue_lost = source.lost.load(Ordering::Relaxed);
        hub.lost.store(queue_lost, Ordering::Relaxed);
        let mut losses: Vec<LostEvents> = lost.queue(queue_lost).into_iter().collect();
        if kernel_read.elapsed() >= KERNEL_EVERY {
            kernel_read = Instant::now();
            let name = |port| kernel.interfaces.get(port).map(|(interface, _)| interface);
            losses.extend(lost.kernel(&(kernel.ports)(), name));
        }
        for loss in losses {
            if loss.source == LostEventSource::ObserverEventsQueue {
                tracing::warn!(
                    lost = loss.num_events_lost,
                    "flow events lost: the observe queue was full"
                );
            }
            hub.publish(FlowResponse {
                node_name: names.node_name.clone(),
                time: FlowTime::from_unix_ms(wall_now),
                event: Event::LostEvents(loss),
            });
        }
    }
}

/// Serves observers on `listener` (bound at `path`) until cancelled: the kept events they want,
/// then (when asked) every new one they want.
pub async fn serve(
    listener: UnixListener,
    path: &Path,
    hub: FlowHub,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    socket::accept(listener, path, cancel, move |stream| {
        observer(stream, hub.clone())
    })
    .await
}

async fn observer(stream: UnixStream, hub: FlowHub) -> Result<(), ConnectionError> {
    let (read, mut write) = stream.into_split();
    let request: ObserveRequest = socket::read_request(read).await?;
    // Subscribe first: an event published meanwhile is then not missed (at worst sent twice).
    let mut live = hub.live.subscribe();
    let kept: Vec<FlowResponse> = hub
        .recent()
        .into_iter()
        .filter(|e| wanted(&request, e))
        .collect();
    let skip = request
        .last
        .map_or(0, |n| kept.len().saturating_sub(n as usize));
    for event in &kept[skip..] {
        socket::write(&mut write, &json_line(event)?).await?;
    }
    if !request.follow {
        return Ok(());
    }
    loop {
        let event = match live.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => overrun(missed),
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        if request.until.is_some_and(|until| event.time > until) {
            return Ok(());
        }
        if wanted(&request, &event) {
            socket::write(&mut write, &json_line(&event)?).await?;
        }
    }
}

/// Whether the observer wants `event`: within its time window and, for a flow, through its filters
/// (lost events always are).
fn wanted(request: &ObserveRequest, event: &FlowResponse) -> bool {
    let after = request.since.is_none_or(|since| event.time >= since);
    let before = request.until.is_none_or(|until| event.time <= until);
    let passes = match &event.event {
        Event::Flow(flow) => request.filters.matches(flow),
        Event::LostEvents(_) => true,
    };
    after && before && passes
}

/// The events this observer missed because it read slower than they came.
fn overrun(missed: u64) -> FlowResponse {
    FlowResponse {
        event: Event::LostEvents(LostEvents {
            source: LostEventSource::HubbleRingBuffer,
            num_events_lost: missed,
            cpu: None,
            interface: None,
        }),
        node_name: String::new(),
        time: FlowTime::from_unix_ms(unix_ms(SystemTime::now())),
    }
}

fn json_line(event: &FlowResponse) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(event)?;
    line.push(b'\n');
    Ok(line)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
