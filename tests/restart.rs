//! A restart causes no outage (root, on the lab): established TCP connections through a service keep
//! working while the agent of the node that translates the service stops and a new one starts. The
//! planned way, conntrack is handed over in its file, the XDP programs left attached, sockets bound
//! anew; killed (SIGKILL, as an OOM kill), conntrack is lost and each flow is made again from its
//! client's next segment, a backend's segment that comes first dropped rather than delivered
//! untranslated. How long they went without a reply is measured by `meshpath-perf restart`, not
//! asserted here.

use std::time::Duration;

use meshpath_lab::echo::EchoLab;
use meshpath_lab::mesh::{self, Stop};

#[test]
fn established_service_connections_survive_a_restart_planned_or_killed() {
    if !meshpath_testkit::needs_root(
        "established_service_connections_survive_a_restart_planned_or_killed",
    ) {
        return;
    }
    // The lab starts agents with this binary: the test's own is not beside it.
    std::env::set_var("MESHPATH_BIN", env!("CARGO_BIN_EXE_meshpath"));
    let lab = EchoLab::build(&format!("rt{}", std::process::id() % 100_000)).expect("the echo lab");
    for how in [Stop::Planned, Stop::Killed] {
        let mut client = lab.spawn_client(5, 8.0).expect("the echo client");
        assert_eq!(client.connected().expect("the client connects"), 5);
        lab.restart_agent(how).expect("a restart");
        let connections = client.results().expect("the client's results");
        assert_eq!(connections.len(), 5);
        assert!(
            connections.iter().all(|c| c.kept),
            "{how:?}: every connection lived through the restart: {connections:?}"
        );
    }
}

/// Start-up does not wait for the cluster's etcd: the agent forwards from the state it last knew
/// (identities, remote clusters) and its local source, and catches up when etcd answers again.
#[test]
fn an_agent_starts_from_its_last_known_state_while_its_etcd_is_down() {
    if !meshpath_testkit::needs_root(
        "an_agent_starts_from_its_last_known_state_while_its_etcd_is_down",
    ) {
        return;
    }
    std::env::set_var("MESHPATH_BIN", env!("CARGO_BIN_EXE_meshpath"));
    let lab = EchoLab::build(&format!("re{}", std::process::id() % 100_000)).expect("the echo lab");
    mesh::stop_agent(&lab.plan, 1, 1, Stop::Planned).expect("the agent stops");
    mesh::stop_etcd(&lab.plan, 1).expect("etcd stops");
    mesh::start_agent_again(&lab.plan, 1, 1).expect("the agent starts");
    let answered = mesh::wait(Duration::from_secs(20), || {
        meshpath_api::Client::new(mesh::socket(&lab.plan.prefix, 1, 1))
            .status()
            .is_ok()
    });
    assert!(answered, "the agent runs without its etcd");
    let fresh = lab.spawn_client(3, 2.0).expect("new connections");
    let connections = fresh.results().expect("their results");
    assert!(
        connections.iter().all(|c| c.kept),
        "new connections through the service work without etcd: {connections:?}"
    );
    mesh::start_etcd_again(&lab.plan, 1).expect("etcd back");
    let again = lab
        .spawn_client(3, 2.0)
        .expect("connections after etcd returned");
    let connections = again.results().expect("their results");
    assert!(connections.iter().all(|c| c.kept), "{connections:?}");
}
