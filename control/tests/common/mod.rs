//! Test harness: real etcd servers on 127.0.0.1 with free ports, temp data dirs and TLS certificates made
//! here with rcgen; RBAC with a `root` user and a read-only `remote` user (by client-certificate CN);
//! and a [`Partition`] to put between a client and its etcd.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, Permission, TlsOptions};
use meshpath_control::clustermesh::config::{RemoteConfig, TlsMaterial};
use meshpath_control::ClusterName;
use meshpath_dataplane::ClusterId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

const ETCD: &str = "/usr/bin/etcd";

/// A certificate authority.
pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki {
            ca_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate, key) PEM for a server at 127.0.0.1 / localhost.
    pub fn server(&self) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "etcd");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params)
    }

    /// (certificate, key) PEM for a client; etcd takes the CN as the user name.
    pub fn client(&self, user: &str) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// An etcd client of `user` (mutual TLS) to any of `urls`.
    pub async fn connect(&self, user: &str, urls: &[&str]) -> Result<Client, etcd_client::Error> {
        let m = self.material(user);
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(m.ca))
            .identity(Identity::from_pem(m.cert, m.key));
        let options = ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(Duration::from_secs(2));
        Client::connect(urls, Some(options)).await
    }

    pub fn material(&self, user: &str) -> TlsMaterial {
        let (cert, key) = self.client(user);
        TlsMaterial {
            ca: self.ca_pem.clone().into_bytes(),
            cert: cert.into_bytes(),
            key: key.into_bytes(),
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd server; killed on drop.
/// One etcd member serving TLS with client certificates (the PKI's files in its directory), its data
/// in `<dir>/data-<name>`.
pub struct EtcdMember<'a> {
    pub name: &'a str,
    pub client_url: &'a str,
    pub peer_url: &'a str,
    /// `name=peer-url,…` of every member.
    pub initial_cluster: &'a str,
}

impl EtcdMember<'_> {
    pub fn spawn(&self, dir: &Path, log: std::fs::File) -> Child {
        Command::new(ETCD)
            .args(["--name", self.name, "--data-dir"])
            .arg(dir.join(format!("data-{}", self.name)))
            .args(["--listen-client-urls", self.client_url])
            .args(["--advertise-client-urls", self.client_url])
            .args(["--listen-peer-urls", self.peer_url])
            .args(["--initial-advertise-peer-urls", self.peer_url])
            .args(["--initial-cluster", self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .arg("--cert-file")
            .arg(dir.join("server.crt"))
            .arg("--key-file")
            .arg(dir.join("server.key"))
            .arg("--trusted-ca-file")
            .arg(dir.join("ca.crt"))
            .args(["--client-cert-auth", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts")
    }
}

pub struct Etcd {
    pub dir: tempfile::TempDir,
    pub url: String,
    peer_url: String,
    child: Option<Child>,
    pub pki: Pki,
}

impl Etcd {
    /// Starts an etcd behind mutual TLS with RBAC on: `root` may write, `remote` may read `cilium/`.
    pub async fn start(name: &str) -> Etcd {
        assert!(
            Path::new(ETCD).exists(),
            "{ETCD} is missing: install Debian's etcd-server (apt-get install etcd-server etcd-client)"
        );
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(name);
        let (cert, key) = pki.server();
        std::fs::write(dir.path().join("server.crt"), cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &pki.ca_pem).unwrap();
        let mut etcd = Etcd {
            url: format!("https://127.0.0.1:{}", free_port()),
            peer_url: format!("http://127.0.0.1:{}", free_port()),
            dir,
            child: None,
            pki,
        };
        etcd.restart().await;
        etcd.enable_rbac().await;
        etcd
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        let d = self.dir.path();
        let log = std::fs::File::create(d.join("etcd.log")).unwrap();
        let member = EtcdMember {
            name: "default",
            client_url: &self.url,
            peer_url: &self.peer_url,
            initial_cluster: &format!("default={}", self.peer_url),
        };
        let child = member.spawn(d, log);
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut client) = self.client("root").await {
                if client.get("health-probe", None).await.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not come up: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    pub async fn client(&self, user: &str) -> Result<Client, etcd_client::Error> {
        self.pki.connect(user, &[&self.url]).await
    }

    async fn enable_rbac(&self) {
        let client = self.client("root").await.unwrap();
        let mut auth = client.auth_client();
        auth.user_add("root", "unused-root-password", None)
            .await
            .unwrap();
        auth.user_grant_role("root", "root").await.unwrap();
        auth.role_add("remote-read").await.unwrap();
        auth.role_grant_permission("remote-read", Permission::read("cilium/").with_prefix())
            .await
            .unwrap();
        auth.user_add("remote", "unused-remote-password", None)
            .await
            .unwrap();
        auth.user_grant_role("remote", "remote-read").await.unwrap();
        auth.auth_enable().await.unwrap();
    }

    /// A ClusterMesh remote entry for this etcd, as the read-only `remote` user.
    pub fn remote_config(&self, name: &str, expected_id: Option<u8>) -> RemoteConfig {
        RemoteConfig {
            name: ClusterName::new(name).unwrap(),
            path: PathBuf::from(format!("/test/{name}")),
            endpoints: vec![self.url.clone()],
            tls: Some(self.pki.material("remote")),
            tls_paths: Vec::new(),
            expected_id: expected_id.and_then(ClusterId::new),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP relay in front of a server that a test can cut off and restore, as a network partition
/// would: cut, it stops relaying (open connections stall, new ones are accepted and left silent).
pub struct Partition {
    pub url: String,
    cut: Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Partition {
    /// Relays `https://127.0.0.1:<new port>` to `target` (an `https://host:port` URL).
    pub async fn start(target: &str) -> Partition {
        let upstream = target
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (cut, _) = tokio::sync::watch::channel(false);
        let cut = Arc::new(cut);
        let relay_cut = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, cut) = (upstream.clone(), relay_cut.subscribe());
                tokio::spawn(relay(client, upstream, cut));
            }
        });
        Partition { url, cut, task }
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one connection until either side closes or the partition is cut; a connection that
/// arrives while cut is held silent until the partition is restored, then dropped (its client
/// has given up and reconnects).
async fn relay(
    mut client: tokio::net::TcpStream,
    upstream: String,
    mut cut: tokio::sync::watch::Receiver<bool>,
) {
    if *cut.borrow() {
        let _ = cut.wait_for(|c| !*c).await;
        return;
    }
    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
        return;
    };
    let cut_off = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
        _ = cut.wait_for(|c| *c) => true,
    };
    // Cut: stop relaying but keep both sockets open (no RST, no FIN) until restored, like a
    // partition that drops packets; the client's keepalive has to notice.
    if cut_off {
        let _ = cut.wait_for(|c| !*c).await;
    }
}
