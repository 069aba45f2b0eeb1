//! Cilium's kvstore key layout: every key a cluster writes under `cilium/`, parsed and rendered.

use std::fmt;
use std::net::IpAddr;

use meshpath_dataplane::Identity;

use crate::cluster_name::ClusterName;

/// The root every ClusterMesh key lives under.
pub const ROOT: &str = "cilium/";
const CLUSTER_CONFIG: &str = "cilium/cluster-config/";
const SYNCED: &str = "cilium/synced/";
const IDENTITY_IDS: &str = "cilium/state/identities/v1/id/";
const IP_DEFAULT: &str = "cilium/state/ip/v1/default/";

/// The four kinds of state a cluster shares, each under its own prefix with its own sync canary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Nodes,
    Endpoints,
    Identities,
    Services,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Nodes,
        Kind::Endpoints,
        Kind::Identities,
        Kind::Services,
    ];

    /// The prefix, without trailing `/`, as it appears in sync canary keys.
    pub const fn prefix(self) -> &'static str {
        match self {
            Kind::Nodes => "cilium/state/nodes/v1",
            Kind::Endpoints => "cilium/state/ip/v1",
            Kind::Identities => "cilium/state/identities/v1",
            Kind::Services => "cilium/state/services/v1",
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Kind::Nodes => "nodes",
            Kind::Endpoints => "endpoints",
            Kind::Identities => "identities",
            Kind::Services => "services",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }

    fn from_prefix(prefix: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.prefix() == prefix)
    }
}

/// A parsed key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Node {
        cluster: ClusterName,
        node: String,
    },
    Service {
        cluster: ClusterName,
        namespace: String,
        name: String,
    },
    Identity(Identity),
    Endpoint(IpAddr),
    ClusterConfig(ClusterName),
    SyncCanary {
        cluster: ClusterName,
        kind: Kind,
    },
}

/// A key that is not one of ours, or one of ours that is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Outside the layout we read (other Cilium keys, e.g. identity value keys): not an error to log.
    #[error("key `{0}` is not part of the ClusterMesh layout")]
    Foreign(String),
    #[error("key `{key}`: {why}")]
    Malformed { key: String, why: String },
}

impl KeyError {
    fn malformed(key: &str, why: impl fmt::Display) -> Self {
        KeyError::Malformed {
            key: key.to_owned(),
            why: why.to_string(),
        }
    }
}

impl Key {
    pub fn parse(key: &str) -> Result<Key, KeyError> {
        if let Some(rest) = key.strip_prefix(IDENTITY_IDS) {
            let id = rest.parse::<u32>().ok().and_then(Identity::new);
            let id = id.filter(|id| id.get().to_string() == rest);
            return id
                .map(Key::Identity)
                .ok_or_else(|| KeyError::malformed(key, "not a 24-bit identity in decimal"));
        }
        if let Some(rest) = key.strip_prefix(IP_DEFAULT) {
            let ip: IpAddr = rest.parse().map_err(|e| KeyError::malformed(key, e))?;
            // One address, one key: `fd00:0::1` would name the entry of `fd00::1` a second time.
            if ip.to_string() != rest {
                return Err(KeyError::malformed(key, format!("not written as {ip}")));
            }
            return Ok(Key::Endpoint(ip));
        }
        if let Some(rest) = key.strip_prefix(CLUSTER_CONFIG) {
            return Ok(Key::ClusterConfig(cluster(key, rest)?));
        }
        if let Some(rest) = key.strip_prefix(SYNCED) {
            let (name, prefix) = rest
                .split_once('/')
                .ok_or_else(|| KeyError::malformed(key, "no prefix"))?;
            let kind =
                Kind::from_prefix(prefix).ok_or_else(|| KeyError::Foreign(key.to_owned()))?;
            return Ok(Key::SyncCanary {
                cluster: cluster(key, name)?,
                kind,
            });
        }
        if let Some(rest) = strip_kind(key, Kind::Nodes) {
            let [name, node] = segments(key, rest)?;
            return Ok(Key::Node {
                cluster: cluster(key, name)?,
                node: node.to_owned(),
            });
        }
        if let Some(rest) = strip_kind(key, Kind::Services) {
            let [name, namespace, svc] = segments(key, rest)?;
            let (namespace, name, cluster) =
                (namespace.to_owned(), svc.to_owned(), cluster(key, name)?);
            return Ok(Key::Service {
                cluster,
                namespace,
                name,
            });
        }
        Err(KeyError::Foreign(key.to_owned()))
    }

    /// The prefixes a remote's state is listed from, in listing order: nodes, identities (their ids, not
    /// the per-node value keys), endpoints, services, then the sync canaries.
    pub const LISTED: [&'static str; 5] = [
        "cilium/state/nodes/v1/",
        IDENTITY_IDS,
        IP_DEFAULT,
        "cilium/state/services/v1/",
        SYNCED,
    ];

    /// The kind of state the key holds; `None` for cluster-config.
    pub fn kind(&self) -> Option<Kind> {
        match self {
            Key::Node { .. } => Some(Kind::Nodes),
            Key::Service { .. } => Some(Kind::Services),
            Key::Identity(_) => Some(Kind::Identities),
            Key::Endpoint(_) => Some(Kind::Endpoints),
            Key::SyncCanary { kind, .. } => Some(*kind),
            Key::ClusterConfig(_) => None,
        }
    }
}

fn strip_kind(key: &str, kind: Kind) -> Option<&str> {
    key.strip_prefix(kind.prefix())?.strip_prefix('/')
}

fn cluster(key: &str, name: &str) -> Result<ClusterName, KeyError> {
    ClusterName::new(name).map_err(|e| KeyError::malformed(key, e))
}

fn segments<'a, const N: usize>(key: &str, rest: &'a str) -> Result<[&'a str; N], KeyError> {
    let mut out = [""; N];
    let mut parts = rest.split('/');
    for slot in out.iter_mut() {
        *slot = parts
            .next()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| KeyError::malformed(key, "too few segments"))?;
    }
    match parts.next() {
        None => Ok(out),
        Some(_) => Err(KeyError::malformed(key, "too many segments")),
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Node { cluster, node } => write!(f, "{}/{cluster}/{node}", Kind::Nodes.prefix()),
            Key::Service {
                cluster,
                namespace,
                name,
            } => {
                write!(
                    f,
                    "{}/{cluster}/{namespace}/{name}",
                    Kind::Services.prefix()
                )
            }
            Key::Identity(id) => write!(f, "{IDENTITY_IDS}{id}"),
            Key::Endpoint(ip) => write!(f, "{IP_DEFAULT}{ip}"),
            Key::ClusterConfig(cluster) => write!(f, "{CLUSTER_CONFIG}{cluster}"),
            Key::SyncCanary { cluster, kind } => write!(f, "{SYNCED}{cluster}/{}", kind.prefix()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c3() -> ClusterName {
        ClusterName::new("cluster3").unwrap()
    }

    #[test]
    fn parses_the_documented_keys() {
        let cases = [
            (
                "cilium/state/nodes/v1/cluster3/node-2",
                Key::Node {
                    cluster: c3(),
                    node: "node-2".into(),
                },
            ),
            (
                "cilium/state/services/v1/cluster3/ns-alpha/echo-service",
                Key::Service {
                    cluster: c3(),
                    namespace: "ns-alpha".into(),
                    name: "echo-service".into(),
                },
            ),
            (
                "cilium/state/identities/v1/id/196915",
                Key::Identity(Identity::new(196915).unwrap()),
            ),
            (
                "cilium/state/ip/v1/default/10.244.2.74",
                Key::Endpoint("10.244.2.74".parse().unwrap()),
            ),
            (
                "cilium/state/ip/v1/default/fd00::1",
                Key::Endpoint("fd00::1".parse().unwrap()),
            ),
            ("cilium/cluster-config/cluster3", Key::ClusterConfig(c3())),
            (
                "cilium/synced/cluster3/cilium/state/nodes/v1",
                Key::SyncCanary {
                    cluster: c3(),
                    kind: Kind::Nodes,
                },
            ),
        ];
        for (text, key) in cases {
            assert_eq!(Key::parse(text).as_ref(), Ok(&key), "{text}");
            assert_eq!(key.to_string(), text);
        }
    }

    #[test]
    fn the_listed_prefixes_hold_every_kind_and_the_canaries() {
        for kind in Kind::ALL {
            assert!(
                Key::LISTED.iter().any(|p| p.starts_with(kind.prefix())),
                "{kind:?}"
            );
        }
        let canary = Key::SyncCanary {
            cluster: c3(),
            kind: Kind::Nodes,
        };
        assert!(canary.to_string().starts_with(Key::LISTED[4]));
    }

    #[test]
    fn tells_foreign_keys_from_malformed_ones() {
        let foreign = "cilium/state/identities/v1/value/k8s:a=b;/10.0.0.1";
        assert_eq!(Key::parse(foreign), Err(KeyError::Foreign(foreign.into())));
        assert!(matches!(
            Key::parse("cilium/state/nodes/v1/cluster3"),
            Err(KeyError::Malformed { .. })
        ));
        assert!(matches!(
            Key::parse("cilium/state/nodes/v1/Cluster3/n"),
            Err(KeyError::Malformed { .. })
        ));
        assert!(matches!(
            Key::parse("cilium/state/ip/v1/default/10.0.0"),
            Err(KeyError::Malformed { .. })
        ));
        for twin in [
            "cilium/state/identities/v1/id/0196915",
            "cilium/state/identities/v1/id/+196915",
        ] {
            assert!(
                matches!(Key::parse(twin), Err(KeyError::Malformed { .. })),
                "{twin}"
            );
        }
        assert!(matches!(
            Key::parse("cilium/state/ip/v1/default/fd00:0::1"),
            Err(KeyError::Malformed { .. })
        ));
        assert!(matches!(
            Key::parse("cilium/state/identities/v1/id/16777216"),
            Err(KeyError::Malformed { .. })
        ));
    }

    fn any_key() -> impl Strategy<Value = Key> {
        let name = "[a-z0-9-]{1,32}".prop_map(|n| ClusterName::new(&n).unwrap());
        let seg = "[a-z0-9][a-z0-9.-]{0,20}";
        prop_oneof![
            (name.clone(), seg).prop_map(|(cluster, node)| Key::Node { cluster, node }),
            (name.clone(), seg, seg).prop_map(|(cluster, namespace, name)| Key::Service {
                cluster,
                namespace,
                name
            }),
            (0u32..=Identity::MAX).prop_map(|id| Key::Identity(Identity::new(id).unwrap())),
            any::<std::net::IpAddr>().prop_map(Key::Endpoint),
            name.clone().prop_map(Key::ClusterConfig),
            (name, proptest::sample::select(Kind::ALL.to_vec()))
                .prop_map(|(cluster, kind)| Key::SyncCanary { cluster, kind }),
        ]
    }

    proptest! {
        #[test]
        fn render_then_parse_round_trips(key in any_key()) {
            prop_assert_eq!(Key::parse(&key.to_string()), Ok(key));
        }

        #[test]
        fn parse_never_panics(s in "cilium/[a-z/0-9.:-]{0,60}") {
            let _ = Key::parse(&s);
        }
    }
}
