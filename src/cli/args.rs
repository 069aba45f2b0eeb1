//! The command line, as clap derives it: every command, every flag with its help, every command with
//! examples. `--help`, `meshpath completion` and `meshpath man` are generated from these.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Gateway-less multi-cluster pod dataplane on AF_XDP.
#[derive(Parser)]
#[command(
    name = "meshpath",
    version = crate::cli::args::LONG_VERSION,
    about,
    allow_external_subcommands = true,
    after_help = crate::external::HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `0.1.0 (0.1.0-<commit>)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("CARGO_PKG_VERSION"),
    "-",
    env!("MESHPATH_GIT_COMMIT"),
    ")"
);

#[derive(Subcommand)]
pub enum Command {
    /// Run one node: its dataplane worker and its control task.
    #[command(
        after_help = "Examples:\n  meshpath agent --config /etc/meshpath/agent.yaml\n  meshpath agent --config c1-n1.yaml --netns lab-c1-n1"
    )]
    Agent {
        /// The agent's configuration file (YAML; every key is documented in src/agent/config.rs).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Network namespace of the node, entered before anything starts.
        #[arg(long, value_name = "NAME")]
        netns: Option<String>,
    },
    /// Health and counters of the local agent, like `cilium status`; exits 1 when it is unhealthy.
    #[command(
        after_help = "Examples:\n  meshpath status\n  meshpath status --brief\n  meshpath status --wait --wait-duration 2m\n  meshpath status -o json | jq .health"
    )]
    Status(StatusArgs),
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
    #[command(
        after_help = "Examples:\n  meshpath observe --verdict dropped\n  meshpath observe --pod default/x-wing -f\n  meshpath observe -o json | jq .flow.source.pod_name"
    )]
    Observe(super::observe::ObserveArgs),
    /// `meshpath-COMMAND ARGS…`, found next to this binary or on PATH (`lab`, `demo`).
    #[command(external_subcommand)]
    External(Vec<OsString>),
}

/// Which agent to ask, and how to print its answer.
#[derive(Args)]
pub struct AgentQuery {
    /// The agent's status socket (its observe socket is beside it).
    #[arg(
        long,
        env = "MESHPATH_SOCKET",
        value_name = "PATH",
        default_value = meshpath_api::client::DEFAULT_SOCKET
    )]
    pub socket: PathBuf,
    /// Output format: a table for people, or JSON for programs.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub query: AgentQuery,
    /// Print only `OK`, or what is wrong.
    #[arg(long)]
    pub brief: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Waiting for a state instead of reporting the present one.
#[derive(Args)]
pub struct WaitArgs {
    /// Wait until it is healthy (or give up after --wait-duration), then report.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, e.g. `90s`, `5m`.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub wait_duration: Duration,
}

#[derive(Args)]
pub struct ClustermeshStatusArgs {
    #[command(flatten)]
    pub query: AgentQuery,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// cluster/name, underlay address, pod CIDRs.
    #[command(
        after_help = "Examples:\n  meshpath node list\n  meshpath node list -o json | jq '.[].name'"
    )]
    List(AgentQuery),
}

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Frontends → backends, with their cluster and state.
    #[command(after_help = "Examples:\n  meshpath service list\n  meshpath service list -o json")]
    List(AgentQuery),
}

#[derive(Subcommand)]
pub enum ClustermeshCommand {
    /// Per remote cluster: connected, synced, entries, failures; exits 1 unless every one is ready.
    #[command(
        after_help = "Examples:\n  meshpath clustermesh status\n  meshpath clustermesh status --wait --wait-duration 3m"
    )]
    Status(ClustermeshStatusArgs),
}

#[derive(Subcommand)]
pub enum IdentityCommand {
    /// Every identity of this cluster and the remote ones, with its labels.
    #[command(
        after_help = "Examples:\n  meshpath identity list\n  meshpath identity list -o json"
    )]
    List(AgentQuery),
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Per pod on this node: its identity and, per direction, whether enforced and what is allowed.
    #[command(after_help = "Examples:\n  meshpath policy get\n  meshpath policy get -o json")]
    Get(AgentQuery),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Columns for people.
    Table,
    /// JSON for programs.
    Json,
}
