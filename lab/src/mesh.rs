//! `meshpath lab up --mesh`: on top of the namespaces, one etcd per cluster (on its first node) and one
//! agent per node, every cluster meshed with every other, the local state of each cluster a YAML
//! directory listing its nodes and the lab's pods. The processes run on after `lab up` returns;
//! `lab down` ends them with the namespaces. Files live in [`dir`]. The agents are the `meshpath`
//! binary [`agent_binary`](crate::agent_binary::agent_binary) finds.
//!
//! The agents route as [`MeshOptions`] say. A cluster's nodes share its bridge (one segment), the
//! clusters are a routed hop apart: hybrid routing goes plain inside a cluster and tunnels across;
//! native routing has the fabric route every node's pod CIDR to that node, as a cloud's route table
//! would, and tells the agents so (`underlay-routes-pod-cidrs`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::plan::{Node, Plan};

/// How the lab's agents carry pod traffic between nodes: `dataplane.routing` of their configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// Always encapsulated.
    #[default]
    Tunnel,
    /// Never encapsulated: the fabric routes pod CIDRs (`direct` is its alias).
    #[value(alias = "direct")]
    Native,
    /// Plain inside a cluster's segment, encapsulated across clusters.
    Hybrid,
}

/// What tunnels encapsulate with: `dataplane.tunnel`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Tunnel {
    /// UDP 8472.
    #[default]
    Vxlan,
    /// UDP 6081.
    Geneve,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshOptions {
    pub routing: Routing,
    pub tunnel: Tunnel,
    /// The fabric routes every node's pod CIDR to it (native routing tells its agents so); without
    /// it, native routing reaches only the nodes of the sender's own cluster and refuses the others.
    pub fabric_routes_pods: bool,
}

impl MeshOptions {
    /// The options `meshpath lab up --mesh` and `meshpath demo` take: native routing over a fabric
    /// that routes the pod CIDRs.
    pub fn new(routing: Routing, tunnel: Tunnel) -> MeshOptions {
        MeshOptions {
            routing,
            tunnel,
            fabric_routes_pods: routing == Routing::Native,
        }
    }

    /// The agent configuration's `dataplane` keys for them.
    fn dataplane_keys(self) -> String {
        let tunnel = match self.tunnel {
            Tunnel::Vxlan => "vxlan",
            Tunnel::Geneve => "geneve",
        };
        let routing = match self.routing {
            Routing::Tunnel => "tunnel".to_owned(),
            Routing::Native => format!(
                "native, underlay-routes-pod-cidrs: {}",
                self.fabric_routes_pods
            ),
            Routing::Hybrid => "hybrid".to_owned(),
        };
        format!("routing: {routing}, tunnel: {tunnel}")
    }
}

/// Where a meshed lab keeps its configuration, state, sockets and logs.
pub fn dir(prefix: &str) -> PathBuf {
    PathBuf::from(format!("/run/meshpath/lab-{prefix}"))
}

pub fn cluster_dir(prefix: &str, c: u8) -> PathBuf {
    dir(prefix).join(format!("cluster{c}"))
}

/// The status socket of the agent on node `n` of cluster `c`.
pub fn socket(prefix: &str, c: u8, n: u8) -> PathBuf {
    dir(prefix).join(format!("c{c}-n{n}.sock"))
}

/// The name of pod `k` of node `n` in the lab's local state (namespace `default`).
pub fn pod_name(n: u8, k: u8) -> String {
    format!("p{n}-{k}")
}

/// Starts the etcds and the agents of `plan`, tunnelling with VXLAN, and waits until every agent
/// answers.
pub fn start(plan: &Plan) -> anyhow::Result<()> {
    start_with(plan, MeshOptions::default())
}

/// Starts the etcds and the agents of `plan`, routing as `options` say (first having the fabric route
/// the pod CIDRs if they say so), and waits until every agent answers.
pub fn start_with(plan: &Plan, options: MeshOptions) -> anyhow::Result<()> {
    // Before anything starts: a missing agent binary leaves nothing to undo.
    let agent = crate::agent_binary::agent_binary()?;
    if options.fabric_routes_pods {
        crate::up::route_pod_cidrs(plan)?;
    }
    let root = dir(&plan.prefix);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    for &c in &plan.clusters {
        let nodes: Vec<&Node> = plan.nodes.iter().filter(|n| n.cluster == c).collect();
        let first = nodes.first().context("a cluster without nodes")?;
        start_etcd(plan, first, true)?;
        write_state(&plan.prefix, c, &lab_objects(&nodes))?;
        write_mesh_config(plan, c)?;
    }
    for &c in &plan.clusters {
        wait_for_etcd(plan, c)?;
    }
    for node in &plan.nodes {
        write_agent_config(plan, node, options)?;
        start_agent(plan, node, &agent)?;
    }
    for node in &plan.nodes {
        let sock = socket(&plan.prefix, node.cluster, node.node);
        if !wait(Duration::from_secs(20), || sock.exists()) {
            bail!(
                "the agent of {} did not start; see {}",
                node.netns,
                log(plan, &node.netns).display()
            );
        }
    }
    Ok(())
}

fn log(plan: &Plan, name: &str) -> PathBuf {
    dir(&plan.prefix).join(format!("{name}.log"))
}

fn etcd_url(c: u8) -> String {
    format!("http://198.18.{c}.1:2379")
}

/// Starts `args` inside `netns`, detached: it outlives this command, `lab down` ends it.
/// Returns its pid (`ip netns exec` execs the command: the same process).
fn spawn_in(netns: &str, args: &[&str], log: &Path) -> anyhow::Result<u32> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let child = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {args:?} in {netns}"))?;
    Ok(child.id())
}

/// Starts cluster `node.cluster`'s etcd on `node`; `fresh`: with an empty data directory.
fn start_etcd(plan: &Plan, node: &Node, fresh: bool) -> anyhow::Result<()> {
    let c = node.cluster;
    let data = cluster_dir(&plan.prefix, c).join("etcd");
    if fresh {
        let _ = std::fs::remove_dir_all(&data);
    }
    std::fs::create_dir_all(&data)?;
    let (client, name) = (etcd_url(c), format!("cluster{c}"));
    let args = [
        "etcd",
        "--name",
        &name,
        "--data-dir",
        &data.to_string_lossy(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-cluster",
        &format!("{name}=http://127.0.0.1:2380"),
        // etcd 3.4 defaults to the deprecated capnslog and warns about it on every start.
        "--logger",
        "zap",
        "--log-outputs",
        "stderr",
    ];
    let pid = spawn_in(&node.netns, &args, &log(plan, &format!("etcd-c{c}")))?;
    std::fs::write(
        dir(&plan.prefix).join(format!("etcd-c{c}.pid")),
        pid.to_string(),
    )?;
    Ok(())
}

/// Kills cluster `c`'s etcd (as a crash or a network partition would take it away).
pub fn stop_etcd(plan: &Plan, c: u8) -> anyhow::Result<()> {
    let pid = std::fs::read_to_string(dir(&plan.prefix).join(format!("etcd-c{c}.pid")))
        .context("etcd's pid file")?;
    stop_pid(pid.trim(), "KILL").with_context(|| format!("etcd of cluster{c}"))
}

/// Starts cluster `c`'s etcd again with its data, and waits until it answers.
pub fn start_etcd_again(plan: &Plan, c: u8) -> anyhow::Result<()> {
    let node = plan
        .nodes
        .iter()
        .find(|n| n.cluster == c)
        .context("a cluster without nodes")?;
    start_etcd(plan, node, false)?;
    wait_for_etcd(plan, c)
}

fn wait_for_etcd(plan: &Plan, c: u8) -> anyhow::Result<()> {
    let node = plan
        .nodes
        .iter()
        .find(|n| n.cluster == c)
        .context("cluster without nodes")?;
    let up = wait(Duration::from_secs(15), || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &node.netns,
                "etcdctl",
                "--endpoints",
                &etcd_url(c),
                "endpoint",
                "health",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !up {
        bail!(
            "etcd of cluster{c} did not come up; see {}",
            log(plan, &format!("etcd-c{c}")).display()
        );
    }
    Ok(())
}

/// The cluster's nodes and the lab's pods as Kubernetes objects; every pod labelled `name: <its name>`.
fn lab_objects(nodes: &[&Node]) -> String {
    let mut yaml = String::new();
    for node in nodes {
        yaml += &node_object(node);
        for k in 1..=node.pods.len() as u8 {
            let name = pod_name(node.node, k);
            yaml += &pod_object(node, k, &name, &format!("{{name: {name}}}"));
        }
    }
    yaml
}

pub fn node_object(node: &Node) -> String {
    let (net, len) = node.pod_cidr;
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: c{c}-n{n}}}\n\
         spec: {{podCIDR: {net}/{len}, podCIDRs: [{net}/{len}]}}\n\
         status: {{addresses: [{{type: InternalIP, address: {ip}}}]}}\n---\n",
        c = node.cluster,
        n = node.node,
        ip = node.underlay,
    )
}

/// Pod `k` of `node` as `name` with `labels` (a YAML flow mapping).
pub fn pod_object(node: &Node, k: u8, name: &str, labels: &str) -> String {
    let ip = node.pods[usize::from(k) - 1].addr;
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {labels}}}\n\
         spec: {{nodeName: c{c}-n{n}, containers: [{{name: c, image: none}}]}}\n\
         status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}], \
         conditions: [{{type: Ready, status: \"True\"}}]}}\n---\n",
        c = node.cluster,
        n = node.node,
    )
}

/// Replaces cluster `c`'s local state (the YAML every agent of the cluster watches).
pub fn write_state(prefix: &str, c: u8, yaml: &str) -> anyhow::Result<()> {
    let state = cluster_dir(prefix, c).join("state");
    std::fs::create_dir_all(&state)?;
    write_atomically(&state.join("lab.yaml"), yaml)
}

fn write_mesh_config(plan: &Plan, c: u8) -> anyhow::Result<()> {
    let mesh = cluster_dir(&plan.prefix, c).join("clustermesh");
    let _ = std::fs::remove_dir_all(&mesh);
    std::fs::create_dir_all(&mesh)?;
    for other in plan.clusters.iter().filter(|o| **o != c) {
        let file = format!(
            "endpoints:\n- {}\ninsecure: true\ncluster-id: {other}\n",
            etcd_url(*other)
        );
        std::fs::write(mesh.join(format!("cluster{other}")), file)?;
    }
    Ok(())
}

/// Where the lab's agents pin their XDP maps: one bpffs directory per lab, removed by `lab down`.
pub fn pin_dir(prefix: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/meshpath/lab-{prefix}"))
}

fn agent_config(prefix: &str, c: u8, n: u8) -> PathBuf {
    dir(prefix).join(format!("c{c}-n{n}.yaml"))
}

fn write_agent_config(plan: &Plan, node: &Node, options: MeshOptions) -> anyhow::Result<()> {
    let (c, n) = (node.cluster, node.node);
    let router = interface_mac(&plan.fabric, &crate::plan::bridge(c))?;
    let mut pods = String::new();
    for (i, pod) in node.pods.iter().enumerate() {
        let mac = interface_mac(&pod.netns, "eth0")?;
        let name = pod_name(n, i as u8 + 1);
        pods += &format!(
            "  - {{pod: default/{name}, interface: {}, mac: \"{mac}\"}}\n",
            pod.node_port
        );
    }
    let cluster = cluster_dir(&plan.prefix, c);
    let config = format!(
        "cluster: {{name: cluster{c}, id: {c}}}\n\
         node: {{name: c{c}-n{n}, uplink: uplink, ipv4: {ip}, router-mac: \"{router}\"}}\n\
         pods:\n{pods}\
         dataplane: {{cores: [{core}], {routing}, conntrack-capacity: 65536, mtu: 1500}}\n\
         etcd: {{endpoints: [\"{etcd}\"], insecure: true}}\n\
         clustermesh: {{config-dir: {mesh}, grace-period: 10s}}\n\
         source: {{yaml-dir: {state}}}\n\
         status-socket: {socket}\n\
         metrics: {ip}:9962\n\
         state-dir: {node_state}\n\
         bpf-pin-dir: {pins}\n",
        ip = node.underlay,
        node_state = dir(&plan.prefix).join(format!("state-c{c}-n{n}")).display(),
        pins = pin_dir(&plan.prefix).join(format!("c{c}-n{n}")).display(),
        core = (c + n) % 2,
        routing = options.dataplane_keys(),
        etcd = etcd_url(c),
        mesh = cluster.join("clustermesh").display(),
        state = cluster.join("state").display(),
        socket = socket(&plan.prefix, c, n).display(),
    );
    std::fs::write(agent_config(&plan.prefix, c, n), config)?;
    Ok(())
}

/// Starts the agent of `node` with the configuration written for it.
fn start_agent(plan: &Plan, node: &Node, agent: &Path) -> anyhow::Result<()> {
    let (c, n) = (node.cluster, node.node);
    let path = agent_config(&plan.prefix, c, n);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log(plan, &node.netns))?;
    let child = Command::new(agent)
        .args(["agent", "--config"])
        .arg(&path)
        .args(["--netns", &node.netns])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting the agent of {}", node.netns))?;
    std::fs::write(pid_file(&plan.prefix, c, n), child.id().to_string())?;
    Ok(())
}

fn pid_file(prefix: &str, c: u8, n: u8) -> PathBuf {
    dir(prefix).join(format!("c{c}-n{n}.pid"))
}

/// How an agent is stopped: the planned way (SIGTERM: it hands conntrack over) or killed (SIGKILL, as
/// an OOM kill does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Planned,
    Killed,
}

/// Stops the agent of node `n` of cluster `c` and waits until its process is gone.
pub fn stop_agent(plan: &Plan, c: u8, n: u8, how: Stop) -> anyhow::Result<()> {
    let pid = std::fs::read_to_string(pid_file(&plan.prefix, c, n))
        .context("the agent's pid file")?
        .trim()
        .to_owned();
    let signal = match how {
        Stop::Planned => "TERM",
        Stop::Killed => "KILL",
    };
    stop_pid(&pid, signal).with_context(|| format!("the agent of c{c}-n{n}"))
}

/// Signals `pid` and waits until it is gone.
fn stop_pid(pid: &str, signal: &str) -> anyhow::Result<()> {
    Command::new("kill").args(["-s", signal, pid]).status()?;
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if !wait(Duration::from_secs(20), || {
        !proc_dir.exists() || zombie(&proc_dir)
    }) {
        bail!("pid {pid} did not exit");
    }
    Ok(())
}

/// A child that exited but was never waited for: `lab` does not wait for the agents it started.
fn zombie(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

/// Starts the agent of node `n` of cluster `c` again (after [`stop_agent`]), with the configuration
/// it had.
pub fn start_agent_again(plan: &Plan, c: u8, n: u8) -> anyhow::Result<()> {
    let agent = crate::agent_binary::agent_binary()?;
    let node = plan
        .nodes
        .iter()
        .find(|node| node.cluster == c && node.node == n)
        .with_context(|| format!("no node c{c}-n{n} in the plan"))?;
    start_agent(plan, node, &agent)
}

fn interface_mac(netns: &str, interface: &str) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["-n", netns, "-j", "link", "show", "dev", interface])
        .output()?;
    let links: serde_json::Value =
        serde_json::from_slice(&out.stdout).with_context(|| format!("{interface} in {netns}"))?;
    let mac = links[0]["address"].as_str().unwrap_or_default();
    if mac.is_empty() {
        bail!("{interface} in {netns} has no MAC address");
    }
    Ok(mac.to_owned())
}

/// Writes a file so that a watcher never reads half of it.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub fn wait(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
