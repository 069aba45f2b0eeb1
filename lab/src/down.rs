//! `meshpath lab down`: first runs the CNI plugin's DEL for every pod it made (while the agents still
//! run, so each lets its pod go), then ends the processes running in the lab's namespaces (agents,
//! etcd, iperf3 the lab or its tests started there), then deletes the namespaces, which takes their
//! veths, bridges and XDP programs with them, and the agents' pinned maps. Running it again finds
//! nothing and succeeds.

use crate::ip::{ip, netns_list, netns_pids, IpError};
use crate::plan::is_lab_netns;

/// Returns the namespaces it deleted.
pub fn down(prefix: &str) -> Result<Vec<String>, IpError> {
    for failure in crate::cni::del_pods(prefix) {
        eprintln!("lab down: {failure}");
    }
    let doomed: Vec<String> = netns_list()?
        .into_iter()
        .filter(|n| is_lab_netns(prefix, n))
        .collect();
    for signal in ["TERM", "KILL"] {
        let pids: Vec<u32> = doomed
            .iter()
            .flat_map(|ns| netns_pids(ns).unwrap_or_default())
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            signal_pid(pid, signal);
        }
        wait_until_empty(&doomed);
    }
    for ns in &doomed {
        ip(&["netns", "del", ns])?;
    }
    // The agents' pinned maps outlive their namespaces in bpffs.
    let _ = std::fs::remove_dir_all(super::mesh::pin_dir(prefix));
    Ok(doomed)
}

/// Each pid was just listed as running inside a lab namespace: a process of the lab.
fn signal_pid(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status();
}

fn wait_until_empty(namespaces: &[String]) {
    for _ in 0..20 {
        if namespaces
            .iter()
            .all(|ns| netns_pids(ns).unwrap_or_default().is_empty())
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
