//! meshpath: the node agent and the operator CLI.

use clap::Parser;

/// Gateway-less multi-cluster pod dataplane on AF_XDP.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
