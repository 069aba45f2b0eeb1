//! Several workers per node (root, on the lab): two clusters of one node each, every agent running two
//! workers (cores 0 and 1, queues 0 and 1 of every interface), a global service `echo` with a backend
//! on each node. A client pod on each node holds 32 TCP connections to its cluster's address of the
//! service for a few seconds, a request every 10 ms on each — Maglev sends some to the local backend
//! and some across the mesh, so flows cross in both directions — and every connection must live to
//! the end with every reply. Then each worker of each node must have received frames
//! (`meshpath_worker_packets_total{kind="rx"}`): both workers carried traffic, steered to the worker
//! that owns each flow. Last, cluster1's agent restarts the planned way under 16 more connections,
//! which all live through it: every worker's conntrack handed over to its owner.

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use meshpath_api::forward::ForwardKind;
use meshpath_lab::mesh;
use meshpath_lab::plan::{Node, Plan, Size};

const PORT: u16 = 7000;
const CONNECTIONS: usize = 32;
const SECONDS: f64 = 5.0;
/// The lab's echo traffic (`meshpath-perf restart` and the restart test use it too).
const SCRIPT: &str = include_str!("../lab/src/echo.py");

#[test]
fn two_workers_per_node_carry_service_flows_both_ways_and_both_receive() {
    if !meshpath_testkit::needs_root(
        "two_workers_per_node_carry_service_flows_both_ways_and_both_receive",
    ) {
        return;
    }
    let started = Instant::now();
    // The lab starts agents with this binary: the test's own is not beside it.
    std::env::set_var("MESHPATH_BIN", env!("CARGO_BIN_EXE_meshpath"));
    let lab = Lab::build(&format!("mw{}", std::process::id() % 100_000));
    let mut clients: Vec<(u8, Client)> = lab
        .plan
        .clusters
        .iter()
        .map(|&c| (c, lab.client(c, CONNECTIONS, SECONDS)))
        .collect();
    for (c, client) in &mut clients {
        assert_eq!(
            client.connected(),
            CONNECTIONS,
            "cluster{c}'s client connects"
        );
    }
    for (c, client) in clients {
        let results = client.results();
        let kept = results.iter().filter(|r| r["kept"] == true).count();
        assert_eq!(
            kept, CONNECTIONS,
            "cluster{c}: every connection kept exchanging: {results:?}"
        );
    }
    for node in &lab.plan.nodes {
        let socket = mesh::socket(&lab.plan.prefix, node.cluster, node.node);
        let status = meshpath_api::Client::new(socket).status().expect("status");
        let tunnelled = status.dataplane.forwarded[&ForwardKind::Tunnel];
        assert!(
            tunnelled > 0,
            "{}: flows crossed the mesh from here",
            node.netns
        );
        let listed: Vec<(u32, u32)> = status
            .dataplane
            .workers
            .iter()
            .map(|w| (w.core, w.queue))
            .collect();
        assert_eq!(
            listed,
            [(0, 0), (1, 1)],
            "{}: the status lists both workers",
            node.netns
        );
        let workers = lab.worker_packets(node);
        eprintln!("{}: per worker {workers:?}", node.netns);
        assert_eq!(workers.len(), 2, "{}: two workers report", node.netns);
        for (worker, rx, handed_off) in &workers {
            assert!(
                *rx > 0,
                "{}: worker {worker} received nothing ({handed_off} handed off)",
                node.netns
            );
        }
    }
    planned_restart_keeps_every_workers_flows(&lab);
    eprintln!(
        "multiworker lab: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A planned restart of cluster1's agent (the one translating its client's service flows, and the
/// backend's node for some of cluster2's) while both clients hold connections: every worker's
/// conntrack is handed over, each flow to its owner, and every connection keeps exchanging.
fn planned_restart_keeps_every_workers_flows(lab: &Lab) {
    let mut clients: Vec<(u8, Client)> = lab
        .plan
        .clusters
        .iter()
        .map(|&c| (c, lab.client(c, 8, 8.0)))
        .collect();
    for (c, client) in &mut clients {
        assert_eq!(client.connected(), 8, "cluster{c}'s client connects");
    }
    mesh::stop_agent(&lab.plan, 1, 1, mesh::Stop::Planned).expect("the agent stops");
    mesh::start_agent_again(&lab.plan, 1, 1).expect("the agent starts");
    let socket = mesh::socket(&lab.plan.prefix, 1, 1);
    let back = mesh::wait(Duration::from_secs(30), || {
        meshpath_api::Client::new(&socket).status().is_ok()
    });
    assert!(back, "the restarted agent answers");
    let handed = lab.handed_over_by_worker(&lab.plan.nodes[0]);
    eprintln!("planned restart of c1-n1: flows handed over by worker {handed:?}");
    assert!(
        handed.len() == 2 && handed.iter().all(|&n| n > 0),
        "each worker took flows over: {handed:?}"
    );
    for (c, client) in clients {
        let results = client.results();
        let kept = results.iter().filter(|r| r["kept"] == true).count();
        assert_eq!(
            kept, 8,
            "cluster{c}: every connection lived through the restart: {results:?}"
        );
    }
}

/// The lab, torn down on drop (the echo servers stopped first).
struct Lab {
    plan: Plan,
    servers: Vec<Child>,
}

impl Lab {
    fn build(prefix: &str) -> Lab {
        let size = Size {
            clusters: 2,
            nodes: 1,
            pods: 2,
        };
        let plan = Plan::new(prefix, size)
            .and_then(|p| p.with_workers(2))
            .expect("the plan");
        let _ = meshpath_lab::down::down(prefix);
        let mut lab = Lab {
            plan,
            servers: Vec::new(),
        };
        meshpath_lab::up::up_for_cni(&lab.plan).expect("the lab's namespaces");
        mesh::start(&lab.plan).expect("etcd, the agents and the pods");
        for &c in &lab.plan.clusters {
            mesh::write_state(prefix, c, &lab.state(c)).expect("the service");
        }
        std::fs::write(lab.script(), SCRIPT).expect("the echo script");
        for k in 0..lab.plan.nodes.len() {
            let ns = pod_ns(&lab.plan.nodes[k], 2);
            let args = ["server".to_owned(), PORT.to_string()];
            let server = lab.python(&ns, &args, Stdio::null());
            lab.servers.push(server);
        }
        for &c in &lab.plan.clusters {
            let reachable = mesh::wait(Duration::from_secs(30), || {
                let results = lab.client(c, 1, 0.2).results();
                !results.is_empty() && results.iter().all(|r| r["kept"] == true)
            });
            assert!(reachable, "cluster{c}'s client reaches the echo service");
        }
        lab
    }

    /// Cluster `c`: its node, the client (pod 1) and the echo server (pod 2), and the global service.
    fn state(&self, c: u8) -> String {
        let node = self.node(c);
        let mut yaml = mesh::node_object(&self.plan.prefix, node);
        yaml += &mesh::pod_object(node, 1, &mesh::pod_name(node.node, 1), "{name: client}");
        yaml += &mesh::pod_object(node, 2, &mesh::pod_name(node.node, 2), "{name: echo}");
        yaml += &format!(
            "apiVersion: v1\nkind: Service\n\
             metadata: {{name: echo, namespace: default, annotations: {{service.cilium.io/global: \"true\"}}}}\n\
             spec: {{clusterIP: {vip}, clusterIPs: [{vip}], ports: [{{port: {PORT}, protocol: TCP, targetPort: {PORT}}}], selector: {{name: echo}}}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: echo-1, namespace: default, labels: {{kubernetes.io/service-name: echo}}}}\n\
             addressType: IPv4\nports: [{{name: \"\", port: {PORT}, protocol: TCP}}]\n\
             endpoints:\n- addresses: [{server}]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  \
             nodeName: c{c}-n1\n  targetRef: {{kind: Pod, name: {pod}, namespace: default}}\n---\n",
            vip = service_ip(c),
            server = node.pods[1].addr,
            pod = mesh::pod_name(node.node, 2),
        );
        yaml
    }

    fn node(&self, c: u8) -> &Node {
        self.plan
            .nodes
            .iter()
            .find(|n| n.cluster == c)
            .expect("a node per cluster")
    }

    fn script(&self) -> std::path::PathBuf {
        mesh::dir(&self.plan.prefix).join("echo.py")
    }

    fn python(&self, ns: &str, args: &[String], out: Stdio) -> Child {
        Command::new("ip")
            .args(["netns", "exec", ns, "python3"])
            .arg(self.script())
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 in the pod")
    }

    /// Cluster `c`'s client: `connections` connections to the service for `seconds`.
    fn client(&self, c: u8, connections: usize, seconds: f64) -> Client {
        let args = [
            "client".to_owned(),
            service_ip(c).to_string(),
            PORT.to_string(),
            connections.to_string(),
            seconds.to_string(),
        ];
        let mut child = self.python(&pod_ns(self.node(c), 1), &args, Stdio::piped());
        let stdout = child.stdout.take().expect("the client's stdout");
        Client {
            child,
            stdout: BufReader::new(stdout),
        }
    }

    /// The flows each worker of `node`'s agent took over at its last start, from its log.
    fn handed_over_by_worker(&self, node: &Node) -> Vec<usize> {
        let log = mesh::dir(&self.plan.prefix).join(format!("{}.log", node.netns));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let Some(line) = text
            .lines()
            .rev()
            .find(|l| l.contains("conntrack handed over, by worker"))
        else {
            return Vec::new();
        };
        let list = line
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map_or("", |(list, _)| list);
        list.split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect()
    }

    /// Each worker of `node`'s agent: (worker, frames received, frames handed off), from its metrics.
    fn worker_packets(&self, node: &Node) -> Vec<(String, u64, u64)> {
        let url = format!("http://{}:9962/metrics", node.underlay);
        let out = Command::new("ip")
            .args(["netns", "exec", &node.netns, "curl", "-s", "-m", "5", &url])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout);
        let count = |worker: &str, kind: &str| {
            let series =
                format!("meshpath_worker_packets_total{{worker=\"{worker}\",kind=\"{kind}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&series))
                .and_then(|n| n.trim().parse().ok())
        };
        (0..)
            .map(|w: u16| w.to_string())
            .map_while(|w| {
                let rx = count(&w, "rx")?;
                let handed_off = count(&w, "handed_off").unwrap_or(0);
                Some((w, rx, handed_off))
            })
            .collect()
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

fn pod_ns(node: &Node, k: usize) -> String {
    node.pods[k - 1].netns.clone()
}

/// The service's address in cluster `c` (its services' /24).
fn service_ip(c: u8) -> Ipv4Addr {
    Ipv4Addr::new(100, 63 + c, 255, 20)
}

struct Client {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    /// How many connections opened: the client's first line.
    fn connected(&mut self) -> usize {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("the client's first line");
        let first: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        first["connected"].as_u64().unwrap_or(0) as usize
    }

    /// Each connection's fate (`kept`, `max_gap_ms`), once the client ends.
    fn results(mut self) -> Vec<serde_json::Value> {
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        let _ = self.child.wait();
        let last = rest.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_default()
    }
}
