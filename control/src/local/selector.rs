//! Label selectors of Kubernetes and Cilium objects → the dataplane's [`LabelSelector`], with Cilium's
//! label source prefixes (`k8s:`, `any:`) stripped and Kubernetes' namespace scoping made explicit.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sSelector;
use meshpath_dataplane::policy::{LabelSelector, Operator};

use super::error::{Subject, TranslateError};
use super::model::NAMESPACE_LABEL;

/// Translates a selector. `field` names it in errors.
pub(crate) fn translate(
    selector: &K8sSelector,
    subject: &Subject,
    field: &str,
) -> Result<LabelSelector, TranslateError> {
    let mut out = LabelSelector::all();
    for (key, value) in selector.match_labels.iter().flatten() {
        let key = strip_source(key, subject, field)?;
        out.match_labels.insert(key.to_string(), value.clone());
    }
    for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
        let field = format!("{field}.matchExpressions[{i}]");
        let key = strip_source(&expr.key, subject, &field)?;
        let values = expr.values.clone().unwrap_or_default();
        let operator = match expr.operator.as_str() {
            "In" => Operator::In(values),
            "NotIn" => Operator::NotIn(values),
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => return Err(subject.error(field, format!("unknown operator `{other}`"))),
        };
        out = out.with_expression(key, operator);
    }
    Ok(out)
}

/// Cilium writes label keys as `source:key`; Kubernetes label keys never contain `:`, so anything
/// before one is a source. Only the sources that mean "a Kubernetes label" can be matched here.
fn strip_source<'k>(
    key: &'k str,
    subject: &Subject,
    field: &str,
) -> Result<&'k str, TranslateError> {
    match key.split_once(':') {
        None => Ok(key),
        Some(("k8s" | "any", rest)) => Ok(rest),
        Some((source, _)) => Err(subject.error(
            field,
            format!("label `{key}`: label source `{source}` is not supported (only k8s: and any:)"),
        )),
    }
}

/// Does the selector say anything about the namespace?
pub(crate) fn names_namespace(selector: &LabelSelector) -> bool {
    selector.match_labels.contains_key(NAMESPACE_LABEL)
        || selector
            .match_expressions
            .iter()
            .any(|e| e.key == NAMESPACE_LABEL)
}

/// Restricts the selector to `namespace`, whatever it already says about namespaces: a namespaced
/// policy selects only its own namespace's endpoints. A contradicting namespace label then selects nothing.
pub(crate) fn confine_to_namespace(mut selector: LabelSelector, namespace: &str) -> LabelSelector {
    match selector.match_labels.get(NAMESPACE_LABEL) {
        None => selector.with_label(NAMESPACE_LABEL, namespace),
        Some(ns) if ns == namespace => selector,
        Some(_) => {
            selector
                .match_expressions
                .push(namespace_expression(namespace));
            selector
        }
    }
}

/// A peer selector without a namespace means the policy's namespace.
pub(crate) fn default_namespace(selector: LabelSelector, namespace: &str) -> LabelSelector {
    if names_namespace(&selector) {
        selector
    } else {
        selector.with_label(NAMESPACE_LABEL, namespace)
    }
}

/// Where a policy's selectors reach: its own namespace (NetworkPolicy, CiliumNetworkPolicy), or every
/// namespace (CiliumClusterwideNetworkPolicy: Cilium adds no namespace to its selectors or its peers').
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope<'a> {
    Namespace(&'a str),
    Cluster,
}

impl Scope<'_> {
    /// The endpoints a policy of this scope may select with `selector`.
    pub fn confine(self, selector: LabelSelector) -> LabelSelector {
        match self {
            Scope::Namespace(ns) => confine_to_namespace(selector, ns),
            Scope::Cluster => selector,
        }
    }

    /// The peers `selector` means in a policy of this scope.
    pub fn peer(self, selector: LabelSelector) -> LabelSelector {
        match self {
            Scope::Namespace(ns) => default_namespace(selector, ns),
            Scope::Cluster => selector,
        }
    }
}

fn namespace_expression(namespace: &str) -> meshpath_dataplane::policy::LabelExpression {
    meshpath_dataplane::policy::LabelExpression {
        key: NAMESPACE_LABEL.to_string(),
        operator: Operator::In(vec![namespace.to_string()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use meshpath_dataplane::policy::Labels;
    use proptest::prelude::*;

    const SUBJECT: Subject = Subject {
        kind: "CiliumNetworkPolicy",
        namespace: Some("default"),
        name: "p",
    };

    fn k8s(labels: &[(&str, &str)], exprs: &[(&str, &str, &[&str])]) -> K8sSelector {
        K8sSelector {
            match_labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            match_expressions: Some(
                exprs
                    .iter()
                    .map(|(k, op, vals)| LabelSelectorRequirement {
                        key: k.to_string(),
                        operator: op.to_string(),
                        values: Some(vals.iter().map(|v| v.to_string()).collect()),
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn strips_k8s_and_any_prefixes() {
        let sel = translate(
            &k8s(
                &[("k8s:app", "web"), ("any:tier", "fe"), ("plain", "x")],
                &[("k8s:env", "In", &["prod"])],
            ),
            &SUBJECT,
            "spec.endpointSelector",
        )
        .unwrap();
        let keys: Vec<_> = sel.match_labels.keys().map(String::as_str).collect();
        assert_eq!(keys, ["app", "plain", "tier"]);
        assert_eq!(sel.match_expressions[0].key, "env");
    }

    #[test]
    fn other_sources_and_operators_are_errors_naming_the_field() {
        let err = translate(&k8s(&[("reserved:host", "")], &[]), &SUBJECT, "spec.x").unwrap_err();
        assert_eq!(err.object, "CiliumNetworkPolicy default/p");
        assert_eq!(err.field, "spec.x");
        assert!(err.problem.contains("reserved"), "{err}");
        let err = translate(&k8s(&[], &[("a", "Gt", &["1"])]), &SUBJECT, "spec.x").unwrap_err();
        assert_eq!(err.field, "spec.x.matchExpressions[0]");
    }

    #[test]
    fn confining_overrides_nothing_and_contradiction_selects_nothing() {
        let other = LabelSelector::all().with_label(NAMESPACE_LABEL, "other");
        let confined = confine_to_namespace(other, "default");
        let in_default = Labels::new().with(NAMESPACE_LABEL, "default");
        let in_other = Labels::new().with(NAMESPACE_LABEL, "other");
        assert!(!confined.matches(&in_default));
        assert!(!confined.matches(&in_other));
        let confined = confine_to_namespace(LabelSelector::all(), "default");
        assert!(confined.matches(&in_default));
        assert!(!confined.matches(&in_other));
    }

    #[test]
    fn default_namespace_respects_an_expression_on_the_namespace() {
        let any_ns = LabelSelector::all().with_expression(NAMESPACE_LABEL, Operator::Exists);
        let sel = default_namespace(any_ns, "default");
        assert!(sel.matches(&Labels::new().with(NAMESPACE_LABEL, "kube-system")));
    }

    proptest! {
        /// A translated selector matches exactly what the Kubernetes semantics say, on labels
        /// drawn from a small alphabet so that matches and misses both happen.
        #[test]
        fn translated_selector_matches_like_kubernetes(
            want in prop::collection::btree_map("[ab]", "[xy]", 0..3),
            have in prop::collection::btree_map("[abc]", "[xy]", 0..3),
            prefix in prop::sample::select(vec!["", "k8s:", "any:"]),
        ) {
            let sel = K8sSelector {
                match_labels: Some(want.iter().map(|(k, v)| (format!("{prefix}{k}"), v.clone())).collect()),
                match_expressions: None,
            };
            let sel = translate(&sel, &SUBJECT, "f").unwrap();
            let labels: Labels = have.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let expected = want.iter().all(|(k, v)| have.get(k) == Some(v));
            prop_assert_eq!(sel.matches(&labels), expected);
        }

        #[test]
        fn confined_selector_never_matches_another_namespace(
            ns in "[a-c]", other in "[a-c]", given in proptest::option::of("[a-c]"),
        ) {
            let mut sel = LabelSelector::all();
            if let Some(g) = &given { sel = sel.with_label(NAMESPACE_LABEL, g); }
            let sel = confine_to_namespace(sel, &ns);
            let labels = Labels::new().with(NAMESPACE_LABEL, &other);
            if other != ns { prop_assert!(!sel.matches(&labels)); }
            if other == ns && given.as_deref().is_none_or(|g| g == ns) { prop_assert!(sel.matches(&labels)); }
        }
    }
}
