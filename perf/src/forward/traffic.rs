//! The generator and the sink: both ends of the measured path, driven by one thread pinned to the
//! generator's core, so that send and receive times come from one clock. The generator writes the
//! testbed's UDP request frames — 64 bytes on the wire (60 plus the FCS) or larger, the UDP payload
//! grown — over the run's templates, each stamped ([`Stamp`]) with its sequence number, the time it
//! was scheduled to leave (at a fixed rate, so a late send shows as latency: no coordinated
//! omission) and its template. The sink holds every frame to what the way must make of it
//! ([`check`]) and counts, by sequence number, the frames of the counted window that arrived, even
//! during the drain after it. Encrypted, the stamp is out of sight: the sink counts WireGuard data
//! messages (UDP 51871, type 4) by arrival time, which only the benchmark's frames become.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use meshpath_dataplane::afxdp::generator::TrafficPort;
use meshpath_dataplane::afxdp::BURST;
use meshpath_dataplane::testbed::{Flow, Testbed};
use meshpath_dataplane::wire::checksum;

use super::check::{check, Expected, Seen, Stamp, Way, Wrong, PAYLOAD, STAMP_LEN};

/// The testbed's request frame, and the smallest this writes.
const MIN_FRAME_LEN: usize = 60;
/// Where a frame's UDP destination port and the first byte of its payload are.
const UDP_DST_PORT: usize = 36;
const UDP_PAYLOAD: usize = 42;
/// WireGuard's port and its data message type.
const WIREGUARD_PORT: u16 = 51871;
const WIREGUARD_DATA: u8 = 4;
/// After a phase the generator stops and the sink drains what is still in flight for this long.
const DRAIN: Duration = Duration::from_millis(100);

/// One measurement: traffic for `warmup` (not counted), then for `window` (counted).
#[derive(Clone, Copy, Debug)]
pub struct Phase {
    pub warmup: Duration,
    pub window: Duration,
    /// Frames per second to offer; `None` sends as fast as the rings take them.
    pub rate_pps: Option<f64>,
    /// New flows per second among them (each a template sent once), meshpath only.
    pub new_flows_pps: f64,
    pub record_latency: bool,
}

/// Frames of the counted window the sink refused, by reason.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Refused {
    pub encapsulation: u64,
    pub vni: u64,
    pub outer_destination: u64,
    pub backend: u64,
    pub macs: u64,
    pub template: u64,
}

impl Refused {
    fn count(&mut self, wrong: Wrong) {
        let slot = match wrong {
            Wrong::Encapsulation => &mut self.encapsulation,
            Wrong::Vni => &mut self.vni,
            Wrong::OuterDestination => &mut self.outer_destination,
            Wrong::Backend => &mut self.backend,
            Wrong::Macs => &mut self.macs,
            Wrong::Template => &mut self.template,
        };
        *slot += 1;
    }

    pub fn total(&self) -> u64 {
        self.encapsulation
            + self.vni
            + self.outer_destination
            + self.backend
            + self.macs
            + self.template
    }
}

/// What a phase measured.
#[derive(Debug)]
pub struct Measured {
    /// Frames the generator sent in the counted window.
    pub sent: u64,
    /// Frames the window's schedule called for that the generator did not send in it (paced only).
    pub generator_behind: u64,
    /// Frames of the window that reached the sink as the way must make them.
    pub received: u64,
    /// Frames of the window that reached the sink wrong.
    pub refused: Refused,
    /// Frames that arrived with a sequence number lower than one seen before.
    pub reordered: u64,
    /// Of `received`, how many came VXLAN-encapsulated.
    pub tunnelled: u64,
    /// WireGuard data messages that arrived in the window.
    pub encrypted: u64,
    pub seconds: f64,
    /// Scheduled-send-to-receive times in nanoseconds, if recorded (empty: no samples).
    pub latency_ns: Option<Histogram<u64>>,
}

impl Measured {
    pub fn mpps(&self) -> f64 {
        (self.received + self.encrypted) as f64 / self.seconds.max(f64::EPSILON) / 1e6
    }

    pub fn offered_mpps(&self) -> f64 {
        self.sent as f64 / self.seconds.max(f64::EPSILON) / 1e6
    }

    /// Frames sent in the window that did not arrive as they must.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received + self.encrypted)
    }

    pub fn loss_ratio(&self) -> f64 {
        self.lost() as f64 / self.sent.max(1) as f64
    }
}

/// The frames a way is measured with: the established flows' templates, then new flows' (each
/// sent once), and what the way must make of every one.
pub struct Templates {
    frames: Vec<Vec<u8>>,
    established: usize,
    expected: Vec<Expected>,
}

impl Templates {
    /// `testbed`'s flows, and `new_flows` flows never seen (other source ports), for `way`, as
    /// frames of `len` bytes without the FCS.
    pub fn new(testbed: &Testbed, way: &Way, new_flows: usize, len: usize) -> Templates {
        let fresh = new_flow_list(testbed, new_flows);
        let flows: Vec<&Flow> = testbed.flows.iter().chain(&fresh).collect();
        let frames = flows
            .iter()
            .map(|flow| {
                let mut frame = vec![0u8; MIN_FRAME_LEN];
                testbed.request(flow, &mut frame);
                grown(frame, len)
            })
            .collect();
        Templates {
            frames,
            established: testbed.flows.len(),
            expected: flows.iter().map(|f| way.expect(testbed, f)).collect(),
        }
    }

    fn new_flows(&self) -> usize {
        self.frames.len() - self.established
    }
}

/// `count` flows of the testbed's pod that it never established: source ports past its own,
/// spread over every service.
fn new_flow_list(testbed: &Testbed, count: usize) -> Vec<Flow> {
    let first_port = testbed
        .flows
        .iter()
        .map(|f| f.src_port)
        .max()
        .unwrap_or(1023) as usize
        + 1;
    let ports = 65_536usize.saturating_sub(first_port).max(1);
    let services = testbed.scale.services.max(1);
    (0..count)
        .map(|k| Flow {
            pod: 0,
            src_port: (first_port + k % ports) as u16,
            service: (k / ports + k * 7) % services,
        })
        .collect()
}

/// The generator's port (in its namespace) and the sink's port (in its own).
pub struct Traffic {
    generator: TrafficPort,
    sink: TrafficPort,
    epoch: Instant,
}

/// The generator's and sink's running counts during a phase.
struct Counts {
    next_seq: u32,
    window: std::ops::Range<u32>,
    highest: Option<u32>,
    received: u64,
    refused: Refused,
    reordered: u64,
    tunnelled: u64,
    encrypted: u64,
}

impl Traffic {
    pub fn new(generator: TrafficPort, sink: TrafficPort) -> Traffic {
        Traffic {
            generator,
            sink,
            epoch: Instant::now(),
        }
    }

    /// Runs `phase` with `templates` on the calling thread (pin it first) and returns its figures.
    pub fn run(&mut self, phase: &Phase, templates: &Templates) -> anyhow::Result<Measured> {
        let mut latency = phase
            .record_latency
            .then(|| Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3))
            .transpose()?;
        let start = Instant::now();
        let window_start = start + phase.warmup;
        let end = window_start + phase.window;
        let start_ns = self.stamp(start);
        let mut counts = Counts {
            next_seq: 0,
            window: u32::MAX..u32::MAX,
            highest: None,
            received: 0,
            refused: Refused::default(),
            reordered: 0,
            tunnelled: 0,
            encrypted: 0,
        };
        let (mut next_flow, mut next_new, mut sent, mut behind) = (0usize, 0usize, 0u64, 0u64);
        let established = templates.established.max(1);
        loop {
            let now = Instant::now();
            let elapsed = now.duration_since(start).as_secs_f64();
            if now >= window_start && counts.window.start == u32::MAX {
                counts.window.start = counts.next_seq;
            }
            if now >= end {
                counts.window.end = counts.next_seq;
                if let Some(rate) = phase.rate_pps {
                    let due = (rate * elapsed) as u64;
                    behind = due.saturating_sub(u64::from(counts.next_seq));
                }
                break;
            }
            let budget = match phase.rate_pps {
                Some(rate) => {
                    let due = (rate * elapsed) as u64;
                    due.saturating_sub(u64::from(counts.next_seq))
                        .min(BURST as u64) as usize
                }
                None => BURST,
            };
            let new_due = (phase.new_flows_pps * elapsed) as usize;
            let now_ns = self.stamp(now);
            let n = self.generator.send(budget, |chunk| {
                let seq = counts.next_seq;
                let template = if next_new < new_due.min(templates.new_flows()) {
                    next_new += 1;
                    established + next_new - 1
                } else {
                    next_flow = (next_flow + 1) % established;
                    next_flow
                };
                let scheduled_ns = match phase.rate_pps {
                    Some(rate) => start_ns + (f64::from(seq) / rate * 1e9) as u64,
                    None => now_ns,
                };
                let stamp = Stamp {
                    seq,
                    scheduled_ns,
                    template: template as u32,
                };
                let len = write_frame(templates.frames.get(template), stamp, chunk);
                if len > 0 {
                    counts.next_seq += 1;
                }
                len
            }) as u64;
            if counts.window.start != u32::MAX {
                sent += n;
            }
            self.receive(
                &mut counts,
                templates,
                latency.as_mut(),
                now >= window_start,
            );
        }
        self.drain(&mut counts, templates, latency.as_mut());
        Ok(Measured {
            sent,
            generator_behind: behind,
            received: counts.received,
            refused: counts.refused,
            reordered: counts.reordered,
            tunnelled: counts.tunnelled,
            encrypted: counts.encrypted,
            seconds: phase.window.as_secs_f64(),
            latency_ns: latency.filter(|h| !h.is_empty()),
        })
    }

    /// One burst at the sink: each frame checked, the window's valid ones counted (by sequence
    /// number), and encrypted ones counted while `in_window`.
    fn receive(
        &mut self,
        counts: &mut Counts,
        templates: &Templates,
        mut latency: Option<&mut Histogram<u64>>,
        in_window: bool,
    ) {
        let arrived_at = self.stamp(Instant::now());
        self.sink
            .receive(|frame| match check(frame, &templates.expected) {
                Seen::Valid(stamp) => {
                    if counts.highest.is_some_and(|h| stamp.seq <= h) {
                        counts.reordered += 1;
                    }
                    counts.highest = counts.highest.max(Some(stamp.seq));
                    if counts.window.contains(&stamp.seq)
                        || (counts.window.end == u32::MAX && stamp.seq >= counts.window.start)
                    {
                        counts.received += 1;
                        counts.tunnelled += u64::from(
                            frame.len() > templates.frames[stamp.template as usize].len(),
                        );
                        if let Some(h) = latency.as_deref_mut() {
                            let _ = h.record(arrived_at.saturating_sub(stamp.scheduled_ns).max(1));
                        }
                    }
                }
                Seen::Wrong(wrong) => {
                    if in_window {
                        counts.refused.count(wrong);
                    }
                }
                Seen::Foreign => {
                    if in_window && is_wireguard_data(frame) {
                        counts.encrypted += 1;
                    }
                }
            });
    }

    fn drain(
        &mut self,
        counts: &mut Counts,
        templates: &Templates,
        mut latency: Option<&mut Histogram<u64>>,
    ) {
        let until = Instant::now() + DRAIN;
        while Instant::now() < until {
            self.receive(counts, templates, latency.as_deref_mut(), false);
            self.generator.tx_in_flight();
        }
    }

    fn stamp(&self, at: Instant) -> u64 {
        at.duration_since(self.epoch).as_nanos() as u64
    }
}

/// Writes `template` stamped with `stamp` into `chunk`, its UDP checksum updated for the stamp;
/// 0 if either is missing or short.
fn write_frame(template: Option<&Vec<u8>>, stamp: Stamp, chunk: &mut [u8]) -> usize {
    let Some(template) = template else {
        return 0;
    };
    let Some(out) = chunk.get_mut(..template.len()) else {
        return 0;
    };
    out.copy_from_slice(template);
    let Some(stamped) = out.get_mut(PAYLOAD..PAYLOAD + STAMP_LEN) else {
        return 0;
    };
    stamp.write(stamped);
    // The template's checksum covers a zero stamp: add the stamp's words to its sum (RFC 1624).
    let added = checksum::data(stamped);
    let old = u16::from_be_bytes([out[40], out[41]]);
    let sum = checksum::combine(&[!old, added]);
    out[40..42].copy_from_slice(&checksum::udp_nonzero(checksum::finish(sum)).to_be_bytes());
    template.len()
}

/// The testbed's 60-byte IPv4/UDP request grown to `len` bytes, its payload zero (where the stamp
/// goes, too), the IP and UDP lengths and both checksums written anew (the pipeline checks what a
/// pod sends).
fn grown(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    let len = len.clamp(MIN_FRAME_LEN, 9000);
    frame.resize(len, 0);
    frame[PAYLOAD..].fill(0);
    let ip_len = (len - 14) as u16;
    frame[16..18].copy_from_slice(&ip_len.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let ip_sum = checksum::finish(checksum::data(&frame[14..34]));
    frame[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    let udp_len = (len - 34) as u16;
    frame[38..40].copy_from_slice(&udp_len.to_be_bytes());
    frame[40..42].copy_from_slice(&[0, 0]);
    let mut src = [0u8; 4];
    let mut dst = [0u8; 4];
    src.copy_from_slice(&frame[26..30]);
    dst.copy_from_slice(&frame[30..34]);
    let sum = checksum::combine(&[
        checksum::pseudo_header_v4(src, dst, 17, udp_len),
        checksum::data(&frame[34..]),
    ]);
    let udp_sum = checksum::udp_nonzero(checksum::finish(sum));
    frame[40..42].copy_from_slice(&udp_sum.to_be_bytes());
    frame
}

/// A WireGuard data message: what the benchmark's frames become under encryption.
fn is_wireguard_data(frame: &[u8]) -> bool {
    let port = frame.get(UDP_DST_PORT..UDP_DST_PORT + 2);
    port == Some(&WIREGUARD_PORT.to_be_bytes()[..])
        && frame.get(UDP_PAYLOAD) == Some(&WIREGUARD_DATA)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_dataplane::testbed::Scale;
    use proptest::prelude::*;

    fn stamped(stamp: Stamp, len: usize) -> Vec<u8> {
        let testbed = Testbed::new(Scale::TINY);
        let mut template = vec![0u8; MIN_FRAME_LEN];
        testbed.request(&testbed.flows[0], &mut template);
        let template = grown(template, len);
        let mut chunk = vec![0u8; 2048];
        let n = write_frame(Some(&template), stamp, &mut chunk);
        chunk.truncate(n);
        chunk
    }

    fn udp_checksum_holds(frame: &[u8]) {
        let parsed = etherparse::SlicedPacket::from_ethernet(frame).expect("a valid frame");
        let (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Udp(udp))) =
            (parsed.net, parsed.transport)
        else {
            panic!("not IPv4/UDP")
        };
        let header = ip.header().to_header();
        assert_eq!(header.calc_header_checksum(), header.header_checksum);
        let expected = udp
            .to_header()
            .calc_checksum_ipv4(&header, udp.payload())
            .expect("a checksum");
        assert_eq!(udp.checksum(), expected);
    }

    proptest! {
        #[test]
        fn a_stamp_is_read_back_and_the_checksum_still_holds(
            seq in any::<u32>(), scheduled_ns in any::<u64>(), template in any::<u32>(),
        ) {
            let stamp = Stamp { seq, scheduled_ns, template };
            let frame = stamped(stamp, MIN_FRAME_LEN);
            prop_assert_eq!(frame.len(), 60);
            prop_assert_eq!(Stamp::read(&frame[PAYLOAD..]), Some(stamp));
            udp_checksum_holds(&frame);
        }

        #[test]
        fn unmarked_payloads_have_no_stamp(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let marked = bytes.len() >= STAMP_LEN && bytes[..2] == super::super::check::MARKER;
            prop_assert_eq!(Stamp::read(&bytes).is_some(), marked);
        }
    }

    #[test]
    fn a_grown_frame_is_a_valid_udp_frame_of_that_length() {
        let stamp = Stamp {
            seq: 7,
            scheduled_ns: 1,
            template: 0,
        };
        let frame = stamped(stamp, 1396);
        assert_eq!(frame.len(), 1396);
        udp_checksum_holds(&frame);
    }

    #[test]
    fn wireguard_data_messages_are_counted_and_nothing_else() {
        let mut frame = vec![0u8; 100];
        frame[UDP_DST_PORT..UDP_DST_PORT + 2].copy_from_slice(&51871u16.to_be_bytes());
        frame[UDP_PAYLOAD] = 4;
        assert!(is_wireguard_data(&frame));
        frame[UDP_PAYLOAD] = 1;
        assert!(!is_wireguard_data(&frame), "a handshake initiation");
        assert!(!is_wireguard_data(&frame[..20]));
    }

    #[test]
    fn a_chunk_too_short_for_the_frame_gets_nothing() {
        let template = vec![0u8; MIN_FRAME_LEN];
        let stamp = Stamp {
            seq: 0,
            scheduled_ns: 0,
            template: 0,
        };
        assert_eq!(write_frame(Some(&template), stamp, &mut [0u8; 10]), 0);
        assert_eq!(write_frame(None, stamp, &mut [0u8; 100]), 0);
    }

    #[test]
    fn new_flows_are_none_of_the_established_and_all_distinct() {
        let testbed = Testbed::new(Scale::TINY);
        let fresh = new_flow_list(&testbed, 5000);
        let key = |f: &Flow| (f.pod, f.src_port, f.service);
        let established: std::collections::HashSet<_> = testbed.flows.iter().map(key).collect();
        let distinct: std::collections::HashSet<_> = fresh.iter().map(key).collect();
        assert_eq!(distinct.len(), fresh.len());
        assert!(distinct.is_disjoint(&established));
    }
}
