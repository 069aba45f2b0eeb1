//! The agent's Kubernetes source on the lab (root): the agent reads its cluster from the lab's
//! stand-in API server over HTTPS with its own kube client, as the ServiceAccount of deploy/rbac.yaml.
//! A pod removed from the cluster leaves `meshpath endpoint list` and comes back with it; a backend's
//! EndpointSlice conditions decide whether it serves (not ready: it leaves the service; terminating
//! but serving: it stands in while no backend is ready); with the API server gone the agent keeps its last state and says so (status, readiness), and follows the
//! cluster again once the server is back.

use std::time::Duration;

use meshpath_api::local_source::{LocalSourceKind, LocalSourceState};
use meshpath_api::service::BackendState;
use meshpath_api::status::AgentStatus;
use meshpath_api::Client;
use meshpath_lab::apiserver::process as apiserver;
use meshpath_lab::mesh;
use meshpath_lab::plan::{Plan, Size};
use meshpath_testkit::wait::until;

const WAIT: Duration = Duration::from_secs(30);

/// Removes the lab on the way out, failed or not.
struct Lab(Plan);

impl Drop for Lab {
    fn drop(&mut self) {
        mesh::tear_down(&self.0.prefix);
    }
}

fn wait_for(client: &Client, what: &str, ok: impl Fn(&AgentStatus) -> bool) -> AgentStatus {
    until(what, WAIT, || match client.status() {
        Ok(status) if ok(&status) => Ok(status),
        Ok(status) => Err(format!("{:?}", status.local_source)),
        Err(error) => Err(error.to_string()),
    })
    .unwrap_or_else(|timeout| panic!("{timeout}"))
}

fn has_pod(status: &AgentStatus) -> bool {
    status.endpoints.iter().any(|e| e.pod == "default/p1-1")
}

const VIP: &str = "100.64.255.30";

/// Service `web` on port 80, its one backend the pod on port 8080 with these conditions.
fn web(ready: bool, serving: bool, terminating: bool) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec: {{clusterIP: {VIP}, clusterIPs: [{VIP}], ports: [{{port: 80, protocol: TCP, targetPort: 8080}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nports: [{{name: \"\", port: 8080, protocol: TCP}}]\n\
         endpoints:\n- addresses: [100.64.1.10]\n  \
         conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}\n---\n"
    )
}

/// The states of service web's backends.
fn web_backends(status: &AgentStatus) -> Option<Vec<BackendState>> {
    let web = status
        .services
        .iter()
        .find(|s| s.frontend.address.ip().to_string() == VIP)?;
    Some(web.backends.iter().map(|b| b.state).collect())
}

fn source_state(status: &AgentStatus) -> Option<LocalSourceState> {
    status.local_source.as_ref().map(|s| s.state)
}

#[test]
fn the_agent_follows_the_stand_in_api_server() {
    if !meshpath_testkit::needs_root("the_agent_follows_the_stand_in_api_server") {
        return;
    }
    // The lab starts agents with this binary (the test's own is not beside it), and the stand-in
    // with the `meshpath-lab` beside it.
    std::env::set_var("MESHPATH_BIN", env!("CARGO_BIN_EXE_meshpath"));
    let size = Size {
        clusters: 1,
        nodes: 1,
        pods: 1,
    };
    let plan = Plan::new(&format!("ks{}", std::process::id() % 100_000), size).unwrap();
    let _ = meshpath_lab::down::down(&plan.prefix);
    let lab = Lab(plan);
    meshpath_lab::up::up_for_cni(&lab.0).expect("the lab");
    mesh::start(&lab.0).expect("the stand-in, etcd and the agent");
    let prefix = lab.0.prefix.clone();
    let client = Client::new(mesh::socket(&prefix, 1, 1));

    let status = wait_for(&client, "the pod as an endpoint", has_pod);
    let source = status.local_source.clone().unwrap();
    assert_eq!(source.kind, LocalSourceKind::Kubernetes);
    assert_eq!(
        source.location,
        format!("https://{}/", apiserver::address(1))
    );

    // The pod leaves the cluster, and comes back.
    let node = &lab.0.nodes[0];
    let pod = mesh::pod_object(node, 1, "p1-1", "{name: p1-1}");
    mesh::write_state(&prefix, 1, &mesh::node_object(&prefix, node)).unwrap();
    wait_for(&client, "the pod gone from endpoint list", |s| !has_pod(s));
    mesh::write_state(&prefix, 1, &(mesh::node_object(&prefix, node) + &pod)).unwrap();
    wait_for(&client, "the pod back in endpoint list", has_pod);

    // A backend's conditions, live from its EndpointSlice.
    let with_web = |ready, serving, terminating| {
        let objects = mesh::node_object(&prefix, node) + &pod + &web(ready, serving, terminating);
        mesh::write_state(&prefix, 1, &objects).unwrap();
    };
    with_web(true, true, false);
    wait_for(&client, "the ready backend active", |s| {
        web_backends(s) == Some(vec![BackendState::Active])
    });
    with_web(false, false, false);
    wait_for(
        &client,
        "the not-ready backend gone from the service",
        |s| web_backends(s).unwrap_or_default().is_empty(),
    );
    with_web(false, true, true);
    wait_for(
        &client,
        "the terminating, serving backend standing in",
        |s| web_backends(s) == Some(vec![BackendState::Active]),
    );
    with_web(false, false, true);
    wait_for(
        &client,
        "the terminating backend keeping only its flows",
        |s| web_backends(s) == Some(vec![BackendState::Terminating]),
    );
    mesh::write_state(&prefix, 1, &(mesh::node_object(&prefix, node) + &pod)).unwrap();

    // The API server goes away: the last state stays, and the agent says it is lost.
    apiserver::stop(&lab.0, 1).expect("the stand-in stops");
    let lost = wait_for(&client, "the source failing", |s| {
        source_state(s) == Some(LocalSourceState::Failing)
    });
    assert!(has_pod(&lost), "nothing taken away");
    assert!(
        !lost.health.as_ref().unwrap().ready,
        "not ready without the API server"
    );

    // Back: the agent follows the cluster again.
    apiserver::start(&lab.0, 1, false).expect("the stand-in starts again");
    wait_for(&client, "the source ok and the agent ready", |s| {
        source_state(s) == Some(LocalSourceState::Ok) && s.health.as_ref().is_some_and(|h| h.ready)
    });
    mesh::write_state(&prefix, 1, &mesh::node_object(&prefix, node)).unwrap();
    wait_for(&client, "a change after the restart", |s| !has_pod(s));
}
