//! CiliumNetworkPolicy (cilium.io/v2): the subset meshpath enforces, as a serde type of its own, and
//! its translation into dataplane [`PolicyRule`]s with Cilium's namespace scoping.
//!
//! Fields outside the subset (fromCIDR, toFQDNs, L7 rules, deny rules, ...) are refused rather than
//! ignored: ignoring a peer field could turn a narrow rule into one that allows everybody.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector as K8sSelector, ObjectMeta};
use meshpath_dataplane::policy::{
    EgressRule, Entity, IngressRule, Peer, PolicyRule, PortRule, Protocol,
};
use serde::{Deserialize, Serialize};

use super::error::{Subject, TranslateError};
use super::{ports, selector};

/// A `cilium.io/v2` CiliumNetworkPolicy.
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

impl kube::Resource for CiliumNetworkPolicy {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "CiliumNetworkPolicy".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "cilium.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v2".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "ciliumnetworkpolicies".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Every rule of the policy (`spec` and `specs`), scoped to `namespace`.
pub(crate) fn translate(
    policy: &CiliumNetworkPolicy,
    namespace: &str,
    subject: &Subject,
) -> Result<Vec<PolicyRule>, TranslateError> {
    let specs = policy.spec.iter().map(|r| ("spec".to_string(), r));
    let listed = policy.specs.iter().flatten().enumerate();
    let all = specs.chain(listed.map(|(i, r)| (format!("specs[{i}]"), r)));
    let rules = all
        .map(|(field, rule)| translate_rule(rule, namespace, subject, &field))
        .collect::<Result<Vec<_>, _>>()?;
    if rules.is_empty() {
        return Err(subject.error("spec", "neither `spec` nor `specs` is given"));
    }
    Ok(rules)
}

fn translate_rule(
    rule: &CiliumRule,
    ns: &str,
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
                        ns,
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
                    to: peers(&r.to_endpoints, &r.to_entities, ns, subject, &field, "to")?,
                    to_ports: port_rules(&r.to_ports, subject, &field)?,
                })
            })
            .collect::<Result<Vec<_>, TranslateError>>()
    });
    Ok(PolicyRule {
        endpoint_selector: selector::confine_to_namespace(selected, ns),
        ingress: ingress.transpose()?,
        egress: egress.transpose()?,
    })
}

/// `fromEndpoints`/`fromEntities` (or `to...`); `dir` is `from` or `to`, for field names.
fn peers(
    endpoints: &Option<Vec<K8sSelector>>,
    entities: &Option<Vec<String>>,
    ns: &str,
    subject: &Subject,
    field: &str,
    dir: &str,
) -> Result<Vec<Peer>, TranslateError> {
    let mut out = Vec::new();
    for (i, sel) in endpoints.iter().flatten().enumerate() {
        let sel = selector::translate(sel, subject, &format!("{field}.{dir}Endpoints[{i}]"))?;
        out.push(Peer::Endpoints(selector::default_namespace(sel, ns)));
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
    use super::super::model::NAMESPACE_LABEL;
    use super::super::object::{KubeObject, LocalObject};
    use super::super::yaml::parse_objects;
    use super::*;
    use meshpath_dataplane::policy::Operator;

    fn rules(yaml: &str) -> Result<Vec<PolicyRule>, TranslateError> {
        let object = parse_objects(yaml).unwrap().remove(0).object;
        assert!(matches!(object, KubeObject::CiliumNetworkPolicy(_)));
        match object.translate()?.1 {
            Some(LocalObject::Policy(p)) => Ok(p.rules),
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

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let cidr = r#"{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "c"},
          "spec": {"endpointSelector": {}, "ingress": [{"fromCIDR": ["10.0.0.0/8"], "toPorts": [{"ports": [{"port": "80"}]}]}]}}"#;
        let err = parse_objects(cidr).unwrap_err();
        assert!(err.problem.contains("fromCIDR"), "{err}");
        let l7 = r#"{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "c"},
          "spec": {"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": "53"}], "rules": {"dns": [{"matchPattern": "*"}]}}]}]}}"#;
        assert!(parse_objects(l7).unwrap_err().problem.contains("rules"));
    }

    #[test]
    fn untranslatable_values_name_the_policy_and_field() {
        let with = |ingress: &str| {
            format!(
                r#"{{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {{"name": "bad", "namespace": "prod"}}, "spec": {{"endpointSelector": {{}}, "ingress": [{ingress}]}}}}"#
            )
        };
        let err = rules(&with(r#"{"fromEntities": ["kube-apiserver"]}"#)).unwrap_err();
        assert_eq!(err.object, "CiliumNetworkPolicy prod/bad");
        assert_eq!(err.field, "spec.ingress[0].fromEntities[0]");
        let err = rules(&with(r#"{"toPorts": [{"ports": [{"port": "http"}]}]}"#)).unwrap_err();
        assert_eq!(err.field, "spec.ingress[0].toPorts[0].ports[0].port");
        let err = rules(&with(
            r#"{"toPorts": [{"ports": [{"port": "80", "protocol": "SCTP"}]}]}"#,
        ))
        .unwrap_err();
        assert_eq!(err.field, "spec.ingress[0].toPorts[0].ports[0].protocol");
        let err = rules(&with(
            r#"{"fromEndpoints": [{"matchLabels": {"reserved:host": ""}}]}"#,
        ))
        .unwrap_err();
        assert_eq!(err.field, "spec.ingress[0].fromEndpoints[0]");
        let none = r#"{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "n"}}"#;
        assert_eq!(rules(none).unwrap_err().field, "spec");
    }
}
