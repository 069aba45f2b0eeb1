//! The datapath's metrics: drops and forwards as Cilium counts them (`cilium_drop_count_total
//! {reason,direction}` and the rest, reasons as Cilium describes them), conntrack pressure as
//! Cilium's map pressure, and meshpath's own detail — how frames left, each port's frames and the
//! kernel's drops on its socket, each XDP program's verdicts, conntrack's evictions and refusals,
//! the policies that deny endpoints because they cannot be enforced as written, and WireGuard's mode,
//! peers and counters.

use std::fmt;

use meshpath_api::status::PortRole;
use meshpath_dataplane::afxdp::PortStats;
use meshpath_dataplane::stats::{Count, Forward};
use meshpath_dataplane::wireguard::PeerReport;
use meshpath_dataplane::DropReason;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{encode_family, encode_one, MetricsView};
use crate::agent::convert;
use crate::agent::report::{TrafficDirection, WorkerReport};

/// The worker's own drops, outside the pipeline's reasons, as Cilium-style reason labels.
const TO_KERNEL_UNSUPPORTED: &str = "No path to the kernel";
const TX_RING_FULL: &str = "TX ring full";

pub fn encode<V: MetricsView>(view: &V, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    let report = view.report();
    let ports = view.ports();
    encode_cilium_traffic(&report, &ports, encoder)?;
    encode_pipeline(&report, encoder)?;
    encode_ports(&ports, encoder)?;
    encode_xdp(view, encoder)?;
    encode_conntrack(&report, encoder)?;
    encode_wireguard(&report, encoder)?;
    encode_policy_refusals(view, encoder)
}

/// The encryption mode, each WireGuard peer's state and the worker's WireGuard counters.
fn encode_wireguard(
    report: &WorkerReport,
    encoder: &mut DescriptorEncoder,
) -> Result<(), fmt::Error> {
    let wg = &report.wireguard;
    let mode = [([("mode", wg.mode.name())], ConstGauge::new(1))];
    encode_family(
        encoder,
        "meshpath_encryption_mode",
        "WireGuard between nodes: 1 for the mode in force (off, on, strict)",
        &mode,
    )?;
    let peers: Vec<(String, &PeerReport)> = wg
        .peers
        .iter()
        .map(|p| (p.addr.ip().to_string(), p))
        .collect();
    let established: Vec<_> = peers
        .iter()
        .map(|(addr, p)| {
            let up = i64::from(p.last_handshake.is_some());
            ([("peer", addr.as_str())], ConstGauge::new(up))
        })
        .collect();
    encode_family(
        encoder,
        "meshpath_wireguard_peer_established",
        "1 while the WireGuard peer (a node, by underlay address) has a session, 0 while it has none",
        &established,
    )?;
    let ages: Vec<_> = peers
        .iter()
        .filter_map(|(addr, p)| {
            let age = p.last_handshake?.as_secs_f64();
            Some(([("peer", addr.as_str())], ConstGauge::new(age)))
        })
        .collect();
    encode_family(
        encoder,
        "meshpath_wireguard_peer_handshake_age_seconds",
        "Seconds since the handshake of the WireGuard peer's current session",
        &ages,
    )?;
    let packets = [
        ("encrypted", wg.stats.encrypted),
        ("decrypted", wg.stats.decrypted),
        ("held", wg.stats.held),
    ]
    .map(|(kind, n)| ([("kind", kind)], ConstCounter::new(n)));
    encode_family(
        encoder,
        "meshpath_wireguard_packets",
        "Packets through WireGuard: encrypted, decrypted, held for a handshake",
        &packets,
    )?;
    encode_one(
        encoder,
        "meshpath_wireguard_handshakes_initiated",
        "WireGuard handshakes this node began (first packets, retries, rekeying)",
        ConstCounter::new(wg.stats.handshakes_initiated),
    )
}

/// Per refused policy: the endpoints it denies because it cannot be enforced as written.
fn encode_policy_refusals<V: MetricsView>(
    view: &V,
    encoder: &mut DescriptorEncoder,
) -> Result<(), fmt::Error> {
    let refusals = view.policy_refusals();
    let family: Vec<_> = refusals
        .iter()
        .map(|(policy, endpoints)| {
            let labels = [("policy", policy.as_str())];
            (labels, ConstGauge::new(*endpoints as i64))
        })
        .collect();
    encode_family(
        encoder,
        "meshpath_policy_refused_endpoints",
        "Endpoints denied by a policy that cannot be enforced as written",
        &family,
    )
}

/// `cilium_{drop,forward}_{count,bytes}_total`, from the pipeline's traffic by direction and the
/// worker's own drops (frames for the kernel it cannot hand on, a full tx ring), which carry no bytes.
fn encode_cilium_traffic(
    report: &WorkerReport,
    ports: &[(PortStats, Option<(String, PortRole)>)],
    encoder: &mut DescriptorEncoder,
) -> Result<(), fmt::Error> {
    let traffic = &report.traffic;
    let mut packets = Vec::new();
    let mut bytes = Vec::new();
    for d in TrafficDirection::ALL {
        for reason in DropReason::ALL {
            let labels = [
                ("reason", convert::drop_reason(*reason).cilium().description),
                ("direction", d.label()),
            ];
            let count = traffic.dropped(d, *reason);
            packets.push((labels, ConstCounter::new(count.packets)));
            bytes.push((labels, ConstCounter::new(count.bytes)));
        }
        for (reason, n) in worker_drops(ports, d) {
            packets.push((
                [("reason", reason), ("direction", d.label())],
                ConstCounter::new(n),
            ));
        }
    }
    encode_family(
        encoder,
        "cilium_drop_count",
        "Total dropped packets, tagged by drop reason and ingress/egress direction",
        &packets,
    )?;
    encode_family(
        encoder,
        "cilium_drop_bytes",
        "Total dropped bytes, tagged by drop reason and ingress/egress direction",
        &bytes,
    )?;
    let forwards: Vec<(_, Count)> = TrafficDirection::ALL
        .iter()
        .map(|d| ([("direction", d.label())], traffic.forwarded(*d)))
        .collect();
    let counts: Vec<_> = forwards
        .iter()
        .map(|(l, c)| (*l, ConstCounter::new(c.packets)))
        .collect();
    encode_family(
        encoder,
        "cilium_forward_count",
        "Total forwarded packets, tagged by ingress/egress direction",
        &counts,
    )?;
    let counts: Vec<_> = forwards
        .iter()
        .map(|(l, c)| (*l, ConstCounter::new(c.bytes)))
        .collect();
    encode_family(
        encoder,
        "cilium_forward_bytes",
        "Total forwarded bytes, tagged by ingress/egress direction",
        &counts,
    )
}

/// The worker's own drops of one direction: frames for the kernel it has no path to, received on
/// the ports whose frames go that way (a pod's for egress), and frames that found their tx ring
/// full on the ports that direction sends out of (the uplink and host port for egress).
fn worker_drops(
    ports: &[(PortStats, Option<(String, PortRole)>)],
    direction: TrafficDirection,
) -> [(&'static str, u64); 2] {
    let sends_this_way = |named: &Option<(String, PortRole)>| {
        let pod = named.as_ref().is_some_and(|(_, r)| *r == PortRole::Pod);
        pod == (direction == TrafficDirection::Egress)
    };
    let to_kernel = ports
        .iter()
        .filter(|(_, named)| sends_this_way(named))
        .map(|(p, _)| p.to_kernel_unsupported)
        .sum();
    let ring_full = ports
        .iter()
        .filter(|(_, named)| !sends_this_way(named))
        .map(|(p, _)| p.tx_ring_full)
        .sum();
    [
        (TO_KERNEL_UNSUPPORTED, to_kernel),
        (TX_RING_FULL, ring_full),
    ]
}

/// meshpath's own pipeline counters: what came in, and how what was forwarded left.
fn encode_pipeline(
    report: &WorkerReport,
    encoder: &mut DescriptorEncoder,
) -> Result<(), fmt::Error> {
    let c = &report.counters;
    encode_one(
        encoder,
        "meshpath_received_packets",
        "Frames the pipeline received",
        ConstCounter::new(c.received.packets),
    )?;
    encode_one(
        encoder,
        "meshpath_received_bytes",
        "Bytes of the frames the pipeline received",
        ConstCounter::new(c.received.bytes),
    )?;
    let forwarded: Vec<_> = Forward::ALL
        .iter()
        .map(|f| ([("kind", f.name())], c.forwarded(*f)))
        .collect();
    let packets: Vec<_> = forwarded
        .iter()
        .map(|(l, c)| (*l, ConstCounter::new(c.packets)))
        .collect();
    encode_family(
        encoder,
        "meshpath_forwarded_packets",
        "Frames forwarded, by how they left",
        &packets,
    )?;
    let bytes: Vec<_> = forwarded
        .iter()
        .map(|(l, c)| (*l, ConstCounter::new(c.bytes)))
        .collect();
    encode_family(
        encoder,
        "meshpath_forwarded_bytes",
        "Bytes of frames forwarded, by how they left",
        &bytes,
    )
}

/// Per AF_XDP port: frames in and out, tx ring full, and the kernel's drops on its socket.
fn encode_ports(
    ports: &[(PortStats, Option<(String, PortRole)>)],
    encoder: &mut DescriptorEncoder,
) -> Result<(), fmt::Error> {
    let labelled: Vec<([(&str, String); 3], &PortStats)> = ports
        .iter()
        .map(|(p, named)| {
            let (interface, role) = named
                .as_ref()
                .map_or(("-".to_owned(), "-".to_owned()), |(i, r)| {
                    (i.clone(), r.to_string())
                });
            (
                [
                    ("port", p.port.0.to_string()),
                    ("interface", interface),
                    ("role", role),
                ],
                p,
            )
        })
        .collect();
    let family = |value: fn(&PortStats) -> u64| -> Vec<_> {
        labelled
            .iter()
            .map(|(l, p)| (l.clone(), ConstCounter::new(value(p))))
            .collect()
    };
    encode_family(
        encoder,
        "meshpath_port_rx_packets",
        "Frames received on a port",
        &family(|p| p.rx),
    )?;
    encode_family(
        encoder,
        "meshpath_port_tx_packets",
        "Frames queued out of a port",
        &family(|p| p.tx),
    )?;
    encode_family(
        encoder,
        "meshpath_port_tx_ring_full",
        "Frames dropped because a port's tx ring was full",
        &family(|p| p.tx_ring_full),
    )?;
    let mut kernel = Vec::new();
    for (labels, p) in &labelled {
        let k = &p.kernel;
        for (reason, n) in [
            ("rx_dropped", k.rx_dropped),
            ("rx_ring_full", k.rx_ring_full),
            ("fill_ring_empty", k.fill_ring_empty),
            ("rx_invalid_descs", k.rx_invalid_descs),
            ("tx_invalid_descs", k.tx_invalid_descs),
        ] {
            let [a, b, c] = labels.clone();
            kernel.push((
                [a, b, c, ("reason", reason.to_owned())],
                ConstCounter::new(n),
            ));
        }
    }
    encode_family(
        encoder,
        "meshpath_port_kernel_drops",
        "Frames the kernel dropped on a port's AF_XDP socket before the pipeline saw them, by the kernel's counter",
        &kernel,
    )
}

/// Each interface's XDP program: what it did with the frames it saw.
fn encode_xdp<V: MetricsView>(view: &V, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    let mut verdicts = Vec::new();
    for x in view.xdp().iter().filter(|x| x.error.is_none()) {
        for (verdict, n) in [
            ("pass", x.pass),
            ("to_xsk", x.to_xsk),
            ("dropped_no_socket", x.dropped_no_socket),
            ("dropped_unknown_peer", x.dropped_unknown_peer),
        ] {
            let labels = [
                ("interface", x.interface.clone()),
                ("role", x.role.to_string()),
                ("verdict", verdict.to_owned()),
            ];
            verdicts.push((labels, ConstCounter::new(n)));
        }
    }
    encode_family(
        encoder,
        "meshpath_xdp_verdicts",
        "Frames an interface's XDP program passed to the kernel, redirected to the dataplane, or dropped (no socket registered: no agent ran; tunnel traffic from no node of the mesh)",
        &verdicts,
    )
}

/// Conntrack: Cilium's map pressure, and meshpath's entries, evictions and refusals.
fn encode_conntrack(
    report: &WorkerReport,
    encoder: &mut DescriptorEncoder,
) -> Result<(), fmt::Error> {
    let ct = &report.conntrack;
    let pressure = match ct.capacity {
        0 => 0.0,
        capacity => ct.entries as f64 / capacity as f64,
    };
    let family = [([("map_name", "conntrack")], ConstGauge::new(pressure))];
    encode_family(
        encoder,
        "cilium_bpf_map_pressure",
        "Fill percentage of map, tagged by map name",
        &family,
    )?;
    encode_one(
        encoder,
        "meshpath_conntrack_entries",
        "Flows the worker's conntrack holds",
        ConstGauge::new(ct.entries as i64),
    )?;
    encode_one(
        encoder,
        "meshpath_conntrack_capacity",
        "Flows the worker's conntrack can hold",
        ConstGauge::new(ct.capacity as i64),
    )?;
    let s = &ct.stats;
    let evictions = [
        (
            [("kind", "unreplied")],
            ConstCounter::new(s.evicted_unreplied),
        ),
        ([("kind", "closing")], ConstCounter::new(s.evicted_closing)),
        (
            [("kind", "datagram")],
            ConstCounter::new(s.evicted_datagram),
        ),
    ];
    encode_family(
        encoder,
        "meshpath_conntrack_evictions",
        "Live flows evicted to make room for a new one, by kind",
        &evictions,
    )?;
    let refusals = [
        ([("reason", "full")], ConstCounter::new(s.refused_full)),
        ([("reason", "quota")], ConstCounter::new(s.refused_quota)),
    ];
    encode_family(encoder, "meshpath_conntrack_refusals", "New flows refused: their neighbourhood held only established TCP, or their endpoint its quota", &refusals)
}
