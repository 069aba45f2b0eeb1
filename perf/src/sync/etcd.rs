//! A throwaway etcd server on 127.0.0.1 (plain http, free ports, temp data dir), killed on drop.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use etcd_client::Client;

pub struct Server {
    pub dir: tempfile::TempDir,
    pub url: String,
    child: Child,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    pub async fn start(etcd: &str) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let url = format!("http://127.0.0.1:{}", free_port()?);
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
        let server = Server { dir, url, child };
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

    pub async fn client(&self) -> anyhow::Result<Client> {
        let options =
            etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
        Ok(Client::connect([self.url.as_str()], Some(options)).await?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
