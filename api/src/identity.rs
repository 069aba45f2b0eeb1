//! Security identities and their labels: `meshpath identity list`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRow {
    pub id: u32,
    /// The cluster whose agents allocated it (or announced it, for a remote one); none for the
    /// reserved identities every node knows.
    pub cluster: Option<String>,
    /// Label keys without their source, as policy matches them.
    pub labels: BTreeMap<String, String>,
}

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

/// A label as Cilium prints it: `key=value`, or the bare key of a label without a value.
pub fn label(key: &str, value: &str) -> String {
    match value.is_empty() {
        true => key.to_owned(),
        false => format!("{key}={value}"),
    }
}

/// `meshpath identity list` as a table: `ID  LABELS`, one label per line.
pub fn render(rows: &[IdentityRow]) -> String {
    let mut out = format!("{:<10} {}\n", "ID", "LABELS");
    for row in rows {
        let labels: Vec<String> = row.labels.iter().map(|(k, v)| label(k, v)).collect();
        let first = labels.first().map_or("-", String::as_str);
        out += &format!("{:<10} {first}\n", row.id);
        for label in labels.iter().skip(1) {
            out += &format!("{:<10} {label}\n", "");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u32, labels: &[(&str, &str)]) -> IdentityRow {
        IdentityRow {
            id,
            cluster: None,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn table_lists_every_label() {
        let rows = [
            row(
                65537,
                &[
                    ("app", "x-wing"),
                    ("io.kubernetes.pod.namespace", "default"),
                ],
            ),
            row(2, &[("reserved:world", "")]),
            row(7, &[]),
        ];
        let table = render(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[1].starts_with("65537") && lines[1].ends_with("app=x-wing"));
        assert!(lines[2].trim() == "io.kubernetes.pod.namespace=default");
        assert_eq!(lines[3], "2          reserved:world");
        assert_eq!(lines[4], "7          -");
    }
}
