//! WireGuard between nodes on the lab (root), through real XDP and AF_XDP: two clusters of two nodes,
//! every agent `encryption: strict`. Pods on two nodes of one cluster and on two clusters exchange TCP;
//! a capture on the fabric finds none of the payload's marker bytes and, between the nodes, nothing but
//! WireGuard (UDP 51871 both ways; etcd's own connections aside); a plain tunnel frame injected from a
//! node is dropped and counted as `unencrypted_traffic`; a node restarted with its key is reached
//! again, and so is one restarted with a new key once the lab annotates its Node with it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meshpath_api::{Client, DropReason};
use meshpath_lab::capture::Capture;
use meshpath_lab::mesh::{self, Encryption, MeshOptions, Routing, Stop, Tunnel};
use meshpath_lab::plan::{Plan, Size};

/// What the pods send: a capture on the fabric must never show it.
const MARKER: &str = "meshpath-wireguard-marker-5f3a";
const ECHO_PORT: u16 = 7070;
/// Accepts connections and echoes what each sends, until killed.
const ECHO_SERVER: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7070))
s.listen(16)
while True:
    c, _ = s.accept()
    c.settimeout(5)
    try:
        c.sendall(c.recv(1024))
    except OSError:
        pass
    c.close()
"#;

struct Lab {
    plan: Plan,
    servers: Vec<Child>,
}

impl Lab {
    fn build(prefix: &str) -> Lab {
        let size = Size {
            clusters: 2,
            nodes: 2,
            pods: 1,
        };
        let mut lab = Lab {
            plan: Plan::new(prefix, size).expect("a valid plan"),
            servers: Vec::new(),
        };
        std::env::set_var("MESHPATH_BIN", env!("CARGO_BIN_EXE_meshpath"));
        meshpath_lab::up::up_for_cni(&lab.plan).expect("lab up");
        let options = MeshOptions {
            encryption: Encryption::Strict,
            ..MeshOptions::new(Routing::Tunnel, Tunnel::Vxlan)
        };
        mesh::start_with(&lab.plan, options).expect("agents and etcd start");
        for (c, n) in [(1, 2), (2, 1)] {
            let server = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &lab.pod(c, n),
                    "python3",
                    "-c",
                    ECHO_SERVER,
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("an echo server");
            lab.servers.push(server);
        }
        lab
    }

    fn pod(&self, c: u8, n: u8) -> String {
        format!("{}-c{c}-n{n}-p1", self.plan.prefix)
    }

    fn node(&self, c: u8, n: u8) -> &meshpath_lab::plan::Node {
        let node = self
            .plan
            .nodes
            .iter()
            .find(|x| x.cluster == c && x.node == n);
        node.expect("a node of the plan")
    }

    /// Whether the pod of (c, n) gets the marker echoed by the pod of `to` over TCP.
    fn echo(&self, from: (u8, u8), to: (u8, u8)) -> bool {
        let client = format!(
            "import socket, sys\n\
             s = socket.create_connection(('{ip}', {ECHO_PORT}), timeout=3)\n\
             s.sendall(b'{MARKER}')\n\
             sys.exit(0 if s.recv(1024) == b'{MARKER}' else 1)\n",
            ip = self.node(to.0, to.1).pods[0].addr,
        );
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.pod(from.0, from.1),
                "python3",
                "-c",
                &client,
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn echo_within(&self, from: (u8, u8), to: (u8, u8), seconds: u64) -> bool {
        mesh::wait(Duration::from_secs(seconds), || self.echo(from, to))
    }

    fn drops(&self, c: u8, n: u8, reason: DropReason) -> u64 {
        let client = Client::new(mesh::socket(&self.plan.prefix, c, n));
        let status = client.status().ok();
        let dropped = status.map(|s| s.dataplane.dropped);
        dropped.and_then(|d| d.get(&reason).copied()).unwrap_or(0)
    }

    /// A VXLAN datagram from node (c, n)'s own stack to node `to`: what a node sends in clear.
    fn inject_plain_tunnel_frame(&self, from: (u8, u8), to: (u8, u8)) {
        let script = format!(
            "import socket\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.sendto(bytes([8, 0, 0, 0, 1, 0, 1, 0]) + bytes(64), ('{ip}', 8472))\n",
            ip = self.node(to.0, to.1).underlay,
        );
        let node = self.node(from.0, from.1);
        let sent = Command::new("ip")
            .args(["netns", "exec", &node.netns, "python3", "-c", &script])
            .status()
            .expect("python3");
        assert!(sent.success(), "the plain frame was sent");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        mesh::tear_down(&self.plan.prefix);
    }
}

#[test]
fn strict_wireguard_carries_pods_between_nodes_and_clusters_and_nothing_in_clear() {
    if !meshpath_testkit::needs_root(
        "strict_wireguard_carries_pods_between_nodes_and_clusters_and_nothing_in_clear",
    ) {
        return;
    }
    let lab = Lab::build(&format!("wg{}", std::process::id() % 100_000));
    let fabric = lab.plan.fabric.clone();
    // What nodes c1-n1 and c1-n2 send onto the fabric, the control plane's own connections (etcd,
    // the stand-in API server; TLS, and not pod traffic, which is all WireGuard carries) aside.
    let filter = [
        "ip", "and", "not", "(", "tcp", "port", "2379", "or", "tcp", "port", "6443", ")",
    ];
    let captures: Vec<Capture> = [(1, 1), (1, 2)]
        .iter()
        .map(|&(c, n)| {
            let port = lab.node(c, n).fabric_port.clone();
            Capture::with_payload(&fabric, &port, &filter).expect("a capture on the fabric")
        })
        .collect();
    assert!(
        lab.echo_within((1, 1), (1, 2), 40),
        "pods on two nodes of one cluster"
    );
    assert!(lab.echo_within((1, 1), (2, 1), 40), "pods on two clusters");
    let wire: Vec<String> = captures
        .into_iter()
        .flat_map(|c| c.stop().expect("the capture"))
        .collect();
    assert!(
        !wire.iter().any(|line| line.contains(MARKER)),
        "the marker in clear on the fabric: {wire:?}"
    );
    let frames: Vec<&String> = wire.iter().filter(|l| l.contains(" IP ")).collect();
    assert!(!frames.is_empty(), "the capture saw the exchange");
    let not_wireguard: Vec<&&String> = frames
        .iter()
        .filter(|l| !(l.contains(".51871 > ") && l.contains(".51871: UDP")))
        .collect();
    assert!(
        not_wireguard.is_empty(),
        "only WireGuard between the nodes: {not_wireguard:?}"
    );

    let before = lab.drops(1, 1, DropReason::UnencryptedTraffic);
    lab.inject_plain_tunnel_frame((1, 2), (1, 1));
    assert!(
        mesh::wait(Duration::from_secs(10), || {
            lab.drops(1, 1, DropReason::UnencryptedTraffic) > before
        }),
        "a plain tunnel frame from a node is dropped and counted"
    );

    mesh::stop_agent(&lab.plan, 1, 2, Stop::Planned).expect("c1-n2 stops");
    mesh::start_agent_again(&lab.plan, 1, 2).expect("c1-n2 starts again");
    assert!(
        lab.echo_within((1, 1), (1, 2), 60),
        "a node restarted with the same key is reached again"
    );

    mesh::stop_agent(&lab.plan, 2, 1, Stop::Planned).expect("c2-n1 stops");
    let key = mesh::node_state_dir(&lab.plan.prefix, 2, 1).join("wireguard.key");
    std::fs::remove_file(&key).expect("c2-n1's key");
    mesh::start_agent_again(&lab.plan, 2, 1).expect("c2-n1 starts again with a new key");
    mesh::announce_keys(&lab.plan).expect("the new key annotated");
    assert!(
        lab.echo_within((1, 1), (2, 1), 60),
        "a node whose key changed is reached again"
    );
}
