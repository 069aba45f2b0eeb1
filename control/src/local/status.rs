//! What a local source reports beside the state: whether it has its first complete view yet, and
//! every problem now in force (the state keeps the last good content of whatever has a problem).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::error::TranslateError;
use super::model::LocalState;

/// A problem of a local source. None of them stops the source.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// A file that cannot be read, parsed or translated; `line` is 1-based, 0 if the whole file.
    #[error("{}:{line}: {problem}", path.display())]
    File {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    /// An object from the API server that cannot be translated.
    #[error("{0}")]
    Object(TranslateError),
    /// A watch on the API server that fails (it is retried with backoff).
    #[error("watching {resource}: {problem}")]
    Watch {
        resource: &'static str,
        problem: String,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// The published state is complete: every file was read once, or every watcher listed once.
    pub synced: bool,
    /// Problems now in force, sorted.
    pub errors: Vec<SourceError>,
    /// The API server as its last probe found it; `None` for a directory, or before the first probe.
    pub api_server: Option<ApiServerHealth>,
    /// Resources the API server does not serve (a CRD not installed): none of them is assumed.
    pub not_served: Vec<&'static str>,
    /// How often each resource's watch failed since the source started.
    pub watch_failures: Vec<(&'static str, u64)>,
}

/// The API server as a probe (`GET /version`) found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiServerHealth {
    pub reachable: bool,
    /// Its `gitVersion` (`v1.37.0`), as last answered.
    pub version: Option<String>,
    /// Why the last probe failed.
    pub error: Option<String>,
    /// Since when it has been reachable (or not).
    pub since: SystemTime,
    pub checked_at: SystemTime,
}

impl SourceStatus {
    /// Why the source cannot follow the cluster now, if it cannot: the API server does not answer,
    /// or a watch fails. The last state stays in force meanwhile.
    pub fn lost(&self) -> Option<String> {
        if let Some(error) = self.api_server.as_ref().and_then(|a| a.error.as_ref()) {
            return Some(format!("the API server does not answer: {error}"));
        }
        let watches: Vec<String> = self
            .errors
            .iter()
            .filter(|e| matches!(e, SourceError::Watch { .. }))
            .map(ToString::to_string)
            .collect();
        (!watches.is_empty()).then(|| watches.join("; "))
    }
}

/// A running local source: its state and status channels, and its task.
#[derive(Debug)]
pub struct LocalSourceHandle {
    pub state: watch::Receiver<Arc<LocalState>>,
    pub status: watch::Receiver<SourceStatus>,
    pub task: JoinHandle<()>,
}
