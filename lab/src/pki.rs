//! The lab's certificates, made with rcgen as an operator's tooling would: one CA for the lab, and per
//! cluster a server certificate for its etcd (its address), the client certificate its own agents use
//! (`root`: they write the cluster's state) and the one remote clusters read it with (`remote`: the
//! read-only etcd user, a role with read on `cilium/` only). etcd takes a client certificate's CN as
//! the user name. Every remote's client certificate comes from the same CA, so one `common-etcd-client`
//! pair serves every remote, the files Cilium's `cilium clustermesh enable` lays out.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

/// The user a cluster's own agents are (etcd's `root`: the cluster's state is theirs to write).
pub const AGENT_USER: &str = "root";
/// The read-only user remote clusters read a cluster's etcd as.
pub const REMOTE_USER: &str = "remote";

/// Where one cluster's certificate files are.
#[derive(Clone, Debug)]
pub struct ClusterPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub agent_cert: PathBuf,
    pub agent_key: PathBuf,
    pub remote_cert: PathBuf,
    pub remote_key: PathBuf,
}

impl ClusterPki {
    /// The files of the cluster whose directory is `dir`.
    pub fn at(dir: &Path) -> ClusterPki {
        let dir = dir.join("pki");
        ClusterPki {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("etcd-server.crt"),
            server_key: dir.join("etcd-server.key"),
            agent_cert: dir.join("etcd-client.crt"),
            agent_key: dir.join("etcd-client.key"),
            remote_cert: dir.join("remote-etcd-client.crt"),
            remote_key: dir.join("remote-etcd-client.key"),
        }
    }

    /// etcdctl's flags for this cluster's etcd as its `root` user.
    pub fn etcdctl_flags(&self) -> Vec<String> {
        vec![
            format!("--cacert={}", self.ca.display()),
            format!("--cert={}", self.agent_cert.display()),
            format!("--key={}", self.agent_key.display()),
        ]
    }
}

/// The lab's certificate authority.
pub struct LabCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl LabCa {
    pub fn new() -> anyhow::Result<LabCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "meshpath lab CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate()?;
        let pem = params.self_signed(&key)?.pem();
        Ok(LabCa {
            pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Writes a cluster's files (keys mode 0400): the server's for `addresses`, and both clients'.
    pub fn write_cluster(&self, pki: &ClusterPki, addresses: &[Ipv4Addr]) -> anyhow::Result<()> {
        let dir = pki.ca.parent().context("a PKI directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write(&pki.ca, &self.pem, 0o444)?;
        let (cert, key) = self.server(addresses)?;
        write(&pki.server_cert, &cert, 0o444)?;
        write(&pki.server_key, &key, 0o400)?;
        for (user, cert_path, key_path) in [
            (AGENT_USER, &pki.agent_cert, &pki.agent_key),
            (REMOTE_USER, &pki.remote_cert, &pki.remote_key),
        ] {
            let (cert, key) = self.client(user)?;
            write(cert_path, &cert, 0o444)?;
            write(key_path, &key, 0o400)?;
        }
        Ok(())
    }

    fn server(&self, addresses: &[Ipv4Addr]) -> anyhow::Result<(String, String)> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params.subject_alt_names.extend(
            addresses
                .iter()
                .chain([&Ipv4Addr::LOCALHOST])
                .map(|a| SanType::IpAddress((*a).into())),
        );
        params.distinguished_name.push(DnType::CommonName, "etcd");
        // The members of a cluster's etcd talk to each other with it too.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params)
    }

    fn client(&self, user: &str) -> anyhow::Result<(String, String)> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("mode of {}", path.display()))
}
