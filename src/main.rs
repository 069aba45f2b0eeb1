//! meshpath: the node agent and the operator CLI. Commands it does not know (`lab`, `demo`) run the
//! binary `meshpath-COMMAND` beside it, as git and cargo run theirs (see [`external`]).

mod agent;
mod external;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use meshpath_api::flow::{self, FlowFilter, Verdict};
use meshpath_api::{clustermesh, identity, node, policy, service, status, AgentStatus, Client};

/// Gateway-less multi-cluster pod dataplane on AF_XDP.
#[derive(Parser)]
#[command(version, about, allow_external_subcommands = true, after_help = external::HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node: its dataplane worker and its control task.
    Agent {
        /// The agent's configuration file (YAML).
        #[arg(long)]
        config: PathBuf,
        /// Network namespace of the node, entered before anything starts.
        #[arg(long)]
        netns: Option<String>,
    },
    /// Health and counters of the local agent.
    Status(AgentQuery),
    /// Every node of every cluster the local agent knows.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// The local agent's services.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// The local agent's remote clusters.
    Clustermesh {
        #[command(subcommand)]
        command: ClustermeshCommand,
    },
    /// Security identities the local agent knows.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// The compiled policy of the local agent's pods.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Flows the local agent decided on, like `hubble observe`.
    Observe(ObserveArgs),
    /// `meshpath-COMMAND ARGS…`, found next to this binary or on PATH (`lab`, `demo`).
    #[command(external_subcommand)]
    External(Vec<OsString>),
}

/// Which agent to ask, and how to print its answer.
#[derive(Args)]
struct AgentQuery {
    /// The agent's status socket.
    #[arg(long, default_value = meshpath_api::client::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Args)]
struct ObserveArgs {
    #[command(flatten)]
    query: AgentQuery,
    /// Only flows from or to this pod (`name` or `namespace/name`).
    #[arg(long)]
    pod: Option<String>,
    /// Only flows from or to this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Only flows from or to this cluster.
    #[arg(long)]
    cluster: Option<String>,
    #[arg(long, value_enum)]
    verdict: Option<VerdictFilter>,
    /// Keep printing new flows until interrupted (otherwise: the flows kept by the agent, then exit).
    #[arg(short, long)]
    follow: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum VerdictFilter {
    Forwarded,
    Dropped,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// cluster/name, underlay address, pod CIDRs.
    List(AgentQuery),
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Frontends → backends, with their cluster and state.
    List(AgentQuery),
}

#[derive(Subcommand)]
enum ClustermeshCommand {
    /// Per remote cluster: connected, synced, entries, failures.
    Status(AgentQuery),
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Every identity of this cluster and the remote ones, with its labels.
    List(AgentQuery),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Per pod on this node: its identity and, per direction, whether enforced and what is allowed.
    Get(AgentQuery),
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshpath: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent { config, netns } => agent::run(config, netns),
        Command::Status(query) => query.print(|s| s, status::render),
        Command::Node {
            command: NodeCommand::List(query),
        } => query.print(|s| s.nodes, |rows| node::render(rows)),
        Command::Service {
            command: ServiceCommand::List(query),
        } => query.print(|s| s.services, |rows| service::render(rows)),
        Command::Clustermesh {
            command: ClustermeshCommand::Status(query),
        } => query.print(|s| s.clustermesh, |mesh| clustermesh::render(mesh.as_ref())),
        Command::Identity {
            command: IdentityCommand::List(query),
        } => query.print(|s| s.identities, |rows| identity::render(rows)),
        Command::Policy {
            command: PolicyCommand::Get(query),
        } => {
            let status = query.client().status()?;
            match query.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&status.policies)?),
                Output::Table => print!("{}", policy::render(&status.policies, &status.identities)),
            }
            Ok(())
        }
        Command::Observe(args) => observe(args),
        Command::External(args) => Err(external::exec(&args)),
    }
}

impl AgentQuery {
    fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// Reads the status, picks the part the command shows, prints it as JSON or as `table` renders it.
    fn print<T: serde::Serialize>(
        &self,
        part: impl FnOnce(AgentStatus) -> T,
        table: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<()> {
        let part = part(self.client().status()?);
        match self.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&part)?),
            Output::Table => print!("{}", table(&part)),
        }
        Ok(())
    }
}

fn observe(args: ObserveArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let filter = FlowFilter {
        pod: args.pod,
        namespace: args.namespace,
        cluster: args.cluster,
        verdict: args.verdict.map(|v| match v {
            VerdictFilter::Forwarded => Verdict::Forwarded,
            VerdictFilter::Dropped => Verdict::Dropped,
        }),
    };
    let mut out = std::io::stdout().lock();
    let mut failed = None;
    args.query.client().observe(args.follow, |flow| {
        if !filter.matches(&flow) {
            return true;
        }
        let line = match args.query.output {
            Output::Json => serde_json::to_string(&flow),
            Output::Table => Ok(flow::render(&flow)),
        };
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                failed = Some(e);
                return false;
            }
        };
        // A closed pipe (`| head`) ends the stream quietly.
        writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
    })?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
