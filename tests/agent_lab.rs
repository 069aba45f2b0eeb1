//! The agent end to end on the lab, as root, through real XDP and AF_XDP: one cluster of two nodes
//! with two pods each, an agent on each node fed by a directory of Kubernetes-shaped YAML.
//! Pods reach each other on the same node and across nodes (ping and TCP); the cross-node traffic is
//! VXLAN on UDP 8472 with the sender's security identity in the VNI; a pod that lies about its source
//! address is dropped, counted and shown by `meshpath observe`; the nodes' own traffic still reaches their kernels.
//! The lab comes from `meshpath lab`, which execs `meshpath-lab` beside `meshpath` (built by `cargo
//! test --workspace`). Needs root: not root, it is reported as skipped (and fails under
//! `scripts/test`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_meshpath");

struct Lab {
    prefix: String,
    dir: PathBuf,
    agents: Vec<Child>,
}

impl Lab {
    /// A lab of its own for each test (`tag`: one letter), as tests run side by side.
    fn up(tag: &str) -> Lab {
        let prefix = format!("e{tag}{}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("meshpath-e2e-{prefix}"));
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let lab = Lab {
            prefix,
            dir,
            agents: Vec::new(),
        };
        let out = meshpath(&[
            "lab",
            "up",
            "--clusters",
            "1",
            "--nodes",
            "2",
            "--pods",
            "2",
            "--prefix",
            &lab.prefix,
        ]);
        assert!(
            out.status.success(),
            "lab up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    fn node_ns(&self, n: u8) -> String {
        format!("{}-c1-n{n}", self.prefix)
    }

    fn pod_ns(&self, n: u8, k: u8) -> String {
        format!("{}-c1-n{n}-p{k}", self.prefix)
    }

    fn socket(&self, n: u8) -> PathBuf {
        self.dir.join(format!("c1-n{n}.sock"))
    }

    /// Where node `n`'s agent pins its XDP maps (bpffs outlives the namespaces).
    fn pins(&self, n: u8) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/meshpath-e2e-{}/c1-n{n}", self.prefix))
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    fn start_agent(&mut self, n: u8) {
        let config = self.dir.join(format!("agent-n{n}.yaml"));
        std::fs::write(&config, agent_config(self, n)).unwrap();
        let log = std::fs::File::create(self.dir.join(format!("agent-n{n}.log"))).unwrap();
        let child = Command::new(BIN)
            .args(["agent", "--config"])
            .arg(&config)
            .args(["--netns", &self.node_ns(n)])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent starts");
        self.agents.push(child);
    }

    /// The security identity node `n`'s agent gave pod `pod` (`namespace/name`).
    fn identity(&self, n: u8, pod: &str) -> u32 {
        let socket = self.socket(n);
        let out = meshpath(&[
            "endpoint",
            "list",
            "-o",
            "json",
            "--socket",
            socket.to_str().unwrap(),
        ]);
        assert!(ok(&out), "endpoint list");
        let rows: Vec<meshpath_api::endpoint::EndpointRow> =
            serde_json::from_slice(&out.stdout).expect("endpoint rows");
        let row = rows
            .iter()
            .find(|r| r.pod == pod)
            .unwrap_or_else(|| panic!("{pod} among {rows:?}"));
        assert_eq!(
            row.origin,
            meshpath_api::endpoint::EndpointOrigin::Config,
            "this lab's pods are the agents' configuration's"
        );
        row.identity
    }

    fn status(&self, n: u8) -> Option<serde_json::Value> {
        let out = meshpath(&["status", "-o", "json", "--socket", self.socket(n).to_str()?]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())?
    }

    /// `meshpath observe -o json` on node `n`'s agent: the flows it keeps (in Hubble's shape, one
    /// GetFlowsResponse per line) that pass `filters`, as the agent filters them.
    fn observe(&self, n: u8, filters: &[&str]) -> Vec<serde_json::Value> {
        let socket = self.socket(n);
        let mut args = vec![
            "observe",
            "-o",
            "json",
            "--all",
            "--socket",
            socket.to_str().unwrap(),
        ];
        args.extend_from_slice(filters);
        let out = meshpath(&args);
        assert!(ok(&out), "meshpath observe");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON flow per line"))
            .collect()
    }

    /// `meshpath observe --follow -o json` on node `n`'s agent, from now on (following starts now):
    /// the first flow it streams whose Hubble drop reason is `reason`.
    fn follow(
        &mut self,
        n: u8,
        filters: &[&str],
        reason: &str,
    ) -> std::sync::mpsc::Receiver<serde_json::Value> {
        use std::io::BufRead;
        let socket = self.socket(n);
        let mut child = Command::new(BIN)
            .args(["observe", "--follow", "-o", "json", "--socket"])
            .arg(&socket)
            .args(filters)
            .stdout(Stdio::piped())
            .spawn()
            .expect("meshpath observe --follow");
        let stdout = child.stdout.take().unwrap();
        // Killed with the agents when the lab goes down.
        self.agents.push(child);
        let (tx, rx) = std::sync::mpsc::channel();
        let reason = reason.to_owned();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON event");
                if event["flow"]["drop_reason_desc"] == reason {
                    let _ = tx.send(event);
                    return;
                }
            }
        });
        rx
    }

    fn agent_log(&self, n: u8) -> String {
        std::fs::read_to_string(self.dir.join(format!("agent-n{n}.log"))).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            let _ = Command::new("kill").arg(agent.id().to_string()).status();
            let _ = agent.wait();
        }
        let _ = meshpath(&["lab", "down", "--prefix", &self.prefix]);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/meshpath-e2e-{}", self.prefix));
    }
}

fn meshpath(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("meshpath runs")
}

fn mac_of(ns: &str, interface: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", "dev", interface])
        .output()
        .unwrap();
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    links[0]["address"].as_str().unwrap().to_owned()
}

fn pod_ip(n: u8, k: u8) -> String {
    format!("100.64.{n}.{}", 9 + k)
}

/// The cluster as its API server would hold it: two nodes, four pods, each pod with its own identity.
fn write_state(lab: &Lab) {
    let mut yaml = String::new();
    for n in 1..=2u8 {
        yaml += &format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: c1-n{n}}}\n\
             spec: {{podCIDR: 100.64.{n}.0/24, podCIDRs: [100.64.{n}.0/24]}}\n\
             status: {{addresses: [{{type: InternalIP, address: 198.18.1.{n}}}]}}\n---\n"
        );
        for k in 1..=2u8 {
            let ip = pod_ip(n, k);
            yaml += &format!(
                "apiVersion: v1\nkind: Pod\n\
                 metadata: {{name: p{n}{k}, namespace: default, labels: {{app: demo, name: p{n}{k}}}}}\n\
                 spec: {{nodeName: c1-n{n}, containers: [{{name: c, image: none}}]}}\n\
                 status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}], \
                 conditions: [{{type: Ready, status: \"True\"}}]}}\n---\n"
            );
        }
    }
    std::fs::write(lab.dir.join("state/cluster.yaml"), yaml).unwrap();
}

fn agent_config(lab: &Lab, n: u8) -> String {
    let router = mac_of(&format!("{}-fabric", lab.prefix), "br-c1");
    let pods: String = (1..=2u8)
        .map(|k| {
            let mac = mac_of(&lab.pod_ns(n, k), "eth0");
            format!("  - {{pod: default/p{n}{k}, interface: pod{k}, mac: \"{mac}\"}}\n")
        })
        .collect();
    format!(
        "cluster: {{name: cluster1, id: 1}}\n\
         node: {{name: c1-n{n}, uplink: uplink, ipv4: 198.18.1.{n}, router-mac: \"{router}\"}}\n\
         pods:\n{pods}\
         dataplane: {{cores: [{core}], routing: tunnel, tunnel: vxlan, conntrack-capacity: 65536, mtu: 1500}}\n\
         source: {{yaml-dir: {state}}}\n\
         status-socket: {socket}\n\
         metrics: 198.18.1.{n}:9962\n\
         state-dir: {node_state}\n\
         bpf-pin-dir: {pins}\n",
        core = n % 2,
        state = lab.dir.join("state").display(),
        socket = lab.socket(n).display(),
        node_state = lab.dir.join(format!("node-state-{n}")).display(),
        pins = lab.pins(n).display(),
    )
}

/// How long the lab may take to do what was asked, on a loaded machine.
const WAIT: Duration = Duration::from_secs(10);

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    meshpath_testkit::until(what, timeout, || meshpath_testkit::wait::check(ready(), ()))
        .map_err(|timeout| eprintln!("{timeout}"))
        .is_ok()
}

/// Waits until tcpdump says it is capturing (on stderr), then lets its stderr drain.
fn listening(capture: &mut Child) {
    use std::io::BufRead;
    let stderr = capture.stderr.take().expect("tcpdump's stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(WAIT)
        .expect("tcpdump did not start capturing in time");
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

fn counter(status: &serde_json::Value, section: &str, name: &str) -> u64 {
    status["dataplane"][section][name].as_u64().unwrap_or(0)
}

/// The outer source address and the VNI of each VXLAN frame tcpdump captured in `pcap`, from lines
/// such as `IP 198.18.1.1.51234 > 198.18.1.2.8472: VXLAN, flags [I] (0x08), vni 65538`.
fn vnis(pcap: &Path) -> Vec<(String, u32)> {
    let out = Command::new("tcpdump")
        .args(["-n", "-T", "vxlan", "-r"])
        .arg(pcap)
        .output()
        .expect("tcpdump");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let source = line.split_whitespace().nth(2)?;
            let address = source.rsplit_once('.')?.0.to_owned();
            let vni = line
                .split("vni ")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit());
            Some((address, vni.take(1).next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn pods_talk_through_the_agents_on_real_afxdp() {
    if !meshpath_testkit::needs_root("pods_talk_through_the_agents_on_real_afxdp") {
        return;
    }
    // Pods keep the lab's MTU of 1500: what does not fit the tunnel gets "fragmentation needed".
    let mut lab = Lab::up("");
    write_state(&lab);
    lab.start_agent(1);
    lab.start_agent(2);
    let loaded = wait_for("both agents' tables", Duration::from_secs(20), || {
        (1..=2).all(|n| {
            lab.status(n).is_some_and(|s| {
                s["tables"]["endpoints"] == 2 && s["tables"]["ipcache"].as_u64() >= Some(4)
            })
        })
    });
    assert!(
        loaded,
        "agent logs:\n{}\n{}",
        lab.agent_log(1),
        lab.agent_log(2)
    );

    let p11 = lab.pod_ns(1, 1);
    let same_node = lab.exec(
        &p11,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", &pod_ip(1, 2)],
    );
    assert!(ok(&same_node), "ping on the same node");

    // Capture what crosses the fabric towards node 2 while pods talk across nodes.
    let pcap = lab.dir.join("fabric.pcap");
    let mut capture = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{}-fabric", lab.prefix),
            "tcpdump",
            "-n",
            "-i",
            "c1n2",
            "-w",
        ])
        .arg(&pcap)
        .args(["-c", "6", "udp", "port", "8472"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    listening(&mut capture);
    let cross_node = lab.exec(
        &p11,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", &pod_ip(2, 1)],
    );
    assert!(
        ok(&cross_node),
        "ping across nodes\n{}\n{}",
        lab.agent_log(1),
        lab.agent_log(2)
    );
    let captured = wait_for("the capture", Duration::from_secs(5), || {
        matches!(capture.try_wait(), Ok(Some(_)))
    });
    if !captured {
        let _ = capture.kill();
    }
    // Both directions crossed the fabric as VXLAN on 8472, each with its sender's own identity in
    // the VNI: p11's from node 1, p21's (the replies) from node 2.
    let vnis = vnis(&pcap);
    let (p11_id, p21_id) = (
        lab.identity(1, "default/p11"),
        lab.identity(2, "default/p21"),
    );
    assert_ne!(p11_id, p21_id, "each pod has its own identity");
    for (from, identity) in [("198.18.1.1", p11_id), ("198.18.1.2", p21_id)] {
        let sent: Vec<u32> = vnis
            .iter()
            .filter(|(src, _)| src == from)
            .map(|(_, vni)| *vni)
            .collect();
        assert!(!sent.is_empty(), "no VXLAN from {from}: {vnis:?}");
        assert!(
            sent.iter().all(|vni| *vni == identity),
            "VNIs from {from} are the sending pod's identity {identity}: {vnis:?}"
        );
    }

    // TCP across nodes: an iperf3 server in pod 2-1, a client in pod 1-1.
    let p21 = lab.pod_ns(2, 1);
    assert!(ok(&lab.exec(&p21, &["iperf3", "-s", "-1", "-D"])));
    meshpath_testkit::until("iperf3 listening in pod 2-1", WAIT, || {
        let out = lab.exec(&p21, &["ss", "-Hltn", "sport", "=", ":5201"]);
        let sockets = String::from_utf8_lossy(&out.stdout).into_owned();
        meshpath_testkit::wait::check(!sockets.trim().is_empty(), sockets)
    })
    .unwrap();
    let tcp = lab.exec(
        &p11,
        &["timeout", "20", "iperf3", "-c", &pod_ip(2, 1), "-n", "2M"],
    );
    assert!(ok(&tcp), "TCP across nodes");

    // A pod sending as an address it does not own is dropped and counted; a follower of node 1's
    // flows sees the drops as they happen.
    let follower = lab.follow(
        1,
        &["--verdict", "DROPPED", "--to-pod", "default/p12"],
        "INVALID_SOURCE_IP",
    );
    assert!(ok(&lab.exec(
        &p11,
        &["ip", "addr", "add", "100.64.1.99/32", "dev", "eth0"]
    )));
    let spoofed = lab.exec(
        &p11,
        &[
            "ping",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "1",
            "-I",
            "100.64.1.99",
            &pod_ip(1, 2),
        ],
    );
    assert!(
        !spoofed.status.success(),
        "a spoofed ping must not be answered"
    );
    let followed = follower
        .recv_timeout(Duration::from_secs(5))
        .expect("observe --follow streams the drop");
    assert_eq!(
        followed["flow"]["IP"]["source"], "100.64.1.99",
        "{followed:#}"
    );
    let n1 = lab.status(1).expect("status of node 1");
    assert!(
        counter(&n1, "dropped", "spoofed_source") >= 2,
        "spoofed frames counted: {n1:#}"
    );
    assert!(counter(&n1, "forwarded", "tunnel") >= 3, "{n1:#}");
    assert!(counter(&n1, "forwarded", "local_pod") >= 3, "{n1:#}");
    // `meshpath observe` shows them, named after the pod that sent them, with their reason.
    let mut spoofed_flows = Vec::new();
    wait_for(
        "the spoofed pings in the flow log",
        Duration::from_secs(5),
        || {
            spoofed_flows = lab
                .observe(1, &["--verdict", "dropped"])
                .into_iter()
                .filter(|e| e["flow"]["drop_reason_desc"] == "INVALID_SOURCE_IP")
                .collect();
            spoofed_flows.len() >= 2
        },
    );
    assert!(spoofed_flows.len() >= 2, "{spoofed_flows:#?}");
    for event in &spoofed_flows {
        let flow = &event["flow"];
        assert_eq!(flow["verdict"], "DROPPED");
        assert_eq!(
            flow["drop_reason"], 132,
            "Cilium's code for an invalid source"
        );
        assert_eq!(flow["l4"]["ICMPv4"]["type"], 8, "{flow:#}");
        assert_eq!(flow["IP"]["source"], "100.64.1.99");
        assert_eq!(flow["source"]["pod_name"], "p11", "{flow:#}");
        assert_eq!(flow["source"]["namespace"], "default");
        assert_eq!(flow["source"]["cluster_name"], "cluster1");
        assert!(
            flow["source"]["labels"]
                .as_array()
                .is_some_and(|l| l.iter().any(|l| l == "k8s:app=demo")),
            "{flow:#}"
        );
        assert_eq!(flow["destination"]["pod_name"], "p12", "{flow:#}");
        assert_eq!(flow["traffic_direction"], "EGRESS");
        assert_eq!(flow["node_name"], "cluster1/c1-n1");
        assert_eq!(event["node_name"], "cluster1/c1-n1");
    }
    // A jq expression written for Hubble's JSON reads meshpath's.
    let script = format!(
        "{BIN} observe -o json --all --verdict DROPPED --socket {} | jq -r 'select(.flow.drop_reason_desc == \"INVALID_SOURCE_IP\") | .flow.source.pod_name + \" \" + .flow.destination.pod_name'",
        lab.socket(1).display()
    );
    let jq = Command::new("bash")
        .args(["-o", "pipefail", "-c", &script])
        .output()
        .unwrap();
    assert!(ok(&jq), "jq over observe's JSON");
    let named = String::from_utf8_lossy(&jq.stdout);
    assert!(
        named.lines().count() >= 2 && named.lines().all(|l| l == "p11 p12"),
        "{named}"
    );
    // New flows are there too, forwarded: TCP to iperf3 across nodes, through the tunnel.
    let forwarded = lab.observe(1, &["--verdict", "forwarded", "--pod", "default/p21"]);
    assert!(
        forwarded
            .iter()
            .any(|e| e["flow"]["l4"]["TCP"]["destination_port"] == 5201
                && e["flow"]["l4"]["TCP"]["flags"]["SYN"] == true
                && e["flow"]["source"]["pod_name"] == "p11"
                && e["flow"]["trace_observation_point"] == "TO_OVERLAY"),
        "{forwarded:#?}"
    );
    assert!(
        forwarded
            .iter()
            .all(|e| e["flow"]["verdict"] == "FORWARDED"),
        "filtered by verdict"
    );
    // The agent filters as hubble does: by port and protocol, by address, and --not.
    let to_iperf = lab.observe(1, &["--to-port", "5201", "--protocol", "tcp"]);
    assert!(!to_iperf.is_empty());
    assert!(
        to_iperf
            .iter()
            .all(|e| e["flow"]["l4"]["TCP"]["destination_port"] == 5201),
        "{to_iperf:#?}"
    );
    let liar = lab.observe(1, &["--from-ip", "100.64.1.99"]);
    assert_eq!(liar.len(), spoofed_flows.len(), "{liar:#?}");
    let not_forwarded = lab.observe(1, &["--not", "--verdict", "forwarded"]);
    assert!(not_forwarded
        .iter()
        .all(|e| e["flow"]["verdict"] != "FORWARDED"));
    assert!(not_forwarded.len() >= spoofed_flows.len());
    let socket = lab.socket(1);
    let human = meshpath(&[
        "observe",
        "--socket",
        socket.to_str().unwrap(),
        "--verdict",
        "dropped",
    ]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.lines().any(|l| l.contains(": default/p11 (ID:")
            && l.contains("<> default/p12 (ID:")
            && l.contains(" Invalid source ip DROPPED (ICMPv4 EchoRequest)")),
        "{human}"
    );

    let n2 = lab.status(2).expect("status of node 2");
    assert!(
        counter(&n2, "forwarded", "local_pod") >= 3,
        "decapsulated and delivered: {n2:#}"
    );
    // p22 answers p12 across nodes too; then every pod port and every uplink received and sent
    // through its AF_XDP socket — the lab's nodes have no kernel path between pods, and these
    // counters show none was needed.
    let p12_to_p22 = lab.exec(
        &lab.pod_ns(1, 2),
        &["ping", "-c", "2", "-i", "0.2", "-W", "2", &pod_ip(2, 2)],
    );
    assert!(ok(&p12_to_p22), "ping p12 → p22 across nodes");
    for n in 1..=2 {
        let status = lab.status(n).expect("status");
        for interface in ["uplink", "pod1", "pod2"] {
            let port = status["dataplane"]["ports"]
                .as_array()
                .and_then(|ports| ports.iter().find(|p| p["interface"] == interface))
                .unwrap_or_else(|| panic!("node {n}: no port on {interface}: {status:#}"));
            for direction in ["rx", "tx"] {
                assert!(
                    port[direction].as_u64() > Some(0),
                    "node {n}, {interface}: {direction} through AF_XDP: {port:#}"
                );
            }
        }
    }

    // The nodes' own traffic is the kernel's (XDP_PASS).
    let node_ping = lab.exec(
        &lab.node_ns(1),
        &["ping", "-c", "2", "-i", "0.2", "-W", "2", "198.18.1.2"],
    );
    assert!(ok(&node_ping), "node to node on the underlay");
}

/// `curl` in node `n`'s namespace: the HTTP status code and the body.
fn curl(lab: &Lab, n: u8, url: &str) -> (u16, String) {
    let out = lab.exec(
        &lab.node_ns(n),
        &["curl", "-s", "-m", "3", "-w", "\\n%{http_code}", url],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// One thread of another process held stopped (ptrace), until dropped.
struct StoppedThread(libc::pid_t);

impl StoppedThread {
    fn stop(tid: libc::pid_t) -> StoppedThread {
        let none = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: ptrace(2) with SEIZE then INTERRUPT on a thread id of a process this test
        // started; the kernel checks the id and our right to trace it, and touches no memory of ours.
        let seized = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, none, none) };
        assert_eq!(
            seized,
            0,
            "seize thread {tid}: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: as above.
        let interrupted = unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, none, none) };
        assert_eq!(interrupted, 0, "{}", std::io::Error::last_os_error());
        let mut status = 0;
        // SAFETY: waitpid(2) writes the stop status into `status`, a live local.
        let waited = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        assert_eq!(waited, tid, "{}", std::io::Error::last_os_error());
        StoppedThread(tid)
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        let none = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: detaching (and so resuming) the thread this value stopped.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, none, none) };
    }
}

/// The thread of `pid` named `name`.
fn thread_named(pid: u32, name: &str) -> Option<libc::pid_t> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim() == name)
        })
        .and_then(|task| task.file_name().to_str()?.parse().ok())
}

/// The health endpoint on the node's 127.0.0.1:9879 turns unhealthy while the dataplane worker is
/// stopped, and healthy again when it runs; `meshpath status` says so with its exit code; the
/// metrics on the node's address carry Cilium's names.
#[test]
fn health_fails_while_the_worker_is_stopped() {
    if !meshpath_testkit::needs_root("health_fails_while_the_worker_is_stopped") {
        return;
    }
    let mut lab = Lab::up("h");
    write_state(&lab);
    lab.start_agent(1);
    let ready = wait_for("readiness", Duration::from_secs(20), || {
        curl(&lab, 1, "http://127.0.0.1:9879/readyz").0 == 200
    });
    assert!(ready, "agent log:\n{}", lab.agent_log(1));
    let socket = lab.socket(1);
    let brief = meshpath(&["status", "--brief", "--socket", socket.to_str().unwrap()]);
    assert!(ok(&brief));
    assert_eq!(String::from_utf8_lossy(&brief.stdout), "OK\n");
    let (code, metrics) = curl(&lab, 1, "http://198.18.1.1:9962/metrics");
    assert_eq!(code, 200);
    for family in [
        "cilium_forward_count_total{direction=\"EGRESS\"}",
        "cilium_bpf_map_pressure{map_name=\"conntrack\"}",
        "cilium_version{",
        "cilium_process_resident_memory_bytes ",
        "meshpath_agent_ready 1",
        "meshpath_xdp_verdicts_total{interface=\"uplink\",role=\"uplink\",verdict=\"pass\"}",
    ] {
        assert!(metrics.contains(family), "{family} in\n{metrics}");
    }

    let agent = lab.agents[0].id();
    let worker = thread_named(agent, "meshpath-worker").expect("the worker thread");
    let stopped = StoppedThread::stop(worker);
    let failing = wait_for("liveness to fail", Duration::from_secs(20), || {
        curl(&lab, 1, "http://127.0.0.1:9879/livez").0 == 503
    });
    assert!(
        failing,
        "the endpoint turns unhealthy with the worker stopped"
    );
    let (code, body) = curl(&lab, 1, "http://127.0.0.1:9879/healthz");
    assert_eq!(code, 503);
    assert!(body.contains("no progress"), "{body}");
    let brief = meshpath(&["status", "--brief", "--socket", socket.to_str().unwrap()]);
    assert_eq!(brief.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&brief.stdout).starts_with("Failing: worker: no progress"));
    drop(stopped);
    let healthy = wait_for("liveness again", Duration::from_secs(20), || {
        curl(&lab, 1, "http://127.0.0.1:9879/livez").0 == 200
    });
    assert!(healthy, "healthy again once the worker runs");
}
