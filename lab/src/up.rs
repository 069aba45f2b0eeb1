//! `meshpath lab up`: creates whatever of the plan is missing; running it again changes nothing.

use crate::ip::{complete_checksums, enable_forwarding, ensure_netns, ip, link_exists, IpError};
use crate::plan::{bridge, fabric_router, Node, Plan};

/// The pods' MTU: the underlay's 1500 less the tunnel's overhead.
pub const POD_MTU: u16 = 1450;

pub fn up(plan: &Plan) -> Result<(), IpError> {
    let fabric = plan.fabric.as_str();
    ensure_netns(fabric)?;
    enable_forwarding(fabric)?;
    for &c in &plan.clusters {
        let br = bridge(c);
        if !link_exists(fabric, &br) {
            ip(&["-n", fabric, "link", "add", &br, "type", "bridge"])?;
        }
        let router = format!("{}/24", fabric_router(c));
        ip(&["-n", fabric, "addr", "replace", &router, "dev", &br])?;
        ip(&["-n", fabric, "link", "set", &br, "up"])?;
    }
    for node in &plan.nodes {
        node_up(plan, node)?;
    }
    Ok(())
}

fn node_up(plan: &Plan, node: &Node) -> Result<(), IpError> {
    let (ns, fabric) = (node.netns.as_str(), plan.fabric.as_str());
    ensure_netns(ns)?;
    enable_forwarding(ns)?;
    if !link_exists(ns, "uplink") {
        let port = node.fabric_port.as_str();
        ip(&[
            "-n", ns, "link", "add", "uplink", "type", "veth", "peer", "name", port, "netns",
            fabric,
        ])?;
    }
    ip(&[
        "-n",
        fabric,
        "link",
        "set",
        &node.fabric_port,
        "master",
        &bridge(node.cluster),
        "up",
    ])?;
    ip(&["-n", ns, "link", "set", "uplink", "up"])?;
    complete_checksums(ns, "uplink")?;
    ip(&[
        "-n",
        ns,
        "addr",
        "replace",
        &format!("{}/24", node.underlay),
        "dev",
        "uplink",
    ])?;
    let router = fabric_router(node.cluster).to_string();
    ip(&["-n", ns, "route", "replace", "default", "via", &router])?;
    // Without an agent the kernel still routes pods between the nodes of one cluster; between
    // clusters only the tunnel can (the fabric knows no pod routes).
    for peer in plan
        .nodes
        .iter()
        .filter(|p| p.cluster == node.cluster && p.node != node.node)
    {
        let cidr = format!("{}/{}", peer.pod_cidr.0, peer.pod_cidr.1);
        ip(&[
            "-n",
            ns,
            "route",
            "replace",
            &cidr,
            "via",
            &peer.underlay.to_string(),
        ])?;
    }
    let gateway = node.gateway.to_string();
    for pod in &node.pods {
        ensure_netns(&pod.netns)?;
        if !link_exists(ns, &pod.node_port) {
            let p = pod.netns.as_str();
            ip(&[
                "-n",
                ns,
                "link",
                "add",
                &pod.node_port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                p,
            ])?;
        }
        ip(&["-n", ns, "link", "set", &pod.node_port, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "replace",
            &format!("{gateway}/32"),
            "dev",
            &pod.node_port,
        ])?;
        ip(&[
            "-n",
            ns,
            "route",
            "replace",
            &format!("{}/32", pod.addr),
            "dev",
            &pod.node_port,
        ])?;
        let p = pod.netns.as_str();
        ip(&["-n", p, "link", "set", "eth0", "up"])?;
        complete_checksums(p, "eth0")?;
        // Room for VXLAN's 50 bytes on the 1500-byte underlay, as Cilium sizes pod MTUs.
        ip(&["-n", p, "link", "set", "eth0", "mtu", &POD_MTU.to_string()])?;
        ip(&[
            "-n",
            p,
            "addr",
            "replace",
            &format!("{}/32", pod.addr),
            "dev",
            "eth0",
        ])?;
        ip(&[
            "-n", p, "route", "replace", &gateway, "dev", "eth0", "scope", "link",
        ])?;
        ip(&[
            "-n", p, "route", "replace", "default", "via", &gateway, "dev", "eth0",
        ])?;
    }
    Ok(())
}
