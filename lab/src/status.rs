//! `meshpath lab status`: the lab as the kernel sees it now — namespaces, their interfaces, addresses
//! and XDP programs, and which processes (agents) run inside — read back, not remembered.

use serde::Serialize;
use serde_json::Value;

use crate::ip::{ip, netns_list, netns_pids, IpError};
use crate::plan::is_lab_netns;

#[derive(Debug, Serialize)]
pub struct Status {
    pub namespaces: Vec<Netns>,
}

#[derive(Debug, Serialize)]
pub struct Netns {
    pub name: String,
    /// fabric, outside, node or pod.
    pub role: &'static str,
    pub interfaces: Vec<Interface>,
    /// Processes running inside (the node agent, once there is one), by pid.
    pub processes: Vec<u32>,
}

#[derive(Debug, Serialize)]
pub struct Interface {
    pub name: String,
    pub addresses: Vec<String>,
    pub xdp: Option<Xdp>,
}

#[derive(Debug, Serialize)]
pub struct Xdp {
    pub prog_id: u64,
    /// native or generic.
    pub mode: &'static str,
}

pub fn status(prefix: &str) -> Result<Status, IpError> {
    let mut namespaces = Vec::new();
    for name in netns_list()?
        .into_iter()
        .filter(|n| is_lab_netns(prefix, n))
    {
        let json = ip(&["-n", &name, "-j", "addr", "show"])?;
        let interfaces = parse_interfaces(&json);
        let processes = netns_pids(&name).unwrap_or_default();
        let role = role_of(prefix, &name);
        namespaces.push(Netns {
            name,
            role,
            interfaces,
            processes,
        });
    }
    namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Status { namespaces })
}

fn role_of(prefix: &str, name: &str) -> &'static str {
    match name.strip_prefix(prefix).unwrap_or(name) {
        "-fabric" => "fabric",
        "-outside" => "outside",
        rest if rest.contains("-p") => "pod",
        _ => "node",
    }
}

/// Reads `ip -j addr show` output; anything it does not understand is left out, not fatal.
fn parse_interfaces(json: &str) -> Vec<Interface> {
    let links: Vec<Value> = serde_json::from_str(json).unwrap_or_default();
    links
        .iter()
        .filter_map(|link| {
            let name = link.get("ifname")?.as_str()?.to_owned();
            let addresses = link
                .get("addr_info")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|a| {
                    Some(format!(
                        "{}/{}",
                        a.get("local")?.as_str()?,
                        a.get("prefixlen")?.as_u64()?
                    ))
                })
                .collect();
            let xdp = link.get("xdp").and_then(|x| {
                let prog_id = x.get("prog")?.get("id")?.as_u64()?;
                let mode = match x.get("mode")?.as_u64()? {
                    1 => "native",
                    2 => "generic",
                    _ => "other",
                };
                Some(Xdp { prog_id, mode })
            });
            Some(Interface {
                name,
                addresses,
                xdp,
            })
        })
        .collect()
}

/// A table for people: one line per interface.
pub fn render_table(status: &Status) -> String {
    let mut out = format!(
        "{:<24} {:<7} {:<10} {:<20} {}\n",
        "NAMESPACE", "ROLE", "INTERFACE", "ADDRESS", "XDP"
    );
    for ns in &status.namespaces {
        for (i, iface) in ns.interfaces.iter().filter(|i| i.name != "lo").enumerate() {
            let (name, role) = if i == 0 {
                (ns.name.as_str(), ns.role)
            } else {
                ("", "")
            };
            let addr = iface.addresses.first().map(String::as_str).unwrap_or("-");
            let xdp = iface
                .xdp
                .as_ref()
                .map_or("-".to_owned(), |x| format!("{} id {}", x.mode, x.prog_id));
            out.push_str(&format!(
                "{name:<24} {role:<7} {:<10} {addr:<20} {xdp}\n",
                iface.name
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_xdp_from_ip_json() {
        let json = r#"[{"ifindex":1,"ifname":"lo","addr_info":[]},
            {"ifindex":2,"ifname":"uplink","xdp":{"mode":1,"prog":{"id":42}},
             "addr_info":[{"family":"inet","local":"198.18.1.1","prefixlen":24}]},
            {"ifindex":3,"ifname":"pod1","xdp":{"mode":2,"prog":{"id":7}},"addr_info":[]}]"#;
        let ifaces = parse_interfaces(json);
        assert_eq!(ifaces.len(), 3);
        assert_eq!(ifaces[1].addresses, vec!["198.18.1.1/24"]);
        assert_eq!(
            ifaces[1].xdp.as_ref().map(|x| (x.prog_id, x.mode)),
            Some((42, "native"))
        );
        assert_eq!(ifaces[2].xdp.as_ref().map(|x| x.mode), Some("generic"));
        assert!(ifaces[0].xdp.is_none());
        assert!(parse_interfaces("not json").is_empty());
    }

    #[test]
    fn roles_follow_the_names() {
        assert_eq!(role_of("mp", "mp-fabric"), "fabric");
        assert_eq!(role_of("mp", "mp-c1-n2"), "node");
        assert_eq!(role_of("mp", "mp-c1-n2-p1"), "pod");
    }
}
