//! A planned restart causes no outage (root, on the lab): established TCP connections through a service
//! keep working while the agent of the node that translates the service stops the planned way and a new
//! one starts — conntrack handed over in its file, the XDP programs left attached, sockets bound anew.
//! How long they went without a reply is measured by `meshpath-perf restart`, not asserted here.

use meshpath_lab::echo::{self, EchoLab};
use meshpath_lab::mesh::Stop;

#[test]
fn established_service_connections_survive_a_planned_restart() {
    if !meshpath_testkit::needs_root("established_service_connections_survive_a_planned_restart") {
        return;
    }
    // The lab starts agents with this binary: the test's own is not beside it.
    std::env::set_var("MESHPATH_BIN", env!("CARGO_BIN_EXE_meshpath"));
    let lab = EchoLab::build(&format!("rt{}", std::process::id() % 100_000)).expect("the echo lab");
    let client = lab.spawn_client(5, 8.0).expect("the echo client");
    std::thread::sleep(std::time::Duration::from_secs(2));
    lab.restart_agent(Stop::Planned).expect("a planned restart");
    let connections = echo::results(client).expect("the client's results");
    assert_eq!(connections.len(), 5);
    assert!(
        connections.iter().all(|c| c.kept),
        "every connection lived through the restart: {connections:?}"
    );
}
