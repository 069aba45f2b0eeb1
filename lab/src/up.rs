//! `meshpath lab up`: creates whatever of the plan is missing; running it again changes nothing.
//!
//! The nodes get no kernel path for pod traffic: no address or route on the pods' veths and no routes
//! to other nodes' pods. Only an agent carries it (its XDP programs, its host port and the routes it
//! installs there), so a test that sees pods talk knows the dataplane carried them. Pods keep the
//! kernel's default offloads and an MTU of 1500: the dataplane finishes offloaded checksums and
//! answers frames too big for the tunnel with "fragmentation needed".

use crate::ip::{enable_forwarding, ensure_netns, ip, link_exists, IpError};
use crate::plan::{bridge, fabric_router, Node, Plan, OUTSIDE, OUTSIDE_ROUTER};

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
    outside_up(plan)?;
    for node in &plan.nodes {
        node_up(plan, node)?;
    }
    crate::external::up(plan)
}

/// Has the fabric route every node's pod CIDR to that node, as a cloud's route table or BGP does for
/// native routing. The frames reach the node's uplink, where only its agent takes them (its XDP
/// program owns its pod prefixes): the node's kernel still has no path to its pods.
pub fn route_pod_cidrs(plan: &Plan) -> Result<(), IpError> {
    for node in &plan.nodes {
        let (net, len) = node.pod_cidr;
        let cidr = format!("{net}/{len}");
        let via = node.underlay.to_string();
        ip(&["-n", &plan.fabric, "route", "replace", &cidr, "via", &via])?;
    }
    Ok(())
}

/// A host outside every cluster, behind the fabric's router: what pods reach beyond the mesh.
fn outside_up(plan: &Plan) -> Result<(), IpError> {
    let (ns, fabric) = (plan.outside.as_str(), plan.fabric.as_str());
    ensure_netns(ns)?;
    if !link_exists(ns, "eth0") {
        ip(&[
            "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "outside", "netns",
            fabric,
        ])?;
    }
    ip(&[
        "-n",
        fabric,
        "addr",
        "replace",
        &format!("{OUTSIDE_ROUTER}/24"),
        "dev",
        "outside",
    ])?;
    ip(&["-n", fabric, "link", "set", "outside", "up"])?;
    ip(&[
        "-n",
        ns,
        "addr",
        "replace",
        &format!("{OUTSIDE}/24"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        ns,
        "route",
        "replace",
        "default",
        "via",
        &OUTSIDE_ROUTER.to_string(),
    ])
    .map(drop)
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
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
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
        let p = pod.netns.as_str();
        ip(&["-n", p, "link", "set", "eth0", "up"])?;
        ip(&["-n", p, "link", "set", "lo", "up"])?;
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
