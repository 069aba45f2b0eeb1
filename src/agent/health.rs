//! The agent's health (`meshpath_api::health`): liveness from two heartbeats — the dataplane worker's
//! loop, which beats every turn busy or idle, and the control loop's, a task on the agent's runtime
//! that beats every second — and readiness from the local source and the first snapshot built from it.
//!
//! Served over HTTP (`/livez`, `/readyz`, `/healthz`; 200 or 503 with the checks as JSON) on the
//! `health` address, 127.0.0.1:9879 by default as Cilium's agent serves its own, from a thread and a
//! runtime of its own: when the agent's runtime is stuck, the endpoint still answers, and says so.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use meshpath_api::health::{Check, CheckKind, CheckName, CheckState, Health};
use meshpath_control::snapshot::SnapshotSink;
use meshpath_dataplane::snapshot::Tables;
use tokio_util::sync::CancellationToken;

/// A worker whose loop made no turn for this long is stuck (an idle one turns every 10 ms).
pub const WORKER_STALL: Duration = Duration::from_secs(5);
/// How often the control loop beats, and how long without a beat makes it stuck.
const CONTROL_BEAT: Duration = Duration::from_secs(1);
pub const CONTROL_STALL: Duration = Duration::from_secs(10);

/// A counter that grows while its owner makes progress.
pub type Beat = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Watches one heartbeat: when did it last change.
struct Progress {
    beat: Beat,
    stall_after: Duration,
    seen: Mutex<(u64, Instant)>,
}

impl Progress {
    fn new(beat: Beat, stall_after: Duration, now: Instant) -> Progress {
        let first = beat();
        Progress {
            beat,
            stall_after,
            seen: Mutex::new((first, now)),
        }
    }

    fn check(&self, now: Instant) -> (CheckState, String) {
        let value = (self.beat)();
        let Ok(mut seen) = self.seen.lock() else {
            return (CheckState::Failing, "health state poisoned".into());
        };
        if value != seen.0 {
            *seen = (value, now);
        }
        let quiet = now.saturating_duration_since(seen.1);
        if quiet > self.stall_after {
            let detail = format!(
                "no progress for {:.1}s (at beat {value})",
                quiet.as_secs_f64()
            );
            return (CheckState::Failing, detail);
        }
        (CheckState::Ok, format!("beat {value}"))
    }
}

/// What readiness waits for, set by the control task as it happens.
#[derive(Clone, Default)]
pub struct Readiness(Arc<(AtomicBool, AtomicBool)>);

impl Readiness {
    /// The local source delivered a complete state, resolved and about to be handed to the builder
    /// (noted before the hand-over, so that the snapshot that takes it in counts, whichever thread
    /// builds it).
    pub fn local_synced(&self) {
        self.0 .0.store(true, Ordering::SeqCst);
    }

    /// A snapshot was installed for the workers; it counts once the local state was in it.
    pub fn snapshot_installed(&self) {
        if self.0 .0.load(Ordering::SeqCst) {
            self.0 .1.store(true, Ordering::SeqCst);
        }
    }

    fn checks(&self) -> [Check; 2] {
        let state = |done: bool| match done {
            true => CheckState::Ok,
            false => CheckState::Waiting,
        };
        let (local, snapshot) = (
            self.0 .0.load(Ordering::SeqCst),
            self.0 .1.load(Ordering::SeqCst),
        );
        [
            Check {
                name: CheckName::LocalSource,
                kind: CheckKind::Readiness,
                state: state(local),
                detail: match local {
                    true => "synced".into(),
                    false => "waiting for the first complete local state".into(),
                },
            },
            Check {
                name: CheckName::Snapshot,
                kind: CheckKind::Readiness,
                state: state(snapshot),
                detail: match snapshot {
                    true => "installed".into(),
                    false => "waiting for the first table snapshot of the local state".into(),
                },
            },
        ]
    }
}

/// The control loop's heartbeat: a task on the agent's runtime that beats while the runtime runs.
#[derive(Clone, Default)]
pub struct ControlBeat(Arc<AtomicU64>);

impl ControlBeat {
    pub fn beat(&self) -> Beat {
        let count = self.0.clone();
        Arc::new(move || count.load(Ordering::Relaxed))
    }

    /// Beats every second until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(CONTROL_BEAT);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => { self.0.fetch_add(1, Ordering::Relaxed); }
            }
        }
    }
}

/// Why the local source cannot follow the cluster now (the API server lost), if it cannot.
pub type SourceLost = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Every check of the agent.
pub struct HealthMonitor {
    worker: Progress,
    control: Progress,
    readiness: Readiness,
    source_lost: Option<SourceLost>,
}

impl HealthMonitor {
    pub fn new(worker: Beat, control: Beat, readiness: Readiness) -> HealthMonitor {
        Self::with_stalls(worker, control, readiness, (WORKER_STALL, CONTROL_STALL))
    }

    fn with_stalls(
        worker: Beat,
        control: Beat,
        readiness: Readiness,
        (worker_stall, control_stall): (Duration, Duration),
    ) -> HealthMonitor {
        let now = Instant::now();
        HealthMonitor {
            worker: Progress::new(worker, worker_stall, now),
            control: Progress::new(control, control_stall, now),
            readiness,
            source_lost: None,
        }
    }

    /// The local source check fails while `lost` says why, once the source has synced: the node
    /// runs on, on its last state, but is not ready (as `cilium status` fails on a lost API server).
    pub fn watching_source(mut self, lost: SourceLost) -> HealthMonitor {
        self.source_lost = Some(lost);
        self
    }

    pub fn check(&self) -> Health {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Health {
        let liveness = |name, (state, detail)| Check {
            name,
            kind: CheckKind::Liveness,
            state,
            detail,
        };
        let mut checks = vec![
            liveness(CheckName::Worker, self.worker.check(now)),
            liveness(CheckName::ControlLoop, self.control.check(now)),
        ];
        let lost = self.source_lost.as_ref().and_then(|lost| lost());
        checks.extend(
            self.readiness
                .checks()
                .map(|check| match (&lost, check.name) {
                    (Some(why), CheckName::LocalSource) if check.state == CheckState::Ok => Check {
                        state: CheckState::Failing,
                        detail: format!("{why}; the last state stays in force"),
                        ..check
                    },
                    _ => check,
                }),
        );
        Health::of(checks)
    }
}

/// Binds the health address (before the node is touched, like every listener).
pub fn bind(address: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    use anyhow::Context;
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("`health`: cannot listen on {address}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves the endpoint from a thread of its own until `cancel`.
pub fn spawn(
    listener: std::net::TcpListener,
    monitor: Arc<HealthMonitor>,
    cancel: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("meshpath-health".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => return tracing::error!(%error, "health endpoint runtime"),
            };
            runtime.block_on(async move {
                if let Err(error) = serve(listener, monitor, cancel).await {
                    tracing::error!(%error, "health endpoint");
                }
            });
        })
}

async fn serve(
    listener: std::net::TcpListener,
    monitor: Arc<HealthMonitor>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = axum::Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/healthz", get(readyz))
        .with_state(monitor);
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}

async fn livez(State(monitor): State<Arc<HealthMonitor>>) -> axum::response::Response {
    let health = monitor.check();
    answer(health.live, health)
}

async fn readyz(State(monitor): State<Arc<HealthMonitor>>) -> axum::response::Response {
    let health = monitor.check();
    answer(health.ready, health)
}

fn answer(good: bool, health: Health) -> axum::response::Response {
    let code = match good {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = serde_json::to_string(&health).unwrap_or_default();
    (code, [(CONTENT_TYPE, "application/json")], body).into_response()
}

/// The builder's sink, noting the first snapshot installed for readiness.
pub struct ReadySink<S> {
    inner: S,
    readiness: Readiness,
}

impl<S: SnapshotSink> ReadySink<S> {
    pub fn new(inner: S, readiness: Readiness) -> Self {
        ReadySink { inner, readiness }
    }
}

impl<S: SnapshotSink> SnapshotSink for ReadySink<S> {
    fn publish(&mut self, tables: Arc<Tables>) {
        self.inner.publish(tables);
        self.readiness.snapshot_installed();
    }

    fn publish_batch(&mut self, tables: Arc<Tables>, taken: Instant) {
        self.inner.publish_batch(tables, taken);
        self.readiness.snapshot_installed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn counter() -> (Arc<AtomicU64>, Beat) {
        let count = Arc::new(AtomicU64::new(0));
        let beat = count.clone();
        (count, Arc::new(move || beat.load(Ordering::Relaxed)))
    }

    #[test]
    fn a_beat_that_stops_fails_liveness_and_one_that_resumes_passes() {
        let (worker, beat) = counter();
        let (_, control) = counter();
        let start = Instant::now();
        let monitor = HealthMonitor::with_stalls(
            beat,
            control,
            Readiness::default(),
            (Duration::from_secs(5), Duration::from_secs(60)),
        );
        let at = |s: u64| start + Duration::from_secs(s);
        assert!(monitor.check_at(at(4)).live, "quiet, but not for long");
        let stuck = monitor.check_at(at(6));
        assert!(!stuck.live);
        assert!(
            stuck
                .summary()
                .starts_with("Failing: worker: no progress for 6.0s"),
            "{}",
            stuck.summary()
        );
        worker.fetch_add(1, Ordering::Relaxed);
        assert!(monitor.check_at(at(7)).live, "it beat again");
        assert!(!monitor.check_at(at(13)).live);
    }

    #[test]
    fn ready_once_the_local_state_is_in_an_installed_snapshot() {
        let (_, worker) = counter();
        let (_, control) = counter();
        let readiness = Readiness::default();
        let monitor = HealthMonitor::new(worker, control, readiness.clone());
        let health = monitor.check();
        assert!(health.live && !health.ready, "{health:?}");
        readiness.snapshot_installed();
        assert!(
            !monitor.check().ready,
            "a snapshot of nothing local does not count"
        );
        readiness.local_synced();
        assert!(!monitor.check().ready);
        readiness.snapshot_installed();
        assert!(monitor.check().ready);

        let lost = Arc::new(AtomicBool::new(true));
        let monitor = HealthMonitor::new(counter().1, counter().1, readiness).watching_source({
            let lost = lost.clone();
            Arc::new(move || {
                lost.load(Ordering::SeqCst)
                    .then(|| "the API server does not answer".into())
            })
        });
        let health = monitor.check();
        assert!(health.live && !health.ready, "{health:?}");
        assert!(
            health
                .summary()
                .contains("local-source: the API server does not answer"),
            "{}",
            health.summary()
        );
        lost.store(false, Ordering::SeqCst);
        assert!(monitor.check().ready, "back once the API server answers");
    }

    async fn get(address: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let code = response[9..12].parse().unwrap();
        (code, response)
    }

    /// The endpoint turns unhealthy when the worker stops, and healthy when it runs again.
    #[tokio::test]
    async fn the_endpoint_fails_liveness_while_the_worker_is_stopped() {
        let (worker, beat) = counter();
        let (_, control) = counter();
        let readiness = Readiness::default();
        readiness.local_synced();
        readiness.snapshot_installed();
        let stall = Duration::from_millis(200);
        let monitor = HealthMonitor::with_stalls(beat, control, readiness, (stall, Duration::MAX));
        let listener = bind(([127, 0, 0, 1], 0).into()).unwrap();
        let address = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let server = spawn(listener, Arc::new(monitor), cancel.clone()).unwrap();
        let running = Arc::new(AtomicBool::new(true));
        let beating = std::thread::spawn({
            let running = running.clone();
            move || {
                while running.load(Ordering::Relaxed) {
                    worker.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
                worker
            }
        });
        assert_eq!(get(address, "/livez").await.0, 200);
        let (code, body) = get(address, "/healthz").await;
        assert_eq!(code, 200, "{body}");
        running.store(false, Ordering::Relaxed);
        let worker = beating.join().unwrap();
        let failing = wait_for(|| async { get(address, "/livez").await.0 == 503 }).await;
        assert!(failing, "liveness fails once the worker stopped");
        let (code, body) = get(address, "/readyz").await;
        assert_eq!(code, 503);
        assert!(
            body.contains(r#""name":"worker""#) && body.contains("no progress"),
            "{body}"
        );
        worker.fetch_add(1, Ordering::Relaxed);
        assert_eq!(get(address, "/livez").await.0, 200, "it beat again");
        cancel.cancel();
        server.join().unwrap();
    }

    /// The DaemonSet in deploy/ probes this endpoint, runs on Linux nodes only, installs the CNI plugin
    /// and mounts its secrets
    /// readable by the agent alone.
    #[test]
    fn the_daemonset_probes_this_endpoint() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/daemonset.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&text).unwrap();
        let ds = docs
            .iter()
            .find(|d| d["kind"] == "DaemonSet")
            .expect("a DaemonSet");
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
        let agent = &pod["containers"][0];
        for (probe, path) in [
            ("startupProbe", "/readyz"),
            ("livenessProbe", "/livez"),
            ("readinessProbe", "/readyz"),
        ] {
            let get = &agent[probe]["httpGet"];
            assert_eq!(get["port"], 9879, "{probe}");
            assert_eq!(get["host"], "127.0.0.1", "{probe}");
            assert_eq!(get["path"], path, "{probe}");
        }
        let caps = agent["securityContext"]["capabilities"]["add"]
            .as_array()
            .unwrap();
        assert!(
            caps.iter().any(|c| c == "SYS_RESOURCE"),
            "to lift RLIMIT_MEMLOCK on old kernels"
        );
        let env = agent["env"].as_array().unwrap();
        assert!(env.iter().any(|e| e["name"] == "NO_COLOR"));
        let install = &pod["initContainers"][0];
        assert_eq!(install["name"], "install-cni");
        let script = install["command"][2].as_str().unwrap();
        // Written beside and renamed into place: the runtime never runs half a plugin.
        for line in [
            "mv -f /host/opt/cni/bin/.meshpath-cni.new /host/opt/cni/bin/meshpath-cni",
            "mv -f /host/etc/cni/net.d/.10-meshpath.conflist.new /host/etc/cni/net.d/10-meshpath.conflist",
        ] {
            assert!(script.lines().any(|l| l == line), "{line}");
        }
        for volume in pod["volumes"].as_array().unwrap() {
            if let Some(secret) = volume.get("secret").or_else(|| volume.get("projected")) {
                assert_eq!(secret["defaultMode"], 0o400, "{volume:?}");
            }
        }
        the_clustermesh_secrets_are_projected_as_cilium_does(pod);
    }

    /// Where Cilium's tooling points the certificate paths of its clustermesh Secret.
    fn the_clustermesh_secrets_are_projected_as_cilium_does(pod: &serde_json::Value) {
        let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"] == "/var/lib/cilium/clustermesh")
            .expect("the clustermesh secrets mounted where Cilium's files point");
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let sources = volume["projected"]["sources"].as_array().unwrap();
        let paths: Vec<&str> = sources
            .iter()
            .flat_map(|s| s["secret"]["items"].as_array().into_iter().flatten())
            .map(|item| item["path"].as_str().unwrap())
            .collect();
        for prefix in ["common", "local"] {
            for suffix in [".crt", ".key", "-ca.crt"] {
                let file = format!("{prefix}-etcd-client{suffix}");
                assert!(paths.contains(&file.as_str()), "{file} in {paths:?}");
            }
        }
        assert!(
            sources
                .iter()
                .any(|s| s["secret"]["name"] == "cilium-clustermesh"
                    && s["secret"]["items"].is_null())
        );
    }

    async fn wait_for<F, Fut>(mut condition: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if condition().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}
