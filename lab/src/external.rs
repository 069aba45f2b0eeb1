//! External workloads in the lab (`meshpath lab up --mesh --external N`): hosts outside every
//! cluster — namespaces `<prefix>-vm1`, … on the fabric, each on a subnet of its own (198.19.v.0/24)
//! that the fabric routes — each running an agent with `mode: external` joined to cluster1 through its
//! etcd over mutual TLS, with the labels `app=vm-db`. Cluster1's other remotes come from cluster1's
//! clustermesh directory, as its nodes read them. Policies that select a host are the YAML files of its
//! policy directory ([`policy_dir`]); it starts empty.
//!
//! The hosts run the agents' tunnel routing whatever the lab's nodes run: a node in hybrid routing
//! tunnels to them too (they are off its segment), and native routing is refused, since the fabric
//! would carry plain frames to the host's kernel, around its policy.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::ip::{ensure_netns, ip, link_exists, IpError};
use crate::mesh::{self, wait, MeshOptions, Routing, Tunnel};
use crate::plan::{external_address, external_netns, external_router, Plan};

/// The cluster every external workload of the lab joins.
pub const JOINED_CLUSTER: u8 = 1;
/// Their labels.
pub const LABELS: &str = "{app: vm-db}";

/// The name of external workload `v` in the mesh (its node's name).
pub fn name(v: u8) -> String {
    format!("vm{v}")
}

/// Creates what is missing of every external workload's namespace and link; idempotent.
pub fn up(plan: &Plan) -> Result<(), IpError> {
    for v in 1..=plan.externals {
        host_up(plan, v)?;
    }
    Ok(())
}

fn host_up(plan: &Plan, v: u8) -> Result<(), IpError> {
    let (ns, fabric) = (external_netns(&plan.prefix, v), plan.fabric.as_str());
    let port = name(v);
    ensure_netns(&ns)?;
    if !link_exists(&ns, "uplink") {
        ip(&[
            "-n", &ns, "link", "add", "uplink", "type", "veth", "peer", "name", &port, "netns",
            fabric,
        ])?;
    }
    let router = format!("{}/24", external_router(v));
    ip(&["-n", fabric, "addr", "replace", &router, "dev", &port])?;
    ip(&["-n", fabric, "link", "set", &port, "up"])?;
    let address = format!("{}/24", external_address(v));
    ip(&["-n", &ns, "addr", "replace", &address, "dev", "uplink"])?;
    ip(&["-n", &ns, "link", "set", "uplink", "up"])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    let via = external_router(v).to_string();
    ip(&["-n", &ns, "route", "replace", "default", "via", &via]).map(drop)
}

/// The status socket of external workload `v`'s agent.
pub fn socket(prefix: &str, v: u8) -> PathBuf {
    mesh::dir(prefix).join(format!("{}.sock", name(v)))
}

/// The directory of YAML files its agent takes its policies from.
pub fn policy_dir(prefix: &str, v: u8) -> PathBuf {
    mesh::dir(prefix).join(name(v)).join("policies")
}

/// Replaces external workload `v`'s policies with `yaml` (CiliumNetworkPolicies and
/// CiliumClusterwideNetworkPolicies; empty for none).
pub fn write_policies(prefix: &str, v: u8, yaml: &str) -> anyhow::Result<()> {
    let dir = policy_dir(prefix, v);
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("policies.yaml");
    let tmp = file.with_extension("tmp~");
    std::fs::write(&tmp, yaml)?;
    std::fs::rename(&tmp, &file)?;
    Ok(())
}

/// Starts every external workload's agent (after the clusters' etcds are up) and waits until each
/// answers.
pub fn start(plan: &Plan, options: MeshOptions) -> anyhow::Result<()> {
    if plan.externals == 0 {
        return Ok(());
    }
    if options.routing == Routing::Native {
        bail!("--external: external workloads are reached through tunnels only, not with --routing native");
    }
    let agent = crate::agent_binary::agent_binary()?;
    for v in 1..=plan.externals {
        write_policies(&plan.prefix, v, "")?;
        write_config(plan, v, options)?;
        start_agent(plan, v, &agent)?;
    }
    for v in 1..=plan.externals {
        let sock = socket(&plan.prefix, v);
        if !wait(Duration::from_secs(20), || sock.exists()) {
            bail!(
                "the agent of {} did not start; see {}",
                name(v),
                log(plan, v).display()
            );
        }
    }
    Ok(())
}

fn config_path(prefix: &str, v: u8) -> PathBuf {
    mesh::dir(prefix).join(format!("{}.yaml", name(v)))
}

fn pid_file(prefix: &str, v: u8) -> PathBuf {
    mesh::dir(prefix).join(format!("{}.pid", name(v)))
}

fn log(plan: &Plan, v: u8) -> PathBuf {
    mesh::log(plan, &external_netns(&plan.prefix, v))
}

fn write_config(plan: &Plan, v: u8, options: MeshOptions) -> anyhow::Result<()> {
    let c = JOINED_CLUSTER;
    let router = mesh::interface_mac(&plan.fabric, &name(v))?;
    let pki = mesh::pki(plan, c);
    let tunnel = match options.tunnel {
        Tunnel::Vxlan => "vxlan",
        Tunnel::Geneve => "geneve",
    };
    let etcd: Vec<String> = mesh::etcd_urls(plan, c)
        .iter()
        .map(|url| format!("\"{url}\""))
        .collect();
    let own = mesh::dir(&plan.prefix).join(name(v));
    let config = format!(
        "mode: external\n\
         external: {{labels: {LABELS}}}\n\
         cluster: {{name: cluster{c}, id: {c}}}\n\
         node: {{name: {name}, uplink: uplink, ipv4: {ip}, router-mac: \"{router}\"}}\n\
         dataplane: {{cores: [{core}], routing: tunnel, tunnel: {tunnel}, conntrack-capacity: 65536, mtu: 1500}}\n\
         etcd: {{endpoints: [{etcd}], trusted-ca-file: {ca}, cert-file: {cert}, key-file: {key}}}\n\
         clustermesh: {{config-dir: {mesh}, grace-period: 10s}}\n\
         source: {{yaml-dir: {policies}}}\n\
         masquerade: {{enabled: false}}\n\
         status-socket: {socket}\n\
         state-dir: {state}\n\
         bpf-pin-dir: {pins}\n\
         encryption: {encryption}\n",
        name = name(v),
        ip = external_address(v),
        core = v % 2,
        etcd = etcd.join(", "),
        ca = pki.ca.display(),
        cert = pki.agent_cert.display(),
        key = pki.agent_key.display(),
        mesh = mesh::cluster_dir(&plan.prefix, c).join("clustermesh").display(),
        policies = policy_dir(&plan.prefix, v).display(),
        socket = socket(&plan.prefix, v).display(),
        state = own.join("state").display(),
        pins = mesh::pin_dir(&plan.prefix).join(name(v)).display(),
        encryption = options.encryption_key(),
    );
    std::fs::write(config_path(&plan.prefix, v), config)?;
    Ok(())
}

fn start_agent(plan: &Plan, v: u8, agent: &Path) -> anyhow::Result<()> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log(plan, v))?;
    let child = Command::new(agent)
        .args(["agent", "--config"])
        .arg(config_path(&plan.prefix, v))
        .args(["--netns", &external_netns(&plan.prefix, v)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting the agent of {}", name(v)))?;
    std::fs::write(pid_file(&plan.prefix, v), child.id().to_string())?;
    Ok(())
}

/// Stops external workload `v`'s agent as `how` says and waits until its process is gone.
pub fn stop_agent(plan: &Plan, v: u8, how: mesh::Stop) -> anyhow::Result<()> {
    let pid = std::fs::read_to_string(pid_file(&plan.prefix, v))
        .context("the agent's pid file")?
        .trim()
        .to_owned();
    let signal = match how {
        mesh::Stop::Planned => "TERM",
        mesh::Stop::Killed => "KILL",
    };
    mesh::stop_pid(&pid, signal).with_context(|| format!("the agent of {}", name(v)))
}

/// Starts external workload `v`'s agent again with the configuration it had.
pub fn start_agent_again(plan: &Plan, v: u8) -> anyhow::Result<()> {
    let agent = crate::agent_binary::agent_binary()?;
    start_agent(plan, v, &agent)
}
