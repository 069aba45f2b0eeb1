//! The node's AF_XDP forwarders: the XDP program on the node's pod veth and uplink (native mode, or
//! the run stops), one worker pinned to the forwarder's core, and either a bare MAC swap (the
//! machine's ceiling: every frame touched, nothing looked up) or meshpath's whole pipeline over
//! tables built for the benchmark's flows, loaded once per batch from an `ArcSwap` as the agent does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arc_swap::ArcSwap;
use meshpath_dataplane::afxdp::{
    BatchHandler, PortConfig, Worker, WorkerConfig, WorkerHandle, WorkerStats,
};
use meshpath_dataplane::pipeline::{self, WorkerState};
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::testbed::{self, Testbed};
use meshpath_dataplane::{DropReason, Frame, PortId, Verdict};
use meshpath_xdp_redirect::netns::ifindex;
use meshpath_xdp_redirect::{AttachMode, Attachment, NodeAddrs, Role, XdpRedirect};

use super::lab::{inside, POD_IF, UPLINK_IF};

/// Conntrack entries of the benchmark's worker: room for the established flows' two entries each
/// and for every new flow a run makes.
pub const CONNTRACK_CAPACITY: usize = 1 << 20;

/// What the node's worker runs.
pub enum Handler {
    /// Frames from the pod go out of the uplink with their MACs swapped.
    MacSwap,
    /// The pipeline: policy, service load balancing, VXLAN encapsulation.
    Meshpath {
        tables: Arc<ArcSwap<Tables>>,
        state: Box<WorkerState>,
    },
}

impl Handler {
    /// The pipeline over `testbed`'s tables, conntrack warmed with its flows.
    pub fn meshpath(testbed: &Testbed) -> Handler {
        Handler::Meshpath {
            tables: Arc::new(ArcSwap::from_pointee(testbed.tables.clone())),
            state: Box::new(testbed.warmed_worker(CONNTRACK_CAPACITY)),
        }
    }

    /// The same under strict WireGuard, with a session to every remote node already up.
    pub fn meshpath_encrypted(testbed: &Testbed) -> anyhow::Result<Handler> {
        let tables = super::sessions::encrypted_tables(testbed);
        let mut state = Box::new(testbed.warmed_worker(CONNTRACK_CAPACITY));
        super::sessions::establish(&tables, testbed, &mut state)?;
        Ok(Handler::Meshpath {
            tables: Arc::new(ArcSwap::from_pointee(tables)),
            state,
        })
    }
}

/// The pipeline as a worker's batch handler, as the agent runs it.
struct PipelineHandler {
    tables: Arc<ArcSwap<Tables>>,
    state: Box<WorkerState>,
    started: Instant,
}

impl BatchHandler for PipelineHandler {
    fn handle(&mut self, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let tables = self.tables.load();
        pipeline::process(&tables, &mut self.state, now_ms, frames, verdicts);
    }
}

/// The l2fwd-style ceiling: each frame's source and destination MACs swapped, out of the other port.
struct MacSwap {
    out: PortId,
}

impl BatchHandler for MacSwap {
    fn handle(&mut self, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
        for (frame, verdict) in frames.iter_mut().zip(verdicts.iter_mut()) {
            *verdict = match frame.data_mut().get_mut(..12) {
                Some(macs) => {
                    let (dst, src) = macs.split_at_mut(6);
                    dst.swap_with_slice(src);
                    Verdict::Transmit(self.out)
                }
                None => Verdict::Drop(DropReason::InvalidHeader),
            };
        }
    }
}

/// A running forwarder; [`Forwarder::stop`] ends it and detaches its programs.
pub struct Forwarder {
    worker: WorkerHandle<Box<dyn BatchHandler>>,
    stop: Arc<AtomicBool>,
    // Dropped after the worker stops: detaches the programs, then closes their XSKMAPs.
    attachments: Vec<Attachment>,
    _programs: Vec<XdpRedirect>,
}

impl Forwarder {
    /// Attaches the XDP program to the node's pod veth and uplink in namespace `node`, binds the
    /// worker's sockets there and starts it on `core`.
    pub fn start(node: &str, core: Option<usize>, handler: Handler) -> anyhow::Result<Forwarder> {
        let (worker, programs, attachments) = inside(node, || bind_in_node(core))?;
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Box<dyn BatchHandler> = match handler {
            Handler::MacSwap => Box::new(MacSwap {
                out: testbed::UPLINK,
            }),
            Handler::Meshpath { tables, state } => Box::new(PipelineHandler {
                tables,
                state,
                started: Instant::now(),
            }),
        };
        let worker = worker
            .spawn(handler, stop.clone())
            .context("starting the worker thread")?;
        Ok(Forwarder {
            worker,
            stop,
            attachments,
            _programs: programs,
        })
    }

    /// Stops the worker, detaches the programs and returns the worker's counters.
    pub fn stop(self) -> anyhow::Result<WorkerStats> {
        self.stop.store(true, Ordering::Relaxed);
        let stats = self.worker.join()?;
        for attachment in self.attachments {
            attachment.detach()?;
        }
        Ok(stats)
    }
}

type Bound = (Worker, Vec<XdpRedirect>, Vec<Attachment>);

fn bind_in_node(core: Option<usize>) -> anyhow::Result<Bound> {
    let node = NodeAddrs {
        ipv4: Some(testbed::node_ip()),
        ipv6: None,
    };
    let mut ports = Vec::new();
    let mut programs = Vec::new();
    let mut attachments = Vec::new();
    for (id, name, role) in [
        (testbed::UPLINK, UPLINK_IF, Role::Uplink),
        (testbed::pod_port(0), POD_IF, Role::Pod),
    ] {
        let index = ifindex(name).with_context(|| format!("interface {name}"))?;
        let program = XdpRedirect::load(role, node)?;
        let attachment = program.attach(index)?;
        require_native(name, attachment.mode())?;
        attachments.push(attachment);
        programs.push(program);
        ports.push(PortConfig {
            id,
            ifindex: index,
            queue: 0,
        });
    }
    let mut config = WorkerConfig::new(ports);
    config.core = core;
    let worker = Worker::bind(config)?;
    for ((_, fd), program) in worker.sockets().zip(&programs) {
        program.register_socket(0, fd)?;
    }
    Ok((worker, programs, attachments))
}

/// The benchmark measures native XDP only: on the generic path every way pays for an skb first.
pub fn require_native(interface: &str, mode: AttachMode) -> anyhow::Result<()> {
    anyhow::ensure!(
        mode == AttachMode::Native,
        "XDP runs in {mode:?} mode on {interface}: the benchmark needs native XDP (veth has it \
         since Linux 4.19); its figures would be the generic path's"
    );
    Ok(())
}
