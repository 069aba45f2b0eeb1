use super::*;
use meshpath_api::clustermesh::RemoteClusterStatus;

/// An agent of the demo's lab: its cluster, its nodes, rebel-base with one backend per cluster (the
/// other cluster's in `remote_state`), and the other cluster as its remote.
fn agent(cluster: u8, remote_state: &str, remote_ready: bool) -> AgentStatus {
    let other = 3 - cluster;
    let json = format!(
        r#"{{"cluster":"cluster{cluster}","cluster_id":{cluster},"node":"c{cluster}-n1",
        "dataplane":{{"received":0,"forwarded":{{}},"dropped":{{}},"ports":[]}},
        "tables":{{"endpoints":1,"ipcache":2,"services":1,"nodes":4}},
        "services":[{{"id":1,"name":"default/rebel-base","frontend":"100.{svc}.255.10:80/TCP",
            "backends":[
              {{"backend":"100.64.2.10:8080","cluster":1,"state":"{own}"}},
              {{"backend":"100.65.2.10:8080","cluster":2,"state":"{theirs}"}}]}},
          {{"frontend":"100.{svc}.255.20:53/UDP","backends":[]}}],
        "clustermesh":null,
        "nodes":[{{"cluster":"cluster{cluster}","name":"c{cluster}-n1","address":"198.18.{cluster}.1","pod_cidrs":[]}},
                 {{"cluster":"cluster{other}","name":"c{other}-n1","address":"198.18.{other}.1","pod_cidrs":[]}}]}}"#,
        svc = 63 + cluster,
        own = if cluster == 1 { "active" } else { remote_state },
        theirs = if cluster == 2 { "active" } else { remote_state },
    );
    let mut status: AgentStatus = serde_json::from_str(&json).unwrap();
    let remote = RemoteClusterStatus {
        name: format!("cluster{other}"),
        ready: remote_ready,
        connected: true,
        cluster_id: Some(other),
        last_error: (!remote_ready).then(|| "sync canaries missing".to_owned()),
        ..Default::default()
    };
    status.clustermesh = Some([(remote.name.clone(), remote)].into());
    status
}

fn reading(status: Result<AgentStatus, String>) -> Reading {
    Reading {
        socket: "/run/meshpath/x.sock".into(),
        status,
        flows_error: None,
    }
}

fn rebel_base(view: &MeshView) -> &ServiceView {
    let rebel = view
        .services
        .iter()
        .find(|s| s.name == "default/rebel-base");
    rebel.expect("rebel-base is a service")
}

#[test]
fn both_clusters_with_their_nodes_and_readiness() {
    let view = merge(&[
        reading(Ok(agent(1, "active", true))),
        reading(Ok(agent(2, "active", false))),
    ]);
    let names: Vec<&str> = view.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["cluster1", "cluster2"]);
    let one = &view.clusters[0];
    assert_eq!(one.id, Some(1));
    let nodes: Vec<&str> = one.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        nodes,
        ["c1-n1"],
        "each node once, though both agents list it"
    );
    // cluster1 as cluster2's agent sees it: not ready, and why.
    assert_eq!(
        one.readiness,
        [Readiness {
            seen_by: "cluster2/c2-n1".into(),
            ready: false,
            connected: true,
            error: Some("sync canaries missing".into()),
        }]
    );
    assert!(view.clusters[1].readiness[0].ready);
    assert_eq!(view.clusters[1].readiness[0].error, None);
}

#[test]
fn a_global_service_is_one_service_with_backends_per_cluster() {
    let view = merge(&[
        reading(Ok(agent(1, "active", true))),
        reading(Ok(agent(2, "active", true))),
    ]);
    let rebel = rebel_base(&view);
    let frontends: Vec<String> = rebel.frontends.iter().map(|f| f.to_string()).collect();
    assert_eq!(frontends, ["100.64.255.10:80/TCP", "100.65.255.10:80/TCP"]);
    let clusters: Vec<&str> = rebel.clusters.keys().map(String::as_str).collect();
    assert_eq!(clusters, ["cluster1", "cluster2"]);
    assert_eq!(
        rebel.clusters["cluster2"],
        [BackendView {
            address: "100.65.2.10:8080".parse().unwrap(),
            state: BackendState::Active
        }],
        "the same backend from both agents is listed once"
    );
    // A service no agent named goes by its frontend.
    assert!(view
        .services
        .iter()
        .any(|s| s.name == "100.64.255.20:53/UDP"));
}

/// During a failover the agents may disagree for a moment: each state is shown.
#[test]
fn a_backend_in_two_states_shows_both() {
    let view = merge(&[
        reading(Ok(agent(1, "terminating", true))),
        reading(Ok(agent(2, "active", true))),
    ]);
    let rebel = rebel_base(&view);
    let states: Vec<BackendState> = rebel.clusters["cluster2"].iter().map(|b| b.state).collect();
    assert_eq!(states, [BackendState::Active, BackendState::Terminating]);
}

#[test]
fn an_unreadable_agent_is_named_and_the_others_shown() {
    let mut flows_broken = reading(Ok(agent(1, "active", true)));
    flows_broken.flows_error = Some("no agent answers on x.sock.observe".into());
    let view = merge(&[
        flows_broken,
        reading(Err("no agent answers on /run/meshpath/y.sock".into())),
    ]);
    assert_eq!(view.clusters.len(), 2, "cluster1's agent still shows both");
    assert_eq!(view.agents[0].node.as_deref(), Some("cluster1/c1-n1"));
    assert!(view.agents[0].flows_error.is_some());
    assert_eq!(view.agents[1].node, None);
    assert!(view.agents[1].error.as_deref().unwrap().contains("y.sock"));
    // A backend's cluster whose name no agent told is named by its id.
    let mut lone = agent(1, "active", true);
    lone.clustermesh = None;
    let view = merge(&[reading(Ok(lone))]);
    assert!(rebel_base(&view).clusters.contains_key("cluster-id 2"));
}
