//! The generator and the sink: both ends of the measured path, driven by one thread pinned to the
//! generator's core, so that send and receive timestamps come from one clock. The generator writes
//! the testbed's UDP request frames — 64 bytes on the wire (60 plus the FCS) or larger, the UDP
//! payload grown — round-robin over the flows, each carrying a marker and its send time in the
//! payload; the sink counts the marked frames that leave the node (plain or VXLAN-encapsulated) and,
//! when asked, records their latency. Encrypted, the marker is out of sight: the sink counts
//! WireGuard data messages (UDP 51871, type 4), which only the benchmark's frames become.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use meshpath_dataplane::afxdp::generator::TrafficPort;
use meshpath_dataplane::afxdp::BURST;
use meshpath_dataplane::testbed::Testbed;
use meshpath_dataplane::wire::checksum;

/// Marks the benchmark's frames (anything else the sink sees is the kernel's own chatter).
const MARKER: [u8; 4] = *b"mpb1";
/// The UDP payload of a request frame: Ethernet 14 + IPv4 20 + UDP 8.
const PAYLOAD: usize = 42;
/// The same payload behind the outer Ethernet, IPv4, UDP and VXLAN headers.
const TUNNELLED_PAYLOAD: usize = 50 + PAYLOAD;
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
    pub record_latency: bool,
}

/// What a phase measured.
#[derive(Debug)]
pub struct Measured {
    pub sent: u64,
    pub received: u64,
    /// Of `received`, how many came VXLAN-encapsulated.
    pub tunnelled: u64,
    /// Of `received`, how many came as WireGuard data messages.
    pub encrypted: u64,
    pub seconds: f64,
    /// Send-to-receive times in nanoseconds, if recorded.
    pub latency_ns: Option<Histogram<u64>>,
}

impl Measured {
    pub fn mpps(&self) -> f64 {
        self.received as f64 / self.seconds.max(f64::EPSILON) / 1e6
    }

    pub fn tunnelled_share(&self) -> f64 {
        self.tunnelled as f64 / self.received.max(1) as f64
    }

    pub fn offered_mpps(&self) -> f64 {
        self.sent as f64 / self.seconds.max(f64::EPSILON) / 1e6
    }
}

/// The generator's port (in its namespace), the sink's port (in its own), and the frames to send.
pub struct Traffic {
    generator: TrafficPort,
    sink: TrafficPort,
    frames: Vec<Vec<u8>>,
    epoch: Instant,
}

impl Traffic {
    pub fn new(generator: TrafficPort, sink: TrafficPort, testbed: &Testbed) -> Traffic {
        Traffic {
            generator,
            sink,
            frames: Vec::new(),
            epoch: Instant::now(),
        }
        .with_frames(testbed, MIN_FRAME_LEN)
    }

    /// Sends `testbed`'s requests as frames of `len` bytes (without the FCS) from now on.
    pub fn with_frames(mut self, testbed: &Testbed, len: usize) -> Traffic {
        self.frames = testbed
            .flows
            .iter()
            .map(|flow| {
                let mut frame = vec![0u8; MIN_FRAME_LEN];
                testbed.request(flow, &mut frame);
                let mut frame = grown(frame, len);
                if let Some(marker) = frame.get_mut(PAYLOAD..PAYLOAD + MARKER.len()) {
                    marker.copy_from_slice(&MARKER);
                }
                frame
            })
            .collect();
        self
    }

    /// Runs `phase` on the calling thread (pin it first) and returns its figures.
    pub fn run(&mut self, phase: &Phase) -> anyhow::Result<Measured> {
        let mut latency = phase
            .record_latency
            .then(|| Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3))
            .transpose()?;
        let start = Instant::now();
        let window_start = start + phase.warmup;
        let end = window_start + phase.window;
        let (mut offered, mut sent, mut next_flow) = (0u64, 0u64, 0usize);
        let (mut received, mut tunnelled, mut encrypted) = (0u64, 0u64, 0u64);
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let counting = now >= window_start;
            let budget = match phase.rate_pps {
                Some(rate) => {
                    let due = (rate * now.duration_since(start).as_secs_f64()) as u64;
                    due.saturating_sub(offered).min(BURST as u64) as usize
                }
                None => BURST,
            };
            let stamp = self.stamp(now);
            let frames = &self.frames;
            let n = self.generator.send(budget, |chunk| {
                let template = frames.get(next_flow % frames.len().max(1));
                next_flow = next_flow.wrapping_add(1);
                write_frame(template, stamp, chunk)
            }) as u64;
            offered += n;
            if counting {
                sent += n;
            }
            let arrived_at = self.stamp(Instant::now());
            let (mut got, mut got_tunnelled, mut got_encrypted) = (0, 0, 0);
            self.sink.receive(|frame| {
                if let Some((sent_at, encapsulated)) = send_time(frame) {
                    got += 1;
                    got_tunnelled += u64::from(encapsulated);
                    if let (true, Some(h)) = (counting, latency.as_mut()) {
                        let _ = h.record(arrived_at.saturating_sub(sent_at).max(1));
                    }
                } else if is_wireguard_data(frame) {
                    got += 1;
                    got_encrypted += 1;
                }
            });
            if counting {
                received += got;
                tunnelled += got_tunnelled;
                encrypted += got_encrypted;
            }
        }
        self.drain();
        Ok(Measured {
            sent,
            received,
            tunnelled,
            encrypted,
            seconds: phase.window.as_secs_f64(),
            latency_ns: latency,
        })
    }

    fn drain(&mut self) {
        let until = Instant::now() + DRAIN;
        while Instant::now() < until {
            self.sink.receive(|_| {});
            self.generator.tx_in_flight();
        }
    }

    fn stamp(&self, at: Instant) -> u64 {
        at.duration_since(self.epoch).as_nanos() as u64
    }
}

/// Writes `template` with `stamp` as its send time into `chunk`; 0 if either is missing or short.
fn write_frame(template: Option<&Vec<u8>>, stamp: u64, chunk: &mut [u8]) -> usize {
    let Some(template) = template else {
        return 0;
    };
    let Some(out) = chunk.get_mut(..template.len()) else {
        return 0;
    };
    out.copy_from_slice(template);
    let at = PAYLOAD + MARKER.len();
    if let Some(time) = out.get_mut(at..at + 8) {
        time.copy_from_slice(&stamp.to_be_bytes());
    }
    template.len()
}

/// The testbed's 60-byte IPv4/UDP request grown to `len` bytes: zero payload after its own, the IP
/// and UDP lengths and both checksums written anew (the pipeline checks what a pod sends).
fn grown(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    let len = len.clamp(MIN_FRAME_LEN, 9000);
    frame.resize(len, 0);
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

/// The send time of a benchmark frame and whether it came tunnelled; `None` for anything else.
fn send_time(frame: &[u8]) -> Option<(u64, bool)> {
    [PAYLOAD, TUNNELLED_PAYLOAD].into_iter().find_map(|at| {
        let marker = frame.get(at..at + MARKER.len())?;
        let time = frame.get(at + MARKER.len()..at + MARKER.len() + 8)?;
        let time = u64::from_be_bytes(time.try_into().ok()?);
        (marker == MARKER).then_some((time, at == TUNNELLED_PAYLOAD))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_dataplane::testbed::Scale;
    use proptest::prelude::*;

    fn request_frame(stamp: u64) -> Vec<u8> {
        let testbed = Testbed::new(Scale::TINY);
        let mut template = vec![0u8; MIN_FRAME_LEN];
        testbed.request(&testbed.flows[0], &mut template);
        template[PAYLOAD..PAYLOAD + 4].copy_from_slice(&MARKER);
        let mut chunk = vec![0u8; 2048];
        let len = write_frame(Some(&template), stamp, &mut chunk);
        chunk.truncate(len);
        chunk
    }

    proptest! {
        #[test]
        fn the_send_time_is_read_back_plain_and_behind_vxlan(stamp in any::<u64>()) {
            let frame = request_frame(stamp);
            prop_assert_eq!(send_time(&frame), Some((stamp, false)));
            let parsed = etherparse::SlicedPacket::from_ethernet(&frame).expect("a valid frame");
            prop_assert!(matches!(parsed.transport, Some(etherparse::TransportSlice::Udp(_))));
            let mut tunnelled = vec![0u8; 50];
            tunnelled.extend_from_slice(&frame);
            prop_assert_eq!(send_time(&tunnelled), Some((stamp, true)));
        }

        #[test]
        fn unmarked_or_short_frames_have_no_send_time(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let marked = [PAYLOAD, TUNNELLED_PAYLOAD]
                .iter()
                .any(|&at| bytes.get(at..at + 4) == Some(&MARKER[..]) && bytes.len() >= at + 12);
            prop_assert_eq!(send_time(&bytes).is_some(), marked);
        }
    }

    #[test]
    fn a_grown_frame_is_a_valid_udp_frame_of_that_length() {
        let testbed = Testbed::new(Scale::TINY);
        let mut frame = vec![0u8; MIN_FRAME_LEN];
        testbed.request(&testbed.flows[0], &mut frame);
        let grown = grown(frame, 1396);
        assert_eq!(grown.len(), 1396);
        let parsed = etherparse::SlicedPacket::from_ethernet(&grown).expect("a valid frame");
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
            .unwrap();
        assert_eq!(udp.checksum(), expected);
        assert_eq!(udp.payload().len(), 1396 - 42);
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
        assert_eq!(write_frame(Some(&template), 1, &mut [0u8; 10]), 0);
        assert_eq!(write_frame(None, 1, &mut [0u8; 100]), 0);
    }
}
