//! meshpath: the node agent and the operator CLI. Commands it does not know (`lab`, `demo`) run the
//! binary `meshpath-COMMAND` beside it, as git and cargo run theirs (see [`external`]).

mod agent;
mod cli;
mod external;
mod ui;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Agent { config, netns } => agent::run(config, netns).map(|()| ExitCode::SUCCESS),
        Command::Vm {
            command: cli::VmCommand::Leave { config, netns },
        } => agent::vm_leave(config, netns).map(|()| ExitCode::SUCCESS),
        Command::External(args) => Err(external::exec(&args)),
        Command::Ui(args) => ui::run(args),
        command => cli::run(command),
    };
    match result {
        Ok(code) => code,
        // A reader that stopped reading (`| head`) ends the command quietly.
        Err(e) if cli::output::is_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshpath: {e:#}");
            ExitCode::FAILURE
        }
    }
}
