//! What the sink holds every frame to, per way: a frame counts for a way only if it left the node as
//! that way makes it — for meshpath VXLAN to the backend's node with the sender's identity as VNI and
//! the backend as inner destination; for the kernel its VXLAN device's VNI and remote with the
//! frontend untouched; for the bare MAC swap unencapsulated with its MACs swapped. So a frame the
//! kernel forwarded while meshpath should have cannot count as meshpath's.
//!
//! Every benchmark frame carries in its UDP payload a marker, its sequence number, its scheduled
//! send time and the index of its template (which names its flow): [`Stamp`].

use meshpath_dataplane::testbed::{self, Flow, Testbed};
use meshpath_dataplane::Addr;

/// Marks the benchmark's frames (anything else the sink sees is the kernel's own chatter).
pub const MARKER: [u8; 2] = *b"mp";
/// The UDP payload of an unencapsulated frame: Ethernet 14 + IPv4 20 + UDP 8.
pub const PAYLOAD: usize = 42;
/// What the stamp takes of the payload: marker 2, sequence 4, send time 8, template 4. A 60-byte
/// frame (64 on the wire) has 18 bytes of payload.
pub const STAMP_LEN: usize = 18;
/// The kernel's VXLAN device in the benchmark's node (see `lab`).
pub const KERNEL_VNI: u32 = 42;
pub const KERNEL_REMOTE: [u8; 4] = [198, 18, 2, 1];
const VXLAN_PORT: u16 = 8472;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];

/// The stamp a benchmark frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u32,
    /// Nanoseconds since the run's epoch at which the frame was scheduled to leave.
    pub scheduled_ns: u64,
    pub template: u32,
}

impl Stamp {
    pub fn write(&self, payload: &mut [u8]) -> bool {
        let Some(out) = payload.get_mut(..STAMP_LEN) else {
            return false;
        };
        out[..2].copy_from_slice(&MARKER);
        out[2..6].copy_from_slice(&self.seq.to_be_bytes());
        out[6..14].copy_from_slice(&self.scheduled_ns.to_be_bytes());
        out[14..18].copy_from_slice(&self.template.to_be_bytes());
        true
    }

    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let s = payload.get(..STAMP_LEN)?;
        (s[..2] == MARKER).then(|| Stamp {
            seq: u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            scheduled_ns: u64::from_be_bytes([s[6], s[7], s[8], s[9], s[10], s[11], s[12], s[13]]),
            template: u32::from_be_bytes([s[14], s[15], s[16], s[17]]),
        })
    }
}

/// How a way must send a template's frame out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    /// `(dst, src)` MACs of an unencapsulated frame.
    pub macs: Option<([u8; 6], [u8; 6])>,
    /// VXLAN's outer destination and VNI; `None`: unencapsulated.
    pub outer: Option<([u8; 4], u32)>,
    pub inner_dst: [u8; 4],
    pub inner_dst_port: u16,
}

/// Why a benchmark frame did not count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wrong {
    /// Encapsulated where it must not be, or the other way round.
    Encapsulation,
    Vni,
    OuterDestination,
    /// Another inner destination (address or port): another backend, or none translated.
    Backend,
    Macs,
    /// A template index the run never sent.
    Template,
}

/// What the sink made of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not a benchmark frame.
    Foreign,
    Valid(Stamp),
    Wrong(Wrong),
}

/// The ways and what each must do to every template.
pub enum Way {
    MacSwap,
    Kernel,
    /// meshpath: the VNI is the sending pod's identity.
    Meshpath {
        vni: u32,
    },
}

impl Way {
    pub fn meshpath(testbed: &Testbed) -> Way {
        let pod = Addr::from(testbed::pod_ip(0));
        let vni = testbed
            .tables
            .endpoints
            .by_addr(pod)
            .map_or(0, |e| e.identity.get());
        Way::Meshpath { vni }
    }

    /// What this way must make of `flow`'s request.
    pub fn expect(&self, testbed: &Testbed, flow: &Flow) -> Expected {
        let fe = testbed::frontend(flow.service);
        let frontend = fe.addr.v4_bits().unwrap_or(0).to_be_bytes();
        match self {
            Way::MacSwap => Expected {
                macs: Some((testbed::pod_mac(flow.pod), testbed::GATEWAY_MAC)),
                outer: None,
                inner_dst: frontend,
                inner_dst_port: fe.port,
            },
            Way::Kernel => Expected {
                macs: None,
                outer: Some((KERNEL_REMOTE, KERNEL_VNI)),
                inner_dst: frontend,
                inner_dst_port: fe.port,
            },
            Way::Meshpath { vni } => {
                let backend = testbed.backend_of(flow);
                Expected {
                    macs: None,
                    outer: Some((testbed::remote_node(backend).octets(), *vni)),
                    inner_dst: testbed::remote_ip(backend).octets(),
                    inner_dst_port: testbed::BACKEND_PORT,
                }
            }
        }
    }
}

/// The parts of a frame the checks read.
struct Read<'a> {
    macs: ([u8; 6], [u8; 6]),
    outer: Option<([u8; 4], u32)>,
    inner_dst: [u8; 4],
    inner_dst_port: u16,
    payload: &'a [u8],
}

/// An IPv4 packet's UDP header and payload at `at` (an Ethernet header): (dst address, UDP at).
fn ipv4_udp(frame: &[u8], at: usize) -> Option<([u8; 4], usize)> {
    if frame.get(at + 12..at + 14)? != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = at + 14;
    let ihl = usize::from(frame.get(ip)? & 0x0f) * 4;
    if ihl < 20 || *frame.get(ip + 9)? != 17 {
        return None;
    }
    let dst = frame.get(ip + 16..ip + 20)?.try_into().ok()?;
    Some((dst, ip + ihl))
}

fn read(frame: &[u8]) -> Option<Read<'_>> {
    let (dst, udp) = ipv4_udp(frame, 0)?;
    let port = |at: usize| Some(u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?));
    let (outer, inner_at) = if port(udp + 2)? == VXLAN_PORT {
        let vni = frame.get(udp + 12..udp + 15)?;
        let vni = u32::from_be_bytes([0, vni[0], vni[1], vni[2]]);
        (Some((dst, vni)), udp + 16)
    } else {
        (None, 0)
    };
    let (inner_dst, inner_udp) = match outer {
        Some(_) => ipv4_udp(frame, inner_at)?,
        None => (dst, udp),
    };
    Some(Read {
        macs: (
            frame.get(inner_at..inner_at + 6)?.try_into().ok()?,
            frame.get(inner_at + 6..inner_at + 12)?.try_into().ok()?,
        ),
        outer,
        inner_dst,
        inner_dst_port: port(inner_udp + 2)?,
        payload: frame.get(inner_udp + 8..)?,
    })
}

/// Holds `frame` to `expected[template]`.
pub fn check(frame: &[u8], expected: &[Expected]) -> Seen {
    let Some(read) = read(frame) else {
        return Seen::Foreign;
    };
    let Some(stamp) = Stamp::read(read.payload) else {
        return Seen::Foreign;
    };
    let Some(want) = expected.get(stamp.template as usize) else {
        return Seen::Wrong(Wrong::Template);
    };
    let wrong = match (read.outer, want.outer) {
        (None, Some(_)) | (Some(_), None) => Some(Wrong::Encapsulation),
        (Some((_, vni)), Some((_, want_vni))) if vni != want_vni => Some(Wrong::Vni),
        (Some((dst, _)), Some((want_dst, _))) if dst != want_dst => Some(Wrong::OuterDestination),
        _ if (read.inner_dst, read.inner_dst_port) != (want.inner_dst, want.inner_dst_port) => {
            Some(Wrong::Backend)
        }
        _ if want.macs.is_some_and(|m| m != read.macs) => Some(Wrong::Macs),
        _ => None,
    };
    wrong.map_or(Seen::Valid(stamp), Seen::Wrong)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_dataplane::frame::HEADROOM;
    use meshpath_dataplane::pipeline::{self, Verdict};
    use meshpath_dataplane::testbed::Scale;
    use meshpath_dataplane::Frame;
    use proptest::prelude::*;

    const STAMP: Stamp = Stamp {
        seq: 41,
        scheduled_ns: 123_456,
        template: 1,
    };

    /// Flow 1's request, stamped, as the pod sends it.
    fn request(testbed: &Testbed) -> Vec<u8> {
        let mut frame = vec![0u8; 60];
        testbed.request(&testbed.flows[1], &mut frame);
        assert!(STAMP.write(&mut frame[PAYLOAD..]));
        frame
    }

    /// The same request after meshpath's pipeline: NAT to a backend, VXLAN to its node.
    fn through_meshpath(testbed: &Testbed) -> Vec<u8> {
        let mut state = testbed.warmed_worker(1024);
        let bytes = request(testbed);
        let mut buf = vec![0u8; 2048];
        buf[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(&bytes);
        let port = testbed::pod_port(0);
        let mut frame = Frame::new(&mut buf, HEADROOM, bytes.len(), port).expect("a frame");
        let verdict = pipeline::process_one(&testbed.tables, &mut state, 0, &mut frame);
        assert_eq!(verdict, Verdict::Transmit(testbed::UPLINK));
        frame.data().to_vec()
    }

    fn expected(testbed: &Testbed, way: &Way) -> Vec<Expected> {
        testbed
            .flows
            .iter()
            .map(|f| way.expect(testbed, f))
            .collect()
    }

    fn tiny() -> Testbed {
        Testbed::new(Scale {
            local_pods: 1,
            ..Scale::TINY
        })
    }

    #[test]
    fn meshpaths_frame_counts_for_meshpath_and_for_nothing_else() {
        let testbed = tiny();
        let frame = through_meshpath(&testbed);
        let meshpath = expected(&testbed, &Way::meshpath(&testbed));
        assert_eq!(check(&frame, &meshpath), Seen::Valid(STAMP));
        assert_eq!(
            check(&frame, &expected(&testbed, &Way::Kernel)),
            Seen::Wrong(Wrong::Vni)
        );
        assert_eq!(
            check(&frame, &expected(&testbed, &Way::MacSwap)),
            Seen::Wrong(Wrong::Encapsulation)
        );
    }

    #[test]
    fn a_frame_to_another_node_backend_or_identity_is_refused() {
        let testbed = tiny();
        let frame = through_meshpath(&testbed);
        let meshpath = expected(&testbed, &Way::meshpath(&testbed));
        let mut other = meshpath.clone();
        other[1].outer = other[1].outer.map(|(_, vni)| ([198, 18, 9, 9], vni));
        assert_eq!(check(&frame, &other), Seen::Wrong(Wrong::OuterDestination));
        let mut other = meshpath.clone();
        other[1].inner_dst = [100, 99, 0, 1];
        assert_eq!(check(&frame, &other), Seen::Wrong(Wrong::Backend));
        assert_eq!(
            check(&frame, &meshpath[..1]),
            Seen::Wrong(Wrong::Template),
            "a template the run never sent"
        );
    }

    #[test]
    fn the_mac_swap_counts_only_with_its_macs_swapped() {
        let testbed = tiny();
        let mut frame = request(&testbed);
        let swap = expected(&testbed, &Way::MacSwap);
        assert_eq!(check(&frame, &swap), Seen::Wrong(Wrong::Macs));
        let (dst, src) = frame.split_at_mut(6);
        dst.swap_with_slice(&mut src[..6]);
        assert_eq!(check(&frame, &swap), Seen::Valid(STAMP));
        assert_eq!(
            check(&frame, &expected(&testbed, &Way::Kernel)),
            Seen::Wrong(Wrong::Encapsulation),
            "the kernel's way encapsulates"
        );
    }

    #[test]
    fn unmarked_frames_are_foreign() {
        let testbed = tiny();
        let mut frame = request(&testbed);
        frame[PAYLOAD] = b'x';
        assert_eq!(
            check(&frame, &expected(&testbed, &Way::MacSwap)),
            Seen::Foreign
        );
        assert_eq!(check(&frame[..30], &[]), Seen::Foreign);
    }

    proptest! {
        #[test]
        fn any_bytes_are_checked_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
            let testbed = tiny();
            let _ = check(&bytes, &expected(&testbed, &Way::meshpath(&testbed)));
        }
    }
}
