//! The commands. ADD: the node's pod network from the agent, one address per family, the veth made
//! and configured, then the agent asked to attach it — it answers once the pod's port is served and
//! its endpoint is in the tables, so traffic flows when ADD returns; whatever fails undoes what ADD
//! did. DEL: detach, delete the veth, release the addresses, each step fine with its object already
//! gone. CHECK: compares the veth, addresses, routes and the agent's view with what ADD set up.
//! STATUS: whether the agent can take an ADD now.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use meshpath_api::client::ClientError;
use meshpath_api::cni::{
    ask, AttachedPod, ContainerRef, PodAttachment, PodName, PodNetwork, PodRefusal, PodRequest,
    PodResponse, RefusalReason,
};

use crate::ipam::{self, Ipam, IpamError};
use crate::link::{self, Addressed, LinkError};
use crate::spec::{CniError, CniResult, Dns, ErrorCode, Interface, IpConfig, NetConf, Route};

/// How long the agent may take to answer: ADD waits for the pod's endpoint (15 s at most).
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

fn agent(conf: &NetConf, request: &PodRequest) -> Result<PodResponse, CniError> {
    ask(&conf.agent_socket, request, AGENT_TIMEOUT).map_err(|error| match error {
        ClientError::Connect { .. } | ClientError::Timeout { .. } => CniError::new(
            ErrorCode::TryAgainLater,
            "the meshpath agent is not answering",
            error.to_string(),
        ),
        other => CniError::new(
            ErrorCode::Io,
            "talking to the meshpath agent",
            other.to_string(),
        ),
    })
}

fn refusal(refusal: PodRefusal) -> CniError {
    let code = match refusal.reason {
        RefusalReason::TryAgainLater | RefusalReason::NoRoom => ErrorCode::TryAgainLater,
        RefusalReason::Invalid => ErrorCode::InvalidConfig,
        RefusalReason::UnknownContainer => ErrorCode::UnknownContainer,
        RefusalReason::Failed => ErrorCode::Agent,
    };
    CniError::new(code, "the meshpath agent refused", refusal.message)
}

fn unexpected(answer: PodResponse) -> CniError {
    match answer {
        PodResponse::Refused(r) => refusal(r),
        other => CniError::new(
            ErrorCode::Agent,
            "unexpected answer from the meshpath agent",
            format!("{other:?}"),
        ),
    }
}

fn netlink(error: LinkError) -> CniError {
    CniError::new(
        ErrorCode::Io,
        "configuring the pod's interface",
        error.to_string(),
    )
}

fn addresses(error: IpamError) -> CniError {
    let code = match error {
        IpamError::Io(..) => ErrorCode::Io,
        IpamError::Full(_) | IpamError::TooSmall(_) => ErrorCode::NoAddress,
        // What was asked for is not this network's to give.
        IpamError::Outside { .. } | IpamError::Reserved { .. } | IpamError::TwoInOneCidr(..) => {
            ErrorCode::InvalidConfig
        }
        // Another container holds it: most often a pod's earlier sandbox whose DEL is yet to come.
        IpamError::Taken { .. } => ErrorCode::TryAgainLater,
    };
    CniError::new(code, "allocating the pod's addresses", error.to_string())
}

pub fn network(conf: &NetConf) -> Result<PodNetwork, CniError> {
    match agent(conf, &PodRequest::Network)? {
        PodResponse::Network(network) => Ok(network),
        other => Err(unexpected(other)),
    }
}

/// ADD; `requested`: the addresses the runtime asks for (`IP` in `CNI_ARGS`, `runtimeConfig.ips`).
pub fn add(
    conf: &NetConf,
    container: &ContainerRef,
    netns: &Path,
    pod: &PodName,
    requested: &[IpAddr],
) -> Result<CniResult, CniError> {
    let network = network(conf)?;
    let ipam = Ipam::new(&conf.data_dir, &conf.name);
    let leased = ipam
        .allocate(container, &network.pod_cidrs, requested)
        .map_err(addresses)?;
    let wired = wire(conf, container, netns, pod, &network, &leased);
    if wired.is_err() {
        // Undone whole: a half-made pod neither keeps its addresses nor leaves a veth behind.
        let _ = detach_and_delete(conf, container);
        let _ = ipam.release(container);
    }
    wired
}

fn wire(
    conf: &NetConf,
    container: &ContainerRef,
    netns: &Path,
    pod: &PodName,
    network: &PodNetwork,
    leased: &[(IpAddr, meshpath_api::node::Cidr)],
) -> Result<CniResult, CniError> {
    let host = link::host_name(container);
    let ifname = container.ifname.clone();
    let addressed: Vec<Addressed> = leased
        .iter()
        .map(|(ip, cidr)| Addressed {
            ip: *ip,
            gateway: ipam::gateway(cidr),
        })
        .collect();
    let host_link = link::with_netlink(None, |h| async move {
        // What a crashed ADD left of this container interface goes first.
        link::delete(&h, &host).await?;
        let shape = (network.mtu, network.queues.max(1));
        link::create_veth(&h, &host, &ifname, netns, shape).await?;
        link::get(&h, &host).await
    })
    .map_err(netlink)?;
    let ifname = container.ifname.clone();
    let pod_link = link::with_netlink(Some(netns), |h| async move {
        link::configure_pod(&h, &ifname, &addressed).await
    })
    .map_err(netlink)?;
    let mac = link::mac(&pod_link).ok_or_else(|| {
        CniError::new(
            ErrorCode::Io,
            "configuring the pod's interface",
            "it has no MAC address",
        )
    })?;
    let host = link::host_name(container);
    let attachment = PodAttachment {
        container: container.clone(),
        pod: pod.clone(),
        host_interface: host.clone(),
        mac,
        addresses: leased.iter().map(|(ip, _)| *ip).collect(),
    };
    let attached = match agent(conf, &PodRequest::Attach(attachment))? {
        PodResponse::Attached(attached) => attached,
        other => return Err(unexpected(other)),
    };
    Ok(result(
        conf,
        container,
        netns,
        network,
        leased,
        host_link.as_ref().and_then(link::mac),
        mac,
        &attached,
    ))
}

#[allow(clippy::too_many_arguments)]
fn result(
    conf: &NetConf,
    container: &ContainerRef,
    netns: &Path,
    network: &PodNetwork,
    leased: &[(IpAddr, meshpath_api::node::Cidr)],
    host_mac: Option<meshpath_api::cni::MacAddr>,
    mac: meshpath_api::cni::MacAddr,
    attached: &AttachedPod,
) -> CniResult {
    let interfaces = vec![
        Interface {
            name: attached.host_interface.clone(),
            mac: host_mac.map(|m| m.to_string()).unwrap_or_default(),
            mtu: Some(network.mtu),
            sandbox: None,
        },
        Interface {
            name: container.ifname.clone(),
            mac: mac.to_string(),
            mtu: Some(network.mtu),
            sandbox: Some(netns.display().to_string()),
        },
    ];
    let ips = leased
        .iter()
        .map(|(ip, cidr)| IpConfig {
            address: format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }),
            gateway: Some(ipam::gateway(cidr)),
            interface: Some(1),
        })
        .collect();
    let routes = leased
        .iter()
        .map(|(ip, cidr)| Route {
            dst: if ip.is_ipv4() { "0.0.0.0/0" } else { "::/0" }.into(),
            gw: Some(ipam::gateway(cidr)),
        })
        .collect();
    CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces,
        ips,
        routes,
        dns: Dns {},
    }
}

/// The agent lets the pod go (an agent not running has nothing to let go of: a restarted one forgets
/// pods whose veth is gone), then the veth goes.
fn detach_and_delete(conf: &NetConf, container: &ContainerRef) -> Result<(), CniError> {
    match agent(conf, &PodRequest::Detach(container.clone())) {
        Ok(PodResponse::Detached { .. }) => {}
        Ok(other) => eprintln!(
            "meshpath-cni: detaching {container}: {:?}",
            unexpected(other)
        ),
        Err(error) => eprintln!("meshpath-cni: detaching {container}: {error}"),
    }
    let host = link::host_name(container);
    link::with_netlink(None, |h| async move { link::delete(&h, &host).await })
        .map(drop)
        .map_err(netlink)
}

pub fn del(conf: &NetConf, container: &ContainerRef) -> Result<(), CniError> {
    detach_and_delete(conf, container)?;
    Ipam::new(&conf.data_dir, &conf.name)
        .release(container)
        .map(drop)
        .map_err(addresses)
}

fn differs(details: String) -> CniError {
    CniError::new(
        ErrorCode::CheckFailed,
        "the pod's network is not as ADD left it",
        details,
    )
}

pub fn check(conf: &NetConf, container: &ContainerRef, netns: &Path) -> Result<(), CniError> {
    let held = Ipam::new(&conf.data_dir, &conf.name)
        .held_by(container)
        .map_err(addresses)?;
    if held.is_empty() {
        return Err(CniError::new(
            ErrorCode::UnknownContainer,
            "unknown container",
            format!("{container} holds no address"),
        ));
    }
    if let Some(prev) = &conf.prev_result {
        let mut listed: Vec<IpAddr> = prev
            .ips
            .iter()
            .filter_map(|ip| ip.address.split('/').next()?.parse().ok())
            .collect();
        listed.sort();
        if listed != held {
            return Err(differs(format!(
                "prevResult lists {listed:?}, the container holds {held:?}"
            )));
        }
    }
    let host = link::host_name(container);
    let host_link =
        link::with_netlink(None, |h| async move { link::get(&h, &host).await }).map_err(netlink)?;
    match host_link {
        Some(l) if link::is_up(&l) => {}
        Some(_) => return Err(differs(format!("`{}` is down", link::host_name(container)))),
        None => return Err(differs(format!("`{}` is gone", link::host_name(container)))),
    }
    let ifname = container.ifname.clone();
    let inside = link::with_netlink(Some(netns), |h| async move {
        let Some(l) = link::get(&h, &ifname).await? else {
            return Ok(None);
        };
        let (addresses, gateways) = link::pod_state(&h, l.header.index).await?;
        Ok(Some((link::is_up(&l), link::mtu(&l), addresses, gateways)))
    })
    .map_err(netlink)?;
    let Some((up, mtu, addresses, gateways)) = inside else {
        return Err(differs(format!(
            "`{}` is gone from {}",
            container.ifname,
            netns.display()
        )));
    };
    if !up {
        return Err(differs(format!("`{}` is down", container.ifname)));
    }
    if let Some(ip) = held.iter().find(|ip| !addresses.contains(ip)) {
        return Err(differs(format!("`{}` lacks {ip}", container.ifname)));
    }
    let network = network(conf)?;
    if mtu != Some(network.mtu) {
        return Err(differs(format!(
            "`{}` has MTU {mtu:?}, the node's pods {}",
            container.ifname, network.mtu
        )));
    }
    for cidr in &network.pod_cidrs {
        if held.iter().any(|ip| ipam::contains(cidr, *ip))
            && !gateways.contains(&ipam::gateway(cidr))
        {
            return Err(differs(format!(
                "no default route via {}",
                ipam::gateway(cidr)
            )));
        }
    }
    match agent(conf, &PodRequest::Check(container.clone()))? {
        PodResponse::Attached(attached) => {
            let mut served = attached.addresses.clone();
            served.sort();
            if served != held {
                return Err(differs(format!(
                    "the agent serves {served:?}, the container holds {held:?}"
                )));
            }
            Ok(())
        }
        PodResponse::Refused(r) if r.reason == RefusalReason::UnknownContainer => {
            Err(differs(r.message))
        }
        other => Err(unexpected(other)),
    }
}

/// STATUS (1.1.0): ready when the agent answers with a pod network.
pub fn status(conf: &NetConf) -> Result<(), CniError> {
    network(conf).map(drop).map_err(|e| {
        CniError::new(
            ErrorCode::NotAvailable,
            "the meshpath agent cannot take a pod now",
            e.to_string(),
        )
    })
}
