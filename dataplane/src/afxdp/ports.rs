//! Ports added to and removed from a running worker (pods made and deleted while the agent runs),
//! without stopping it and without a lock on its path: a [`PortControl`] binds the new socket on the
//! worker's UMEM (shared through a socket that already has it) in the caller's thread, then hands it
//! over a channel; the worker takes the queued changes between bursts, at the top of a turn, when a
//! flag tells it some are waiting (one relaxed load per turn otherwise). A removed port's socket is
//! handed back and closed in the caller's thread — closing an AF_XDP socket waits for an RCU grace
//! period, which must not stall the other ports' traffic — and then the worker takes back every UMEM
//! chunk that socket's rings held.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use super::sys::{BindOptions, Xsk};
use super::worker::PortConfig;
use super::AfXdpError;
use crate::PortId;

/// A socket bound on the worker's UMEM, not yet the worker's: register [`BoundPort::socket`] in its
/// interface's XSKMAP, then [`PortControl::add`] it.
pub struct BoundPort {
    pub(super) config: PortConfig,
    pub(super) xsk: Xsk,
}

impl BoundPort {
    pub fn config(&self) -> PortConfig {
        self.config
    }

    /// The socket, to register in the XSKMAP at the port's queue.
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.xsk.as_fd()
    }
}

/// What removing a port gave back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// UMEM chunks the port's socket held (its fill ring, unsent or uncompleted frames).
    pub chunks: usize,
}

pub(super) enum PortCommand {
    Add(Box<BoundPort>, SyncSender<Result<(), AfXdpError>>),
    /// Out of the worker's ports; its socket comes back to be closed.
    Remove(PortId, SyncSender<Result<Box<Xsk>, AfXdpError>>),
    /// The chunks of a removed port's socket, once it is closed, back to the free list.
    Reclaim(PortId, SyncSender<Released>),
}

/// The worker's end: commands and the flag that says some are waiting.
pub(super) struct PortCommands {
    pub(super) queue: Receiver<PortCommand>,
    pub(super) pending: Arc<AtomicBool>,
}

impl PortCommands {
    /// The commands queued since the last call; nothing (one relaxed load) when none are.
    pub(super) fn take(&self) -> Vec<PortCommand> {
        if !self.pending.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        self.queue.try_iter().collect()
    }
}

/// Adds ports to a worker and removes them, from any thread, while it runs.
#[derive(Clone)]
pub struct PortControl {
    /// A socket that holds the worker's UMEM (a duplicate of its first port's descriptor).
    share: Arc<OwnedFd>,
    commands: Sender<PortCommand>,
    pending: Arc<AtomicBool>,
    ring_size: u32,
    copy: bool,
}

/// How long a change waits for the worker to take it (it takes changes every turn, at most
/// `idle_poll_ms` apart).
const WORKER_ANSWER: Duration = Duration::from_secs(5);

impl PortControl {
    pub(super) fn new(share: OwnedFd, ring_size: u32, copy: bool) -> (PortControl, PortCommands) {
        let (commands, queue) = mpsc::channel();
        let pending = Arc::new(AtomicBool::new(false));
        let control = PortControl {
            share: Arc::new(share),
            commands,
            pending: pending.clone(),
            ring_size,
            copy,
        };
        (control, PortCommands { queue, pending })
    }

    /// Binds a socket for `port` on the worker's UMEM, in the calling thread's network namespace.
    pub fn bind(&self, port: PortConfig) -> Result<BoundPort, AfXdpError> {
        let options = BindOptions {
            ifindex: port.ifindex,
            queue: port.queue,
            ring_size: self.ring_size,
            copy: self.copy,
        };
        let xsk =
            Xsk::bind_shared(self.share.as_fd(), options).map_err(|source| AfXdpError::Bind {
                ifindex: port.ifindex,
                queue: port.queue,
                shared: true,
                source,
            })?;
        Ok(BoundPort { config: port, xsk })
    }

    /// Hands `port` to the worker; returns once the worker serves it (its fill ring stocked).
    pub fn add(&self, port: BoundPort) -> Result<(), AfXdpError> {
        self.ask(|reply| PortCommand::Add(Box::new(port), reply))?
    }

    /// Takes port `id` from the worker: its socket closed, its chunks back in the free list.
    pub fn remove(&self, id: PortId) -> Result<Released, AfXdpError> {
        let socket = self.ask(|reply| PortCommand::Remove(id, reply))??;
        drop(socket);
        self.ask(|reply| PortCommand::Reclaim(id, reply))
    }

    fn ask<T>(&self, command: impl FnOnce(SyncSender<T>) -> PortCommand) -> Result<T, AfXdpError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.commands
            .send(command(reply))
            .map_err(|_| AfXdpError::WorkerGone)?;
        self.pending.store(true, Ordering::Release);
        answer.recv_timeout(WORKER_ANSWER).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => AfXdpError::WorkerBusy(WORKER_ANSWER),
            mpsc::RecvTimeoutError::Disconnected => AfXdpError::WorkerGone,
        })
    }
}
