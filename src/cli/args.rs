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

// Parsed once per run: the size of the observe variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
    /// An external workload (a VM or bare-metal host running the agent with `mode: external`).
    #[command(after_help = "Examples:\n  meshpath vm leave --config /etc/meshpath/agent.yaml")]
    Vm {
        #[command(subcommand)]
        command: VmCommand,
    },
    /// Health and counters of the local agent, like `cilium status`; exits 1 when it is unhealthy.
    #[command(
        after_help = "Examples:\n  meshpath status\n  meshpath status --brief\n  meshpath status --wait --wait-duration 2m\n  meshpath status -o json | jq .health"
    )]
    Status(StatusArgs),
    /// Every node of every cluster the local agent knows.
    #[command(after_help = "Examples:\n  meshpath node list")]
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// The local agent's services.
    #[command(after_help = "Examples:\n  meshpath service list")]
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// The local agent's remote clusters.
    #[command(after_help = "Examples:\n  meshpath clustermesh status --wait")]
    Clustermesh {
        #[command(subcommand)]
        command: ClustermeshCommand,
    },
    /// Security identities the local agent knows.
    #[command(after_help = "Examples:\n  meshpath identity list")]
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// The compiled policy of the local agent's pods.
    #[command(after_help = "Examples:\n  meshpath policy get")]
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Flows the local agent decided on, like `hubble observe`.
    #[command(
        after_help = "Examples:\n  meshpath observe --verdict DROPPED\n  meshpath observe --pod default/x-wing -f\n  meshpath observe --not --verdict forwarded --since 5m\n  meshpath observe -o json | jq .flow.source.pod_name\n  meshpath observe --socket /run/meshpath/c1-n1.sock --socket /run/meshpath/c1-n2.sock -f"
    )]
    Observe(super::observe::ObserveArgs),
    /// A live service map of the mesh in the browser, like Hubble UI: clusters, workloads and the
    /// flows between them, services and their backends, the latest flows.
    #[command(
        after_help = "Examples:\n  meshpath ui    # then open http://127.0.0.1:12000/\n  meshpath ui --socket /run/meshpath/c1-n1.sock --socket /run/meshpath/c2-n1.sock\n  meshpath ui --listen 127.0.0.1:8080"
    )]
    Ui(crate::ui::UiArgs),
    /// The pods the local agent serves, like `cilium-dbg endpoint list`.
    #[command(after_help = "Examples:\n  meshpath endpoint list")]
    Endpoint {
        #[command(subcommand)]
        command: EndpointCommand,
    },
    /// The client's version and the running agent's, each with its git commit.
    #[command(after_help = "Examples:\n  meshpath version\n  meshpath version -o json")]
    Version(AgentQuery),
    /// A shell completion script, generated from these very commands.
    #[command(
        after_help = "Examples:\n  meshpath completion bash > /etc/bash_completion.d/meshpath\n  meshpath completion zsh > \"${fpath[1]}/_meshpath\"\n  meshpath completion fish > ~/.config/fish/completions/meshpath.fish"
    )]
    Completion {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Man pages, generated from these very commands: one per command.
    #[command(
        after_help = "Examples:\n  meshpath man | man -l -\n  meshpath man --dir /usr/local/share/man/man1"
    )]
    Man {
        /// Write a page per command into this directory (otherwise meshpath(1) to standard output).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// `meshpath-COMMAND ARGS…`, found next to this binary or on PATH (`lab`, `demo`).
    #[command(external_subcommand)]
    External(Vec<OsString>),
}

#[derive(Subcommand)]
pub enum VmCommand {
    /// Take this host out of the mesh: stop its agent the planned way and withdraw whatever of the
    /// host is still published in the joined cluster's etcd (node, IP → identity, identity claims).
    #[command(
        after_help = "Examples:\n  meshpath vm leave --config /etc/meshpath/agent.yaml\n  meshpath vm leave --config vm1.yaml --netns lab-vm1"
    )]
    Leave {
        /// The external workload's agent configuration (`mode: external`).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Network namespace of the host, entered to reach etcd.
        #[arg(long, value_name = "NAME")]
        netns: Option<String>,
    },
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
    /// cluster/name, underlay address, pod CIDRs, and how this node reaches it: plain (direct) or
    /// encapsulated (vxlan/geneve tunnel), to its MAC on the segment or via the router, or refused.
    #[command(
        after_help = "Examples:\n  meshpath node list\n  meshpath node list -o json | jq '.[] | {name, reach}'"
    )]
    List(AgentQuery),
}

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// ID, frontend, type and each backend with its protocol and state, as cilium-dbg lists them.
    #[command(
        after_help = "Examples:\n  meshpath service list\n  meshpath service list -o json | jq '.[].backends[].backend'"
    )]
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
pub enum EndpointCommand {
    /// Per pod on this node: id, policy enforcement per direction, identity, labels, addresses.
    #[command(
        after_help = "Examples:\n  meshpath endpoint list\n  meshpath endpoint list -o json"
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag says what it does, and every command shows how it is used.
    #[test]
    fn help_on_every_flag_and_examples_on_every_command() {
        fn walk(command: &clap::Command, path: &str, problems: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() {
                    problems.push(format!("{path}: --{} has no help", arg.get_id()));
                }
            }
            let subcommands: Vec<_> = command
                .get_subcommands()
                .filter(|s| !s.is_hide_set() && s.get_name() != "help")
                .collect();
            let examples = command
                .get_after_help()
                .is_some_and(|h| h.to_string().contains("Examples:"));
            if path != " meshpath" && !examples {
                problems.push(format!("{path}: no examples"));
            }
            for sub in subcommands {
                walk(sub, &path, problems);
            }
        }
        let mut problems = Vec::new();
        walk(&Cli::command(), "", &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
        Cli::command().debug_assert();
    }
}
