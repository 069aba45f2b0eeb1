//! What the server knows of the agents, fed by a thread per agent's observe socket and one that
//! polls every agent's status: the recent flows (at most [`RECENT`], for a page that opens now), a
//! broadcast of each new one to the open pages, and the mesh as the last poll merged it.
//!
//! A reader whose agent goes away says so on the page and tries again every second; on its return
//! it asks only for the flows since the last one it had, so nothing is counted twice.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshpath_api::client::ObserveRequest;
use meshpath_api::flow::{FlowResponse, FlowTime};
use meshpath_api::Client;
use tokio::sync::{broadcast, watch};

use super::mesh::{self, MeshView};

/// Flows kept for pages that open later (and asked of each agent at start).
pub const RECENT: usize = 5000;
/// How often every agent's status is read.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long an agent may take to answer a status request before it counts as unreadable.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Feed {
    recent: Mutex<VecDeque<Arc<FlowResponse>>>,
    flows: broadcast::Sender<Arc<FlowResponse>>,
    mesh: watch::Sender<Arc<MeshView>>,
    /// Why an agent's observe socket could not be read, by socket.
    flow_errors: Mutex<BTreeMap<String, String>>,
}

/// What a page starts from: the recent flows, and the stream of the ones after them.
pub struct Subscription {
    pub recent: Vec<Arc<FlowResponse>>,
    pub flows: broadcast::Receiver<Arc<FlowResponse>>,
    pub mesh: watch::Receiver<Arc<MeshView>>,
}

impl Feed {
    pub fn new() -> Arc<Feed> {
        Arc::new(Feed {
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            flows: broadcast::channel(RECENT).0,
            mesh: watch::channel(Arc::new(MeshView::default())).0,
            flow_errors: Mutex::new(BTreeMap::new()),
        })
    }

    /// Starts the readers of `sockets`: one thread per observe socket, one for every status.
    pub fn start(self: &Arc<Feed>, sockets: &[PathBuf]) {
        for socket in sockets {
            let (feed, socket) = (self.clone(), socket.clone());
            std::thread::spawn(move || feed.follow(&socket));
        }
        let (feed, sockets) = (self.clone(), sockets.to_vec());
        std::thread::spawn(move || loop {
            feed.poll(&sockets);
            std::thread::sleep(STATUS_EVERY);
        });
    }

    pub fn subscribe(&self) -> Subscription {
        // Under the lock that `push` takes too: no flow falls between the two.
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        Subscription {
            flows: self.flows.subscribe(),
            recent: recent.iter().cloned().collect(),
            mesh: self.mesh.subscribe(),
        }
    }

    pub fn push(&self, event: FlowResponse) {
        let event = Arc::new(event);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(event.clone());
        // No page open: nobody to tell.
        let _ = self.flows.send(event);
    }

    /// Follows one agent's flows for as long as the process runs.
    fn follow(&self, socket: &PathBuf) {
        let mut last_seen: Option<FlowTime> = None;
        loop {
            let request = ObserveRequest {
                follow: true,
                last: match last_seen {
                    None => Some(RECENT as u64),
                    Some(_) => None,
                },
                since: last_seen.map(|t| FlowTime::from_unix_ms(t.unix_ms() + 1)),
                ..Default::default()
            };
            let client = Client::new(socket);
            // A quiet agent sends no flow to prove it answers: its status does.
            if client.summary().is_ok() {
                self.set_flow_error(socket, None);
            }
            let read = client.observe(&request, |event| {
                last_seen = Some(last_seen.map_or(event.time, |t| t.max(event.time)));
                self.push(event);
                true
            });
            let why = match read {
                Ok(()) => "the agent closed its flow stream".to_owned(),
                Err(error) => error.to_string(),
            };
            self.set_flow_error(socket, Some(why));
            std::thread::sleep(RETRY_AFTER);
        }
    }

    fn set_flow_error(&self, socket: &std::path::Path, error: Option<String>) {
        let mut errors = self.flow_errors.lock().unwrap_or_else(|e| e.into_inner());
        let key = socket.display().to_string();
        match error {
            Some(error) => errors.insert(key, error),
            None => errors.remove(&key),
        };
    }

    /// Reads every agent's status and publishes the merged view when it changed.
    fn poll(&self, sockets: &[PathBuf]) {
        let flow_errors = self
            .flow_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let readings: Vec<mesh::Reading> = sockets
            .iter()
            .map(|socket| {
                let name = socket.display().to_string();
                mesh::Reading {
                    status: Client::new(socket)
                        .with_timeout(STATUS_TIMEOUT)
                        .status()
                        .map_err(|e| e.to_string()),
                    flows_error: flow_errors.get(&name).cloned(),
                    socket: name,
                }
            })
            .collect();
        let view = mesh::merge(&readings);
        self.mesh.send_if_modified(|current| {
            let changed = **current != view;
            if changed {
                *current = Arc::new(view);
            }
            changed
        });
    }
}
