//! Each stage alone over the same shuffled flows: what a stage costs without the rest of the
//! pipeline around it.

use std::collections::BTreeMap;
use std::hint::black_box;

use arrayvec::ArrayVec;

use meshpath_dataplane::frame::HEADROOM;
use meshpath_dataplane::parse::parse;
use meshpath_dataplane::service::Frontend;
use meshpath_dataplane::steering::{Owner, Steering};
use meshpath_dataplane::testbed::{self, Testbed};
use meshpath_dataplane::tunnel::{self, Encapsulation, TunnelProtocol};
use meshpath_dataplane::{nat, Addr, FlowKey, Frame, Identity, PortId};

use super::ring::{BURST, CHUNK};
use super::Traffic;
use crate::measure::ns_per_item;

/// Each stage alone over the same shuffled flows.
pub fn stages(bed: &Testbed, traffic: &Traffic, rounds: usize) -> BTreeMap<&'static str, f64> {
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
    // Which of two workers owns each frame, a burst at a time as a worker asks: requests by their
    // client's end (they go to a service), tunnelled replies by the frame inside.
    let two = Steering::new(2).expect("two workers");
    let mut received: Vec<(PortId, Vec<u8>)> = (traffic.requests.iter())
        .map(|r| (PortId(1), r.clone()))
        .chain(traffic.replies.iter().map(|r| (testbed::UPLINK, r.clone())))
        .collect();
    let mut owners = [Owner::Any; BURST];
    out.insert(
        "steering",
        ns_per_item(rounds, 2 * n, || {
            for burst in received.chunks_mut(BURST) {
                let frames: ArrayVec<Frame<'_>, BURST> = (burst.iter_mut())
                    .filter_map(|(port, r)| {
                        let len = r.len();
                        Frame::new(r, 0, len, *port)
                    })
                    .collect();
                two.owners(&bed.tables, &frames, &mut owners[..frames.len()]);
                black_box(&owners);
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
    let mut buf = vec![0u8; CHUNK];
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
