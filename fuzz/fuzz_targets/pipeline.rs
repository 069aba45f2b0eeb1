//! The pipeline's entry point on arbitrary bytes, on any port of a small node with pods, remote
//! endpoints, services, policy and live flows: it must never panic, must give every frame one verdict,
//! and must count every frame once.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshpath_dataplane::frame::HEADROOM;
use meshpath_dataplane::pipeline::{self, Verdict};
use meshpath_dataplane::testbed::{Scale, Testbed};
use meshpath_dataplane::{Frame, PortId};

fn testbed() -> &'static Testbed {
    static BED: OnceLock<Testbed> = OnceLock::new();
    BED.get_or_init(|| Testbed::new(Scale::TINY))
}

fuzz_target!(|input: &[u8]| {
    let Some((&port, bytes)) = input.split_first() else {
        return;
    };
    let bed = testbed();
    let mut state = bed.warmed_worker(64);
    let before = state.counters.received.packets;
    let mut buf = vec![0u8; HEADROOM + bytes.len() + 64];
    buf[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
    let port = PortId(u16::from(port % 4));
    let Some(mut frame) = Frame::new(&mut buf, HEADROOM, bytes.len(), port) else {
        return;
    };
    let verdict = pipeline::process_one(&bed.tables, &mut state, 1, &mut frame);
    let counters = &state.counters;
    assert_eq!(counters.received.packets, before + 1);
    if let Verdict::Transmit(_) = verdict {
        assert!(frame.len() >= 14, "a transmitted frame has an Ethernet header");
    }
});
