//! This cluster's etcd as the agent finds it, for the `KVStore:` line of `meshpath status` (as `cilium
//! status` has one): every [`PROBE_EVERY`], each configured endpoint is asked for its status
//! (version, raft leader) over a connection of its own with the agent's TLS, so one endpoint down
//! shows as `1/2 connected` rather than as a balanced client's silence. Each call's duration is the
//! etcd operation latency the metrics export (`cilium_kvstore_operations_duration_seconds`).

use std::time::{Duration, Instant, SystemTime};

use meshpath_api::clustermesh::Timestamp;
use meshpath_api::kvstore::{EtcdEndpoint, KvStoreState, KvStoreStatus};
use meshpath_control::clustermesh::config::TlsMaterial;
use meshpath_control::etcd::{describe, EtcdTarget};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::config::AgentConfig;

/// How often the endpoints are asked.
const PROBE_EVERY: Duration = Duration::from_secs(10);
/// How long one endpoint may take to connect and answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The labels Cilium's kvstore operation histogram carries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub action: String,
    pub kind: String,
    pub outcome: String,
    pub scope: String,
}

/// Durations of the agent's etcd operations, by Cilium's labels.
pub type OperationLatency = Family<OperationLabels, Histogram>;

pub fn operation_latency() -> OperationLatency {
    // 100 µs to ~26 s.
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(1e-4, 4.0, 10)))
}

/// One endpoint's connection, made again after a failure.
struct Endpoint {
    address: String,
    client: Option<etcd_client::Client>,
}

/// Probes `endpoints` until `cancel`, publishing each round.
pub async fn probe_forever(
    endpoints: Vec<String>,
    tls: Option<TlsMaterial>,
    latency: OperationLatency,
    status: watch::Sender<KvStoreStatus>,
    cancel: CancellationToken,
) {
    let mut endpoints: Vec<Endpoint> = endpoints
        .into_iter()
        .map(|address| Endpoint {
            address,
            client: None,
        })
        .collect();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut seen = Vec::new();
        for endpoint in &mut endpoints {
            seen.push(endpoint.probe(tls.as_ref(), &latency).await);
        }
        status.send_replace(fold(seen, SystemTime::now(), tls.is_some()));
    }
}

impl Endpoint {
    async fn probe(
        &mut self,
        tls: Option<&TlsMaterial>,
        latency: &OperationLatency,
    ) -> EtcdEndpoint {
        let started = Instant::now();
        let answer = tokio::time::timeout(PROBE_TIMEOUT, self.status(tls)).await;
        let took = started.elapsed();
        let answer = answer
            .unwrap_or_else(|_| Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())));
        let outcome = if answer.is_ok() { "success" } else { "fail" };
        latency
            .get_or_create(&OperationLabels {
                action: "Status".into(),
                kind: "read".into(),
                outcome: outcome.into(),
                scope: "cluster".into(),
            })
            .observe(took.as_secs_f64());
        match answer {
            Ok((version, leader)) => EtcdEndpoint {
                address: self.address.clone(),
                connected: true,
                version: Some(version),
                leader,
                latency_us: Some(took.as_micros() as u64),
                error: None,
            },
            Err(error) => {
                self.client = None;
                EtcdEndpoint {
                    address: self.address.clone(),
                    connected: false,
                    version: None,
                    leader: false,
                    latency_us: None,
                    error: Some(error),
                }
            }
        }
    }

    /// The server's version and whether it leads.
    async fn status(&mut self, tls: Option<&TlsMaterial>) -> Result<(String, bool), String> {
        if self.client.is_none() {
            let target = EtcdTarget {
                endpoints: std::slice::from_ref(&self.address),
                tls,
                connect_timeout: PROBE_TIMEOUT,
                keep_alive: PROBE_EVERY,
            };
            let client = meshpath_control::etcd::connect(&target)
                .await
                .map_err(|e| describe(&e))?;
            self.client = Some(client);
        }
        let Some(client) = self.client.as_mut() else {
            return Err("not connected".into());
        };
        let status = client.status().await.map_err(|e| describe(&e))?;
        let member = status.header().map(|h| h.member_id());
        Ok((status.version().to_owned(), member == Some(status.leader())))
    }
}

/// One round's answers as a status: ok when every endpoint answered, degraded when some did.
fn fold(endpoints: Vec<EtcdEndpoint>, at: SystemTime, mutual_tls: bool) -> KvStoreStatus {
    let up = endpoints.iter().filter(|e| e.connected).count();
    let state = match up {
        _ if endpoints.is_empty() => KvStoreState::Disabled,
        0 => KvStoreState::Failing,
        n if n == endpoints.len() => KvStoreState::Ok,
        _ => KvStoreState::Degraded,
    };
    let last_error = endpoints
        .iter()
        .find_map(|e| e.error.as_ref())
        .map(|error| error.to_owned());
    KvStoreStatus {
        state,
        endpoints,
        last_error,
        checked_at: Some(Timestamp(at)),
        mutual_tls,
    }
}

/// Starts probing this cluster's etcd, if one is configured: the status board it keeps.
pub fn spawn(
    config: &AgentConfig,
    tasks: &mut JoinSet<()>,
    latency: OperationLatency,
    cancel: CancellationToken,
) -> anyhow::Result<Option<watch::Receiver<KvStoreStatus>>> {
    let Some(etcd) = &config.etcd else {
        return Ok(None);
    };
    let tls = super::control::tls_material(etcd)?;
    let (status, board) = watch::channel(waiting(&etcd.endpoints, tls.is_some()));
    let endpoints = etcd.endpoints.clone();
    tasks.spawn(probe_forever(endpoints, tls, latency, status, cancel));
    Ok(Some(board))
}

/// Before the first round: every endpoint not asked yet.
pub fn waiting(endpoints: &[String], mutual_tls: bool) -> KvStoreStatus {
    KvStoreStatus {
        state: KvStoreState::Waiting,
        endpoints: endpoints
            .iter()
            .map(|address| EtcdEndpoint {
                address: address.clone(),
                connected: false,
                version: None,
                leader: false,
                latency_us: None,
                error: None,
            })
            .collect(),
        last_error: None,
        checked_at: None,
        mutual_tls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(up: bool) -> EtcdEndpoint {
        EtcdEndpoint {
            address: "http://127.0.0.1:2379".into(),
            connected: up,
            version: up.then(|| "3.5.17".to_owned()),
            leader: up,
            latency_us: up.then_some(800),
            error: (!up).then(|| "connection refused".to_owned()),
        }
    }

    #[test]
    fn a_round_folds_into_one_state() {
        let now = SystemTime::now();
        assert_eq!(
            fold(vec![endpoint(true)], now, true).state,
            KvStoreState::Ok
        );
        let half = fold(vec![endpoint(true), endpoint(false)], now, true);
        assert_eq!(half.state, KvStoreState::Degraded);
        assert_eq!(half.last_error.as_deref(), Some("connection refused"));
        assert_eq!(
            fold(vec![endpoint(false)], now, true).state,
            KvStoreState::Failing
        );
        assert_eq!(
            waiting(&["http://x:2379".into()], false).state,
            KvStoreState::Waiting
        );
    }

    /// An endpoint nobody listens on is reported with why, its connection made again next time,
    /// and the failed call observed in the latency histogram.
    #[tokio::test]
    async fn an_endpoint_down_is_named_and_timed() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let latency = operation_latency();
        let mut probe = Endpoint {
            address: address.clone(),
            client: None,
        };
        let seen = probe.probe(None, &latency).await;
        assert!(!seen.connected);
        assert!(seen.error.is_some(), "{seen:?}");
        assert!(probe.client.is_none());
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("kvstore_operations_duration_seconds", "", latency);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"kvstore_operations_duration_seconds_count{action="Status",kind="read",outcome="fail",scope="cluster"} 1"#),
            "{text}"
        );
    }
}
