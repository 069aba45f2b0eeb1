//! Validation of values against their key and the cluster they were read from.

use super::*;
use proptest::prelude::*;

fn cluster3() -> ClusterName {
    ClusterName::new("cluster3").unwrap()
}

fn origin(name: &ClusterName) -> Origin<'_> {
    Origin {
        name,
        id: ClusterId::new(3).unwrap(),
    }
}

fn decode(key: &str, value: &str) -> Result<Record, ValueError> {
    Record::decode(
        &Key::parse(key).unwrap(),
        value.as_bytes(),
        origin(&cluster3()),
    )
}

const NODE: &str = r#"{"Name":"node-2","Cluster":"cluster3","IPAddresses":[],"ClusterID":3}"#;
const SERVICE: &str =
    r#"{"cluster":"cluster3","namespace":"ns-alpha","name":"echo","clusterID":3,"shared":true}"#;
const PAIR: &str = r#"{"IP":"10.244.2.74","Mask":null,"HostIP":"172.18.0.2","ID":199475}"#;

#[test]
fn accepts_values_that_agree_with_key_and_origin() {
    assert!(matches!(
        decode("cilium/state/nodes/v1/cluster3/node-2", NODE),
        Ok(Record::Node(_))
    ));
    assert!(matches!(
        decode("cilium/state/services/v1/cluster3/ns-alpha/echo", SERVICE),
        Ok(Record::Service(_))
    ));
    assert!(matches!(
        decode("cilium/state/ip/v1/default/10.244.2.74", PAIR),
        Ok(Record::Endpoint(_))
    ));
    let labels = "k8s:app=baz;k8s:io.cilium.k8s.policy.cluster=cluster3;";
    assert!(matches!(
        decode("cilium/state/identities/v1/id/196915", labels),
        Ok(Record::Identity(..))
    ));
    let config = r#"{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}"#;
    assert!(matches!(
        decode("cilium/cluster-config/cluster3", config),
        Ok(Record::ClusterConfig(_))
    ));
    let canary = "cilium/synced/cluster3/cilium/state/ip/v1";
    assert!(matches!(
        decode(canary, "2026-11-25T11:00:00Z"),
        Ok(Record::SyncCanary(Kind::Endpoints))
    ));
}

#[test]
fn refuses_a_node_naming_another_cluster_and_names_the_key() {
    let value = NODE.replace(r#""Cluster":"cluster3""#, r#""Cluster":"cluster4""#);
    let err = decode("cilium/state/nodes/v1/cluster3/node-2", &value).unwrap_err();
    assert!(matches!(err, ValueError::ClusterName { ref found, .. } if found == "cluster4"));
    assert!(
        err.to_string()
            .starts_with("cilium/state/nodes/v1/cluster3/node-2: "),
        "{err}"
    );
}

#[test]
fn refuses_a_key_of_another_cluster_in_this_etcd() {
    let err = decode("cilium/state/nodes/v1/cluster4/node-2", NODE).unwrap_err();
    assert!(matches!(err, ValueError::ClusterName { .. }));
}

#[test]
fn refuses_mismatched_ids() {
    let node = NODE.replace(r#""ClusterID":3"#, r#""ClusterID":4"#);
    let err = decode("cilium/state/nodes/v1/cluster3/node-2", &node).unwrap_err();
    assert!(matches!(
        err,
        ValueError::ClusterId {
            found: 4,
            expected: 3,
            ..
        }
    ));
    let svc = SERVICE.replace(r#""clusterID":3"#, r#""clusterID":9"#);
    assert!(matches!(
        decode("cilium/state/services/v1/cluster3/ns-alpha/echo", &svc),
        Err(ValueError::ClusterId { .. })
    ));
    let config = r#"{"id":4}"#;
    assert!(matches!(
        decode("cilium/cluster-config/cluster3", config),
        Err(ValueError::ClusterId { .. })
    ));
}

#[test]
fn refuses_identities_outside_the_cluster_range_or_labelled_for_another_cluster() {
    let id_of_cluster4 = "cilium/state/identities/v1/id/262145";
    assert!(matches!(
        decode(id_of_cluster4, "k8s:a=b;"),
        Err(ValueError::IdentityRange { .. })
    ));
    let labels = "k8s:app=baz;k8s:io.cilium.k8s.policy.cluster=cluster4;";
    assert!(matches!(
        decode("cilium/state/identities/v1/id/196915", labels),
        Err(ValueError::ClusterName { .. })
    ));
    let pair = PAIR.replace("199475", "262145");
    assert!(matches!(
        decode("cilium/state/ip/v1/default/10.244.2.74", &pair),
        Err(ValueError::IdentityRange { .. })
    ));
}

#[test]
fn refuses_values_that_contradict_their_key() {
    assert!(matches!(
        decode("cilium/state/ip/v1/default/10.244.2.75", PAIR),
        Err(ValueError::Mismatch { field: "IP", .. })
    ));
    assert!(matches!(
        decode("cilium/state/nodes/v1/cluster3/node-9", NODE),
        Err(ValueError::Mismatch { field: "Name", .. })
    ));
    assert!(matches!(
        decode("cilium/state/nodes/v1/cluster3/node-2", "{"),
        Err(ValueError::Json { .. })
    ));
    let cidr = PAIR.replace(r#""Mask":null"#, r#""Mask":"////AA==""#);
    assert!(matches!(
        decode("cilium/state/ip/v1/default/10.244.2.74", &cidr),
        Err(ValueError::Cidr { .. })
    ));
}

proptest! {
    #[test]
    fn decode_never_panics(key in proptest::sample::select(vec![
        "cilium/state/nodes/v1/cluster3/n", "cilium/state/services/v1/cluster3/a/b",
        "cilium/state/identities/v1/id/196915", "cilium/state/ip/v1/default/10.0.0.1",
        "cilium/cluster-config/cluster3",
    ]), value in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = Record::decode(&Key::parse(key).unwrap(), &value, origin(&cluster3()));
    }
}

#[test]
fn refuses_endpoints_with_reserved_identities() {
    for reserved in ["1", "2", "6", "255"] {
        let pair = PAIR.replace("199475", reserved);
        let err = decode("cilium/state/ip/v1/default/10.244.2.74", &pair).unwrap_err();
        assert!(
            matches!(err, ValueError::ReservedIdentity { id, .. } if id.to_string() == reserved),
            "{reserved}: {err}"
        );
        assert_eq!(err.refusal(), Refusal::ReservedIdentity);
    }
    let reserved_key = decode("cilium/state/identities/v1/id/6", "reserved:remote-node;");
    assert_eq!(
        reserved_key.unwrap_err().refusal(),
        Refusal::ReservedIdentity
    );
}

#[test]
fn refuses_ipv4_mapped_addresses_in_keys_and_values() {
    let mapped_key = decode(
        "cilium/state/ip/v1/default/::ffff:10.244.2.74",
        &PAIR.replace("10.244.2.74", "::ffff:10.244.2.74"),
    );
    assert!(
        matches!(mapped_key, Err(ValueError::Ipv4Mapped { field: "key", .. })),
        "{mapped_key:?}"
    );
    let mapped_host = PAIR.replace("172.18.0.2", "::ffff:172.18.0.2");
    let err = decode("cilium/state/ip/v1/default/10.244.2.74", &mapped_host).unwrap_err();
    assert!(
        matches!(
            err,
            ValueError::Ipv4Mapped {
                field: "HostIP",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.refusal(), Refusal::Ipv4Mapped);
    let node = NODE.replace(
        r#""IPAddresses":[]"#,
        r#""IPAddresses":[{"Type":"InternalIP","IP":"::ffff:198.18.2.1"}]"#,
    );
    let err = decode("cilium/state/nodes/v1/cluster3/node-2", &node).unwrap_err();
    assert!(
        matches!(
            err,
            ValueError::Ipv4Mapped {
                field: "IPAddresses",
                ..
            }
        ),
        "{err}"
    );
    let cidr = NODE.replace(
        r#""IPAddresses":[]"#,
        r#""IPAddresses":[],"IPv6AllocCIDR":{"IP":"::ffff:10.0.0.0","Mask":"/////////////////////w=="}"#,
    );
    let err = decode("cilium/state/nodes/v1/cluster3/node-2", &cidr).unwrap_err();
    assert!(
        matches!(
            err,
            ValueError::Ipv4Mapped {
                field: "IPv6AllocCIDR",
                ..
            }
        ),
        "{err}"
    );
    let svc = SERVICE.replace(
        r#""clusterID":3"#,
        r#""clusterID":3,"backends":{"::ffff:10.0.0.1":{"http":{"Protocol":"TCP","Port":80}}}"#,
    );
    let err = decode("cilium/state/services/v1/cluster3/ns-alpha/echo", &svc).unwrap_err();
    assert!(
        matches!(
            err,
            ValueError::Ipv4Mapped {
                field: "backends",
                ..
            }
        ),
        "{err}"
    );
    // A plain IPv6 address is fine.
    let v6 = PAIR
        .replace("10.244.2.74", "fd00::74")
        .replace("172.18.0.2", "fd00::2");
    assert!(decode("cilium/state/ip/v1/default/fd00::74", &v6).is_ok());
}

#[test]
fn refuses_services_that_are_not_shared() {
    assert!(decode("cilium/state/services/v1/cluster3/ns-alpha/echo", SERVICE).is_ok());
    let quiet = SERVICE.replace(r#""shared":true"#, r#""shared":false"#);
    let err = decode("cilium/state/services/v1/cluster3/ns-alpha/echo", &quiet).unwrap_err();
    assert_eq!(err.refusal(), Refusal::NotShared, "{err}");
    // Go writes the field always; without it, its zero value: not shared.
    let absent = SERVICE.replace(r#","shared":true"#, "");
    let err = decode("cilium/state/services/v1/cluster3/ns-alpha/echo", &absent).unwrap_err();
    assert_eq!(err.refusal(), Refusal::NotShared);
}

#[test]
fn every_refusal_has_a_reason() {
    let cases = [
        (
            "cilium/state/nodes/v1/cluster3/node-2",
            "{",
            Refusal::Malformed,
        ),
        (
            "cilium/state/nodes/v1/cluster3/node-2",
            &*NODE.replace(r#""ClusterID":3"#, r#""ClusterID":4"#),
            Refusal::WrongCluster,
        ),
        (
            "cilium/state/identities/v1/id/262145",
            "k8s:a=b;",
            Refusal::ReservedIdentity,
        ),
    ];
    for (key, value, reason) in cases {
        assert_eq!(decode(key, value).unwrap_err().refusal(), reason, "{key}");
    }
}
