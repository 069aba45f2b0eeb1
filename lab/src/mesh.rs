//! `meshpath lab up --mesh`: on top of the namespaces, one etcd and one stand-in Kubernetes API server
//! per cluster (on its first node) and one agent per node, every cluster meshed with every other. Each
//! cluster's objects (its nodes and the lab's pods, as manifests) are a YAML directory that its
//! stand-in serves ([`apiserver::process`](crate::apiserver::process)), and its agents read them
//! from there with `source: kubernetes`, as from a cluster's API server. Every etcd serves TLS only and
//! requires a client certificate ([`pki`](crate::pki)); RBAC is on: the cluster's agents write as
//! `root`, remote clusters read as `remote`, whose role reads `cilium/` and nothing else; with
//! [`Plan::etcd_members`] 3, each cluster's etcd is a 3-member cluster. The agents' configurations
//! list no pods: once the agents run, the CNI plugin makes every pod as a runtime runs it
//! ([`cni`](crate::cni)), in the namespaces [`up_for_cni`](crate::up::up_for_cni) made. The processes
//! run on after `lab up` returns; `lab down` ends them with the namespaces. Files live in [`dir`]. The
//! agents are the `meshpath` binary [`agent_binary`](crate::agent_binary::agent_binary) finds.
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

use crate::apiserver::process as apiserver;
use crate::pki::{ClusterPki, LabCa, REMOTE_USER};
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

/// The agents' `encryption`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Encryption {
    #[default]
    Off,
    On,
    Strict,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshOptions {
    pub routing: Routing,
    pub tunnel: Tunnel,
    /// The fabric routes every node's pod CIDR to it (native routing tells its agents so); without
    /// it, native routing reaches only the nodes of the sender's own cluster and refuses the others.
    pub fabric_routes_pods: bool,
    /// WireGuard between the nodes: the agents make their keys, the lab annotates their Nodes.
    pub encryption: Encryption,
}

impl MeshOptions {
    /// The options `meshpath lab up --mesh` and `meshpath demo` take: native routing over a fabric
    /// that routes the pod CIDRs.
    pub fn new(routing: Routing, tunnel: Tunnel) -> MeshOptions {
        MeshOptions {
            routing,
            tunnel,
            fabric_routes_pods: routing == Routing::Native,
            encryption: Encryption::Off,
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

    pub(crate) fn encryption_key(self) -> &'static str {
        match self.encryption {
            Encryption::Off => "off",
            Encryption::On => "on",
            Encryption::Strict => "strict",
        }
    }
}

/// Where a meshed lab keeps its configuration, state, sockets and logs.
pub fn dir(prefix: &str) -> PathBuf {
    PathBuf::from(format!("/run/meshpath/lab-{prefix}"))
}

/// Removes the lab of `prefix` as far as it exists — its namespaces, with what runs in them, and its
/// directory of configurations, sockets and logs — for a lab's owner on its way out, failed or not.
pub fn tear_down(prefix: &str) {
    let _ = crate::down::down(prefix);
    let _ = std::fs::remove_dir_all(dir(prefix));
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
/// the pod CIDRs if they say so), waits until every agent answers, then has the CNI plugin make every
/// pod (the lab built by [`up_for_cni`](crate::up::up_for_cni)).
pub fn start_with(plan: &Plan, options: MeshOptions) -> anyhow::Result<()> {
    // Before anything starts: a missing agent or plugin binary leaves nothing to undo.
    let agent = crate::agent_binary::agent_binary()?;
    crate::cni::plugin_binary()?;
    if options.fabric_routes_pods {
        crate::up::route_pod_cidrs(plan)?;
    }
    let root = dir(&plan.prefix);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let ca = LabCa::new().context("the lab's certificate authority")?;
    for &c in &plan.clusters {
        let nodes: Vec<&Node> = plan.nodes.iter().filter(|n| n.cluster == c).collect();
        let first = nodes.first().context("a cluster without nodes")?;
        ca.write_cluster(&pki(plan, c), &[etcd_ip(c)])?;
        start_etcd(plan, first, true)?;
        write_state(&plan.prefix, c, &lab_objects(&plan.prefix, &nodes))?;
        apiserver::start(plan, c, true)?;
        write_mesh_config(plan, c)?;
    }
    for &c in &plan.clusters {
        wait_for_etcd(plan, c)?;
        enable_rbac(plan, c)?;
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
    if options.encryption != Encryption::Off {
        announce_keys(plan)?;
    }
    crate::cni::add_pods(plan)?;
    crate::external::start(plan, options)
}

pub(crate) fn log(plan: &Plan, name: &str) -> PathBuf {
    dir(&plan.prefix).join(format!("{name}.log"))
}

fn etcd_ip(c: u8) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(198, 18, c, 1)
}

/// The client URL of member `m` of cluster `c`'s etcd.
fn member_url(c: u8, m: u8) -> String {
    format!("https://{}:{}", etcd_ip(c), 2379 + 10 * u16::from(m))
}

/// Every member's client URL: what the agents and the remote clusters are given.
pub fn etcd_urls(plan: &Plan, c: u8) -> Vec<String> {
    (0..plan.etcd_members).map(|m| member_url(c, m)).collect()
}

/// Cluster `c`'s certificate files.
pub fn pki(plan: &Plan, c: u8) -> ClusterPki {
    ClusterPki::at(&cluster_dir(&plan.prefix, c))
}

/// Starts `args` inside `netns`, detached: it outlives this command, `lab down` ends it.
/// Returns its pid (`ip netns exec` execs the command: the same process).
pub(crate) fn spawn_in(netns: &str, args: &[&str], log: &Path) -> anyhow::Result<u32> {
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

/// Starts cluster `node.cluster`'s etcd on `node`, every member; `fresh`: with empty data directories.
fn start_etcd(plan: &Plan, node: &Node, fresh: bool) -> anyhow::Result<()> {
    for member in 0..plan.etcd_members {
        start_member(plan, node, member, fresh)?;
    }
    Ok(())
}

/// Member `m`'s name suffix: none for the first (a one-member etcd is named after its cluster).
fn member_suffix(m: u8) -> String {
    if m == 0 {
        String::new()
    } else {
        format!("-m{m}")
    }
}

fn peer_url(m: u8) -> String {
    format!("http://127.0.0.1:{}", 2380 + 10 * u16::from(m))
}

fn start_member(plan: &Plan, node: &Node, m: u8, fresh: bool) -> anyhow::Result<()> {
    let c = node.cluster;
    let data = cluster_dir(&plan.prefix, c).join(format!("etcd{}", member_suffix(m)));
    if fresh {
        let _ = std::fs::remove_dir_all(&data);
    }
    std::fs::create_dir_all(&data)?;
    let name = |m: u8| format!("cluster{c}{}", member_suffix(m));
    let initial: Vec<String> = (0..plan.etcd_members)
        .map(|m| format!("{}={}", name(m), peer_url(m)))
        .collect();
    let client = member_url(c, m);
    let pki = pki(plan, c);
    let args = [
        "etcd",
        "--name",
        &name(m),
        "--data-dir",
        &data.to_string_lossy(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer_url(m),
        "--initial-advertise-peer-urls",
        &peer_url(m),
        "--initial-cluster",
        &initial.join(","),
        "--initial-cluster-token",
        &format!("{}-cluster{c}", plan.prefix),
        "--cert-file",
        &pki.server_cert.to_string_lossy(),
        "--key-file",
        &pki.server_key.to_string_lossy(),
        "--trusted-ca-file",
        &pki.ca.to_string_lossy(),
        "--client-cert-auth",
        // etcd 3.4 defaults to the deprecated capnslog and warns about it on every start.
        "--logger",
        "zap",
        "--log-outputs",
        "stderr",
    ];
    let which = format!("etcd-c{c}{}", member_suffix(m));
    let pid = spawn_in(&node.netns, &args, &log(plan, &which))?;
    std::fs::write(
        dir(&plan.prefix).join(format!("{which}.pid")),
        pid.to_string(),
    )?;
    Ok(())
}

/// Kills member `m` of cluster `c`'s etcd (as a crash would).
pub fn stop_etcd_member(plan: &Plan, c: u8, m: u8) -> anyhow::Result<()> {
    let which = format!("etcd-c{c}{}", member_suffix(m));
    let pid = std::fs::read_to_string(dir(&plan.prefix).join(format!("{which}.pid")))
        .with_context(|| format!("{which}'s pid file"))?;
    stop_pid(pid.trim(), "KILL").with_context(|| which)
}

/// The member of cluster `c`'s etcd that leads raft now.
pub fn etcd_leader(plan: &Plan, c: u8) -> anyhow::Result<u8> {
    let netns = &first_node(plan, c)?.netns;
    for m in 0..plan.etcd_members {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "etcdctl",
                "--endpoints",
                &member_url(c, m),
            ])
            .args(pki(plan, c).etcdctl_flags())
            .args(["endpoint", "status", "-w", "json"])
            .output()?;
        let status: serde_json::Value = match serde_json::from_slice(&out.stdout) {
            Ok(status) => status,
            Err(_) => continue,
        };
        let status = &status[0]["Status"];
        if status["leader"].is_u64() && status["leader"] == status["header"]["member_id"] {
            return Ok(m);
        }
    }
    bail!("cluster{c}'s etcd has no leader")
}

fn first_node(plan: &Plan, c: u8) -> anyhow::Result<&Node> {
    plan.nodes
        .iter()
        .find(|n| n.cluster == c)
        .context("a cluster without nodes")
}

/// Kills cluster `c`'s etcd (as a crash or a network partition would take it away).
pub fn stop_etcd(plan: &Plan, c: u8) -> anyhow::Result<()> {
    for m in 0..plan.etcd_members {
        stop_etcd_member(plan, c, m)?;
    }
    Ok(())
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
        etcdctl(plan, &node.netns, c, &["endpoint", "health"]).is_ok()
    });
    if !up {
        bail!(
            "etcd of cluster{c} did not come up; see {}",
            log(plan, &format!("etcd-c{c}")).display()
        );
    }
    Ok(())
}

/// Runs etcdctl against cluster `c`'s etcd as its `root` user, inside `netns`; its output.
fn etcdctl(plan: &Plan, netns: &str, c: u8, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "etcdctl", "--endpoints"])
        .arg(etcd_urls(plan, c).join(","))
        .args(pki(plan, c).etcdctl_flags())
        .args(args)
        .output()
        .context("running etcdctl")?;
    if !out.status.success() {
        bail!(
            "etcdctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// etcdctl against cluster `c`'s etcd as an operator on its first node would run it (as `root`).
pub fn etcdctl_in(plan: &Plan, c: u8, args: &[&str]) -> anyhow::Result<String> {
    etcdctl(plan, &first_node(plan, c)?.netns, c, args)
}

/// Turns RBAC on in cluster `c`'s fresh etcd: `root` (the cluster's agents, by their certificate's
/// CN) may do anything; `remote` may read `cilium/` and nothing else. Passwords are never used: the
/// users authenticate with their certificates, and random ones are set because etcd 3.4 wants one.
fn enable_rbac(plan: &Plan, c: u8) -> anyhow::Result<()> {
    let netns = &plan
        .nodes
        .iter()
        .find(|n| n.cluster == c)
        .context("a cluster without nodes")?
        .netns;
    let password = |user: &str| format!("{user}:{:016x}", rand_u64());
    let root = password("root");
    let remote = password(REMOTE_USER);
    let steps: [&[&str]; 7] = [
        &["user", "add", &root],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "remote-read"],
        &[
            "role",
            "grant-permission",
            "remote-read",
            "--prefix=true",
            "read",
            "cilium/",
        ],
        &["user", "add", &remote],
        &["user", "grant-role", REMOTE_USER, "remote-read"],
        &["auth", "enable"],
    ];
    for step in steps {
        etcdctl(plan, netns, c, step).with_context(|| format!("RBAC of cluster{c}'s etcd"))?;
    }
    Ok(())
}

/// A password nobody types: the clock's nanoseconds and this process, hashed by std's random state.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}

/// The cluster's nodes and the lab's pods as Kubernetes objects; every pod labelled `name: <its name>`.
fn lab_objects(prefix: &str, nodes: &[&Node]) -> String {
    let mut yaml = String::new();
    for node in nodes {
        yaml += &node_object(prefix, node);
        for k in 1..=node.pods.len() as u8 {
            let name = pod_name(node.node, k);
            yaml += &pod_object(node, k, &name, &format!("{{name: {name}}}"));
        }
    }
    yaml
}

/// The Node object of `node`, with its agent's WireGuard public key as Cilium annotates it once the
/// lab has learnt it ([`announce_keys`]).
pub fn node_object(prefix: &str, node: &Node) -> String {
    let (net, len) = node.pod_cidr;
    let (c, n) = (node.cluster, node.node);
    let annotations = std::fs::read_to_string(public_key_file(prefix, c, n))
        .map(|key| {
            format!(
                ", annotations: {{network.cilium.io/wg-pub-key: \"{}\"}}",
                key.trim()
            )
        })
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: c{c}-n{n}{annotations}}}\n\
         spec: {{podCIDR: {net}/{len}, podCIDRs: [{net}/{len}]}}\n\
         status: {{addresses: [{{type: InternalIP, address: {ip}}}]}}\n---\n",
        ip = node.underlay,
    )
}

/// Where the lab keeps the public key node `n` of cluster `c` announced.
fn public_key_file(prefix: &str, c: u8, n: u8) -> PathBuf {
    dir(prefix).join(format!("c{c}-n{n}.wgpub"))
}

/// The agent's state directory, where its WireGuard key lives.
pub fn node_state_dir(prefix: &str, c: u8, n: u8) -> PathBuf {
    dir(prefix).join(format!("state-c{c}-n{n}"))
}

/// What a Kubernetes cluster with Cilium does with each agent's key: reads every agent's public key
/// from its status (the agent makes its key on its first start with encryption) and annotates its
/// Node with it, so the agents of its cluster learn it (the other clusters learn it from the node
/// records). Waits until each agent answers with a key.
pub fn announce_keys(plan: &Plan) -> anyhow::Result<()> {
    for node in &plan.nodes {
        let (c, n) = (node.cluster, node.node);
        let client = meshpath_api::Client::new(socket(&plan.prefix, c, n));
        let mut key = None;
        wait(Duration::from_secs(20), || {
            key = client
                .status()
                .ok()
                .and_then(|s| s.encryption)
                .and_then(|e| e.public_key);
            key.is_some()
        });
        let key = key.with_context(|| format!("the agent of c{c}-n{n} shows no WireGuard key"))?;
        std::fs::write(public_key_file(&plan.prefix, c, n), key)?;
    }
    for &c in &plan.clusters {
        let nodes: Vec<&Node> = plan.nodes.iter().filter(|n| n.cluster == c).collect();
        write_state(&plan.prefix, c, &lab_objects(&plan.prefix, &nodes))?;
    }
    Ok(())
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

/// Replaces cluster `c`'s objects (the YAML its stand-in API server serves to the cluster's agents).
pub fn write_state(prefix: &str, c: u8, yaml: &str) -> anyhow::Result<()> {
    let state = cluster_dir(prefix, c).join("state");
    std::fs::create_dir_all(&state)?;
    write_atomically(&state.join("lab.yaml"), yaml)
}

/// Cluster `c`'s clustermesh directory laid out as Cilium's Secret is mounted: one file per remote
/// cluster, and the `common-etcd-client*` files every remote is read with (the read-only `remote`
/// user's certificate; one CA signs every etcd's).
fn write_mesh_config(plan: &Plan, c: u8) -> anyhow::Result<()> {
    let mesh = cluster_dir(&plan.prefix, c).join("clustermesh");
    let _ = std::fs::remove_dir_all(&mesh);
    std::fs::create_dir_all(&mesh)?;
    let pki = pki(plan, c);
    let common = |suffix: &str| mesh.join(format!("common-etcd-client{suffix}"));
    std::fs::copy(&pki.ca, common("-ca.crt"))?;
    std::fs::copy(&pki.remote_cert, common(".crt"))?;
    std::fs::copy(&pki.remote_key, common(".key"))?;
    for other in plan.clusters.iter().filter(|o| **o != c) {
        let endpoints: Vec<String> = etcd_urls(plan, *other)
            .iter()
            .map(|url| format!("- {url}\n"))
            .collect();
        let file = format!(
            "endpoints:\n{}trusted-ca-file: {}\ncert-file: {}\nkey-file: {}\ncluster-id: {other}\n",
            endpoints.concat(),
            common("-ca.crt").display(),
            common(".crt").display(),
            common(".key").display(),
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
    let cluster = cluster_dir(&plan.prefix, c);
    let config = format!(
        "cluster: {{name: cluster{c}, id: {c}}}\n\
         node: {{name: c{c}-n{n}, uplink: uplink, ipv4: {ip}, router-mac: \"{router}\"}}\n\
         pods: []\n\
         dataplane: {{cores: [{cores}], {routing}, conntrack-capacity: 65536, mtu: 1500}}\n\
         etcd: {{endpoints: [{etcd}], trusted-ca-file: {ca}, cert-file: {cert}, key-file: {key}}}\n\
         clustermesh: {{config-dir: {mesh}, grace-period: 10s}}\n\
         source: {{kubernetes: {{kubeconfig: {kubeconfig}}}}}\n\
         status-socket: {socket}\n\
         metrics: {ip}:9962\n\
         state-dir: {node_state}\n\
         bpf-pin-dir: {pins}\n\
         encryption: {encryption}\n",
        ip = node.underlay,
        encryption = options.encryption_key(),
        node_state = node_state_dir(&plan.prefix, c, n).display(),
        pins = pin_dir(&plan.prefix).join(format!("c{c}-n{n}")).display(),
        cores = plan
            .agent_cores(node)
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        routing = options.dataplane_keys(),
        etcd = etcd_urls(plan, c)
            .iter()
            .map(|url| format!("\"{url}\""))
            .collect::<Vec<_>>()
            .join(", "),
        ca = pki(plan, c).ca.display(),
        cert = pki(plan, c).agent_cert.display(),
        key = pki(plan, c).agent_key.display(),
        mesh = cluster.join("clustermesh").display(),
        kubeconfig = apiserver::kubeconfig(&plan.prefix, c).display(),
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
pub(crate) fn stop_pid(pid: &str, signal: &str) -> anyhow::Result<()> {
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
/// Its main thread turns zombie before the other threads are gone, and they hold its sockets (the
/// metrics listener a restarted agent binds again) until the last one exits: only a zombie without
/// other threads has let go of everything.
fn zombie(proc_dir: &Path) -> bool {
    let leader_exited = std::fs::read_to_string(proc_dir.join("stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    });
    let threads = std::fs::read_dir(proc_dir.join("task")).map_or(0, |dir| dir.count());
    leader_exited && threads <= 1
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

pub(crate) fn interface_mac(netns: &str, interface: &str) -> anyhow::Result<String> {
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
