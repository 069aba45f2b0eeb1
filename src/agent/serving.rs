//! The agent's operator interfaces: the status and observe sockets, the metrics endpoint and the health
//! endpoint, and the pod socket the CNI plugin talks to. Each is
//! bound before anything on the node is touched — a taken port or an unusable socket path stops the
//! agent with nothing to undo — and served on the agent's runtime until it stops.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::config::AgentConfig;
use super::observe::{self, FlowHub};
use super::status::{self, StatusSources};
use super::{health, metrics, socket};

/// Every listener of the agent, bound.
pub struct Listeners {
    status: (UnixListener, PathBuf),
    observe: (UnixListener, PathBuf),
    /// The pod socket, served once the worker runs ([`Listeners::take_pods`]).
    pods: Option<(UnixListener, PathBuf)>,
    metrics: Option<TcpListener>,
    health: Option<std::net::TcpListener>,
}

impl Listeners {
    pub async fn bind(config: &AgentConfig) -> anyhow::Result<Listeners> {
        let access = config.socket_access().map_err(anyhow::Error::msg)?;
        let status_path = config.status_socket.clone();
        let observe_path = meshpath_api::client::observe_socket(&status_path);
        let status = socket::bind(&status_path, access)
            .with_context(|| format!("`status-socket`: binding {}", status_path.display()))?;
        let observe = socket::bind(&observe_path, access)
            .with_context(|| format!("`status-socket`: binding {}", observe_path.display()))?;
        // Whoever may attach a pod may send as it: root's alone, whatever `socket-group` says. An
        // external workload has no pods, and no socket for them.
        let pods = match config.mode {
            super::config::Mode::Node => {
                let pods_path = meshpath_api::cni::cni_socket(&status_path);
                let pods = socket::bind(&pods_path, socket::Access::default())
                    .with_context(|| format!("`status-socket`: binding {}", pods_path.display()))?;
                Some((pods, pods_path))
            }
            super::config::Mode::External => None,
        };
        let metrics = match config.metrics_address() {
            Some(address) => Some(metrics::bind(address).await?),
            None => None,
        };
        let health = config.health_address().map(health::bind).transpose()?;
        Ok(Listeners {
            status: (status, status_path),
            observe: (observe, observe_path),
            pods,
            metrics,
            health,
        })
    }

    /// The pod socket and its path, to serve apart (it needs the running worker); connections
    /// wait in its backlog meanwhile.
    pub fn take_pods(&mut self) -> Option<(UnixListener, PathBuf)> {
        self.pods.take()
    }

    /// Serves each interface as a task of `tasks` (health from its own thread), until `cancel`.
    pub fn serve(
        self,
        tasks: &mut JoinSet<()>,
        sources: StatusSources,
        hub: FlowHub,
        registry: impl FnOnce() -> Registry,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        if let Some(listener) = self.health {
            let address = listener.local_addr().ok();
            health::spawn(listener, sources.health.clone(), cancel.clone())
                .context("starting the health endpoint's thread")?;
            tracing::info!(?address, "health endpoint");
        }
        let (listener, path) = self.status;
        let cancelled = cancel.clone();
        tasks.spawn(async move {
            if let Err(error) = status::serve(listener, &path, sources, cancelled).await {
                tracing::error!(%error, "status socket");
            }
        });
        let (listener, path) = self.observe;
        let cancelled = cancel.clone();
        tasks.spawn(async move {
            if let Err(error) = observe::serve(listener, &path, hub, cancelled).await {
                tracing::error!(%error, "observe socket");
            }
        });
        if let Some(listener) = self.metrics {
            let address = listener.local_addr().ok();
            let registry = Arc::new(registry());
            let cancelled = cancel.clone();
            tasks.spawn(async move {
                if let Err(error) = metrics::serve(listener, registry, cancelled).await {
                    tracing::error!(%error, "metrics endpoint");
                }
            });
            tracing::info!(?address, "metrics endpoint");
        }
        Ok(())
    }
}
