//! Way (d): the kernel-native reference. A minimal XDP program (`perf/bpf/encap.bpf.c`) on the node's
//! pod veth applies, per established flow, the decision meshpath's pipeline made for that flow's
//! request — the backend (address and port) and the tunnel headers — as meshpath applies it: inner
//! destination rewritten with its checksums, inner TTL decremented, outer Ethernet, IPv4, UDP and
//! VXLAN headers prepended with this frame's lengths and checksum, out of the uplink through a
//! devmap. It does no policy, no service selection and no conntrack: it is what the kernel needs
//! at the least to put the same bytes on the wire, a benchmark reference and never a dataplane.
//!
//! The decisions are taken from meshpath itself ([`decisions`]): every flow's request run once
//! through the pipeline, its output read back into the program's `flows` map. So the reference and
//! meshpath agree by construction on what to do, and the sink holds (d)'s frames to (c)'s checks.

use std::os::fd::{AsFd, OwnedFd};

use anyhow::{bail, ensure, Context};
use libbpf_rs::{MapCore, MapFlags, MapHandle, ObjectBuilder, Xdp, XdpFlags};
use meshpath_dataplane::frame::HEADROOM;
use meshpath_dataplane::pipeline;
use meshpath_dataplane::testbed::{self, Testbed};
use meshpath_dataplane::{Frame, Verdict};

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/encap.bpf.o"));

/// Matches `MAX_FLOWS` in perf/bpf/encap.bpf.c.
pub const MAX_FLOWS: usize = 131_072;
/// Outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8.
const OUTER_LEN: usize = 50;
const ETHERNET_LEN: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const VXLAN_PORT: [u8; 2] = 8472u16.to_be_bytes();
/// Where the fields the program writes per frame sit in the outer headers: the IPv4 total length
/// and checksum, the UDP length.
const OUTER_IP_LENGTH: usize = 16;
const OUTER_IP_CHECKSUM: usize = 24;
const OUTER_UDP_LENGTH: usize = 38;
const OUTER_UDP_DST_PORT: usize = 36;

/// `struct flow_key` of the program: source and destination address, ports, protocol, padding.
pub type FlowKey = [u8; 16];
/// `struct flow_decision`: the outer headers (per-frame fields zero), backend port, backend address.
pub type FlowDecision = [u8; 56];

/// The flow key of an unencapsulated IPv4 TCP or UDP frame without options.
pub fn flow_key(frame: &[u8]) -> Option<FlowKey> {
    let ip = frame.get(ETHERNET_LEN..ETHERNET_LEN + 24)?;
    let protocol = ip[9];
    let wanted = frame.get(12..14)? == ETHERTYPE_IPV4 && ip[0] == 0x45;
    if !wanted || !(protocol == 6 || protocol == 17) {
        return None;
    }
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&ip[12..20]);
    key[8..12].copy_from_slice(&ip[20..24]);
    key[12] = protocol;
    Some(key)
}

/// What meshpath did to `request`, read from its `output`: the outer VXLAN-over-IPv4 headers
/// (per-frame fields zeroed) and the inner destination it translated to. `None` if `output` is not
/// `request` encapsulated so.
pub fn decision(request: &[u8], output: &[u8]) -> Option<(FlowKey, FlowDecision)> {
    let key = flow_key(request)?;
    let tunnelled = output.len() == request.len() + OUTER_LEN
        && output.get(12..14)? == ETHERTYPE_IPV4
        && output.get(ETHERNET_LEN)? == &0x45
        && output.get(OUTER_UDP_DST_PORT..OUTER_UDP_DST_PORT + 2)? == VXLAN_PORT;
    let inner = output.get(OUTER_LEN..)?;
    if !tunnelled || flow_key(inner).map(|k| k[..4] != key[..4] || k[12] != key[12])? {
        return None;
    }
    let mut value = [0u8; 56];
    value[..OUTER_LEN].copy_from_slice(&output[..OUTER_LEN]);
    for at in [OUTER_IP_LENGTH, OUTER_IP_CHECKSUM, OUTER_UDP_LENGTH] {
        value[at..at + 2].fill(0);
    }
    value[50..52].copy_from_slice(inner.get(36..38)?);
    value[52..56].copy_from_slice(inner.get(30..34)?);
    Some((key, value))
}

/// Every established flow's decision: its request run through meshpath's pipeline.
pub fn decisions(testbed: &Testbed) -> anyhow::Result<Vec<(FlowKey, FlowDecision)>> {
    ensure!(
        testbed.flows.len() <= MAX_FLOWS,
        "{} flows: the reference holds at most {MAX_FLOWS}",
        testbed.flows.len()
    );
    let mut state = testbed.warmed_worker(2 * testbed.flows.len() + 1024);
    let mut buf = vec![0u8; 2048];
    testbed
        .flows
        .iter()
        .map(|flow| {
            let mut request = [0u8; 60];
            let len = testbed.request(flow, &mut request);
            buf[HEADROOM..HEADROOM + len].copy_from_slice(&request[..len]);
            let mut frame = Frame::new(&mut buf, HEADROOM, len, testbed::pod_port(flow.pod))
                .context("a frame in the buffer")?;
            let verdict = pipeline::process_one(&testbed.tables, &mut state, 0, &mut frame);
            if verdict != Verdict::Transmit(testbed::UPLINK) {
                bail!("meshpath's verdict on {flow:?} is {verdict:?}, not the uplink");
            }
            decision(&request[..len], frame.data())
                .with_context(|| format!("meshpath's frame for {flow:?} is no VXLAN over IPv4"))
        })
        .collect()
}

/// Drop and pass counts of the program, summed over CPUs (slots of `counts`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub redirected: u64,
    /// Frames of no known flow, passed to the kernel.
    pub no_flow: u64,
    /// TTL expiring, or no headroom for the outer headers.
    pub dropped: u64,
}

impl Counts {
    pub fn since(self, before: Counts) -> Counts {
        Counts {
            redirected: self.redirected.saturating_sub(before.redirected),
            no_flow: self.no_flow.saturating_sub(before.no_flow),
            dropped: self.dropped.saturating_sub(before.dropped),
        }
    }
}

/// The program loaded with its flows' decisions, ready to attach.
pub struct XdpReference {
    prog: OwnedFd,
    uplink: MapHandle,
    counts: MapHandle,
}

impl XdpReference {
    pub fn load(decisions: &[(FlowKey, FlowDecision)]) -> anyhow::Result<XdpReference> {
        ensure!(
            decisions.len() <= MAX_FLOWS,
            "{} decisions: the map holds {MAX_FLOWS}",
            decisions.len()
        );
        let object = ObjectBuilder::default()
            .open_memory(OBJECT)
            .and_then(|open| open.load())
            .context("loading the reference XDP program")?;
        let map = |name: &str| -> anyhow::Result<MapHandle> {
            let map = object
                .maps()
                .find(|m| m.name() == name)
                .with_context(|| format!("the reference program has no map {name}"))?;
            MapHandle::try_from(&map).with_context(|| format!("map {name}"))
        };
        let flows = map("flows")?;
        for (key, value) in decisions {
            flows
                .update(key, value, MapFlags::ANY)
                .context("a flow's decision into the reference's map")?;
        }
        let prog = object
            .progs()
            .next()
            .context("the reference object has no program")?
            .as_fd()
            .try_clone_to_owned()?;
        Ok(XdpReference {
            prog,
            uplink: map("uplink")?,
            counts: map("counts")?,
        })
    }

    /// Attaches the program in native mode to `pod` (an interface index of the calling thread's
    /// namespace), redirecting to `uplink`; native mode or an error.
    pub fn attach(&self, pod: u32, uplink: u32) -> anyhow::Result<Attached> {
        self.uplink
            .update(&0u32.to_ne_bytes(), &uplink.to_ne_bytes(), MapFlags::ANY)
            .context("the uplink into the reference's devmap")?;
        let ifindex = i32::try_from(pod).context("interface index")?;
        Xdp::new(self.prog.as_fd())
            .attach(ifindex, XdpFlags::DRV_MODE)
            .context(
                "attaching the reference XDP program in native mode (the benchmark needs native XDP)",
            )?;
        Ok(Attached {
            prog: self.prog.try_clone()?,
            ifindex,
        })
    }

    pub fn counts(&self) -> anyhow::Result<Counts> {
        let slot = |i: u32| -> anyhow::Result<u64> {
            let per_cpu = self
                .counts
                .lookup_percpu(&i.to_ne_bytes(), MapFlags::ANY)
                .context("reading the reference's counters")?
                .unwrap_or_default();
            Ok(per_cpu
                .iter()
                .filter_map(|v| v.get(..8)?.try_into().ok())
                .map(u64::from_ne_bytes)
                .sum())
        };
        Ok(Counts {
            redirected: slot(0)?,
            no_flow: slot(1)?,
            dropped: slot(2)?,
        })
    }
}

/// The program attached to the pod veth; [`Attached::detach`] in the same namespace removes it.
pub struct Attached {
    prog: OwnedFd,
    ifindex: i32,
}

impl Attached {
    pub fn detach(self) -> anyhow::Result<()> {
        Xdp::new(self.prog.as_fd())
            .detach(self.ifindex, XdpFlags::DRV_MODE)
            .context("detaching the reference XDP program")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_dataplane::testbed::Scale;

    fn tiny() -> Testbed {
        Testbed::new(Scale {
            local_pods: 1,
            ..Scale::TINY
        })
    }

    #[test]
    fn a_decision_is_meshpaths_outer_headers_and_backend() {
        let testbed = tiny();
        let decisions = decisions(&testbed).expect("meshpath tunnels every flow");
        assert_eq!(decisions.len(), testbed.flows.len());
        let flow = &testbed.flows[1];
        let mut request = [0u8; 60];
        testbed.request(flow, &mut request);
        let (key, value) = decisions[1];
        assert_eq!(Some(key), flow_key(&request));
        let backend = testbed.backend_of(flow);
        assert_eq!(value[52..56], testbed::remote_ip(backend).octets());
        assert_eq!(value[50..52], testbed::BACKEND_PORT.to_be_bytes());
        assert_eq!(value[30..34], testbed::remote_node(backend).octets());
        assert_eq!(value[OUTER_IP_CHECKSUM..OUTER_IP_CHECKSUM + 2], [0, 0]);
    }

    #[test]
    fn an_output_that_is_not_the_request_tunnelled_gives_no_decision() {
        let testbed = tiny();
        let mut request = [0u8; 60];
        testbed.request(&testbed.flows[0], &mut request);
        assert_eq!(decision(&request, &request), None, "not encapsulated");
        let mut output = vec![0u8; 110];
        output[12..14].copy_from_slice(&ETHERTYPE_IPV4);
        output[14] = 0x45;
        output[36..38].copy_from_slice(&VXLAN_PORT);
        output[50..].copy_from_slice(&request);
        assert!(decision(&request, &output).is_some());
        output[50 + 26] ^= 1;
        assert_eq!(decision(&request, &output), None, "another inner source");
        assert_eq!(decision(&request, &output[..100]), None, "truncated");
        assert_eq!(flow_key(&request[..30]), None);
    }
}
