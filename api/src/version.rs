//! Which meshpath this is: `meshpath version`, the status document's `version`, the metrics' build
//! info. The commit is the one the binary was built from (`MESHPATH_GIT_COMMIT` at build time, else
//! `git rev-parse`), `unknown` for a build outside a checkout.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The package version, e.g. `0.1.0`.
    pub version: String,
    /// The git commit, abbreviated to 12 digits, or `unknown`.
    pub commit: String,
}

impl VersionInfo {
    /// The version of the binary this is called in, given its build's package version and commit
    /// (`env!("CARGO_PKG_VERSION")`, `env!("MESHPATH_GIT_COMMIT")`).
    pub fn new(version: &str, commit: &str) -> VersionInfo {
        VersionInfo {
            version: version.to_owned(),
            commit: commit.to_owned(),
        }
    }
}

/// As Cilium prints its own: `0.1.0 (0.1.0-3f2a9c1d0e4b)`.
impl fmt::Display for VersionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}-{})", self.version, self.version, self.commit)
    }
}

/// `meshpath version -o json`: the client's, and the agent's when one answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub client: VersionInfo,
    pub agent: Option<VersionInfo>,
}

/// `meshpath version` as a person reads it; `agent_error` says why there is no agent version.
pub fn render(versions: &Versions, agent_error: Option<&str>) -> String {
    let agent = match (&versions.agent, agent_error) {
        (Some(agent), _) => agent.to_string(),
        (None, Some(error)) => format!("unavailable: {error}"),
        (None, None) => "unavailable".to_owned(),
    };
    format!("Client: {}\nAgent:  {agent}\n", versions.client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_as_cilium_prints_its_version() {
        let v = VersionInfo::new("0.1.0", "3f2a9c1d0e4b");
        assert_eq!(v.to_string(), "0.1.0 (0.1.0-3f2a9c1d0e4b)");
        let both = Versions {
            client: v.clone(),
            agent: None,
        };
        let text = render(&both, Some("no agent answers on /run/meshpath/agent.sock"));
        assert_eq!(
            text,
            "Client: 0.1.0 (0.1.0-3f2a9c1d0e4b)\nAgent:  unavailable: no agent answers on /run/meshpath/agent.sock\n"
        );
        let json = serde_json::to_value(&both).unwrap();
        assert_eq!(json["client"]["commit"], "3f2a9c1d0e4b");
        assert_eq!(json["agent"], serde_json::Value::Null);
    }
}
