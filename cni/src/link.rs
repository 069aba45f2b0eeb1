//! The pod's veth over rtnetlink: made in the node's namespace with its peer created straight into the
//! container's (named `CNI_IFNAME` there, so no name is ever taken in the node's), addressed and routed
//! inside the container's, checked, and deleted. A namespace is entered on a thread of its own, whose
//! netlink socket is then the container's.

use std::fs::File;
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use meshpath_api::cni::{ContainerRef, MacAddr};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// A netlink failure, named by what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct LinkError {
    pub what: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

pub type Result<T> = std::result::Result<T, LinkError>;

fn failed<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> LinkError {
    let what = what.into();
    move |e| LinkError {
        what,
        source: Box::new(e),
    }
}

/// The node side's name: `lxc` and 12 hex digits of a hash of the container interface, as Cilium
/// names its own — the same for a repeated ADD or DEL, within `IFNAMSIZ`.
pub fn host_name(container: &ContainerRef) -> String {
    // FNV-1a: fixed by its definition, so a name never changes between plugin versions.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container
        .container_id
        .bytes()
        .chain([0])
        .chain(container.ifname.bytes())
    {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("lxc{:012x}", hash >> 16)
}

/// Runs `f` with a netlink handle of `netns` (the current namespace when `None`), on a thread of its
/// own so that the caller's namespace is never changed.
pub fn with_netlink<T, F, Fut>(netns: Option<&Path>, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(path) = netns {
                enter(path)?;
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(failed("starting the netlink runtime"))?;
            runtime.block_on(async {
                let (connection, handle, _) =
                    rtnetlink::new_connection().map_err(failed("opening a netlink socket"))?;
                tokio::spawn(connection);
                f(handle).await
            })
        })
        .join()
        .unwrap_or_else(|_| {
            Err(LinkError {
                what: "netlink thread".into(),
                source: "panicked".into(),
            })
        })
    })
}

fn enter(path: &Path) -> Result<()> {
    let what = || format!("entering the network namespace {}", path.display());
    let file = File::open(path).map_err(failed(what()))?;
    // SAFETY: setns on a descriptor of a namespace file this thread owns; only this thread moves.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(failed(what())(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The link called `name`, if there is one.
pub async fn get(handle: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(failed(format!("looking up `{name}`"))(e)),
    }
}

/// Deletes `name` (a veth takes its peer along); an interface already gone is no error.
pub async fn delete(handle: &Handle, name: &str) -> Result<bool> {
    let Some(link) = get(handle, name).await? else {
        return Ok(false);
    };
    match handle.link().del(link.header.index).execute().await {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(false),
        other => other
            .map(|()| true)
            .map_err(failed(format!("deleting `{name}`"))),
    }
}

/// The veth `host` here, its peer `ifname` in the namespace `netns` (not yet up there), both `mtu`
/// and both with `queues` receive and transmit queues (one per dataplane worker on the node).
pub async fn create_veth(
    handle: &Handle,
    host: &str,
    ifname: &str,
    netns: &Path,
    (mtu, queues): (u32, u32),
) -> Result<()> {
    let ns = File::open(netns).map_err(failed(format!("opening {}", netns.display())))?;
    let peer = LinkUnspec::new_with_name(ifname)
        .mtu(mtu)
        .append_extra_attribute(LinkAttribute::NumTxQueues(queues))
        .append_extra_attribute(LinkAttribute::NumRxQueues(queues))
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let veth = LinkVeth::new(host, ifname)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(mtu)
        .append_extra_attribute(LinkAttribute::NumTxQueues(queues))
        .append_extra_attribute(LinkAttribute::NumRxQueues(queues))
        .up()
        .build();
    handle
        .link()
        .add(veth)
        .execute()
        .await
        .map_err(failed(format!(
            "creating veth `{host}` with `{ifname}` in {}",
            netns.display()
        )))
}

/// A link's MAC address.
pub fn mac(link: &LinkMessage) -> Option<MacAddr> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => Some(MacAddr(bytes.as_slice().try_into().ok()?)),
        _ => None,
    })
}

pub fn is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}

pub fn mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

/// One pod address and the gateway it is routed through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addressed {
    pub ip: IpAddr,
    pub gateway: IpAddr,
}

/// Inside the container: `ifname` and `lo` up, each address as a host address (no prefix route: the
/// gateway is the only neighbour), the gateway on-link and the default route through it.
pub async fn configure_pod(
    handle: &Handle,
    ifname: &str,
    addresses: &[Addressed],
) -> Result<LinkMessage> {
    for name in ["lo", ifname] {
        let link = get(handle, name).await?.ok_or_else(|| missing(name))?;
        let up = LinkUnspec::new_with_index(link.header.index).up().build();
        handle
            .link()
            .set(up)
            .execute()
            .await
            .map_err(failed(format!("setting `{name}` up")))?;
    }
    let link = get(handle, ifname).await?.ok_or_else(|| missing(ifname))?;
    let index = link.header.index;
    for a in addresses {
        let full = if a.ip.is_ipv4() { 32 } else { 128 };
        let mut add = handle.address().add(index, a.ip, full).replace();
        if a.ip.is_ipv6() {
            // The gateway answers every neighbour solicitation: duplicate detection would fail.
            add.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        add.execute()
            .await
            .map_err(failed(format!("adding {} to `{ifname}`", a.ip)))?;
        for route in routes(index, a.gateway) {
            let what = format!("adding a route via {} on `{ifname}`", a.gateway);
            handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(failed(what))?;
        }
    }
    Ok(link)
}

fn missing(name: &str) -> LinkError {
    LinkError {
        what: format!("looking up `{name}`"),
        source: "no such interface".into(),
    }
}

/// The gateway on-link, then the default route through it.
fn routes(index: u32, gateway: IpAddr) -> [RouteMessage; 2] {
    match gateway {
        IpAddr::V4(gw) => [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(gw, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .build(),
            RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .output_interface(index)
                .gateway(gw)
                .build(),
        ],
        IpAddr::V6(gw) => [
            RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(gw, 128)
                .output_interface(index)
                .build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .output_interface(index)
                .gateway(gw)
                .build(),
        ],
    }
}

/// What CHECK compares: the interface's addresses and default gateways inside the container.
pub async fn pod_state(handle: &Handle, index: u32) -> Result<(Vec<IpAddr>, Vec<IpAddr>)> {
    let mut addresses = Vec::new();
    let mut found = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(message) = found
        .try_next()
        .await
        .map_err(failed("listing addresses"))?
    {
        for attribute in &message.attributes {
            if let AddressAttribute::Address(ip) = attribute {
                addresses.push(*ip);
            }
        }
    }
    let mut gateways = Vec::new();
    for all in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let mut routes = handle.route().get(all).execute();
        while let Some(route) = routes.try_next().await.map_err(failed("listing routes"))? {
            if let Some(gw) = default_gateway(&route, index) {
                gateways.push(gw);
            }
        }
    }
    Ok((addresses, gateways))
}

fn default_gateway(route: &RouteMessage, index: u32) -> Option<IpAddr> {
    if route.header.destination_prefix_length != 0 {
        return None;
    }
    let on = route
        .attributes
        .iter()
        .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
    let gw = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })?;
    on.then_some(gw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_distinct_and_fit_ifnamsiz() {
        let c = |id: &str, ifname: &str| ContainerRef {
            container_id: id.into(),
            ifname: ifname.into(),
        };
        let a = host_name(&c("c0ffee", "eth0"));
        assert_eq!(a, host_name(&c("c0ffee", "eth0")));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("lxc"));
        assert_ne!(a, host_name(&c("c0ffee", "eth1")));
        assert_ne!(host_name(&c("ab", "c")), host_name(&c("a", "bc")));
        // Fixed by FNV-1a's definition: a plugin upgrade must find the veths the old one made.
        assert_eq!(
            host_name(&c("", "")),
            format!("lxc{:012x}", 0xaf63_bd4c_8601_b7df_u64 >> 16)
        );
    }
}
