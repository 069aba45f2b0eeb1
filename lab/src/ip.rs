//! Thin wrapper over iproute2: every lab change is an `ip` command, so what the lab does can be read
//! and replayed by hand.

use std::path::Path;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum IpError {
    #[error("running `ip {args}`: {source}")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
}

/// Runs `ip ARGS` and returns its stdout.
pub fn ip(args: &[&str]) -> Result<String, IpError> {
    let joined = || args.join(" ");
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| IpError::Spawn {
            args: joined(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(IpError::Failed {
            args: joined(),
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Creates the namespace if missing and brings its loopback up.
pub fn ensure_netns(name: &str) -> Result<(), IpError> {
    if !netns_exists(name) {
        ip(&["netns", "add", name])?;
    }
    ip(&["-n", name, "link", "set", "lo", "up"]).map(drop)
}

pub fn link_exists(netns: &str, dev: &str) -> bool {
    ip(&["-n", netns, "link", "show", "dev", dev]).is_ok()
}

/// Every namespace `ip netns add` created, by name.
pub fn netns_list() -> Result<Vec<String>, IpError> {
    let out = ip(&["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Turns on IPv4 forwarding inside `netns`.
pub fn enable_forwarding(netns: &str) -> Result<(), IpError> {
    ip(&[
        "netns",
        "exec",
        netns,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ])
    .map(drop)
}

/// Process ids running inside `netns`.
pub fn netns_pids(netns: &str) -> Result<Vec<u32>, IpError> {
    let out = ip(&["netns", "pids", netns])?;
    Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Makes `dev` in `netns` send complete checksums. A frame that reaches XDP with its checksum left to
/// offload (veth's default) loses that mark in an AF_XDP socket and leaves the dataplane with a wrong
/// TCP/UDP checksum. Needs ethtool(8); without it the lab still comes up and only warns.
pub fn complete_checksums(netns: &str, dev: &str) -> Result<(), IpError> {
    if !Path::new("/usr/sbin/ethtool").exists() && !Path::new("/sbin/ethtool").exists() {
        eprintln!("lab: ethtool not installed; TCP through AF_XDP needs tx checksum offload off on {netns}/{dev}");
        return Ok(());
    }
    ip(&["netns", "exec", netns, "ethtool", "-K", dev, "tx", "off"]).map(drop)
}
