//! The stand-in's certificates and the kubeconfig that trusts them: a CA and a serving certificate for
//! the server's addresses (rcgen), kept in its data directory so a restarted stand-in serves the same
//! ones, and a kubeconfig naming the server, the CA and the ServiceAccount's token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The files in the data directory.
pub struct Pki {
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    /// The certificates in `data`, made (for `addr`'s IP) if there are none yet.
    pub fn ensure(data: &Path, addr: SocketAddr) -> anyhow::Result<Pki> {
        let pki = Pki {
            ca: data.join("ca.crt"),
            cert: data.join("tls.crt"),
            key: data.join("tls.key"),
        };
        if !(pki.ca.exists() && pki.cert.exists() && pki.key.exists()) {
            pki.make(addr)
                .context("making the stand-in's certificates")?;
        }
        Ok(pki)
    }

    fn make(&self, addr: SocketAddr) -> anyhow::Result<()> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "meshpath lab kubernetes CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate()?;
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca, ca_key);
        let names = vec![
            addr.ip().to_string(),
            "localhost".into(),
            "kubernetes.default.svc".into(),
        ];
        let mut server = CertificateParams::new(names)?;
        server
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = server.signed_by(&key, &issuer)?;
        std::fs::write(&self.ca, ca_pem)?;
        std::fs::write(&self.cert, cert.pem())?;
        write_private(&self.key, &key.serialize_pem())
    }

    /// The server side of TLS: HTTP/1.1 only (a client that offers h2 falls back to it).
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .with_context(|| format!("{}", self.cert.display()))?
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("{}", self.key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A kubeconfig for `server` as the ServiceAccount whose token is `token`.
    pub fn kubeconfig(&self, server: &str, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: lab\n  cluster: {{server: \"{server}\", certificate-authority: \"{ca}\"}}\n\
             users:\n- name: meshpath\n  user: {{token: \"{token}\"}}\n\
             contexts:\n- name: lab\n  context: {{cluster: lab, user: meshpath}}\n\
             current-context: lab\n",
            ca = self.ca.display(),
        )
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
