//! The demo's world: a meshed lab (`lab up --mesh`) of two clusters with two nodes each — an etcd per
//! cluster, an agent per node — with x-wing on each cluster's first node and rebel-base on its second,
//! and a small HTTP server in every rebel-base pod that answers with its cluster's name. Everything is
//! torn down on drop, and on SIGINT, SIGTERM or SIGHUP.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::mesh::{self, wait, MeshOptions};
use crate::plan::{Plan, Size};

pub const CLUSTERS: [u8; 2] = [1, 2];
pub const SERVICE_PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;
/// x-wing runs on node 1, rebel-base on node 2, as pod 1 of each.
const X_WING_NODE: u8 = 1;
const REBEL_NODE: u8 = 2;

pub struct Scene {
    pub prefix: String,
    plan: Plan,
}

/// The scene's external workload: its namespace, address and agent.
pub struct Vm {
    pub netns: String,
    pub address: String,
    pub socket: PathBuf,
}

/// One external workload, except in native routing.
fn external_workloads(options: MeshOptions) -> u8 {
    u8::from(options.routing != crate::mesh::Routing::Native)
}

pub fn rebel_ip(c: u8) -> String {
    format!("100.{}.{REBEL_NODE}.10", 63 + c)
}

pub fn service_ip(c: u8) -> String {
    format!("100.{}.255.10", 63 + c)
}

impl Scene {
    pub fn build(prefix: &str, options: MeshOptions, etcd_members: u8) -> anyhow::Result<Scene> {
        // Before the lab is built: without agents there is no demo.
        crate::agent_binary::agent_binary()?;
        let on_interrupt = prefix.to_owned();
        let _ = ctrlc::set_handler(move || {
            eprintln!("\ninterrupted: tearing the demo down");
            mesh::tear_down(&on_interrupt);
            std::process::exit(130);
        });
        let plan = Plan::new(
            prefix,
            Size {
                clusters: 2,
                nodes: 2,
                pods: 1,
            },
        )?
        .with_etcd_members(etcd_members)
        .with_externals(external_workloads(options))?;
        let scene = Scene {
            prefix: prefix.to_owned(),
            plan,
        };
        crate::up::up_for_cni(&scene.plan)?;
        mesh::start_with(&scene.plan, options)?;
        for c in CLUSTERS {
            scene.write_state(c, true, false)?;
            scene.start_server(c)?;
        }
        Ok(scene)
    }

    /// The pod of x-wing (`rebel: false`) or rebel-base (`rebel: true`) in cluster `c`.
    pub fn pod_ns(&self, c: u8, rebel: bool) -> String {
        let n = if rebel { REBEL_NODE } else { X_WING_NODE };
        format!("{}-c{c}-n{n}-p1", self.prefix)
    }

    /// The agent of x-wing's node: the one whose view of the mesh the demo reports.
    /// Every agent of the scene: its node's name (`c1-n2`) and status socket.
    pub fn agents(&self) -> Vec<(String, PathBuf)> {
        self.plan
            .nodes
            .iter()
            .map(|n| {
                let name = format!("c{}-n{}", n.cluster, n.node);
                (name, mesh::socket(&self.prefix, n.cluster, n.node))
            })
            .collect()
    }

    /// Sets the MTU of x-wing's (`rebel: false`) or rebel-base's pod in cluster `c` to `mtu`, both ends of
    /// its veth, as a pod that sets its own would (the plugin gave it its node's pod MTU); the node's
    /// end is the interface the agent lists for the pod's endpoint.
    pub fn raise_pod_mtu(&self, c: u8, rebel: bool, mtu: u32) -> anyhow::Result<()> {
        let n = if rebel { REBEL_NODE } else { X_WING_NODE };
        let pod = format!("default/{}", mesh::pod_name(n, 1));
        let status = meshpath_api::Client::new(mesh::socket(&self.prefix, c, n)).status()?;
        let interface = status
            .endpoints
            .iter()
            .find(|e| e.pod == pod)
            .and_then(|e| e.interface.clone())
            .with_context(|| format!("the agent of c{c}-n{n} lists no interface for {pod}"))?;
        let node_ns = format!("{}-c{c}-n{n}", self.prefix);
        let mtu = mtu.to_string();
        for (ns, dev) in [
            (node_ns.as_str(), interface.as_str()),
            (&self.pod_ns(c, rebel), "eth0"),
        ] {
            crate::ip::ip(&["-n", ns, "link", "set", "dev", dev, "mtu", &mtu])?;
        }
        Ok(())
    }

    /// The pods of each node (`namespace/name`), in the order of [`Scene::agents`].
    pub fn pods_per_node(&self) -> Vec<Vec<String>> {
        self.plan
            .nodes
            .iter()
            .map(|n| {
                (1..=n.pods.len() as u8)
                    .map(|k| format!("default/{}", mesh::pod_name(n.node, k)))
                    .collect()
            })
            .collect()
    }

    /// Stops, the planned way, the agent of cluster `c`'s node that does not host rebel-base.
    pub fn stop_agent_beside_rebel(&self, c: u8) -> anyhow::Result<()> {
        mesh::stop_agent(&self.plan, c, X_WING_NODE, mesh::Stop::Planned)
    }

    /// Members of each cluster's etcd.
    pub fn etcd_members(&self) -> u8 {
        self.plan.etcd_members
    }

    /// Kills the member of cluster `c`'s etcd that leads raft now; which one it was.
    pub fn kill_etcd_leader(&self, c: u8) -> anyhow::Result<u8> {
        let leader = mesh::etcd_leader(&self.plan, c)?;
        mesh::stop_etcd_member(&self.plan, c, leader)?;
        Ok(leader)
    }

    pub fn socket(&self, c: u8) -> PathBuf {
        mesh::socket(&self.prefix, c, X_WING_NODE)
    }

    /// The external workload vm1, when the scene has one (not in native routing, whose plain frames
    /// would reach its kernel around its policy).
    pub fn vm(&self) -> Option<Vm> {
        (self.plan.externals >= 1).then(|| Vm {
            netns: crate::plan::external_netns(&self.prefix, 1),
            address: crate::plan::external_address(1).to_string(),
            socket: crate::external::socket(&self.prefix, 1),
        })
    }

    /// Every node's agent.
    pub fn agent_sockets(&self) -> Vec<PathBuf> {
        self.plan
            .nodes
            .iter()
            .map(|n| mesh::socket(&self.prefix, n.cluster, n.node))
            .collect()
    }

    pub fn exec(&self, ns: &str, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .with_context(|| format!("running {args:?} in {ns}"))
    }

    /// rebel-base's files in cluster `c`.
    pub fn www(&self, c: u8) -> PathBuf {
        mesh::cluster_dir(&self.prefix, c).join("www")
    }

    /// The rebel-base pod's server: answers every request with its cluster's name.
    pub fn start_server(&self, c: u8) -> anyhow::Result<()> {
        let root = self.www(c);
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("index.html"), format!("cluster{c}\n"))?;
        let url = format!("http://{}:{BACKEND_PORT}/", rebel_ip(c));
        self.serve(
            &self.pod_ns(c, true),
            &root,
            BACKEND_PORT,
            &url,
            &format!("rebel-base-c{c}"),
        )
        .with_context(|| format!("the rebel-base server of cluster{c}"))
    }

    /// An HTTP server for `root` on `port` in namespace `ns` (python3's http.server, which logs each
    /// client's address), up once `url` answers from inside that namespace.
    pub fn serve(
        &self,
        ns: &str,
        root: &Path,
        port: u16,
        url: &str,
        name: &str,
    ) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.server_log(name))?;
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args([
                "python3",
                "-m",
                "http.server",
                &port.to_string(),
                "--directory",
                &root.to_string_lossy(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting python3's http.server")?;
        let up = wait(Duration::from_secs(10), || {
            self.exec(ns, &["curl", "-s", "-m", "1", "-o", "/dev/null", url])
                .is_ok_and(|o| o.status.success())
        });
        if !up {
            bail!("the server {name} in {ns} did not answer {url}");
        }
        Ok(())
    }

    /// Where the server `name` logs its requests.
    pub fn server_log(&self, name: &str) -> PathBuf {
        mesh::dir(&self.prefix).join(format!("{name}.log"))
    }

    /// A directory for a server's files.
    pub fn www_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = mesh::dir(&self.prefix).join(format!("www-{name}"));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The fabric's namespace.
    pub fn fabric_ns(&self) -> &str {
        &self.plan.fabric
    }

    /// Every node's port on the fabric.
    pub fn fabric_ports(&self) -> Vec<String> {
        self.plan
            .nodes
            .iter()
            .map(|n| n.fabric_port.clone())
            .collect()
    }

    /// The namespace of the host outside the mesh.
    pub fn outside_ns(&self) -> &str {
        &self.plan.outside
    }

    /// The namespace of x-wing's node in cluster `c`, and its underlay address.
    pub fn x_wing_node(&self, c: u8) -> (String, String) {
        let node = self
            .plan
            .nodes
            .iter()
            .find(|n| n.cluster == c && n.node == X_WING_NODE);
        node.map_or_else(Default::default, |n| {
            (n.netns.clone(), n.underlay.to_string())
        })
    }

    /// x-wing's address in cluster `c`.
    pub fn x_wing_ip(&self, c: u8) -> String {
        format!("100.{}.{X_WING_NODE}.10", 63 + c)
    }

    /// Stops rebel-base's server in cluster `c` (SIGTERM) and returns once it no longer answers.
    pub fn stop_server(&self, c: u8) -> anyhow::Result<()> {
        let pattern = format!(
            "http.server {BACKEND_PORT} --directory {}",
            self.www(c).display()
        );
        let killed = Command::new("pkill").args(["-f", &pattern]).status()?;
        if !killed.success() {
            bail!("no rebel-base server ran in cluster{c} to stop ({killed})");
        }
        let url = format!("http://{}:{BACKEND_PORT}/", rebel_ip(c));
        let ns = self.pod_ns(c, true);
        let stopped = wait(Duration::from_secs(10), || {
            self.exec(&ns, &["curl", "-s", "-m", "1", "-o", "/dev/null", &url])
                .is_ok_and(|o| !o.status.success())
        });
        if !stopped {
            bail!("rebel-base's server in cluster{c} still answers after SIGTERM");
        }
        Ok(())
    }

    /// The cluster as its API server would hold it: the lab's nodes, x-wing and rebel-base, the global
    /// service rebel-base. `rebels_ready`: the rebel-base pod is an endpoint of its service; `policy`:
    /// cluster1 carries the cross-cluster policy of Cilium's docs.
    pub fn write_state(&self, c: u8, rebels_ready: bool, policy: bool) -> anyhow::Result<()> {
        let rebels = if rebels_ready {
            Rebels::Ready
        } else {
            Rebels::Gone
        };
        self.write_rebels(c, rebels, policy)
    }

    /// The same, with rebel-base's endpoint at any point of its life.
    pub fn write_rebels(&self, c: u8, rebels: Rebels, policy: bool) -> anyhow::Result<()> {
        let mut yaml = String::new();
        for node in self.plan.nodes.iter().filter(|n| n.cluster == c) {
            yaml += &mesh::node_object(&self.prefix, node);
            let labels = if node.node == REBEL_NODE {
                "{name: rebel-base}"
            } else {
                "{name: x-wing}"
            };
            yaml += &mesh::pod_object(node, 1, &mesh::pod_name(node.node, 1), labels);
        }
        yaml += &service(c, rebels);
        if policy && c == 1 {
            yaml += "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
                metadata: {name: allow-cross-cluster, namespace: default}\n\
                spec:\n  endpointSelector:\n    matchLabels: {name: x-wing, io.cilium.k8s.policy.cluster: cluster1}\n  \
                egress:\n  - toEndpoints:\n    - matchLabels: {name: rebel-base, io.cilium.k8s.policy.cluster: cluster2}\n---\n";
        }
        mesh::write_state(&self.prefix, c, &yaml)
    }

    pub fn agent_log(&self, c: u8) -> String {
        let name = format!("{}-c{c}-n{X_WING_NODE}.log", self.prefix);
        std::fs::read_to_string(mesh::dir(&self.prefix).join(name)).unwrap_or_default()
    }
}

/// Where rebel-base's pod of a cluster is in its life, as its EndpointSlice tells it: Kubernetes marks
/// a deleted pod's endpoint terminating (still serving through its grace period), then not serving,
/// and drops it once the pod is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rebels {
    Ready,
    Terminating { serving: bool },
    Gone,
}

fn service(c: u8, rebels: Rebels) -> String {
    let conditions = match rebels {
        Rebels::Ready => "{ready: true, serving: true, terminating: false}",
        Rebels::Terminating { serving: true } => "{ready: false, serving: true, terminating: true}",
        Rebels::Terminating { serving: false } => {
            "{ready: false, serving: false, terminating: true}"
        }
        Rebels::Gone => "",
    };
    let endpoints = if conditions.is_empty() {
        "endpoints: []\n".to_owned()
    } else {
        format!(
            "endpoints:\n- addresses: [{ip}]\n  conditions: {conditions}\n  \
             nodeName: c{c}-n{REBEL_NODE}\n  targetRef: {{kind: Pod, name: {pod}, namespace: default}}\n",
            ip = rebel_ip(c),
            pod = mesh::pod_name(REBEL_NODE, 1),
        )
    };
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: rebel-base, namespace: default, annotations: {{service.cilium.io/global: "true"}}}}
spec:
  clusterIP: {svc}
  clusterIPs: [{svc}]
  ports: [{{port: {SERVICE_PORT}, protocol: TCP, targetPort: {BACKEND_PORT}}}]
  selector: {{name: rebel-base}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: rebel-base-1, namespace: default, labels: {{kubernetes.io/service-name: rebel-base}}}}
addressType: IPv4
ports: [{{name: "", port: {BACKEND_PORT}, protocol: TCP}}]
{endpoints}---
"#,
        svc = service_ip(c),
    )
}

impl Drop for Scene {
    fn drop(&mut self) {
        mesh::tear_down(&self.prefix);
    }
}
