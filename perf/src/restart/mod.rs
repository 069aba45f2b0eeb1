//! `meshpath-perf restart`: established TCP connections through a service while the agent of the
//! client's node is restarted — the planned way (SIGTERM: conntrack handed over, programs kept) and,
//! in a second run, killed (SIGKILL, as an OOM kill). For each run: how many connections lived through
//! every restart, the longest any went without a reply, and how many frames from the pods reached the
//! node's kernel while no agent ran — counted by a capture on the pods' veths (node side, inbound),
//! which sees only what XDP passed to the stack, not by the agent. The lab is
//! [`meshpath_lab::echo::EchoLab`].

use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use meshpath_lab::echo::EchoLab;
use meshpath_lab::mesh::Stop;
use meshpath_lab::plan::Plan;
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Serialize, Deserialize)]
pub struct RunFigures {
    pub connections_total: usize,
    pub connections_kept: usize,
    pub max_gap_ms: f64,
    pub fail_open_frames: u64,
    pub restarts: usize,
    /// How long each restart left the node without an agent (stop signalled → new agent answering).
    pub agent_down_ms: Vec<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
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

#[derive(Debug, Serialize, Deserialize)]
pub struct Targets {
    pub connections_kept: String,
    pub max_gap_ms: f64,
    pub fail_open_frames: u64,
}

pub fn run(args: &Args) -> anyhow::Result<RestartReport> {
    let on_interrupt = args.prefix.clone();
    let _ = ctrlc::set_handler(move || {
        let _ = meshpath_lab::down::down(&on_interrupt);
        std::process::exit(130);
    });
    let lab = EchoLab::build(&args.prefix)?;
    let planned = run_once(&lab, args, Stop::Planned)?;
    let killed = run_once(&lab, args, Stop::Killed)?;
    Ok(RestartReport {
        connections_total: planned.connections_total,
        connections_kept: planned.connections_kept,
        max_gap_ms: planned.max_gap_ms,
        fail_open_frames: planned.fail_open_frames,
        planned,
        killed,
        targets: Targets {
            connections_kept: "= connections_total".into(),
            max_gap_ms: 500.0,
            fail_open_frames: 0,
        },
    })
}

fn run_once(lab: &EchoLab, args: &Args, how: Stop) -> anyhow::Result<RunFigures> {
    let seconds = 2.0 + (args.restarts as u64 * (args.settle_s + 2)) as f64;
    let mut client = lab.spawn_client(args.connections, seconds)?;
    let capture = Capture::start(&lab.plan)?;
    client.connected()?;
    // Every connection in its steady request rhythm before the first restart.
    std::thread::sleep(Duration::from_secs(2));
    let mut agent_down_ms = Vec::new();
    for _ in 0..args.restarts {
        let stopped = Instant::now();
        lab.restart_agent(how)?;
        agent_down_ms.push(stopped.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_secs(args.settle_s));
    }
    let connections = client.results()?;
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

/// tcpdump on every pod veth of the restarted node, inbound only: what reaches the kernel's stack.
struct Capture(Vec<meshpath_lab::capture::Capture>);

impl Capture {
    fn start(plan: &Plan) -> anyhow::Result<Capture> {
        let node = &plan.nodes[0];
        let captures = node
            .pods
            .iter()
            .map(|pod| {
                let port = meshpath_lab::cni::node_interface(&plan.prefix, &pod.netns)?;
                meshpath_lab::capture::Capture::start(&node.netns, &port)
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Capture(captures))
    }

    /// Frames captured, once tcpdump is stopped.
    fn stop(self) -> anyhow::Result<u64> {
        let mut frames = 0;
        for capture in self.0 {
            let captured = capture.stop()?;
            for line in &captured {
                eprintln!("restart: fail-open frame: {line}");
            }
            frames += captured.len() as u64;
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
