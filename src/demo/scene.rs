//! The demo's world: a lab of two clusters with one node each, an etcd per cluster, an agent per node
//! meshed with the other cluster, x-wing and rebel-base pods, and a small HTTP server in every
//! rebel-base pod that answers with its cluster's name. Everything is torn down on drop or Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::lab::plan::{Plan, Size};

pub const CLUSTERS: [u8; 2] = [1, 2];
pub const SERVICE_PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;

/// Processes and the lab prefix, shared with the Ctrl-C handler so it can clean up too.
#[derive(Default)]
struct Owned {
    children: Vec<Child>,
    prefix: String,
}

pub struct Scene {
    pub prefix: String,
    pub dir: PathBuf,
    owned: Arc<Mutex<Owned>>,
}

pub fn x_wing_ip(c: u8) -> String {
    format!("100.{}.1.10", 63 + c)
}

pub fn rebel_ip(c: u8) -> String {
    format!("100.{}.1.11", 63 + c)
}

pub fn service_ip(c: u8) -> String {
    format!("100.{}.255.10", 63 + c)
}

impl Scene {
    pub fn build(prefix: &str) -> anyhow::Result<Scene> {
        let dir = std::env::temp_dir().join(format!("meshpath-demo-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let owned = Arc::new(Mutex::new(Owned {
            children: Vec::new(),
            prefix: prefix.to_owned(),
        }));
        let on_interrupt = owned.clone();
        let _ = ctrlc::set_handler(move || {
            eprintln!("\ninterrupted: tearing the demo down");
            if let Ok(mut owned) = on_interrupt.lock() {
                tear_down(&mut owned);
            }
            std::process::exit(130);
        });
        let scene = Scene {
            prefix: prefix.to_owned(),
            dir,
            owned,
        };
        let plan = Plan::new(
            prefix,
            Size {
                clusters: 2,
                nodes: 1,
                pods: 2,
            },
        )?;
        crate::lab::up::up(&plan)?;
        for c in CLUSTERS {
            for k in 1..=2 {
                scene.exec(
                    &scene.pod_ns(c, k),
                    &["ip", "link", "set", "eth0", "mtu", "1450"],
                )?;
            }
            scene.start_etcd(c)?;
            scene.write_state(c, true, false)?;
            scene.write_mesh_config(c)?;
            scene.start_server(c)?;
        }
        for c in CLUSTERS {
            scene.wait_for_etcd(c)?;
            scene.start_agent(c)?;
        }
        Ok(scene)
    }

    pub fn node_ns(&self, c: u8) -> String {
        format!("{}-c{c}-n1", self.prefix)
    }

    /// Pod 1 is x-wing, pod 2 is rebel-base.
    pub fn pod_ns(&self, c: u8, k: u8) -> String {
        format!("{}-c{c}-n1-p{k}", self.prefix)
    }

    pub fn socket(&self, c: u8) -> PathBuf {
        self.dir.join(format!("agent-c{c}.sock"))
    }

    fn cluster_dir(&self, c: u8) -> PathBuf {
        self.dir.join(format!("cluster{c}"))
    }

    pub fn exec(&self, ns: &str, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .with_context(|| format!("running {args:?} in {ns}"))
    }

    fn spawn(&self, ns: &str, args: &[&str], log: &Path) -> anyhow::Result<()> {
        let log = std::fs::File::create(log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {args:?} in {ns}"))?;
        self.owned
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .children
            .push(child);
        Ok(())
    }

    fn start_etcd(&self, c: u8) -> anyhow::Result<()> {
        let data = self.cluster_dir(c).join("etcd");
        std::fs::create_dir_all(&data)?;
        let client = format!("http://198.18.{c}.1:2379");
        let name = format!("cluster{c}");
        self.spawn(
            &self.node_ns(c),
            &[
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
            ],
            &self.dir.join(format!("etcd-c{c}.log")),
        )
    }

    fn wait_for_etcd(&self, c: u8) -> anyhow::Result<()> {
        let endpoint = format!("http://198.18.{c}.1:2379");
        let up = wait(Duration::from_secs(15), || {
            self.exec(
                &self.node_ns(c),
                &["etcdctl", "--endpoints", &endpoint, "endpoint", "health"],
            )
            .is_ok_and(|o| o.status.success())
        });
        if !up {
            bail!(
                "etcd of cluster{c} did not come up; see {}",
                self.dir.join(format!("etcd-c{c}.log")).display()
            );
        }
        Ok(())
    }

    /// The rebel-base pod's server: answers every request with its cluster's name.
    pub fn start_server(&self, c: u8) -> anyhow::Result<()> {
        let root = self.cluster_dir(c).join("www");
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("index.html"), format!("cluster{c}\n"))?;
        self.spawn(
            &self.pod_ns(c, 2),
            &[
                "python3",
                "-m",
                "http.server",
                &BACKEND_PORT.to_string(),
                "--directory",
                &root.to_string_lossy(),
            ],
            &self.dir.join(format!("rebel-base-c{c}.log")),
        )?;
        let url = format!("http://{}:{BACKEND_PORT}/", rebel_ip(c));
        let up = wait(Duration::from_secs(10), || {
            self.exec(&self.pod_ns(c, 2), &["curl", "-s", "-m", "1", &url])
                .is_ok_and(|o| o.status.success())
        });
        if !up {
            bail!("the rebel-base server of cluster{c} did not start");
        }
        Ok(())
    }

    pub fn stop_server(&self, c: u8) -> anyhow::Result<()> {
        let pattern = format!(
            "http.server {BACKEND_PORT} --directory {}",
            self.cluster_dir(c).join("www").display()
        );
        let _ = Command::new("pkill").args(["-f", &pattern]).status();
        Ok(())
    }

    /// The cluster as its API server would hold it. `rebels_ready`: the rebel-base pod is an endpoint
    /// of its service; `policy`: cluster1 carries the cross-cluster policy of Cilium's docs.
    pub fn write_state(&self, c: u8, rebels_ready: bool, policy: bool) -> anyhow::Result<()> {
        let state = self.cluster_dir(c).join("state");
        std::fs::create_dir_all(&state)?;
        let slice_endpoints = if rebels_ready {
            format!(
                "endpoints:\n- addresses: [{ip}]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: c{c}-n1\n  targetRef: {{kind: Pod, name: rebel-base, namespace: default}}\n",
                ip = rebel_ip(c)
            )
        } else {
            "endpoints: []\n".to_owned()
        };
        let yaml = format!(
            r#"apiVersion: v1
kind: Node
metadata: {{name: c{c}-n1}}
spec: {{podCIDR: 100.{o}.1.0/24, podCIDRs: [100.{o}.1.0/24]}}
status: {{addresses: [{{type: InternalIP, address: 198.18.{c}.1}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: x-wing, namespace: default, labels: {{name: x-wing}}}}
spec: {{nodeName: c{c}-n1, containers: [{{name: c, image: none}}]}}
status: {{phase: Running, podIP: {xw}, podIPs: [{{ip: {xw}}}], conditions: [{{type: Ready, status: "True"}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: rebel-base, namespace: default, labels: {{name: rebel-base}}}}
spec: {{nodeName: c{c}-n1, containers: [{{name: c, image: none}}]}}
status: {{phase: Running, podIP: {rb}, podIPs: [{{ip: {rb}}}], conditions: [{{type: Ready, status: "True"}}]}}
---
apiVersion: v1
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
{slice_endpoints}"#,
            o = 63 + c,
            xw = x_wing_ip(c),
            rb = rebel_ip(c),
            svc = service_ip(c),
        );
        write_atomically(&state.join("cluster.yaml"), &yaml)?;
        let policy_file = state.join("allow-cross-cluster.yaml");
        if policy && c == 1 {
            let cnp = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
                metadata: {name: allow-cross-cluster, namespace: default}\n\
                spec:\n  endpointSelector:\n    matchLabels: {name: x-wing, io.cilium.k8s.policy.cluster: cluster1}\n  \
                egress:\n  - toEndpoints:\n    - matchLabels: {name: rebel-base, io.cilium.k8s.policy.cluster: cluster2}\n";
            write_atomically(&policy_file, cnp)?;
        } else if policy_file.exists() {
            std::fs::remove_file(policy_file)?;
        }
        Ok(())
    }

    fn write_mesh_config(&self, c: u8) -> anyhow::Result<()> {
        let mesh = self.cluster_dir(c).join("clustermesh");
        std::fs::create_dir_all(&mesh)?;
        for other in CLUSTERS.iter().filter(|o| **o != c) {
            let file = format!(
                "endpoints:\n- http://198.18.{other}.1:2379\ninsecure: true\ncluster-id: {other}\n"
            );
            std::fs::write(mesh.join(format!("cluster{other}")), file)?;
        }
        Ok(())
    }

    fn start_agent(&self, c: u8) -> anyhow::Result<()> {
        let fabric = format!("{}-fabric", self.prefix);
        let router = interface_mac(&fabric, &format!("br-c{c}"))?;
        let pods: String = [(1, "x-wing"), (2, "rebel-base")]
            .iter()
            .map(|(k, name)| {
                let mac = interface_mac(&self.pod_ns(c, *k), "eth0")?;
                Ok(format!(
                    "  - {{pod: default/{name}, interface: pod{k}, mac: \"{mac}\"}}\n"
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let dir = self.cluster_dir(c);
        let config = format!(
            "cluster: {{name: cluster{c}, id: {c}}}\n\
             node: {{name: c{c}-n1, uplink: uplink, ipv4: 198.18.{c}.1, router-mac: \"{router}\"}}\n\
             pods:\n{pods}\
             dataplane: {{cores: [{core}], routing: tunnel, tunnel: vxlan, conntrack-capacity: 65536, mtu: 1500}}\n\
             etcd: {{endpoints: [\"http://198.18.{c}.1:2379\"], insecure: true}}\n\
             clustermesh: {{config-dir: {mesh}, grace-period: 10s}}\n\
             source: {{yaml-dir: {state}}}\n\
             status-socket: {socket}\n",
            core = c % 2,
            mesh = dir.join("clustermesh").display(),
            state = dir.join("state").display(),
            socket = self.socket(c).display(),
        );
        let path = dir.join("agent.yaml");
        std::fs::write(&path, config)?;
        let exe = std::env::current_exe()?;
        let log = std::fs::File::create(self.dir.join(format!("agent-c{c}.log")))?;
        let child = Command::new(exe)
            .args(["agent", "--config"])
            .arg(&path)
            .args(["--netns", &self.node_ns(c)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.owned
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .children
            .push(child);
        Ok(())
    }

    pub fn agent_log(&self, c: u8) -> String {
        std::fs::read_to_string(self.dir.join(format!("agent-c{c}.log"))).unwrap_or_default()
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        if let Ok(mut owned) = self.owned.lock() {
            tear_down(&mut owned);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tear_down(owned: &mut Owned) {
    for child in &mut owned.children {
        let _ = Command::new("kill").arg(child.id().to_string()).status();
    }
    for child in &mut owned.children {
        let _ = child.wait();
    }
    owned.children.clear();
    let _ = crate::lab::down::down(&owned.prefix);
}

fn interface_mac(ns: &str, interface: &str) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", "dev", interface])
        .output()?;
    let links: serde_json::Value =
        serde_json::from_slice(&out.stdout).with_context(|| format!("{interface} in {ns}"))?;
    Ok(links[0]["address"].as_str().unwrap_or_default().to_owned())
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
