//! AF_XDP ports and worker threads (feature `afxdp`): where frames enter and leave meshpath.
//!
//! Packet path: the XDP program (crate `meshpath-xdp-redirect`) redirects a frame into the AF_XDP
//! socket of its port → a [`Worker`] receives a burst into its UMEM → a [`BatchHandler`] (the pipeline,
//! or a bare forwarder) decides each frame's [`crate::Verdict`] → the worker queues it on the
//! destination port's tx ring, in place (all ports of a worker share one UMEM, so no copy).
//!
//! Frames start [`sys::RX_OFFSET`] (256 = [`crate::frame::HEADROOM`]) bytes into their chunk, so tunnel
//! headers are pushed in front without copying; the tx descriptor follows the frame's head.
//! `Verdict::ToKernel` has no path yet: such frames are dropped and counted as `to_kernel_unsupported`.
//!
//! A node may run several workers ([`Worker::bind_group`]): one UMEM mapping shared by every socket
//! of every worker, each worker a share of its chunks and sockets on queues of its own. A worker asks
//! its handler who owns each received frame ([`BatchHandler::steer`], [`crate::steering`]) and hands
//! the frames of other workers' flows to them (`crossing.rs`); their chunks come home afterwards.
//! The agent starts one worker per core of `dataplane.cores`, worker `i` on queue `i` of every
//! interface (`src/agent/wiring.rs`).
//!
//! Ports come and go while a worker runs ([`PortControl`]): a pod's socket is bound on the worker's
//! UMEM and handed over between bursts; a removed one's chunks return to the worker's free list.
//!
//! All `unsafe` is in [`sys`].

mod crossing;
pub mod generator;
mod handler;
mod ports;
mod stats;
mod sys;
mod worker;

pub use handler::{BatchHandler, CrossConnect, MacSwap};
pub use ports::{BoundPort, PortControl, Released};
pub use stats::{PortStats, UmemStats, WorkerStats};
pub use sys::{KernelCounters, XdpMode, BURST, CHUNK_SIZE, RX_OFFSET};
pub use worker::{PortConfig, StatsReader, Worker, WorkerConfig, WorkerHandle};

/// What failed in setting up AF_XDP, and on which interface and queue.
#[derive(Debug, thiserror::Error)]
pub enum AfXdpError {
    #[error("ring size {0}: must be a power of two of at least one burst")]
    RingSize(u32),
    #[error("a worker needs at least one port")]
    NoPorts,
    #[error("mapping a UMEM of {chunks} chunks: {source}")]
    Umem {
        chunks: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("AF_XDP socket on ifindex {ifindex} queue {queue} (shared UMEM: {shared}): {source}")]
    Bind {
        ifindex: u32,
        queue: u32,
        shared: bool,
        #[source]
        source: std::io::Error,
    },
    #[error("more workers than a node can have")]
    TooManyWorkers,
    #[error("the eventfd that wakes a worker: {0}")]
    Doorbell(#[source] std::io::Error),
    #[error("worker thread panicked")]
    WorkerPanicked,
    #[error("the worker is gone")]
    WorkerGone,
    #[error("the worker took no port change within {0:?}")]
    WorkerBusy(std::time::Duration),
    #[error("the worker has room for {0} added ports, and they are all in use")]
    NoRoom(u32),
    #[error("port {0} is already the worker's")]
    PortTaken(u16),
    #[error("the worker has no port {0}")]
    UnknownPort(u16),
}

const _: () = assert!(sys::RX_OFFSET >= crate::frame::HEADROOM);
