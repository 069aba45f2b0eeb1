//! A meshed lab's pods come from the CNI plugin (root): the agents' configurations list none, every
//! endpoint is one the plugin made (`origin: cni`) at the address the lab asked for, on the veth ADD's
//! result named; the lab's DEL takes each away — endpoint, veth and address — and a second ADD makes
//! them again at the same addresses.

use std::time::Duration;

use meshpath_api::endpoint::{EndpointOrigin, EndpointRow};
use meshpath_api::Client;
use meshpath_lab::plan::{Plan, Size};
use meshpath_lab::{cni, ip, mesh};
use meshpath_testkit::wait::until;

const WAIT: Duration = Duration::from_secs(30);

/// Removes the lab on the way out, failed or not.
struct Lab(Plan);

impl Drop for Lab {
    fn drop(&mut self) {
        mesh::tear_down(&self.0.prefix);
    }
}

fn endpoints(plan: &Plan) -> Vec<EndpointRow> {
    Client::new(mesh::socket(&plan.prefix, 1, 1))
        .status()
        .expect("the agent answers")
        .endpoints
}

/// Every pod of the plan is an endpoint the plugin made, at its planned address, on its veth.
fn assert_made_by_the_plugin(plan: &Plan) {
    let node = &plan.nodes[0];
    let rows = until("both pods as endpoints", WAIT, || {
        let rows = endpoints(plan);
        match rows.len() == node.pods.len() {
            true => Ok(rows),
            false => Err(format!("{rows:?}")),
        }
    })
    .unwrap_or_else(|timeout| panic!("{timeout}"));
    for (k, pod) in node.pods.iter().enumerate() {
        let name = format!("default/{}", mesh::pod_name(node.node, k as u8 + 1));
        let row = rows
            .iter()
            .find(|r| r.pod == name)
            .unwrap_or_else(|| panic!("{name} among {rows:?}"));
        assert_eq!(row.origin, EndpointOrigin::Cni, "{row:?}");
        assert_eq!(row.ipv4, Some(pod.addr), "the address the lab asked for");
        let veth = cni::node_interface(&plan.prefix, &pod.netns).expect("ADD's result");
        assert_eq!(row.interface.as_deref(), Some(veth.as_str()));
        assert!(ip::link_exists(&node.netns, &veth));
    }
}

/// The addresses the node's plugin holds: one file each in its data directory.
fn claimed(plan: &Plan) -> Vec<String> {
    let dir = mesh::dir(&plan.prefix).join("cni-c1-n1").join("meshpath");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ips: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
        .collect();
    ips.sort();
    ips
}

#[test]
fn a_meshed_labs_pods_come_from_the_plugin_and_go_with_its_del() {
    if !meshpath_testkit::needs_root("a_meshed_labs_pods_come_from_the_plugin_and_go_with_its_del")
    {
        return;
    }
    // The lab starts agents with this binary, and the plugin beside it.
    std::env::set_var("MESHPATH_BIN", env!("CARGO_BIN_EXE_meshpath"));
    let size = Size {
        clusters: 1,
        nodes: 1,
        pods: 2,
    };
    let plan = Plan::new(&format!("cl{}", std::process::id() % 100_000), size).unwrap();
    let _ = meshpath_lab::down::down(&plan.prefix);
    let lab = Lab(plan);
    let plan = &lab.0;
    meshpath_lab::up::up_for_cni(plan).expect("the lab's namespaces");
    mesh::start(plan).expect("etcd, the stand-in, the agent and the pods");
    let config = std::fs::read_to_string(mesh::dir(&plan.prefix).join("c1-n1.yaml")).unwrap();
    assert!(config.contains("pods: []"), "{config}");
    assert_made_by_the_plugin(plan);
    assert_eq!(claimed(plan), ["100.64.1.10", "100.64.1.11"]);

    let veths: Vec<String> = plan.nodes[0]
        .pods
        .iter()
        .map(|p| cni::node_interface(&plan.prefix, &p.netns).unwrap())
        .collect();
    let failed = cni::del_pods(&plan.prefix);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(endpoints(plan).is_empty(), "DEL takes the endpoints away");
    for veth in &veths {
        assert!(!ip::link_exists(&plan.nodes[0].netns, veth), "{veth} gone");
    }
    assert!(claimed(plan).is_empty(), "and releases the addresses");
    assert!(
        cni::del_pods(&plan.prefix).is_empty(),
        "nothing left to delete"
    );

    cni::add_pods(plan).expect("the pods made again");
    assert_made_by_the_plugin(plan);
}
