//! Multi-document YAML text (`---`, also `kind: List`) → [`KubeObject`]s, each with the line its
//! document starts on, and errors that say the line where the parser found the problem.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::kind::Kind;
use super::model::PolicyKind;
use super::object::KubeObject;
use super::refused::{Lenient, UnsupportedPolicy};

/// One object read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedObject {
    /// 1-based line of the object's document (for `List` items, of the list's document).
    pub line: usize,
    pub object: KubeObject,
}

/// Why a file's text is not a set of objects. `line` is 1-based.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ParseError {
    pub line: usize,
    pub problem: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

#[derive(Deserialize)]
struct List {
    #[serde(default)]
    items: Vec<serde_json::Value>,
}

/// Every object of every document in `text`. The first problem found ends the parse.
pub fn parse_objects(text: &str) -> Result<Vec<ParsedObject>, ParseError> {
    let mut out = Vec::new();
    let last_line = text.lines().count().max(1);
    for (start, doc) in documents(text) {
        // libyaml reports an unclosed construct at the end of input, one past the last line.
        parse_document(&doc, start, &mut out).map_err(|e| ParseError {
            line: e.line.min(last_line),
            ..e
        })?;
    }
    Ok(out)
}

/// Splits at `---` lines. A document starts on the line after its marker (on the marker's line if
/// content follows it there, the marker itself blanked), so the parser's line numbers are offsets
/// from the document's first line.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut start = 1;
    let mut current = String::new();
    let mut ended = false;
    for (i, line) in text.lines().enumerate() {
        let is_marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_marker {
            docs.push((start, std::mem::take(&mut current)));
            ended = false;
            let rest = line.get(3..).unwrap_or_default();
            if rest.trim().is_empty() {
                start = i + 2;
            } else {
                start = i + 1;
                current.push_str("   ");
                current.push_str(rest);
                current.push('\n');
            }
        } else if line == "..." {
            ended = true;
            current.push('\n');
        } else {
            current.push_str(if ended { "" } else { line });
            current.push('\n');
        }
    }
    docs.push((start, current));
    docs
}

fn parse_document(text: &str, start: usize, out: &mut Vec<ParsedObject>) -> Result<(), ParseError> {
    let doc = Document { text, start };
    let value: serde_json::Value = doc.read()?;
    if value.is_null() {
        return Ok(());
    }
    let meta: TypeMeta = doc.read()?;
    if is_list(&meta.kind) {
        let list: List = doc.read()?;
        for (index, value) in list.items.iter().enumerate() {
            let item = ListItem {
                value,
                line: start,
                index,
            };
            let object = decode(&item.read()?, &item)?;
            out.push(ParsedObject {
                line: start,
                object,
            });
        }
        return Ok(());
    }
    out.push(ParsedObject {
        line: start,
        object: decode(&meta, &doc)?,
    });
    Ok(())
}

/// `List`, or the list of one of the kinds read (`PodList`), as `kubectl get -o yaml` writes them.
fn is_list(kind: &str) -> bool {
    kind == "List"
        || kind
            .strip_suffix("List")
            .is_some_and(|k| Kind::ALL.iter().any(|known| known.name() == k))
}

/// Where typed values are read from: a document's text (errors carry the parser's line) or an item
/// of a `List` (already parsed, so errors can only name the item).
trait Source {
    fn read<T: DeserializeOwned>(&self) -> Result<T, ParseError>;
    fn error(&self, problem: String) -> ParseError;
}

struct Document<'a> {
    text: &'a str,
    start: usize,
}

impl Source for Document<'_> {
    fn read<T: DeserializeOwned>(&self) -> Result<T, ParseError> {
        crate::yaml::from_str(self.text).map_err(|e| {
            let Some((line, column)) = crate::yaml::position(&e) else {
                return self.error(e.to_string());
            };
            // The parser counts lines from the document, not the file.
            ParseError {
                line: self.start + line.saturating_sub(1),
                problem: format!("{} (column {column})", crate::yaml::problem(&e)),
            }
        })
    }
    fn error(&self, problem: String) -> ParseError {
        ParseError {
            line: self.start,
            problem,
        }
    }
}

/// A whole object already parsed (from the API server).
struct Value<'a>(&'a serde_json::Value);

impl Source for Value<'_> {
    fn read<T: DeserializeOwned>(&self) -> Result<T, ParseError> {
        T::deserialize(self.0).map_err(|e| self.error(e.to_string()))
    }
    fn error(&self, problem: String) -> ParseError {
        ParseError { line: 0, problem }
    }
}

struct ListItem<'a> {
    value: &'a serde_json::Value,
    line: usize,
    index: usize,
}

impl Source for ListItem<'_> {
    fn read<T: DeserializeOwned>(&self) -> Result<T, ParseError> {
        T::deserialize(self.value).map_err(|e| self.error(e.to_string()))
    }
    fn error(&self, problem: String) -> ParseError {
        ParseError {
            line: self.line,
            problem: format!("items[{}]: {problem}", self.index),
        }
    }
}

/// Decodes with the type that `apiVersion` and `kind` name.
fn decode(meta: &TypeMeta, source: &impl Source) -> Result<KubeObject, ParseError> {
    match Kind::of_type(&meta.api_version, &meta.kind) {
        Some(kind) => decode_as(kind, source),
        None => Err(source.error(format!(
            "unsupported kind `{}` of apiVersion `{}` (Node, Pod, Service, EndpointSlice, \
             NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, List)",
            meta.kind, meta.api_version
        ))),
    }
}

/// An object of a known kind as the API server sent it (list items carry no `apiVersion` and `kind`),
/// decoded as the file source decodes its documents: a policy that does not parse as its kind is
/// refused, anything else that does not parse is this object's error.
pub fn decode_value(kind: Kind, value: &serde_json::Value) -> Result<KubeObject, String> {
    let item = Value(value);
    decode_as(kind, &item).map_err(|e| e.problem)
}

fn decode_as(kind: Kind, source: &impl Source) -> Result<KubeObject, ParseError> {
    Ok(match kind {
        Kind::Node => KubeObject::Node(source.read()?),
        Kind::Pod => KubeObject::Pod(source.read()?),
        Kind::Service => KubeObject::Service(source.read()?),
        Kind::EndpointSlice => KubeObject::EndpointSlice(source.read()?),
        Kind::NetworkPolicy => match source.read() {
            Ok(policy) => KubeObject::NetworkPolicy(policy),
            Err(e) => unsupported(PolicyKind::NetworkPolicy, e, source)?,
        },
        Kind::CiliumNetworkPolicy => match source.read() {
            Ok(policy) => KubeObject::CiliumNetworkPolicy(policy),
            Err(e) => unsupported(PolicyKind::CiliumNetworkPolicy, e, source)?,
        },
        Kind::CiliumClusterwideNetworkPolicy => match source.read() {
            Ok(policy) => KubeObject::CiliumClusterwideNetworkPolicy(policy),
            Err(e) => unsupported(PolicyKind::CiliumClusterwideNetworkPolicy, e, source)?,
        },
    })
}

/// A policy document that does not parse as its kind, read for what it covers so that it can be
/// refused closed; if it has not even a policy's general shape, the parse error stands.
fn unsupported(
    kind: PolicyKind,
    error: ParseError,
    source: &impl Source,
) -> Result<KubeObject, ParseError> {
    match source.read::<Lenient>() {
        Ok(lenient) => Ok(KubeObject::UnsupportedPolicy(Box::new(
            UnsupportedPolicy::new(kind, error.problem, lenient),
        ))),
        Err(_) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SERVICE: &str =
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n";
    const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata:\n  name: c1-n1\n";

    #[test]
    fn documents_lists_and_their_lines() {
        let text = format!("# comment\n---\n{SERVICE}---\n\n---\n{NODE}--- \napiVersion: v1\nkind: List\nitems:\n- {{apiVersion: v1, kind: Node, metadata: {{name: n2}}}}\n- {{apiVersion: v1, kind: Node, metadata: {{name: n3}}}}\n");
        let objects = parse_objects(&text).unwrap();
        let kinds: Vec<_> = objects.iter().map(|o| (o.line, o.object.kind())).collect();
        assert_eq!(
            kinds,
            [(3, "Service"), (13, "Node"), (18, "Node"), (18, "Node")]
        );
    }

    #[test]
    fn errors_carry_the_line_in_the_file() {
        let bad_type = format!("{NODE}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: eighty\n");
        let err = parse_objects(&bad_type).unwrap_err();
        assert_eq!(err.line, 12, "{err}");

        let bad_yaml = format!("{SERVICE}---\nkind: [unclosed\n");
        assert_eq!(parse_objects(&bad_yaml).unwrap_err().line, 9);

        let unknown =
            format!("{SERVICE}---\n{SERVICE}---\napiVersion: apps/v1\nkind: Deployment\n");
        let err = parse_objects(&unknown).unwrap_err();
        assert_eq!(err.line, 17);
        assert!(err.problem.contains("Deployment"));

        let wrong_version = "apiVersion: v2\nkind: Pod\n";
        assert!(parse_objects(wrong_version).is_err());

        let list = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Secret}\n";
        assert!(parse_objects(list)
            .unwrap_err()
            .problem
            .starts_with("items[0]"));
    }

    #[test]
    fn typed_lists_are_lists_and_other_kinds_ending_in_list_are_not() {
        let pods = "apiVersion: v1\nkind: PodList\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: p}}\n";
        assert_eq!(parse_objects(pods).unwrap()[0].object.kind(), "Pod");
        let other = "apiVersion: example.com/v1\nkind: AccessList\nitems: []\n";
        assert!(parse_objects(other)
            .unwrap_err()
            .problem
            .contains("AccessList"));
    }

    #[test]
    fn json_and_empty_documents() {
        assert_eq!(parse_objects("").unwrap(), []);
        assert_eq!(parse_objects("---\n# nothing\n---\n").unwrap(), []);
        let json = r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}}"#;
        assert_eq!(parse_objects(json).unwrap()[0].object.kind(), "Node");
    }

    proptest! {
        /// Any text either parses or fails with a line inside the text; never a panic.
        #[test]
        fn arbitrary_text_never_panics(text in "(apiVersion: v1\n|kind: (Node|Pod|List)\n|---\n|items:\n|- \\{\\}\n|metadata: \\{name: [a-z]\\}\n|  [a-z]+: [0-9]\n|\\[\n|\\.\\.\\.\n)*") {
            match parse_objects(&text) {
                Ok(objects) => prop_assert!(objects.iter().all(|o| o.line <= text.lines().count().max(1))),
                Err(e) => prop_assert!(e.line >= 1 && e.line <= text.lines().count().max(1), "{e}"),
            }
        }

        /// Documents joined with `---` parse to their objects with the lines they start on.
        #[test]
        fn split_keeps_every_document_and_its_line(names in prop::collection::vec("[a-z]{1,8}", 1..6)) {
            let docs: Vec<String> = names.iter().map(|n| format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {n}\n")).collect();
            let objects = parse_objects(&docs.join("---\n")).unwrap();
            prop_assert_eq!(objects.len(), names.len());
            for (i, o) in objects.iter().enumerate() {
                prop_assert_eq!(o.line, 1 + 5 * i);
            }
        }
    }
}
