//! `meshpath observe`: the flows an agent decided on, like `hubble observe`.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use meshpath_api::flow::{self, FlowFilter, Verdict};

use super::args::{AgentQuery, Output};
use super::output;

#[derive(Args)]
pub struct ObserveArgs {
    #[command(flatten)]
    pub query: AgentQuery,
    /// Only flows from or to this pod (`name` or `namespace/name`).
    #[arg(long)]
    pub pod: Option<String>,
    /// Only flows from or to this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only flows from or to this cluster.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Only flows with this verdict.
    #[arg(long, value_enum)]
    pub verdict: Option<VerdictFilter>,
    /// Keep printing new flows until interrupted (otherwise: the flows kept by the agent, then exit).
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum VerdictFilter {
    Forwarded,
    Dropped,
}

pub fn observe(args: ObserveArgs) -> anyhow::Result<ExitCode> {
    let filter = FlowFilter {
        pod: args.pod,
        namespace: args.namespace,
        cluster: args.cluster,
        verdict: args.verdict.map(|v| match v {
            VerdictFilter::Forwarded => Verdict::Forwarded,
            VerdictFilter::Dropped => Verdict::Dropped,
        }),
    };
    let mut failed = None;
    args.query.client().observe(args.follow, |flow| {
        if !filter.matches(&flow) {
            return true;
        }
        let line = match args.query.output {
            Output::Json => serde_json::to_string(&flow).map_err(anyhow::Error::from),
            Output::Table => Ok(flow::render(&flow)),
        };
        match line.and_then(|line| output::println(&line)) {
            Ok(()) => true,
            Err(error) => {
                failed = Some(error);
                false
            }
        }
    })?;
    match failed {
        Some(error) => Err(error),
        None => Ok(ExitCode::SUCCESS),
    }
}
