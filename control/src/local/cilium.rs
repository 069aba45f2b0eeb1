//! CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (cilium.io/v2, the same spec): the subset
//! meshpath enforces, as a serde type of its own, and its translation into dataplane [`PolicyRule`]s
//! with Cilium's scoping — a CiliumNetworkPolicy's selectors stay in its namespace, a cluster-wide
//! policy's reach every namespace.
//!
//! Fields outside the subset (fromCIDR, toFQDNs, L7 rules, deny rules, ...) are refused rather than
//! ignored: ignoring a peer field could turn a narrow rule into one that allows everybody.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector as K8sSelector, ObjectMeta};
use meshpath_dataplane::policy::{
    EgressRule, Entity, IngressRule, Peer, PolicyRule, PortRule, Protocol,
};
use serde::{Deserialize, Serialize};

use super::error::{Subject, TranslateError};
use super::ports;
use super::selector::{self, Scope};

/// A `cilium.io/v2` CiliumNetworkPolicy, or a CiliumClusterwideNetworkPolicy (the same fields; its
/// `metadata.namespace` is empty).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CiliumNetworkPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<CiliumRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specs: Option<Vec<CiliumRule>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CiliumRule {
    pub endpoint_selector: K8sSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<CiliumIngress>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<CiliumEgress>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Cilium's rule labels (`[{key, value, source}]`): metadata, not matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CiliumIngress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_endpoints: Option<Vec<K8sSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_entities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<CiliumPortRule>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CiliumEgress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_endpoints: Option<Vec<K8sSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_entities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<CiliumPortRule>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CiliumPortRule {
    #[serde(default)]
    pub ports: Vec<CiliumPort>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CiliumPort {
    /// Cilium's schema says string; hand-written YAML often says a number.
    pub port: PortNumber,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PortNumber {
    Number(i64),
    Text(String),
}

/// Every rule of the policy (`spec` and `specs`), within `scope`.
pub(crate) fn translate(
    policy: &CiliumNetworkPolicy,
    scope: Scope,
    subject: &Subject,
) -> Result<Vec<PolicyRule>, TranslateError> {
    let specs = policy.spec.iter().map(|r| ("spec".to_string(), r));
    let listed = policy.specs.iter().flatten().enumerate();
    let all = specs.chain(listed.map(|(i, r)| (format!("specs[{i}]"), r)));
    let rules = all
        .map(|(field, rule)| translate_rule(rule, scope, subject, &field))
        .collect::<Result<Vec<_>, _>>()?;
    if rules.is_empty() {
        return Err(subject.error("spec", "neither `spec` nor `specs` is given"));
    }
    Ok(rules)
}

fn translate_rule(
    rule: &CiliumRule,
    scope: Scope,
    subject: &Subject,
    field: &str,
) -> Result<PolicyRule, TranslateError> {
    let selected = selector::translate(
        &rule.endpoint_selector,
        subject,
        &format!("{field}.endpointSelector"),
    )?;
    let ingress = rule.ingress.as_ref().map(|rules| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let field = format!("{field}.ingress[{i}]");
                Ok(IngressRule {
                    from: peers(
                        &r.from_endpoints,
                        &r.from_entities,
                        scope,
                        subject,
                        &field,
                        "from",
                    )?,
                    to_ports: port_rules(&r.to_ports, subject, &field)?,
                })
            })
            .collect::<Result<Vec<_>, TranslateError>>()
    });
    let egress = rule.egress.as_ref().map(|rules| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let field = format!("{field}.egress[{i}]");
                Ok(EgressRule {
                    to: peers(
                        &r.to_endpoints,
                        &r.to_entities,
                        scope,
                        subject,
                        &field,
                        "to",
                    )?,
                    to_ports: port_rules(&r.to_ports, subject, &field)?,
                })
            })
            .collect::<Result<Vec<_>, TranslateError>>()
    });
    Ok(PolicyRule {
        endpoint_selector: scope.confine(selected),
        ingress: ingress.transpose()?,
        egress: egress.transpose()?,
    })
}

/// `fromEndpoints`/`fromEntities` (or `to...`); `dir` is `from` or `to`, for field names.
fn peers(
    endpoints: &Option<Vec<K8sSelector>>,
    entities: &Option<Vec<String>>,
    scope: Scope,
    subject: &Subject,
    field: &str,
    dir: &str,
) -> Result<Vec<Peer>, TranslateError> {
    let mut out = Vec::new();
    for (i, sel) in endpoints.iter().flatten().enumerate() {
        let sel = selector::translate(sel, subject, &format!("{field}.{dir}Endpoints[{i}]"))?;
        out.push(Peer::Endpoints(scope.peer(sel)));
    }
    for (i, name) in entities.iter().flatten().enumerate() {
        let entity = entity(name).ok_or_else(|| {
            subject.error(
                format!("{field}.{dir}Entities[{i}]"),
                format!(
                    "entity `{name}` is not supported (all, world, host, remote-node, cluster)"
                ),
            )
        })?;
        out.push(Peer::Entity(entity));
    }
    Ok(out)
}

fn entity(name: &str) -> Option<Entity> {
    Some(match name {
        "all" => Entity::All,
        "world" => Entity::World,
        "host" => Entity::Host,
        "remote-node" => Entity::RemoteNode,
        "cluster" => Entity::Cluster,
        _ => return None,
    })
}

fn port_rules(
    rules: &Option<Vec<CiliumPortRule>>,
    subject: &Subject,
    field: &str,
) -> Result<Vec<PortRule>, TranslateError> {
    let mut out = Vec::new();
    for (i, rule) in rules.iter().flatten().enumerate() {
        for (j, port) in rule.ports.iter().enumerate() {
            let field = format!("{field}.toPorts[{i}].ports[{j}]");
            let protocol =
                ports::protocol(port.protocol.as_deref(), Protocol::Any, subject, &field)?;
            let number = match &port.port {
                PortNumber::Number(n) => *n,
                PortNumber::Text(t) => t.parse().map_err(|_| {
                    subject.error(
                        format!("{field}.port"),
                        format!("named port `{t}` is not supported"),
                    )
                })?,
            };
            out.push(ports::port_rule(
                protocol,
                number,
                port.end_port,
                subject,
                &field,
            )?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::model::{LocalPolicy, NAMESPACE_LABEL};
    use super::super::object::LocalObject;
    use super::super::yaml::parse_objects;
    use super::*;
    use meshpath_dataplane::policy::Operator;

    /// The policy's rules, or why it is refused.
    fn rules(yaml: &str) -> Result<Vec<PolicyRule>, String> {
        let policy = refused_or_rules(yaml);
        match policy.refused {
            None => Ok(policy.rules),
            Some(why) => Err(why),
        }
    }

    fn refused_or_rules(yaml: &str) -> LocalPolicy {
        let object = parse_objects(yaml).unwrap().remove(0).object;
        match object.translate().unwrap().1 {
            Some(LocalObject::Policy(p)) => p,
            other => panic!("policy expected, got {other:?}"),
        }
    }

    const INGRESS: &str = r#"{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
      "metadata": {"name": "l4", "namespace": "prod", "resourceVersion": "7"},
      "specs": [{
        "endpointSelector": {"matchLabels": {"k8s:app": "api"}},
        "ingress": [
          {"fromEndpoints": [{"matchLabels": {"app": "web"}},
                             {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "ops"},
                              "matchExpressions": [{"key": "any:role", "operator": "NotIn", "values": ["batch"]}]}],
           "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}, {"port": "9000", "endPort": 9010}]}]},
          {"fromEntities": ["host", "remote-node", "cluster", "world", "all"]}]
      }, {
        "endpointSelector": {},
        "egress": []
      }]}"#;

    #[test]
    fn specs_with_endpoints_entities_and_ports() {
        let rules = rules(INGRESS).unwrap();
        assert_eq!(rules.len(), 2);
        let api = &rules[0];
        assert_eq!(
            api.endpoint_selector.match_labels.get("app").unwrap(),
            "api"
        );
        assert_eq!(
            api.endpoint_selector
                .match_labels
                .get(NAMESPACE_LABEL)
                .unwrap(),
            "prod"
        );
        assert!(api.egress.is_none());
        let ingress = api.ingress.as_ref().unwrap();
        let Peer::Endpoints(web) = &ingress[0].from[0] else {
            panic!()
        };
        assert_eq!(
            web.match_labels.get(NAMESPACE_LABEL).unwrap(),
            "prod",
            "no namespace: the policy's"
        );
        let Peer::Endpoints(ops) = &ingress[0].from[1] else {
            panic!()
        };
        assert_eq!(
            ops.match_labels.get(NAMESPACE_LABEL).unwrap(),
            "ops",
            "an explicit namespace stays"
        );
        assert_eq!(ops.match_expressions[0].key, "role");
        assert_eq!(
            ops.match_expressions[0].operator,
            Operator::NotIn(vec!["batch".into()])
        );
        assert_eq!(
            ingress[0].to_ports,
            [
                PortRule::new(Protocol::Tcp, 8080),
                PortRule {
                    protocol: Protocol::Any,
                    port: 9000,
                    end_port: Some(9010)
                }
            ]
        );
        let entities: Vec<_> = ingress[1]
            .from
            .iter()
            .map(|p| match p {
                Peer::Entity(e) => *e,
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            entities,
            [
                Entity::Host,
                Entity::RemoteNode,
                Entity::Cluster,
                Entity::World,
                Entity::All
            ]
        );
        assert_eq!(
            rules[1].egress,
            Some(vec![]),
            "an empty egress list is enforced: deny all"
        );
        assert_eq!(
            rules[1].endpoint_selector.match_labels.len(),
            1,
            "empty selector: the namespace only"
        );
    }

    /// What a refused policy covers, denied: its selector (in its namespace) and its directions.
    fn denied(policy: &LocalPolicy) -> Vec<(Option<&str>, bool, bool)> {
        policy
            .rules
            .iter()
            .map(|r| {
                let grants = |d: &Option<Vec<_>>| d.as_ref().map(Vec::len);
                assert!(
                    grants(&r.ingress).unwrap_or(0) == 0
                        && r.egress.as_ref().is_none_or(|e| e.is_empty())
                );
                (
                    r.endpoint_selector
                        .match_labels
                        .get("app")
                        .map(String::as_str),
                    r.ingress.is_some(),
                    r.egress.is_some(),
                )
            })
            .collect()
    }

    #[test]
    fn unsupported_fields_refuse_the_policy_closed_naming_the_field() {
        let cidr = r#"{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "c", "namespace": "prod"},
          "spec": {"endpointSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"fromCIDR": ["10.0.0.0/8"], "toPorts": [{"ports": [{"port": "80"}]}]}]}}"#;
        let policy = refused_or_rules(cidr);
        let why = policy.refused.clone().unwrap();
        assert!(why.starts_with("CiliumNetworkPolicy prod/c: "), "{why}");
        assert!(why.contains("fromCIDR"), "{why}");
        assert_eq!(denied(&policy), [(Some("db"), true, false)]);
        assert_eq!(
            policy.rules[0]
                .endpoint_selector
                .match_labels
                .get(NAMESPACE_LABEL)
                .map(String::as_str),
            Some("prod")
        );
        let l7 = r#"{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "c"},
          "spec": {"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": "53"}], "rules": {"dns": [{"matchPattern": "*"}]}}]}]}}"#;
        let policy = refused_or_rules(l7);
        assert!(policy.refused.as_deref().unwrap().contains("rules"));
        assert_eq!(denied(&policy), [(None, false, true)]);
        let deny = r#"{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "d"},
          "specs": [{"endpointSelector": {"matchLabels": {"app": "a"}}, "ingressDeny": [{"fromEntities": ["world"]}]},
                    {"endpointSelector": {"matchLabels": {"app": "b"}}, "egress": []}]}"#;
        assert_eq!(
            denied(&refused_or_rules(deny)),
            [(Some("a"), true, false), (Some("b"), false, true)]
        );
        // A selector that cannot be read either: the whole namespace.
        let bad_selector = r#"{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "e"},
          "spec": {"endpointSelector": {"matchLabels": "app"}, "ingress": [{"fromCIDR": ["0.0.0.0/0"]}]}}"#;
        let policy = refused_or_rules(bad_selector);
        assert_eq!(
            policy.rules[0].endpoint_selector.match_labels.len(),
            1,
            "namespace only"
        );
    }

    #[test]
    fn untranslatable_values_refuse_the_policy_naming_it_and_the_field() {
        let with = |ingress: &str| {
            format!(
                r#"{{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {{"name": "bad", "namespace": "prod"}}, "spec": {{"endpointSelector": {{}}, "ingress": [{ingress}]}}}}"#
            )
        };
        let why = rules(&with(r#"{"fromEntities": ["kube-apiserver"]}"#)).unwrap_err();
        assert!(
            why.starts_with("CiliumNetworkPolicy prod/bad: `spec.ingress[0].fromEntities[0]`"),
            "{why}"
        );
        let why = rules(&with(r#"{"toPorts": [{"ports": [{"port": "http"}]}]}"#)).unwrap_err();
        assert!(
            why.contains("`spec.ingress[0].toPorts[0].ports[0].port`"),
            "{why}"
        );
        let why = rules(&with(
            r#"{"toPorts": [{"ports": [{"port": "80", "protocol": "SCTP"}]}]}"#,
        ))
        .unwrap_err();
        assert!(
            why.contains("`spec.ingress[0].toPorts[0].ports[0].protocol`"),
            "{why}"
        );
        let why = rules(&with(
            r#"{"fromEndpoints": [{"matchLabels": {"reserved:host": ""}}]}"#,
        ))
        .unwrap_err();
        assert!(why.contains("`spec.ingress[0].fromEndpoints[0]`"), "{why}");
        let policy = refused_or_rules(&with(r#"{"fromEntities": ["kube-apiserver"]}"#));
        assert_eq!(denied(&policy), [(None, true, false)]);
        let none = r#"{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "n"}}"#;
        assert!(rules(none).unwrap_err().contains("`spec`"));
    }
}
