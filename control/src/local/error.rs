//! What went wrong turning one Kubernetes object into local state: always names the object and the
//! field, so an operator can find it in the YAML file or with `kubectl get`.

/// One object that could not be translated. The rest of the state is unaffected by it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslateError {
    /// `Kind namespace/name`, e.g. `CiliumNetworkPolicy default/x-wing-egress`.
    pub object: String,
    /// The field's path as written in the object, e.g. `spec.egress[0].toEndpoints[1]`; empty when
    /// the whole object does not decode as its kind.
    pub field: String,
    pub problem: String,
}

impl std::fmt::Display for TranslateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.field.as_str() {
            "" => write!(f, "{}: {}", self.object, self.problem),
            field => write!(f, "{}: `{field}`: {}", self.object, self.problem),
        }
    }
}

impl std::error::Error for TranslateError {}

/// The object being translated, to name it in errors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Subject<'a> {
    pub kind: &'a str,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
}

impl Subject<'_> {
    pub fn error(&self, field: impl Into<String>, problem: impl Into<String>) -> TranslateError {
        let object = match self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        };
        TranslateError {
            object,
            field: field.into(),
            problem: problem.into(),
        }
    }
}
