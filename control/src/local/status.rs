//! What a local source reports beside the state: whether it has its first complete view yet, and
//! every problem now in force (the state keeps the last good content of whatever has a problem).

use std::path::PathBuf;
use std::sync::Arc;

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
}

/// A running local source: its state and status channels, and its task.
#[derive(Debug)]
pub struct LocalSourceHandle {
    pub state: watch::Receiver<Arc<LocalState>>,
    pub status: watch::Receiver<SourceStatus>,
    pub task: JoinHandle<()>,
}
