//! The identity label string: `source:key=value;` per label, sorted by key, as Cilium stores it under
//! `cilium/state/identities/v1/id/<id>`.

use std::collections::BTreeMap;
use std::fmt;

/// The label that names the cluster an endpoint belongs to.
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
/// The label that names an endpoint's namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// One label's source and value; its key is the map key in [`LabelSet`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelValue {
    pub source: String,
    pub value: String,
}

/// A security identity's labels, one per key (Cilium keys its label map by key alone).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSet(BTreeMap<String, LabelValue>);

/// A label string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("label `{0}` has no `source:` prefix")]
    NoSource(String),
    #[error("label `{0}` has an empty key")]
    EmptyKey(String),
    #[error("label key `{0}` appears twice")]
    Duplicate(String),
    #[error("label `{0}` contains `;`, `=` or `:` where it cannot")]
    Reserved(String),
}

impl LabelSet {
    pub fn new() -> Self {
        LabelSet::default()
    }

    /// Adds `source:key=value`; the parts must not contain the separators of the label string.
    pub fn insert(&mut self, source: &str, key: &str, value: &str) -> Result<(), LabelError> {
        let whole = format!("{source}:{key}={value}");
        if key.is_empty() {
            return Err(LabelError::EmptyKey(whole));
        }
        if source.contains([':', ';', '=']) || key.contains([';', '=']) || value.contains(';') {
            return Err(LabelError::Reserved(whole));
        }
        let label = LabelValue {
            source: source.to_owned(),
            value: value.to_owned(),
        };
        if self.0.insert(key.to_owned(), label).is_some() {
            return Err(LabelError::Duplicate(key.to_owned()));
        }
        Ok(())
    }

    /// Parses `k8s:a=b;k8s:c=d;` (order and a missing final `;` are tolerated).
    pub fn parse(s: &str) -> Result<Self, LabelError> {
        let mut set = LabelSet::new();
        for label in s.split(';').filter(|l| !l.is_empty()) {
            let (source, rest) = label
                .split_once(':')
                .ok_or_else(|| LabelError::NoSource(label.to_owned()))?;
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            set.insert(source, key, value)?;
        }
        Ok(set)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|l| l.value.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &LabelValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, label) in &self.0 {
            write!(f, "{}:{}={};", label.source, key, label.value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DOC_EXAMPLE: &str =
        "k8s:app=baz;k8s:io.cilium.k8s.policy.cluster=cluster3;k8s:io.kubernetes.pod.namespace=bar;";

    #[test]
    fn parses_and_renders_the_cilium_example() {
        let set = LabelSet::parse(DOC_EXAMPLE).unwrap();
        assert_eq!(set.get(CLUSTER_LABEL), Some("cluster3"));
        assert_eq!(set.get(NAMESPACE_LABEL), Some("bar"));
        assert_eq!(set.to_string(), DOC_EXAMPLE);
    }

    #[test]
    fn renders_sorted_by_key_whatever_the_input_order() {
        let set = LabelSet::parse("k8s:zeta=1;k8s:alpha=2").unwrap();
        assert_eq!(set.to_string(), "k8s:alpha=2;k8s:zeta=1;");
    }

    #[test]
    fn refuses_bad_labels() {
        assert_eq!(
            LabelSet::parse("app=baz;"),
            Err(LabelError::NoSource("app=baz".into()))
        );
        assert!(matches!(
            LabelSet::parse("k8s:a=1;k8s:a=2;"),
            Err(LabelError::Duplicate(_))
        ));
        assert!(matches!(
            LabelSet::parse("k8s:=1;"),
            Err(LabelError::EmptyKey(_))
        ));
    }

    proptest! {
        #[test]
        fn render_then_parse_round_trips(
            labels in proptest::collection::btree_map("[a-z][a-z0-9.]{0,12}", ("[a-z0-9]{1,5}", "[a-z0-9.-]{0,8}"), 0..8)
        ) {
            let mut set = LabelSet::new();
            for (key, (source, value)) in &labels {
                set.insert(source, key, value).unwrap();
            }
            let parsed = LabelSet::parse(&set.to_string()).unwrap();
            prop_assert_eq!(parsed, set);
        }

        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = LabelSet::parse(&s);
        }
    }
}
