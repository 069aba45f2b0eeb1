//! `meshpath lab up`: creates whatever of the plan is missing; running it again changes nothing.
//! [`up`] makes every pod's veth itself (the plain lab of the kernel-only tests); [`up_for_cni`], for a
//! meshed lab, makes each pod's namespace with only `lo` up, as a runtime makes a sandbox, and leaves
//! its veth to the CNI plugin ([`cni`](crate::cni)).
//!
//! The nodes get no kernel path for pod traffic: no address or route on the pods' veths and no routes
//! to other nodes' pods. Only an agent carries it (its XDP programs, its host port and the routes it
//! installs there), so a test that sees pods talk knows the dataplane carried them. The lab's own pod
//! veths keep the kernel's default offloads and an MTU of 1500: the dataplane finishes offloaded
//! checksums and answers frames too big for the tunnel with "fragmentation needed". The plugin's get
//! the MTU their agent gives pods (the underlay's less the tunnel's overhead).

use crate::ip::{enable_forwarding, ensure_netns, ip, link_exists, IpError};
use crate::plan::{bridge, fabric_router, Node, Plan, Pod, OUTSIDE, OUTSIDE_ROUTER};

/// Who makes the pods' veths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PodLinks {
    Lab,
    Plugin,
}

/// The lab with every pod's veth made here.
pub fn up(plan: &Plan) -> Result<(), IpError> {
    build(plan, PodLinks::Lab)
}

/// The lab with every pod's namespace but no veth: the CNI plugin makes those once the agents run.
pub fn up_for_cni(plan: &Plan) -> Result<(), IpError> {
    build(plan, PodLinks::Plugin)
}

fn build(plan: &Plan, pods: PodLinks) -> Result<(), IpError> {
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
        for pod in &node.pods {
            ensure_netns(&pod.netns)?;
            if pods == PodLinks::Lab {
                pod_veth(node, pod, plan.workers)?;
            }
        }
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
        veth_with_queues(ns, "uplink", (port, fabric), plan.workers)?;
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
    Ok(())
}

/// A veth `name` in namespace `ns` whose peer `peer` is in namespace `peer_ns`, both ends with
/// `queues` receive and transmit queues: what one end sends on a queue the other lacks goes around
/// its XDP program.
fn veth_with_queues(
    ns: &str,
    name: &str,
    (peer, peer_ns): (&str, &str),
    queues: u8,
) -> Result<(), IpError> {
    let queues = queues.to_string();
    let each_end = ["numtxqueues", &queues, "numrxqueues", &queues];
    let mut args = vec!["-n", ns, "link", "add", name];
    args.extend(each_end);
    args.extend(["type", "veth", "peer", "name", peer]);
    args.extend(each_end);
    args.extend(["netns", peer_ns]);
    ip(&args).map(drop)
}

/// Pod `pod`'s veth, addressed and routed through the node's gateway as the plugin would, with a
/// queue per worker.
fn pod_veth(node: &Node, pod: &Pod, workers: u8) -> Result<(), IpError> {
    let (ns, p) = (node.netns.as_str(), pod.netns.as_str());
    if !link_exists(ns, &pod.node_port) {
        veth_with_queues(ns, &pod.node_port, ("eth0", p), workers)?;
    }
    ip(&["-n", ns, "link", "set", &pod.node_port, "up"])?;
    ip(&["-n", p, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n",
        p,
        "addr",
        "replace",
        &format!("{}/32", pod.addr),
        "dev",
        "eth0",
    ])?;
    let gateway = node.gateway.to_string();
    ip(&[
        "-n", p, "route", "replace", &gateway, "dev", "eth0", "scope", "link",
    ])?;
    ip(&[
        "-n", p, "route", "replace", "default", "via", &gateway, "dev", "eth0",
    ])
    .map(drop)
}
