//! What went wrong turning one Kubernetes object into local state: always names the object and the
//! field, so an operator can find it in the YAML file or with `kubectl get`.

/// One object that could not be translated. The rest of the state is unaffected by it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{object}: `{field}`: {problem}")]
pub struct TranslateError {
    /// `Kind namespace/name`, e.g. `CiliumNetworkPolicy default/x-wing-egress`.
    pub object: String,
    /// The field's path as written in the object, e.g. `spec.egress[0].toEndpoints[1]`.
    pub field: String,
    pub problem: String,
}

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
