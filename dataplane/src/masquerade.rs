//! Masquerading: pod traffic that leaves the mesh is source-NATed to the node's address, as Cilium's
//! BPF masquerading with ip-masq-agent does, so that the world sees the node, not a pod address it
//! cannot route back to.
//!
//! A new flow from a pod is masqueraded when its destination is outside every address the mesh knows
//! (no local pod, node or ipcache entry — the pipeline's "kernel" destination) and outside the
//! configured non-masquerade prefixes. Its source port (an echo's identifier) is taken from a range
//! the node's own stack does not use (by default 61000–65535, above Linux's ephemeral 32768–60999),
//! probing from a hash of the flow for a translated tuple conntrack does not hold yet. With several
//! workers each probes only its own share of the range, so that the port says which worker owns the
//! flow's replies ([`crate::steering`]). The flow is remembered twice, like a service flow: by its
//! original tuple with the node's `addr:port`, and by the translated tuple with the pod's, which
//! replies (found by their reverse) are translated back to.
//! Port exhaustion drops the new flow with `nat_port_exhausted`; nothing panics.
//!
//! Unlike ip-masq-agent, the default non-masquerade list is empty: everything outside the mesh is
//! masqueraded unless the configuration names it.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::conntrack::Conntrack;
use crate::flow::proto;
use crate::ipcache::IpPrefix;
use crate::parse::{IcmpKind, Parsed, L4};
use crate::steering::WorkerSlot;
use crate::{Addr, DropReason, FlowKey};

/// How many ports a new flow tries before the range counts as exhausted for its destination.
const MAX_PROBES: u32 = 64;

/// The source ports masquerading allocates from, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Above Linux's default ephemeral range (32768–60999), so the node's own sockets never collide.
    pub const DEFAULT: PortRange = PortRange {
        first: 61000,
        last: 65535,
    };

    pub const fn contains(self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    const fn len(self) -> u32 {
        (self.last as u32).saturating_sub(self.first as u32) + 1
    }
}

/// This node's masquerading: its addresses, its port range, and what is never masqueraded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masquerade {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub ports: PortRange,
    /// Destinations reached with the pod's own address (routed networks that know pod addresses).
    pub non_masquerade: Vec<IpPrefix>,
}

impl Masquerade {
    /// The node address a flow to `dst` is masqueraded behind; `None` when it is not masqueraded.
    pub fn address_for(&self, dst: Addr) -> Option<Addr> {
        if self.non_masquerade.iter().any(|p| p.contains(dst)) {
            return None;
        }
        if dst.is_ipv4() {
            self.ipv4.map(Addr::from)
        } else {
            self.ipv6.map(Addr::from)
        }
    }

    /// A source port for `flow` behind `addr` whose translated tuple conntrack does not hold, from
    /// the ports of the range that are `slot`'s worker's to choose (its replies are steered back to
    /// that worker by their port, [`crate::steering`]).
    pub fn allocate_port(
        &self,
        ct: &Conntrack,
        flow: &FlowKey,
        addr: Addr,
        now_ms: u64,
        slot: WorkerSlot,
    ) -> Result<u16, DropReason> {
        let (index, of) = (u32::from(slot.index), u32::from(slot.of.max(1)));
        // The range's ports whose offset from its first is `index` modulo `of`.
        let len = self.ports.len().saturating_sub(index).div_ceil(of);
        if len == 0 {
            return Err(DropReason::NatPortExhausted);
        }
        let start = flow.symmetric_hash() % len;
        (0..MAX_PROBES.min(len))
            .map(|i| self.ports.first + (index + ((start + i) % len) * of) as u16)
            .find(|&port| !ct.is_live(&translated(flow, addr, port), now_ms))
            .ok_or(DropReason::NatPortExhausted)
    }
}

impl Masquerade {
    /// Whether a frame the underlay sent to one of the node's addresses answers a masqueraded flow
    /// (a reply to a port of the range, an ICMP error quoting one) rather than the node's own
    /// traffic — the split the XDP program makes on the uplink, made again here.
    pub fn answers(&self, frame: &[u8], parsed: &Parsed) -> bool {
        if let Some(quoted) = crate::icmp_error::quoted(frame, parsed) {
            return self.ports.contains(quoted.flow.src_port);
        }
        match parsed.l4 {
            L4::Tcp(_) | L4::Udp => self.ports.contains(parsed.flow.dst_port),
            L4::Icmp(IcmpKind::EchoReply) => self.ports.contains(parsed.flow.dst_port),
            L4::Icmp(_) | L4::None => false,
        }
    }
}

/// `flow` as it leaves, from `addr:port`; an echo carries its identifier in both ports.
pub fn translated(flow: &FlowKey, addr: Addr, port: u16) -> FlowKey {
    let dst_port = match flow.proto {
        proto::ICMP | proto::ICMPV6 => port,
        _ => flow.dst_port,
    };
    FlowKey {
        src: addr,
        src_port: port,
        dst_port,
        ..*flow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{ConntrackConfig, CtEntry, Timeouts};

    fn masquerade(ports: PortRange) -> Masquerade {
        Masquerade {
            ipv4: Some(Ipv4Addr::new(198, 18, 1, 1)),
            ipv6: None,
            ports,
            non_masquerade: vec![IpPrefix::new(Ipv4Addr::new(10, 0, 0, 0).into(), 8).unwrap()],
        }
    }

    fn flow(src_port: u16) -> FlowKey {
        FlowKey {
            src: Ipv4Addr::new(100, 64, 1, 10).into(),
            dst: Ipv4Addr::new(203, 0, 113, 10).into(),
            src_port,
            dst_port: 80,
            proto: proto::TCP,
        }
    }

    #[test]
    fn only_destinations_outside_the_non_masquerade_list_and_of_a_family_we_have() {
        let m = masquerade(PortRange::DEFAULT);
        let node = Some(Addr::from(Ipv4Addr::new(198, 18, 1, 1)));
        assert_eq!(m.address_for(Ipv4Addr::new(203, 0, 113, 10).into()), node);
        assert_eq!(m.address_for(Ipv4Addr::new(10, 1, 2, 3).into()), None);
        assert_eq!(
            m.address_for("2001:db8::1".parse::<Ipv6Addr>().unwrap().into()),
            None
        );
    }

    #[test]
    fn ports_come_from_the_range_and_are_not_reused_while_taken_then_run_out() {
        let ports = PortRange {
            first: 62000,
            last: 62003,
        };
        let m = masquerade(ports);
        let node = Addr::from(Ipv4Addr::new(198, 18, 1, 1));
        let mut ct = Conntrack::new(ConntrackConfig {
            capacity: 64,
            timeouts: Timeouts::default(),
            endpoint_quota: None,
        });
        let mut taken = Vec::new();
        for i in 0..4 {
            let f = flow(40000 + i);
            let port = m.allocate_port(&ct, &f, node, 0, WorkerSlot::ONLY).unwrap();
            assert!(ports.contains(port));
            assert!(!taken.contains(&port), "port {port} handed out twice");
            taken.push(port);
            let entry = CtEntry::new(proto::TCP, 0, &Timeouts::default());
            ct.insert(translated(&f, node, port), entry, 0).unwrap();
        }
        assert_eq!(
            m.allocate_port(&ct, &flow(50000), node, 0, WorkerSlot::ONLY),
            Err(DropReason::NatPortExhausted)
        );
        // Once the flows expire their ports are free again.
        let later = Timeouts::default().tcp_syn_ms + 1;
        assert!(m
            .allocate_port(&ct, &flow(50000), node, later, WorkerSlot::ONLY)
            .is_ok());
    }

    #[test]
    fn an_echo_is_translated_in_both_identifier_fields() {
        let echo = FlowKey {
            proto: proto::ICMP,
            src_port: 7,
            dst_port: 7,
            ..flow(0)
        };
        let out = translated(&echo, Ipv4Addr::new(198, 18, 1, 1).into(), 61500);
        assert_eq!((out.src_port, out.dst_port), (61500, 61500));
    }

    #[test]
    fn each_worker_takes_only_ports_of_its_share_and_runs_out_of_its_own() {
        let ports = PortRange {
            first: 62000,
            last: 62006,
        };
        let m = masquerade(ports);
        let node = Addr::from(Ipv4Addr::new(198, 18, 1, 1));
        let mut ct = Conntrack::new(ConntrackConfig {
            capacity: 64,
            timeouts: Timeouts::default(),
            endpoint_quota: None,
        });
        // Three workers: worker 1's share of 62000–62006 is 62001 and 62004.
        let slot = WorkerSlot { index: 1, of: 3 };
        let mut taken = Vec::new();
        for i in 0..2 {
            let f = flow(40000 + i);
            let port = m.allocate_port(&ct, &f, node, 0, slot).unwrap();
            assert!(slot.owns_masquerade_port(ports.first, port), "{port}");
            taken.push(port);
            let entry = CtEntry::new(proto::TCP, 0, &Timeouts::default());
            ct.insert(translated(&f, node, port), entry, 0).unwrap();
        }
        taken.sort_unstable();
        assert_eq!(taken, [62001, 62004]);
        assert_eq!(
            m.allocate_port(&ct, &flow(50000), node, 0, slot),
            Err(DropReason::NatPortExhausted)
        );
        let other = WorkerSlot { index: 0, of: 3 };
        assert!(m.allocate_port(&ct, &flow(50000), node, 0, other).is_ok());
        let beyond = WorkerSlot { index: 7, of: 8 };
        assert_eq!(
            m.allocate_port(&ct, &flow(50000), node, 0, beyond),
            Err(DropReason::NatPortExhausted),
            "a range smaller than the workers leaves some with no port"
        );
    }
}
