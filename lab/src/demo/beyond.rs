//! Step 5, beyond the mesh: the node's own path. x-wing fetches a page from a host outside every
//! cluster, which sees the node's address (masquerading), not the pod's; the node reaches x-wing over TCP
//! as a kubelet probe does, and x-wing reaches its node; and x-wing fetches 4 MB from rebel-base in the
//! other cluster, both raised to an MTU of 1500 (pods that set their own, above the one the plugin gave
//! them for the tunnel), which only works if the tunnel's "packet too big" answers make TCP find the
//! path MTU.

use std::time::Duration;

use serde::Serialize;

use super::scene::{rebel_ip, Scene, BACKEND_PORT};
use crate::mesh::wait;
use crate::plan::OUTSIDE;

/// What step 5 found; each is true only when it happened.
#[derive(Debug, Default, Serialize)]
pub struct BeyondMesh {
    pub outside_reached: bool,
    pub outside_saw_node_address: bool,
    pub node_to_pod: bool,
    pub pod_to_node: bool,
    pub pmtu_large_transfer: bool,
}

const OUTSIDE_PORT: u16 = 80;
/// Where x-wing listens for the node's probe, and the node for x-wing (kubelet's port).
const PROBE_PORT: u16 = 8081;
const KUBELET_PORT: u16 = 10250;
const LARGE: usize = 4 * 1024 * 1024;
/// The underlay's MTU: what a pod that ignores the tunnel's overhead uses.
const FULL_MTU: u32 = 1500;

pub fn beyond_mesh(scene: &Scene) -> anyhow::Result<BeyondMesh> {
    let mut report = BeyondMesh::default();
    let x_wing = scene.pod_ns(1, false);
    let (node_ns, node_ip) = scene.x_wing_node(1);

    let outside = scene.www_dir("outside")?;
    std::fs::write(outside.join("index.html"), "outside\n")?;
    let page = format!("http://{OUTSIDE}:{OUTSIDE_PORT}/");
    scene.serve(scene.outside_ns(), &outside, OUTSIDE_PORT, &page, "outside")?;
    // The policy of step 3 may still be leaving x-wing's tables: wait for the way out.
    report.outside_reached = wait(Duration::from_secs(20), || {
        body(scene, &x_wing, &page).as_deref() == Some("outside")
    });
    let log = std::fs::read_to_string(scene.server_log("outside")).unwrap_or_default();
    report.outside_saw_node_address = client_addresses(&log).any(|a| a == node_ip)
        && !client_addresses(&log).any(|a| a == scene.x_wing_ip(1));

    let probe_root = scene.www_dir("x-wing")?;
    std::fs::write(probe_root.join("healthz"), "ok\n")?;
    let probe = format!("http://{}:{PROBE_PORT}/healthz", scene.x_wing_ip(1));
    scene.serve(&x_wing, &probe_root, PROBE_PORT, &probe, "x-wing-probe")?;
    report.node_to_pod = body(scene, &node_ns, &probe).as_deref() == Some("ok");

    let kubelet_root = scene.www_dir("kubelet")?;
    std::fs::write(kubelet_root.join("healthz"), "ok\n")?;
    let kubelet = format!("http://{node_ip}:{KUBELET_PORT}/healthz");
    scene.serve(&node_ns, &kubelet_root, KUBELET_PORT, &kubelet, "kubelet")?;
    report.pod_to_node = body(scene, &x_wing, &kubelet).as_deref() == Some("ok");

    scene.raise_pod_mtu(1, false, FULL_MTU)?;
    scene.raise_pod_mtu(2, true, FULL_MTU)?;
    std::fs::write(scene.www(2).join("large.bin"), vec![0x5au8; LARGE])?;
    let large = format!("http://{}:{BACKEND_PORT}/large.bin", rebel_ip(2));
    report.pmtu_large_transfer = downloaded(scene, &x_wing, &large) == Some(LARGE);
    Ok(report)
}

/// The body of a GET from inside `ns`, trimmed; `None` on any failure.
fn body(scene: &Scene, ns: &str, url: &str) -> Option<String> {
    let out = scene.exec(ns, &["curl", "-s", "-f", "-m", "3", url]).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// How many bytes a GET from inside `ns` brought, if it completed.
fn downloaded(scene: &Scene, ns: &str, url: &str) -> Option<usize> {
    let args = [
        "curl",
        "-s",
        "-f",
        "-m",
        "30",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        url,
    ];
    let out = scene.exec(ns, &args).ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The client addresses in python3 http.server's request log (`ADDR - - [date] "GET …" …`).
fn client_addresses(log: &str) -> impl Iterator<Item = String> + '_ {
    log.lines()
        .filter(|l| l.contains("\"GET "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_come_from_the_request_lines_only() {
        let log = "Serving HTTP on 0.0.0.0 port 80 (http://0.0.0.0:80/) ...\n\
                   198.18.1.1 - - [30/Nov/2026 20:00:00] \"GET / HTTP/1.1\" 200 -\n";
        assert_eq!(client_addresses(log).collect::<Vec<_>>(), ["198.18.1.1"]);
    }
}
