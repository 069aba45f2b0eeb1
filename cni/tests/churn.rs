//! Pods made and deleted through the real plugin binary, as a container runtime runs it (`CNI_*`
//! environment, the network configuration on stdin), against a running agent on a lab node, as root.
//!
//! One pod stays and pings another the whole time; 100 others are added and deleted in turn. Nothing
//! may leak, each checked from outside the agent: address files, the agent's descriptors
//! (`/proc/<pid>/fd`), the node's links and pinned maps, and the agent's own status (ports, UMEM
//! chunks, endpoints, ipcache) — and the staying pod's pings lose nothing.
//!
//! The agent is the `meshpath` beside this plugin (`cargo test --workspace` builds both, and
//! `meshpath-lab` for `meshpath lab up`). Not root: reported as skipped.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};

use meshpath_api::cni::{
    ask, ContainerRef, PodAttachment, PodName, PodRequest, PodResponse, RefusalReason,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const PLUGIN: &str = env!("CARGO_BIN_EXE_meshpath-cni");
const CHURN: usize = 100;
const WAIT: Duration = Duration::from_secs(20);

struct Node {
    prefix: String,
    dir: PathBuf,
    agent: Option<Child>,
    pods: Vec<String>,
}

fn meshpath() -> PathBuf {
    let beside = Path::new(PLUGIN).with_file_name("meshpath");
    assert!(
        beside.is_file(),
        "the agent `meshpath` is not beside {PLUGIN}: run `cargo test --workspace`"
    );
    beside
}

fn run(command: &mut Command) -> Output {
    command.output().expect("the command runs")
}

fn ok(out: &Output) -> bool {
    if !out.status.success() {
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success()
}

impl Node {
    fn up() -> Node {
        let prefix = format!("k{}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("meshpath-cni-{prefix}"));
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let node = Node {
            prefix,
            dir,
            agent: None,
            pods: Vec::new(),
        };
        let lab = [
            "lab",
            "up",
            "--clusters",
            "1",
            "--nodes",
            "1",
            "--pods",
            "0",
        ];
        let out = run(Command::new(meshpath())
            .args(lab)
            .args(["--prefix", &node.prefix]));
        assert!(ok(&out), "lab up");
        node
    }

    fn netns(&self) -> String {
        format!("{}-c1-n1", self.prefix)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    fn pins(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/meshpath-cni-{}", self.prefix))
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("cni")
    }

    fn start_agent(&mut self, pods: &[String]) {
        let mut state = String::from(
            "apiVersion: v1\nkind: Node\nmetadata: {name: c1-n1}\n\
             spec: {podCIDR: 100.64.1.0/24, podCIDRs: [100.64.1.0/24]}\n\
             status: {addresses: [{type: InternalIP, address: 198.18.1.1}]}\n",
        );
        for pod in pods {
            state += &format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: default, labels: {{name: {pod}}}}}\n\
                 spec: {{nodeName: c1-n1, containers: [{{name: c, image: none}}]}}\n\
                 status: {{phase: Running, conditions: [{{type: Ready, status: \"True\"}}]}}\n"
            );
        }
        std::fs::write(self.dir.join("state/pods.yaml"), state).unwrap();
        let router = mac_of(&format!("{}-fabric", self.prefix), "br-c1");
        let config = format!(
            "cluster: {{name: cluster1, id: 1}}\n\
             node: {{name: c1-n1, uplink: uplink, ipv4: 198.18.1.1, router-mac: \"{router}\"}}\n\
             pods: []\n\
             dataplane: {{cores: [0], routing: tunnel, tunnel: vxlan, conntrack-capacity: 65536, mtu: 1500}}\n\
             source: {{yaml-dir: {state}}}\n\
             status-socket: {socket}\n\
             state-dir: {node_state}\n\
             bpf-pin-dir: {pins}\n",
            state = self.dir.join("state").display(),
            socket = self.socket().display(),
            node_state = self.dir.join("node-state").display(),
            pins = self.pins().display(),
        );
        let path = self.dir.join("agent.yaml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(self.dir.join("agent.log")).unwrap();
        let child = Command::new(meshpath())
            .args(["agent", "--config"])
            .arg(&path)
            .args(["--netns", &self.netns()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the agent starts");
        self.agent = Some(child);
    }

    fn agent_pid(&self) -> u32 {
        self.agent.as_ref().unwrap().id()
    }

    /// The plugin as a runtime runs it: in the node's namespace, for pod `pod` in `<prefix>-<pod>`.
    fn cni(&self, command: &str, pod: &str) -> Output {
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"meshpath","type":"meshpath-cni","agentSocket":"{}.cni","dataDir":"{}"}}"#,
            self.socket().display(),
            self.data_dir().display()
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns(), PLUGIN])
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("container-{pod}"))
            .env("CNI_NETNS", format!("/var/run/netns/{}-{pod}", self.prefix))
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
            )
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the plugin runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    fn pod_netns(&mut self, pod: &str) -> String {
        let name = format!("{}-{pod}", self.prefix);
        assert!(ok(&run(Command::new("ip").args(["netns", "add", &name]))));
        self.pods.push(name.clone());
        name
    }

    fn drop_netns(&mut self, name: &str) {
        assert!(ok(&run(Command::new("ip").args(["netns", "del", name]))));
        self.pods.retain(|p| p != name);
    }

    /// ADD of `pod` in a new namespace; its address.
    fn add(&mut self, pod: &str) -> Ipv4Addr {
        self.pod_netns(pod);
        let out = self.cni("ADD", pod);
        assert!(ok(&out), "ADD {pod}");
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a result");
        let address = result["ips"][0]["address"].as_str().unwrap();
        address.split('/').next().unwrap().parse().unwrap()
    }

    fn del(&mut self, pod: &str) {
        assert!(ok(&self.cni("DEL", pod)), "DEL {pod}");
        assert!(ok(&self.cni("DEL", pod)), "a second DEL {pod} is no error");
        self.drop_netns(&format!("{}-{pod}", self.prefix));
    }

    fn status(&self) -> serde_json::Value {
        let out = run(Command::new(meshpath())
            .args(["status", "-o", "json", "--socket"])
            .arg(self.socket()));
        assert!(ok(&out), "meshpath status");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn endpoints(&self) -> BTreeSet<String> {
        let out = run(Command::new(meshpath())
            .args(["endpoint", "list", "-o", "json", "--socket"])
            .arg(self.socket()));
        assert!(ok(&out), "meshpath endpoint list");
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        rows.iter()
            .map(|r| format!("{} {}", r["pod"], r["ipv4"]))
            .collect()
    }

    /// The agent refuses to attach a veth that claims an address another endpoint holds (asked
    /// directly on its pod socket: the plugin's leases never overlap).
    fn refuses_a_second_holder_of(&self, taken: Ipv4Addr) {
        let ns = self.netns();
        let veth = [
            "-n", &ns, "link", "add", "lxcdup", "type", "veth", "peer", "name", "dup",
        ];
        assert!(ok(&run(Command::new("ip").args(veth))));
        let attach = PodRequest::Attach(PodAttachment {
            container: ContainerRef {
                container_id: "container-dup".into(),
                ifname: "eth0".into(),
            },
            pod: PodName {
                namespace: "default".into(),
                name: "churn0".into(),
            },
            host_interface: "lxcdup".into(),
            mac: mac_of(&ns, "dup").parse().unwrap(),
            addresses: vec![IpAddr::V4(taken)],
        });
        let socket = PathBuf::from(format!("{}.cni", self.socket().display()));
        let answer = ask(&socket, &attach, WAIT).expect("the agent answers");
        let _ = run(Command::new("ip").args(["-n", &ns, "link", "del", "lxcdup"]));
        match answer {
            PodResponse::Refused(r) => {
                assert_eq!(r.reason, RefusalReason::Invalid, "{}", r.message);
                assert!(r.message.contains(&taken.to_string()), "{}", r.message);
            }
            other => panic!("a second holder of {taken} was not refused: {other:?}"),
        }
    }

    /// Where lost pings went: the pods' own ICMP counters (a reply the kernel counted that ping did
    /// not came too late), and the agent's drops.
    fn explain_loss(&self) {
        for pod in ["stay", "peer"] {
            let ns = format!("{}-{pod}", self.prefix);
            let nstat = [
                "netns",
                "exec",
                &ns,
                "nstat",
                "-az",
                "IcmpInEcho*",
                "IcmpOutEcho*",
            ];
            let out = run(Command::new("ip").args(nstat));
            eprintln!("{pod}: {}", String::from_utf8_lossy(&out.stdout));
        }
        eprintln!("agent: {:#}", self.status()["dataplane"]);
    }

    /// The agent's open descriptors, the fewest of a few readings: a leaked one stays, while the
    /// connection of a status request or CNI call just answered may not be closed yet.
    fn lasting_descriptors(&self) -> usize {
        let count = || {
            std::fs::read_dir(format!("/proc/{}/fd", self.agent_pid()))
                .unwrap()
                .count()
        };
        (0..3)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(50));
                count()
            })
            .min()
            .unwrap_or(0)
    }

    /// Everything a pod's attachment holds, as seen from outside the agent.
    fn footprint(&self) -> Footprint {
        let descriptors = self.lasting_descriptors();
        let status = self.status();
        let dataplane = &status["dataplane"];
        let links = run(Command::new("ip").args(["-n", &self.netns(), "-o", "link", "show"]));
        Footprint {
            addresses: names(&self.data_dir().join("meshpath")),
            descriptors,
            links: String::from_utf8_lossy(&links.stdout)
                .lines()
                .filter_map(|l| l.split(':').nth(1))
                .map(|n| n.trim().split('@').next().unwrap().to_owned())
                .collect(),
            pins: names(&self.pins()),
            ports: dataplane["ports"].as_array().unwrap().len(),
            free_chunks: dataplane["umem"]["free"].as_u64().unwrap(),
            orphaned_chunks: dataplane["umem"]["orphaned"].as_u64().unwrap(),
            endpoints: self.endpoints(),
            ipcache: status["tables"]["ipcache"].as_u64().unwrap(),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Footprint {
    addresses: BTreeSet<String>,
    descriptors: usize,
    links: BTreeSet<String>,
    pins: BTreeSet<String>,
    ports: usize,
    free_chunks: u64,
    orphaned_chunks: u64,
    endpoints: BTreeSet<String>,
    ipcache: u64,
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = Command::new("kill").arg(agent.id().to_string()).status();
            let _ = agent.wait();
        }
        for pod in std::mem::take(&mut self.pods) {
            let _ = Command::new("ip").args(["netns", "del", &pod]).status();
        }
        let _ = Command::new(meshpath())
            .args(["lab", "down", "--prefix", &self.prefix])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(self.pins());
    }
}

fn mac_of(ns: &str, interface: &str) -> String {
    let out = run(Command::new("ip").args(["-n", ns, "-j", "link", "show", interface]));
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    links[0]["address"].as_str().unwrap().to_owned()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    meshpath_testkit::until(what, WAIT, || meshpath_testkit::wait::check(ready(), ()))
        .unwrap_or_else(|timeout| panic!("{timeout}"));
}

/// Pings from `from` to `to` in rounds until `stop`; how many rounds ran. Whether each request was
/// answered is read from the pods' own counters, not from ping's summary: ping waits only two round
/// trips for the last reply of a round and calls a reply a few milliseconds late lost.
fn ping_until(from: String, to: Ipv4Addr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut rounds = 0;
        while !stop.load(Ordering::Relaxed) {
            let ping = [
                "netns", "exec", &from, "ping", "-q", "-c", "20", "-i", "0.01",
            ];
            run(Command::new("ip").args(ping).arg(to.to_string()));
            rounds += 1;
        }
        rounds
    })
}

/// `Icmp: <field>` of the namespace `ns`'s `/proc/net/snmp`.
fn icmp(ns: &str, field: &str) -> u64 {
    let out = run(Command::new("ip").args(["netns", "exec", ns, "cat", "/proc/net/snmp"]));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut icmp = text.lines().filter(|l| l.starts_with("Icmp: "));
    let (names, values) = (
        icmp.next().unwrap_or_default(),
        icmp.next().unwrap_or_default(),
    );
    let at = names.split_whitespace().position(|n| n == field);
    at.and_then(|i| values.split_whitespace().nth(i)?.parse().ok())
        .unwrap_or_else(|| panic!("no Icmp {field} in {ns}'s /proc/net/snmp"))
}

#[test]
fn a_hundred_pods_come_and_go_through_the_plugin_without_a_leak_or_a_lost_ping() {
    if !meshpath_testkit::needs_root(
        "a_hundred_pods_come_and_go_through_the_plugin_without_a_leak_or_a_lost_ping",
    ) {
        return;
    }
    let mut node = Node::up();
    let churned: Vec<String> = (0..CHURN).map(|i| format!("churn{i}")).collect();
    let mut pods = vec!["stay".to_owned(), "peer".to_owned()];
    pods.extend(churned.iter().cloned());
    node.start_agent(&pods);
    wait_for("the agent takes pods (STATUS)", || {
        node.cni("STATUS", "stay").status.success()
    });
    let stay = node.add("stay");
    let peer = node.add("peer");
    assert_ne!(stay, peer);
    assert!(ok(&node.cni("CHECK", "stay")), "CHECK after ADD");
    let before = node.footprint();
    assert_eq!(
        before
            .addresses
            .iter()
            .filter(|a| a.parse::<Ipv4Addr>().is_ok())
            .count(),
        2
    );
    assert_eq!(before.orphaned_chunks, 0);

    let stop = Arc::new(AtomicBool::new(false));
    let pinger = ping_until(format!("{}-stay", node.prefix), peer, stop.clone());
    for (i, pod) in churned.iter().enumerate() {
        let address = node.add(pod);
        assert!(
            address != stay && address != peer,
            "{pod} got a taken address"
        );
        if i % 25 == 0 {
            let ns = format!("{}-{pod}", node.prefix);
            let out = run(Command::new("ip")
                .args(["netns", "exec", &ns, "ping", "-c", "1", "-W", "2"])
                .arg(stay.to_string()));
            assert!(
                ok(&out),
                "{pod} reaches the staying pod once ADD has returned"
            );
        }
        node.del(pod);
    }
    stop.store(true, Ordering::Relaxed);
    assert!(pinger.join().unwrap() > 0, "the staying pod pinged");
    let (stay_ns, peer_ns) = (
        format!("{}-stay", node.prefix),
        format!("{}-peer", node.prefix),
    );
    let sent = icmp(&stay_ns, "OutEchos");
    let answered = || icmp(&stay_ns, "InEchoReps");
    let every = meshpath_testkit::until("every echo request answered", WAIT, || {
        meshpath_testkit::wait::check(answered() >= sent, ())
    });
    if every.is_err() {
        node.explain_loss();
    }
    assert_eq!(
        (icmp(&peer_ns, "InEchos"), answered()),
        (sent, sent),
        "the staying pod's pings were lost while others came and went"
    );

    // Counts settle once the last detach's connections and frames are done with.
    let mut after = node.footprint();
    meshpath_testkit::until("the footprint is back to before the churn", WAIT, || {
        after = node.footprint();
        meshpath_testkit::wait::check(after == before, ())
    })
    .unwrap_or_else(|_| assert_eq!(after, before, "a churned pod left something behind"));
    assert!(ok(&node.cni("CHECK", "stay")), "CHECK after the churn");
    node.refuses_a_second_holder_of(stay);
    let log = std::fs::read_to_string(node.dir.join("agent.log")).unwrap_or_default();
    assert_eq!(
        log.matches("pod detached container=").count(),
        CHURN,
        "{log}"
    );
}
