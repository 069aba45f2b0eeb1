//! The operator CLI: every command that reads a running agent (through `meshpath-api`'s client), and
//! the clap definitions of the whole binary, from which `--help`, the shell completions and the man
//! pages are all generated.

mod args;
mod docs;
mod merge;
mod observe;
pub mod output;
mod status;
mod version;

use std::process::ExitCode;

use meshpath_api::{endpoint, identity, node, policy, service, AgentStatus, Client};

use args::{
    AgentQuery, ClustermeshCommand, EndpointCommand, IdentityCommand, NodeCommand, Output,
    PolicyCommand, ServiceCommand,
};
pub use args::{Cli, Command, VmCommand};
pub use observe::parse_filters;

/// Runs a command that reads an agent; `Agent` and external commands are the binary's own.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Status(args) => status::status(args),
        Command::Clustermesh {
            command: ClustermeshCommand::Status(args),
        } => status::clustermesh(args),
        Command::Node {
            command: NodeCommand::List(query),
        } => query.print(|s| s.nodes, |rows| node::render(rows)),
        Command::Service {
            command: ServiceCommand::List(query),
        } => query.print(|s| s.services, |rows| service::render(rows)),
        Command::Identity {
            command: IdentityCommand::List(query),
        } => query.print(|s| s.identities, |rows| identity::render(rows)),
        Command::Policy {
            command: PolicyCommand::Get(query),
        } => {
            let status = query.client().status()?;
            match query.output {
                Output::Json => output::json(&status.policies)?,
                Output::Table => {
                    output::print(&policy::render(&status.policies, &status.identities))?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Endpoint {
            command: EndpointCommand::List(query),
        } => query.print(|s| s.endpoints, |rows| endpoint::render(rows)),
        Command::Observe(args) => observe::observe(args),
        Command::Version(query) => version::version(query),
        Command::Completion { shell } => docs::completion(shell),
        Command::Man { dir } => docs::man(dir.as_deref()),
        Command::Agent { .. } | Command::Vm { .. } | Command::Ui(_) | Command::External(_) => {
            anyhow::bail!("not a command of the CLI (the binary runs it)")
        }
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
    ) -> anyhow::Result<ExitCode> {
        let part = part(self.client().status()?);
        match self.output {
            Output::Json => output::json(&part)?,
            Output::Table => output::print(&table(&part))?,
        }
        Ok(ExitCode::SUCCESS)
    }
}
