//! The agent's own memory at the benchmark's size: the real `meshpath` binary, with its own defaults
//! (one worker, its 262,144-entry conntrack, its UMEM, its builder's batch and channels, one runtime
//! thread), in a network namespace of its own with a veth uplink, its local state a YAML directory
//! (one node, one pod, a global service for every remote one) and the benchmark's etcd as its remote
//! cluster. Once its tables hold the whole remote cluster, its VmRSS and VmHWM are read from /proc.
//!
//! The namespace ([`Node`]) is entered by the whole benchmark (the etcd it starts, its clients, the
//! agent), so the agent reaches the etcd at 127.0.0.1 as the benchmark does.
//!
//! What that memory is, at 100k remote endpoints and 10k services with the agent's defaults
//! (measured 2026-12-01 on this 2-core machine under a load of 9–12: heaptrack on the agent for its
//! heap, /proc/<pid>/smaps for its mappings; sizes computed from capacities where they are fixed):
//! - conntrack: 524,288 slots for its 262,144 flows, 258 bytes each (slot 128, paths 128, owner 2):
//!   129 MiB allocated. It was written whole at start, so resident; it is now allocated unwritten
//!   and resident only where flows were stored (none here).
//! - UMEM: 32,320 chunks of 2 KiB (two rings of 1024 for the uplink and the host port, two of
//!   128 for each of `max-pods`' 110 pods, a burst): 63 MiB, mapped populated and pinned by the
//!   kernel: resident from start. The pods' share (55 MiB) is what `max-pods` costs.
//! - Each full copy of the remote cluster's state (`ClusterState`: endpoints and services in
//!   hash maps, their names as strings): about 26 MB. The agent holds three: the watcher's mirror
//!   (for resyncs), the snapshot builder's (with its indexes, about 17 MB more: endpoint addresses,
//!   endpoints by host, backends' services) and the last-known-state recorder's.
//! - The endpoint directory (`meshpath observe`'s pod names, three strings an endpoint): 14 MB.
//! - The snapshot's tables: the ipcache's 100k prefixes 8 MB, the services' Maglev tables and
//!   backends a few MB; a new snapshot copies only the shards a change touched.
//! - Writing the last known state every 5 s while it changes: a copy of the state (26 MB) and,
//!   before it was written straight into its file, Cilium's pairs (28 MB) and one 64 MB JSON
//!   buffer on top — the largest single item at the peak.
//! - The binary's text, about 20 MiB.
//!
//! Before (this machine, same load): 504 MiB resident, 523 MiB at the peak; with conntrack left
//! unwritten and the last known state streamed: 305 MiB, peak 305 MiB.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meshpath_lab::ip::ip;
use meshpath_xdp_redirect::netns::Netns;
use serde::{Deserialize, Serialize};

use super::cluster::{Shape, LOCAL_VIPS};

/// How long the agent may take to hold the whole remote cluster.
const SYNC_TIMEOUT: Duration = Duration::from_secs(180);

/// The agent's memory, MiB.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct AgentMemory {
    /// VmRSS once its tables held every remote endpoint.
    pub rss_mib: f64,
    /// VmHWM: the most it was resident at any time until then.
    pub peak_rss_mib: f64,
    /// From start to tables holding every remote endpoint.
    pub sync_s: f64,
}

/// The namespace the benchmark and the agent run in, deleted on drop.
pub struct Node {
    pub name: String,
    netns: Netns,
}

impl Node {
    /// Creates `mps-<pid>` with its loopback up and a veth pair (`uplink` for the agent), and enters
    /// it on the calling thread.
    pub fn create() -> anyhow::Result<Node> {
        let name = format!("mps-{}", std::process::id());
        ip(&["netns", "add", &name])?;
        let node = Node {
            netns: Netns::named(&name).with_context(|| format!("opening {name}"))?,
            name,
        };
        let n = node.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", n, "link", "add", "uplink", "type", "veth", "peer", "name", "fabric",
        ])?;
        ip(&["-n", n, "addr", "add", "198.18.1.1/24", "dev", "uplink"])?;
        for dev in ["uplink", "fabric"] {
            ip(&["-n", n, "link", "set", dev, "up"])?;
        }
        node.enter()?;
        Ok(node)
    }

    /// Moves the calling thread into the namespace.
    pub fn enter(&self) -> anyhow::Result<()> {
        self.netns
            .enter()
            .with_context(|| format!("entering {}", self.name))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs the agent against the remote etcd `remote_file` names (Cilium's format) until its tables
/// hold `shape`'s endpoints, reads its memory and stops it.
pub async fn measure(shape: &Shape, remote_file: &str, node: &Node) -> anyhow::Result<AgentMemory> {
    let dir = tempfile::tempdir()?;
    let config = write_files(dir.path(), shape, remote_file)?;
    let binary = meshpath_lab::agent_binary::agent_binary()?;
    let log = dir.path().join("agent.log");
    let started = Instant::now();
    let child = Command::new(&binary)
        .args(["agent", "--config"])
        .arg(&config)
        .args(["--netns", &node.name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut agent = Agent { child, log };
    let socket = dir.path().join("agent.sock");
    let want = u64::from(shape.endpoints);
    let deadline = started + SYNC_TIMEOUT;
    loop {
        agent.alive()?;
        let socket = socket.clone();
        let ipcache = tokio::task::spawn_blocking(move || {
            meshpath_api::Client::new(socket)
                .summary()
                .map(|s| s.tables.ipcache)
        })
        .await?;
        if ipcache.is_ok_and(|n| n >= want) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the agent's tables did not hold {want} remote endpoints within {SYNC_TIMEOUT:?}; see its log\n{}", agent.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sync_s = started.elapsed().as_secs_f64();
    let (rss_mib, peak_rss_mib) = memory(agent.child.id())?;
    agent.stop();
    let _ = std::fs::remove_dir_all(pin_dir());
    Ok(AgentMemory {
        rss_mib,
        peak_rss_mib,
        sync_s,
    })
}

/// The running agent: stopped (SIGTERM, then killed) on drop.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the agent exited ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-s", "TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
        let _ = std::fs::remove_dir_all(pin_dir());
    }
}

/// VmRSS and VmHWM of process `pid`, MiB.
fn memory(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// The agent's configuration, its local state and its remote cluster's file; returns the
/// configuration's path.
fn write_files(dir: &Path, shape: &Shape, remote_file: &str) -> anyhow::Result<PathBuf> {
    let state = dir.join("state");
    let mesh = dir.join("clustermesh");
    std::fs::create_dir_all(&state)?;
    std::fs::create_dir_all(&mesh)?;
    std::fs::write(state.join("cluster.yaml"), local_state(shape))?;
    std::fs::write(mesh.join("cluster2"), remote_file)?;
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster: {{name: cluster1, id: 1}}\n\
             node: {{name: node-0, uplink: uplink, ipv4: 198.18.1.1, router-mac: \"02:00:00:00:00:fe\"}}\n\
             clustermesh: {{config-dir: {mesh}}}\n\
             source: {{yaml-dir: {state}}}\n\
             status-socket: {socket}\n\
             health: null\n\
             state-dir: {state_dir}\n\
             bpf-pin-dir: {pins}\n",
            mesh = mesh.display(),
            state = state.display(),
            socket = dir.join("agent.sock").display(),
            state_dir = dir.join("node-state").display(),
            pins = pin_dir().display(),
        ),
    )?;
    Ok(config)
}

/// Where the agent pins its maps: its own directory on bpffs, removed after the run.
fn pin_dir() -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/meshpath/perf-sync-{}",
        std::process::id()
    ))
}

/// Cluster1 as its API server would hold it: the node, the client pod and a global service for
/// every remote one (as [`super::cluster::local`] builds it in-process).
fn local_state(shape: &Shape) -> String {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-0}\n\
         spec: {podCIDR: 10.0.1.0/24, podCIDRs: [10.0.1.0/24]}\n\
         status: {addresses: [{type: InternalIP, address: 198.18.1.1}]}\n---\n\
         apiVersion: v1\nkind: Pod\n\
         metadata: {name: client, namespace: bench, labels: {app: client}}\n\
         spec: {nodeName: node-0, containers: [{name: c, image: none}]}\n\
         status: {phase: Running, podIP: 10.0.1.10, podIPs: [{ip: 10.0.1.10}], \
         conditions: [{type: Ready, status: \"True\"}]}\n---\n",
    );
    for j in 0..shape.services {
        let vip = std::net::Ipv4Addr::from(LOCAL_VIPS + j);
        yaml += &format!(
            "apiVersion: v1\nkind: Service\n\
             metadata: {{name: svc-{j}, namespace: bench, annotations: {{service.cilium.io/global: \"true\"}}}}\n\
             spec: {{clusterIP: {vip}, clusterIPs: [{vip}], ports: [{{name: http, port: 80, protocol: TCP}}]}}\n---\n"
        );
    }
    yaml
}
