//! The veths' own drop counters (what iproute2 reports as `dropped`), read before and after a
//! measurement: frames lost between the generator, the node and the sink outside any socket.

use std::process::Command;

use anyhow::Context;
use serde::Deserialize;

use super::lab::{Lab, GEN_IF, POD_IF, SINK_IF, UPLINK_IF};

#[derive(Deserialize)]
struct Link {
    stats64: Stats64,
}

#[derive(Deserialize)]
struct Stats64 {
    rx: Direction,
    tx: Direction,
}

#[derive(Deserialize)]
struct Direction {
    dropped: u64,
}

/// rx and tx drops summed over the four veth ends of the path.
pub fn dropped(lab: &Lab) -> anyhow::Result<u64> {
    let ends = [
        (&lab.gen, GEN_IF),
        (&lab.node, POD_IF),
        (&lab.node, UPLINK_IF),
        (&lab.sink, SINK_IF),
    ];
    ends.iter().map(|(ns, dev)| end_dropped(ns, dev)).sum()
}

fn end_dropped(ns: &str, dev: &str) -> anyhow::Result<u64> {
    let out = Command::new("ip")
        .args(["-n", ns, "-s", "-j", "link", "show", "dev", dev])
        .output()
        .context("running ip")?;
    anyhow::ensure!(
        out.status.success(),
        "ip -n {ns} -s -j link show dev {dev}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    parse(&out.stdout).with_context(|| format!("{dev}'s counters in {ns}"))
}

fn parse(json: &[u8]) -> anyhow::Result<u64> {
    let links: Vec<Link> = serde_json::from_slice(json)?;
    let link = links.first().context("no such link")?;
    Ok(link.stats64.rx.dropped + link.stats64.tx.dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_iproute2s_counters() {
        let json = br#"[{"ifindex":2,"ifname":"eth0","stats64":{"rx":{"bytes":1,"packets":2,"errors":0,"dropped":3,"over_errors":0,"multicast":0},"tx":{"bytes":4,"packets":5,"errors":0,"dropped":7,"carrier_errors":0,"collisions":0}}}]"#;
        assert_eq!(parse(json).expect("parses"), 10);
        assert!(parse(b"[]").is_err());
    }
}
