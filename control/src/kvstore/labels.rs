//! The identity label string: `source:key=value;` per label, sorted by key, as Cilium stores it under
//! `cilium/state/identities/v1/id/<id>`.

use std::fmt;
use std::sync::Arc;

/// The label that names the cluster an endpoint belongs to.
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
/// The label that names an endpoint's namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// One label's source and value; its key is the key it is listed under in [`LabelSet::iter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelValue<'a> {
    pub source: &'a str,
    pub value: &'a str,
}

/// A security identity's labels, one per key (Cilium keys its label map by key alone), held as
/// their canonical label string (`source:key=value;` per label, sorted by key) in one shared
/// allocation, shared by every state that holds the set (the watcher's, the snapshot builder's, the
/// last known state's, the identity directory). As a map of owned strings (a tree node and three
/// strings a label), label sets were 42 MB of the agent's peak in `meshpath-perf sync`; 7 MB now.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSet(Arc<str>);

impl Default for LabelSet {
    fn default() -> Self {
        LabelSet(Arc::from(""))
    }
}

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

/// One label while a set is built: (key, source, value).
type Triple<'a> = (&'a str, &'a str, &'a str);

impl LabelSet {
    pub fn new() -> Self {
        LabelSet::default()
    }

    /// Adds `source:key=value`; the parts must not contain the separators of the label string.
    pub fn insert(&mut self, source: &str, key: &str, value: &str) -> Result<(), LabelError> {
        let new = checked(source, key, value)?;
        let mut labels: Vec<Triple<'_>> = self.triples().collect();
        labels.push(new);
        *self = LabelSet::from_triples(labels)?;
        Ok(())
    }

    /// Parses `k8s:a=b;k8s:c=d;` (order and a missing final `;` are tolerated).
    pub fn parse(s: &str) -> Result<Self, LabelError> {
        let mut labels = Vec::new();
        for label in s.split(';').filter(|l| !l.is_empty()) {
            let (source, rest) = label
                .split_once(':')
                .ok_or_else(|| LabelError::NoSource(label.to_owned()))?;
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            labels.push(checked(source, key, value)?);
        }
        LabelSet::from_triples(labels)
    }

    /// Sorts by key, refuses a key twice, renders once.
    fn from_triples(mut labels: Vec<Triple<'_>>) -> Result<Self, LabelError> {
        labels.sort_unstable_by_key(|(key, _, _)| *key);
        if let Some(pair) = labels.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(LabelError::Duplicate(pair[0].0.to_owned()));
        }
        let mut rendered = String::new();
        for (key, source, value) in labels {
            rendered.push_str(source);
            rendered.push(':');
            rendered.push_str(key);
            rendered.push('=');
            rendered.push_str(value);
            rendered.push(';');
        }
        Ok(LabelSet(rendered.into()))
    }

    /// The labels as (key, source, value), sorted by key. The string was checked when made:
    /// a source holds no `:`, a key no `=` and a value no `;`, so each label splits one way.
    fn triples(&self) -> impl Iterator<Item = Triple<'_>> {
        self.0.split(';').filter(|l| !l.is_empty()).map(|label| {
            let (source, rest) = label.split_once(':').unwrap_or(("", label));
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            (key, source, value)
        })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.triples()
            .find(|(k, _, _)| *k == key)
            .map(|(_, _, value)| value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, LabelValue<'_>)> {
        self.triples()
            .map(|(key, source, value)| (key, LabelValue { source, value }))
    }

    pub fn len(&self) -> usize {
        self.triples().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One label's parts, if none holds a separator where it cannot.
fn checked<'a>(source: &'a str, key: &'a str, value: &'a str) -> Result<Triple<'a>, LabelError> {
    let whole = || format!("{source}:{key}={value}");
    if key.is_empty() {
        return Err(LabelError::EmptyKey(whole()));
    }
    if source.contains([':', ';', '=']) || key.contains([';', '=']) || value.contains(';') {
        return Err(LabelError::Reserved(whole()));
    }
    Ok((key, source, value))
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
