//! The demo's routing report: what the agents put on the fabric while x-wing calls rebel-base in both
//! clusters (step 1). tcpdump listens on every node's port of the fabric, inbound — each frame once,
//! as the node that sent it sent it — and each frame between pods (plain), between nodes on a tunnel
//! port (encapsulated) or on WireGuard's is counted as inside one cluster or across two. The frames'
//! bytes are searched for the HTTP the pods exchange: with encryption on, none may be seen in clear.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::scene::Scene;
use super::vni::{Identities, IdentityInVni};
use crate::capture::Capture;
use crate::mesh::{Encryption, MeshOptions, Routing, Tunnel};

/// What every request and answer of the demo carries (`GET / HTTP/1.1`, `HTTP/1.0 200 OK`): seen on
/// the fabric, the pods' payload was in clear.
const PAYLOAD_MARKER: &str = "HTTP/1.";

/// How the demo's agents routed, and what the capture saw of it.
#[derive(Debug, Serialize)]
pub struct RoutingReport {
    pub mode: Routing,
    pub tunnel: Tunnel,
    /// Whether pod traffic between nodes of one cluster was encapsulated: `true` when every such
    /// frame was, `false` when none was, `null` when the capture saw none or both kinds.
    pub intra_cluster_encapsulated: Option<bool>,
    /// The same for pod traffic between clusters.
    pub cross_cluster_encapsulated: Option<bool>,
    pub captured: Captured,
    pub identity_in_vni: IdentityInVni,
}

/// What the capture says of the encryption between nodes (`meshpath demo --encrypt`).
#[derive(Debug, Serialize)]
pub struct EncryptionReport {
    pub mode: Encryption,
    /// Whether the capture saw the pods' HTTP in any frame's bytes.
    pub payload_seen_in_clear: bool,
    /// Whether everything between nodes and pods was WireGuard (and some was): no plain pod frame, no
    /// tunnel frame in clear.
    pub only_wireguard_between_nodes: bool,
}

/// The frames the capture counted.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Captured {
    pub intra_cluster: Frames,
    pub cross_cluster: Frames,
    /// Frames whose bytes held the pods' HTTP.
    pub payload_in_clear: u64,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Frames {
    /// Pod to pod, un-encapsulated.
    pub plain: u64,
    /// Node to node on UDP 8472.
    pub vxlan: u64,
    /// Node to node on UDP 6081.
    pub geneve: u64,
    /// Node to node on UDP 51871: WireGuard, whatever it carries inside.
    pub wireguard: u64,
}

impl Frames {
    /// `Some(true)`: all encapsulated; `Some(false)`: all plain; `None`: none seen, or both kinds (or
    /// only WireGuard, inside which the capture cannot look).
    fn encapsulated(&self) -> Option<bool> {
        let tunnelled = self.vxlan + self.geneve;
        match (self.plain, tunnelled) {
            (0, 0) => None,
            (0, _) => Some(true),
            (_, 0) => Some(false),
            _ => None,
        }
    }
}

/// A capture on every node's fabric port.
pub struct FabricCapture(Vec<Capture>);

impl FabricCapture {
    /// Starts listening; returns once every tcpdump does.
    pub fn start(scene: &Scene, options: MeshOptions) -> anyhow::Result<FabricCapture> {
        // tcpdump decodes Geneve on its port, VXLAN only on 4789 unless told.
        let decode: &[&str] = match options.tunnel {
            Tunnel::Vxlan => &["-T", "vxlan"],
            Tunnel::Geneve => &[],
        };
        // And every frame's bytes as text (`-A`), to look for the pods' payload in clear.
        let options = [decode, &["-A"]].concat();
        let captures = scene
            .fabric_ports()
            .iter()
            .map(|port| Capture::decoded(scene.fabric_ns(), port, &options, &["ip"]))
            .collect::<anyhow::Result<_>>()?;
        Ok(FabricCapture(captures))
    }

    /// Stops listening; the report of what was seen, the VNIs checked against `identities`.
    pub fn stop(
        self,
        options: MeshOptions,
        identities: &Identities,
    ) -> anyhow::Result<RoutingReport> {
        let mut captured = Captured::default();
        let mut identity_in_vni = IdentityInVni::default();
        for capture in self.0 {
            for frame in frames(capture.stop()?) {
                captured.count(&frame);
                identity_in_vni.check(&frame, identities);
            }
        }
        Ok(RoutingReport {
            mode: options.routing,
            tunnel: options.tunnel,
            intra_cluster_encapsulated: captured.intra_cluster.encapsulated(),
            cross_cluster_encapsulated: captured.cross_cluster.encapsulated(),
            captured,
            identity_in_vni,
        })
    }
}

impl RoutingReport {
    /// What the capture says of the encryption the agents had.
    pub fn encryption(&self, mode: Encryption) -> EncryptionReport {
        let in_clear = |f: &Frames| f.plain + f.vxlan + f.geneve;
        let c = &self.captured;
        let wireguard = c.intra_cluster.wireguard + c.cross_cluster.wireguard;
        EncryptionReport {
            mode,
            payload_seen_in_clear: c.payload_in_clear > 0,
            only_wireguard_between_nodes: wireguard > 0
                && in_clear(&c.intra_cluster) + in_clear(&c.cross_cluster) == 0,
        }
    }
}

/// tcpdump's lines as frames: a frame's line starts with its time; an encapsulated packet's inner
/// one may follow on a line of its own, which joins its frame's.
fn frames(lines: Vec<String>) -> Vec<String> {
    let mut frames: Vec<String> = Vec::new();
    for line in lines {
        let timed = line
            .split(':')
            .next()
            .is_some_and(|hour| !hour.is_empty() && hour.bytes().all(|b| b.is_ascii_digit()));
        match frames.last_mut() {
            Some(frame) if !timed => {
                frame.push(' ');
                frame.push_str(line.trim());
            }
            _ => frames.push(line),
        }
    }
    frames
}

/// What a frame between two lab hosts is.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    Vxlan,
    Geneve,
    Wireguard,
}

impl Captured {
    /// One frame: its lines joined, its bytes (`-A`) among them.
    fn count(&mut self, line: &str) {
        self.payload_in_clear += u64::from(line.contains(PAYLOAD_MARKER));
        let Some((kind, from, to)) = classify(line) else {
            return;
        };
        let frames = if from == to {
            &mut self.intra_cluster
        } else {
            &mut self.cross_cluster
        };
        match kind {
            Kind::Plain => frames.plain += 1,
            Kind::Vxlan => frames.vxlan += 1,
            Kind::Geneve => frames.geneve += 1,
            Kind::Wireguard => frames.wireguard += 1,
        }
    }
}

/// A tcpdump line (`-n -q`: `TIME IP SRC[.PORT] > DST[.PORT]: …`) as the kind of frame and the
/// clusters of its two ends; `None` for anything not between pods or not a tunnel between nodes
/// (etcd, ARP, the outside host, ...).
fn classify(line: &str) -> Option<(Kind, u8, u8)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "IP")?;
    let (src, _) = endpoint(words.get(at + 1)?)?;
    if words.get(at + 2) != Some(&">") {
        return None;
    }
    let (dst, port) = endpoint(words.get(at + 3)?.trim_end_matches(':'))?;
    if let (Some(from), Some(to)) = (pod_cluster(src), pod_cluster(dst)) {
        return Some((Kind::Plain, from, to));
    }
    let (from, to) = (node_cluster(src)?, node_cluster(dst)?);
    match port? {
        8472 => Some((Kind::Vxlan, from, to)),
        6081 => Some((Kind::Geneve, from, to)),
        51871 => Some((Kind::Wireguard, from, to)),
        _ => None,
    }
}

/// `a.b.c.d` or `a.b.c.d.port`.
pub(super) fn endpoint(text: &str) -> Option<(Ipv4Addr, Option<u16>)> {
    let parts: Vec<&str> = text.split('.').collect();
    let addr = parts.get(..4)?.join(".").parse().ok()?;
    let port = match parts.get(4..)? {
        [] => None,
        [port] => Some(port.parse().ok()?),
        _ => return None,
    };
    Some((addr, port))
}

/// The lab's cluster of a pod address: 100.(63+c).n.k.
pub(super) fn pod_cluster(addr: Ipv4Addr) -> Option<u8> {
    let [a, b, ..] = addr.octets();
    (a == 100 && (64..128).contains(&b)).then(|| b - 63)
}

/// The lab's cluster of a node address: 198.18.c.n (the fabric router, .254, is no node).
fn node_cluster(addr: Ipv4Addr) -> Option<u8> {
    let [a, b, c, d] = addr.octets();
    (a == 198 && b == 18 && d != 254).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inner_line_joins_its_frame() {
        let lines = [
            "22:17:31.328117 IP 198.18.1.1.58729 > 198.18.2.2.8472: VXLAN, flags [I] (0x08), vni 65536",
            "IP 100.64.1.10 > 100.65.2.10: ICMP echo request, id 32704, seq 1, length 64",
            "22:17:31.4 IP 100.64.1.10.41772 > 100.65.2.10.8080: Flags [S], length 0",
        ];
        let frames = frames(lines.map(str::to_owned).to_vec());
        assert_eq!(frames.len(), 2);
        assert!(frames[0].ends_with(
            "vni 65536 IP 100.64.1.10 > 100.65.2.10: ICMP echo request, id 32704, seq 1, length 64"
        ));
        let mut captured = Captured::default();
        frames.iter().for_each(|f| captured.count(f));
        assert_eq!(
            (captured.cross_cluster.vxlan, captured.cross_cluster.plain),
            (1, 1)
        );
    }

    #[test]
    fn frames_are_counted_by_kind_and_by_the_clusters_they_join() {
        let lines = [
            "21:41:29.193973 IP 198.18.1.1.45039 > 198.18.2.2.8472: UDP, length 92",
            "21:41:29.194001 IP 198.18.1.1.45039 > 198.18.1.2.6081: UDP, length 100",
            "21:41:29.194041 IP 100.64.1.10.36502 > 100.64.2.10.8080: tcp 0",
            "21:41:29.194041 IP 100.65.2.10.8080 > 100.64.1.10.36502: tcp 120",
            "21:41:29.215817 IP 100.64.1.10 > 100.65.2.10: ICMP echo request, id 1, seq 1, length 64",
            "21:41:29.3 IP 198.18.1.1.40000 > 198.18.2.1.2379: tcp 40",
            "21:41:29.4 IP 198.18.1.1.40000 > 203.0.113.10.80: tcp 0",
            "21:41:29.5 ARP, Request who-has 198.18.1.2 tell 198.18.1.1, length 28",
            "21:41:29.6 IP 198.18.1.1.51871 > 198.18.2.2.51871: UDP, length 148",
        ];
        let mut captured = Captured::default();
        for line in lines {
            captured.count(line);
        }
        assert_eq!(
            captured,
            Captured {
                intra_cluster: Frames {
                    plain: 1,
                    geneve: 1,
                    ..Frames::default()
                },
                cross_cluster: Frames {
                    plain: 2,
                    vxlan: 1,
                    wireguard: 1,
                    ..Frames::default()
                },
                payload_in_clear: 0,
            }
        );
        assert_eq!(captured.intra_cluster.encapsulated(), None, "both kinds");
        let only = |plain, geneve| Frames {
            plain,
            geneve,
            ..Frames::default()
        };
        assert_eq!(only(0, 3).encapsulated(), Some(true));
        assert_eq!(only(3, 0).encapsulated(), Some(false));
        assert_eq!(only(0, 0).encapsulated(), None, "nothing seen");
    }

    fn report(lines: &[&str]) -> EncryptionReport {
        let mut captured = Captured::default();
        for frame in frames(lines.iter().map(|l| l.to_string()).collect()) {
            captured.count(&frame);
        }
        let report = RoutingReport {
            mode: Routing::Tunnel,
            tunnel: Tunnel::Vxlan,
            intra_cluster_encapsulated: None,
            cross_cluster_encapsulated: None,
            captured,
            identity_in_vni: IdentityInVni::default(),
        };
        report.encryption(Encryption::Strict)
    }

    #[test]
    fn the_encryption_report_looks_for_http_in_every_frames_bytes() {
        let wireguard = [
            "23:05:41.1 IP 198.18.1.1.51871 > 198.18.1.2.51871: UDP, length 148",
            "E..n..@.@..W....%.r8...Z..",
            "23:05:41.2 IP 198.18.1.2.51871 > 198.18.1.1.51871: UDP, length 92",
            "..x.....",
        ];
        let r = report(&wireguard);
        assert!(
            !r.payload_seen_in_clear && r.only_wireguard_between_nodes,
            "{r:?}"
        );
        let vxlan = [
            "23:05:41.219596 IP 198.18.1.1.46974 > 198.18.1.2.8472: UDP, length 104",
            "E.....@.@..A.........~!..p....",
            ".!?!....GET / HTTP/1.1",
            "Host: 100.64.255.10",
        ];
        let r = report(&vxlan);
        assert!(
            r.payload_seen_in_clear && !r.only_wireguard_between_nodes,
            "{r:?}"
        );
        assert!(
            !report(&[]).only_wireguard_between_nodes,
            "nothing seen proves nothing"
        );
    }
}
