//! The meshed lab's pods, made as a container runtime makes them: [`up_for_cni`](crate::up::up_for_cni)
//! creates each pod's network namespace (the sandbox) and nothing in it but `lo`; once the node's agent
//! runs, [`add_pods`] runs the CNI plugin `meshpath-cni` in the node's namespace with the `CNI_*`
//! environment and, on stdin, the plugin's configuration from the node's conflist (its `cniVersion`
//! and `name` put in, as libcni does). Each ADD asks for the plan's address (`IP=` in `CNI_ARGS`), so
//! every lab keeps the address plan its tests rely on. [`del_pods`] runs DEL for every sandbox ADD
//! was run for, before `lab down` ends the agents.
//!
//! Each sandbox is recorded in the lab's directory before its ADD runs (a runtime runs DEL after a
//! failed ADD too): that record is how `down` finds what to delete.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::mesh::{dir, pod_name, socket};
use crate::plan::{Node, Plan, Pod};

/// The variable that names the plugin binary explicitly.
pub const MESHPATH_CNI_BIN: &str = "MESHPATH_CNI_BIN";
/// The network's name in the conflist, and the pods' interface.
const NETWORK: &str = "meshpath";
const IFNAME: &str = "eth0";
/// How long an ADD is retried while the plugin answers "try again later" (CNI code 11: the agent is
/// starting, or the pod is not in its local state yet), as a kubelet retries a sandbox.
const RETRY_FOR: Duration = Duration::from_secs(30);
const TRY_AGAIN_LATER: u32 = 11;

/// The `meshpath-cni` binary: `MESHPATH_CNI_BIN` when set, otherwise the one beside the agent binary
/// (where `cargo build` puts both).
pub fn plugin_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(MESHPATH_CNI_BIN).map(PathBuf::from) {
        anyhow::ensure!(
            path.is_file(),
            "{MESHPATH_CNI_BIN}={}: no such file",
            path.display()
        );
        return Ok(path);
    }
    let agent = crate::agent_binary::agent_binary()?;
    let beside = agent.with_file_name("meshpath-cni");
    anyhow::ensure!(
        beside.is_file(),
        "the CNI plugin `meshpath-cni`, which makes the meshed lab's pods, is not beside {} (build it \
         with `cargo build -p meshpath-cni`, or set {MESHPATH_CNI_BIN})",
        agent.display()
    );
    Ok(beside)
}

/// Node `n` of cluster `c`'s conflist: what its `/etc/cni/net.d/10-meshpath.conflist` would be.
pub fn conflist_path(prefix: &str, c: u8, n: u8) -> PathBuf {
    dir(prefix).join(format!("c{c}-n{n}.conflist"))
}

/// Where node `n` of cluster `c`'s plugin keeps the addresses it handed out.
fn data_dir(prefix: &str, c: u8, n: u8) -> PathBuf {
    dir(prefix).join(format!("cni-c{c}-n{n}"))
}

fn sandboxes_dir(prefix: &str) -> PathBuf {
    dir(prefix).join("sandboxes")
}

/// A network configuration list as the runtime reads it from `/etc/cni/net.d`. Each plugin's
/// configuration is the plugin's own to read: the runtime passes it on, adding only the list's
/// version and name.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conflist {
    cni_version: String,
    name: String,
    plugins: Vec<serde_json::Map<String, serde_json::Value>>,
}

impl Conflist {
    /// What node `node`'s runtime would find: deploy/'s conflist pointed at this lab's agent socket
    /// and address directory.
    fn for_node(prefix: &str, node: &Node) -> Conflist {
        let (c, n) = (node.cluster, node.node);
        let mut plugin = serde_json::Map::new();
        plugin.insert("type".into(), "meshpath-cni".into());
        let agent_socket = meshpath_api::cni::cni_socket(&socket(prefix, c, n));
        plugin.insert(
            "agentSocket".into(),
            agent_socket.display().to_string().into(),
        );
        let data = data_dir(prefix, c, n);
        plugin.insert("dataDir".into(), data.display().to_string().into());
        plugin.insert("capabilities".into(), serde_json::json!({"ips": true}));
        Conflist {
            cni_version: "1.0.0".into(),
            name: NETWORK.into(),
            plugins: vec![plugin],
        }
    }

    /// The first plugin's configuration as the runtime hands it over on stdin.
    fn netconf(&self) -> anyhow::Result<Vec<u8>> {
        let mut plugin = self
            .plugins
            .first()
            .context("the conflist lists no plugin")?
            .clone();
        plugin.insert("cniVersion".into(), self.cni_version.clone().into());
        plugin.insert("name".into(), self.name.clone().into());
        Ok(serde_json::to_vec(&plugin)?)
    }
}

/// One pod sandbox the lab ran ADD for: what its DEL needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Sandbox {
    container_id: String,
    /// The node's namespace, where the plugin runs.
    node_netns: String,
    /// The pod's namespace, `CNI_NETNS` as `/run/netns/<name>`.
    pod_netns: String,
    pod: String,
    plugin: PathBuf,
    conflist: PathBuf,
    /// The node's end of the pod's veth, as ADD's result names it (once ADD succeeded).
    #[serde(default)]
    host_interface: Option<String>,
}

/// What the plugin printed: its result, of which the lab reads the addresses, or the spec's error.
#[derive(Debug, Deserialize)]
struct AddResult {
    interfaces: Vec<InterfaceEntry>,
    ips: Vec<IpEntry>,
}

#[derive(Debug, Deserialize)]
struct InterfaceEntry {
    name: String,
    /// Set for the pod's own interface, absent for the node's.
    #[serde(default)]
    sandbox: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IpEntry {
    address: String,
}

#[derive(Debug, Deserialize)]
struct PluginError {
    code: u32,
    msg: String,
    #[serde(default)]
    details: String,
}

/// Runs ADD for every pod of `plan` (its agents running), each asking for the plan's address.
pub fn add_pods(plan: &Plan) -> anyhow::Result<()> {
    let plugin = plugin_binary()?;
    std::fs::create_dir_all(sandboxes_dir(&plan.prefix))?;
    for node in &plan.nodes {
        let conflist = conflist_path(&plan.prefix, node.cluster, node.node);
        let list = Conflist::for_node(&plan.prefix, node);
        std::fs::write(&conflist, serde_json::to_string_pretty(&list)?)?;
        for (i, pod) in node.pods.iter().enumerate() {
            let sandbox = Sandbox {
                container_id: pod.netns.clone(),
                node_netns: node.netns.clone(),
                pod_netns: pod.netns.clone(),
                pod: pod_name(node.node, i as u8 + 1),
                plugin: plugin.clone(),
                conflist: conflist.clone(),
                host_interface: None,
            };
            add(&plan.prefix, &sandbox, pod)
                .with_context(|| format!("CNI ADD of pod {} in {}", sandbox.pod, pod.netns))?;
        }
    }
    Ok(())
}

fn add(prefix: &str, sandbox: &Sandbox, pod: &Pod) -> anyhow::Result<()> {
    if crate::ip::link_exists(&pod.netns, IFNAME) {
        bail!(
            "{} already has {IFNAME}: a meshed lab's pods get theirs from the CNI plugin (build the \
             lab with up::up_for_cni)",
            pod.netns
        );
    }
    let record = sandboxes_dir(prefix).join(format!("{}.json", sandbox.container_id));
    std::fs::write(&record, serde_json::to_vec(sandbox)?)?;
    let started = Instant::now();
    let output = loop {
        let output = run(sandbox, "ADD", Some(pod.addr))?;
        match failure(&output) {
            Some(e) if e.code == TRY_AGAIN_LATER && started.elapsed() < RETRY_FOR => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Some(e) => bail!("code {}: {}: {}", e.code, e.msg, e.details),
            None => break output,
        }
    };
    let result: AddResult = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "the plugin's result: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    let asked = format!("{}/32", pod.addr);
    if !result.ips.iter().any(|ip| ip.address == asked) {
        bail!("asked for {asked}, the plugin gave {:?}", result.ips);
    }
    let host = result
        .interfaces
        .into_iter()
        .find(|i| i.sandbox.is_none())
        .context("ADD's result names no interface on the node")?;
    let made = Sandbox {
        host_interface: Some(host.name),
        ..sandbox.clone()
    };
    std::fs::write(&record, serde_json::to_vec(&made)?)?;
    Ok(())
}

/// The node's end of the veth the plugin made for the pod in namespace `pod_netns`.
pub fn node_interface(prefix: &str, pod_netns: &str) -> anyhow::Result<String> {
    let record = sandboxes_dir(prefix).join(format!("{pod_netns}.json"));
    let sandbox: Sandbox = serde_json::from_slice(
        &std::fs::read(&record).with_context(|| format!("{}", record.display()))?,
    )?;
    sandbox
        .host_interface
        .with_context(|| format!("no ADD of the pod in {pod_netns} succeeded"))
}

/// The spec's error when the plugin failed (also one that printed no error JSON).
fn failure(output: &Output) -> Option<PluginError> {
    if output.status.success() {
        return None;
    }
    Some(
        serde_json::from_slice(&output.stdout).unwrap_or_else(|_| PluginError {
            code: 0,
            msg: format!("meshpath-cni exited with {}", output.status),
            details: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        }),
    )
}

/// The plugin as a runtime runs it: on the node (in its namespace), `CNI_*` set, the configuration on
/// stdin.
fn run(sandbox: &Sandbox, command: &str, ip: Option<Ipv4Addr>) -> anyhow::Result<Output> {
    let list: Conflist = serde_json::from_slice(
        &std::fs::read(&sandbox.conflist)
            .with_context(|| format!("{}", sandbox.conflist.display()))?,
    )
    .with_context(|| format!("{}", sandbox.conflist.display()))?;
    let mut args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
        sandbox.pod, sandbox.container_id
    );
    if let Some(ip) = ip {
        args += &format!(";IP={ip}");
    }
    let plugin_dir = sandbox.plugin.parent().unwrap_or(Path::new("/"));
    let mut child = Command::new("ip")
        .args(["netns", "exec", &sandbox.node_netns])
        .arg(&sandbox.plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &sandbox.container_id)
        .env("CNI_NETNS", format!("/run/netns/{}", sandbox.pod_netns))
        .env("CNI_IFNAME", IFNAME)
        .env("CNI_ARGS", args)
        .env("CNI_PATH", plugin_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", sandbox.plugin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&list.netconf()?)?;
    }
    Ok(child.wait_with_output()?)
}

/// Runs DEL for every sandbox of the lab of `prefix` ADD was run for, and forgets those it deleted
/// (and those whose node is gone already); what failed, one line each (the namespaces go anyway, and
/// their veths with them).
pub fn del_pods(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(sandboxes_dir(prefix)) else {
        return Vec::new();
    };
    let mut failed = Vec::new();
    for path in entries.flatten().map(|e| e.path()) {
        let sandbox: Sandbox = match std::fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(serde_json::from_slice(&b)?))
        {
            Ok(sandbox) => sandbox,
            Err(e) => {
                failed.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        if !crate::ip::netns_exists(&sandbox.node_netns) {
            // The node went with its veths; its addresses were recorded in the lab's directory.
            let _ = std::fs::remove_file(&path);
            continue;
        }
        match run(&sandbox, "DEL", None) {
            Ok(out) => match failure(&out) {
                None => {
                    let _ = std::fs::remove_file(&path);
                }
                Some(e) => failed.push(format!(
                    "CNI DEL of {}: code {}: {}: {}",
                    sandbox.container_id, e.code, e.msg, e.details
                )),
            },
            Err(e) => failed.push(format!("CNI DEL of {}: {e:#}", sandbox.container_id)),
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Size;

    /// The plugin reads what the lab hands it as it reads deploy/'s conflist: the same keys, this
    /// node's socket and directory.
    #[test]
    fn each_node_hands_the_plugin_deploys_configuration_with_its_own_socket() {
        let plan = Plan::new(
            "mp",
            Size {
                clusters: 1,
                nodes: 2,
                pods: 1,
            },
        )
        .unwrap();
        let deployed: Conflist = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/10-meshpath.conflist"
        )))
        .unwrap();
        let list = Conflist::for_node("mp", &plan.nodes[1]);
        assert_eq!(list.cni_version, deployed.cni_version);
        assert_eq!(list.name, deployed.name);
        let keys =
            |p: &serde_json::Map<String, serde_json::Value>| p.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&list.plugins[0]), keys(&deployed.plugins[0]));
        assert_eq!(
            list.plugins[0]["capabilities"],
            deployed.plugins[0]["capabilities"]
        );
        let netconf: serde_json::Value = serde_json::from_slice(&list.netconf().unwrap()).unwrap();
        assert_eq!(netconf["cniVersion"], "1.0.0");
        assert_eq!(netconf["name"], "meshpath");
        assert_eq!(netconf["type"], "meshpath-cni");
        assert_eq!(
            netconf["agentSocket"], "/run/meshpath/lab-mp/c1-n2.sock.cni",
            "beside the agent's status socket"
        );
        assert_eq!(netconf["dataDir"], "/run/meshpath/lab-mp/cni-c1-n2");
    }
}
