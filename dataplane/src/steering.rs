//! Worker steering: which of a node's workers owns a frame's flow, so that a flow's packets in both
//! directions meet the one conntrack entry (and fast path) its first packet made, in the one worker
//! that owns it. Runs before the pipeline, on the worker whose queue received the frame; a frame
//! another worker owns is handed to it ([`handoff`]) and the pipeline runs there.
//!
//! Why steering and not shared state: conntrack and the fast path stay a worker's own, with no atomic
//! or lock per packet, and a burst's buckets are still prefetched together. A concurrent table would
//! put a cache line that bounces between cores on every packet of a flow whose two directions arrive
//! on different queues — which on veth is most of them, since the receive queue follows the sender's
//! transmit queue and no key of ours. Steering costs a parse per frame, a lookup for each end on a
//! port some service uses (in a table whose lines a burst prefetches together, [`Steering::owners`]),
//! and a handoff only for frames that arrived on another worker's queue; where a NIC takes a
//! symmetric RSS key, most frames arrive at their owner already. `meshpath-perf pipeline --workers N` measures it.
//!
//! The owner is a keyed hash ([`crate::hash`]: no sender can aim every flow at one worker) of what
//! both directions of the flow share, after every translation meshpath makes:
//! - a plain flow: its two ends, in a canonical order (a symmetric hash);
//! - a service flow: only the client's end. A request goes to the service's frontend and its reply
//!   comes from the backend Maglev chose, so the two share nothing else; a frame whose one end is a
//!   frontend or a backend of some service ([`crate::service::ServiceTable::is_end`]) and whose
//!   other end is neither is keyed by that other end. On the backend's node both directions carry
//!   the client's end as well, so they agree there too.
//! - a masqueraded flow: its reply comes to the node's address and the port masquerading chose, and
//!   each worker chooses only ports of its own share of the range ([`WorkerSlot`]): the port says
//!   the owner. The request goes by its ends as a plain flow, and that owner chooses the port.
//! - an ICMP error: by the packet it quotes, which is a packet of the flow it is about.
//! - a tunnel frame from the uplink: by the frame inside.
//!
//! Frames with no flow (ARP, neighbour discovery, what does not parse) need no owner: the worker that
//! received them handles them ([`Owner::Any`]).
//!
//! Known limits. WireGuard datagrams are steered by their outer ends, so all traffic from one peer
//! meets one worker, whose inner flows may belong to another: a node with encryption runs one worker.
//! A client whose own `addr:port` is also a backend of some service (a UDP client sending from a port
//! its node serves on) is keyed as a plain flow by its request and by its client end in the reply.

pub mod handoff;

use crate::flow::proto;
use crate::icmp_error;
use crate::parse::{self, Parsed, L3};
use crate::service::{EndKey, Probe, ServiceTable};
use crate::snapshot::Tables;
use crate::tunnel::{self, TunnelProtocol};
use crate::{Addr, FlowKey, Frame, PortId};

/// Which worker of a node's workers this is: what the pipeline needs to know of steering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerSlot {
    pub index: u16,
    pub of: u16,
}

impl WorkerSlot {
    /// A node's only worker: owner of every flow and of every masquerade port.
    pub const ONLY: WorkerSlot = WorkerSlot { index: 0, of: 1 };

    /// Whether masquerading's `port` of the range starting at `first` is this worker's to choose.
    pub fn owns_masquerade_port(self, first: u16, port: u16) -> bool {
        masquerade_owner(first, port, self.of) == self.index
    }
}

impl Default for WorkerSlot {
    fn default() -> Self {
        WorkerSlot::ONLY
    }
}

/// Who handles a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// This worker, the one owning the frame's flow.
    Worker(u16),
    /// Any: the frame belongs to no flow (the receiving worker answers or drops it).
    Any,
}

/// A node's steering over `workers` workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steering {
    workers: u16,
}

impl Steering {
    /// Steering over `workers` workers; `None` for none.
    pub fn new(workers: u16) -> Option<Steering> {
        (workers > 0).then_some(Steering { workers })
    }

    pub fn workers(self) -> u16 {
        self.workers
    }

    /// The slot of worker `index`.
    pub fn slot(self, index: u16) -> WorkerSlot {
        WorkerSlot {
            index: index.min(self.workers - 1),
            of: self.workers,
        }
    }

    /// The worker that owns the flow of `frame`, received on `port`.
    pub fn owner(self, tables: &Tables, port: PortId, frame: &[u8]) -> Owner {
        self.finish(tables, &self.plan(tables, port, frame))
    }

    /// The owners of a burst (`owners[i]` belongs to `frames[i]`): every frame is parsed and the
    /// lines of its ends' lookups prefetched before any is read, so that the burst's cache misses
    /// overlap. Answers as [`Self::owner`] frame by frame.
    pub fn owners(self, tables: &Tables, frames: &[Frame<'_>], owners: &mut [Owner]) {
        if self.workers == 1 {
            owners.fill(Owner::Worker(0));
            return;
        }
        let mut plans = [Plan::Done(Owner::Any); BURST];
        for (frames, owners) in frames.chunks(BURST).zip(owners.chunks_mut(BURST)) {
            for (frame, plan) in frames.iter().zip(plans.iter_mut()) {
                *plan = self.plan(tables, frame.port(), frame.data());
                plan.prefetch(tables);
            }
            for (plan, owner) in plans.iter().zip(owners.iter_mut()) {
                *owner = self.finish(tables, plan);
            }
        }
    }

    /// The worker that owns a flow, known by its first packet's ends as they came in
    /// ([`crate::conntrack::CtEntry::first_packet`]): a planned restart's handover gives both entries
    /// of each flow to this worker. The worker that made a masqueraded flow owns its port too, so its
    /// first packet's ends alone say which (as long as the number of workers stays).
    pub fn flow_owner(self, tables: &Tables, first_packet: &FlowKey) -> u16 {
        match self.workers {
            1 => 0,
            n => reduce(Ends::of(tables, first_packet).key(tables), n),
        }
    }

    /// All of [`Self::owner`] but the lookups of the flow's ends.
    fn plan(self, tables: &Tables, port: PortId, frame: &[u8]) -> Plan {
        if self.workers == 1 {
            return Plan::Done(Owner::Worker(0));
        }
        let Ok(outer) = parse::parse(frame) else {
            return Plan::Done(Owner::Any);
        };
        let from_uplink = port == tables.node.uplink;
        if from_uplink {
            if let Some(inner) = tunnelled(tables, frame, &outer) {
                return match parse::parse(inner) {
                    Ok(parsed) => self.plan_of(tables, inner, &parsed, false),
                    Err(_) => Plan::Done(Owner::Any),
                };
            }
        }
        self.plan_of(tables, frame, &outer, from_uplink)
    }

    /// `plain_from_uplink`: the frame came from the underlay as it is, where masqueraded flows'
    /// replies come from.
    fn plan_of(
        self,
        tables: &Tables,
        frame: &[u8],
        parsed: &Parsed,
        plain_from_uplink: bool,
    ) -> Plan {
        if matches!(parsed.l3, L3::Arp(_)) {
            return Plan::Done(Owner::Any);
        }
        let (flow, masquerade_port) = match icmp_error::quoted(frame, parsed) {
            // The quoted packet went out from the masqueraded port.
            Some(quoted) => (quoted.flow, quoted.flow.src_port),
            None => (parsed.flow, parsed.flow.dst_port),
        };
        if plain_from_uplink {
            if let Some(first) = masquerade_range(tables, parsed, masquerade_port) {
                let owner = masquerade_owner(first, masquerade_port, self.workers);
                return Plan::Done(Owner::Worker(owner));
            }
        }
        Plan::Ask(Ends::of(tables, &flow))
    }

    fn finish(self, tables: &Tables, plan: &Plan) -> Owner {
        match plan {
            Plan::Done(owner) => *owner,
            Plan::Ask(ends) => Owner::Worker(reduce(ends.key(tables), self.workers)),
        }
    }
}

/// Frames steered together: their ends' lines are prefetched together.
const BURST: usize = 64;

/// A frame's owner, or what is left to ask to know it.
#[derive(Clone, Copy, Debug)]
enum Plan {
    Done(Owner),
    Ask(Ends),
}

impl Plan {
    fn prefetch(&self, tables: &Tables) {
        if let Plan::Ask(ends) = self {
            for probe in [&ends.src.1, &ends.dst.1].into_iter().flatten() {
                tables.services.prefetch_end(probe);
            }
        }
    }
}

/// A flow's two ends, each with its service lookup where it may be a service's (TCP or UDP, on a
/// port some service uses: a client's ephemeral port costs no lookup).
#[derive(Clone, Copy, Debug)]
struct Ends {
    proto: u8,
    src: ((Addr, u16), Option<Probe>),
    dst: ((Addr, u16), Option<Probe>),
}

impl Ends {
    fn of(tables: &Tables, flow: &FlowKey) -> Ends {
        let end = |addr: Addr, port: u16| {
            let probe = (matches!(flow.proto, proto::TCP | proto::UDP)
                && tables.services.may_use_port(port))
            .then(|| {
                ServiceTable::probe_end(&EndKey {
                    addr,
                    port,
                    proto: flow.proto,
                })
            });
            ((addr, port), probe)
        };
        Ends {
            proto: flow.proto,
            src: end(flow.src, flow.src_port),
            dst: end(flow.dst, flow.dst_port),
        }
    }

    /// The flow's steering key: the same for both its directions, before and after translation.
    fn key(&self, tables: &Tables) -> u64 {
        let service_end =
            |probe: &Option<Probe>| probe.as_ref().is_some_and(|p| tables.services.is_end(p));
        let (src, dst) = (self.src.0, self.dst.0);
        match (service_end(&self.src.1), service_end(&self.dst.1)) {
            (false, true) => end_key(self.proto, src),
            (true, false) => end_key(self.proto, dst),
            _ => {
                let (a, b) = if src <= dst { (src, dst) } else { (dst, src) };
                crate::hash::hash_one(&(self.proto, a, b))
            }
        }
    }
}

/// The frame inside a tunnel frame for this node.
fn tunnelled<'f>(tables: &Tables, frame: &'f [u8], outer: &Parsed) -> Option<&'f [u8]> {
    let protocol = TunnelProtocol::from_port(outer.tunnel_port()?)?;
    if !tables.node.owns(outer.flow.dst) {
        return None;
    }
    tunnel::inner(frame, outer, protocol).ok()
}

/// The start of the masquerade range, if `parsed` comes to the node's address and `port` is in it
/// (a reply to a masqueraded flow, or an ICMP error about one). A pod's own flow to a port of the
/// node's in that range is no masqueraded flow: only frames from the underlay are asked.
fn masquerade_range(tables: &Tables, parsed: &Parsed, port: u16) -> Option<u16> {
    let masquerade = tables.node.masquerade.as_ref()?;
    let answers = tables.node.owns(parsed.flow.dst) && masquerade.ports.contains(port);
    answers.then_some(masquerade.ports.first)
}

fn masquerade_owner(first: u16, port: u16, workers: u16) -> u16 {
    port.wrapping_sub(first) % workers.max(1)
}

fn end_key(proto: u8, end: (Addr, u16)) -> u64 {
    crate::hash::hash_one(&(proto, end))
}

/// A 64-bit hash onto `0..workers`, evenly (the high bits, by multiplication).
fn reduce(hash: u64, workers: u16) -> u16 {
    ((u128::from(hash) * u128::from(workers)) >> 64) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_spreads_over_every_worker_and_never_past_them() {
        for workers in 1..=8u16 {
            let mut seen = vec![0u32; usize::from(workers)];
            for i in 0..10_000u64 {
                let w = reduce(crate::hash::hash_one(&i), workers);
                seen[usize::from(w)] += 1;
            }
            let fair = 10_000 / u32::from(workers);
            assert!(
                seen.iter()
                    .all(|&n| n > fair * 8 / 10 && n < fair * 12 / 10),
                "{workers} workers: {seen:?}"
            );
        }
        assert_eq!(reduce(u64::MAX, 3), 2);
    }

    #[test]
    fn a_worker_chooses_only_its_own_masquerade_ports() {
        let steering = Steering::new(3).unwrap();
        for index in 0..3 {
            let slot = steering.slot(index);
            for port in 61000..61100 {
                let owner = masquerade_owner(61000, port, 3);
                assert_eq!(slot.owns_masquerade_port(61000, port), owner == index);
            }
        }
        assert!(WorkerSlot::ONLY.owns_masquerade_port(61000, 65535));
        assert!(Steering::new(0).is_none());
    }
}
