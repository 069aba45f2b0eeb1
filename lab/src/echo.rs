//! A one-cluster lab for restarts: a client pod on node 1 holding TCP connections, each with a request
//! every 10 ms, to an echo server behind a ClusterIP service on node 2. Node 1 translates the service,
//! so its conntrack is what a restart of its agent must keep. Used by `meshpath-perf restart` and by the
//! end-to-end restart test. The traffic is `echo.py`, run with python3 inside the pods.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::mesh;
use crate::plan::{Plan, Size};

pub const SERVICE_IP: &str = "100.64.255.20";
pub const PORT: u16 = 7000;
const SCRIPT: &str = include_str!("echo.py");

/// One client connection's fate: whether it lived to the end, and the longest it went without a reply.
#[derive(Debug, Deserialize)]
pub struct Connection {
    pub kept: bool,
    pub max_gap_ms: f64,
}

pub struct EchoLab {
    pub plan: Plan,
}

impl EchoLab {
    /// Builds the lab (agents and etcd running, the service answering); torn down on drop.
    pub fn build(prefix: &str) -> anyhow::Result<EchoLab> {
        EchoLab::build_with_workers(prefix, 1)
    }

    /// As [`EchoLab::build`], every node's agent running `workers` dataplane workers.
    pub fn build_with_workers(prefix: &str, workers: u8) -> anyhow::Result<EchoLab> {
        let size = Size {
            clusters: 1,
            nodes: 2,
            pods: 1,
        };
        let plan = Plan::new(prefix, size)?.with_workers(workers)?;
        let _ = crate::down::down(prefix);
        let lab = EchoLab { plan };
        crate::up::up_for_cni(&lab.plan)?;
        mesh::start(&lab.plan)?;
        mesh::write_state(prefix, 1, &lab.state())?;
        std::fs::write(lab.script(), SCRIPT)?;
        lab.spawn(
            &lab.pod(2),
            &["server".to_owned(), PORT.to_string()],
            Stdio::null(),
        )?;
        let reachable = mesh::wait(Duration::from_secs(30), || {
            lab.spawn_client(1, 0.2)
                .and_then(EchoClient::results)
                .is_ok_and(|c| c.iter().all(|c| c.kept))
        });
        if !reachable {
            bail!("the echo service does not answer through the lab");
        }
        Ok(lab)
    }

    /// The namespace of node `n`'s pod.
    pub fn pod(&self, n: u8) -> String {
        format!("{}-c1-n{n}-p1", self.plan.prefix)
    }

    fn script(&self) -> std::path::PathBuf {
        mesh::dir(&self.plan.prefix).join("echo.py")
    }

    /// The lab's objects, with the client and server pods and the echo service.
    fn state(&self) -> String {
        let mut yaml = String::new();
        for node in &self.plan.nodes {
            yaml += &mesh::node_object(&self.plan.prefix, node);
            let name = if node.node == 1 { "client" } else { "echo" };
            let pod = mesh::pod_name(node.node, 1);
            yaml += &mesh::pod_object(node, 1, &pod, &format!("{{name: {name}}}"));
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

    fn spawn(&self, ns: &str, args: &[String], out: Stdio) -> anyhow::Result<Child> {
        Command::new("ip")
            .args(["netns", "exec", ns, "python3"])
            .arg(self.script())
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .context("starting the echo traffic")
    }

    /// Starts `connections` client connections for `seconds`.
    pub fn spawn_client(&self, connections: usize, seconds: f64) -> anyhow::Result<EchoClient> {
        let args = [
            "client".to_owned(),
            SERVICE_IP.to_owned(),
            PORT.to_string(),
            connections.to_string(),
            seconds.to_string(),
        ];
        let mut child = self.spawn(&self.pod(1), &args, Stdio::piped())?;
        let stdout = child.stdout.take().context("the echo client's stdout")?;
        Ok(EchoClient {
            child,
            stdout: BufReader::new(stdout),
        })
    }

    /// Restarts node 1's agent the way `how` says and waits until it answers again.
    pub fn restart_agent(&self, how: mesh::Stop) -> anyhow::Result<()> {
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
        Ok(())
    }
}

impl Drop for EchoLab {
    fn drop(&mut self) {
        mesh::tear_down(&self.plan.prefix);
    }
}

/// A running echo client.
pub struct EchoClient {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

#[derive(Deserialize)]
struct Connected {
    connected: usize,
}

impl EchoClient {
    /// Waits until every connection was opened (or failed to open): how many are open.
    pub fn connected(&mut self) -> anyhow::Result<usize> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let connected: Connected = serde_json::from_str(&line)
            .with_context(|| format!("the echo client's first line: {line:?}"))?;
        Ok(connected.connected)
    }

    /// Waits for the client to end and reads its connections' fates.
    pub fn results(mut self) -> anyhow::Result<Vec<Connection>> {
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest)?;
        self.child.wait()?;
        let last = rest.lines().last().unwrap_or_default();
        serde_json::from_str(last).with_context(|| format!("the echo client's results: {rest:?}"))
    }
}
