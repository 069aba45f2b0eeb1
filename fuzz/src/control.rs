//! The control plane's decoders of remote bytes. The first byte picks the decoder:
//!
//! - 0: a remote cluster's etcd as a watcher reads it: records of `[op][key length: u8][key]
//!   [value length: u16 BE][value]` (op bit 0: delete), decoded as a session decodes a put (key,
//!   value checked against the key and the remote, then the state entry), folded into the remote's
//!   state and fed to the snapshot builder, which must build tables from whatever got through;
//! - 1: a label string, which must print back to a string that parses to the same set;
//! - 2: a kvstore key, likewise;
//! - 3: a clustermesh configuration file, loaded as the directory watcher loads one.
//!
//! The remote is `cluster3` with id 3, the cluster of Cilium's documented values in the seeds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use meshpath_control::clustermesh::config::load_file;
use meshpath_control::clustermesh::{decode_remote_entry, RemoteEvent, RemoteLimits};
use meshpath_control::kvstore::{Key, LabelSet, Origin};
use meshpath_control::snapshot::{Change, NodeSpec, SnapshotBuilder};
use meshpath_control::state::{ClusterState, StateEvent};
use meshpath_control::ClusterName;
use meshpath_dataplane::snapshot::Capacities;
use meshpath_dataplane::ClusterId;

pub fn run(data: &[u8]) {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    match select % 4 {
        0 => remote_etcd(rest),
        1 => labels(rest),
        2 => key(rest),
        _ => config_file(rest),
    }
}

pub fn remote() -> ClusterName {
    ClusterName::new("cluster3").expect("a valid cluster name")
}

/// One put or delete as the remote's etcd serves it.
#[derive(Clone, Copy, Debug)]
pub struct KvOp<'a> {
    pub delete: bool,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

pub fn kv_ops(mut data: &[u8]) -> impl Iterator<Item = KvOp<'_>> {
    std::iter::from_fn(move || {
        let (&op, rest) = data.split_first()?;
        let (&klen, rest) = rest.split_first()?;
        let (key, rest) = rest.split_at(usize::from(klen).min(rest.len()));
        let (vlen, rest) = match rest {
            [hi, lo, rest @ ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), rest),
            _ => (0, rest),
        };
        let (value, rest) = rest.split_at(vlen.min(rest.len()));
        data = rest;
        Some(KvOp {
            delete: op & 1 != 0,
            key,
            value,
        })
    })
}

/// Writes ops in the format [`kv_ops`] reads.
pub fn encode_kv(ops: &[KvOp<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        out.push(u8::from(op.delete));
        out.push(op.key.len() as u8);
        out.extend_from_slice(&op.key[..op.key.len().min(255)]);
        out.extend_from_slice(&(op.value.len() as u16).to_be_bytes());
        out.extend_from_slice(op.value);
    }
    out
}

fn remote_etcd(data: &[u8]) {
    let name = remote();
    let origin = Origin {
        name: &name,
        id: ClusterId::new(3).expect("3 is a mesh id"),
    };
    let mut state = ClusterState::default();
    let mut events = Vec::new();
    for op in kv_ops(data) {
        let event = if op.delete {
            deleted(op.key).map(StateEvent::Delete)
        } else {
            decode_remote_entry(op.key, op.value, origin, &RemoteLimits::default())
                .map(StateEvent::Upsert)
        };
        if let Some(event) = event {
            if state.apply(event.clone()) {
                events.push(event);
            }
        }
    }
    let changes = events.len() as u64;
    let mut builder = SnapshotBuilder::new(spec());
    builder.apply(events.into_iter().map(|event| {
        Change::Remote(RemoteEvent {
            cluster: name.clone(),
            event,
        })
    }));
    assert_eq!(builder.stats().changes, changes);
}

fn deleted(key: &[u8]) -> Option<meshpath_control::state::EntryKey> {
    use meshpath_control::state::{EntryKey, ServiceName};
    Some(match Key::parse(std::str::from_utf8(key).ok()?).ok()? {
        Key::Node { node, .. } => EntryKey::Node(node),
        Key::Service {
            namespace, name, ..
        } => EntryKey::Service(ServiceName { namespace, name }),
        Key::Identity(id) => EntryKey::Identity(id),
        Key::Endpoint(ip) => EntryKey::Endpoint(ip.into()),
        _ => return None,
    })
}

fn labels(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(set) = LabelSet::parse(text) {
        let printed = set.to_string();
        let again = LabelSet::parse(&printed).unwrap_or_else(|e| {
            panic!("`{text}` printed as `{printed}`, which does not parse: {e}")
        });
        assert_eq!(again, set, "`{text}` printed as `{printed}`");
    }
}

fn key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = Key::parse(text) {
        let printed = key.to_string();
        assert_eq!(
            Key::parse(&printed).as_ref(),
            Ok(&key),
            "`{text}` printed as `{printed}`"
        );
    }
}

fn config_file(data: &[u8]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("meshpath-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        for name in ["ca.crt", "client.crt", "client.key"] {
            std::fs::write(dir.join(name), "-----BEGIN CERTIFICATE-----\n").expect("a file");
        }
        dir
    });
    let path = dir.join("cluster3");
    if std::fs::write(&path, data).is_ok() {
        if let Ok(config) = load_file(&remote(), &path) {
            assert!(
                !config.endpoints.is_empty(),
                "a remote without endpoints was accepted"
            );
        }
    }
}

fn spec() -> NodeSpec {
    let cluster = ClusterId::new(1).expect("1 is a mesh id");
    NodeSpec {
        cluster: ClusterName::new("cluster1").expect("a valid cluster name"),
        cluster_id: cluster,
        node: "n1".into(),
        config: meshpath_dataplane::testbed::node_config(),
        capacities: Capacities::default(),
        ports: BTreeMap::new(),
        local_affinity_threshold: 0.0,
        policy_limits: Default::default(),
        admission: Default::default(),
        segments: Vec::new(),
        external_workload: false,
    }
}
