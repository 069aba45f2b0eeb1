//! Policy fails closed: what cannot be compiled or translated denies the endpoints it selects, in
//! the directions it covers; the previous table never stays in force for it.

use meshpath_dataplane::pipeline::Verdict;
use meshpath_dataplane::policy::{
    IngressRule, LabelSelector, Peer, PolicyRule, PortRule, Protocol,
};
use meshpath_dataplane::DropReason;

use super::tests::*;
use super::*;
use crate::local::yaml::parse_objects;
use crate::local::*;

/// rebel-base (cluster1) → x-wing on 8080: what x-wing's ingress decides.
fn rebel_to_x_wing(builder: &SnapshotBuilder) -> Verdict {
    let frame = syn(mac(11), REBEL_C1, X_WING, 41000, 8080);
    run(&builder.current(), &mut worker(), REBEL_PORT, &frame).0
}

async fn with_policy(policy: LocalPolicy) -> SnapshotBuilder {
    let mut builder = built(true, Affinity::None).await;
    let mut local = local_state(true, Affinity::None);
    local.policies.insert(policy.policy.clone(), policy);
    builder.apply([Change::Local(resolve(local).await)]);
    builder
}

fn policy_ref(name: &str) -> PolicyRef {
    PolicyRef {
        kind: PolicyKind::CiliumNetworkPolicy,
        policy: obj(name),
    }
}

#[tokio::test]
async fn a_rule_that_cannot_be_compiled_denies_its_endpoints_instead_of_keeping_the_old_table() {
    let builder = built(true, Affinity::None).await;
    assert!(
        matches!(rebel_to_x_wing(&builder), Verdict::Transmit(_)),
        "open before"
    );
    let bad_range = PortRule {
        protocol: Protocol::Tcp,
        port: 9000,
        end_port: Some(8000),
    };
    let broken = LocalPolicy {
        policy: policy_ref("x-wing-ingress"),
        rules: vec![PolicyRule {
            endpoint_selector: LabelSelector::all().with_label("name", "x-wing"),
            ingress: Some(vec![IngressRule {
                from: vec![Peer::Endpoints(LabelSelector::all())],
                to_ports: vec![bad_range],
            }]),
            egress: None,
        }],
        refused: None,
    };
    let builder = with_policy(broken).await;
    assert_eq!(
        rebel_to_x_wing(&builder),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    let tables = builder.current();
    let refusal = &tables.policy.refusals()[0];
    assert_eq!(refusal.policy, "CiliumNetworkPolicy default/x-wing-ingress");
    assert!(
        refusal.why.contains("port range 9000-8000"),
        "{}",
        refusal.why
    );
    assert!(refusal.ingress && !refusal.egress);
    assert_eq!(builder.stats().policy_refused, 1);
    // x-wing's egress (the x-wing policy) still works: only ingress is covered by the broken rule.
    assert_eq!(
        x_wing_to(&tables, REBEL_C2, 8080, 40000).0,
        Verdict::Transmit(meshpath_dataplane::PortId(0))
    );
}

#[tokio::test]
async fn an_unsupported_policy_in_a_file_denies_what_it_selects() {
    let yaml = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: office\nspec:\n  endpointSelector:\n    matchLabels: {name: x-wing}\n  ingress:\n  - fromCIDR: [192.0.2.0/24]\n";
    let object = parse_objects(yaml).unwrap().remove(0).object;
    let Ok((_, Some(LocalObject::Policy(policy)))) = object.translate() else {
        panic!("a refused policy expected");
    };
    assert!(policy
        .refused
        .as_deref()
        .is_some_and(|w| w.contains("fromCIDR")));
    let builder = with_policy(policy).await;
    assert_eq!(
        rebel_to_x_wing(&builder),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    let tables = builder.current();
    let refusals: Vec<_> = tables
        .policy
        .refusals()
        .iter()
        .map(|r| r.policy.as_str())
        .collect();
    assert_eq!(refusals, ["CiliumNetworkPolicy default/office"]);
}

/// A remote identity the x-wing policy would grant: rebel-base of cluster2.
fn rebel_c2_identity(n: u32) -> Change {
    let labels = crate::kvstore::LabelSet::parse(&format!(
        "k8s:io.cilium.k8s.policy.cluster=cluster2;k8s:io.kubernetes.pod.namespace=default;k8s:name=rebel-base;k8s:n=n{n};"
    ))
    .unwrap();
    let id = meshpath_dataplane::Identity::new(0x2_0200 + n).unwrap();
    remote(crate::state::StateEvent::Upsert(
        crate::state::Entry::Identity(id, labels),
    ))
}

fn x_wing_grants(builder: &SnapshotBuilder) -> usize {
    let tables = builder.current();
    let x_wing = *builder.sources().local.pods.get(&obj("x-wing")).unwrap();
    match &tables.policy.policy(x_wing).egress {
        meshpath_dataplane::policy::DirectionPolicy::Enforced(p) => p.entries(),
        meshpath_dataplane::policy::DirectionPolicy::AllowAll => usize::MAX,
    }
}

#[tokio::test]
async fn within_a_burst_of_remote_identities_policy_is_recompiled_once_at_its_end() {
    let mut builder = built(true, Affinity::None).await;
    let before = x_wing_grants(&builder);
    builder.apply_queued([rebel_c2_identity(1)], true);
    builder.apply_queued([rebel_c2_identity(2)], true);
    assert_eq!(
        x_wing_grants(&builder),
        before,
        "put off while the burst is queued"
    );
    builder.apply_queued([rebel_c2_identity(3)], false);
    assert_eq!(
        x_wing_grants(&builder),
        before + 3,
        "all three at the burst's end"
    );
    // A local change is compiled at once, queued or not.
    builder.apply_queued([rebel_c2_identity(4)], true);
    let local = resolve(local_state(true, Affinity::Local)).await;
    builder.apply_queued([Change::Local(local)], true);
    assert_eq!(x_wing_grants(&builder), before + 4);
}
