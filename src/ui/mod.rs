//! `meshpath ui`: a live service map of the mesh in the browser, as Hubble UI draws Cilium's — the
//! clusters with their nodes and each remote's readiness, the workloads grouped by namespace and
//! cluster with the flows between them as edges (denied ones red, with their reason), the services
//! with their backends per cluster and state, and a table of the latest flows, all under the filters
//! of `meshpath observe`.
//!
//! It reads the agents' sockets as the other commands do ([`feed`]: a thread per observe socket,
//! one polling every status), and aggregates on the server: each open page has its own filter, its
//! own [`service_map`] and [`flow_table`] ([`page`]), and is sent the aggregate, not the flows, by
//! server-sent events ([`server`]). The page's three files are built into the binary; it draws the
//! map itself with SVG and fetches nothing from anywhere else.
//!
//! It serves on 127.0.0.1:12000 by default (Hubble UI's port), without authentication, as the
//! sockets it reads are: give `--listen` another address only behind something that checks who asks.

mod feed;
mod filter;
mod flow_table;
mod mesh;
mod page;
mod server;
mod service_map;

use std::future::IntoFuture;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct UiArgs {
    /// The address to serve the page on (only this machine by default).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:12000")]
    pub listen: SocketAddr,
    /// An agent's status socket (its observe socket is beside it); give it once per agent, or every
    /// node's, for a mesh-wide view.
    #[arg(long, env = "MESHPATH_SOCKET", value_name = "PATH", value_delimiter = ',',
          default_value = meshpath_api::client::DEFAULT_SOCKET)]
    pub socket: Vec<PathBuf>,
}

pub fn run(args: UiArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: UiArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let address = listener.local_addr()?;
    let feed = feed::Feed::new();
    feed.start(&args.socket);
    // The line a script (or the browser test) waits for: the address, with the port chosen.
    let mut out = std::io::stdout();
    writeln!(
        out,
        "meshpath ui: the service map of {} agent(s) on http://{address}/",
        args.socket.len()
    )?;
    out.flush()?;
    // Open pages never end their event streams: Ctrl-C ends the process, not a graceful drain.
    tokio::select! {
        served = axum::serve(listener, server::router(feed)).into_future() => {
            served.context("serving the page")
        }
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
