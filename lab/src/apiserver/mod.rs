//! A stand-in Kubernetes API server for the lab (`meshpath-lab apiserver`): no kube-apiserver can be
//! installed here, so this one serves a cluster's objects with the real protocol, and the agent's own
//! kube client, watchers and reflectors run against it end to end.
//!
//! It serves the YAML state directory the lab and the demo write ([`store`]: every change becomes a
//! watch event with the next resourceVersion), over HTTPS with a CA and a serving certificate of its
//! own ([`tls`]; the kubeconfig it writes trusts that CA and carries the ServiceAccount's token), to
//! the ServiceAccount of `deploy/rbac.yaml` with exactly that file's rules ([`rbac`]: anything else is
//! 403 Forbidden). What it answers and how is in [`http`]; it serves only what the agent reads, and
//! only reads — a stand-in, never part of the agent.
//!
//! The lab runs one per cluster, in the network namespace of the cluster's first node beside its etcd,
//! on port 6443 of the node's address ([`process`]).

mod http;
pub mod process;
mod rbac;
mod selector;
pub mod store;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use rbac::Rbac;
use store::Store;

/// The RBAC manifests the agent is deployed with: what the stand-in grants.
pub const DEPLOYED_RBAC: &str = include_str!("../../../deploy/rbac.yaml");

/// How often the state directory is read for changes.
const REFRESH: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct Options {
    /// The directory of Kubernetes-shaped YAML served.
    pub state_dir: PathBuf,
    /// Certificates, the saved objects and the kubeconfig: what a restart keeps.
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The RBAC manifests (`deploy/rbac.yaml`'s text).
    pub rbac: String,
    /// How often a watch that asked for them gets a BOOKMARK.
    pub bookmark_every: Duration,
}

/// A running stand-in: its address, its kubeconfig, and its store (for tests to compact).
pub struct ApiServer {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub store: Arc<Mutex<Store>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs the stand-in until SIGTERM or SIGINT (`meshpath-lab apiserver`), logging to stderr.
pub fn run(options: Options) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = ApiServer::start(options).await?;
        println!(
            "serving on https://{}; kubeconfig {}",
            server.addr,
            server.kubeconfig.display()
        );
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        server.stop().await;
        Ok(())
    })
}

/// The token that stands for the ServiceAccount (the stand-in's own, kept with its data).
fn token(data: &std::path::Path) -> anyhow::Result<String> {
    let path = data.join("token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        return Ok(token.trim().to_owned());
    }
    let mut bytes = [0u8; 24];
    let mut file = std::fs::File::open("/dev/urandom").context("/dev/urandom")?;
    std::io::Read::read_exact(&mut file, &mut bytes)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, &token)?;
    Ok(token)
}

impl ApiServer {
    /// Serves `options.state_dir` on `options.listen` until [`ApiServer::stop`].
    pub async fn start(options: Options) -> anyhow::Result<ApiServer> {
        let rbac = Rbac::from_manifests(&options.rbac)?;
        let listener = TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("listening on {}", options.listen))?;
        let addr = listener.local_addr()?;
        let data = &options.data_dir;
        let store = Store::open(&options.state_dir, data)?;
        let pki = tls::Pki::ensure(data, addr)?;
        let token = token(data)?;
        let kubeconfig = data.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            pki.kubeconfig(&format!("https://{addr}"), &token),
        )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config()?);
        let store = Arc::new(Mutex::new(store));
        let shared = Arc::new(http::Shared {
            store: store.clone(),
            rbac,
            token,
            bookmark_every: options.bookmark_every,
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(listener, acceptor, shared, stopped));
        tracing::info!(%addr, state = %options.state_dir.display(), "stand-in API server serving");
        Ok(ApiServer {
            addr,
            kubeconfig,
            store,
            stop,
            task,
        })
    }

    /// Forgets every watch event so far: a watch from before now gets 410 Gone.
    pub fn compact(&self) {
        self.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .compact();
    }

    /// Stops serving, closing every connection (as a server that goes away does).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<http::Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    let mut refresh = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = refresh.tick() => {
                let refreshed = shared.store.lock().unwrap_or_else(|p| p.into_inner()).refresh();
                if let Err(error) = refreshed {
                    tracing::warn!("state directory not read, objects unchanged: {error:#}");
                }
            }
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (acceptor, shared) = (acceptor.clone(), shared.clone());
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let service = service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(http::handle(shared, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}
