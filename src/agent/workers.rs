//! The node's dataplane workers as the agent sees them: one per core of `dataplane.cores`, worker `i`
//! pinned to the list's `i`-th core and serving receive queue `i` of every interface, each flow steered
//! to the one worker that owns it (`meshpath_dataplane::steering`). Here: each worker's starting state
//! (its steering slot, and its share of the conntrack a planned stop handed over), the handover written
//! from all of them at a planned stop, and the readers of what they copy out — summed for the node
//! where the agent reports one figure, and one by one.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;
use meshpath_api::status::WorkerStatus;
use meshpath_dataplane::afxdp::{StatsReader, WorkerStats};
use meshpath_dataplane::conntrack::{Conntrack, ConntrackConfig, Timeouts};
use meshpath_dataplane::handover::{self, Successors};
use meshpath_dataplane::pipeline::WorkerState;
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::steering::{Steering, WorkerSlot};
use meshpath_dataplane::FlowKey;

use super::config::AgentConfig;
use super::handler::PipelineHandler;
use super::report::WorkerReport;

/// The file a planned stop hands conntrack over in, inside `state-dir`.
const CONNTRACK_FILE: &str = "conntrack.v1";

/// What the node's workers copy out, from any thread; cheap to clone.
#[derive(Clone)]
pub struct NodeWorkers {
    cores: Arc<[usize]>,
    reports: Arc<[Arc<ArcSwap<WorkerReport>>]>,
    stats: Arc<[StatsReader]>,
    beats: Arc<Mutex<AllBeat>>,
}

/// The heartbeat of all workers: it moves only once every worker's loop has turned since it last moved.
#[derive(Default)]
struct AllBeat {
    seen: Vec<u64>,
    beats: u64,
}

impl NodeWorkers {
    /// The workers on `cores` (in order), with their report slots and counter readers.
    pub fn new(
        cores: &[usize],
        reports: Vec<Arc<ArcSwap<WorkerReport>>>,
        stats: Vec<StatsReader>,
    ) -> NodeWorkers {
        NodeWorkers {
            cores: cores.into(),
            reports: reports.into(),
            stats: stats.into(),
            beats: Arc::default(),
        }
    }

    /// The pipeline's report of the node: every worker's summed.
    pub fn report(&self) -> Arc<WorkerReport> {
        match &*self.reports {
            [only] => only.load_full(),
            all => {
                let loaded: Vec<Arc<WorkerReport>> = all.iter().map(|r| r.load_full()).collect();
                Arc::new(WorkerReport::sum(&loaded))
            }
        }
    }

    /// The AF_XDP counters of the node: every worker's summed, each port's over its sockets.
    pub fn read(&self) -> WorkerStats {
        match &*self.stats {
            [only] => only.read(),
            all => {
                let each: Vec<WorkerStats> = all.iter().map(StatsReader::read).collect();
                WorkerStats::sum(&each)
            }
        }
    }

    /// Each worker: its core, queue, frames and loop turns.
    pub fn each(&self) -> Vec<WorkerStatus> {
        self.stats
            .iter()
            .zip(self.cores.iter())
            .enumerate()
            .map(|(i, (reader, &core))| {
                let stats = reader.read();
                WorkerStatus {
                    index: i as u16,
                    core: core as u32,
                    queue: i as u32,
                    rx: stats.rx(),
                    tx: stats.tx(),
                    handed_off: stats.handed_off,
                    received_handoff: stats.received_handoff,
                    loop_turns: reader.heartbeat(),
                }
            })
            .collect()
    }

    /// Moves only when every worker's loop turned since it last moved: one stuck worker stops it,
    /// which is what the liveness check watches for.
    pub fn heartbeat(&self) -> u64 {
        let now: Vec<u64> = self.stats.iter().map(StatsReader::heartbeat).collect();
        let mut all = self.beats.lock().unwrap_or_else(PoisonError::into_inner);
        let moved = all.seen.len() != now.len() || all.seen.iter().zip(&now).all(|(s, n)| s != n);
        if moved {
            all.seen = now;
            all.beats += 1;
        }
        all.beats
    }
}

/// Each worker's starting state: its steering slot, and the flows the last agent handed over that it
/// owns by the node's steering over `tables` (read once, then the file is removed).
pub fn starting_states(config: &AgentConfig, tables: &Tables, epoch: Instant) -> Vec<WorkerState> {
    let workers = config.dataplane.cores.len().max(1) as u16;
    let ct = ConntrackConfig {
        capacity: config
            .dataplane
            .conntrack_capacity
            .div_ceil(usize::from(workers)),
        timeouts: Timeouts::default(),
        endpoint_quota: None,
    };
    let steering = Steering::new(workers);
    let mut states: Vec<WorkerState> = (0..workers)
        .map(|i| {
            let mut state = WorkerState::new(ct);
            state.slot = steering.map_or(WorkerSlot::ONLY, |s| s.slot(i));
            state
        })
        .collect();
    let owner = |flow: &FlowKey| steering.map_or(0, |s| usize::from(s.flow_owner(tables, flow)));
    let successors = Successors {
        config: ct,
        now_ms: PipelineHandler::clock(epoch),
        workers: states.len(),
        owner: &owner,
    };
    for (state, conntrack) in states.iter_mut().zip(handed_over(config, &successors)) {
        state.conntrack = conntrack;
    }
    states
}

/// The conntrack the last agent handed over, a table per worker; none without a file.
fn handed_over(config: &AgentConfig, successors: &Successors<'_>) -> Vec<Conntrack> {
    let path = config.state_dir.join(CONNTRACK_FILE);
    if !path.exists() {
        return Vec::new();
    }
    let tables = match handover::read(&path, successors) {
        Ok(tables) => {
            let flows: Vec<usize> = tables.iter().map(|t| t.len()).collect();
            tracing::info!(?flows, file = %path.display(), "conntrack handed over, by worker");
            tables
        }
        Err(error) => {
            tracing::warn!(%error, file = %path.display(), "conntrack handover file ignored; starting with none");
            Vec::new()
        }
    };
    remove_used(&path);
    tables
}

fn remove_used(path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        tracing::warn!(%error, file = %path.display(), "could not remove the used handover file");
    }
}

/// Writes every stopped worker's conntrack for the next agent, in one file.
pub fn hand_over(config: &AgentConfig, handlers: Vec<PipelineHandler>) {
    let finished: Vec<(WorkerState, u64)> =
        handlers.into_iter().map(PipelineHandler::finish).collect();
    let tables: Vec<_> = finished
        .iter()
        .map(|(s, now_ms)| (&s.conntrack, *now_ms))
        .collect();
    let path = config.state_dir.join(CONNTRACK_FILE);
    let written =
        std::fs::create_dir_all(&config.state_dir).and_then(|()| handover::write(&path, &tables));
    match written {
        Ok(flows) => {
            tracing::info!(flows, workers = tables.len(), file = %path.display(), "conntrack handed over")
        }
        Err(error) => tracing::warn!(%error, file = %path.display(), "conntrack not handed over"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_dataplane::snapshot::Capacities;
    use meshpath_dataplane::testbed;

    #[test]
    fn the_nodes_conntrack_capacity_is_split_between_its_workers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = super::super::config::TEST_CONFIG;
        let mut config = AgentConfig::parse(Path::new("agent.yaml"), text).expect("sample parses");
        config.state_dir = dir.path().to_owned();
        config.dataplane.conntrack_capacity = 1001;
        config.dataplane.cores = vec![0, 1];
        let tables = Tables::empty(testbed::node_config(), Capacities::default());
        let states = starting_states(&config, &tables, Instant::now());
        let capacities: Vec<usize> = states.iter().map(|s| s.conntrack.capacity()).collect();
        assert_eq!(capacities, [501, 501]);
    }
}
