//! `meshpath agent`: one node's dataplane worker and its control task, from one configuration file.
//!
//! Start-up: wait for the local source's first complete state (a directory reads at once; the API
//! server's watchers list every kind first — see `local_source`), so the node's pod prefixes are
//! known from its Node object; set up the host port;
//! bind the AF_XDP sockets (one per worker and interface, worker `i` on queue `i`), load the XDP
//! programs (maps pinned), register the sockets and only then attach, in the node's network namespace;
//! once the first table snapshot is in, read back the conntrack a planned stop handed over (each flow
//! to the worker that owns it) and start one worker per core of `dataplane.cores` with the pipeline,
//! then the control task that keeps the table snapshot current and the task that keeps tunnel peers,
//! pod routes and the neighbour nodes' MACs in step with the mesh's nodes.
//!
//! SIGINT, SIGTERM and SIGHUP stop it the planned way: the workers stop, their conntrack is written for
//! the next agent, and the XDP programs stay attached — with no socket registered they drop what is
//! the dataplane's, so a node without its agent is closed, not open. A SIGKILL or an OOM kill leaves
//! the same: attached programs whose sockets the kernel unregistered when the process died.

mod cluster_names;
pub mod config;
mod control;
mod convert;
mod endpoint_list;
mod endpoints;
mod external;
mod handler;
mod health;
mod heap;
mod host_port;
mod identities;
mod kvstore;
mod last_known;
mod local_source;
mod logging;
mod memlock;
pub mod metrics;
mod neighbours;
mod node_sync;
mod nodes;
mod observe;
mod pods;
mod policy;
mod port_names;
mod report;
mod serving;
mod socket;
mod status;
mod wireguard_key;
mod wiring;
mod workers;
mod xdp_counters;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use meshpath_api::status::PortRole;
use meshpath_control::local::{LocalState, ObjectRef};
use meshpath_control::resolve::parse_cidr;
use meshpath_control::snapshot::{NodeSpec, PodPorts};
use meshpath_dataplane::gateway::Gateway;
use meshpath_dataplane::ipcache::IpPrefix;
use meshpath_dataplane::masquerade::{Masquerade, PortRange};
use meshpath_dataplane::route::Underlay;
use meshpath_dataplane::snapshot::{Capacities, HostPort, NodeConfig, Tables};
use meshpath_dataplane::wireguard::Tunnels;
use meshpath_dataplane::{ClusterId, PortId};
use meshpath_xdp_redirect::netns::Netns;
use meshpath_xdp_redirect::PodPrefix;
use tokio_util::sync::CancellationToken;

use config::AgentConfig;
use handler::PipelineHandler;
use port_names::PortNames;
use report::WorkerReport;
use status::StatusSources;
use tokio::sync::watch;
use xdp_counters::XdpPrograms;

pub use external::leave::leave as vm_leave;

/// Runs the agent until SIGINT, SIGTERM or SIGHUP.
pub fn run(config_path: PathBuf, netns: Option<String>) -> anyhow::Result<()> {
    let config = AgentConfig::load(&config_path)?;
    logging::init(config.log_format);
    if let Err(error) = memlock::lift() {
        // Kernels from 5.11 do not charge BPF maps to it; older ones will refuse them below.
        tracing::debug!(%error, "RLIMIT_MEMLOCK not lifted");
    }
    // Before any thread exists: every socket, interface lookup and thread then lives in the node.
    if let Some(name) = &netns {
        Netns::named(name)
            .and_then(|ns| ns.enter())
            .with_context(|| format!("entering network namespace `{name}`"))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(run_node(config))
}

async fn run_node(config: AgentConfig) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    // Before any interface is touched: a taken port stops the agent with nothing to undo.
    let mut listeners = serving::Listeners::bind(&config).await?;
    let key = node_key(&config)?;
    let local_source::LocalSource {
        handle: source,
        describe: source_info,
    } = local_source::spawn(&config, cancel.clone()).await?;
    local_source::first_state(&source, &source_info).await?;
    // The pods the CNI plugin attached lay their addresses over the source's state; an external
    // workload has none: the host is its only endpoint.
    let (pod_addresses, attached) = watch::channel(Arc::default());
    let local = match config.mode {
        config::Mode::Node => pods::overlay(
            source.state.clone(),
            attached,
            config.node.name.clone(),
            cancel.clone(),
        ),
        config::Mode::External => {
            external::overlay(source.state.clone(), config.clone(), cancel.clone())
        }
    };
    // And this node's WireGuard key over its own node, as its record publishes it.
    let local = match &key {
        Some(key) => {
            let node = config.node.name.clone();
            wireguard_key::announce(local, node, key, cancel.clone())
        }
        None => local,
    };
    let first = local.borrow().clone();
    host_port::ensure(&config).context("host port")?;
    let segments = neighbours::segments(&config).context("the uplink's segment")?;
    let spec = node_spec(&config, &first, segments.clone())?;
    let tables = Arc::new(ArcSwap::from_pointee(Tables::empty(
        spec.config.clone(),
        spec.capacities,
    )));
    let (flow_sink, flow_source) = observe::channel();
    let mut wiring = wiring::wire(&config, &pod_prefixes(&config, &first), &config.bpf_pin_dir)?;
    let port_controls = wiring
        .workers
        .iter_mut()
        .map(|w| w.port_control())
        .collect::<Result<Vec<_>, _>>()?;
    let port_names = PortNames::new(port_names(&config));
    let (pod_ports, ports) = watch::channel(spec.ports.clone());
    let reports: Vec<_> = wiring
        .workers
        .iter()
        .map(|_| Arc::new(ArcSwap::from_pointee(WorkerReport::default())))
        .collect();
    let readers = wiring.workers.iter().map(|w| w.stats_reader()).collect();
    let stats = workers::NodeWorkers::new(&config.dataplane.cores, reports.clone(), readers);
    let stop = Arc::new(AtomicBool::new(false));
    let programs = XdpPrograms::new(&config, std::mem::take(&mut wiring.programs));
    let uplink = programs.uplink().context("the uplink's XDP program")?;

    let directories = control::Directories {
        nodes: nodes::NodeDirectory::default(),
        identities: identities::IdentityDirectory::default(),
        endpoints: endpoints::EndpointDirectory::default(),
        readiness: health::Readiness::default(),
        known: last_known::Recorder::load(&config, control::cluster_name(&config)?),
        publication: control::PublicationMetrics::default(),
    };
    let (nodes, identities) = (directories.nodes.clone(), directories.identities.clone());
    let (readiness, known) = (directories.readiness.clone(), directories.known.clone());
    let latency = metrics::publish_latency();
    let sink = metrics::TimedSink::new(tables.clone(), latency.clone());
    let empty = tables.load_full();
    let (mut tasks, mesh, external_watch, builder) = control::start(
        &config,
        spec,
        local.clone(),
        ports,
        health::ReadySink::new(sink, readiness.clone()),
        directories.clone(),
        cancel.clone(),
    )
    .await?;
    tasks.spawn(known.clone().write_forever(cancel.clone()));
    // The sockets are registered: frames wait in their rings for a worker with tables to read.
    wait_for_first_snapshot(&tables, &empty).await;
    let mut states = workers::starting_states(&config, &tables.load(), flow_sink.epoch);
    if let (Some(key), [only]) = (&key, states.as_mut_slice()) {
        only.wireguard = Tunnels::new(key.private);
    }
    let mut running = Vec::new();
    for ((worker, state), report) in wiring.workers.drain(..).zip(states).zip(reports) {
        let handler = PipelineHandler::new(tables.clone(), state, report, flow_sink.clone());
        running.push(worker.spawn(handler, stop.clone())?);
    }
    let control_beat = health::ControlBeat::default();
    tasks.spawn(control_beat.clone().run(cancel.clone()));
    let worker_beat = stats.clone();
    let lost_source = source_info.clone();
    let monitor = Arc::new(
        health::HealthMonitor::new(
            Arc::new(move || worker_beat.heartbeat()),
            control_beat.beat(),
            readiness,
        )
        .watching_source(Arc::new(move || lost_source.lost())),
    );
    let sync = node_sync::NodeSync {
        frontends: (config.mode == config::Mode::External).then(|| tables.clone()),
        nodes: nodes.clone(),
        uplink: uplink.clone(),
        routes: host_port::Routes::new(&config),
        neighbours: neighbours::Neighbours::new(&config.node.uplink, segments),
        builder,
        own: own_addresses(&config),
    };
    tasks.spawn(node_sync::sync_forever(sync, cancel.clone()));
    let etcd_latency = kvstore::operation_latency();
    let kvstore = kvstore::spawn(&config, &mut tasks, etcd_latency.clone(), cancel.clone())?;
    let names = observe::Names {
        cluster: config.cluster.name.clone(),
        node_name: format!("{}/{}", config.cluster.name, config.node.name),
        tables: tables.clone(),
        mesh: mesh.clone(),
        endpoints: directories.endpoints,
        identities: directories.identities,
    };
    let kernel = observe::KernelDrops::of(stats.clone(), port_names.clone());
    let hub = observe::FlowHub::default();
    tasks.spawn(observe::collect(
        flow_source,
        names,
        kernel,
        hub.clone(),
        cancel.clone(),
    ));
    let sources = StatusSources {
        cluster: config.cluster.name.clone(),
        node: config.node.name.clone(),
        tables: tables.clone(),
        workers: stats,
        ports: port_names.clone(),
        configured_pods: configured_pod_ports(&config),
        programs: programs.clone(),
        mesh,
        external_watch,
        kvstore,
        local: local.clone(),
        source: source_info,
        nodes,
        identities,
        flows: hub.clone(),
        health: monitor,
    };
    let scraped = sources.clone();
    let listeners_pods = listeners.take_pods();
    listeners.serve(
        &mut tasks,
        sources,
        hub,
        || metrics::registry(scraped, latency, etcd_latency, &directories.publication),
        &cancel,
    )?;
    let pods = Arc::new(pods::Pods::new(
        pods::PodsConfig {
            node_name: config.node.name.clone(),
            node: meshpath_xdp_redirect::NodeAddrs {
                ipv4: config.node.ipv4,
                ipv6: config.node.ipv6,
            },
            pins: config.bpf_pin_dir.clone(),
            store: pods::Store::new(&config.state_dir),
            first_port: wiring::first_cni_port(&config),
            max_pods: config.dataplane.max_pods,
            mtu: pod_mtu(&config),
            queues: config.dataplane.cores.len() as u32,
        },
        port_controls,
        tables,
        source.state.clone(),
        pods::PodOutputs {
            ports: pod_ports,
            addresses: pod_addresses,
            names: port_names,
            programs,
        },
    ));
    pods.restore().await;
    if let Some((listener, path)) = listeners_pods {
        let (pods, cancelled) = (pods.clone(), cancel.clone());
        tasks.spawn(async move {
            if let Err(error) = pods::serve(listener, &path, pods, cancelled).await {
                tracing::error!(%error, "pod socket");
            }
        });
    }
    tracing::info!(node = %config.node.name, cluster = %config.cluster.name, "agent running");
    wait_for_signal().await;
    tracing::info!("stopping: the XDP programs stay attached and closed until the next agent");
    pods.keep_all().await;
    stop.store(true, Ordering::Relaxed);
    let mut handlers = Vec::new();
    for worker in running {
        let (_, handler) = worker.join_with_handler().context("joining a worker")?;
        handlers.push(handler);
    }
    workers::hand_over(&config, handlers);
    known.write();
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    for attachment in wiring.attachments {
        attachment.keep();
    }
    Ok(())
}

/// The node's WireGuard key when encryption is on: read from the state directory, or made there.
fn node_key(config: &AgentConfig) -> anyhow::Result<Option<wireguard_key::NodeKey>> {
    if config.encryption == config::Encryption::Off {
        return Ok(None);
    }
    let key = wireguard_key::load_or_create(&config.state_dir).context("WireGuard key")?;
    tracing::info!(public_key = %key.public_base64(), mode = ?config.encryption, "encryption between nodes");
    Ok(Some(key))
}

/// How long the worker waits for its first table snapshot before it starts with empty tables.
const FIRST_SNAPSHOT_WAIT: Duration = Duration::from_secs(3);

/// Waits until the builder replaced the empty snapshot (from the last known state, at start-up, within
/// milliseconds), so the first frames meet the node's tables rather than none.
async fn wait_for_first_snapshot(tables: &ArcSwap<Tables>, empty: &Arc<Tables>) {
    let started = Instant::now();
    while Arc::ptr_eq(&tables.load_full(), empty) {
        if started.elapsed() > FIRST_SNAPSHOT_WAIT {
            tracing::warn!("no table snapshot yet: the worker starts with empty tables");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::info!(after = ?started.elapsed(), "first table snapshot installed");
}

/// Each port's interface and role, for the status.
fn port_names(config: &AgentConfig) -> Vec<(PortId, String, PortRole)> {
    wiring::interfaces(config)
        .into_iter()
        .map(|i| (i.port, i.name.to_owned(), xdp_counters::port_role(i.role)))
        .collect()
}

/// The ports of the pods the configuration lists.
fn configured_pod_ports(config: &AgentConfig) -> Vec<PortId> {
    (0..config.pods.len()).map(wiring::pod_port).collect()
}

/// The pods' MTU: the underlay's, less what the tunnel adds in front (none when routed natively).
fn pod_mtu(config: &AgentConfig) -> u32 {
    let underlay = u32::from(config.dataplane.mtu);
    let peer = match config.node.ipv4 {
        Some(v4) => meshpath_dataplane::Addr::from(IpAddr::V4(v4)),
        None => meshpath_dataplane::Addr::from(IpAddr::V6(
            config.node.ipv6.unwrap_or(std::net::Ipv6Addr::UNSPECIFIED),
        )),
    };
    match config.dataplane.routing {
        config::Routing::Native => underlay,
        _ => underlay.saturating_sub(meshpath_dataplane::tunnel::overhead(peer) as u32),
    }
}

fn own_addresses(config: &AgentConfig) -> Vec<IpAddr> {
    let v4 = config.node.ipv4.map(IpAddr::V4);
    let v6 = config.node.ipv6.map(IpAddr::V6);
    v4.into_iter().chain(v6).collect()
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = hup.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn node_spec(
    config: &AgentConfig,
    local: &LocalState,
    segments: Vec<IpPrefix>,
) -> anyhow::Result<NodeSpec> {
    let cluster = control::cluster_name(config)?;
    let cluster_id = ClusterId::new(config.cluster.id).context("cluster.id")?;
    let node = NodeConfig {
        cluster: cluster_id,
        ipv4: config.node.ipv4,
        ipv6: config.node.ipv6,
        uplink: wiring::UPLINK,
        underlay: Underlay {
            mac: wiring::interface_mac(&config.node.uplink)?,
            router_mac: config.node.router_mac.0,
            mtu: config.dataplane.mtu,
        },
        gateway: Gateway {
            mac: config.node.gateway_mac.0,
        },
        routing: config.dataplane.routing_mode(),
        tunnel: config.dataplane.tunnel.into(),
        host: Some(HostPort {
            port: wiring::HOST,
            mac: host_port::mac(&config.host_port.interface)?,
            kernel_mac: host_port::mac(&config.host_port.kernel_interface)?,
        }),
        masquerade: masquerade(config)?,
        encryption: config.encryption.into(),
    };
    if !local.nodes.contains_key(&config.node.name) {
        tracing::warn!(node = %config.node.name, "the local state has no such node yet");
    }
    Ok(NodeSpec {
        cluster,
        cluster_id,
        node: config.node.name.clone(),
        config: node,
        capacities: Capacities::default(),
        ports: pod_ports(config)?,
        local_affinity_threshold: config
            .clustermesh
            .as_ref()
            .map_or(0.0, |m| m.local_affinity_threshold),
        policy_limits: Default::default(),
        admission: config
            .clustermesh
            .as_ref()
            .map(|m| m.admission())
            .unwrap_or_default(),
        segments,
        external_workload: config.mode == config::Mode::External,
    })
}

fn masquerade(config: &AgentConfig) -> anyhow::Result<Option<Masquerade>> {
    let section = &config.masquerade;
    if !section.enabled {
        return Ok(None);
    }
    let (first, last) = section.port_range().map_err(anyhow::Error::msg)?;
    Ok(Some(Masquerade {
        ipv4: config.node.ipv4,
        ipv6: config.node.ipv6,
        ports: PortRange { first, last },
        non_masquerade: section
            .non_masquerade_prefixes()
            .map_err(anyhow::Error::msg)?,
    }))
}

/// The configured pods' ports, or an external workload's own endpoint behind the host port (the
/// kernel end's MAC its destination).
fn pod_ports(config: &AgentConfig) -> anyhow::Result<PodPorts> {
    if let Some(host) = external::endpoint_ref(config) {
        let mac = host_port::mac(&config.host_port.kernel_interface)?;
        return Ok([(host, (wiring::HOST, mac))].into());
    }
    Ok(config
        .pods
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let (namespace, name) = p.pod.split_once('/')?;
            let pod = ObjectRef {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            };
            Some((pod, (wiring::pod_port(i), p.mac.0)))
        })
        .collect::<BTreeMap<_, _>>())
}

/// The prefixes whose frames the uplink hands to the dataplane: this node's pod CIDRs.
fn pod_prefixes(config: &AgentConfig, local: &LocalState) -> Vec<PodPrefix> {
    let cidrs = local
        .nodes
        .get(&config.node.name)
        .map(|n| n.pod_cidrs.clone())
        .unwrap_or_default();
    cidrs
        .iter()
        .filter_map(|text| parse_cidr(text))
        .map(|cidr| PodPrefix {
            addr: cidr.addr.ip(),
            len: cidr.prefix_len,
        })
        .collect()
}
