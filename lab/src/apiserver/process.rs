//! The stand-in as the lab runs it: one `meshpath-lab apiserver` process per cluster, in the network
//! namespace of the cluster's first node beside its etcd, on port 6443 of that node's address, serving
//! the cluster's state directory (what [`mesh::write_state`] writes). Its certificates, token, saved
//! objects and the kubeconfig every agent of the cluster reads live in the cluster's directory;
//! `lab down` ends it with the namespaces.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::mesh::{self, cluster_dir, dir};
use crate::plan::Plan;

/// Where cluster `c`'s stand-in listens.
pub fn address(c: u8) -> String {
    format!("198.18.{c}.1:6443")
}

/// The kubeconfig cluster `c`'s agents use: the stand-in's address, CA and token.
pub fn kubeconfig(prefix: &str, c: u8) -> PathBuf {
    data_dir(prefix, c).join("kubeconfig")
}

fn data_dir(prefix: &str, c: u8) -> PathBuf {
    cluster_dir(prefix, c).join("apiserver")
}

fn pid_file(prefix: &str, c: u8) -> PathBuf {
    dir(prefix).join(format!("apiserver-c{c}.pid"))
}

/// Starts cluster `c`'s stand-in (`fresh`: with no certificates or saved objects) and waits until it
/// has written its kubeconfig, which it does once it listens.
pub fn start(plan: &Plan, c: u8, fresh: bool) -> anyhow::Result<()> {
    let node = plan
        .nodes
        .iter()
        .find(|n| n.cluster == c)
        .context("a cluster without nodes")?;
    let lab = crate::agent_binary::lab_binary()?;
    let data = data_dir(&plan.prefix, c);
    if fresh {
        let _ = std::fs::remove_dir_all(&data);
    }
    let _ = std::fs::remove_file(kubeconfig(&plan.prefix, c));
    let state = cluster_dir(&plan.prefix, c).join("state");
    let args = [
        &*lab.to_string_lossy(),
        "apiserver",
        "--state-dir",
        &state.to_string_lossy(),
        "--data-dir",
        &data.to_string_lossy(),
        "--listen",
        &address(c),
    ];
    let log = mesh::log(plan, &format!("apiserver-c{c}"));
    let pid = mesh::spawn_in(&node.netns, &args, &log)?;
    std::fs::write(pid_file(&plan.prefix, c), pid.to_string())?;
    let config = kubeconfig(&plan.prefix, c);
    if !mesh::wait(Duration::from_secs(15), || config.exists()) {
        bail!(
            "the stand-in API server of cluster{c} did not come up; see {}",
            log.display()
        );
    }
    Ok(())
}

/// Stops cluster `c`'s stand-in (as an API server that goes away: its clients keep their state).
pub fn stop(plan: &Plan, c: u8) -> anyhow::Result<()> {
    let pid = std::fs::read_to_string(pid_file(&plan.prefix, c))
        .context("the stand-in API server's pid file")?;
    mesh::stop_pid(pid.trim(), "TERM")
        .with_context(|| format!("the stand-in API server of cluster{c}"))
}
