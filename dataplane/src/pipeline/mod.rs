//! The pipeline: decides the fate of every frame of a batch, stage by stage over the whole burst.
//!
//! Each stage runs over all frames of a burst before the next starts, as DPDK and Snabb do: the
//! conntrack slots of the whole burst are prefetched together, and each table lookup runs in a tight
//! loop where the CPU overlaps the cache misses of many frames instead of stalling on each in turn.
//!
//! 1. receive — [`from_pod`]: anti-spoofing, the gateway's ARP/ND answers, offloaded checksums;
//!    [`from_uplink`]: tunnel decapsulation (the sender's identity from the VNI, checked against the
//!    sending node) or plain frames for our pods and masqueraded flows; [`from_host`]: the node's own
//!    stack through the host port (identity `host`);
//! 2. [`conntrack`] — lookup of both directions (an ICMP error by the packet it quotes); what a
//!    frame from another node claims of its sender checked against the ipcache
//!    ([`from_uplink::Claim`]) unless its flow's path vouches for it, and only then the entry
//!    renewed; [`lb`] — service translation (Maglev for new flows) and every remembered translation;
//! 3. [`route`] — where the translated destination lives (local pod, another node, the node, the world);
//! 4. [`enforce`] — policy for new flows, [`masquerade`] for those leaving the mesh, which
//!    [`conntrack`] then remembers;
//! 5. [`route`] — path MTU errors, NAT rewrite, MACs and hop limit, encapsulation, WireGuard
//!    encryption to a node with a key ([`crate::wireguard`]), transmit.
//!
//! A packet of an established flow whose direction the pipeline already decided under the current
//! snapshot takes the [`fastpath`]: its conntrack lookup (step 2) finds the decision beside the
//! entry, and steps 2–4 make no table lookup of their own; step 5 applies it.
//!
//! WireGuard datagrams are decrypted in [`from_uplink`] before anything else looks at them; handshake
//! messages are answered there. What the worker sends of its own accord (handshake retries,
//! keepalives, packets held for a handshake) it takes from [`originate`] after each turn, and
//! [`tick`] runs WireGuard's timers.

mod conntrack;
mod enforce;
pub(crate) mod fastpath;
mod from_host;
mod from_pod;
mod from_uplink;
mod lb;
mod masquerade;
mod route;

use crate::conntrack::{Conntrack, ConntrackConfig};
use crate::flowlog::{Direction, FlowEvent, FlowLog, FlowVerdict};
use crate::parse::Parsed;
use crate::pmtu::ErrorRateLimit;
use crate::service::Service;
use crate::snapshot::Tables;
use crate::stats::{Counters, Forward};
use crate::steering::WorkerSlot;
use crate::wireguard::Tunnels;
use crate::{DropReason, Frame, Identity, PortId};

use crate::conntrack::Home;
use conntrack::{Found, Known, Tracked};
use fastpath::Path;
use route::{Destination, NodeRoute};

/// What becomes of a frame once the pipeline is done with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the frame's (possibly rewritten) bytes out of this port.
    Transmit(PortId),
    /// Not for the dataplane: hand the frame to the node's kernel stack.
    ToKernel,
    /// Drop it, counted under this reason.
    Drop(DropReason),
    /// Done with, nothing to send: the pipeline kept what it needed of the frame (boringtun holds its
    /// packet until a handshake completes) or absorbed it (a WireGuard keepalive). Its buffer is free.
    Consumed,
}

/// Frames taken through the stages together: enough to overlap a burst's cache misses, few enough
/// that the burst's in-flight state stays in L1.
pub const BURST: usize = 32;

/// What a worker owns and nobody else touches: its conntrack, its counters, its flow log and the
/// budget of ICMP errors it may send.
#[derive(Debug)]
pub struct WorkerState {
    pub conntrack: Conntrack,
    pub counters: Counters,
    /// New flows' verdicts and drops; the worker's owner drains it after each batch.
    pub flowlog: FlowLog,
    pub icmp_errors: ErrorRateLimit,
    /// WireGuard peers; disabled unless the owner gives the worker its key.
    pub wireguard: Tunnels,
    /// Whether packets of established flows take the decision kept beside their conntrack entry
    /// ([`fastpath`]); off, every packet goes through every stage (the reference the fast path is
    /// tested against).
    pub fast_path: bool,
    /// Packets that took the fast path.
    pub fast_path_packets: u64,
    /// Which of the node's workers this is ([`crate::steering`]): the masquerade ports it may choose.
    pub slot: WorkerSlot,
}

impl WorkerState {
    pub fn new(conntrack: ConntrackConfig) -> Self {
        WorkerState {
            conntrack: Conntrack::new(conntrack),
            counters: Counters::default(),
            flowlog: FlowLog::default(),
            icmp_errors: ErrorRateLimit::default(),
            wireguard: Tunnels::disabled(),
            fast_path: true,
            fast_path_packets: 0,
            slot: WorkerSlot::ONLY,
        }
    }
}

/// Runs the pipeline over a batch: `verdicts[i]` is the fate of `frames[i]`, whose bytes may have been
/// rewritten (and moved within their buffer) to be transmitted as they are. `now_ms` is a monotonic
/// clock read once per batch.
pub fn process(
    tables: &Tables,
    state: &mut WorkerState,
    now_ms: u64,
    frames: &mut [Frame<'_>],
    verdicts: &mut [Verdict],
) {
    state.conntrack.sweep(now_ms);
    for (frames, verdicts) in frames.chunks_mut(BURST).zip(verdicts.chunks_mut(BURST)) {
        process_burst(tables, state, now_ms, frames, verdicts);
    }
}

/// One frame through the pipeline: a batch of one.
pub fn process_one(
    tables: &Tables,
    state: &mut WorkerState,
    now_ms: u64,
    frame: &mut Frame<'_>,
) -> Verdict {
    let mut verdict = [Verdict::ToKernel];
    process(
        tables,
        state,
        now_ms,
        std::slice::from_mut(frame),
        &mut verdict,
    );
    verdict[0]
}

/// The worker's timers, from its loop (not per packet): WireGuard's handshake retries, rekeying and
/// keepalives, and forgetting the peers whose node left the snapshot or changed its key.
pub fn tick(tables: &Tables, state: &mut WorkerState) {
    state.wireguard.tick(tables);
}

/// Hands `send` every frame the pipeline sends of its own accord (WireGuard's handshakes and
/// keepalives, packets boringtun held for a handshake), with its port.
pub fn originate(state: &mut WorkerState, send: impl FnMut(PortId, &[u8])) {
    state.wireguard.outbox.drain(send);
}

/// Where a frame came in. The underlay only delivers to local pods and the node (this node is no
/// transit router); the node's stack only sends into the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // `Arrival::FromPod` reads as what it is
enum Arrival {
    FromPod,
    /// Decapsulated from another node's tunnel.
    FromTunnel,
    /// Plain IP from the underlay.
    FromUnderlay,
    /// The node's own stack, through the host port.
    FromHost,
}

/// Who sends: the security identity of the source, and whether it is one of our own endpoints (whose
/// egress policy then applies).
#[derive(Clone, Copy, Debug)]
struct Source {
    identity: Identity,
    local: bool,
    /// What a frame from another node claims of its sender that the ipcache must still confirm;
    /// for a claim that [`decides_identity`](from_uplink::Claim::decides_identity), `identity` is
    /// known only once it is confirmed (or vouched for by the flow's path).
    claim: Option<from_uplink::Claim>,
}

/// What the receive stage made of a frame.
enum Received {
    /// Done already: a neighbour answer, or a frame for the kernel.
    Answered(Forward, Verdict),
    /// An IP frame to track, translate, check and route.
    Track(Parsed, Source, Arrival),
}

/// A frame's state between stages.
#[derive(Clone, Copy, Debug)]
struct InFlight<'t> {
    /// The port it came in on.
    port: PortId,
    parsed: Parsed,
    source: Source,
    arrival: Arrival,
    known: Known,
    service: Option<&'t Service>,
    tracked: Tracked,
    destination: Destination,
    /// Where conntrack's lookup of the flow starts (hashed once, for the prefetch and the lookup),
    /// and where it found it.
    home: Home,
    found: Option<Found>,
    /// Where the lookup of a service reply's forward entry starts.
    forward_home: Option<Home>,
    /// What the pipeline decided for this way of the flow before, if it still holds: the stages
    /// take it instead of their lookups ([`fastpath`]).
    path: Option<Path>,
}

/// A stage's answer for a frame that is done: how it was forwarded and where it goes, or why not.
type Outcome = Result<(Forward, Verdict), DropReason>;

fn process_burst<'t>(
    tables: &'t Tables,
    state: &mut WorkerState,
    now_ms: u64,
    frames: &mut [Frame<'_>],
    verdicts: &mut [Verdict],
) {
    let mut flights: [Option<InFlight<'t>>; BURST] = [None; BURST];
    let mut outcomes: [Outcome; BURST] = [Err(DropReason::InvalidHeader); BURST];
    let ct = &mut state.conntrack;
    let icmp_errors = &mut state.icmp_errors;
    let tunnels = &mut state.wireguard;
    let fast_path = state.fast_path;
    let slot = state.slot;

    for ((frame, flight), outcome) in frames.iter_mut().zip(&mut flights).zip(&mut outcomes) {
        state.counters.count_received(frame.len());
        *outcome = receive(tables, tunnels, frame).map(|received| match received {
            Received::Answered(forward, verdict) => (forward, verdict),
            Received::Track(parsed, source, arrival) => {
                *flight = Some(InFlight {
                    port: frame.port(),
                    parsed,
                    source,
                    arrival,
                    known: Known::New,
                    service: None,
                    tracked: Tracked::unchanged(parsed.flow),
                    // Not routed yet: a drop before routing knows no destination identity.
                    destination: Destination::Nowhere {
                        identity: Identity::UNKNOWN,
                        reason: DropReason::NoRoute,
                    },
                    home: ct.home_of(&parsed.flow),
                    found: None,
                    forward_home: None,
                    path: None,
                });
                (Forward::ToKernel, Verdict::ToKernel)
            }
        });
        if let Err(reason) = *outcome {
            let event = FlowEvent::early_drop(tables, frame, reason, now_ms);
            state.flowlog.record(event);
        }
    }
    let log = &mut state.flowlog;
    for flight in flights.iter().flatten() {
        ct.prefetch_home(flight.home);
    }
    // The reverse's home, for a frame not found its own way.
    let mut reverse: [Option<Home>; BURST] = [None; BURST];
    for ((flight, frame), reverse) in flights.iter_mut().zip(frames.iter()).zip(&mut reverse) {
        let Some(f) = flight else { continue };
        match conntrack::lookup(ct, now_ms, (&f.parsed, f.home), frame.data()) {
            Some(found) => (f.known, f.found) = found,
            None => *reverse = Some(conntrack::prefetch_reply(ct, &f.parsed)),
        }
    }
    for (flight, reverse) in flights.iter_mut().zip(reverse) {
        let Some(f) = flight else { continue };
        if let Some(home) = reverse {
            (f.known, f.found) = conntrack::lookup_reply(ct, now_ms, (&f.parsed, home));
        }
        // What the next stages read of the flow, loading while the other frames look up.
        f.forward_home = conntrack::prefetch_forward_entry(ct, f);
        fastpath::prefetch(ct, f);
    }
    for ((flight, frame), outcome) in flights.iter_mut().zip(frames.iter()).zip(&mut outcomes) {
        let Some(f) = flight else { continue };
        if fast_path {
            f.path = fastpath::kept(ct, tables, f);
            state.fast_path_packets += u64::from(f.path.is_some());
        }
        if let Err(reason) = believe(tables, f) {
            *outcome = Err(reason);
            log.record(FlowEvent::early_drop(tables, frame, reason, now_ms));
            *flight = None;
            continue;
        }
        conntrack::renew(ct, now_ms, f, frame.len());
        f.service = lb::find_service(tables, f);
    }
    run_stage(&mut flights, &mut outcomes, log, now_ms, |f| {
        lb::translate(tables, ct, f)
    });
    for flight in flights.iter_mut().flatten() {
        let kept = flight.path.and_then(|path| path.destination());
        flight.destination = kept
            .unwrap_or_else(|| route::destination(tables, flight.tracked.flow.dst, flight.arrival));
    }
    run_stage(&mut flights, &mut outcomes, log, now_ms, |f| {
        enforce::admit(tables, ct, now_ms, slot, f)
    });
    for ((flight, frame), outcome) in flights.iter().zip(frames.iter_mut()).zip(&mut outcomes) {
        if let Some(f) = flight {
            let route = node_route(tables, f);
            *outcome = route::transmit(tables, frame, f, route, (icmp_errors, tunnels), now_ms);
            if f.path.is_none() && outcome.is_ok() {
                fastpath::remember(ct, tables, f, route);
            }
            if f.known == Known::New || outcome.is_err() {
                log.record(f.event(*outcome, now_ms));
            }
        }
    }
    for ((frame, outcome), verdict) in frames.iter().zip(outcomes).zip(verdicts.iter_mut()) {
        *verdict = count(&mut state.counters, frame, outcome);
    }
}

/// Settles who sent a frame from another node: as the flow's path says, if it vouches for the
/// frame's claim, else by checking the claim ([`from_uplink::prove`]).
fn believe(tables: &Tables, flight: &mut InFlight<'_>) -> Result<(), DropReason> {
    let Some(claim) = flight.source.claim else {
        return Ok(());
    };
    flight.source.identity = match flight.path {
        Some(path) => path.source(),
        None => from_uplink::prove(
            tables,
            flight.parsed.flow.src,
            claim,
            flight.source.identity,
        )?,
    };
    Ok(())
}

/// How a frame's destination node is reached: as its path remembers, or from the tables.
fn node_route(tables: &Tables, flight: &InFlight<'_>) -> Option<NodeRoute> {
    let Destination::Node { node, .. } = flight.destination else {
        return None;
    };
    let remembered = flight.path.and_then(|path| path.node_route(tables, node));
    Some(remembered.unwrap_or_else(|| NodeRoute::of(tables, node)))
}

fn receive(
    tables: &Tables,
    tunnels: &mut Tunnels,
    frame: &mut Frame<'_>,
) -> Result<Received, DropReason> {
    let port = frame.port();
    if port == tables.node.uplink {
        from_uplink::receive(tables, tunnels, frame)
    } else if tables.node.is_host_port(port) {
        from_host::receive(tables, frame)
    } else {
        from_pod::receive(tables, frame)
    }
}

/// Runs a stage that may drop over every frame still in flight; a dropped frame leaves the burst.
fn run_stage<'t>(
    flights: &mut [Option<InFlight<'t>>],
    outcomes: &mut [Outcome],
    log: &mut FlowLog,
    now_ms: u64,
    mut stage: impl FnMut(&mut InFlight<'t>) -> Result<(), DropReason>,
) {
    for (flight, outcome) in flights.iter_mut().zip(outcomes) {
        if let Some(f) = flight {
            if let Err(reason) = stage(f) {
                *outcome = Err(reason);
                log.record(f.event(Err(reason), now_ms));
                *flight = None;
            }
        }
    }
}

impl InFlight<'_> {
    /// The flow log's record of this frame's fate.
    fn event(&self, outcome: Outcome, time_ms: u64) -> FlowEvent {
        FlowEvent {
            time_ms,
            flow: self.parsed.flow,
            l4: self.parsed.l4,
            backend: self.tracked.backend(),
            src_identity: self.source.identity,
            dst_identity: self.destination.identity(),
            verdict: match outcome {
                Ok((forward, _)) => FlowVerdict::Forwarded(forward),
                Err(reason) => FlowVerdict::Dropped(reason),
            },
            direction: match self.arrival {
                Arrival::FromPod => Direction::FromPod,
                Arrival::FromTunnel | Arrival::FromUnderlay => Direction::FromUplink,
                Arrival::FromHost => Direction::FromHost,
            },
        }
    }
}

fn count(counters: &mut Counters, frame: &Frame<'_>, outcome: Outcome) -> Verdict {
    match outcome {
        Ok((forward, verdict)) => {
            counters.count_forward(forward, frame.len());
            verdict
        }
        Err(reason) => {
            counters.count_drop(reason, frame.len());
            Verdict::Drop(reason)
        }
    }
}

#[cfg(test)]
mod tests;
