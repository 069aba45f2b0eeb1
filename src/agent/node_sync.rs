//! Keeping the kernel in step with the mesh's nodes, off the packet path: the uplink program's tunnel
//! peers (tunnel datagrams from anyone else are dropped in XDP), the node's routes to every pod CIDR
//! into the host port, and the MACs of the nodes on the uplink's segment ([`super::neighbours`]),
//! which go to the snapshot builder. Runs whenever the node directory changes, every few seconds to
//! retry what failed and follow the neighbour table, and every half second while a neighbour is not
//! resolved yet.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshpath_control::snapshot::{Change, NodeMacs};
use meshpath_control::state::Cidr;
use meshpath_xdp_redirect::XdpRedirect;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use arc_swap::ArcSwap;
use meshpath_dataplane::snapshot::Tables;

use super::host_port::Routes;
use super::neighbours::Neighbours;
use super::nodes::NodeDirectory;

const RETRY: Duration = Duration::from_secs(5);
const RESOLVING: Duration = Duration::from_millis(500);

/// What the sync keeps in step, and where it hands the neighbours' MACs.
pub struct NodeSync {
    /// On an external workload, the tables whose service frontends are routed into the host port too
    /// (the host's processes call them; a node's pods reach them without the kernel).
    pub frontends: Option<Arc<ArcSwap<Tables>>>,
    pub nodes: NodeDirectory,
    pub uplink: Arc<Mutex<XdpRedirect>>,
    pub routes: Routes,
    pub neighbours: Neighbours,
    pub builder: mpsc::Sender<Change>,
    /// This node's own underlay addresses.
    pub own: Vec<IpAddr>,
}

pub async fn sync_forever(mut sync: NodeSync, cancel: CancellationToken) {
    let mut sent: Option<NodeMacs> = None;
    loop {
        let pending = match sync.once(&mut sent).await {
            Ok(pending) => pending,
            Err(error) => {
                tracing::warn!(%error, "node sync (retrying)");
                0
            }
        };
        let wait = if pending > 0 { RESOLVING } else { RETRY };
        tokio::select! {
            () = sync.nodes.changed() => {}
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => return,
        }
    }
}

impl NodeSync {
    /// One round; how many neighbours are still unresolved.
    async fn once(&mut self, sent: &mut Option<NodeMacs>) -> anyhow::Result<usize> {
        let rows = self.nodes.rows();
        let mut peers: Vec<IpAddr> = rows
            .iter()
            .filter_map(|row| row.address)
            .filter(|addr| !self.own.contains(addr))
            .collect();
        peers.sort();
        peers.dedup();
        let mut cidrs: Vec<_> = rows
            .iter()
            .flat_map(|row| row.pod_cidrs.iter())
            .map(|cidr| Cidr {
                addr: cidr.address.into(),
                prefix_len: cidr.prefix_len,
            })
            .collect();
        if let Some(tables) = &self.frontends {
            cidrs.extend(frontend_routes(&tables.load()));
        }
        self.uplink
            .lock()
            .map_err(|_| anyhow::anyhow!("uplink program lock poisoned"))?
            .set_tunnel_peers(&peers)?;
        // The neighbours before the routes: a failed route must not hold up their MACs.
        let resolved = self.neighbours.sync(&peers);
        let routes = self.routes.sync(&cidrs);
        let resolved = resolved?;
        if sent.as_ref() != Some(&resolved.macs) {
            tracing::info!(
                resolved = resolved.macs.len(),
                pending = resolved.pending,
                "neighbour nodes on the uplink"
            );
            self.builder
                .send(Change::NodeMacs(resolved.macs.clone()))
                .await
                .map_err(|_| anyhow::anyhow!("the snapshot builder stopped"))?;
            *sent = Some(resolved.macs);
        }
        routes?;
        Ok(resolved.pending)
    }
}

/// One host route per service frontend address.
fn frontend_routes(tables: &Tables) -> Vec<Cidr> {
    let mut addrs: Vec<_> = tables.services.iter().map(|s| s.frontend.addr).collect();
    addrs.sort();
    addrs.dedup();
    addrs
        .into_iter()
        .map(|addr| Cidr {
            addr,
            prefix_len: if addr.is_ipv4() { 32 } else { 128 },
        })
        .collect()
}
