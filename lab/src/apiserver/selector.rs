//! `labelSelector` and `fieldSelector` as the API server reads them: label requirements `k=v`, `k==v`,
//! `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`; field requirements `=`, `==`, `!=` on
//! `metadata.name`, `metadata.namespace` and, for pods, `spec.nodeName` (others: 400, as the server
//! answers a field label it does not support).

use meshpath_control::local::Kind;
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Label {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Field {
    path: String,
    value: String,
    equal: bool,
}

/// Both selectors of a request; empty selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    labels: Vec<Label>,
    fields: Vec<Field>,
}

impl Selector {
    pub fn parse(
        kind: Kind,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<Selector, String> {
        let labels = split(labels.unwrap_or_default())
            .map(|r| label(r).ok_or_else(|| format!("unable to parse requirement: `{r}`")))
            .collect::<Result<_, _>>()?;
        let fields = split(fields.unwrap_or_default())
            .map(|r| field(kind, r))
            .collect::<Result<_, _>>()?;
        Ok(Selector { labels, fields })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label_of = |k: &str| labels[k].as_str();
        let labels_match = self.labels.iter().all(|r| match r {
            Label::Equals(k, v) => label_of(k) == Some(v),
            Label::NotEquals(k, v) => label_of(k) != Some(v),
            Label::Exists(k) => label_of(k).is_some(),
            Label::NotExists(k) => label_of(k).is_none(),
            Label::In(k, vs) => label_of(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Label::NotIn(k, vs) => label_of(k).is_none_or(|l| vs.iter().all(|v| v != l)),
        });
        labels_match
            && self.fields.iter().all(|f| {
                let value = f.path.split('.').fold(object, |v, part| &v[part]);
                (value.as_str().unwrap_or_default() == f.value) == f.equal
            })
    }
}

/// Requirements separated by commas outside parentheses.
fn split(text: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty())
}

fn label(r: &str) -> Option<Label> {
    let word = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && !s.contains(char::is_whitespace)).then(|| s.to_owned())
    };
    if let Some((k, v)) = r.split_once("!=") {
        return Some(Label::NotEquals(word(k)?, v.trim().to_owned()));
    }
    if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
        return Some(Label::Equals(word(k)?, v.trim().to_owned()));
    }
    let set = |op: &str| {
        let (k, rest) = r.split_once(op)?;
        let values = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
        let values = values.split(',').map(|v| v.trim().to_owned()).collect();
        Some((word(k)?, values))
    };
    if let Some((k, vs)) = set(" notin ") {
        return Some(Label::NotIn(k, vs));
    }
    if let Some((k, vs)) = set(" in ") {
        return Some(Label::In(k, vs));
    }
    match r.strip_prefix('!') {
        Some(k) => Some(Label::NotExists(word(k)?)),
        None => Some(Label::Exists(word(r)?)),
    }
}

fn field(kind: Kind, r: &str) -> Result<Field, String> {
    let (path, value, equal) = if let Some((p, v)) = r.split_once("!=") {
        (p, v, false)
    } else if let Some((p, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
        (p, v, true)
    } else {
        return Err(format!("invalid selector: `{r}`; can't understand it"));
    };
    let path = path.trim();
    let supported = matches!(path, "metadata.name" | "metadata.namespace")
        || (kind == Kind::Pod && path == "spec.nodeName");
    if !supported {
        return Err(format!("field label not supported: {path}"));
    }
    Ok(Field {
        path: path.to_owned(),
        value: value.trim().to_owned(),
        equal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_and_fields_as_the_server_reads_them() {
        let pod = json!({"metadata": {"name": "x", "namespace": "default", "labels": {"app": "web", "tier": "a"}},
            "spec": {"nodeName": "c1-n1"}});
        let select = |l: Option<&str>, f: Option<&str>| {
            Selector::parse(Kind::Pod, l, f).unwrap().matches(&pod)
        };
        assert!(select(None, None));
        assert!(select(Some("app=web,tier"), Some("spec.nodeName=c1-n1")));
        assert!(select(
            Some("app in (db, web),!gone"),
            Some("metadata.namespace!=kube-system")
        ));
        assert!(!select(Some("app notin (web)"), None));
        assert!(!select(Some("app==db"), None));
        assert!(!select(None, Some("spec.nodeName=c1-n2")));
        assert!(select(Some("app!=db"), None));
        let bad = Selector::parse(Kind::Service, None, Some("spec.nodeName=c1-n1"));
        assert_eq!(bad.unwrap_err(), "field label not supported: spec.nodeName");
        assert!(Selector::parse(Kind::Pod, Some("a b"), None).is_err());
    }
}
