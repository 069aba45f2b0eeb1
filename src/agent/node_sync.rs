//! Keeping the kernel in step with the mesh's nodes, off the packet path: the uplink program's tunnel
//! peers (tunnel datagrams from anyone else are dropped in XDP) and the node's routes to every pod
//! CIDR into the host port. Runs whenever the node directory changes, and every few seconds to retry
//! what failed.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshpath_control::state::Cidr;
use meshpath_xdp_redirect::XdpRedirect;
use tokio_util::sync::CancellationToken;

use super::host_port::Routes;
use super::nodes::NodeDirectory;

const RETRY: Duration = Duration::from_secs(5);

pub async fn sync_forever(
    nodes: NodeDirectory,
    uplink: Arc<Mutex<XdpRedirect>>,
    mut routes: Routes,
    own: Vec<IpAddr>,
    cancel: CancellationToken,
) {
    loop {
        if let Err(error) = sync(&nodes, &uplink, &mut routes, &own) {
            tracing::warn!(%error, "node sync (retrying)");
        }
        tokio::select! {
            () = nodes.changed() => {}
            () = tokio::time::sleep(RETRY) => {}
            () = cancel.cancelled() => return,
        }
    }
}

fn sync(
    nodes: &NodeDirectory,
    uplink: &Mutex<XdpRedirect>,
    routes: &mut Routes,
    own: &[IpAddr],
) -> anyhow::Result<()> {
    let rows = nodes.rows();
    let mut peers: Vec<IpAddr> = rows
        .iter()
        .filter_map(|row| row.address)
        .filter(|addr| !own.contains(addr))
        .collect();
    peers.sort();
    peers.dedup();
    let cidrs: Vec<_> = rows
        .iter()
        .flat_map(|row| row.pod_cidrs.iter())
        .map(|cidr| Cidr {
            addr: cidr.address.into(),
            prefix_len: cidr.prefix_len,
        })
        .collect();
    uplink
        .lock()
        .map_err(|_| anyhow::anyhow!("uplink program lock poisoned"))?
        .set_tunnel_peers(&peers)?;
    routes.sync(&cidrs)
}
