//! `meshpath version`: this client's version and the running agent's, each with its git commit.

use std::process::ExitCode;

use meshpath_api::version::{self, VersionInfo, Versions};

use super::args::{AgentQuery, Output};
use super::output;

/// This binary's version.
pub fn client() -> VersionInfo {
    VersionInfo::new(env!("CARGO_PKG_VERSION"), env!("MESHPATH_GIT_COMMIT"))
}

/// Both versions; exits 1 when the agent cannot be asked (the client's is printed all the same).
pub fn version(query: AgentQuery) -> anyhow::Result<ExitCode> {
    let agent = query.client().summary().map(|s| s.version);
    let error = agent.as_ref().err().map(ToString::to_string);
    let versions = Versions {
        client: client(),
        agent: agent.ok().flatten(),
    };
    match query.output {
        Output::Json => output::json(&versions)?,
        Output::Table => output::print(&version::render(&versions, error.as_deref()))?,
    }
    Ok(match versions.agent {
        Some(_) => ExitCode::SUCCESS,
        None => ExitCode::FAILURE,
    })
}
