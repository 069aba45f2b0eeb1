//! The agent's own memory at the benchmark's size: the real `meshpath` binary, with its own defaults
//! (one worker, its 262,144-entry conntrack, its UMEM, its builder's batch and channels, one runtime
//! thread), in a network namespace of its own with a veth uplink, its local state a YAML directory
//! (one node, one pod, a global service for every remote one) and the benchmark's etcd as its remote
//! cluster. Once its tables hold the whole remote cluster its VmRSS is read from /proc, and read
//! again with its VmHWM [`SETTLE`] later: the agent is not done at that moment (its last known
//! state is written some seconds after, and the first reading missed 70 MiB of it).
//!
//! The namespace ([`Node`]) is entered by the whole benchmark (the etcd it starts, its clients, the
//! agent), so the agent reaches the etcd at 127.0.0.1 as the benchmark does.
//!
//! What that memory is, at 100k remote endpoints, 10k services × 10 backends and 1,000 identities
//! with the agent's defaults (measured 2026-12-02 on a 2-core AMD EPYC machine: heaptrack on the
//! agent for what is live once settled (the agent killed then) and at the peak, /proc/<pid>/smaps
//! and glibc's malloc_stats for its mappings and arenas; sizes computed from capacities where they
//! are fixed):
//! - conntrack: 524,288 slots for its 262,144 flows, 258 bytes each: 129 MiB allocated unwritten,
//!   resident only where flows were stored (none here).
//! - UMEM: 18,240 chunks of 2 KiB (two rings of 1024 for the uplink and the host port, a fill ring
//!   of 128 for each of `max-pods`' 110 pods, a burst): 36 MiB, pinned by the kernel, resident from
//!   start. Each pod had two rings of its own before (63 MiB).
//! - The remote cluster's entries, shared by the three states that hold it (the watcher's mirror
//!   for resyncs, the snapshot builder's, the last known state's): 13 MB of endpoints, nodes and
//!   services, 6.6 MB more of service ports (a service's ports share one string for each port
//!   name), and the three states' maps of pointers 13 MB together. Each state held its own copy
//!   before (about 26 MB each).
//! - The builder's indexes (endpoint addresses, endpoints by host, backends' services): 12 MB.
//! - The snapshot's tables: Maglev 20 MB (10k services), ipcache 6.4 MB, the service ends
//!   steering asks of (every frontend and backend, three to a cache line) 5.8 MB.
//! - The endpoint directory (`meshpath observe`'s pod names): 6.4 MB of map holding the shared
//!   entries (three strings an endpoint before: 15 MB).
//! - The local state (one node, one pod, 10k global services, read from YAML): about 15 MB, in the
//!   source's files, the state made of them and the resolved view (the CNI overlay shares the
//!   source's state where it changes nothing; it held a copy, 3.5 MB, before).
//! - glibc's arenas round that up (free chunks between live ones); what writing the last known
//!   state allocates and frees is given back (`malloc_trim`) once written.
//! - The binary's text, about 20 MiB.
//!
//! An address is aligned to 8 bytes, not 16: that alone took 12 MiB off, as every map slot and
//! entry holding one lost its padding.
//!
//! Before (this machine): 374 MiB resident once settled (the benchmark read 305 MiB, too early);
//! 218 MiB before the addresses' alignment and the shared port names; 195–200 MiB now (heap live
//! once settled 109 MB).

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

/// How long after holding the remote cluster the agent's memory is read again: it is not done at
/// that moment (it writes its last known state every 5 s while that changes, and then holds what
/// the write allocated), so its resident memory is read once more after two such writes.
pub const SETTLE: Duration = Duration::from_secs(12);

/// The agent's memory, MiB.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct AgentMemory {
    /// VmRSS [`SETTLE`] after its tables held every remote endpoint.
    pub rss_mib: f64,
    /// VmRSS at the moment its tables held every remote endpoint.
    pub rss_at_sync_mib: f64,
    /// VmHWM: the most it was resident at any time until the last reading.
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
    let (rss_at_sync_mib, _) = memory(agent.child.id())?;
    tokio::time::sleep(SETTLE).await;
    agent.alive()?;
    let (rss_mib, peak_rss_mib) = memory(agent.child.id())?;
    agent.stop();
    let _ = std::fs::remove_dir_all(pin_dir());
    Ok(AgentMemory {
        rss_mib,
        rss_at_sync_mib,
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
