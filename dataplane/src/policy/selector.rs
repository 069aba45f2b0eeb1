//! Labels and label selectors with Kubernetes semantics: what policy rules select endpoints and peers by.
//!
//! Keys are matched exactly as given. Cilium's source prefix (`k8s:app`) is part of the key if the
//! control plane keeps it; it is expected to store keys without it, as Kubernetes selectors write them.

use std::collections::BTreeMap;

/// The label that names the cluster an identity belongs to.
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";

/// An identity's labels: `key=value` pairs, one value per key, sorted by key. Held in two
/// allocations whatever their number (the keys and values end to end, and where each ends): the
/// control plane keeps one per identity it knows, where a map took a tree node (about 540 bytes)
/// and two strings a label.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Labels {
    /// key, value, key, value, … end to end.
    text: Box<str>,
    /// The end of each key and each value in `text`.
    ends: Box<[usize]>,
}

impl Labels {
    pub fn new() -> Self {
        Labels::default()
    }

    /// The labels plus `key=value`.
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.insert(key, value);
        self
    }

    /// Sets `key` to `value`; the value it had, if any.
    pub fn insert(&mut self, key: &str, value: &str) -> Option<String> {
        let mut pairs: BTreeMap<&str, &str> = self.iter().collect();
        let old = pairs.insert(key, value).map(str::to_owned);
        *self = Labels::from_sorted(pairs);
        old
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let part = |i: usize| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            &self.text[start..self.ends[i]]
        };
        (0..self.ends.len() / 2).map(move |pair| (part(2 * pair), part(2 * pair + 1)))
    }

    fn from_sorted<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Labels {
        let mut text = String::new();
        let mut ends = Vec::new();
        for (key, value) in pairs {
            for part in [key, value] {
                text.push_str(part);
                ends.push(text.len());
            }
        }
        Labels {
            text: text.into(),
            ends: ends.into(),
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Labels {
    /// A key given twice keeps its last value.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let pairs: BTreeMap<String, String> = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Labels::from_sorted(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// A `matchExpressions` operator with its values.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Operator {
    /// The key is present with one of these values.
    In(Vec<String>),
    /// The key is absent, or present with none of these values.
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LabelExpression {
    pub key: String,
    pub operator: Operator,
}

impl LabelExpression {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match &self.operator {
            Operator::In(values) => value.is_some_and(|v| values.iter().any(|w| w == v)),
            Operator::NotIn(values) => value.is_none_or(|v| values.iter().all(|w| w != v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A Kubernetes label selector: every `match_labels` pair and every expression must hold.
/// The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<LabelExpression>,
}

impl LabelSelector {
    /// The empty selector: matches every labels set.
    pub fn all() -> Self {
        LabelSelector::default()
    }

    /// The selector plus the requirement `key=value`.
    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.match_labels.insert(key.to_string(), value.to_string());
        self
    }

    /// The selector plus an expression on `key`.
    pub fn with_expression(mut self, key: &str, operator: Operator) -> Self {
        self.match_expressions.push(LabelExpression {
            key: key.to_string(),
            operator,
        });
        self
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v.as_str()))
            && self.match_expressions.iter().all(|e| e.matches(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn frontend() -> Labels {
        Labels::new().with("app", "web").with("tier", "frontend")
    }

    proptest::proptest! {
        /// Made at once or a label at a time, the labels answer as a map of the same pairs would.
        #[test]
        fn labels_behave_as_a_sorted_map(
            pairs in proptest::collection::vec(("[a-z./]{0,6}", ".{0,6}"), 0..12)
        ) {
            let map: BTreeMap<String, String> = pairs.iter().cloned().collect();
            let at_once: Labels = pairs.iter().cloned().collect();
            let mut one_by_one = Labels::new();
            for (key, value) in &pairs {
                let before = one_by_one.get(key).map(str::to_owned);
                proptest::prop_assert_eq!(one_by_one.insert(key, value), before);
            }
            let want: Vec<(&str, &str)> = map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            proptest::prop_assert_eq!(at_once.iter().collect::<Vec<_>>(), want.clone());
            proptest::prop_assert_eq!(&one_by_one, &at_once);
            for (key, value) in &map {
                proptest::prop_assert_eq!(at_once.get(key), Some(value.as_str()));
            }
            proptest::prop_assert_eq!(at_once.get("absent-key!"), None);
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(LabelSelector::all().matches(&frontend()));
        assert!(LabelSelector::all().matches(&Labels::new()));
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let sel = LabelSelector::all().with_label("app", "web");
        assert!(sel.matches(&frontend()));
        assert!(!sel
            .clone()
            .with_label("tier", "backend")
            .matches(&frontend()));
        assert!(!sel.matches(&Labels::new().with("app", "db")));
        assert!(!sel.matches(&Labels::new()));
    }

    #[test]
    fn every_operator() {
        let expr = |op| LabelSelector::all().with_expression("tier", op);
        let none = Labels::new().with("app", "web");
        let fe = frontend();

        assert!(expr(Operator::In(values(&["frontend", "x"]))).matches(&fe));
        assert!(!expr(Operator::In(values(&["backend"]))).matches(&fe));
        assert!(!expr(Operator::In(values(&["frontend"]))).matches(&none));
        assert!(!expr(Operator::In(vec![])).matches(&fe));

        assert!(!expr(Operator::NotIn(values(&["frontend"]))).matches(&fe));
        assert!(expr(Operator::NotIn(values(&["backend"]))).matches(&fe));
        assert!(
            expr(Operator::NotIn(values(&["frontend"]))).matches(&none),
            "absent key is not in"
        );

        assert!(expr(Operator::Exists).matches(&fe));
        assert!(!expr(Operator::Exists).matches(&none));
        assert!(!expr(Operator::DoesNotExist).matches(&fe));
        assert!(expr(Operator::DoesNotExist).matches(&none));
    }

    #[test]
    fn labels_and_expressions_combine_with_and() {
        let sel = LabelSelector::all()
            .with_label("app", "web")
            .with_expression("tier", Operator::NotIn(values(&["backend"])));
        assert!(sel.matches(&frontend()));
        assert!(!sel.matches(&Labels::new().with("app", "web").with("tier", "backend")));
        assert!(!sel.matches(&Labels::new().with("tier", "frontend")));
    }
}
