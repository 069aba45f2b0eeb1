//! `meshpath-perf rr`: TCP request/response (1-byte request, 1-byte answer) pod to pod across two lab
//! nodes through meshpath, beside node to node through the kernel between the same two nodes, in one
//! run — the method of Cilium's CNI benchmark (netperf TCP_RR), with one connection and then many in
//! parallel. The paths and connection counts are measured in interleaved runs (median and spread);
//! latency is each round trip as its connection saw it. Around each run the agents' context switches
//! are read from /proc, to show how often their threads slept and were woken per round trip.
//!
//! The lab is [`meshpath_lab::echo::EchoLab`] (one cluster, two nodes, a pod on each, agents with
//! their lab configuration); the client and server are threads of this process whose sockets were
//! made in the pods' and nodes' namespaces ([`traffic`]).

mod figures;
mod traffic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use meshpath_lab::echo::EchoLab;

pub use figures::RrReport;
use figures::{PathRuns, Paths, RrFigures, TARGET_RATIO};
use traffic::Server;

/// Where the benchmark's servers listen, in the server pod and on the server node.
const PORT: u16 = 7100;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds counted per run (each after a warm-up of a quarter of it, at most 0.5 s).
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// Interleaved runs of every path and connection count.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Connections of the parallel runs.
    #[arg(long, default_value_t = 32)]
    pub parallel: usize,
    /// Namespace prefix of the benchmark's lab.
    #[arg(long, default_value = "rr")]
    pub prefix: String,
    /// Dataplane workers of each node's agent (cores 0..N, shared by both agents).
    #[arg(long, default_value_t = 1)]
    pub workers: u8,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    PodToPod,
    NodeToNode,
}

pub fn run(args: &Args) -> anyhow::Result<RrReport> {
    check_args(args)?;
    let on_interrupt = args.prefix.clone();
    let _ = ctrlc::set_handler(move || {
        let _ = meshpath_lab::down::down(&on_interrupt);
        std::process::exit(130);
    });
    eprintln!("building the lab ({}) …", args.prefix);
    let lab = EchoLab::build_with_workers(&args.prefix, args.workers)?;
    let plan = &lab.plan;
    let (client, server) = (&plan.nodes[0], &plan.nodes[1]);
    let _servers = [
        Server::start(&lab.pod(2), PORT)?,
        Server::start(&server.netns, PORT)?,
    ];
    let target = |path| match path {
        Path::PodToPod => (lab.pod(1), SocketAddr::from((server.pods[0].addr, PORT))),
        Path::NodeToNode => (
            client.netns.clone(),
            SocketAddr::from((server.underlay, PORT)),
        ),
    };
    let agents = [1, 2].map(|n| pid_file(&args.prefix, n));
    let window = Duration::from_secs_f64(args.duration);
    let warmup = Duration::from_secs_f64((args.duration / 4.0).min(0.5));
    let cases = [
        (Path::PodToPod, 1),
        (Path::NodeToNode, 1),
        (Path::PodToPod, args.parallel),
        (Path::NodeToNode, args.parallel),
    ];
    let mut single = Paths::<PathRuns>::default();
    let mut parallel = Paths::<PathRuns>::default();
    for run in 0..args.runs {
        for i in 0..cases.len() {
            let (path, connections) = cases[(i + run) % cases.len()];
            let (ns, addr) = target(path);
            eprintln!(
                "run {}: {connections} connection(s) {ns} → {addr} …",
                run + 1
            );
            let before = agent_switches(&agents);
            let results = traffic::measure(&ns, addr, connections, warmup, window)?;
            let switches = before
                .zip(agent_switches(&agents))
                .map(|(b, a)| a.saturating_sub(b));
            let runs = if connections == 1 {
                &mut single
            } else {
                &mut parallel
            };
            let slot = match path {
                Path::PodToPod => &mut runs.pod_to_pod,
                Path::NodeToNode => &mut runs.node_to_node,
            };
            slot.add(results, window.as_secs_f64(), switches)?;
        }
    }
    Ok(RrReport {
        single: RrFigures::of(1, &single),
        parallel: RrFigures::of(args.parallel, &parallel),
        target_ratio: TARGET_RATIO,
        runs: args.runs,
        duration_s: args.duration,
        cores: format!(
            "{} cores shared by both nodes' agents (each pinned as the lab configures it), the client and \
             the server threads (unpinned) and the kernel's softirqs",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        workers: args.workers,
    })
}

fn check_args(args: &Args) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("rr needs root: it builds the lab's namespaces and starts its agents");
    }
    if !(args.duration > 0.0 && args.duration <= 600.0) {
        bail!(
            "--duration {}: must be more than 0 and at most 600 seconds",
            args.duration
        );
    }
    if args.runs == 0 || args.runs > 50 {
        bail!("--runs {}: must be 1 to 50", args.runs);
    }
    if args.parallel < 2 || args.parallel > 256 {
        bail!("--parallel {}: must be 2 to 256", args.parallel);
    }
    Ok(())
}

fn pid_file(prefix: &str, node: u8) -> PathBuf {
    meshpath_lab::mesh::dir(prefix).join(format!("c1-n{node}.pid"))
}

/// Context switches so far of every thread of the agents whose pid files are given; `None` if
/// one cannot be read (an agent restarted or gone).
fn agent_switches(pid_files: &[PathBuf]) -> Option<u64> {
    pid_files
        .iter()
        .map(|file| {
            let pid = std::fs::read_to_string(file).ok()?;
            let tasks = std::fs::read_dir(format!("/proc/{}/task", pid.trim())).ok()?;
            tasks
                .map(|task| {
                    let status = std::fs::read_to_string(task.ok()?.path().join("status")).ok()?;
                    switches(&status)
                })
                .sum::<Option<u64>>()
        })
        .sum()
}

/// Voluntary plus involuntary context switches from a /proc/<pid>/task/<tid>/status.
fn switches(status: &str) -> Option<u64> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some(field("voluntary_ctxt_switches:")? + field("nonvoluntary_ctxt_switches:")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_threads_context_switches() {
        let status = "Name:\tmeshpath\nState:\tS (sleeping)\nvoluntary_ctxt_switches:\t150\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(switches(status), Some(157));
        assert_eq!(switches("Name:\tx\nvoluntary_ctxt_switches:\t1\n"), None);
    }
}
