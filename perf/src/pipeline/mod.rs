//! `meshpath-perf pipeline`: the in-memory pipeline on one core with tables at production scale —
//! 100k ipcache prefixes, 10k services of 10 backends, 1k policy rules, 100k live service flows — on
//! 64-byte UDP frames, in a random order over all flows so that table lookups miss the cache as they
//! would in production.
//!
//! Each path is timed on bursts of one direction, as a worker meets them (a burst comes from one
//! port's rx ring: a pod's requests, or the uplink's tunnelled replies): established requests out
//! through service load balancing and VXLAN encapsulation, established replies in through
//! decapsulation and reverse NAT, and the first packets of new flows. The frames of every burst are
//! staged in the next chunks of a ring as large as the agent's UMEM ([`ring`]), so a frame is a cache
//! miss as it would be; staging is the harness, timed on the same loop without the pipeline, per
//! path, and subtracted there. Every timed frame's verdict is checked against the one it must get;
//! a figure over frames that went anywhere else is refused. Each stage alone is timed too
//! ([`stages`]).

pub mod chart;
mod ring;
mod stages;
mod workers;

use std::collections::BTreeMap;
use std::hint::black_box;

use meshpath_dataplane::pipeline::{self, Verdict};
use meshpath_dataplane::testbed::{self, Flow, Scale, Testbed};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::measure::{self, mpps, ns_per_item};
use crate::report::{against_ceiling, Report};
use ring::{Ring, BURST, CHUNK};

/// The whole pipeline (the mean of both established directions), and each of them.
const TARGET_NS: f64 = 50.0;
const TARGET_PATH_NS: f64 = 100.0;
/// Flows in the cache-resident working set.
const HOT_FLOWS: usize = 1024;
/// New flows per timed round (each round needs flows never seen).
const NEW_FLOWS_PER_ROUND: usize = 50_000;

#[derive(clap::Args)]
pub struct Args {
    /// Remote endpoints, each a /32 prefix in the ipcache.
    #[arg(long, default_value_t = 100_000)]
    prefixes: usize,
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    backends: usize,
    #[arg(long, default_value_t = 1_000)]
    rules: usize,
    /// Live service flows in conntrack (two entries each).
    #[arg(long, default_value_t = 100_000)]
    flows: usize,
    /// Timed rounds per figure; the best is kept.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The core to pin the benchmark to.
    #[arg(long, default_value_t = 1)]
    core: usize,
    /// Also run the established paths on this many workers at once (pinned to cores 0, 1, …), with
    /// software steering between them, and report `scaling` against one worker.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PipelineReport {
    /// The whole pipeline: the mean of `paths.request_established` and `paths.reply_established`
    /// (as much traffic in as out, each burst one direction).
    ns_per_packet: f64,
    mpps: f64,
    target_ns: f64,
    /// Each established direction's target.
    target_path_ns: f64,
    /// ns per packet of each path, its harness taken off.
    paths: BTreeMap<String, f64>,
    /// What staging each path's frames into the ring cost per packet: subtracted from `paths`.
    harness_ns: BTreeMap<String, f64>,
    /// Every timed frame's verdict, per path: how many got the verdict they must get.
    verdicts: BTreeMap<String, VerdictCount>,
    hot_flows: usize,
    /// Each stage alone, ns per packet (frame-rewriting stages on one warm buffer: compute only).
    stages: BTreeMap<String, f64>,
    scale: ScaleReport,
    /// Chunks × bytes of the ring the timed frames are staged in.
    ring_chunks: usize,
    ring_chunk_bytes: usize,
    core: Option<usize>,
    /// With `--workers N` (N > 1): N workers' Mpps / one worker's on the same frames (target
    /// ≥ [`workers::TARGET_SCALING`] for two workers on two cores).
    #[serde(default)]
    scaling: Option<f64>,
    /// How `scaling` was measured.
    #[serde(default)]
    workers: Option<workers::WorkersReport>,
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct VerdictCount {
    timed: u64,
    expected: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ScaleReport {
    ipcache_prefixes: usize,
    services: usize,
    backends_per_service: usize,
    policy_rules: usize,
    conntrack_entries: usize,
}

pub fn run(args: &Args) -> anyhow::Result<PipelineReport> {
    let core = measure::pin_to_core(args.core);
    let scale = Scale {
        local_pods: 64,
        remote_endpoints: args.prefixes,
        services: args.services.max(1),
        backends_per_service: args.backends.max(1),
        policy_rules: args.rules.max(1),
        flows: args.flows.max(1),
    };
    eprintln!("building tables at {scale:?} …");
    let bed = Testbed::new(scale);
    let rounds = args.rounds.max(1);
    let all = Traffic::new(&bed);
    let hot = Traffic::hot(&bed, HOT_FLOWS, all.len());
    let mut timed = BTreeMap::new();
    let capacity = 2 * bed.scale.flows + 1024;
    let mut state = bed.warmed_worker(capacity);
    for (name, traffic) in [("", &all), ("hot_", &hot)] {
        for (path, burst) in [
            ("request_established", traffic.requests()),
            ("reply_established", traffic.replies()),
        ] {
            let figure = time_path(rounds, &[burst], |frames, verdicts| {
                pipeline::process(&bed.tables, &mut state, 1, frames, verdicts)
            });
            timed.insert(prefixed(name, path), figure);
        }
    }
    timed.insert("request_new_flow", new_flows(&bed, rounds));
    for (path, figure) in &timed {
        anyhow::ensure!(
            figure.verdicts.expected == figure.verdicts.timed,
            "{path}: only {} of {} timed frames got their verdict (the first other: {:?}); the figure would not be the path's",
            figure.verdicts.expected,
            figure.verdicts.timed,
            figure.unexpected
        );
    }
    let stages = stages::stages(&bed, &all, rounds);
    drop(state);
    let workers = match args.workers {
        1 => None,
        n => Some(workers::scaling(&bed, &all, n, args.core, rounds)?),
    };
    let (request, reply) = (
        timed["request_established"].ns,
        timed["reply_established"].ns,
    );
    let ns = f64::midpoint(request, reply);
    Ok(PipelineReport {
        ns_per_packet: ns,
        mpps: mpps(ns),
        target_ns: TARGET_NS,
        target_path_ns: TARGET_PATH_NS,
        paths: timed.iter().map(|(k, f)| (k.to_string(), f.ns)).collect(),
        harness_ns: timed
            .iter()
            .map(|(k, f)| (k.to_string(), f.harness_ns))
            .collect(),
        verdicts: timed
            .iter()
            .map(|(k, f)| (k.to_string(), f.verdicts))
            .collect(),
        hot_flows: HOT_FLOWS,
        stages: stages
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        scale: ScaleReport {
            ipcache_prefixes: bed.tables.ipcache.len(),
            services: bed.tables.services.len(),
            backends_per_service: scale.backends_per_service,
            policy_rules: scale.policy_rules,
            conntrack_entries: 2 * scale.flows,
        },
        ring_chunks: ring::UMEM_CHUNKS,
        ring_chunk_bytes: CHUNK,
        core,
        scaling: workers.as_ref().map(|w| w.scaling),
        workers,
    })
}

fn prefixed(prefix: &str, path: &'static str) -> &'static str {
    match (prefix, path) {
        ("hot_", "request_established") => "hot_request_established",
        ("hot_", "reply_established") => "hot_reply_established",
        _ => path,
    }
}

/// Every flow's request and tunnelled reply as frames, in a shuffled order.
pub struct Traffic {
    order: Vec<Flow>,
    requests: Vec<Vec<u8>>,
    replies: Vec<Vec<u8>>,
    /// The verdict each reply must get: out of its pod's port.
    reply_ports: Vec<Verdict>,
}

/// The frames of one timed pass and the verdict each must get.
struct Burst<'a> {
    frames: Vec<(meshpath_dataplane::PortId, &'a [u8])>,
    expected: Vec<Verdict>,
}

impl Traffic {
    /// Every flow once, in a random order.
    fn new(bed: &Testbed) -> Traffic {
        let mut order = bed.flows.clone();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
        Traffic::of(bed, order)
    }

    /// `active` flows only, over and over: a working set that stays in the caches.
    fn hot(bed: &Testbed, active: usize, packets: usize) -> Traffic {
        let mut flows = bed.flows.clone();
        flows.shuffle(&mut rand::rngs::StdRng::seed_from_u64(11));
        flows.truncate(active.max(1));
        let order = flows.iter().copied().cycle().take(packets).collect();
        Traffic::of(bed, order)
    }

    fn of(bed: &Testbed, order: Vec<Flow>) -> Traffic {
        let mut buf = vec![0u8; CHUNK];
        let requests = order
            .iter()
            .map(|f| {
                let len = bed.request(f, &mut buf);
                buf[..len].to_vec()
            })
            .collect();
        let replies = order
            .iter()
            .map(|f| {
                let len = bed.tunnelled_reply(f, &mut buf);
                buf[meshpath_dataplane::frame::HEADROOM..][..len].to_vec()
            })
            .collect();
        let reply_ports = order
            .iter()
            .map(|f| Verdict::Transmit(testbed::pod_port(f.pod)))
            .collect();
        Traffic {
            order,
            requests,
            replies,
            reply_ports,
        }
    }

    fn len(&self) -> usize {
        self.order.len()
    }

    fn requests(&self) -> Burst<'_> {
        Burst {
            frames: self
                .order
                .iter()
                .zip(&self.requests)
                .map(|(f, r)| (testbed::pod_port(f.pod), r.as_slice()))
                .collect(),
            expected: vec![Verdict::Transmit(testbed::UPLINK); self.len()],
        }
    }

    fn replies(&self) -> Burst<'_> {
        Burst {
            frames: self
                .replies
                .iter()
                .map(|r| (testbed::UPLINK, r.as_slice()))
                .collect(),
            expected: self.reply_ports.clone(),
        }
    }
}

/// A path's figure.
struct Timed {
    ns: f64,
    harness_ns: f64,
    verdicts: VerdictCount,
    /// The first verdict that was not the expected one, if any.
    unexpected: Option<Verdict>,
}

/// Times `process` over `bursts[r % len]` in round `r` (best of `rounds`), bursts of [`BURST`]
/// frames staged in the ring; then the same loop without `process`, the harness, taken off.
fn time_path(
    rounds: usize,
    bursts: &[Burst<'_>],
    mut process: impl FnMut(&mut [meshpath_dataplane::Frame<'_>], &mut [Verdict]),
) -> Timed {
    let n = bursts.iter().map(|b| b.frames.len()).min().unwrap_or(0);
    let mut ring = Ring::new();
    let mut verdicts = [Verdict::ToKernel; BURST];
    let mut counts = VerdictCount::default();
    let mut unexpected = None;
    let mut pass = |work: bool, counts: &mut VerdictCount| {
        let mut round = 0;
        ns_per_item(rounds, n, || {
            let burst = &bursts[round % bursts.len()];
            round += 1;
            for start in (0..n).step_by(BURST) {
                let end = (start + BURST).min(n);
                let count = ring.stage(burst.frames[start..end].iter().copied());
                let mut frames = ring.frames(count);
                if work {
                    process(&mut frames, &mut verdicts[..count]);
                }
                let expected = &burst.expected[start..start + count];
                let right = verdicts[..count].iter().zip(expected);
                counts.timed += count as u64;
                counts.expected += right.filter(|(v, e)| v == e).count() as u64;
                if work && counts.expected < counts.timed && unexpected.is_none() {
                    unexpected = verdicts[..count]
                        .iter()
                        .zip(expected)
                        .find(|(v, e)| v != e)
                        .map(|(v, _)| *v);
                }
                black_box(&frames);
            }
        })
    };
    let harness_ns = pass(false, &mut VerdictCount::default());
    let total = pass(true, &mut counts);
    Timed {
        ns: total - harness_ns,
        harness_ns,
        verdicts: counts,
        unexpected,
    }
}

/// The first packet of flows never seen: Maglev, policy and two conntrack inserts on top. Each
/// round has flows of its own, made before any timing.
fn new_flows(bed: &Testbed, rounds: usize) -> Timed {
    let per_round = bed.scale.flows.min(NEW_FLOWS_PER_ROUND);
    let pods = bed.scale.local_pods;
    let frames: Vec<Vec<(meshpath_dataplane::PortId, Vec<u8>)>> = (0..rounds)
        .map(|round| {
            let mut buf = vec![0u8; CHUNK];
            (0..per_round)
                .map(|k| {
                    let flow = Flow {
                        pod: k % pods,
                        src_port: (20_000 + round * per_round.div_ceil(pods) + k / pods) as u16,
                        service: k % bed.scale.services,
                    };
                    let len = bed.request(&flow, &mut buf);
                    (testbed::pod_port(flow.pod), buf[..len].to_vec())
                })
                .collect()
        })
        .collect();
    let bursts: Vec<Burst<'_>> = frames
        .iter()
        .map(|round| Burst {
            frames: round.iter().map(|(p, f)| (*p, f.as_slice())).collect(),
            expected: vec![Verdict::Transmit(testbed::UPLINK); round.len()],
        })
        .collect();
    // Room to spare: near full, conntrack refuses new flows where their bucket is full.
    let capacity = (2 * (2 * bed.scale.flows + 2 * per_round * rounds)).next_power_of_two();
    let mut state = bed.warmed_worker(capacity);
    time_path(rounds, &bursts, |frames, verdicts| {
        pipeline::process(&bed.tables, &mut state, 1, frames, verdicts)
    })
}

impl Report for PipelineReport {
    fn lines(&self) -> Vec<String> {
        let s = &self.scale;
        let mut lines = vec![
            format!(
                "meshpath-perf pipeline — one core ({}), 64-byte UDP frames, {} ipcache prefixes, {} services × {} backends, {} policy rules, {} conntrack entries",
                self.core.map_or("not pinned".to_string(), |c| format!("pinned to core {c}")),
                s.ipcache_prefixes, s.services, s.backends_per_service, s.policy_rules, s.conntrack_entries
            ),
            format!(
                "bursts of {BURST} frames of one direction, staged in a ring of {} × {} B chunks (the agent's UMEM)",
                self.ring_chunks, self.ring_chunk_bytes
            ),
            String::new(),
            format!(
                "{:<52} {:>10} {:>8} {:>9}  verdicts as expected",
                "path", "ns/packet", "Mpps", "harness"
            ),
        ];
        for (name, ns) in &self.paths {
            let v = self.verdicts.get(name).copied().unwrap_or_default();
            let harness = self.harness_ns.get(name).copied().unwrap_or(f64::NAN);
            lines.push(format!(
                "{} {harness:>9.1}  {} of {}",
                row(path_label(name), *ns),
                v.expected,
                v.timed
            ));
        }
        lines.push(String::new());
        lines.push(format!(
            "{:<52} {:>10} {:>8}",
            "stage alone", "ns/packet", "Mpps"
        ));
        for (name, ns) in &self.stages {
            lines.push(row(&format!("  {name}"), *ns));
        }
        lines.push(String::new());
        lines.push(format!(
            "target ≤ {:.0} ns/packet for the whole pipeline (mean of both established directions): {:.1} ns, {}",
            self.target_ns,
            self.ns_per_packet,
            against_ceiling(self.ns_per_packet, self.target_ns)
        ));
        for path in ["request_established", "reply_established"] {
            if let Some(ns) = self.paths.get(path) {
                lines.push(format!(
                    "target ≤ {:.0} ns/packet for {path}: {ns:.1} ns, {}",
                    self.target_path_ns,
                    against_ceiling(*ns, self.target_path_ns)
                ));
            }
        }
        if let Some(w) = &self.workers {
            lines.extend(w.lines());
        }
        lines
    }
}

fn path_label(name: &str) -> &str {
    match name {
        "request_established" => "pod → service → VXLAN (established flow)",
        "reply_established" => "VXLAN → reverse NAT → pod (established flow)",
        "request_new_flow" => "pod → service, first packet (Maglev+policy+CT)",
        "hot_request_established" => "pod → service → VXLAN, hot flows",
        "hot_reply_established" => "VXLAN → reverse NAT → pod, hot flows",
        other => other,
    }
}

fn row(label: &str, ns: f64) -> String {
    format!("{label:<52} {ns:>10.1} {:>8.2}", mpps(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small run: every path is timed, every timed frame got its verdict, the JSON has the keys
    /// the issue names.
    #[test]
    fn smoke_every_path_is_timed_and_checked() {
        let args = Args {
            prefixes: 2_000,
            services: 100,
            backends: 4,
            rules: 20,
            flows: 1_000,
            rounds: 2,
            core: 0,
            workers: 2,
        };
        let report = run(&args).expect("the benchmark runs");
        for path in [
            "request_established",
            "reply_established",
            "request_new_flow",
            "hot_request_established",
            "hot_reply_established",
        ] {
            assert!(report.paths[path].is_finite(), "{path}: {report:?}");
            let v = report.verdicts[path];
            assert!(v.timed > 0 && v.expected == v.timed, "{path}: {v:?}");
        }
        assert!(report.ns_per_packet.is_finite());
        let json = serde_json::to_value(&report).expect("serializes");
        assert!(json["paths"]["request_established"].is_number());
        assert!(json["harness_ns"]["reply_established"].is_number());
        let workers = report
            .workers
            .as_ref()
            .expect("--workers 2 measures scaling");
        assert!(json["scaling"].is_number(), "{json}");
        assert!(
            workers.handed_off > 0.0,
            "two queues hand frames over: {workers:?}"
        );
        assert_eq!(workers.verdicts.timed, workers.verdicts.expected);
        assert_eq!(
            workers.verdicts.timed,
            2 * 2 * 1_000,
            "two rounds of every flow's request and reply"
        );
    }
}
