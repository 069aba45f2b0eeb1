//! A worker: one thread, pinned to one core, owning its share of the node's UMEM and the AF_XDP
//! sockets of its ports (one queue of each). Loop: drain completions, top up fill rings, receive a
//! burst per port → steer (frames of other workers' flows handed to them) → handler → transmit; then
//! the frames other workers handed here and the chunks they sent home; publish counters; sleep in poll(2) only when no port had anything. Every turn, busy or idle, beats
//! the heartbeat that liveness checks read, and every [`KERNEL_COUNTERS_EVERY`] the kernel's own
//! socket counters are read: a saturated worker never idles, and that is when the kernel drops.
//! Between turns it takes the port changes [`super::PortControl`] queued (see [`super::ports`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrayvec::ArrayVec;

use super::crossing::Crossing;
#[cfg(test)]
use super::crossing::HANDOFF_RING;
use super::ports::{BoundPort, PortCommand, PortCommands, PortControl, Released};
use super::stats::{PortStats, SharedStats, UmemStats, WorkerStats};
use super::sys::{self, BindOptions, Umem, XdpMode, Xsk, BURST, RX_OFFSET};
use super::{AfXdpError, BatchHandler};
use crate::steering::Owner;
use crate::{DropReason, Frame, PortId, Verdict};

/// One port of a worker: a socket on (interface, queue).
#[derive(Clone, Copy, Debug)]
pub struct PortConfig {
    pub id: PortId,
    pub ifindex: u32,
    pub queue: u32,
}

/// What a worker serves and how.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Core to pin the thread to; `None` leaves it to the scheduler.
    pub core: Option<usize>,
    pub ports: Vec<PortConfig>,
    /// Slots per ring (power of two); the UMEM holds two rings' worth of chunks per port.
    pub ring_size: u32,
    /// Copy mode: what veth supports. Off, each socket is zero-copy where its driver has it and copy
    /// where not ([`Worker::modes`]); the sockets share one UMEM, whose first socket's mode the others
    /// take, so if one of them has no zero-copy every socket is bound in copy mode.
    pub copy: bool,
    /// How long an idle worker sleeps in poll(2) before checking its stop flag again.
    pub idle_poll_ms: i32,
    /// How long a worker keeps polling its rings without sleeping once traffic stops: a reply due
    /// within this (a request/response's other half) finds it awake, where sleeping in poll(2) would
    /// cost a wake-up per frame. Zero sleeps at the first idle turn.
    pub idle_spin: Duration,
    /// Busy polling (SO_PREFER_BUSY_POLL): the worker never sleeps and drives each device queue
    /// with an rx kick every turn. Costs a whole core; off by default.
    pub busy_poll: bool,
    /// Ports that may be added while the worker runs (pods made after it started): the UMEM holds a
    /// fill ring's worth of chunks for each, at `spare_ring_size` slots per ring.
    pub spare_ports: u32,
    pub spare_ring_size: u32,
}

impl WorkerConfig {
    pub fn new(ports: Vec<PortConfig>) -> WorkerConfig {
        WorkerConfig {
            core: None,
            ports,
            ring_size: 1024,
            copy: true,
            idle_poll_ms: 10,
            idle_spin: IDLE_SPIN,
            busy_poll: false,
            spare_ports: 0,
            spare_ring_size: 256,
        }
    }

    fn check(&self) -> Result<(), AfXdpError> {
        for size in [self.ring_size, self.spare_ring_size] {
            if !size.is_power_of_two() || size < BURST as u32 {
                return Err(AfXdpError::RingSize(size));
            }
        }
        if self.ports.is_empty() {
            return Err(AfXdpError::NoPorts);
        }
        Ok(())
    }

    /// Chunks the UMEM needs: two rings' worth per port (its fill ring, and frames on their way out
    /// of any port), a fill ring's worth per spare port, and a burst in hand.
    ///
    /// A spare port (a pod's veth) gets no second ring of its own: what waits on the tx rings of all
    /// ports at once is bounded by the fixed ports' share, not by the number of pods (veth sends in
    /// copy mode as the worker kicks it, so a pod's tx ring drains at once). At 110 pods the second
    /// ring cost 28 MiB of pinned memory that nothing used. Should every chunk be out, fill rings
    /// are stocked again as chunks come back, and the kernel counts what it could not place
    /// (`rx_fill_ring_empty`).
    fn chunks(&self) -> u32 {
        let fixed = (self.ports.len() as u32).saturating_mul(self.ring_size * 2);
        let spare = self.spare_ports.saturating_mul(self.spare_ring_size);
        fixed.saturating_add(spare).saturating_add(BURST as u32)
    }
}

/// How often the kernel's socket counters (rx ring full, fill ring empty, invalid descriptors) are
/// read and published, whatever the load.
pub const KERNEL_COUNTERS_EVERY: Duration = Duration::from_millis(100);

/// How often the handler's timers run ([`BatchHandler::tick`]): WireGuard's handshake retries and
/// keepalives count in seconds.
pub const TICK_EVERY: Duration = Duration::from_millis(100);

/// [`WorkerConfig::idle_spin`] by default: longer than a round trip between two nodes' pods through
/// the kernel and another worker (`meshpath-perf rr`: p50 about 70 µs), short enough that an idle
/// node spends nothing. Measured against sleeping at once in `meshpath-perf rr` (perf/RESULTS.md).
pub const IDLE_SPIN: Duration = Duration::from_micros(100);

/// How long one busy-poll kick may spin in the driver.
const BUSY_POLL_USECS: u32 = 20;

struct Port {
    id: PortId,
    xsk: Xsk,
}

/// A worker whose sockets are bound (in the calling thread's network namespace) but not yet running:
/// register [`Worker::sockets`] in the XDP program's XSKMAP, then [`Worker::spawn`].
pub struct Worker {
    config: WorkerConfig,
    // Declared before `umem` so the sockets close before the UMEM is unmapped.
    ports: Vec<Port>,
    umem: Umem,
    /// PortId.0 → index in `ports`.
    index: Vec<Option<u16>>,
    stats: WorkerStats,
    /// Turns of the loop so far: the heartbeat.
    turns: u64,
    shared: Arc<SharedStats>,
    pollfds: Vec<libc::pollfd>,
    /// Port changes queued by [`PortControl`]s; `None` until [`Worker::port_control`] is asked for.
    commands: Option<PortCommands>,
    /// The ports added while running, which count against `spare_ports`.
    added: Vec<PortId>,
    /// The rings to and from the node's other workers; `None` for a node's only worker.
    crossing: Option<Crossing>,
}

impl Worker {
    /// Maps the UMEM and binds one socket per port; all ports share the UMEM (XDP_SHARED_UMEM).
    pub fn bind(config: WorkerConfig) -> Result<Worker, AfXdpError> {
        let copy = config.copy;
        match Worker::bind_group(vec![config.clone()]) {
            // A zero-copy first socket makes its UMEM zero-copy, and a port whose driver has no
            // zero-copy cannot share it: copy mode for all.
            Err(AfXdpError::Bind { shared: true, .. }) if !copy => {
                Worker::bind_group(vec![WorkerConfig {
                    copy: true,
                    ..config
                }])
            }
            bound => bound,
        }
        .map(|mut workers| workers.remove(0))
    }

    /// A node's workers, one per config, over one UMEM mapping that every socket of every worker
    /// shares (XDP_SHARED_UMEM), each worker with a share of its chunks of its own and, with more
    /// than one, the rings that carry frames between them ([`super::crossing`]). Each worker's
    /// sockets should be on queues of their own (one fill and completion ring per socket).
    pub fn bind_group(configs: Vec<WorkerConfig>) -> Result<Vec<Worker>, AfXdpError> {
        for config in &configs {
            config.check()?;
        }
        let chunks = configs.iter().map(WorkerConfig::chunks).max().unwrap_or(0);
        let workers = u16::try_from(configs.len()).map_err(|_| AfXdpError::TooManyWorkers)?;
        let umems = Umem::shared(chunks, workers).map_err(|source| AfXdpError::Umem {
            chunks: chunks.saturating_mul(u32::from(workers)),
            source,
        })?;
        let mut crossings = match workers {
            1 => Vec::new(),
            n => Crossing::mesh(n, chunks as usize).map_err(AfXdpError::Doorbell)?,
        }
        .into_iter();
        let mut share: Option<OwnedFd> = None;
        let mut bound = Vec::with_capacity(configs.len());
        for (config, umem) in configs.into_iter().zip(umems) {
            let ports = bind_ports(&config, &umem, share.as_ref().map(|fd| fd.as_fd()))?;
            if share.is_none() {
                share = Some(dup_socket(&ports[0].xsk)?);
            }
            let mut worker = Worker::assemble(config, umem, ports);
            worker.crossing = crossings.next();
            worker.reindex();
            bound.push(worker);
        }
        Ok(bound)
    }

    /// The worker of bound sockets: their fill rings stocked, their counters ready.
    fn assemble(config: WorkerConfig, mut umem: Umem, mut ports: Vec<Port>) -> Worker {
        for port in &mut ports {
            umem.fill(&mut port.xsk, port.id);
        }
        let ids: Vec<PortId> = ports.iter().map(|p| p.id).collect();
        let stats = WorkerStats {
            ports: ids.iter().map(|&id| PortStats::new(id)).collect(),
            ..WorkerStats::default()
        };
        let mut worker = Worker {
            config,
            umem,
            ports,
            index: Vec::new(),
            stats,
            turns: 0,
            shared: Arc::new(SharedStats::new(ids)),
            pollfds: Vec::new(),
            commands: None,
            added: Vec::new(),
            crossing: None,
        };
        worker.reindex();
        worker.count_umem();
        worker
    }

    /// Rebuilds what follows the port list: the port index and the poll set.
    fn reindex(&mut self) {
        let top = self.ports.iter().map(|p| usize::from(p.id.0)).max();
        self.index = vec![None; 1 + top.unwrap_or(0)];
        for (i, p) in self.ports.iter().enumerate() {
            if let Some(slot) = self.index.get_mut(usize::from(p.id.0)) {
                *slot = Some(i as u16);
            }
        }
        self.pollfds = self
            .ports
            .iter()
            .map(|p| libc::pollfd {
                fd: p.xsk.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if let Some(crossing) = &self.crossing {
            self.pollfds.push(libc::pollfd {
                fd: crossing.doorbell().event().as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
    }

    /// What adds ports to this worker and removes them while it runs (sockets bound on its UMEM
    /// through a duplicate of its first socket's descriptor).
    pub fn port_control(&mut self) -> Result<PortControl, AfXdpError> {
        let first = self.ports.first().ok_or(AfXdpError::NoPorts)?;
        let share = dup_socket(&first.xsk)?;
        let (control, commands) =
            PortControl::new(share, self.config.spare_ring_size, self.config.copy);
        self.commands = Some(commands);
        Ok(control)
    }

    /// Carries out the port changes queued since the last turn.
    fn apply_port_changes(&mut self) {
        let Some(commands) = &self.commands else {
            return;
        };
        for command in commands.take() {
            match command {
                PortCommand::Add(port, reply) => {
                    let _ = reply.send(self.add_port(*port));
                }
                PortCommand::Remove(id, reply) => {
                    let _ = reply.send(self.take_port(id));
                }
                PortCommand::Reclaim(id, reply) => {
                    let _ = reply.send(self.reclaim_port(id));
                }
            }
        }
    }

    fn add_port(&mut self, port: BoundPort) -> Result<(), AfXdpError> {
        let id = port.config.id;
        if self.index_of(id).is_some() {
            return Err(AfXdpError::PortTaken(id.0));
        }
        if self.added.len() >= self.config.spare_ports as usize {
            return Err(AfXdpError::NoRoom(self.config.spare_ports));
        }
        let mut xsk = port.xsk;
        self.umem.fill(&mut xsk, id);
        self.ports.push(Port { id, xsk });
        self.stats.ports.push(PortStats::new(id));
        self.config.ports.push(port.config);
        self.added.push(id);
        self.reindex();
        self.count_umem();
        self.shared.relayout(&self.stats);
        Ok(())
    }

    /// Takes port `id` off this worker (its tx ring flushed first: what it holds is the kernel's to
    /// send or to drop) and hands its socket back, to be closed off this thread.
    fn take_port(&mut self, id: PortId) -> Result<Box<Xsk>, AfXdpError> {
        let i = self.index_of(id).ok_or(AfXdpError::UnknownPort(id.0))?;
        self.ports[i].xsk.flush_tx();
        let port = self.ports.remove(i);
        self.stats.ports.remove(i);
        self.config.ports.retain(|p| p.id != id);
        self.added.retain(|p| *p != id);
        self.reindex();
        self.count_umem();
        self.shared.relayout(&self.stats);
        Ok(Box::new(port.xsk))
    }

    /// Every chunk a removed port's socket held back to the free list; its socket is closed, so the
    /// kernel reaches none of them any more.
    fn reclaim_port(&mut self, id: PortId) -> Released {
        let chunks = if self.index_of(id).is_some() {
            0
        } else {
            self.umem.reclaim(id)
        };
        self.count_umem();
        Released { chunks }
    }

    #[cfg(test)]
    fn remove_port(&mut self, id: PortId) -> Result<Released, AfXdpError> {
        drop(self.take_port(id)?);
        Ok(self.reclaim_port(id))
    }

    fn index_of(&self, id: PortId) -> Option<usize> {
        self.index
            .get(usize::from(id.0))
            .copied()
            .flatten()
            .map(usize::from)
    }

    /// Each port's socket, to register in its interface's XSKMAP at the port's queue.
    /// The mode the kernel bound each port's socket in; `None` where it could not be read.
    pub fn modes(&self) -> impl Iterator<Item = (PortId, Option<XdpMode>)> + '_ {
        self.ports.iter().map(|p| (p.id, p.xsk.mode().ok()))
    }

    pub fn sockets(&self) -> impl Iterator<Item = (PortConfig, BorrowedFd<'_>)> {
        self.config
            .ports
            .iter()
            .zip(&self.ports)
            .map(|(pc, p)| (*pc, p.xsk.as_fd()))
    }

    /// A reader of this worker's counters, valid after spawn too.
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader(self.shared.clone())
    }

    /// Starts the worker thread; it stops when `stop` becomes true, and hands its handler back (with
    /// whatever state the handler owns, such as conntrack) to whoever joins it.
    pub fn spawn<H: BatchHandler + Send + 'static>(
        self,
        handler: H,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<WorkerHandle<H>> {
        let stats = self.stats_reader();
        let name = match &self.crossing {
            Some(crossing) => format!("meshpath-worker-{}", crossing.index()),
            None => "meshpath-worker".into(),
        };
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let mut worker = self;
            if let Some(core) = worker.config.core {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    warn_unpinned(core);
                }
            }
            let mut handler = handler;
            worker.run(&mut handler, &stop);
            (worker.stats, handler)
        })?;
        Ok(WorkerHandle { thread, stats })
    }

    fn run<H: BatchHandler>(&mut self, handler: &mut H, stop: &AtomicBool) {
        let mut kernel_counters = Every::new(KERNEL_COUNTERS_EVERY, Instant::now());
        let mut ticks = Every::new(TICK_EVERY, Instant::now());
        let mut busy_at = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            self.apply_port_changes();
            if ticks.due(Instant::now()) {
                handler.tick();
            }
            let (received, kicked) = self.poll_once(handler);
            self.turns = self.turns.wrapping_add(1);
            self.shared.beat(self.turns);
            if kernel_counters.due(Instant::now()) {
                self.refresh_kernel_counters();
                self.shared.publish(&self.stats);
            }
            // Sleep only when there is nothing to receive and no tx backlog to kick, and nothing
            // came for the spin's time.
            let idle = received == 0 && !kicked;
            if !idle {
                busy_at = Instant::now();
            } else if busy_at.elapsed() < self.config.idle_spin {
                std::hint::spin_loop();
                continue;
            }
            if idle && !self.config.busy_poll {
                self.sleep();
            }
        }
        self.shared.publish(&self.stats);
    }

    /// Sleeps in poll(2) until a socket has frames, another worker hands some over (its doorbell),
    /// or `idle_poll_ms` pass.
    fn sleep(&mut self) {
        if let Some(crossing) = &self.crossing {
            if !crossing.going_to_sleep() {
                return;
            }
        }
        self.stats.idle_polls += 1;
        self.shared.publish(&self.stats);
        // Also the wakeup the fill rings may ask for; an error here is retried next turn.
        let _ = sys::poll_readable(&mut self.pollfds, self.config.idle_poll_ms);
        if let Some(crossing) = &self.crossing {
            crossing.woke();
        }
    }

    /// One turn over every port; returns how many frames were received and whether a tx ring was
    /// kicked.
    fn poll_once<H: BatchHandler>(&mut self, handler: &mut H) -> (usize, bool) {
        let (mut received, mut kicked) = (0, false);
        for i in 0..self.ports.len() {
            let port = &mut self.ports[i];
            self.umem.complete(&mut port.xsk, port.id);
            self.umem.fill(&mut port.xsk, port.id);
            if self.config.busy_poll || self.ports[i].xsk.fill_needs_wakeup() {
                self.ports[i].xsk.kick_rx();
                self.stats.rx_kicks += 1;
            }
            received += self.service(i, handler);
        }
        received += self.serve_handoffs(handler);
        self.send_originated(handler);
        for port in self.ports.iter_mut() {
            if port.xsk.flush_tx() {
                kicked = true;
                self.stats.tx_kicks += 1;
            }
        }
        if received > 0 {
            self.stats.batches += 1;
            self.shared.publish(&self.stats);
        }
        (received, kicked)
    }

    fn service<H: BatchHandler>(&mut self, i: usize, handler: &mut H) -> usize {
        let Some(port) = self.ports.get_mut(i) else {
            return 0;
        };
        let id = port.id;
        let mut bases: ArrayVec<u64, BURST> = ArrayVec::new();
        let mut frames: ArrayVec<Frame<'_>, BURST> = ArrayVec::new();
        let refused = self
            .umem
            .receive(&mut port.xsk, id, &mut bases, &mut frames);
        let n = frames.len();
        if let Some(crossing) = &mut self.crossing {
            keep_own(crossing, handler, &mut bases, &mut frames);
        }
        let sends = run_handler(handler, &mut frames, &bases);
        drop(frames);
        if let Some(c) = self.stats.ports.get_mut(i) {
            c.rx += n as u64;
            c.rx_refused += refused as u64;
        }
        self.hand_over(i);
        for (send, verdict) in sends {
            self.dispatch(i, send, verdict);
        }
        n
    }

    /// Frames another worker received for flows this worker owns: the pipeline runs here and they
    /// leave from here. Also takes this worker's chunks back that others are done with, and sends
    /// theirs home. Returns how many frames came.
    fn serve_handoffs<H: BatchHandler>(&mut self, handler: &mut H) -> usize {
        let Some(crossing) = &mut self.crossing else {
            return 0;
        };
        let umem = &mut self.umem;
        let returned = crossing.take_returned(|base| {
            umem.returned(base);
        });
        let mut handed = ArrayVec::new();
        crossing.take_handed(&mut handed);
        let mut bases: ArrayVec<u64, BURST> = ArrayVec::new();
        let mut frames: ArrayVec<Frame<'_>, BURST> = ArrayVec::new();
        let refused = self.umem.take_in(&handed, &mut bases, &mut frames);
        debug_assert_eq!(
            refused, 0,
            "only descriptors of chunks given up are handed over"
        );
        let ports: ArrayVec<PortId, BURST> = frames.iter().map(Frame::port).collect();
        let sends = run_handler(handler, &mut frames, &bases);
        drop(frames);
        self.stats.received_handoff += sends.len() as u64;
        for ((send, verdict), port) in sends.into_iter().zip(ports) {
            let from = self.index_of(port).unwrap_or(usize::MAX);
            self.dispatch(from, send, verdict);
        }
        self.send_home();
        handed.len() + returned
    }

    /// Hands the frames queued for other workers to them; those that find a full ring are dropped
    /// and counted on port `i`, where they came in.
    fn hand_over(&mut self, i: usize) {
        let Some(crossing) = &mut self.crossing else {
            return;
        };
        let umem = &mut self.umem;
        let mut full: ArrayVec<u64, BURST> = ArrayVec::new();
        let handed = crossing.hand_over(
            |base| {
                umem.send_away(base);
            },
            |base| full.push(base),
        );
        for base in full {
            self.umem.recycle(base);
        }
        self.stats.handed_off += handed.sent;
        if let Some(d) = self
            .stats
            .ports
            .get_mut(i)
            .and_then(|c| c.drops.get_mut(DropReason::HandoffRingFull.index()))
        {
            *d += handed.ring_full;
        }
        self.send_home();
    }

    /// Sends the other workers' chunks this worker is done with back to them.
    fn send_home(&mut self) {
        if let Some(crossing) = &mut self.crossing {
            crossing.send_home(self.umem.take_returns());
        }
    }

    /// Carries out the handler's verdict on one frame received on port index `i`.
    fn dispatch(&mut self, i: usize, (base, addr, len): (u64, u64, u32), verdict: Verdict) {
        match verdict {
            Verdict::Transmit(out) => self.transmit(i, out, base, addr, len),
            Verdict::Consumed => self.umem.recycle(base),
            Verdict::ToKernel => {
                self.umem.recycle(base);
                if let Some(c) = self.stats.ports.get_mut(i) {
                    c.to_kernel_unsupported += 1;
                }
            }
            Verdict::Drop(reason) => {
                self.umem.recycle(base);
                if let Some(d) = self
                    .stats
                    .ports
                    .get_mut(i)
                    .and_then(|c| c.drops.get_mut(reason.index()))
                {
                    *d += 1;
                }
            }
        }
    }

    /// Copies each frame the handler originates into a free chunk and queues it on its port.
    fn send_originated<H: BatchHandler>(&mut self, handler: &mut H) {
        handler.originate(&mut |out, bytes| {
            let Some(j) = self.index_of(out) else {
                return;
            };
            let Some((base, chunk)) = self.umem.lend() else {
                return;
            };
            let at = RX_OFFSET;
            let Some(room) = chunk.get_mut(at..at + bytes.len()) else {
                self.umem.recycle(base);
                return;
            };
            room.copy_from_slice(bytes);
            let (Some(port), Some(c)) = (self.ports.get_mut(j), self.stats.ports.get_mut(j)) else {
                self.umem.recycle(base);
                return;
            };
            let (addr, len) = (base + at as u64, bytes.len() as u32);
            if self.umem.transmit(&mut port.xsk, out, base, addr, len) {
                c.tx += 1;
            } else {
                c.tx_ring_full += 1;
            }
        });
    }

    fn refresh_kernel_counters(&mut self) {
        for (port, stats) in self.ports.iter().zip(&mut self.stats.ports) {
            if let Ok(k) = port.xsk.kernel_counters() {
                stats.kernel = k;
            }
        }
        self.count_umem();
    }

    /// Counts the UMEM's chunks: free, and held by sockets that are no port any more.
    fn count_umem(&mut self) {
        let index = &self.index;
        let known = |id: PortId| matches!(index.get(usize::from(id.0)), Some(Some(_)));
        self.stats.umem = UmemStats {
            chunks: self.umem.chunks() as u64,
            free: self.umem.free_chunks() as u64,
            orphaned: self.umem.orphaned(known) as u64,
        };
    }

    fn transmit(&mut self, from: usize, out: PortId, base: u64, addr: u64, len: u32) {
        let Some(j) = self.index_of(out) else {
            self.umem.recycle(base);
            if let Some(c) = self.stats.ports.get_mut(from) {
                c.tx_unknown_port += 1;
            }
            return;
        };
        let (Some(port), Some(c)) = (self.ports.get_mut(j), self.stats.ports.get_mut(j)) else {
            return;
        };
        if self.umem.transmit(&mut port.xsk, out, base, addr, len) {
            c.tx += 1;
        } else {
            c.tx_ring_full += 1;
        }
    }
}

/// Runs `handler` over a burst; returns each frame's (chunk base, address, length) and verdict.
fn run_handler<H: BatchHandler>(
    handler: &mut H,
    frames: &mut [Frame<'_>],
    bases: &[u64],
) -> ArrayVec<((u64, u64, u32), Verdict), BURST> {
    let n = frames.len();
    let mut verdicts = [Verdict::Drop(DropReason::InvalidHeader); BURST];
    handler.handle(frames, &mut verdicts[..n]);
    frames
        .iter()
        .zip(bases)
        .zip(verdicts)
        .map(|((f, &base), v)| ((base, base + f.head() as u64, f.len() as u32), v))
        .collect()
}

/// Leaves in `frames` (and `bases`) the frames this worker owns, or that no worker does, and queues
/// the others on `crossing` for their owners.
fn keep_own<H: BatchHandler>(
    crossing: &mut Crossing,
    handler: &mut H,
    bases: &mut ArrayVec<u64, BURST>,
    frames: &mut ArrayVec<Frame<'_>, BURST>,
) {
    let mut owners = [Owner::Any; BURST];
    handler.steer(frames, &mut owners[..frames.len()]);
    if owners
        .iter()
        .all(|o| !matches!(o, Owner::Worker(w) if crossing.crosses(*w)))
    {
        return;
    }
    let mut kept_bases = ArrayVec::new();
    let mut kept = ArrayVec::new();
    for ((frame, base), owner) in frames.drain(..).zip(bases.drain(..)).zip(owners) {
        let away = match owner {
            Owner::Worker(w) if crossing.crosses(w) => {
                let addr = base + frame.head() as u64;
                crossing.queue(w, base, addr, frame.len(), frame.port())
            }
            _ => false,
        };
        if !away {
            kept_bases.push(base);
            kept.push(frame);
        }
    }
    *bases = kept_bases;
    *frames = kept;
}

/// Binds one socket per port of `config` on `umem`: the first registers it with the kernel, unless
/// `share` is a socket that already did.
fn bind_ports(
    config: &WorkerConfig,
    umem: &Umem,
    share: Option<BorrowedFd<'_>>,
) -> Result<Vec<Port>, AfXdpError> {
    let mut ports: Vec<Port> = Vec::with_capacity(config.ports.len());
    for pc in &config.ports {
        let opts = BindOptions {
            ifindex: pc.ifindex,
            queue: pc.queue,
            ring_size: config.ring_size,
            copy: config.copy,
        };
        let share = share.or_else(|| ports.first().map(|p| p.xsk.as_fd()));
        let failed = |source| AfXdpError::Bind {
            ifindex: pc.ifindex,
            queue: pc.queue,
            shared: share.is_some(),
            source,
        };
        let xsk = Xsk::bind(umem, share, opts).map_err(failed)?;
        if config.busy_poll {
            xsk.prefer_busy_poll(BUSY_POLL_USECS, BURST as u32)
                .map_err(failed)?;
        }
        ports.push(Port { id: pc.id, xsk });
    }
    Ok(ports)
}

fn dup_socket(xsk: &Xsk) -> Result<OwnedFd, AfXdpError> {
    xsk.as_fd()
        .try_clone_to_owned()
        .map_err(|source| AfXdpError::Bind {
            ifindex: 0,
            queue: 0,
            shared: true,
            source,
        })
}

fn warn_unpinned(core: usize) {
    eprintln!("meshpath worker: could not pin to core {core}; running unpinned");
}

/// A deadline that comes round every `period`: due at most once per call, and a late caller does not
/// get a burst of catch-up ticks.
#[derive(Clone, Copy, Debug)]
struct Every {
    period: Duration,
    next: Instant,
}

impl Every {
    fn new(period: Duration, now: Instant) -> Every {
        Every {
            period,
            next: now + period,
        }
    }

    fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.period;
        true
    }
}

/// Reads a worker's published counters from any thread.
#[derive(Clone, Debug)]
pub struct StatsReader(Arc<SharedStats>);

impl StatsReader {
    pub fn read(&self) -> WorkerStats {
        self.0.read()
    }

    /// The worker's turns so far: it grows while the worker's loop runs, busy or idle (an idle
    /// worker wakes from poll(2) every `idle_poll_ms`), and stops when the thread is stuck or gone.
    pub fn heartbeat(&self) -> u64 {
        self.0.heartbeat()
    }
}

/// A running worker.
#[derive(Debug)]
pub struct WorkerHandle<H> {
    thread: JoinHandle<(WorkerStats, H)>,
    stats: StatsReader,
}

impl<H> WorkerHandle<H> {
    pub fn stats(&self) -> WorkerStats {
        self.stats.read()
    }

    /// Waits for the thread to end (after its stop flag is set) and returns its final counters.
    pub fn join(self) -> Result<WorkerStats, AfXdpError> {
        self.join_with_handler().map(|(stats, _)| stats)
    }

    /// Waits for the thread to end and returns its final counters and its handler.
    pub fn join_with_handler(self) -> Result<(WorkerStats, H), AfXdpError> {
        self.thread.join().map_err(|_| AfXdpError::WorkerPanicked)
    }
}

#[cfg(test)]
mod crossing_tests;

#[cfg(test)]
mod tests {
    use super::super::sys::{fake_kernel, CHUNK_SIZE, RX_OFFSET};
    use super::*;
    use crate::afxdp::CrossConnect;
    use std::os::fd::OwnedFd;

    const RING: u32 = BURST as u32;
    const A: PortId = PortId(0);
    const B: PortId = PortId(1);

    /// A worker on ports A and B (cross-connected by the tests' handler) whose kernel is the test,
    /// with a UMEM sized as `bind` sizes it.
    fn worker() -> Worker {
        worker_with(2 * RING * 2 + BURST as u32)
    }

    fn worker_with(chunks: u32) -> Worker {
        let config = WorkerConfig {
            ring_size: RING,
            ..WorkerConfig::new(vec![
                PortConfig {
                    id: A,
                    ifindex: 1,
                    queue: 0,
                },
                PortConfig {
                    id: B,
                    ifindex: 2,
                    queue: 0,
                },
            ])
        };
        let umem = Umem::new(chunks).expect("mmap");
        let ports = [A, B]
            .into_iter()
            .map(|id| Port {
                id,
                xsk: fake_kernel::socket(RING),
            })
            .collect();
        Worker::assemble(config, umem, ports)
    }

    fn cross() -> CrossConnect {
        CrossConnect::new(vec![(A, B)])
    }

    fn xsk(w: &mut Worker, port: usize) -> &mut Xsk {
        &mut w.ports[port].xsk
    }

    /// The kernel receives `n` 60-byte frames on `port` into buffers from its fill ring; returns how
    /// many buffers it had.
    fn receive(w: &mut Worker, port: usize, n: usize) -> usize {
        let mut received = 0;
        while received < n {
            let Some(base) = xsk(w, port).kernel_take_fill() else {
                break;
            };
            assert!(xsk(w, port).kernel_receive(base + RX_OFFSET as u64, 60));
            received += 1;
        }
        received
    }

    #[test]
    fn descriptors_the_worker_did_not_hand_out_are_refused_and_counted() {
        let mut w = worker();
        let mut h = cross();
        let good = xsk(&mut w, 0).kernel_take_fill().expect("a posted buffer");
        let other = xsk(&mut w, 0).kernel_take_fill().expect("a posted buffer");
        let never_posted = (2 * RING * 2 + BURST as u32 - 1) as u64 * CHUNK_SIZE as u64;
        let k = xsk(&mut w, 0);
        assert!(k.kernel_receive(good + RX_OFFSET as u64, 60));
        assert!(
            k.kernel_receive(good + RX_OFFSET as u64, 60),
            "the same buffer twice"
        );
        assert!(
            k.kernel_receive(other + CHUNK_SIZE as u64 - 10, 60),
            "past its chunk"
        );
        assert!(k.kernel_receive(never_posted, 60), "a free chunk");
        assert!(k.kernel_receive(1 << 40, 60), "outside the UMEM");
        w.poll_once(&mut h);
        let a = &w.stats.ports[0];
        assert_eq!((a.rx, a.rx_refused), (1, 4), "{a:?}");
        assert_eq!(w.stats.ports[1].tx, 1, "the good frame went on");
        let sent = xsk(&mut w, 1).kernel_take_tx().expect("queued on B");
        assert_eq!((sent.addr, sent.len), (good + RX_OFFSET as u64, 60));
    }

    #[test]
    fn a_full_tx_ring_drops_the_frame_and_frees_its_buffer() {
        let mut w = worker();
        let mut h = cross();
        // B's kernel sends nothing: its tx ring takes one ring's worth, then is full.
        assert_eq!(receive(&mut w, 0, BURST), BURST);
        w.poll_once(&mut h);
        assert_eq!(
            receive(&mut w, 0, BURST),
            BURST,
            "A's fill ring was stocked again"
        );
        w.poll_once(&mut h);
        let b = &w.stats.ports[1];
        assert_eq!((b.tx, b.tx_ring_full), (RING as u64, BURST as u64), "{b:?}");
        // The dropped frames' buffers are free again: A's fill ring is stocked a third time.
        w.poll_once(&mut h);
        assert_eq!(receive(&mut w, 0, BURST), BURST, "no buffer was lost");
    }

    #[test]
    fn an_empty_fill_ring_is_stocked_again_as_sent_buffers_complete() {
        // No spare buffers: each fill ring holds a ring's worth and the free list is empty.
        let mut w = worker_with(2 * RING);
        let mut h = cross();
        let held: Vec<u64> = std::iter::from_fn(|| xsk(&mut w, 1).kernel_take_fill()).collect();
        assert_eq!(held.len(), BURST);
        w.poll_once(&mut h);
        assert!(
            xsk(&mut w, 1).kernel_take_fill().is_none(),
            "B's fill ring is empty"
        );
        // Frames arrive on B in the buffers the kernel held; they go out on A, still the kernel's.
        for base in held {
            assert!(xsk(&mut w, 1).kernel_receive(base + RX_OFFSET as u64, 60));
        }
        w.poll_once(&mut h);
        assert_eq!(w.stats.ports[0].tx, BURST as u64);
        assert!(
            xsk(&mut w, 1).kernel_take_fill().is_none(),
            "nothing to stock it with yet"
        );
        let sent: Vec<u64> = std::iter::from_fn(|| xsk(&mut w, 0).kernel_take_tx())
            .map(|d| d.addr)
            .collect();
        for addr in sent {
            assert!(xsk(&mut w, 0).kernel_complete(addr));
        }
        w.poll_once(&mut h);
        let stocked = std::iter::from_fn(|| xsk(&mut w, 1).kernel_take_fill()).count();
        assert_eq!(
            stocked, BURST,
            "completed buffers stock B's fill ring again"
        );
    }

    const C: PortId = PortId(7);

    /// A worker on A and B with room for one more port.
    fn worker_with_spare() -> Worker {
        let mut w = worker_with(2 * RING * 2 + RING + BURST as u32);
        w.config.spare_ports = 1;
        w.config.spare_ring_size = RING;
        w
    }

    fn bound(id: PortId) -> BoundPort {
        BoundPort {
            config: PortConfig {
                id,
                ifindex: 3,
                queue: 0,
            },
            xsk: fake_kernel::socket(RING),
        }
    }

    #[test]
    fn a_port_added_and_removed_while_running_leaves_every_chunk_where_it_was() {
        let mut w = worker_with_spare();
        let mut h = CrossConnect::new(vec![(A, B), (C, A)]);
        w.poll_once(&mut h);
        let free_before = w.umem.free_chunks();
        w.add_port(bound(C)).expect("room for one");
        assert_eq!(
            w.umem.free_chunks(),
            free_before - RING as usize,
            "C's fill ring"
        );
        // Frames from C go out of A; frames on A still go to B: nobody else was disturbed.
        assert_eq!(receive(&mut w, 2, 4), 4);
        assert_eq!(receive(&mut w, 0, 2), 2);
        w.poll_once(&mut h);
        assert_eq!(w.stats.port(C).map(|p| p.rx), Some(4));
        assert_eq!((w.stats.ports[0].tx, w.stats.ports[1].tx), (4, 2));
        let released = w.remove_port(C).expect("C is the worker's");
        assert_eq!(
            released.chunks, RING as usize,
            "C's fill ring, stocked again"
        );
        assert!(w.stats.port(C).is_none());
        assert!(matches!(w.remove_port(C), Err(AfXdpError::UnknownPort(7))));
        // A frame for C now is a frame for an unknown port: freed, counted.
        assert_eq!(receive(&mut w, 1, 1), 1);
        w.poll_once(&mut h);
        w.count_umem();
        assert_eq!(w.stats.umem.orphaned, 0);
        // The frames C sent are on A's tx ring until completed; completing them gives all back.
        let sent: Vec<u64> = std::iter::from_fn(|| xsk(&mut w, 0).kernel_take_tx())
            .map(|d| d.addr)
            .collect();
        for addr in sent {
            assert!(xsk(&mut w, 0).kernel_complete(addr));
        }
        let sent_b: Vec<u64> = std::iter::from_fn(|| xsk(&mut w, 1).kernel_take_tx())
            .map(|d| d.addr)
            .collect();
        for addr in sent_b {
            assert!(xsk(&mut w, 1).kernel_complete(addr));
        }
        w.poll_once(&mut h);
        assert_eq!(w.umem.free_chunks(), free_before, "every chunk back");
    }

    #[test]
    fn ports_beyond_the_spare_room_are_refused() {
        let mut w = worker_with_spare();
        w.add_port(bound(C)).expect("room for one");
        assert!(matches!(
            w.add_port(bound(C)),
            Err(AfXdpError::PortTaken(7))
        ));
        assert!(matches!(
            w.add_port(bound(PortId(8))),
            Err(AfXdpError::NoRoom(1))
        ));
        w.remove_port(C).expect("C is the worker's");
        w.add_port(bound(PortId(8))).expect("room again");
    }

    #[test]
    fn port_changes_are_taken_between_turns_through_the_control() {
        let mut w = worker_with_spare();
        let dev_null = std::fs::File::open("/dev/null").expect("/dev/null");
        let (control, commands) = PortControl::new(OwnedFd::from(dev_null), RING, true);
        w.commands = Some(commands);
        let asking = std::thread::spawn(move || {
            control.add(bound(C))?;
            control.remove(C)
        });
        let mut h = cross();
        let released = loop {
            w.apply_port_changes();
            w.poll_once(&mut h);
            if asking.is_finished() {
                break asking.join().expect("no panic");
            }
            std::thread::yield_now();
        };
        assert_eq!(released.expect("added, then removed").chunks, RING as usize);
        assert_eq!(w.ports.len(), 2);
    }

    #[test]
    fn every_is_due_once_per_period_without_catching_up() {
        let start = Instant::now();
        let period = Duration::from_millis(100);
        let mut every = Every::new(period, start);
        assert!(!every.due(start));
        assert!(!every.due(start + Duration::from_millis(99)));
        assert!(every.due(start + period));
        assert!(!every.due(start + period), "once per period");
        // A caller that was away for ten periods gets one tick, then waits a whole period again.
        let late = start + period * 11;
        assert!(every.due(late));
        assert!(!every.due(late + Duration::from_millis(50)));
        assert!(every.due(late + period));
    }
}
