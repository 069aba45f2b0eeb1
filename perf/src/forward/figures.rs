//! What `forward` reports: rates as median and spread of the runs, losses by place, latency (null
//! without samples), the tables, and the table a person reads.

use std::collections::BTreeMap;

use meshpath_dataplane::afxdp::WorkerStats;
use serde::{Deserialize, Serialize};

use super::traffic::{Measured, Refused};
use super::{WayKind, LARGE_FRAME, SMALL_FRAME, TARGET_VS_BARE, TARGET_VS_KERNEL};
use crate::report::Report;

/// A figure over several runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: Vec<f64>,
}

impl Spread {
    pub(crate) fn of(runs: Vec<f64>) -> Spread {
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => f64::midpoint(sorted[n / 2 - 1], sorted[n / 2]),
        };
        Spread {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            runs,
        }
    }
}

/// Where a way's frames were lost, summed over its saturation runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Losses {
    /// Frames sent in the counted windows, and of them those that reached the sink as they must.
    pub sent: u64,
    pub received: u64,
    /// `sent - received`.
    pub lost: u64,
    /// Frames the schedule called for that the generator could not send (not in `sent`).
    pub generator_behind: u64,
    /// rx and tx drops of the four veth ends (over whole runs, warm-up included), less those of
    /// the worker's rings, which a veth counts too.
    pub veth_dropped: u64,
    /// The worker's sockets: the kernel's rx drops (rx ring full, no fill buffers) and full tx
    /// rings (none for the ways without sockets: the kernel's and (d)).
    pub rings: Option<u64>,
    /// Dropped by the worker's handler, or for (d) by its XDP program (none for the kernel's way).
    pub worker: Option<u64>,
    /// Reached the sink, but not as the way must make them.
    pub sink_refused: Refused,
    /// Lost where none of the counters above saw it (in flight at the end, or uncounted).
    pub unaccounted: u64,
    /// Arrived after a frame sent later.
    pub reordered: u64,
}

/// What the node counted of a measurement's losses: its sockets' rings and what its forwarder
/// dropped (`None` where the way has no such place: the kernel's has neither, (d) no rings).
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeDrops {
    pub rings: Option<u64>,
    pub forwarder: Option<u64>,
}

impl NodeDrops {
    pub(super) fn of_worker(worker: &WorkerStats) -> NodeDrops {
        let ports = &worker.ports;
        NodeDrops {
            rings: Some(
                ports
                    .iter()
                    .map(|p| p.kernel.rx_dropped + p.kernel.rx_ring_full + p.tx_ring_full)
                    .sum(),
            ),
            forwarder: Some(ports.iter().map(|p| p.dropped() - p.tx_ring_full).sum()),
        }
    }
}

impl Losses {
    pub(super) fn add(&mut self, m: &Measured, veth: u64, node: NodeDrops) {
        self.sent += m.sent;
        self.received += m.received + m.encrypted;
        self.lost += m.lost();
        self.generator_behind += m.generator_behind;
        let NodeDrops { rings, forwarder } = node;
        // A veth counts a frame its XDP program could not hand to a full socket ring as dropped
        // too: those are the rings' already.
        let veth = veth.saturating_sub(rings.unwrap_or(0));
        self.veth_dropped += veth;
        self.rings = sum_opt(self.rings, rings);
        self.worker = sum_opt(self.worker, forwarder);
        let refused = &mut self.sink_refused;
        let r = &m.refused;
        refused.encapsulation += r.encapsulation;
        refused.vni += r.vni;
        refused.outer_destination += r.outer_destination;
        refused.backend += r.backend;
        refused.macs += r.macs;
        refused.template += r.template;
        self.reordered += m.reordered;
        let seen = veth + rings.unwrap_or(0) + forwarder.unwrap_or(0) + m.refused.total();
        self.unaccounted += m.lost().saturating_sub(seen);
    }
}

fn sum_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    }
}

/// Latency percentiles in µs; absent (null) when no frame was timed.
#[derive(Debug, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub samples: u64,
}

/// The encrypted comparison (`--encrypt`): meshpath plain and under strict WireGuard, by frame size.
#[derive(Debug, Serialize, Deserialize)]
pub struct BySize {
    pub meshpath_64: f64,
    pub meshpath_encrypted_64: f64,
    pub meshpath_1400: f64,
    pub meshpath_encrypted_1400: f64,
}

impl BySize {
    /// Mpps into Gbit/s of the pods' frames (FCS included, no preamble or gap).
    pub(super) fn gbps(mpps: &BySize) -> BySize {
        let rate = |mpps: f64, bytes: usize| mpps * 1e6 * (bytes * 8) as f64 / 1e9;
        BySize {
            meshpath_64: rate(mpps.meshpath_64, SMALL_FRAME),
            meshpath_encrypted_64: rate(mpps.meshpath_encrypted_64, SMALL_FRAME),
            meshpath_1400: rate(mpps.meshpath_1400, LARGE_FRAME),
            meshpath_encrypted_1400: rate(mpps.meshpath_encrypted_1400, LARGE_FRAME),
        }
    }
}

/// The tables meshpath forwards with.
#[derive(Debug, Serialize, Deserialize)]
pub struct TablesReport {
    pub scale: String,
    pub ipcache_prefixes: usize,
    pub services: usize,
    pub backends_per_service: usize,
    pub policy_rules: usize,
    pub established_flows: usize,
    /// Two per established flow, before any new flow.
    pub conntrack_entries: usize,
    pub conntrack_capacity: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardReport {
    /// Frames per second that reached the sink as the way must make them, in millions: median and
    /// spread of the interleaved saturation runs, per way.
    pub mpps: BTreeMap<String, Spread>,
    /// The load every saturation run was offered: the generator's own ceiling, measured first.
    pub offered_mpps: f64,
    /// What the generator managed to send, per way (median of the runs).
    pub sent_mpps: BTreeMap<String, f64>,
    /// RFC 2544: the highest offered rate whose loss was at most 0.1 %, per way (0: none was).
    pub zero_loss_mpps: BTreeMap<String, f64>,
    pub loss_allowed: f64,
    /// meshpath (established) / bare MAC swap, and / the kernel: medians at saturation.
    pub ratio_vs_bare: f64,
    pub ratio_vs_kernel: f64,
    /// The same ratios of the zero-loss rates.
    pub zero_loss_ratio_vs_bare: f64,
    pub zero_loss_ratio_vs_kernel: f64,
    /// meshpath (established) / (d), the kernel XDP reference doing the same rewrite and VXLAN
    /// encapsulation: at saturation and at ≤ 0.1 % loss. Printed beside the others, no target; null
    /// in a file measured before (d) existed.
    #[serde(default)]
    pub ratio_vs_xdp: Option<f64>,
    #[serde(default)]
    pub zero_loss_ratio_vs_xdp: Option<f64>,
    pub losses: BTreeMap<String, Losses>,
    /// Scheduled send to arrival, meshpath (established) at half its median rate; null when no
    /// frame arrived to be timed.
    pub latency_us: Option<Latency>,
    pub latency_offered_mpps: f64,
    /// Frames the latency run's schedule called for that the generator had not sent by its end:
    /// when many, the generator's own lateness is in the latency (it shares a core with the sink).
    pub latency_generator_behind: u64,
    /// Share of the valid frames reaching the sink VXLAN-encapsulated, per way.
    pub tunnelled_share: BTreeMap<String, f64>,
    /// How the XDP programs run (the benchmark refuses anything but native).
    pub xdp_mode: String,
    pub tables: TablesReport,
    pub new_flows_per_s: f64,
    /// With `--encrypt`: Mpps of both sizes, plain and encrypted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mpps_by_size: Option<BySize>,
    /// With `--encrypt`: the same in Gbit/s of the pods' frames.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gbps: Option<BySize>,
    /// With `--encrypt`: encrypted / plain Mpps at 1400-byte frames.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub encryption_cost_ratio: Option<f64>,
    /// With `--encrypt`: share of the frames reaching the sink as WireGuard data (should be 1).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub encrypted_share: Option<f64>,
    pub cores: String,
    pub chart: String,
    pub duration_s: f64,
    pub runs: usize,
    pub trial_s: f64,
}

impl Report for ForwardReport {
    fn lines(&self) -> Vec<String> {
        let t = &self.tables;
        let mut lines = vec![
            format!(
                "64-byte UDP frames; meshpath's tables ({}): {} ipcache prefixes, {} services × {} backends, {} policy rules, {} established flows ({} conntrack entries of {})",
                t.scale, t.ipcache_prefixes, t.services, t.backends_per_service, t.policy_rules,
                t.established_flows, t.conntrack_entries, t.conntrack_capacity
            ),
            format!(
                "XDP mode: {}; {} interleaved runs of {:.1} s per way, each offered {:.3} Mpps; new-flow runs open {:.0} flows/s",
                self.xdp_mode, self.runs, self.duration_s, self.offered_mpps, self.new_flows_per_s
            ),
            format!("cores: {}", self.cores),
            String::new(),
            format!(
                "{:<34} {:>8} {:>17} {:>8} {:>10}",
                "way", "Mpps", "(min–max)", "sent", "≤0.1% loss"
            ),
        ];
        for (key, spread) in &self.mpps {
            lines.push(format!(
                "{:<34} {:>8.3} {:>17} {:>8.3} {:>10}",
                WayKind::label(key),
                spread.median,
                format!("({:.3}–{:.3})", spread.min, spread.max),
                self.sent_mpps.get(key).copied().unwrap_or(f64::NAN),
                self.zero_loss_mpps
                    .get(key)
                    .map_or("—".to_owned(), |r| format!("{r:.3}")),
            ));
        }
        lines.push(String::new());
        lines.push(format!(
            "c/a = {:.2} at saturation ({}), {:.2} at ≤ 0.1 % loss ({}); target ≥ {TARGET_VS_BARE}",
            self.ratio_vs_bare,
            distance(self.ratio_vs_bare, TARGET_VS_BARE),
            self.zero_loss_ratio_vs_bare,
            distance(self.zero_loss_ratio_vs_bare, TARGET_VS_BARE)
        ));
        lines.push(format!(
            "c/b = {:.2} at saturation ({}), {:.2} at ≤ 0.1 % loss ({}); target ≥ {TARGET_VS_KERNEL}",
            self.ratio_vs_kernel,
            distance(self.ratio_vs_kernel, TARGET_VS_KERNEL),
            self.zero_loss_ratio_vs_kernel,
            distance(self.zero_loss_ratio_vs_kernel, TARGET_VS_KERNEL)
        ));
        let ratio = |r: Option<f64>| r.map_or("—".to_owned(), |r| format!("{r:.2}"));
        lines.push(format!(
            "c/d = {} at saturation, {} at ≤ 0.1 % loss (meshpath against the kernel doing its rewrite in XDP; no target)",
            ratio(self.ratio_vs_xdp),
            ratio(self.zero_loss_ratio_vs_xdp)
        ));
        lines.push(match &self.latency_us {
            Some(l) => format!(
                "meshpath latency at {:.3} Mpps offered, from scheduled send times: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs ({} frames; the generator ended {} frames behind its schedule)",
                self.latency_offered_mpps, l.p50, l.p99, l.p999, l.samples, self.latency_generator_behind
            ),
            None => format!(
                "meshpath latency at {:.3} Mpps offered: no samples (no frame arrived to be timed)",
                self.latency_offered_mpps
            ),
        });
        lines.push(String::new());
        lines.push(format!(
            "{:<34} {:>9} {:>8} {:>9} {:>7} {:>7} {:>7} {:>7} {:>8}",
            "losses (all runs)",
            "sent",
            "lost",
            "gen.late",
            "veth",
            "rings",
            "worker",
            "refused",
            "unacc."
        ));
        for (key, l) in &self.losses {
            let opt = |v: Option<u64>| v.map_or("—".to_owned(), |v| v.to_string());
            lines.push(format!(
                "{:<34} {:>9} {:>8} {:>9} {:>7} {:>7} {:>7} {:>7} {:>8}",
                WayKind::label(key),
                l.sent,
                l.lost,
                l.generator_behind,
                l.veth_dropped,
                opt(l.rings),
                opt(l.worker),
                l.sink_refused.total(),
                l.unaccounted
            ));
        }
        lines.extend(self.encrypted_lines());
        lines.push(format!("chart: {}", self.chart));
        lines
    }
}

impl ForwardReport {
    fn encrypted_lines(&self) -> Vec<String> {
        let (Some(mpps), Some(gbps)) = (&self.mpps_by_size, &self.gbps) else {
            return Vec::new();
        };
        vec![
            String::new(),
            format!(
                "{:<34} {:>8} {:>8} {:>8} {:>8}",
                "meshpath", "64 Mpps", "Gbit/s", "1400 Mpps", "Gbit/s"
            ),
            format!(
                "{:<34} {:>8.3} {:>8.2} {:>8.3} {:>8.2}",
                "plain", mpps.meshpath_64, gbps.meshpath_64, mpps.meshpath_1400, gbps.meshpath_1400
            ),
            format!(
                "{:<34} {:>8.3} {:>8.2} {:>8.3} {:>8.2}",
                "strict WireGuard",
                mpps.meshpath_encrypted_64,
                gbps.meshpath_encrypted_64,
                mpps.meshpath_encrypted_1400,
                gbps.meshpath_encrypted_1400
            ),
            format!(
                "encryption cost: encrypted / plain at 1400 bytes = {:.2} ({:.0} % of the frames reached the sink as WireGuard data)",
                self.encryption_cost_ratio.unwrap_or(f64::NAN),
                100.0 * self.encrypted_share.unwrap_or(0.0)
            ),
        ]
    }
}

/// "met" or how far below a target that sets a floor.
fn distance(value: f64, floor: f64) -> String {
    if value >= floor {
        format!("met, {:.0} % of it", 100.0 * value / floor)
    } else {
        format!(
            "missed by {:.2} ({:.0} % of it)",
            floor - value,
            100.0 * value / floor
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_says_met_or_by_how_much() {
        assert_eq!(distance(3.3, 3.0), "met, 110 % of it");
        assert_eq!(distance(0.45, 0.9), "missed by 0.45 (50 % of it)");
    }

    #[test]
    fn a_spread_has_the_median_of_odd_and_even_runs() {
        let odd = Spread::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        assert_eq!(
            odd.runs,
            vec![3.0, 1.0, 2.0],
            "runs kept in the order measured"
        );
        assert_eq!(Spread::of(vec![4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert!(Spread::of(Vec::new()).median.is_nan());
    }
}
