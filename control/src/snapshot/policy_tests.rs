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
