//! `meshpath lab up --mesh --etcd-members 3` (root): each cluster's etcd a 3-member cluster, every
//! agent and remote watcher given every member. Killing the leader of cluster2's etcd withdraws
//! nothing in cluster1, lists nothing again (the watch resumes from its revision), and a change made
//! in cluster2 afterwards still reaches cluster1.

use std::time::{Duration, Instant};

use meshpath_api::clustermesh::RemoteClusterStatus;
use meshpath_lab::mesh;
use meshpath_lab::plan::{Plan, Size};

struct Lab {
    plan: Plan,
}

impl Drop for Lab {
    fn drop(&mut self) {
        mesh::tear_down(&self.plan.prefix);
    }
}

impl Lab {
    /// Cluster2 as cluster1's agent sees it.
    fn remote(&self) -> Option<RemoteClusterStatus> {
        let status = meshpath_api::Client::new(mesh::socket(&self.plan.prefix, 1, 1))
            .status()
            .ok()?;
        status.clustermesh?.get("cluster2").cloned()
    }

    /// Waits until `done` holds for cluster2's status in cluster1; checks `always` at every look.
    fn until(
        &self,
        what: &str,
        always: impl Fn(&RemoteClusterStatus),
        done: impl Fn(&RemoteClusterStatus) -> bool,
    ) -> RemoteClusterStatus {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(remote) = self.remote() {
                always(&remote);
                if done(&remote) {
                    return remote;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.remote()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn losing_the_etcd_leader_withdraws_nothing_and_lists_nothing_again() {
    if !meshpath_testkit::needs_root(
        "losing_the_etcd_leader_withdraws_nothing_and_lists_nothing_again",
    ) {
        return;
    }
    let prefix = format!("e{}", std::process::id() % 100_000);
    let size = Size {
        clusters: 2,
        nodes: 1,
        pods: 1,
    };
    let lab = Lab {
        plan: Plan::new(&prefix, size).unwrap().with_etcd_members(3),
    };
    std::env::set_var("MESHPATH_BIN", env!("CARGO_BIN_EXE_meshpath"));
    meshpath_lab::up::up_for_cni(&lab.plan).expect("lab up");
    mesh::start(&lab.plan).expect("3-member etcds and agents start");

    let before = lab.until(
        "cluster2 ready with its endpoint",
        |_| {},
        |r| r.ready && r.endpoints >= 1,
    );
    let endpoints = before.endpoints;
    let leader = mesh::etcd_leader(&lab.plan, 2).expect("cluster2's etcd has a leader");
    mesh::stop_etcd_member(&lab.plan, 2, leader).expect("the leader killed");

    // A change in cluster2 after the loss: a second endpoint like the first, written through the
    // surviving members once they have elected a new leader.
    let listed = mesh::etcdctl_in(
        &lab.plan,
        2,
        &[
            "get",
            "--prefix",
            "cilium/state/ip/v1/default/",
            "--print-value-only",
        ],
    );
    let first = listed.expect("cluster2's endpoints");
    let mut value: serde_json::Value =
        serde_json::from_str(first.lines().next().expect("an endpoint")).unwrap();
    let (net, _) = lab
        .plan
        .nodes
        .iter()
        .find(|n| n.cluster == 2)
        .unwrap()
        .pod_cidr;
    let ip = std::net::Ipv4Addr::from(u32::from(net) + 200).to_string();
    value["IP"] = ip.clone().into();
    value["K8sPodName"] = "late".into();
    let key = format!("cilium/state/ip/v1/default/{ip}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while mesh::etcdctl_in(&lab.plan, 2, &["put", &key, &value.to_string()]).is_err() {
        assert!(
            Instant::now() < deadline,
            "cluster2's etcd elected no new leader"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let never_less = |r: &RemoteClusterStatus| {
        assert!(
            r.endpoints >= endpoints && r.withdrawn_at.is_none(),
            "cluster1 withdrew cluster2's state: {r:?}"
        );
    };
    let after = lab.until("the change after the leader's loss", never_less, |r| {
        r.endpoints > endpoints
    });
    assert_eq!(
        after.listings, before.listings,
        "cluster2 was never listed again from scratch: {after:?}"
    );
}
