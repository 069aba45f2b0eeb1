//! YAML as meshpath reads it (the agent's configuration, the ClusterMesh directory, the local state
//! directory): serde-saphyr, which reads straight into the typed structures (`deny_unknown_fields`
//! refuses a key naming it), with errors on one line that say the line and column.

use serde::de::DeserializeOwned;

/// Reads one YAML document; an empty one is `null`. Errors end with `at line L, column C`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, serde_saphyr::Error> {
    let options = serde_saphyr::options! {
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options(text, options)
}

/// The 1-based line and column an error is about, if it has them.
pub fn position(error: &serde_saphyr::Error) -> Option<(usize, usize)> {
    let at = error.location()?;
    let line = usize::try_from(at.line()).ok().filter(|l| *l > 0)?;
    Some((line, usize::try_from(at.column()).unwrap_or_default()))
}

/// The 1-based line an error is about, if it has one.
pub fn line(error: &serde_saphyr::Error) -> Option<usize> {
    position(error).map(|(line, _)| line)
}

/// What is wrong, without the position it ends with (for a caller that says it differently).
pub fn problem(error: &serde_saphyr::Error) -> String {
    let text = error.to_string();
    match position(error) {
        Some((line, column)) => {
            let suffix = format!(" at line {line}, column {column}");
            text.strip_suffix(&suffix)
                .map_or(text.clone(), str::to_owned)
        }
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    #[allow(dead_code)]
    struct Remote {
        endpoints: Vec<String>,
        trusted_ca_file: Option<String>,
    }

    #[test]
    fn an_unknown_key_is_refused_by_name_and_line() {
        let err =
            from_str::<Remote>("endpoints:\n- https://a:2379\ntrusted-ca-fil: x\n").unwrap_err();
        assert_eq!(position(&err), Some((3, 1)));
        assert!(
            problem(&err).starts_with("unknown field `trusted-ca-fil`"),
            "{err}"
        );
        assert!(err.to_string().ends_with(" at line 3, column 1"), "{err}");
    }

    #[test]
    fn syntax_and_type_errors_say_where() {
        let err = from_str::<Remote>("endpoints:\n- a\ntrusted-ca-file: [\n").unwrap_err();
        assert_eq!(line(&err), Some(3), "{err}");
        let err = from_str::<Remote>("endpoints: 5\n").unwrap_err();
        assert_eq!(line(&err), Some(1), "{err}");
        assert!(!problem(&err).contains("line"), "{err}");
    }

    #[test]
    fn reads_ciliums_clustermesh_file() {
        let cilium = "endpoints:\n- https://cluster2.mesh.cilium.io:2379\ntrusted-ca-file: /var/lib/cilium/clustermesh/common-etcd-client-ca.crt\n";
        let remote: Remote = from_str(cilium).unwrap();
        assert_eq!(remote.endpoints, ["https://cluster2.mesh.cilium.io:2379"]);
    }
}
