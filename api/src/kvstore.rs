//! This cluster's etcd as the agent last found it: the `KVStore:` line of `meshpath status`, in the
//! shape of `cilium status`' (`Ok   etcd: 1/1 connected: https://…:2379 - 3.5.17 (Leader)`).

use serde::{Deserialize, Serialize};

use crate::clustermesh::Timestamp;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStoreStatus {
    pub state: KvStoreState,
    /// Each configured endpoint, as its last status call found it.
    pub endpoints: Vec<EtcdEndpoint>,
    /// Why the last check failed, if it did.
    pub last_error: Option<String>,
    /// When the endpoints were last asked.
    pub checked_at: Option<Timestamp>,
    /// Whether the agent talks to it over mutual TLS; false only with `etcd.insecure: true`.
    #[serde(default)]
    pub mutual_tls: bool,
}

named_enum! {
    pub enum KvStoreState ("kvstore state") {
        /// Every endpoint answered.
        Ok => "ok",
        /// Some answered, not all.
        Degraded => "degraded",
        /// None answered.
        Failing => "failing",
        /// Not asked yet.
        Waiting => "waiting",
        /// The agent has no `etcd` configured.
        Disabled => "disabled",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdEndpoint {
    pub address: String,
    pub connected: bool,
    /// The etcd server's version, e.g. `3.5.17`.
    pub version: Option<String>,
    /// Whether it is the raft leader.
    pub leader: bool,
    /// How long its status call took, in microseconds.
    pub latency_us: Option<u64>,
    pub error: Option<String>,
}

impl KvStoreStatus {
    pub fn disabled() -> KvStoreStatus {
        KvStoreStatus {
            state: KvStoreState::Disabled,
            endpoints: Vec::new(),
            last_error: None,
            checked_at: None,
            mutual_tls: false,
        }
    }

    /// Whether the store is usable: every endpoint, or some of them, answered (or none is needed).
    pub fn usable(&self) -> bool {
        matches!(
            self.state,
            KvStoreState::Ok | KvStoreState::Degraded | KvStoreState::Disabled
        )
    }
}

/// The text after `KVStore:`.
pub fn line(status: &KvStoreStatus) -> String {
    let state = match status.state {
        KvStoreState::Ok => "Ok",
        KvStoreState::Degraded => "Warning",
        KvStoreState::Failing => "Failure",
        KvStoreState::Waiting => "Waiting",
        KvStoreState::Disabled => return "Ok   Disabled".to_owned(),
    };
    let connected = status.endpoints.iter().filter(|e| e.connected).count();
    let mut text = format!(
        "{state:<4} etcd: {connected}/{} connected",
        status.endpoints.len()
    );
    for e in &status.endpoints {
        text.push_str(&format!(": {}", e.address));
        match (&e.version, &e.error) {
            (Some(version), _) => {
                text.push_str(&format!(" - {version}"));
                if e.leader {
                    text.push_str(" (Leader)");
                }
            }
            (None, Some(error)) => text.push_str(&format!(" - {error}")),
            (None, None) => {}
        }
    }
    if !status.mutual_tls {
        text.push_str(" (INSECURE: no client certificate)");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(address: &str, version: Option<&str>, leader: bool) -> EtcdEndpoint {
        EtcdEndpoint {
            address: address.into(),
            connected: version.is_some(),
            version: version.map(String::from),
            leader,
            latency_us: version.map(|_| 1500),
            error: version.is_none().then(|| "connection refused".to_owned()),
        }
    }

    #[test]
    fn lines_as_cilium_prints_them() {
        assert_eq!(line(&KvStoreStatus::disabled()), "Ok   Disabled");
        let ok = KvStoreStatus {
            state: KvStoreState::Ok,
            endpoints: vec![endpoint("https://198.18.1.1:2379", Some("3.5.17"), true)],
            last_error: None,
            checked_at: None,
            mutual_tls: true,
        };
        assert_eq!(
            line(&ok),
            "Ok   etcd: 1/1 connected: https://198.18.1.1:2379 - 3.5.17 (Leader)"
        );
        assert!(ok.usable());
        let down = KvStoreStatus {
            state: KvStoreState::Failing,
            endpoints: vec![endpoint("http://198.18.1.1:2379", None, false)],
            last_error: Some("connection refused".into()),
            checked_at: None,
            mutual_tls: false,
        };
        assert_eq!(
            line(&down),
            "Failure etcd: 0/1 connected: http://198.18.1.1:2379 - connection refused (INSECURE: no client certificate)"
        );
        assert!(!down.usable());
    }
}
