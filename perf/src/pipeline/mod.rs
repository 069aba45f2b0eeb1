//! `meshpath-perf pipeline`: the in-memory pipeline on one core with tables at production scale —
//! 100k ipcache prefixes, 10k services of 10 backends, 1k policy rules, 100k live service flows — on
//! 64-byte UDP frames, in a random order over all flows so that table lookups miss the cache as they
//! would in production. It times the whole pipeline (requests out through service LB and VXLAN
//! encapsulation, replies in through decapsulation and reverse NAT), and each stage alone.

use std::collections::BTreeMap;
use std::hint::black_box;

use arrayvec::ArrayVec;
use meshpath_dataplane::frame::HEADROOM;
use meshpath_dataplane::parse::parse;
use meshpath_dataplane::pipeline::{self, Verdict};
use meshpath_dataplane::service::Frontend;
use meshpath_dataplane::testbed::{self, Flow, Scale, Testbed};
use meshpath_dataplane::tunnel::{self, Encapsulation, TunnelProtocol};
use meshpath_dataplane::{nat, Addr, FlowKey, Frame, Identity, PortId};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use crate::measure::{self, mpps, ns_per_item};
use crate::report::{against_ceiling, Report};

const TARGET_NS: f64 = 50.0;
/// Flows in the cache-resident working set.
const HOT_FLOWS: usize = 1024;
const BATCH: usize = 64;
const SLOT: usize = HEADROOM + 256;

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
}

#[derive(Serialize)]
pub struct PipelineReport {
    /// The whole pipeline, requests and replies alike.
    ns_per_packet: f64,
    mpps: f64,
    target_ns: f64,
    /// The whole pipeline when only `hot_flows` flows are active: their state stays in the caches.
    hot_ns_per_packet: f64,
    hot_flows: usize,
    /// Each direction of the whole pipeline, and the first packet of a flow.
    paths: BTreeMap<&'static str, f64>,
    /// Each stage alone, ns per packet.
    stages: BTreeMap<&'static str, f64>,
    /// What the loops spent copying fresh frames in, subtracted from the figures above.
    harness_ns: f64,
    scale: ScaleReport,
    core: Option<usize>,
}

#[derive(Serialize)]
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
    let traffic = Traffic::new(&bed);
    let rounds = args.rounds.max(1);
    let whole = Whole::measure(&bed, &traffic, rounds);
    let hot = Whole::measure(&bed, &Traffic::hot(&bed, HOT_FLOWS, traffic.len()), rounds);
    let stages = stages(&bed, &traffic, rounds);
    let ns = whole.mixed;
    Ok(PipelineReport {
        ns_per_packet: ns,
        mpps: mpps(ns),
        target_ns: TARGET_NS,
        paths: BTreeMap::from([
            ("request_established", whole.requests),
            ("reply_established", whole.replies),
            (
                "request_new_flow",
                new_flow_ns(&bed, rounds) - whole.harness,
            ),
            ("hot_request_established", hot.requests),
            ("hot_reply_established", hot.replies),
        ]),
        hot_ns_per_packet: hot.mixed,
        hot_flows: HOT_FLOWS,
        stages,
        harness_ns: whole.harness,
        scale: ScaleReport {
            ipcache_prefixes: bed.tables.ipcache.len(),
            services: bed.tables.services.len(),
            backends_per_service: scale.backends_per_service,
            policy_rules: scale.policy_rules,
            conntrack_entries: 2 * scale.flows,
        },
        core,
    })
}

/// Every flow's request and tunnelled reply as frames, in a shuffled order.
struct Traffic {
    order: Vec<Flow>,
    requests: Vec<Vec<u8>>,
    replies: Vec<Vec<u8>>,
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
        let mut buf = vec![0u8; SLOT];
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
                buf[HEADROOM..HEADROOM + len].to_vec()
            })
            .collect();
        Traffic {
            order,
            requests,
            replies,
        }
    }

    fn len(&self) -> usize {
        self.order.len()
    }
}

/// Batch buffers, refilled from templates before every batch as a receive ring would be.
struct Batch {
    buffers: Vec<u8>,
    lens: [usize; BATCH],
    ports: [PortId; BATCH],
}

impl Batch {
    fn new() -> Batch {
        Batch {
            buffers: vec![0; SLOT * BATCH],
            lens: [0; BATCH],
            ports: [PortId(0); BATCH],
        }
    }

    fn fill<'a>(&mut self, frames: impl Iterator<Item = (PortId, &'a [u8])>) -> usize {
        let mut n = 0;
        for ((slot, (port, bytes)), (len, p)) in self
            .buffers
            .chunks_mut(SLOT)
            .zip(frames)
            .zip(self.lens.iter_mut().zip(self.ports.iter_mut()))
        {
            slot[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
            *len = bytes.len();
            *p = port;
            n += 1;
        }
        n
    }

    fn frames(&mut self, n: usize) -> ArrayVec<Frame<'_>, BATCH> {
        self.buffers
            .chunks_mut(SLOT)
            .zip(self.lens.iter().zip(&self.ports))
            .take(n)
            .filter_map(|(slot, (len, port))| Frame::new(slot, HEADROOM, *len, *port))
            .collect()
    }
}

struct Whole {
    mixed: f64,
    requests: f64,
    replies: f64,
    harness: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Mix {
    Requests,
    Replies,
    Both,
}

impl Whole {
    fn measure(bed: &Testbed, traffic: &Traffic, rounds: usize) -> Whole {
        let mut state = bed.warmed_worker(2 * bed.scale.flows + 1024);
        let n = traffic.len();
        let mut batch = Batch::new();
        let mut verdicts = [Verdict::ToKernel; BATCH];
        let mut pass = |mix: Mix, process: bool| {
            ns_per_item(rounds, n, || {
                for start in (0..n).step_by(BATCH) {
                    let end = (start + BATCH).min(n);
                    let frames = (start..end).map(|k| frame_of(traffic, k, mix));
                    let count = batch.fill(frames);
                    let mut frames = batch.frames(count);
                    if process {
                        pipeline::process(&bed.tables, &mut state, 1, &mut frames, &mut verdicts);
                    }
                    black_box(&frames);
                }
            })
        };
        let harness = pass(Mix::Both, false);
        let mixed = pass(Mix::Both, true) - harness;
        let requests = pass(Mix::Requests, true) - harness;
        let replies = pass(Mix::Replies, true) - harness;
        Whole {
            mixed,
            requests,
            replies,
            harness,
        }
    }
}

fn frame_of(traffic: &Traffic, k: usize, mix: Mix) -> (PortId, &[u8]) {
    let reply = match mix {
        Mix::Requests => false,
        Mix::Replies => true,
        Mix::Both => k % 2 == 1,
    };
    if reply {
        (testbed::UPLINK, &traffic.replies[k])
    } else {
        (
            testbed::pod_port(traffic.order[k].pod),
            &traffic.requests[k],
        )
    }
}

/// The first packet of flows never seen: Maglev, policy and two conntrack inserts on top.
fn new_flow_ns(bed: &Testbed, rounds: usize) -> f64 {
    let per_round = bed.scale.flows.min(50_000);
    let mut state = bed.warmed_worker(2 * bed.scale.flows + 2 * per_round * rounds + 1024);
    let mut batch = Batch::new();
    let mut verdicts = [Verdict::ToKernel; BATCH];
    let mut round = 0;
    let mut buf = vec![0u8; SLOT];
    ns_per_item(rounds, per_round, || {
        round += 1;
        for start in (0..per_round).step_by(BATCH) {
            let end = (start + BATCH).min(per_round);
            let flows: ArrayVec<(PortId, Vec<u8>), BATCH> = (start..end)
                .map(|k| {
                    let flow = Flow {
                        pod: k % bed.scale.local_pods,
                        src_port: 20_000 + (round * 700 + k / bed.scale.local_pods) as u16,
                        service: k % bed.scale.services,
                    };
                    let len = bed.request(&flow, &mut buf);
                    (testbed::pod_port(flow.pod), buf[..len].to_vec())
                })
                .collect();
            let count = batch.fill(flows.iter().map(|(p, b)| (*p, b.as_slice())));
            let mut frames = batch.frames(count);
            pipeline::process(&bed.tables, &mut state, 1, &mut frames, &mut verdicts);
            black_box(&frames);
        }
    })
}

/// Each stage alone over the same shuffled flows.
fn stages(bed: &Testbed, traffic: &Traffic, rounds: usize) -> BTreeMap<&'static str, f64> {
    let n = traffic.len();
    let mut out = BTreeMap::new();
    let keys: Vec<FlowKey> = traffic
        .requests
        .iter()
        .filter_map(|r| parse(r).ok())
        .map(|p| p.flow)
        .collect();
    let backends: Vec<Addr> = traffic
        .order
        .iter()
        .map(|f| testbed::remote_ip(bed.backend_of(f)).into())
        .collect();

    out.insert(
        "parse",
        ns_per_item(rounds, n, || {
            for r in &traffic.requests {
                let _ = black_box(parse(black_box(r)));
            }
        }),
    );
    out.insert(
        "ipcache",
        ns_per_item(rounds, n, || {
            for addr in &backends {
                black_box(bed.tables.ipcache.lookup(*addr));
            }
        }),
    );
    let identities: Vec<(Identity, Identity)> = keys
        .iter()
        .zip(&backends)
        .map(|(k, b)| {
            let src = bed
                .tables
                .endpoints
                .by_addr(k.src)
                .map_or(Identity::UNKNOWN, |e| e.identity);
            let dst = bed
                .tables
                .ipcache
                .lookup(*b)
                .map_or(Identity::UNKNOWN, |e| e.identity);
            (src, dst)
        })
        .collect();
    out.insert(
        "policy",
        ns_per_item(rounds, n, || {
            for (src, dst) in &identities {
                black_box(
                    bed.tables
                        .policy
                        .allows_egress(*src, *dst, 17, testbed::BACKEND_PORT),
                );
            }
        }),
    );
    out.insert(
        "service_lb",
        ns_per_item(rounds, n, || {
            for k in &keys {
                let fe = Frontend {
                    addr: k.dst,
                    port: k.dst_port,
                    proto: k.proto,
                };
                let service = bed.tables.services.lookup(&fe);
                black_box(service.and_then(|s| s.select(k.symmetric_hash())));
            }
        }),
    );
    let mut state = bed.warmed_worker(2 * bed.scale.flows + 1024);
    out.insert(
        "conntrack",
        ns_per_item(rounds, n, || {
            for k in &keys {
                black_box(state.conntrack.lookup(k, 1).is_some());
            }
        }),
    );
    out.extend(rewrite_stages(bed, traffic, &keys, &backends, rounds));
    out
}

/// A stage that rewrites frame `k` of the templates.
type RewriteStage = Box<dyn FnMut(usize, &mut Frame)>;

/// Stages that change the frame: each works on a fresh copy, whose cost is measured and taken off.
fn rewrite_stages(
    bed: &Testbed,
    traffic: &Traffic,
    keys: &[FlowKey],
    backends: &[Addr],
    rounds: usize,
) -> BTreeMap<&'static str, f64> {
    let n = traffic.len();
    let mut buf = vec![0u8; SLOT];
    let mut timed = |templates: &[Vec<u8>], port: PortId, mut stage: RewriteStage| {
        let mut once = |work: bool| {
            ns_per_item(rounds, n, || {
                for (k, t) in templates.iter().enumerate() {
                    buf[HEADROOM..HEADROOM + t.len()].copy_from_slice(t);
                    if let Some(mut frame) = Frame::new(&mut buf, HEADROOM, t.len(), port) {
                        if work {
                            stage(k, &mut frame);
                        }
                        black_box(frame.data());
                    }
                }
            })
        };
        let copy = once(false);
        (once(true) - copy).max(0.0)
    };
    let node = testbed::node_ip();
    let decap = timed(
        &traffic.replies,
        testbed::UPLINK,
        Box::new(|_, frame| {
            if let Ok(outer) = parse(frame.data()) {
                let _ = black_box(tunnel::decap(frame, &outer, TunnelProtocol::Vxlan));
            }
        }),
    );
    let backends = backends.to_vec();
    let nat = timed(
        &traffic.requests,
        PortId(1),
        Box::new(move |k, frame| {
            if let Ok(parsed) = parse(frame.data()) {
                let _ = black_box(nat::rewrite(
                    frame.data_mut(),
                    &parsed,
                    nat::End::Destination,
                    backends[k],
                    8080,
                ));
            }
        }),
    );
    let keys = keys.to_vec();
    let encap = timed(
        &traffic.requests,
        PortId(1),
        Box::new(move |k, frame| {
            let enc = Encapsulation {
                protocol: TunnelProtocol::Vxlan,
                vni: Identity::new(0x1_0100).unwrap_or(Identity::UNKNOWN),
                src_mac: testbed::NODE_MAC,
                dst_mac: [2, 0, 0, 0, 0, 0xfe],
                src: node.into(),
                dst: keys[k].dst,
                ttl: 64,
            };
            let _ = black_box(tunnel::encap(frame, &enc, keys[k].symmetric_hash()));
        }),
    );
    let _ = bed;
    BTreeMap::from([("decap", decap), ("nat", nat), ("encap", encap)])
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
            String::new(),
            format!("{:<52} {:>10} {:>8}", "path", "ns/packet", "Mpps"),
            row("whole pipeline (requests out + replies in)", self.ns_per_packet),
            row(
                &format!("whole pipeline, {} hot flows (cache-resident)", self.hot_flows),
                self.hot_ns_per_packet,
            ),
        ];
        for (name, ns) in &self.paths {
            lines.push(row(&format!("  {}", path_label(name)), *ns));
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
            "target ≤ {:.0} ns/packet for the whole pipeline: {:.1} ns, {}",
            self.target_ns,
            self.ns_per_packet,
            against_ceiling(self.ns_per_packet, self.target_ns)
        ));
        lines.push(format!(
            "(refilling the batch from templates cost {:.1} ns/packet and is not counted)",
            self.harness_ns
        ));
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
