//! A throwaway etcd server on 127.0.0.1 (free ports, temp data dir), killed on drop. It serves
//! mutual TLS as a cluster's etcd does in production: a server certificate and client certificates
//! from the lab's CA ([`meshpath_lab::pki`]), every client required to present one (no RBAC users:
//! the certificate's check is the cost measured).

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use etcd_client::Client;
use meshpath_control::clustermesh::config::TlsMaterial;
use meshpath_control::etcd::{connect, EtcdTarget};
use meshpath_lab::pki::{ClusterPki, LabCa};

pub struct Server {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub addr: SocketAddr,
    pub pki: ClusterPki,
    child: Child,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    pub async fn start(etcd: &str, ca: &LabCa) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let pki = ClusterPki::at(dir.path());
        ca.write_cluster(&pki, &[std::net::Ipv4Addr::LOCALHOST])?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let url = format!("https://{addr}");
        let peer = format!("http://127.0.0.1:{}", free_port()?);
        let log = std::fs::File::create(dir.path().join("etcd.log"))?;
        let child = Command::new(etcd)
            .args(["--name", "default", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .arg("--cert-file")
            .arg(&pki.server_cert)
            .arg("--key-file")
            .arg(&pki.server_key)
            .arg("--trusted-ca-file")
            .arg(&pki.ca)
            .arg("--client-cert-auth")
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            // Writing the cluster in big transactions.
            .args(["--max-txn-ops", "4096", "--max-request-bytes", "16777216"])
            .args(["--quota-backend-bytes", "4294967296"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {etcd} (Debian's etcd-server)"))?;
        let server = Server {
            dir,
            url,
            addr,
            pki,
            child,
        };
        for _ in 0..100 {
            if let Ok(mut client) = server.client().await {
                if client.get("probe", None).await.is_ok() {
                    return Ok(server);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("etcd at {} did not answer within 10 s", server.url)
    }

    /// A client of the cluster's own (`root`'s certificate), straight to the server.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let tls = TlsMaterial {
            ca: std::fs::read(&self.pki.ca)?,
            cert: std::fs::read(&self.pki.agent_cert)?,
            key: std::fs::read(&self.pki.agent_key)?,
        };
        let endpoints = [self.url.clone()];
        let target = EtcdTarget {
            endpoints: &endpoints,
            tls: Some(&tls),
            connect_timeout: Duration::from_secs(2),
            keep_alive: Duration::from_secs(10),
        };
        Ok(connect(&target).await?)
    }

    /// A remote cluster's file for reading this etcd at `url` (a relay in front of it, or the
    /// server's own) with the read-only user's certificate, in Cilium's format.
    pub fn remote_file(&self, url: &str) -> String {
        format!(
            "endpoints:\n- {url}\ntrusted-ca-file: {}\ncert-file: {}\nkey-file: {}\n",
            self.pki.ca.display(),
            self.pki.remote_cert.display(),
            self.pki.remote_key.display()
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
