//! `meshpath-perf restart`: established TCP connections through a service while the agent of the
//! client's node is restarted — the planned way (SIGTERM: conntrack handed over, programs kept) and,
//! in a second run, killed (SIGKILL, as an OOM kill). For each run: how many connections lived through
//! every restart, the longest any went without a reply, and how many frames from the pods reached the
//! node's kernel while no agent ran — counted by a capture on the pods' veths (node side, inbound),
//! which sees only what XDP passed to the stack, not by the agent.
//!
//! The lab: one cluster, two nodes, a client pod on the first and an echo server behind a ClusterIP
//! service on the second; the client's node does the service translation, so its conntrack is what a
//! restart must keep.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args as ClapArgs;
use meshpath_lab::mesh::{self, Stop};
use meshpath_lab::plan::{Plan, Size};
use serde::Serialize;

use crate::report::Report;

#[derive(ClapArgs)]
pub struct Args {
    /// Established connections, each with a request every 10 ms.
    #[arg(long, default_value_t = 20)]
    connections: usize,
    /// Restarts per run.
    #[arg(long, default_value_t = 3)]
    restarts: usize,
    /// Seconds between restarts.
    #[arg(long, default_value_t = 3)]
    settle_s: u64,
    /// Namespace prefix of the benchmark's lab.
    #[arg(long, default_value = "rst")]
    prefix: String,
}

const SERVICE_IP: &str = "100.64.255.20";
const PORT: u16 = 7000;
const TRAFFIC: &str = include_str!("traffic.py");

#[derive(Debug, Serialize)]
pub struct RunFigures {
    pub connections_total: usize,
    pub connections_kept: usize,
    pub max_gap_ms: f64,
    pub fail_open_frames: u64,
    pub restarts: usize,
    /// How long each restart left the node without an agent (stop signalled → new agent answering).
    pub agent_down_ms: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct RestartReport {
    /// The planned restarts' figures, also under `planned`.
    pub connections_total: usize,
    pub connections_kept: usize,
    pub max_gap_ms: f64,
    pub fail_open_frames: u64,
    pub planned: RunFigures,
    pub killed: RunFigures,
    pub targets: Targets,
}

#[derive(Debug, Serialize)]
pub struct Targets {
    pub connections_kept: &'static str,
    pub max_gap_ms: f64,
    pub fail_open_frames: u64,
}

pub fn run(args: &Args) -> anyhow::Result<RestartReport> {
    let lab = Lab::build(&args.prefix)?;
    let planned = lab.run(args, Stop::Planned)?;
    let killed = lab.run(args, Stop::Killed)?;
    Ok(RestartReport {
        connections_total: planned.connections_total,
        connections_kept: planned.connections_kept,
        max_gap_ms: planned.max_gap_ms,
        fail_open_frames: planned.fail_open_frames,
        planned,
        killed,
        targets: Targets {
            connections_kept: "= connections_total",
            max_gap_ms: 500.0,
            fail_open_frames: 0,
        },
    })
}

struct Lab {
    plan: Plan,
}

impl Lab {
    fn build(prefix: &str) -> anyhow::Result<Lab> {
        let size = Size {
            clusters: 1,
            nodes: 2,
            pods: 1,
        };
        let plan = Plan::new(prefix, size)?;
        let _ = meshpath_lab::down::down(prefix);
        let lab = Lab { plan };
        let on_interrupt = prefix.to_owned();
        let _ = ctrlc::set_handler(move || {
            let _ = meshpath_lab::down::down(&on_interrupt);
            std::process::exit(130);
        });
        meshpath_lab::up::up(&lab.plan)?;
        mesh::start(&lab.plan)?;
        mesh::write_state(prefix, 1, &lab.state())?;
        std::fs::write(lab.script(), TRAFFIC)?;
        lab.spawn(&lab.pod(2), &["server", &PORT.to_string()], Stdio::null())?;
        let reachable = mesh::wait(Duration::from_secs(30), || lab.client(1, 0.2).is_ok());
        if !reachable {
            bail!("the echo service does not answer through the lab");
        }
        Ok(lab)
    }

    fn pod(&self, n: u8) -> String {
        format!("{}-c1-n{n}-p1", self.plan.prefix)
    }

    fn script(&self) -> std::path::PathBuf {
        mesh::dir(&self.plan.prefix).join("traffic.py")
    }

    /// The lab's objects, with the client and server pods and the echo service.
    fn state(&self) -> String {
        let mut yaml = String::new();
        for node in &self.plan.nodes {
            yaml += &mesh::node_object(node);
            let name = if node.node == 1 { "client" } else { "echo" };
            yaml += &mesh::pod_object(
                node,
                1,
                &mesh::pod_name(node.node, 1),
                &format!("{{name: {name}}}"),
            );
        }
        let server = self.plan.nodes[1].pods[0].addr;
        yaml += &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: echo, namespace: default}}\n\
             spec: {{clusterIP: {SERVICE_IP}, clusterIPs: [{SERVICE_IP}], ports: [{{port: {PORT}, protocol: TCP, targetPort: {PORT}}}], selector: {{name: echo}}}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: echo-1, namespace: default, labels: {{kubernetes.io/service-name: echo}}}}\n\
             addressType: IPv4\nports: [{{name: \"\", port: {PORT}, protocol: TCP}}]\n\
             endpoints:\n- addresses: [{server}]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  \
             nodeName: c1-n2\n  targetRef: {{kind: Pod, name: {pod}, namespace: default}}\n---\n",
            pod = mesh::pod_name(2, 1),
        );
        yaml
    }

    fn spawn<S: AsRef<std::ffi::OsStr>>(
        &self,
        ns: &str,
        args: &[S],
        out: Stdio,
    ) -> anyhow::Result<Child> {
        Command::new("ip")
            .args(["netns", "exec", ns, "python3"])
            .arg(self.script())
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .context("starting the traffic script")
    }

    /// Runs `connections` clients for `seconds` and waits for their results.
    fn client(&self, connections: usize, seconds: f64) -> anyhow::Result<Vec<Connection>> {
        let child = self.spawn(
            &self.pod(1),
            &client_args(connections, seconds),
            Stdio::piped(),
        )?;
        results(child)
    }

    fn run(&self, args: &Args, how: Stop) -> anyhow::Result<RunFigures> {
        let seconds = 2.0 + (args.restarts as u64 * (args.settle_s + 2)) as f64;
        let client = self.spawn(
            &self.pod(1),
            &client_args(args.connections, seconds),
            Stdio::piped(),
        )?;
        let capture = Capture::start(&self.plan)?;
        std::thread::sleep(Duration::from_secs(2));
        let mut agent_down_ms = Vec::new();
        for _ in 0..args.restarts {
            let stopped = Instant::now();
            mesh::stop_agent(&self.plan, 1, 1, how)?;
            mesh::start_agent_again(&self.plan, 1, 1)?;
            let socket = mesh::socket(&self.plan.prefix, 1, 1);
            let back = mesh::wait(Duration::from_secs(30), || {
                meshpath_api::Client::new(&socket).status().is_ok()
            });
            if !back {
                let log =
                    mesh::dir(&self.plan.prefix).join(format!("{}.log", self.plan.nodes[0].netns));
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                bail!(
                    "the agent did not come back after a restart; its log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            agent_down_ms.push(stopped.elapsed().as_secs_f64() * 1000.0);
            std::thread::sleep(Duration::from_secs(args.settle_s));
        }
        let connections = results(client)?;
        let fail_open_frames = capture.stop()?;
        Ok(RunFigures {
            connections_total: connections.len(),
            connections_kept: connections.iter().filter(|c| c.kept).count(),
            max_gap_ms: connections.iter().map(|c| c.max_gap_ms).fold(0.0, f64::max),
            fail_open_frames,
            restarts: args.restarts,
            agent_down_ms,
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = meshpath_lab::down::down(&self.plan.prefix);
        let _ = std::fs::remove_dir_all(mesh::dir(&self.plan.prefix));
    }
}

fn client_args(connections: usize, seconds: f64) -> Vec<String> {
    vec![
        "client".into(),
        SERVICE_IP.into(),
        PORT.to_string(),
        connections.to_string(),
        seconds.to_string(),
    ]
}

#[derive(Debug, serde::Deserialize)]
struct Connection {
    kept: bool,
    max_gap_ms: f64,
}

fn results(child: Child) -> anyhow::Result<Vec<Connection>> {
    let out = child.wait_with_output()?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the client's results: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// tcpdump on every pod veth of the restarted node, inbound only: what reaches the kernel's stack.
struct Capture {
    children: Vec<Child>,
}

impl Capture {
    fn start(plan: &Plan) -> anyhow::Result<Capture> {
        let node = &plan.nodes[0];
        let mut children = Vec::new();
        for pod in &node.pods {
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &node.netns,
                    "tcpdump",
                    "-i",
                    &pod.node_port,
                ])
                .args(["-Q", "in", "-n", "-l", "-q"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting tcpdump")?;
            children.push(child);
        }
        // tcpdump needs a moment to open its socket.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Capture { children })
    }

    /// Frames captured, once tcpdump is stopped.
    fn stop(self) -> anyhow::Result<u64> {
        let mut frames = 0;
        for child in self.children {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let out = child.wait_with_output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let captured = text.lines().filter(|line| !line.trim().is_empty());
            for line in captured.clone() {
                eprintln!("restart: fail-open frame: {line}");
            }
            frames += captured.count() as u64;
        }
        Ok(frames)
    }
}

impl Report for RestartReport {
    fn lines(&self) -> Vec<String> {
        let run = |name: &str, r: &RunFigures| {
            let down: Vec<String> = r
                .agent_down_ms
                .iter()
                .map(|ms| format!("{ms:.0}"))
                .collect();
            vec![
                format!(
                    "{name}: {} restarts (agent down {} ms)",
                    r.restarts,
                    down.join(", ")
                ),
                format!(
                    "  connections kept    {} of {}   (target: all)",
                    r.connections_kept, r.connections_total
                ),
                format!(
                    "  longest gap         {:.0} ms   (target ≤ 500 ms)",
                    r.max_gap_ms
                ),
                format!("  fail-open frames    {}   (target 0)", r.fail_open_frames),
            ]
        };
        let mut lines = run("planned (SIGTERM)", &self.planned);
        lines.extend(run("killed (SIGKILL)", &self.killed));
        lines
    }
}
