//! The ClusterMesh configuration directory: one YAML file per remote cluster, the file name being the
//! cluster's name (optionally with `.yaml`/`.yml`). Loading reads the TLS material too, so that a flipped
//! secret mount (new certificate under the same path) shows up as a changed [`RemoteConfig`].
//!
//! Cilium's tooling (its Helm chart's `clustermesh-config/_helpers.tpl`, `cilium clustermesh
//! enable/connect`) writes absolute certificate paths into its mount,
//! `/var/lib/cilium/clustermesh/common-etcd-client{.crt,.key,-ca.crt}` (or
//! `<cluster>.etcd-client*`); such a path is read from the directory the files are actually in, so a
//! Secret written by Cilium's tooling works unchanged wherever it is mounted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use meshpath_dataplane::ClusterId;
use serde::Deserialize;

use crate::cluster_name::ClusterName;

/// One remote cluster's file as written.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RemoteFile {
    endpoints: Vec<String>,
    trusted_ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    /// Allows `http://` endpoints and no TLS: for labs only.
    #[serde(default)]
    insecure: bool,
    /// The id the remote must announce in its cluster-config (a meshpath addition; optional).
    cluster_id: Option<u8>,
}

/// Where Cilium's agent mounts its clustermesh Secret, and its tooling points certificate paths.
pub const CILIUM_MOUNT: &str = "/var/lib/cilium/clustermesh";

/// A certificate path of a file in `dir`: relative to `dir`, and Cilium's mount read as `dir`.
fn resolve(dir: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix(CILIUM_MOUNT) {
        Ok(inside) => dir.join(inside),
        Err(_) => dir.join(path),
    }
}

/// PEM bytes for mutual TLS, read when the file was loaded.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsMaterial { .. }")
    }
}

/// A remote cluster, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConfig {
    pub name: ClusterName,
    pub path: PathBuf,
    pub endpoints: Vec<String>,
    /// `None` only with the insecure flag.
    pub tls: Option<TlsMaterial>,
    /// Where the TLS material was read from, to be watched for changes.
    pub tls_paths: Vec<PathBuf>,
    pub expected_id: Option<ClusterId>,
}

/// Every remote cluster this agent should watch, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshConfig {
    pub remotes: BTreeMap<ClusterName, RemoteConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}{}: {source}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Yaml {
        path: PathBuf,
        line: Option<usize>,
        source: Box<serde_saphyr::Error>,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("{second}: cluster `{name}` is already configured by {first}")]
    DuplicateName {
        name: ClusterName,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{second}: cluster id {id} is already used by {first}")]
    DuplicateId {
        id: ClusterId,
        first: PathBuf,
        second: PathBuf,
    },
}

impl ConfigError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Read { path, .. }
            | ConfigError::Yaml { path, .. }
            | ConfigError::Invalid { path, .. } => path,
            ConfigError::DuplicateName { second, .. } | ConfigError::DuplicateId { second, .. } => {
                second
            }
        }
    }
}

/// What one pass over the directory found: the files that are good, and one error per bad file.
#[derive(Debug, Default)]
pub struct Loaded {
    pub config: MeshConfig,
    pub errors: Vec<ConfigError>,
    /// Cluster names whose file exists but is broken: a watcher keeps their last good config.
    pub broken: Vec<ClusterName>,
}

/// The cluster a directory entry configures, if its name says it is one.
pub fn cluster_of_file(file_name: &str) -> Option<ClusterName> {
    let stem = file_name
        .strip_suffix(".yaml")
        .or_else(|| file_name.strip_suffix(".yml"))
        .unwrap_or(file_name);
    ClusterName::new(stem).ok()
}

/// Reads every remote's file in `dir`, ignoring `local`'s own file and anything not named like a cluster
/// (Kubernetes' `..data` links, certificates kept beside the files).
pub fn load_dir(dir: &Path, local: &ClusterName) -> Result<Loaded, ConfigError> {
    let read_dir = |source| ConfigError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut files: Vec<(ClusterName, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir)? {
        let path = entry.map_err(read_dir)?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(cluster_of_file)
        else {
            continue;
        };
        if name != *local && path.is_file() {
            files.push((name, path));
        }
    }
    files.sort_by(|a, b| a.1.cmp(&b.1));
    let mut loaded = Loaded::default();
    for (name, path) in files {
        match load_file(&name, &path) {
            Ok(remote) => loaded.admit(remote),
            Err(err) => {
                loaded.errors.push(err);
                loaded.broken.push(name);
            }
        }
    }
    Ok(loaded)
}

impl Loaded {
    /// Adds a remote unless its name or id is taken; the first file (in path order) wins.
    fn admit(&mut self, remote: RemoteConfig) {
        if let Some(first) = self.config.remotes.get(&remote.name) {
            let (name, first, second) = (remote.name.clone(), first.path.clone(), remote.path);
            self.errors.push(ConfigError::DuplicateName {
                name,
                first,
                second,
            });
            return;
        }
        let same_id = self
            .config
            .remotes
            .values()
            .find(|r| r.expected_id.is_some() && r.expected_id == remote.expected_id);
        if let (Some(first), Some(id)) = (same_id, remote.expected_id) {
            self.errors.push(ConfigError::DuplicateId {
                id,
                first: first.path.clone(),
                second: remote.path,
            });
            return;
        }
        self.config.remotes.insert(remote.name.clone(), remote);
    }
}

pub fn load_file(name: &ClusterName, path: &Path) -> Result<RemoteConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file: RemoteFile = crate::yaml::from_str(&text).map_err(|source| ConfigError::Yaml {
        path: path.to_owned(),
        line: crate::yaml::line(&source),
        source: Box::new(source),
    })?;
    let invalid = |why: String| ConfigError::Invalid {
        path: path.to_owned(),
        why,
    };
    if file.endpoints.is_empty() {
        return Err(invalid("no endpoints".into()));
    }
    for endpoint in &file.endpoints {
        let plain = endpoint.starts_with("http://");
        if !plain && !endpoint.starts_with("https://") {
            return Err(invalid(format!(
                "endpoint `{endpoint}` is neither https:// nor http://"
            )));
        }
        if plain && !file.insecure {
            return Err(invalid(format!(
                "endpoint `{endpoint}` is plain http: set `insecure: true` to allow it"
            )));
        }
    }
    let expected_id = match file.cluster_id {
        Some(id) => Some(
            ClusterId::new(id)
                .ok_or_else(|| invalid("cluster-id 0 is not a mesh cluster id".into()))?,
        ),
        None => None,
    };
    let mut tls_paths = Vec::new();
    let tls = match (&file.trusted_ca_file, &file.cert_file, &file.key_file) {
        (Some(ca), Some(cert), Some(key)) => {
            let mut read = |p: &PathBuf| {
                let p = resolve(path.parent().unwrap_or(Path::new(".")), p);
                let pem = std::fs::read(&p).map_err(|e| invalid(format!("{}: {e}", p.display())));
                tls_paths.push(p);
                pem
            };
            Some(TlsMaterial {
                ca: read(ca)?,
                cert: read(cert)?,
                key: read(key)?,
            })
        }
        (None, None, None) if file.insecure => None,
        _ => {
            return Err(invalid(
                "trusted-ca-file, cert-file and key-file are all required for mutual TLS".into(),
            ))
        }
    };
    Ok(RemoteConfig {
        name: name.clone(),
        path: path.to_owned(),
        endpoints: file.endpoints,
        tls,
        tls_paths,
        expected_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn local() -> ClusterName {
        ClusterName::new("cluster1").unwrap()
    }

    fn write_tls(dir: &Path) {
        for f in ["ca.crt", "client.crt", "client.key"] {
            fs::write(dir.join(f), format!("pem of {f}")).unwrap();
        }
    }

    fn remote_yaml(endpoint: &str, id: u8) -> String {
        format!("endpoints:\n- {endpoint}\ntrusted-ca-file: ca.crt\ncert-file: client.crt\nkey-file: client.key\ncluster-id: {id}\n")
    }

    #[test]
    fn loads_remotes_and_ignores_own_file_and_certificates() {
        let dir = tempfile::tempdir().unwrap();
        write_tls(dir.path());
        fs::write(
            dir.path().join("cluster1"),
            remote_yaml("https://a:2379", 1),
        )
        .unwrap();
        fs::write(
            dir.path().join("cluster2"),
            remote_yaml("https://cluster2.mesh:2379", 2),
        )
        .unwrap();
        fs::write(
            dir.path().join("cluster3.yaml"),
            remote_yaml("https://cluster3.mesh:2379", 3),
        )
        .unwrap();
        let loaded = load_dir(dir.path(), &local()).unwrap();
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let names: Vec<_> = loaded
            .config
            .remotes
            .keys()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["cluster2", "cluster3"]);
        let c2 = &loaded.config.remotes[&ClusterName::new("cluster2").unwrap()];
        assert_eq!(c2.endpoints, ["https://cluster2.mesh:2379"]);
        assert_eq!(
            c2.tls.as_ref().map(|t| t.ca.clone()),
            Some(b"pem of ca.crt".to_vec())
        );
        assert_eq!(c2.expected_id, ClusterId::new(2));
    }

    #[test]
    fn a_broken_file_is_reported_with_path_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write_tls(dir.path());
        fs::write(
            dir.path().join("cluster2"),
            "endpoints:\n- https://a:2379\ntrusted-ca-file: [\n",
        )
        .unwrap();
        let loaded = load_dir(dir.path(), &local()).unwrap();
        assert_eq!(loaded.broken, [ClusterName::new("cluster2").unwrap()]);
        let msg = loaded.errors[0].to_string();
        assert!(msg.contains("cluster2:"), "{msg}");
        assert!(
            matches!(loaded.errors[0], ConfigError::Yaml { line: Some(3), .. }),
            "{msg}"
        );
        assert!(msg.contains("cluster2:3: "), "{msg}");
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster2");
        fs::write(
            &path,
            "endpoints:\n- http://a:2379\ninsecure: true\nkey-fil: x\n",
        )
        .unwrap();
        let err = load_file(&ClusterName::new("cluster2").unwrap(), &path).unwrap_err();
        assert!(err.to_string().contains("unknown field `key-fil`"), "{err}");
        assert!(
            matches!(err, ConfigError::Yaml { line: Some(4), .. }),
            "{err}"
        );
    }

    #[test]
    fn plain_http_needs_the_insecure_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster2");
        fs::write(&path, "endpoints:\n- http://a:2379\n").unwrap();
        let err = load_file(&ClusterName::new("cluster2").unwrap(), &path).unwrap_err();
        assert!(err.to_string().contains("insecure"), "{err}");
        fs::write(&path, "endpoints:\n- http://a:2379\ninsecure: true\n").unwrap();
        assert!(load_file(&ClusterName::new("cluster2").unwrap(), &path)
            .unwrap()
            .tls
            .is_none());
    }

    #[test]
    fn half_a_tls_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_tls(dir.path());
        let path = dir.path().join("cluster2");
        fs::write(
            &path,
            "endpoints:\n- https://a:2379\ntrusted-ca-file: ca.crt\n",
        )
        .unwrap();
        assert!(matches!(
            load_file(&ClusterName::new("cluster2").unwrap(), &path),
            Err(ConfigError::Invalid { .. })
        ));
        fs::write(&path, "endpoints:\n- https://a:2379\ntrusted-ca-file: ca.crt\ncert-file: missing.crt\nkey-file: client.key\n").unwrap();
        let err = load_file(&ClusterName::new("cluster2").unwrap(), &path).unwrap_err();
        assert!(err.to_string().contains("missing.crt"), "{err}");
    }

    #[test]
    fn two_remotes_with_one_name_or_one_id_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_tls(dir.path());
        fs::write(
            dir.path().join("cluster2"),
            remote_yaml("https://a:2379", 2),
        )
        .unwrap();
        fs::write(
            dir.path().join("cluster2.yaml"),
            remote_yaml("https://b:2379", 5),
        )
        .unwrap();
        fs::write(
            dir.path().join("cluster3"),
            remote_yaml("https://c:2379", 2),
        )
        .unwrap();
        let loaded = load_dir(dir.path(), &local()).unwrap();
        assert_eq!(loaded.config.remotes.len(), 1);
        assert!(
            loaded
                .errors
                .iter()
                .any(|e| matches!(e, ConfigError::DuplicateName { .. })),
            "{:?}",
            loaded.errors
        );
        assert!(
            loaded
                .errors
                .iter()
                .any(|e| matches!(e, ConfigError::DuplicateId { .. })),
            "{:?}",
            loaded.errors
        );
        assert!(loaded.errors.iter().all(|e| !e.to_string().is_empty()));
    }

    proptest::proptest! {
        #[test]
        fn any_file_content_loads_or_is_refused_with_its_path(content in "(endpoints|trusted-ca-file|insecure|cluster-id|:|-| |\\n|https://a|http://b|true|[0-9]{1,3}|\\[|\\]){0,24}") {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("cluster2");
            fs::write(&path, &content).unwrap();
            match load_file(&ClusterName::new("cluster2").unwrap(), &path) {
                Ok(remote) => proptest::prop_assert!(!remote.endpoints.is_empty()),
                Err(err) => proptest::prop_assert!(err.to_string().contains(&path.display().to_string())),
            }
        }

        #[test]
        fn cluster_of_file_accepts_only_cluster_names(name in "[a-zA-Z0-9._-]{0,40}") {
            if let Some(cluster) = cluster_of_file(&name) {
                proptest::prop_assert!(name.starts_with(cluster.as_str()));
            }
        }
    }
}
