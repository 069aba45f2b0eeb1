//! `meshpath-demo` (run as `meshpath demo …`): Cilium's ClusterMesh demo on a two-cluster lab —
//! global service, failover, cross-cluster policy — reported as a person reads it or as one JSON object.

use std::process::ExitCode;

use clap::Parser;
use meshpath_lab::mesh::{Encryption, MeshOptions, Routing, Tunnel};
use meshpath_lab::{demo, Output};

/// Cilium's ClusterMesh demo on a two-cluster lab: global service, failover, cross-cluster policy.
#[derive(Parser)]
#[command(name = "meshpath-demo", bin_name = "meshpath demo", version)]
struct Cli {
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Requests per step.
    #[arg(long, default_value_t = 30)]
    requests: usize,
    /// Namespace name prefix of the demo's lab.
    #[arg(long, default_value = "demo")]
    prefix: String,
    /// How the agents carry pod traffic between nodes: tunnel (always encapsulated), native (never;
    /// the fabric routes the pod CIDRs; alias direct) or hybrid (plain inside a cluster, encapsulated
    /// across clusters).
    #[arg(long, value_enum, default_value_t = Routing::Tunnel)]
    routing: Routing,
    /// What tunnels encapsulate with.
    #[arg(long, value_enum, default_value_t = Tunnel::Vxlan)]
    tunnel: Tunnel,
    /// Members of each cluster's etcd: 3 runs it as production does.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=7))]
    etcd_members: u8,
    /// Also stop cluster2's agent beside rebel-base and call rebel-base for a minute (longer than
    /// the agent's lease): `platform.survives_agent_stop`.
    #[arg(long)]
    agent_stop: bool,
    /// Run it all with strict WireGuard encryption between the nodes, and report what the capture
    /// of step 1 saw of it.
    #[arg(long)]
    encrypt: bool,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshpath demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let options = MeshOptions {
        encryption: if cli.encrypt {
            Encryption::Strict
        } else {
            Encryption::Off
        },
        ..MeshOptions::new(cli.routing, cli.tunnel)
    };
    let report = demo::run(
        &cli.prefix,
        cli.requests,
        options,
        cli.etcd_members,
        cli.agent_stop,
    )?;
    match cli.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print!("{}", report.render()),
    }
    Ok(())
}
