//! Security identities and their labels: `meshpath identity list`, in the shape of `cilium-dbg
//! identity list` (each label with its source: `k8s:app=x-wing`, `reserved:world`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::text::Table;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRow {
    pub id: u32,
    /// The cluster whose agents allocated it (or announced it, for a remote one); none for the
    /// reserved identities every node knows.
    pub cluster: Option<String>,
    /// Its labels, each with its source, sorted by key.
    pub labels: Vec<Label>,
}

/// A label with its source, as Cilium writes it: `k8s:app=x-wing`, or `reserved:world` (no value).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    /// `k8s`, `reserved`, `cidr`, …
    pub source: String,
    pub key: String,
    pub value: String,
}

impl Label {
    pub fn new(source: &str, key: &str, value: &str) -> Label {
        Label {
            source: source.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value.is_empty() {
            true => write!(f, "{}:{}", self.source, self.key),
            false => write!(f, "{}:{}={}", self.source, self.key, self.value),
        }
    }
}

/// Text that is not `source:key[=value]`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is no label (source:key[=value])")]
pub struct BadLabel(pub String);

impl FromStr for Label {
    type Err = BadLabel;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (source, rest) = text.split_once(':').ok_or_else(|| BadLabel(text.into()))?;
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        if source.is_empty() || key.is_empty() {
            return Err(BadLabel(text.into()));
        }
        Ok(Label::new(source, key, value))
    }
}

serde_as_text!(Label);

named_enum! {
    /// Reserved identities the dataplane gives peers, by Cilium's names for them.
    pub enum ReservedIdentity ("reserved identity") {
        Host => "host",
        World => "world",
        RemoteNode => "remote-node",
        /// A peer whose identity is not known.
        Unknown => "unknown",
    }
}

/// The labels of an identity in one cell: `k8s:app=x-wing, k8s:io.kubernetes.pod.namespace=default`.
pub fn joined(labels: &[Label]) -> String {
    let text: Vec<String> = labels.iter().map(Label::to_string).collect();
    text.join(", ")
}

/// `meshpath identity list` as a table: `ID  CLUSTER  LABELS`, one label per line as cilium-dbg
/// prints them.
pub fn render(rows: &[IdentityRow]) -> String {
    let mut table = Table::new(["ID", "CLUSTER", "LABELS"]);
    for row in rows {
        let cluster = row.cluster.as_deref().unwrap_or("-");
        let mut labels = row.labels.iter();
        let first = labels.next().map_or("-".to_owned(), Label::to_string);
        table.row([row.id.to_string(), cluster.to_owned(), first]);
        for label in labels {
            table.row([String::new(), String::new(), label.to_string()]);
        }
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn row(id: u32, labels: &[&str]) -> IdentityRow {
        IdentityRow {
            id,
            cluster: (id > 255).then(|| "cluster1".to_owned()),
            labels: labels.iter().map(|l| l.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn table_lists_every_label_with_its_source() {
        let rows = [
            row(
                65537,
                &["k8s:app=x-wing", "k8s:io.kubernetes.pod.namespace=default"],
            ),
            row(2, &["reserved:world"]),
            row(7, &[]),
        ];
        let table = render(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert_eq!(lines[0], "ID     CLUSTER   LABELS");
        assert_eq!(lines[1], "65537  cluster1  k8s:app=x-wing");
        assert_eq!(
            lines[2],
            "                 k8s:io.kubernetes.pod.namespace=default"
        );
        assert_eq!(lines[3], "2      -         reserved:world");
        assert_eq!(lines[4], "7      -         -");
    }

    #[test]
    fn labels_as_cilium_writes_them() {
        let label: Label = "k8s:app=x-wing".parse().unwrap();
        assert_eq!(label, Label::new("k8s", "app", "x-wing"));
        assert_eq!(
            "reserved:host".parse::<Label>().unwrap().to_string(),
            "reserved:host"
        );
        assert_eq!(
            "k8s:a=b=c".parse::<Label>().unwrap().value,
            "b=c",
            "the value is all after the first `=`"
        );
        for bad in ["app=x-wing", ":app", "k8s:", "k8s:=x", ""] {
            assert!(bad.parse::<Label>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&vec![label]).unwrap();
        assert_eq!(json, r#"["k8s:app=x-wing"]"#);
    }

    proptest! {
        #[test]
        fn labels_round_trip(
            source in "[a-z0-9]{1,8}",
            key in "[a-z0-9./-]{1,20}",
            value in "[a-zA-Z0-9=._-]{0,20}",
        ) {
            let label = Label::new(&source, &key, &value);
            prop_assert_eq!(label.to_string().parse::<Label>(), Ok(label));
        }

        #[test]
        fn any_text_parses_or_fails_cleanly(text in "\\PC{0,30}") {
            let _ = text.parse::<Label>();
        }
    }
}
