//! Conntrack in the pipeline: what the table knows of each frame's flow, and the remembering of a
//! new flow once policy let it through. A flow is looked up the way its frame goes, the whole
//! burst's slots prefetched first, and the other way only for the frames not found so (replies), their
//! slots prefetched in turn: a request of an established flow loads no slot of its reverse. Each key
//! is hashed once, for its prefetch and its lookup.
//!
//! Service flows get two entries, as in Cilium: the forward one (keyed client→frontend) holds the
//! backend, the translated one (client→backend) the frontend that replies (found by their reverse) get
//! back as their source. Masqueraded flows likewise: pod→outside holds the node's `addr:port`,
//! node:port→outside the pod's. An ICMP error is looked up by the packet it quotes.

use super::route::Destination;
use super::{Arrival, InFlight};
use crate::conntrack::{
    Conntrack, CtEntry, CtFull, CtNat, Home, NatKind, Owner, TcpState, Timeouts,
};
use crate::flow::proto;
use crate::icmp_error::{self, Untranslate};
use crate::nat::End;
use crate::parse::{Parsed, L4};
use crate::{Addr, DropReason, FlowKey};

/// What conntrack knows of a frame's flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Known {
    New,
    /// The frame travels the way the flow started; its entry's translation and service.
    Original {
        nat: Option<CtNat>,
        service: Option<u32>,
    },
    /// The frame answers a flow the other end started.
    Reply(Option<CtNat>),
    /// An ICMP error about a flow conntrack holds, and how to put it back if that flow was translated.
    Related(Option<Untranslate>),
    /// An ICMP error quoting a packet of no flow conntrack holds.
    Unrelated,
}

impl Known {
    /// The translation of the entry the frame matched.
    pub(super) fn nat(&self) -> Option<CtNat> {
        match *self {
            Known::Original { nat, .. } | Known::Reply(nat) => nat,
            Known::New | Known::Related(_) | Known::Unrelated => None,
        }
    }
}

/// Where a frame's own flow was found: the entry's slot, whether the frame is a reply, and whether a
/// path is kept beside the entry for the frame's direction ([`super::fastpath`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct Found {
    pub slot: usize,
    pub reply: bool,
    pub kept: bool,
}

/// How a frame is rewritten on its way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rewrite {
    /// One end of the frame's own flow: a service's DNAT and its replies, masquerading and its replies.
    Flow(End, Addr, u16),
    /// An ICMP error about a translated flow, put back as its receiver sent the quoted packet.
    Related(Untranslate),
}

/// The flow as it leaves (after translation), the rewrite that makes it so, and the service that
/// balanced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tracked {
    pub flow: FlowKey,
    pub rewrite: Option<Rewrite>,
    pub service: Option<u32>,
}

impl Tracked {
    pub fn unchanged(flow: FlowKey) -> Self {
        Tracked {
            flow,
            rewrite: None,
            service: None,
        }
    }

    pub(super) fn translated(key: FlowKey, end: End, nat: CtNat) -> Self {
        // An echo's identifier stands in both ports: both follow it.
        let echo = matches!(key.proto, proto::ICMP | proto::ICMPV6);
        let flow = match end {
            End::Destination => FlowKey {
                dst: nat.addr,
                dst_port: nat.port,
                src_port: if echo { nat.port } else { key.src_port },
                ..key
            },
            End::Source => FlowKey {
                src: nat.addr,
                src_port: nat.port,
                dst_port: if echo { nat.port } else { key.dst_port },
                ..key
            },
        };
        Tracked {
            flow,
            rewrite: Some(Rewrite::Flow(end, nat.addr, nat.port)),
            service: None,
        }
    }

    /// An ICMP error as it leaves: addressed where its translation puts it.
    pub(super) fn related(key: FlowKey, untranslate: Option<Untranslate>) -> Self {
        Tracked {
            flow: untranslate.map_or(key, |u| u.outer_flow(key)),
            rewrite: untranslate.map(Rewrite::Related),
            service: None,
        }
    }

    /// The backend a service flow was balanced to, for the flow log.
    pub(super) fn backend(&self) -> Option<(Addr, u16)> {
        match (self.rewrite, self.service) {
            (Some(Rewrite::Flow(End::Destination, addr, port)), Some(_)) => Some((addr, port)),
            _ => None,
        }
    }
}

/// Looks the frame's flow up the way the frame goes; an ICMP error by the packet it quotes. `None`
/// if the flow is not known this way: then [`lookup_reply`] looks for it the other way, once the
/// burst has prefetched the reverse's slots (requests of established flows need none).
/// Nothing is renewed or counted yet: a frame from another node may still fail a trust check that
/// waited for the lookup ([`super::from_uplink::Claim`]), and such a frame must leave the flow as it
/// was. [`renew`] does that for a frame that passes.
pub(super) fn lookup(
    ct: &mut Conntrack,
    now_ms: u64,
    (parsed, home): (&Parsed, Home),
    frame: &[u8],
) -> Option<(Known, Option<Found>)> {
    if let Some(quoted) = icmp_error::quoted(frame, parsed) {
        return Some((related(ct, now_ms, quoted), None));
    }
    let key = parsed.flow;
    let (slot, entry) = ct.lookup_slot(home, &key, now_ms)?;
    // A service flow's translated entry (client→backend) stands for the flow after DNAT and
    // answers only its replies: a frame that arrives with that tuple is a new flow straight to the
    // backend reusing the client's port, and must face policy like any new flow.
    if is_translated(entry) || opens_anew(entry, parsed) {
        return Some((Known::New, None));
    }
    let known = Known::Original {
        nat: entry.nat,
        service: entry.service,
    };
    let found = Found {
        slot,
        reply: false,
        kept: entry.kept.has(false),
    };
    Some((known, Some(found)))
}

/// Hashes the reverse of a frame's flow, for [`lookup_reply`], and starts loading its home slot.
pub(super) fn prefetch_reply(ct: &Conntrack, parsed: &Parsed) -> Home {
    let home = ct.home_of(&parsed.flow.reversed());
    ct.prefetch_home(home);
    home
}

/// Looks a frame's flow up the other way, for a frame [`lookup`] did not find; the lookup starts
/// at `home`, from [`prefetch_reply`].
pub(super) fn lookup_reply(
    ct: &mut Conntrack,
    now_ms: u64,
    (parsed, home): (&Parsed, Home),
) -> (Known, Option<Found>) {
    if let Some((slot, entry)) = ct.lookup_slot(home, &parsed.flow.reversed(), now_ms) {
        let found = Found {
            slot,
            reply: true,
            kept: entry.kept.has(true),
        };
        return (Known::Reply(entry.nat), Some(found));
    }
    (Known::New, None)
}

/// Renews and counts the entry a frame of a known flow matched, by its TCP flags and length.
pub(super) fn renew(ct: &mut Conntrack, now_ms: u64, flight: &InFlight<'_>, len: usize) {
    let Some(Found { slot, reply, .. }) = flight.found else {
        return;
    };
    let key = flight.parsed.flow;
    let entry_key = if reply { key.reversed() } else { key };
    let timeouts = *ct.timeouts();
    // Another frame's lookup may have removed an expired flow since, moving this one.
    let Some(entry) = ct.entry_at(slot, &entry_key, now_ms) else {
        return;
    };
    observe(
        entry,
        key.proto,
        tcp_flags(&flight.parsed),
        reply,
        now_ms,
        &timeouts,
    );
    entry.count(len);
}

/// The quoted packet went out as its flow's original direction (its sender started the flow) or as a
/// reply; only the former can have been translated by this node.
fn related(ct: &mut Conntrack, now_ms: u64, quoted: icmp_error::Quoted) -> Known {
    if let Some(entry) = ct.lookup(&quoted.flow, now_ms) {
        return Known::Related(Untranslate::for_entry(quoted, entry.nat));
    }
    if ct.lookup(&quoted.flow.reversed(), now_ms).is_some() {
        return Known::Related(None);
    }
    Known::Unrelated
}

/// A SYN on a tuple whose connection closed, or never finished opening, starts a connection anew
/// (a client reusing its port, or retrying its SYN): it is balanced and faces policy again, as
/// Linux's conntrack and Cilium (which re-selects for a SYN whose backend no longer takes new
/// flows) do. Kept as it was, it would go to the old backend, which may be terminating or gone by
/// then. Maglev gives an unchanged service's retried SYN the same backend.
fn opens_anew(entry: &CtEntry, parsed: &Parsed) -> bool {
    use crate::conntrack::tcp_flags::{ACK, SYN};
    tcp_flags(parsed) & (SYN | ACK) == SYN
        && matches!(entry.tcp, TcpState::Opening | TcpState::Closing)
}

/// The entry of a translated tuple (a service's client→backend, a masquerade's node:port→outside)
/// answers only replies.
fn is_translated(entry: &CtEntry) -> bool {
    entry
        .nat
        .is_some_and(|nat| matches!(nat.kind, NatKind::Frontend | NatKind::Unmasquerade))
}

/// Starts loading the forward entry a service reply renews in [`admit`](super::enforce::admit);
/// where its lookup starts.
pub(super) fn prefetch_forward_entry(ct: &Conntrack, flight: &InFlight<'_>) -> Option<Home> {
    let Known::Reply(Some(nat)) = flight.known else {
        return None;
    };
    if nat.kind != NatKind::Frontend {
        return None;
    }
    let home = ct.home_of(&forward_entry_of_reply(&flight.parsed.flow, nat));
    ct.prefetch_home(home);
    Some(home)
}

/// The client→frontend key of the flow a reply (backend→client) belongs to.
fn forward_entry_of_reply(reply: &FlowKey, frontend: CtNat) -> FlowKey {
    FlowKey {
        dst: frontend.addr,
        dst_port: frontend.port,
        ..reply.reversed()
    }
}

/// The forward entry (client→frontend) of a service flow sees no reply itself: it follows the flow
/// through its replies here.
pub(super) fn renew_forward_entry(
    ct: &mut Conntrack,
    now_ms: u64,
    flight: &InFlight<'_>,
    frontend: CtNat,
) {
    let key = flight.parsed.flow;
    let timeouts = *ct.timeouts();
    let forward = forward_entry_of_reply(&key, frontend);
    let home = flight.forward_home.unwrap_or_else(|| ct.home_of(&forward));
    if let Some((_, entry)) = ct.lookup_slot(home, &forward, now_ms) {
        observe(
            entry,
            key.proto,
            tcp_flags(&flight.parsed),
            true,
            now_ms,
            &timeouts,
        );
    }
}

pub(super) fn remember(
    ct: &mut Conntrack,
    now_ms: u64,
    flight: &InFlight<'_>,
) -> Result<(), DropReason> {
    let key = flight.parsed.flow;
    let timeouts = *ct.timeouts();
    let mut entry = CtEntry::new(key.proto, now_ms, &timeouts);
    observe(
        &mut entry,
        key.proto,
        tcp_flags(&flight.parsed),
        false,
        now_ms,
        &timeouts,
    );
    entry.count(flight.parsed.l3_end());
    let tracked = &flight.tracked;
    let owner = owner(flight);
    let Some(Rewrite::Flow(end, addr, port)) = tracked.rewrite else {
        return insert(ct, owner, key, entry, now_ms);
    };
    let (there, back) = match end {
        End::Destination => (
            CtNat::backend(addr, port),
            CtNat::frontend(key.dst, key.dst_port),
        ),
        End::Source => (
            CtNat::masquerade(addr, port),
            CtNat::unmasquerade(key.src, key.src_port),
        ),
    };
    let forward = CtEntry {
        nat: Some(there),
        service: tracked.service,
        ..entry
    };
    let translated = CtEntry {
        nat: Some(back),
        ..forward
    };
    insert(ct, owner, key, forward, now_ms)?;
    insert(ct, owner, tracked.flow, translated, now_ms).inspect_err(|_| {
        ct.remove(&key);
    })
}

/// The local endpoint a flow is charged to: the pod (or the host port) that sent it, else the pod
/// it is for — so a peer flooding one pod uses up that pod's quota, not the node's table.
fn owner(flight: &InFlight<'_>) -> Owner {
    match (flight.arrival, flight.destination) {
        (Arrival::FromTunnel | Arrival::FromUnderlay, Destination::LocalPod(endpoint)) => {
            Owner(endpoint.port.0)
        }
        _ => Owner(flight.port.0),
    }
}

fn insert(
    ct: &mut Conntrack,
    owner: Owner,
    key: FlowKey,
    entry: CtEntry,
    now_ms: u64,
) -> Result<(), DropReason> {
    match ct.insert_for(owner, key, entry, now_ms) {
        Ok(_) => Ok(()),
        Err(CtFull::Table { .. }) => Err(DropReason::CtTableFull),
        Err(CtFull::Quota { .. }) => Err(DropReason::CtEndpointQuota),
    }
}

fn tcp_flags(parsed: &Parsed) -> u8 {
    match parsed.l4 {
        L4::Tcp(flags) => flags.bits(),
        _ => 0,
    }
}

fn observe(
    entry: &mut CtEntry,
    proto: u8,
    flags: u8,
    is_reply: bool,
    now_ms: u64,
    timeouts: &Timeouts,
) {
    if proto == proto::TCP {
        entry.observe_tcp(flags, is_reply, now_ms, timeouts);
    } else {
        entry.observe_other(proto, is_reply, now_ms, timeouts);
    }
}
