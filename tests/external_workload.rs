//! External workloads on the lab (root): `meshpath lab up --mesh --external 1` — vm1, a host outside
//! both clusters on a subnet of its own, runs an agent with `mode: external` joined to cluster1 over
//! mutual TLS with the labels `app=vm-db`. Every cluster's agents list it among their nodes and its
//! identity (labelled with the cluster it joined); its kernel's sockets reach pods of both clusters and
//! pods of both clusters reach it; with cluster1's etcd gone for longer than the remotes' grace period
//! it keeps its last state and keeps forwarding; a planned stop of its agent withdraws it from every
//! cluster, and so does `meshpath vm leave`.

use std::cell::RefCell;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use meshpath_api::Client;
use meshpath_lab::mesh::{self, MeshOptions};
use meshpath_lab::plan::{external_address, external_netns, Plan, Size};

const BIN: &str = env!("CARGO_BIN_EXE_meshpath");
const PORT: &str = "8080";

struct Lab {
    plan: Plan,
    servers: RefCell<Vec<Child>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        mesh::tear_down(&self.plan.prefix);
        for mut server in self.servers.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

impl Lab {
    fn vm_ns(&self) -> String {
        external_netns(&self.plan.prefix, 1)
    }

    fn pod_ns(&self, c: u8) -> String {
        format!("{}-c{c}-n1-p1", self.plan.prefix)
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// An HTTP server in `ns` answering `name`.
    fn serve(&self, ns: &str, name: &str) {
        let root = mesh::dir(&self.plan.prefix).join(format!("www-{name}"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("index.html"), format!("{name}\n")).unwrap();
        let server = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-m", "http.server", PORT])
            .arg("--directory")
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3's http.server");
        self.servers.borrow_mut().push(server);
    }

    /// The body `ns` gets from `ip`'s server, if it answers.
    fn get(&self, ns: &str, ip: &str) -> Option<String> {
        let url = format!("http://{ip}:{PORT}/");
        let out = self.exec(ns, &["curl", "-s", "-m", "2", &url]);
        let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !body.is_empty()).then_some(body)
    }

    fn status(&self, socket: PathBuf) -> Option<meshpath_api::AgentStatus> {
        Client::new(socket).status().ok()
    }

    /// Whether the agent of cluster `c` lists vm1 among its nodes.
    fn lists_vm(&self, c: u8) -> bool {
        let vm = IpAddr::from(external_address(1));
        self.status(mesh::socket(&self.plan.prefix, c, 1))
            .is_some_and(|s| {
                s.nodes
                    .iter()
                    .any(|n| n.cluster == "cluster1" && n.name == "vm1" && n.address == Some(vm))
            })
    }
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_vm_joins_the_mesh_survives_its_etcd_and_leaves_it() {
    if !meshpath_testkit::needs_root("a_vm_joins_the_mesh_survives_its_etcd_and_leaves_it") {
        return;
    }
    let prefix = format!("x{}", std::process::id() % 100_000);
    let size = Size {
        clusters: 2,
        nodes: 1,
        pods: 1,
    };
    let lab = Lab {
        plan: Plan::new(&prefix, size).unwrap().with_externals(1).unwrap(),
        servers: RefCell::default(),
    };
    std::env::set_var("MESHPATH_BIN", BIN);
    meshpath_lab::up::up_for_cni(&lab.plan).expect("lab up");
    mesh::start_with(&lab.plan, MeshOptions::default()).expect("etcds and agents start");
    let vm = external_address(1).to_string();
    let vm_socket = meshpath_lab::external::socket(&prefix, 1);

    // 1. Every cluster sees it: its node, and its identity labelled with the cluster it joined.
    for c in [1, 2] {
        wait_for(
            &format!("cluster{c} lists vm1"),
            Duration::from_secs(60),
            || lab.lists_vm(c),
        );
        let status = lab.status(mesh::socket(&prefix, c, 1)).unwrap();
        let labelled = |row: &meshpath_api::identity::IdentityRow, key: &str, value: &str| {
            row.labels.iter().any(|l| l.key == key && l.value == value)
        };
        let identity = status.identities.iter().find(|row| {
            labelled(row, "app", "vm-db")
                && labelled(row, "io.cilium.k8s.policy.cluster", "cluster1")
        });
        let identity = identity.unwrap_or_else(|| panic!("cluster{c}: {:#?}", status.identities));
        assert_eq!(identity.id >> 16, 1, "allocated in cluster1's range");
        // Cluster1's node learnt of vm1 through the watch of its own etcd, which shows as such;
        // cluster2's through its remote, and its own etcd holds no external workload.
        let watch = status.external_workloads_watch.as_ref();
        assert!(
            watch.is_some_and(|w| w.ready && w.connected && w.mutual_tls),
            "cluster{c}: the own etcd's watch for external workloads: {watch:#?}"
        );
    }

    // 2. Its kernel's sockets reach pods of both clusters, and they reach it.
    lab.serve(&lab.vm_ns(), "vm1");
    for c in [1, 2] {
        lab.serve(&lab.pod_ns(c), &format!("pod-c{c}"));
    }
    for c in [1u8, 2] {
        let pod = format!("100.{}.1.10", 63 + c);
        let (vm_ns, pod_ns) = (lab.vm_ns(), lab.pod_ns(c));
        wait_for(
            &format!("vm1 → cluster{c}'s pod"),
            Duration::from_secs(30),
            || lab.get(&vm_ns, &pod).as_deref() == Some(&format!("pod-c{c}")),
        );
        wait_for(
            &format!("cluster{c}'s pod → vm1"),
            Duration::from_secs(30),
            || lab.get(&pod_ns, &vm).as_deref() == Some("vm1"),
        );
    }

    // 3. Cluster1's etcd gone for longer than the remotes' grace period (10 s in the lab): vm1 keeps
    // its last state and keeps forwarding, both ways.
    mesh::stop_etcd(&lab.plan, 1).expect("cluster1's etcd stopped");
    wait_for("vm1 notices", Duration::from_secs(60), || {
        lab.status(vm_socket.clone()).is_some_and(|s| {
            s.clustermesh
                .as_ref()
                .and_then(|m| m.get("cluster1").cloned())
                .is_some_and(|r| !r.ready)
        })
    });
    let outage = Instant::now();
    let (vm_ns, pod_ns) = (lab.vm_ns(), lab.pod_ns(1));
    while outage.elapsed() < Duration::from_secs(15) {
        assert_eq!(
            lab.get(&vm_ns, "100.64.1.10").as_deref(),
            Some("pod-c1"),
            "vm1 → cluster1's pod after {:?} without etcd",
            outage.elapsed()
        );
        assert_eq!(
            lab.get(&pod_ns, &vm).as_deref(),
            Some("vm1"),
            "cluster1's pod → vm1 after {:?} without etcd",
            outage.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(lab.lists_vm(1), "still listed in cluster1");
    mesh::start_etcd_again(&lab.plan, 1).expect("cluster1's etcd back");
    wait_for("cluster2 lists vm1 again", Duration::from_secs(60), || {
        lab.lists_vm(2)
    });

    // 4. A planned stop withdraws it from every cluster at once (not at its lease's expiry).
    meshpath_lab::external::stop_agent(&lab.plan, 1, mesh::Stop::Planned).expect("vm1 stops");
    for c in [1, 2] {
        wait_for(
            &format!("cluster{c} forgets vm1"),
            Duration::from_secs(20),
            || !lab.lists_vm(c),
        );
    }

    // 5. `meshpath vm leave` stops a running agent and withdraws what is left of it.
    meshpath_lab::external::start_agent_again(&lab.plan, 1).expect("vm1 starts again");
    for c in [1, 2] {
        wait_for(
            &format!("cluster{c} lists vm1 again"),
            Duration::from_secs(60),
            || lab.lists_vm(c),
        );
    }
    let config = mesh::dir(&prefix).join("vm1.yaml");
    let out = Command::new(BIN)
        .args(["vm", "leave", "--config"])
        .arg(&config)
        .args(["--netns", &lab.vm_ns()])
        .output()
        .expect("meshpath vm leave");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("stopped the agent"), "{text}");
    assert!(
        Client::new(&vm_socket).status().is_err(),
        "its agent is gone"
    );
    for c in [1, 2] {
        wait_for(
            &format!("cluster{c} forgets vm1 again"),
            Duration::from_secs(20),
            || !lab.lists_vm(c),
        );
    }
}
