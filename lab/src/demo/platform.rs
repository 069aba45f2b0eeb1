//! What the demo ran on, as the agents themselves report it: `platform` in the report. `source`: where
//! every agent's local state came from (`kubernetes`: the cluster's API server — the lab's stand-in,
//! through the agents' own kube client).

use meshpath_api::local_source::{LocalSourceKind, LocalSourceState};
use meshpath_api::Client;
use serde::Serialize;

use super::scene::Scene;

#[derive(Debug, Serialize)]
pub struct Platform {
    /// Where every agent read its local state from.
    pub source: LocalSourceKind,
}

/// The platform as every agent of the scene reports it; an agent whose source differs from the
/// others', or does not follow its cluster, is an error naming it.
pub fn platform(scene: &Scene) -> anyhow::Result<Platform> {
    let mut source = None;
    for (name, socket) in scene.agents() {
        let status = Client::new(&socket).status()?;
        let Some(local) = status.local_source else {
            anyhow::bail!("the agent of {name} reports no local source");
        };
        if local.state != LocalSourceState::Ok {
            anyhow::bail!(
                "the local source of {name} ({}) is {}: {}",
                local.location,
                super::name(&local.state),
                local.problem.unwrap_or_default()
            );
        }
        match source {
            Some(kind) if kind != local.kind => anyhow::bail!(
                "the agent of {name} reads {} where the others read {}",
                super::name(&local.kind),
                super::name(&kind)
            ),
            _ => source = Some(local.kind),
        }
    }
    Ok(Platform {
        source: source.ok_or_else(|| anyhow::anyhow!("no agents"))?,
    })
}
