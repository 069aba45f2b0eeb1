//! The standalone local source: a directory of YAML (or JSON) files in Kubernetes' shapes, watched so
//! that adding, changing or removing a file changes the [`LocalState`] without a restart.
//!
//! A file is all or nothing: if any document in it cannot be parsed or translated, the file's last
//! good content stays in force and the problem is reported with the file's path and line. A policy
//! that cannot be enforced as written is no such problem: it is taken, refused, and denies what it
//! selects (see `refused`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::model::LocalState;
use super::object::{LocalObject, ObjectKey};
use super::status::{LocalSourceHandle, SourceError, SourceStatus};
use super::yaml::parse_objects;

/// Events closer together than this are read as one change (an editor's write, rename and chmod).
const SETTLE: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum YamlSourceError {
    #[error("local state directory {}: {source}", path.display())]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

pub struct YamlSource;

impl YamlSource {
    /// Reads every file of `dir` once (so the first state is complete when this returns), then
    /// follows the directory until `cancel`.
    pub fn spawn(
        dir: impl Into<PathBuf>,
        cancel: CancellationToken,
    ) -> Result<LocalSourceHandle, YamlSourceError> {
        let dir = dir.into();
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = events_tx.send(event);
        })
        .map_err(|source| YamlSourceError::Watch {
            path: dir.clone(),
            source,
        })?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| YamlSourceError::Watch {
                path: dir.clone(),
                source,
            })?;

        let mut files = Files::default();
        files.rescan(&dir);
        let (state_tx, state) = watch::channel(Arc::new(files.state()));
        let (status_tx, status) = watch::channel(files.status());
        let task = tokio::spawn(follow(
            dir, files, watcher, events, state_tx, status_tx, cancel,
        ));
        Ok(LocalSourceHandle {
            state,
            status,
            task,
        })
    }
}

async fn follow(
    dir: PathBuf,
    mut files: Files,
    _watcher: notify::RecommendedWatcher,
    mut events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    state_tx: watch::Sender<Arc<LocalState>>,
    status_tx: watch::Sender<SourceStatus>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            event = events.recv() => match event {
                None => return,
                Some(Err(e)) => tracing::warn!(dir = %dir.display(), "watching local state directory: {e}"),
                Some(Ok(_)) => {}
            },
        }
        tokio::time::sleep(SETTLE).await;
        while events.try_recv().is_ok() {}
        files.rescan(&dir);
        let state = files.state();
        state_tx.send_if_modified(|current| {
            let changed = **current != state;
            if changed {
                *current = Arc::new(state);
            }
            changed
        });
        let status = files.status();
        status_tx.send_if_modified(|current| {
            let changed = *current != status;
            if changed {
                *current = status;
            }
            changed
        });
    }
}

/// What each file contributes: the text last read, the objects of its last good content and the
/// problem of its current content, if any.
#[derive(Default)]
struct Files(BTreeMap<PathBuf, FileState>);

#[derive(Default)]
struct FileState {
    text: Option<String>,
    /// Each object with the line of its document.
    objects: Vec<(usize, ObjectKey, LocalObject)>,
    error: Option<SourceError>,
}

impl Files {
    fn rescan(&mut self, dir: &Path) {
        let present = state_files(dir);
        self.0.retain(|path, _| present.contains(path));
        for path in present {
            let file = self.0.entry(path.clone()).or_default();
            match std::fs::read_to_string(&path) {
                Ok(text) if file.text.as_ref() == Some(&text) => {}
                Ok(text) => {
                    file.load(&path, &text);
                    file.text = Some(text);
                }
                Err(e) => {
                    file.text = None;
                    file.error = Some(SourceError::File {
                        path,
                        line: 0,
                        problem: e.to_string(),
                    });
                }
            }
        }
    }

    /// The files' objects, in path order (a later file's object replaces an earlier one's).
    fn state(&self) -> LocalState {
        let mut state = LocalState::default();
        for file in self.0.values() {
            for (_, key, object) in &file.objects {
                state.set(key, Some(object.clone()));
            }
        }
        state
    }

    fn status(&self) -> SourceStatus {
        SourceStatus {
            synced: true,
            errors: self
                .0
                .values()
                .filter_map(|f| f.error.clone())
                .chain(self.redefinitions())
                .collect(),
            ..SourceStatus::default()
        }
    }

    /// An object defined twice: the later definition is in force, and reported.
    fn redefinitions(&self) -> Vec<SourceError> {
        let mut first: BTreeMap<&ObjectKey, (&Path, usize)> = BTreeMap::new();
        let mut out = Vec::new();
        for (path, file) in &self.0 {
            for (line, key, _) in &file.objects {
                match first.get(key) {
                    None => drop(first.insert(key, (path, *line))),
                    Some((at, at_line)) => out.push(SourceError::File {
                        path: path.clone(),
                        line: *line,
                        problem: format!(
                            "{key} is also defined at {}:{at_line}; this later definition is in force",
                            at.display()
                        ),
                    }),
                }
            }
        }
        out
    }
}

impl FileState {
    /// Replaces the objects if the whole text is good; otherwise keeps them and records why not.
    fn load(&mut self, path: &Path, text: &str) {
        let error = |line, problem: String| SourceError::File {
            path: path.to_path_buf(),
            line,
            problem,
        };
        let parsed = match parse_objects(text) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.error = Some(error(e.line, e.problem));
                return;
            }
        };
        let mut objects = Vec::with_capacity(parsed.len());
        for p in parsed {
            match p.object.translate() {
                Ok((key, Some(object))) => objects.push((p.line, key, object)),
                Ok((_, None)) => {}
                Err(e) => {
                    self.error = Some(error(p.line, e.to_string()));
                    return;
                }
            }
        }
        self.objects = objects;
        self.error = None;
    }
}

/// The directory's state files: `*.yaml`, `*.yml` and `*.json`, not hidden (which also skips the
/// `..data` directories of Kubernetes volume mounts). An unreadable directory has none.
fn state_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
            !name.starts_with('.') && matches!(ext, "yaml" | "yml" | "json") && p.is_file()
        })
        .collect();
    files.sort();
    files
}
