//! What the worker copies out for the status socket and the metrics, every so often, from state only
//! it owns: the pipeline's counters, its connection tracking's occupancy and pressure, and its traffic
//! by direction as Cilium counts it (egress: sent by a pod of this node; ingress: everything else, the
//! frames that come to this node's pods and through it), and its WireGuard peers.

use std::sync::Arc;

use meshpath_dataplane::conntrack::{Conntrack, CtStats};
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::stats::{Count, Counters};
use meshpath_dataplane::wireguard::{
    EncryptionMode, PeerReport, PublicKey, Tunnels, WireguardStats,
};
use meshpath_dataplane::{DropReason, Frame, Verdict};

/// The worker's copied-out state.
#[derive(Clone, Debug, Default)]
pub struct WorkerReport {
    pub counters: Counters,
    pub conntrack: ConntrackReport,
    pub traffic: Traffic,
    pub wireguard: WireguardReport,
}

impl WorkerReport {
    /// The node's workers' reports as one: counters, conntrack and traffic summed; WireGuard from the
    /// first worker (a node with encryption runs only one).
    pub fn sum(reports: &[Arc<WorkerReport>]) -> WorkerReport {
        let mut total = reports
            .first()
            .map_or_else(WorkerReport::default, |r| (**r).clone());
        for report in reports.iter().skip(1) {
            total.counters.merge(&report.counters);
            total.conntrack.merge(&report.conntrack);
            total.traffic.merge(&report.traffic);
        }
        total
    }
}

/// The worker's WireGuard peers and counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WireguardReport {
    pub mode: EncryptionMode,
    /// This node's public key; `None` with encryption off.
    pub public_key: Option<PublicKey>,
    pub stats: WireguardStats,
    /// By address.
    pub peers: Vec<PeerReport>,
}

impl WireguardReport {
    pub fn of(tunnels: &Tunnels, mode: EncryptionMode) -> WireguardReport {
        let mut peers: Vec<PeerReport> = tunnels.peers().collect();
        peers.sort_by_key(|p| p.addr);
        WireguardReport {
            mode,
            public_key: tunnels.public_key(),
            stats: tunnels.stats,
            peers,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackReport {
    pub entries: usize,
    pub capacity: usize,
    pub stats: CtStats,
}

impl ConntrackReport {
    pub fn of(ct: &Conntrack) -> ConntrackReport {
        ConntrackReport {
            entries: ct.len(),
            capacity: ct.capacity(),
            stats: ct.stats(),
        }
    }

    fn merge(&mut self, other: &ConntrackReport) {
        self.entries += other.entries;
        self.capacity += other.capacity;
        let (s, o) = (&mut self.stats, other.stats);
        s.evicted_unreplied += o.evicted_unreplied;
        s.evicted_closing += o.evicted_closing;
        s.evicted_datagram += o.evicted_datagram;
        s.refused_full += o.refused_full;
        s.refused_quota += o.refused_quota;
    }
}

/// Which way a frame went, relative to this node's pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficDirection {
    Ingress,
    Egress,
}

impl TrafficDirection {
    pub const ALL: [TrafficDirection; 2] = [TrafficDirection::Ingress, TrafficDirection::Egress];

    /// As Cilium's metrics label it.
    pub const fn label(self) -> &'static str {
        match self {
            TrafficDirection::Ingress => "INGRESS",
            TrafficDirection::Egress => "EGRESS",
        }
    }

    /// Frames from the uplink or the node's host port are ingress; a pod's are egress.
    fn of(tables: &Tables, frame: &Frame<'_>) -> TrafficDirection {
        let port = frame.port();
        match port == tables.node.uplink || tables.node.is_host_port(port) {
            true => TrafficDirection::Ingress,
            false => TrafficDirection::Egress,
        }
    }
}

/// Forwarded and dropped frames by direction (and drops by reason), in packets and bytes.
#[derive(Clone, Debug)]
pub struct Traffic {
    forwarded: [Count; 2],
    dropped: [[Count; DropReason::COUNT]; 2],
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            forwarded: [Count::default(); 2],
            dropped: [[Count::default(); DropReason::COUNT]; 2],
        }
    }
}

impl Traffic {
    /// Counts a batch the pipeline decided on; frames for the kernel are neither (the worker counts
    /// them as it hands them on, or cannot).
    pub fn count(&mut self, tables: &Tables, frames: &[Frame<'_>], verdicts: &[Verdict]) {
        for (frame, verdict) in frames.iter().zip(verdicts) {
            let direction = TrafficDirection::of(tables, frame);
            self.record(direction, *verdict, frame.len() as u64);
        }
    }

    /// One frame of `bytes` that went `direction` with `verdict`.
    pub fn record(&mut self, direction: TrafficDirection, verdict: Verdict, bytes: u64) {
        let d = direction as usize;
        let count = match verdict {
            Verdict::Transmit(_) => &mut self.forwarded[d],
            Verdict::Drop(reason) => &mut self.dropped[d][reason.index()],
            Verdict::ToKernel | Verdict::Consumed => return,
        };
        count.packets += 1;
        count.bytes += bytes;
    }

    fn merge(&mut self, other: &Traffic) {
        let mine = self
            .forwarded
            .iter_mut()
            .chain(self.dropped.iter_mut().flatten());
        let theirs = other.forwarded.iter().chain(other.dropped.iter().flatten());
        for (m, t) in mine.zip(theirs) {
            m.packets += t.packets;
            m.bytes += t.bytes;
        }
    }

    pub fn forwarded(&self, direction: TrafficDirection) -> Count {
        self.forwarded[direction as usize]
    }

    pub fn dropped(&self, direction: TrafficDirection, reason: DropReason) -> Count {
        self.dropped[direction as usize][reason.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_dataplane::snapshot::{Capacities, HostPort, NodeConfig};
    use meshpath_dataplane::PortId;

    fn tables() -> Tables {
        let node = NodeConfig {
            host: Some(HostPort {
                port: PortId(1),
                mac: [2, 0, 0, 0, 0, 3],
                kernel_mac: [2, 0, 0, 0, 0, 4],
            }),
            ..meshpath_dataplane::testbed::node_config()
        };
        Tables::empty(node, Capacities::default())
    }

    #[test]
    fn pods_send_egress_and_the_rest_is_ingress() {
        let tables = tables();
        let mut buffers = [[0u8; 100]; 4];
        let [a, b, c, d] = &mut buffers;
        let frame = |buf, len, port| Frame::new(buf, 0, len, PortId(port)).unwrap();
        let frames = [
            frame(a, 100, 2),
            frame(b, 60, 0),
            frame(c, 80, 1),
            frame(d, 70, 3),
        ];
        let verdicts = [
            Verdict::Transmit(PortId(0)),
            Verdict::Drop(DropReason::PolicyDenied),
            Verdict::Transmit(PortId(2)),
            Verdict::ToKernel,
        ];
        let mut traffic = Traffic::default();
        traffic.count(&tables, &frames, &verdicts);
        let egress = traffic.forwarded(TrafficDirection::Egress);
        assert_eq!((egress.packets, egress.bytes), (1, 100));
        let ingress = traffic.forwarded(TrafficDirection::Ingress);
        assert_eq!(
            (ingress.packets, ingress.bytes),
            (1, 80),
            "from the host port"
        );
        let denied = traffic.dropped(TrafficDirection::Ingress, DropReason::PolicyDenied);
        assert_eq!((denied.packets, denied.bytes), (1, 60));
        assert_eq!(
            traffic.dropped(TrafficDirection::Egress, DropReason::PolicyDenied),
            Count::default()
        );
        let one = Arc::new(WorkerReport {
            traffic,
            ..WorkerReport::default()
        });
        let both = WorkerReport::sum(&[one.clone(), one]);
        let denied = both
            .traffic
            .dropped(TrafficDirection::Ingress, DropReason::PolicyDenied);
        assert_eq!(
            (denied.packets, denied.bytes),
            (2, 120),
            "summed over workers"
        );
        assert_eq!(both.traffic.forwarded(TrafficDirection::Egress).bytes, 200);
    }
}
