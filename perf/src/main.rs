//! meshpath-perf: the benchmark harness. One subcommand per scenario; each prints a table a person
//! reads, or with `--json` one JSON object of its figures on stdout, to compare runs over time.

mod forward;
mod measure;
mod pipeline;
mod provenance;
mod report;
mod restart;
mod results;
mod rr;
mod svg;
mod sync;

use clap::{Parser, Subcommand};
use provenance::Provenance;

#[derive(Parser)]
#[command(version, about = "meshpath benchmarks")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Print one JSON object of the figures instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Scenario {
    /// The in-memory pipeline on one core at full table scale, whole and stage by stage.
    Pipeline(pipeline::Args),
    /// The control plane against a real etcd: full sync of a 100k-endpoint remote, propagation, RSS.
    Sync(sync::Args),
    /// Real 64-byte UDP frames through a node in namespaces: bare AF_XDP, the kernel with VXLAN and
    /// meshpath's pipeline, Mpps, ratios, latency at half rate and a chart.
    Forward(forward::Args),
    /// Established TCP connections through a service while the agent restarts (planned, then killed):
    /// connections kept, the longest gap, frames the kernel got while no agent ran.
    Restart(restart::Args),
    /// TCP request/response (1 byte each way), one connection then many, pod to pod across two lab
    /// nodes through meshpath beside node to node through the kernel: round trips/s, ratio, latency.
    Rr(rr::Args),
    /// Writes perf/RESULTS.md from the scenarios' JSON (each saved as `<scenario>.json`).
    Report(results::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let json = cli.json;
    let stamp = Provenance::now;
    match cli.scenario {
        Scenario::Pipeline(args) => {
            let provenance = stamp("pipeline");
            report::print(&provenance, &pipeline::run(&args)?, json)
        }
        Scenario::Sync(args) => {
            let provenance = stamp("sync");
            report::print(&provenance, &sync::run(&args)?, json)
        }
        Scenario::Forward(args) => {
            let provenance = stamp("forward");
            report::print(&provenance, &forward::run(&args)?, json)
        }
        Scenario::Restart(args) => {
            let provenance = stamp("restart");
            report::print(&provenance, &restart::run(&args)?, json)
        }
        Scenario::Rr(args) => {
            let provenance = stamp("rr");
            report::print(&provenance, &rr::run(&args)?, json)
        }
        Scenario::Report(args) => results::run(&args),
    }
}
