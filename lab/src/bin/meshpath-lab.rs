//! `meshpath-lab` (run as `meshpath lab …`): clusters, nodes and pods in network namespaces on this
//! machine, optionally meshed with an etcd per cluster and an agent per node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use clap::{Args, Parser, Subcommand};
use meshpath_lab::mesh::{Encryption, MeshOptions, Routing, Tunnel};
use meshpath_lab::plan::{Plan, Size};
use meshpath_lab::{agent_binary, apiserver, down, mesh, status, up, Output};

/// Clusters, nodes and pods in network namespaces on this machine.
#[derive(Parser)]
#[command(name = "meshpath-lab", bin_name = "meshpath lab", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct LabPrefix {
    /// Namespace name prefix; `down` and `status` act only on namespaces with it.
    #[arg(long, default_value = "mp")]
    prefix: String,
}

#[derive(Subcommand)]
enum Command {
    /// Create the lab (what is missing of it).
    Up {
        #[arg(long, default_value_t = 1)]
        clusters: u8,
        #[arg(long, default_value_t = 2)]
        nodes: u8,
        #[arg(long, default_value_t = 2)]
        pods: u8,
        /// Also run an etcd per cluster and an agent per node, every cluster meshed with the others,
        /// and make every pod through the CNI plugin; their configuration, state, sockets and logs
        /// are in /run/meshpath/lab-PREFIX. The agents are the `meshpath` binary next to this one (or
        /// $MESHPATH_BIN), the plugin the `meshpath-cni` beside them (or $MESHPATH_CNI_BIN).
        #[arg(long)]
        mesh: bool,
        /// With --mesh: how the agents carry pod traffic between nodes (native: the fabric routes
        /// the pod CIDRs).
        #[arg(long, value_enum, default_value_t = Routing::Tunnel, requires = "mesh")]
        routing: Routing,
        /// With --mesh: what tunnels encapsulate with.
        #[arg(long, value_enum, default_value_t = Tunnel::Vxlan, requires = "mesh")]
        tunnel: Tunnel,
        /// With --mesh: WireGuard between the nodes (the agents make their keys, the lab annotates
        /// their Nodes with the public keys).
        #[arg(long, value_enum, default_value_t = Encryption::Off, requires = "mesh")]
        encryption: Encryption,
        /// Members of each cluster's etcd (with --mesh): 3 runs it as production does, a member
        /// lost — the leader included — without a failed request.
        #[arg(long, default_value_t = 1, requires = "mesh", value_parser = clap::value_parser!(u8).range(1..=7))]
        etcd_members: u8,
        /// With --mesh: hosts outside every cluster (namespaces PREFIX-vm1, …, each on a subnet of
        /// its own) that join cluster1 as external workloads with the labels app=vm-db.
        #[arg(long, default_value_t = 0, requires = "mesh")]
        external: u8,
        /// Dataplane workers of every node's agent: cores 0..N-1 (agents share them; the machine
        /// must have N), each node's uplink and pods' veths made with N queues. 1 spreads the agents
        /// over cores 0 and 1.
        #[arg(long, default_value_t = 1)]
        workers: u8,
        #[command(flatten)]
        prefix: LabPrefix,
    },
    /// Remove every namespace, link, XDP program and process of the lab.
    Down {
        #[command(flatten)]
        prefix: LabPrefix,
    },
    /// Serve a directory of Kubernetes-shaped YAML as a stand-in Kubernetes API server over HTTPS
    /// (list, watch, bookmarks, 410 Gone, RBAC from deploy/rbac.yaml), until SIGTERM or Ctrl-C. It
    /// writes its CA, certificate, token and a kubeconfig that trusts them into --data-dir.
    Apiserver {
        /// The objects served: every change to its files becomes a watch event.
        #[arg(long)]
        state_dir: PathBuf,
        /// Its certificates, token, kubeconfig and saved objects (kept across restarts).
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        /// The RBAC manifests granting the ServiceAccount its rights (default: deploy/rbac.yaml as built in).
        #[arg(long)]
        rbac: Option<PathBuf>,
        /// Seconds between BOOKMARK events on a watch that asked for them.
        #[arg(long, default_value_t = 10)]
        bookmark_every: u64,
    },
    /// Show the lab as the kernel sees it.
    Status {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        prefix: LabPrefix,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshpath lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up {
            clusters,
            nodes,
            pods,
            mesh,
            routing,
            tunnel,
            encryption,
            etcd_members,
            external,
            workers,
            prefix,
        } => {
            let plan = Plan::new(
                &prefix.prefix,
                Size {
                    clusters,
                    nodes,
                    pods,
                },
            )?
            .with_etcd_members(etcd_members)
            .with_externals(external)?
            .with_workers(workers)?;
            if mesh {
                // Before any namespace exists: without agents there is no meshed lab to build.
                agent_binary::agent_binary()?;
                meshpath_lab::cni::plugin_binary()?;
            }
            if mesh {
                up::up_for_cni(&plan)?;
            } else {
                up::up(&plan)?;
            }
            println!("lab up: {} namespaces", plan.namespaces().count());
            if mesh {
                let options = MeshOptions {
                    encryption,
                    ..MeshOptions::new(routing, tunnel)
                };
                mesh::start_with(&plan, options)?;
                println!(
                    "lab meshed: {} etcd, {} agents, {} external workloads; sockets and logs in {}",
                    plan.clusters.len(),
                    plan.nodes.len(),
                    plan.externals,
                    mesh::dir(&plan.prefix).display()
                );
            }
        }
        Command::Down { prefix } => {
            let gone = down::down(&prefix.prefix)?;
            let _ = std::fs::remove_dir_all(mesh::dir(&prefix.prefix));
            println!("lab down: {} namespaces removed", gone.len());
        }
        Command::Apiserver {
            state_dir,
            data_dir,
            listen,
            rbac,
            bookmark_every,
        } => {
            let rbac = match rbac {
                Some(path) => {
                    std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?
                }
                None => apiserver::DEPLOYED_RBAC.to_owned(),
            };
            let options = apiserver::Options {
                state_dir,
                data_dir,
                listen,
                rbac,
                bookmark_every: Duration::from_secs(bookmark_every),
            };
            apiserver::run(options)?;
        }
        Command::Status { output, prefix } => {
            let status = status::status(&prefix.prefix)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                Output::Table => print!("{}", status::render_table(&status)),
            }
        }
    }
    Ok(())
}
