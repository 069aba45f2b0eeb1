//! Table snapshots swapped under live traffic, as the agent does it: a worker thread loads the
//! snapshot once per batch from an `ArcSwap` and runs the pipeline over service requests (new flows and
//! established ones), while another thread swaps in snapshots whose service has lost or regained
//! backends. Every frame of every batch must follow the snapshot that batch loaded: balanced to a
//! backend that snapshot has, never to one it removed, and nothing dropped.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use meshpath_dataplane::frame::HEADROOM;
use meshpath_dataplane::pipeline::{self, Verdict};
use meshpath_dataplane::service::Service;
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::testbed::{frontend, Flow, UPLINK};
use meshpath_dataplane::{Addr, Frame};
use meshpath_fuzz::bed;

const BATCH: usize = 32;
const SWAPS: u64 = 40;
/// Batches the worker runs on each snapshot before the next swap.
const BATCHES_PER_SNAPSHOT: u64 = 4;
/// Where the inner destination address sits in a VXLAN-encapsulated IPv4 frame.
const INNER_DST: std::ops::Range<usize> = 50 + 14 + 16..50 + 14 + 20;

/// The bed's tables with service 0 cut to its first `keep` backends.
fn with_backends(keep: usize) -> Arc<Tables> {
    let mut tables = bed::bed().tables.clone();
    let old = tables.services.lookup(&frontend(0)).expect("service 0");
    let backends = old.backends()[..keep].to_vec();
    let service = Service::new(old.id, old.frontend, backends).expect("a valid service");
    tables.services.insert(Arc::new(service)).expect("room");
    Arc::new(tables)
}

fn backends_of(tables: &Tables) -> BTreeSet<Addr> {
    let service = tables.services.lookup(&frontend(0)).expect("service 0");
    service.backends().iter().map(|b| b.addr).collect()
}

/// Runs batches until `stop`, each on the snapshot it loads; panics on a frame that does not follow it.
fn worker(swap: &ArcSwap<Tables>, stop: &AtomicBool, batches: &AtomicU64) {
    let mut state = bed::bed().warmed_worker(1 << 14);
    let mut now = 1_000;
    let mut turn = 0u16;
    while !stop.load(Ordering::Acquire) {
        let tables = swap.load_full();
        let allowed = backends_of(&tables);
        let mut bufs: Vec<Vec<u8>> = (0..BATCH)
            .map(|i| {
                // Half the frames repeat 64 established flows, half open new ones.
                let src_port = if i % 2 == 0 {
                    2000 + (i as u16 % 64)
                } else {
                    10_000 + turn
                };
                turn = turn.wrapping_add(1);
                let flow = Flow {
                    pod: i % 2,
                    src_port,
                    service: 0,
                };
                let mut buf = vec![0u8; HEADROOM + 256];
                let len = bed::bed().request(&flow, &mut buf[HEADROOM..]);
                buf.truncate(HEADROOM + len + 128);
                buf
            })
            .collect();
        let mut frames: Vec<Frame<'_>> = bufs
            .iter_mut()
            .enumerate()
            .map(|(i, b)| {
                Frame::new(
                    b,
                    HEADROOM,
                    60,
                    meshpath_dataplane::testbed::pod_port(i % 2),
                )
                .unwrap()
            })
            .collect();
        let mut verdicts = [Verdict::ToKernel; BATCH];
        now += 1;
        pipeline::process(&tables, &mut state, now, &mut frames, &mut verdicts);
        for (frame, verdict) in frames.iter().zip(verdicts) {
            assert_eq!(verdict, Verdict::Transmit(UPLINK));
            let dst = <[u8; 4]>::try_from(&frame.data()[INNER_DST]).unwrap();
            let dst = Addr::from(std::net::Ipv4Addr::from(dst));
            assert!(
                allowed.contains(&dst),
                "balanced to {dst:?}, not a backend of this snapshot"
            );
        }
        batches.fetch_add(1, Ordering::Release);
    }
}

#[test]
fn snapshots_swapped_under_live_traffic_take_effect_batch_by_batch() {
    let full = with_backends(3);
    let cut = with_backends(1);
    assert_ne!(backends_of(&full), backends_of(&cut));
    let swap = ArcSwap::new(full.clone());
    let (stop, batches) = (AtomicBool::new(false), AtomicU64::new(0));
    std::thread::scope(|scope| {
        let running = scope.spawn(|| worker(&swap, &stop, &batches));
        for generation in 1..=SWAPS {
            let target = generation * BATCHES_PER_SNAPSHOT;
            let waited =
                meshpath_testkit::until("the worker's batches", Duration::from_secs(30), || {
                    let done = batches.load(Ordering::Acquire);
                    meshpath_testkit::wait::check(done >= target || running.is_finished(), done)
                });
            if waited.is_err() || running.is_finished() {
                break;
            }
            swap.store(if generation % 2 == 0 {
                full.clone()
            } else {
                cut.clone()
            });
        }
        stop.store(true, Ordering::Release);
        running.join().expect("the worker followed every snapshot");
    });
    assert!(batches.load(Ordering::Acquire) >= SWAPS * BATCHES_PER_SNAPSHOT);
}
