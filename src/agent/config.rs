//! The agent's configuration: one YAML file, every key documented here, unknown keys refused, every
//! value checked before anything starts, each error naming the key it is about.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use meshpath_control::clustermesh::RemoteLimits;
use meshpath_control::resolve::parse_cidr;
use meshpath_control::snapshot::AdmissionRules;
use meshpath_control::ClusterName;
use meshpath_dataplane::ipcache::IpPrefix;
use meshpath_dataplane::route::RoutingMode;
use meshpath_dataplane::tunnel::TunnelProtocol;
use meshpath_dataplane::wireguard::EncryptionMode;
use serde::Deserialize;
use thiserror::Error;

pub use super::external::section::{ExternalSection, Mode};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The parser names the key (unknown field, wrong type) and the line.
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {problem}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        problem: String,
    },
}

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentConfig {
    /// `node` (the default: a Kubernetes node, its pods behind veths) or `external`: a VM or
    /// bare-metal host that joins the cluster of `cluster` and `etcd` as an endpoint of its own,
    /// behind the host port (see `external`).
    #[serde(default)]
    pub mode: Mode,
    /// With `mode: external` only: the host's labels and namespace.
    pub external: Option<ExternalSection>,
    pub cluster: ClusterSection,
    pub node: NodeSection,
    /// The pods attached to this node: which interface each is behind.
    #[serde(default)]
    pub pods: Vec<PodAttachment>,
    #[serde(default)]
    pub dataplane: DataplaneSection,
    /// This cluster's own etcd: where the agent publishes its node, endpoints and services.
    pub etcd: Option<EtcdSection>,
    pub clustermesh: Option<ClusterMeshSection>,
    pub source: SourceSection,
    /// The unix socket the operator CLI talks to (and `<status-socket>.observe` beside it). Both
    /// are root's alone (mode 0600) unless this names a group (by name or number) whose members
    /// may connect too (mode 0660).
    pub status_socket: PathBuf,
    pub socket_group: Option<String>,
    /// Where Prometheus scrapes `GET /metrics`, as `address:port` (e.g. `127.0.0.1:9962`); no
    /// endpoint without it.
    pub metrics: Option<String>,
    /// `text` (the default: plain, in colour only at a terminal) or `json` (one object per line).
    #[serde(default)]
    pub log_format: super::logging::LogFormat,
    /// Where the health endpoint listens (`/livez`, `/readyz`, `/healthz`), as `address:port`;
    /// 127.0.0.1:9879 unless set, as Cilium's agent; `null` turns it off.
    #[serde(default = "default_health")]
    pub health: Option<String>,
    /// The node's own path: the veth pair through which the node's stack reaches the mesh and the
    /// mesh reaches the node and the world.
    #[serde(default)]
    pub host_port: HostPortSection,
    /// Source NAT of pod traffic leaving the mesh.
    #[serde(default)]
    pub masquerade: MasqueradeSection,
    /// Where the agent keeps what a restart needs (the conntrack handover file, the pods the CNI
    /// plugin attached), e.g.
    /// `/run/meshpath/state`; a tmpfs, so a reboot starts clean.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Transparent encryption of pod traffic between nodes with WireGuard (UDP 51871, as Cilium's):
    /// `off` (the default), `on` (encrypted to every node that publishes a key, plain to the others)
    /// or `strict` (never in clear: a node without a key is unreachable, plain frames from nodes of
    /// the mesh are dropped). The node's X25519 private key is `<state-dir>/wireguard.key` (base64,
    /// mode 0600, made on the first start with encryption and kept across restarts); its public key
    /// goes out in the node's record (`WireguardPubKey`).
    #[serde(default)]
    pub encryption: Encryption,
    /// Where the XDP programs' maps are pinned (a bpffs directory, one subdirectory per interface), so
    /// that a restarted agent keeps its tunnel peers, pod prefixes and counters.
    #[serde(default = "default_bpf_pin_dir")]
    pub bpf_pin_dir: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HostPortSection {
    /// The dataplane's end, served through AF_XDP (Cilium's `cilium_net`).
    #[serde(default = "default_host_interface")]
    pub interface: String,
    /// The node's stack's end, which its routes to pod CIDRs point at (Cilium's `cilium_host`).
    #[serde(default = "default_kernel_interface")]
    pub kernel_interface: String,
}

impl Default for HostPortSection {
    fn default() -> Self {
        HostPortSection {
            interface: default_host_interface(),
            kernel_interface: default_kernel_interface(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MasqueradeSection {
    /// Masquerade pod traffic to destinations outside the mesh behind the node's address.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The source ports it takes, `first-last`, outside the node's ephemeral ports.
    #[serde(default = "default_masquerade_ports")]
    pub ports: String,
    /// Destinations reached with the pod's own address (networks that route pod addresses), as
    /// ip-masq-agent's `nonMasqueradeCIDRs`. Empty by default: everything outside the mesh is
    /// masqueraded.
    #[serde(default)]
    pub non_masquerade_cidrs: Vec<String>,
}

impl Default for MasqueradeSection {
    fn default() -> Self {
        MasqueradeSection {
            enabled: true,
            ports: default_masquerade_ports(),
            non_masquerade_cidrs: Vec::new(),
        }
    }
}

impl MasqueradeSection {
    /// The checked non-masquerade prefixes: host bits must be zero (`10.0.0.1/8` is a typo).
    pub fn non_masquerade_prefixes(&self) -> Result<Vec<IpPrefix>, String> {
        self.non_masquerade_cidrs
            .iter()
            .map(|text| {
                let cidr = parse_cidr(text)
                    .ok_or_else(|| format!("`{text}` is not an address/length prefix"))?;
                IpPrefix::new(cidr.addr, cidr.prefix_len).map_err(|e| e.to_string())
            })
            .collect()
    }

    /// The checked port range.
    pub fn port_range(&self) -> Result<(u16, u16), String> {
        let bad = || format!("`{}` is not a range `first-last` of ports", self.ports);
        let (first, last) = self.ports.split_once('-').ok_or_else(bad)?;
        let first: u16 = first.trim().parse().map_err(|_| bad())?;
        let last: u16 = last.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(format!(
                "`{}`: the range must be 1..=65535 and first <= last",
                self.ports
            ));
        }
        Ok((first, last))
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterSection {
    /// The cluster's name: at most 32 of `[a-z0-9-]`.
    pub name: String,
    /// The cluster's mesh id, 1..=255; it owns the identities `id << 16 ..= (id << 16) | 0xffff`.
    pub id: u8,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeSection {
    /// This node's name, as the local state names it.
    pub name: String,
    /// The interface towards the underlay.
    pub uplink: String,
    /// The node's underlay IPv4 address: where other nodes send tunnel traffic.
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// The MAC of the underlay router towards other segments.
    pub router_mac: Mac,
    /// The pods' virtual gateway MAC.
    #[serde(default = "default_gateway_mac")]
    pub gateway_mac: Mac,
    /// The prefixes of the uplink's L2 segment, e.g. `[198.18.1.0/24]`: the nodes with an address
    /// inside one are reached at their own MAC (resolved on the uplink), every other node through
    /// `router-mac`. Default: the prefixes of the uplink's own addresses, as the kernel has them.
    #[serde(default)]
    pub segment_cidrs: Option<Vec<String>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PodAttachment {
    /// `namespace/name`.
    pub pod: String,
    /// The node-side interface of the pod's veth.
    pub interface: String,
    /// The pod's own MAC (its eth0).
    pub mac: Mac,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DataplaneSection {
    /// Cores for the dataplane workers: distinct, at most [`MAX_WORKERS`], one worker pinned to
    /// each. Worker `i` serves receive queue `i` of every interface (the uplink needs exactly as many
    /// receive queues as there are workers; the pods' and host port's veths are made with that many)
    /// and each flow is steered to the one worker that owns it (`meshpath_dataplane::steering`).
    /// More than one core only with `encryption: off`.
    pub cores: Vec<usize>,
    /// How pod traffic reaches other nodes: `tunnel` (always encapsulated), `native` (never, as
    /// Cilium's native routing with `auto-direct-node-routes`; `direct` is accepted as its alias: nodes
    /// on the uplink's segment are reached at their MAC, others only with
    /// `underlay-routes-pod-cidrs`) or `hybrid` (plain to the segment's nodes, encapsulated to others).
    pub routing: Routing,
    /// `vxlan` (UDP 8472) or `geneve` (UDP 6081): what `tunnel` and `hybrid` encapsulate with.
    pub tunnel: Tunnel,
    /// `native` routing only: the underlay's routers know every node's pod CIDRs (a cloud route
    /// table, BGP), so nodes off the uplink's segment are reached plain through `node.router-mac`, and
    /// their pods' frames are believed from it. Without it such nodes are refused (`node_off_segment`).
    #[serde(default)]
    pub underlay_routes_pod_cidrs: bool,
    /// Most flows the node tracks (262,144 by default; Cilium's own tables default to 512k TCP
    /// and 256k other flows, or are sized at 0.25 % of the node's memory, 131,072 at least), split
    /// evenly between the workers, each of which owns its flows' entries. A table takes 258 bytes a
    /// slot and has two slots or more a flow (the power of two above 4/3 of its capacity): 129 MiB
    /// by default, about 2 million flows a GiB. It is resident only as flows use it, page by page:
    /// an idle node pays nothing for it. At most [`MAX_CONNTRACK_CAPACITY`].
    pub conntrack_capacity: usize,
    /// Largest IP packet the uplink carries.
    pub mtu: u16,
    /// Most pods the CNI plugin may attach to this node at once (kubelet's `maxPods`, 110 by
    /// default). The worker's packet memory holds room for each from the start: 256 KiB a pod.
    #[serde(default = "default_max_pods")]
    pub max_pods: u32,
}

fn default_max_pods() -> u32 {
    110
}

/// Most pods one node may be asked to hold: the dataplane's port numbers and the memory each takes.
pub const MAX_PODS_LIMIT: u32 = 4096;

/// Most flows a worker's conntrack may be asked to hold: 2^24, whose table takes 8 GiB when full.
pub const MAX_CONNTRACK_CAPACITY: usize = 1 << 24;

impl Default for DataplaneSection {
    fn default() -> Self {
        DataplaneSection {
            cores: vec![0],
            routing: Routing::Tunnel,
            tunnel: Tunnel::Vxlan,
            underlay_routes_pod_cidrs: false,
            conntrack_capacity: 262_144,
            mtu: 1500,
            max_pods: default_max_pods(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Encryption {
    #[default]
    Off,
    On,
    Strict,
}

impl From<Encryption> for EncryptionMode {
    fn from(encryption: Encryption) -> EncryptionMode {
        match encryption {
            Encryption::Off => EncryptionMode::Off,
            Encryption::On => EncryptionMode::On,
            Encryption::Strict => EncryptionMode::Strict,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    Tunnel,
    #[serde(alias = "direct")]
    Native,
    Hybrid,
}

impl DataplaneSection {
    pub fn routing_mode(&self) -> RoutingMode {
        match self.routing {
            Routing::Tunnel => RoutingMode::Tunnel,
            Routing::Native => RoutingMode::Native {
                underlay_routes_pods: self.underlay_routes_pod_cidrs,
            },
            Routing::Hybrid => RoutingMode::Hybrid,
        }
    }
}

impl NodeSection {
    /// The checked `segment-cidrs`, if configured: host bits must be zero.
    pub fn segment_prefixes(&self) -> Result<Option<Vec<IpPrefix>>, String> {
        let Some(cidrs) = &self.segment_cidrs else {
            return Ok(None);
        };
        let prefixes = cidrs.iter().map(|text| {
            let cidr = parse_cidr(text)
                .ok_or_else(|| format!("`{text}` is not an address/length prefix"))?;
            IpPrefix::new(cidr.addr, cidr.prefix_len).map_err(|e| e.to_string())
        });
        prefixes.collect::<Result<_, _>>().map(Some)
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Tunnel {
    Vxlan,
    Geneve,
}

impl From<Tunnel> for TunnelProtocol {
    fn from(t: Tunnel) -> Self {
        match t {
            Tunnel::Vxlan => TunnelProtocol::Vxlan,
            Tunnel::Geneve => TunnelProtocol::Geneve,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EtcdSection {
    pub endpoints: Vec<String>,
    pub trusted_ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Allow `http://` endpoints (no TLS): for labs only.
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterMeshSection {
    /// One file per remote cluster, named after it.
    pub config_dir: PathBuf,
    /// How long a lost remote's entries stay before they are withdrawn, e.g. `60s`.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub grace_period: Duration,
    /// With `service.cilium.io/affinity: local`, remote backends join once the fraction of ready
    /// local backends falls below this (0.0: only when none is ready, as Cilium does).
    #[serde(default)]
    pub local_affinity_threshold: f64,
    /// The shortest pod CIDR a remote may claim, per family; shorter ones are refused (default
    /// `{ipv4: 16, ipv6: 48}`).
    #[serde(default)]
    pub min_pod_cidr_prefix: MinPodCidrPrefix,
    /// What one remote cluster may hold in this agent; past a limit it is degraded and its excess
    /// keys are ignored.
    #[serde(default)]
    pub limits: RemoteLimitsSection,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MinPodCidrPrefix {
    #[serde(default = "default_min_ipv4")]
    pub ipv4: u8,
    #[serde(default = "default_min_ipv6")]
    pub ipv6: u8,
}

impl Default for MinPodCidrPrefix {
    fn default() -> Self {
        MinPodCidrPrefix {
            ipv4: default_min_ipv4(),
            ipv6: default_min_ipv6(),
        }
    }
}

fn default_min_ipv4() -> u8 {
    AdmissionRules::default().min_pod_cidr_ipv4
}

fn default_min_ipv6() -> u8 {
    AdmissionRules::default().min_pod_cidr_ipv6
}

/// Per remote cluster; the defaults hold 100k endpoints, 10k services and the 65,536 identities of a
/// cluster id's range.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RemoteLimitsSection {
    /// Keys of every kind (default 250000).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// Memory the remote's entries take here, in bytes, as estimated from their decoded size
    /// (default 268435456: 256 MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Identities (default 65536).
    #[serde(default = "default_max_identities")]
    pub max_identities: usize,
    /// A bigger value is refused unread (default 1048576: 1 MiB).
    #[serde(default = "default_max_value_bytes")]
    pub max_value_bytes: usize,
}

impl Default for RemoteLimitsSection {
    fn default() -> Self {
        let d = RemoteLimits::default();
        RemoteLimitsSection {
            max_keys: d.max_keys,
            max_bytes: d.max_bytes,
            max_identities: d.max_identities,
            max_value_bytes: d.max_value_bytes,
        }
    }
}

fn default_max_keys() -> usize {
    RemoteLimits::default().max_keys
}

fn default_max_bytes() -> usize {
    RemoteLimits::default().max_bytes
}

fn default_max_identities() -> usize {
    RemoteLimits::default().max_identities
}

fn default_max_value_bytes() -> usize {
    RemoteLimits::default().max_value_bytes
}

impl ClusterMeshSection {
    pub fn admission(&self) -> AdmissionRules {
        AdmissionRules {
            min_pod_cidr_ipv4: self.min_pod_cidr_prefix.ipv4,
            min_pod_cidr_ipv6: self.min_pod_cidr_prefix.ipv6,
        }
    }

    pub fn remote_limits(&self) -> RemoteLimits {
        let l = &self.limits;
        RemoteLimits {
            max_keys: l.max_keys,
            max_bytes: l.max_bytes,
            max_identities: l.max_identities,
            max_value_bytes: l.max_value_bytes,
        }
    }
}

/// Where the local state comes from: exactly one of these.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SourceSection {
    /// A directory of Kubernetes-shaped YAML files, watched.
    pub yaml_dir: Option<PathBuf>,
    /// The Kubernetes API server: `{}` for the pod's own service account (its token and CA under
    /// /var/run/secrets/kubernetes.io/serviceaccount, the server from `KUBERNETES_SERVICE_HOST` and
    /// `KUBERNETES_SERVICE_PORT`), or `{kubeconfig: PATH}`.
    pub kubernetes: Option<KubernetesSection>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KubernetesSection {
    /// A kubeconfig file: its server, CA and credentials; in-cluster configuration without it.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig's context to use; its current context unless set.
    pub context: Option<String>,
}

/// A MAC address written `02:00:00:00:00:01`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts
                .next()
                .ok_or_else(|| format!("`{s}` is not a MAC address"))?;
            *byte =
                u8::from_str_radix(part, 16).map_err(|_| format!("`{s}` is not a MAC address"))?;
        }
        match parts.next() {
            None => Ok(Mac(mac)),
            Some(_) => Err(format!("`{s}` is not a MAC address")),
        }
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn default_gateway_mac() -> Mac {
    Mac([0x02, 0x6d, 0x70, 0, 0, 1])
}

fn default_host_interface() -> String {
    "meshpath_net".into()
}

fn default_kernel_interface() -> String {
    "meshpath_host".into()
}

fn default_masquerade_ports() -> String {
    "61000-65535".into()
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/run/meshpath/state")
}

fn default_health() -> Option<String> {
    Some("127.0.0.1:9879".into())
}

fn default_bpf_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/meshpath")
}

fn yes() -> bool {
    true
}

fn default_grace() -> Duration {
    Duration::from_secs(60)
}

impl AgentConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        AgentConfig::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<AgentConfig, ConfigError> {
        let config: AgentConfig =
            meshpath_control::yaml::from_str(text).map_err(|e| ConfigError::Syntax {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        config
            .validate()
            .map_err(|(key, problem)| ConfigError::Invalid {
                path: path.to_owned(),
                key,
                problem,
            })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        ClusterName::new(&self.cluster.name).map_err(|e| ("cluster.name", e.to_string()))?;
        if self.cluster.id == 0 {
            return Err(("cluster.id", "must be 1..=255: 0 is no mesh id".into()));
        }
        if self.node.ipv4.is_none() && self.node.ipv6.is_none() {
            return Err((
                "node.ipv4",
                "the node needs an underlay address (ipv4 or ipv6)".into(),
            ));
        }
        check_cores(&self.dataplane.cores, core_count(), self.encryption)
            .map_err(|problem| ("dataplane.cores", problem))?;
        if self.dataplane.conntrack_capacity == 0 {
            return Err(("dataplane.conntrack-capacity", "must be positive".into()));
        }
        if self.dataplane.conntrack_capacity > MAX_CONNTRACK_CAPACITY {
            return Err((
                "dataplane.conntrack-capacity",
                format!(
                    "{} is more than {MAX_CONNTRACK_CAPACITY} (whose table takes 8 GiB)",
                    self.dataplane.conntrack_capacity
                ),
            ));
        }
        if self.dataplane.max_pods > MAX_PODS_LIMIT {
            return Err((
                "dataplane.max-pods",
                format!("{} is more than {MAX_PODS_LIMIT}", self.dataplane.max_pods),
            ));
        }
        if self.dataplane.underlay_routes_pod_cidrs && self.dataplane.routing != Routing::Native {
            return Err((
                "dataplane.underlay-routes-pod-cidrs",
                "only native routing sends pod traffic plain through the underlay's router".into(),
            ));
        }
        self.node
            .segment_prefixes()
            .map_err(|problem| ("node.segment-cidrs", problem))?;
        if self.dataplane.mtu < 1280 {
            return Err((
                "dataplane.mtu",
                format!("{} is below IPv6's minimum of 1280", self.dataplane.mtu),
            ));
        }
        for pod in &self.pods {
            if pod
                .pod
                .split_once('/')
                .is_none_or(|(ns, name)| ns.is_empty() || name.is_empty())
            {
                return Err(("pods[].pod", format!("`{}` is not namespace/name", pod.pod)));
            }
        }
        if self.source.yaml_dir.is_some() == self.source.kubernetes.is_some() {
            return Err((
                "source",
                "exactly one of `yaml-dir: DIR` and `kubernetes: {}` (or `{kubeconfig: PATH}`)"
                    .into(),
            ));
        }
        if let Some(k) = &self.source.kubernetes {
            if k.context.is_some() && k.kubeconfig.is_none() {
                return Err((
                    "source.kubernetes.context",
                    "a context is one of a kubeconfig's: set `kubeconfig` too".into(),
                ));
            }
        }
        if let Some(text) = &self.metrics {
            check_listen("metrics", text)?;
        }
        if let Some(text) = &self.health {
            check_listen("health", text)?;
        }
        self.socket_access()
            .map_err(|problem| ("socket-group", problem))?;
        check_host_port(&self.host_port, &self.node, &self.pods)?;
        self.masquerade
            .port_range()
            .map_err(|problem| ("masquerade.ports", problem))?;
        self.masquerade
            .non_masquerade_prefixes()
            .map_err(|problem| ("masquerade.non-masquerade-cidrs", problem))?;
        if let Some(etcd) = &self.etcd {
            check_etcd(etcd)?;
        }
        if let Some(mesh) = &self.clustermesh {
            check_clustermesh(mesh)?;
        }
        super::external::section::check(self)
    }
}

impl AgentConfig {
    /// Who may connect to the agent's sockets besides root.
    pub fn socket_access(&self) -> Result<super::socket::Access, String> {
        let group = self.socket_group.as_deref().map(super::socket::group_id);
        Ok(super::socket::Access {
            group: group.transpose()?,
        })
    }

    /// The checked `metrics` address, if one is configured.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics.as_deref().and_then(|text| text.parse().ok())
    }

    /// The checked `health` address, unless it is turned off.
    pub fn health_address(&self) -> Option<SocketAddr> {
        self.health.as_deref().and_then(|text| text.parse().ok())
    }
}

/// An address to listen on that others are told: a fixed port.
fn check_listen(key: &'static str, text: &str) -> Result<(), (&'static str, String)> {
    let address: SocketAddr = text.parse().map_err(|_| {
        (
            key,
            format!("`{text}` is not an address:port such as 127.0.0.1:9962"),
        )
    })?;
    if address.port() == 0 {
        return Err((key, format!("`{text}`: port 0 is no fixed port to reach")));
    }
    Ok(())
}

fn check_host_port(
    host: &HostPortSection,
    node: &NodeSection,
    pods: &[PodAttachment],
) -> Result<(), (&'static str, String)> {
    for (key, name) in [
        ("host-port.interface", &host.interface),
        ("host-port.kernel-interface", &host.kernel_interface),
    ] {
        // IFNAMSIZ is 16 with the NUL.
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            return Err((key, format!("`{name}` is no interface name")));
        }
        let taken = *name == node.uplink || pods.iter().any(|p| p.interface == **name);
        if taken {
            return Err((
                key,
                format!("`{name}` is the uplink's or a pod's interface"),
            ));
        }
    }
    if host.interface == host.kernel_interface {
        return Err((
            "host-port.kernel-interface",
            "must differ from host-port.interface".into(),
        ));
    }
    Ok(())
}

fn check_clustermesh(mesh: &ClusterMeshSection) -> Result<(), (&'static str, String)> {
    if !(0.0..=1.0).contains(&mesh.local_affinity_threshold) {
        return Err((
            "clustermesh.local-affinity-threshold",
            "must be within 0.0..=1.0".into(),
        ));
    }
    let min = &mesh.min_pod_cidr_prefix;
    if min.ipv4 > 32 {
        return Err((
            "clustermesh.min-pod-cidr-prefix.ipv4",
            format!("{} is longer than an IPv4 address", min.ipv4),
        ));
    }
    if min.ipv6 > 128 {
        return Err((
            "clustermesh.min-pod-cidr-prefix.ipv6",
            format!("{} is longer than an IPv6 address", min.ipv6),
        ));
    }
    let l = &mesh.limits;
    for (key, value) in [
        ("clustermesh.limits.max-keys", l.max_keys),
        ("clustermesh.limits.max-bytes", l.max_bytes),
        ("clustermesh.limits.max-identities", l.max_identities),
        ("clustermesh.limits.max-value-bytes", l.max_value_bytes),
    ] {
        if value == 0 {
            return Err((key, "must be positive".into()));
        }
    }
    Ok(())
}

fn check_etcd(etcd: &EtcdSection) -> Result<(), (&'static str, String)> {
    if etcd.endpoints.is_empty() {
        return Err(("etcd.endpoints", "at least one endpoint".into()));
    }
    for endpoint in &etcd.endpoints {
        let plain = endpoint.starts_with("http://");
        if !plain && !endpoint.starts_with("https://") {
            return Err((
                "etcd.endpoints",
                format!("`{endpoint}` is neither https:// nor http://"),
            ));
        }
        if plain && !etcd.insecure {
            return Err((
                "etcd.endpoints",
                format!("`{endpoint}` is plain http: set `insecure: true` to allow it"),
            ));
        }
    }
    let tls = [&etcd.trusted_ca_file, &etcd.cert_file, &etcd.key_file];
    if !etcd.insecure && tls.iter().any(|f| f.is_none()) {
        return Err((
            "etcd.trusted-ca-file",
            "TLS needs trusted-ca-file, cert-file and key-file".into(),
        ));
    }
    Ok(())
}

/// Most workers a node runs: steering's worker index and the handoff rings between every pair.
pub const MAX_WORKERS: usize = 64;

/// `dataplane.cores`: distinct cores of this machine (`available` of them), one worker each, at least
/// one and at most [`MAX_WORKERS`]. More than one only without encryption: WireGuard datagrams are
/// steered by their outer ends, so one peer's inner flows would meet a worker that does not own them
/// (see `meshpath_dataplane::steering`, "Known limits").
fn check_cores(cores: &[usize], available: usize, encryption: Encryption) -> Result<(), String> {
    if cores.is_empty() {
        return Err("at least one core".into());
    }
    if cores.len() > MAX_WORKERS {
        return Err(format!(
            "{} cores: a node runs at most {MAX_WORKERS} workers",
            cores.len()
        ));
    }
    if let Some(core) = cores.iter().find(|c| **c >= available) {
        return Err(format!(
            "core {core} does not exist: this machine has {available}"
        ));
    }
    if let Some((i, core)) = cores
        .iter()
        .enumerate()
        .find(|(i, c)| cores[..*i].contains(c))
    {
        return Err(format!(
            "core {core} is listed twice (entry {i}): one worker per core"
        ));
    }
    if cores.len() > 1 && encryption != Encryption::Off {
        return Err(format!(
            "{} cores with encryption: a node with WireGuard runs one worker, since a peer's \
             datagrams are steered by their outer addresses and not by the flows inside",
            cores.len()
        ));
    }
    Ok(())
}

fn core_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A complete configuration, for tests here and elsewhere in the agent.
#[cfg(test)]
pub(crate) const TEST_CONFIG: &str = r#"
cluster: {name: cluster1, id: 1}
node:
  name: c1-n1
  uplink: uplink0
  ipv4: 198.18.1.1
  router-mac: "02:00:00:00:00:fe"
pods:
  - {pod: default/x-wing-1, interface: p1, mac: "02:00:00:01:01:0a"}
dataplane: {cores: [0], routing: hybrid, tunnel: vxlan, conntrack-capacity: 1024, mtu: 1500}
etcd: {endpoints: ["http://198.18.1.1:2379"], insecure: true}
clustermesh: {config-dir: /etc/meshpath/clustermesh, grace-period: 5s}
source: {yaml-dir: /etc/meshpath/state}
status-socket: /run/meshpath/c1-n1.sock
metrics: 127.0.0.1:9962
"#;

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = TEST_CONFIG;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(Path::new("agent.yaml"), text)
    }

    #[test]
    fn a_complete_config_parses() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.dataplane.routing, Routing::Hybrid);
        assert_eq!(
            config.metrics_address(),
            Some(([127, 0, 0, 1], 9962).into())
        );
        assert_eq!(config.pods[0].mac, Mac([2, 0, 0, 1, 1, 0x0a]));
        assert_eq!(
            config.clustermesh.unwrap().grace_period,
            Duration::from_secs(5)
        );
        assert_eq!(config.node.gateway_mac, default_gateway_mac());
        assert_eq!(config.host_port.kernel_interface, "meshpath_host");
        assert!(config.masquerade.enabled);
        assert_eq!(config.masquerade.port_range(), Ok((61000, 65535)));
        let without = parse(&GOOD.replace("metrics: 127.0.0.1:9962", "")).unwrap();
        assert_eq!(without.metrics_address(), None);
        assert_eq!(
            without.socket_access(),
            Ok(Default::default()),
            "root's alone"
        );
        let shared = parse(&format!("{GOOD}socket-group: root\n")).unwrap();
        assert_eq!(shared.socket_access().map(|a| a.group), Ok(Some(0)));
    }

    /// vm1 joining cluster1: its labels, no pods.
    fn external() -> String {
        GOOD.replace(
            "pods:\n  - {pod: default/x-wing-1, interface: p1, mac: \"02:00:00:01:01:0a\"}\n",
            "mode: external\nexternal: {labels: {app: vm-db}}\n",
        )
        .replace("routing: hybrid", "routing: tunnel")
    }

    #[test]
    fn an_external_workload_has_labels_an_etcd_and_no_pods() {
        let config = parse(&external()).unwrap();
        assert_eq!(config.mode, Mode::External);
        let section = config.external.unwrap();
        assert_eq!(section.labels["app"], "vm-db");
        assert_eq!(section.namespace, "default");
        for (text, key) in [
            (external().replace("mode: external\n", ""), "`external`"),
            (
                external().replace("external: {labels: {app: vm-db}}\n", ""),
                "`external`",
            ),
            (
                external().replace("{app: vm-db}", "{}"),
                "`external.labels`",
            ),
            (
                external().replace("{app: vm-db}", "{io.kubernetes.pod.namespace: x}"),
                "`external.labels`",
            ),
            (
                external().replace(
                    "{labels: {app: vm-db}}",
                    "{labels: {app: vm-db}, namespace: Db}",
                ),
                "`external.namespace`",
            ),
            (
                external().replace(
                    "etcd: {endpoints: [\"http://198.18.1.1:2379\"], insecure: true}\n",
                    "",
                ),
                "`etcd`",
            ),
            (
                format!(
                    "{}pods:\n  - {{pod: default/x, interface: p1, mac: \"02:00:00:01:01:0a\"}}\n",
                    external()
                ),
                "`pods`",
            ),
            (
                external().replace("{yaml-dir: /etc/meshpath/state}", "{kubernetes: {}}"),
                "`source.kubernetes`",
            ),
            (
                external().replace("routing: tunnel", "routing: native"),
                "`dataplane.routing`",
            ),
        ] {
            let error = parse(&text).unwrap_err().to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
    }

    #[test]
    fn the_kubernetes_source_in_cluster_or_from_a_kubeconfig() {
        let in_cluster = GOOD.replace("{yaml-dir: /etc/meshpath/state}", "{kubernetes: {}}");
        let source = parse(&in_cluster).unwrap().source;
        assert!(source.yaml_dir.is_none());
        assert!(source.kubernetes.unwrap().kubeconfig.is_none());
        let file = GOOD.replace(
            "{yaml-dir: /etc/meshpath/state}",
            "{kubernetes: {kubeconfig: /etc/meshpath/kubeconfig, context: lab}}",
        );
        let k = parse(&file).unwrap().source.kubernetes.unwrap();
        assert_eq!(k.kubeconfig.unwrap(), Path::new("/etc/meshpath/kubeconfig"));
        assert_eq!(k.context.as_deref(), Some("lab"));
        let typo = GOOD.replace(
            "{yaml-dir: /etc/meshpath/state}",
            "{kubernetes: {kubeconf: /x}}",
        );
        let error = parse(&typo).unwrap_err().to_string();
        assert!(error.contains("kubeconf"), "{error}");
    }

    #[test]
    fn a_bad_metrics_address_is_refused_naming_the_key() {
        for bad in [
            "localhost:9962",
            "127.0.0.1",
            "127.0.0.1:99999",
            "\"[::1]:0\"",
        ] {
            let text = GOOD.replace("127.0.0.1:9962", bad);
            let error = parse(&text).unwrap_err().to_string();
            assert!(error.contains("`metrics`"), "{bad}: {error}");
        }
        let v6 = parse(&GOOD.replace("127.0.0.1:9962", "\"[::1]:9962\"")).unwrap();
        assert_eq!(v6.metrics_address().map(|a| a.port()), Some(9962));
    }

    proptest::proptest! {
        #[test]
        fn every_metrics_address_with_a_port_is_taken_as_written(
            ip in proptest::arbitrary::any::<std::net::IpAddr>(),
            port in proptest::arbitrary::any::<u16>(),
        ) {
            let address = SocketAddr::new(ip, port);
            let text = GOOD.replace("127.0.0.1:9962", &format!("\"{address}\""));
            match parse(&text) {
                Ok(config) => {
                    proptest::prop_assert_ne!(address.port(), 0);
                    proptest::prop_assert_eq!(config.metrics_address(), Some(address));
                }
                Err(error) => {
                    proptest::prop_assert_eq!(address.port(), 0);
                    proptest::prop_assert!(error.to_string().contains("`metrics`"));
                }
            }
        }

        #[test]
        fn any_metrics_text_is_taken_or_refused_naming_the_key(text in "[ -~]{0,40}") {
            let quoted = serde_json::to_string(&text).unwrap();
            let yaml = GOOD.replace("127.0.0.1:9962", &quoted);
            let parsed = parse(&yaml);
            match (parsed, text.parse::<SocketAddr>()) {
                (Ok(config), Ok(address)) => {
                    proptest::prop_assert_eq!(config.metrics_address(), Some(address))
                }
                (Err(error), _) => proptest::prop_assert!(
                    error.to_string().contains("`metrics`"),
                    "{}",
                    error
                ),
                (Ok(_), Err(_)) => proptest::prop_assert!(false, "`{}` taken", text),
            }
        }
    }

    #[test]
    fn a_typo_is_refused_with_the_key_it_names() {
        let typo = GOOD.replace("conntrack-capacity", "conntrak-capacity");
        let error = parse(&typo).unwrap_err().to_string();
        assert!(
            error.contains("unknown field `conntrak-capacity`"),
            "{error}"
        );
        assert!(error.starts_with("agent.yaml:"), "{error}");
    }

    #[test]
    fn an_error_names_its_line() {
        // `dataplane:` is the 10th line of GOOD (which starts with a newline).
        let typo = GOOD.replace("conntrack-capacity", "conntrak-capacity");
        let error = parse(&typo).unwrap_err().to_string();
        assert!(error.contains(" at line 10, column "), "{error}");
        let bad_type = GOOD.replace("mtu: 1500", "mtu: [1500]");
        let error = parse(&bad_type).unwrap_err().to_string();
        assert!(error.contains(" at line 10, column "), "{error}");
        let syntax = GOOD.replace("status-socket: /run", "status-socket: [/run");
        let error = parse(&syntax).unwrap_err().to_string();
        assert!(error.contains(" at line "), "{error}");
    }

    #[test]
    fn the_clustermesh_trust_keys_have_documented_defaults_and_are_checked() {
        let mesh = parse(GOOD).unwrap().clustermesh.unwrap();
        assert_eq!(mesh.admission(), AdmissionRules::default());
        assert_eq!(
            (
                mesh.admission().min_pod_cidr_ipv4,
                mesh.admission().min_pod_cidr_ipv6
            ),
            (16, 48)
        );
        assert_eq!(mesh.remote_limits(), RemoteLimits::default());
        let set = GOOD.replace(
            "grace-period: 5s}",
            "grace-period: 5s, min-pod-cidr-prefix: {ipv4: 20}, limits: {max-keys: 1000}}",
        );
        let mesh = parse(&set).unwrap().clustermesh.unwrap();
        assert_eq!(mesh.admission().min_pod_cidr_ipv4, 20);
        assert_eq!(mesh.admission().min_pod_cidr_ipv6, 48);
        assert_eq!(mesh.remote_limits().max_keys, 1000);
        assert_eq!(mesh.remote_limits().max_identities, 65_536);
        for (bad, key) in [
            (
                "min-pod-cidr-prefix: {ipv4: 33}",
                "clustermesh.min-pod-cidr-prefix.ipv4",
            ),
            ("limits: {max-keys: 0}", "clustermesh.limits.max-keys"),
        ] {
            let text = GOOD.replace("grace-period: 5s}", &format!("grace-period: 5s, {bad}}}"));
            let error = parse(&text).unwrap_err().to_string();
            assert!(error.contains(&format!("`{key}`")), "{bad}: {error}");
        }
        let typo = GOOD.replace(
            "grace-period: 5s}",
            "grace-period: 5s, limits: {max-key: 9}}",
        );
        let error = parse(&typo).unwrap_err().to_string();
        assert!(error.contains("max-key"), "{error}");
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        let cases = [
            (GOOD.replace("id: 1}", "id: 0}"), "cluster.id"),
            (
                GOOD.replace("name: cluster1", "name: Cluster_1"),
                "cluster.name",
            ),
            (
                GOOD.replace("insecure: true", "insecure: false"),
                "etcd.endpoints",
            ),
            (GOOD.replace("mtu: 1500", "mtu: 576"), "dataplane.mtu"),
            (
                GOOD.replace("mtu: 1500", "mtu: 1500, max-pods: 5000"),
                "dataplane.max-pods",
            ),
            (
                GOOD.replace("conntrack-capacity: 1024", "conntrack-capacity: 16777217"),
                "dataplane.conntrack-capacity",
            ),
            (
                GOOD.replace("conntrack-capacity: 1024", "conntrack-capacity: 0"),
                "dataplane.conntrack-capacity",
            ),
            (
                GOOD.replace("mtu: 1500", "mtu: 1500, underlay-routes-pod-cidrs: true"),
                "dataplane.underlay-routes-pod-cidrs",
            ),
            (
                GOOD.replace(
                    "router-mac:",
                    "segment-cidrs: [198.18.1.1/24]\n  router-mac:",
                ),
                "node.segment-cidrs",
            ),
            (
                GOOD.replace("cores: [0]", "cores: [4096]"),
                "dataplane.cores",
            ),
            (GOOD.replace("default/x-wing-1", "x-wing-1"), "pods[].pod"),
            (
                format!("{GOOD}masquerade: {{ports: 70000-70001}}\n"),
                "masquerade.ports",
            ),
            (
                format!("{GOOD}masquerade: {{non-masquerade-cidrs: [10.0.0.1/8]}}\n"),
                "masquerade.non-masquerade-cidrs",
            ),
            (
                format!("{GOOD}host-port: {{interface: uplink0}}\n"),
                "host-port.interface",
            ),
            (
                GOOD.replace(
                    "{yaml-dir: /etc/meshpath/state}",
                    "{yaml-dir: /etc/meshpath/state, kubernetes: {}}",
                ),
                "source",
            ),
            (
                GOOD.replace("{yaml-dir: /etc/meshpath/state}", "{}"),
                "source",
            ),
            (
                GOOD.replace(
                    "{yaml-dir: /etc/meshpath/state}",
                    "{kubernetes: {context: lab}}",
                ),
                "source.kubernetes.context",
            ),
            (
                format!("{GOOD}socket-group: no-such-group-here\n"),
                "socket-group",
            ),
            (format!("{GOOD}health: 127.0.0.1:0\n"), "health"),
        ];
        for (text, key) in cases {
            let error = parse(&text).unwrap_err().to_string();
            assert!(error.contains(&format!("`{key}`")), "{key}: {error}");
        }
        let error = parse(&GOOD.replace("02:00:00:00:00:fe", "02:00:zz:00:00:fe")).unwrap_err();
        assert!(error.to_string().contains("not a MAC address"), "{error}");
        let error = parse(&GOOD.replace("routing: hybrid", "routing: bgp")).unwrap_err();
        assert!(error.to_string().contains("bgp"), "{error}");
    }

    #[test]
    fn native_routing_is_named_as_cilium_names_it_and_direct_is_its_alias() {
        for word in ["native", "direct"] {
            let text = GOOD.replace(
                "routing: hybrid",
                &format!("routing: {word}, underlay-routes-pod-cidrs: true"),
            );
            let config = parse(&text).unwrap();
            assert_eq!(
                config.dataplane.routing_mode(),
                RoutingMode::Native {
                    underlay_routes_pods: true
                },
                "{word}"
            );
        }
        let config = parse(&GOOD.replace("routing: hybrid", "routing: native")).unwrap();
        assert_eq!(
            config.dataplane.routing_mode(),
            RoutingMode::Native {
                underlay_routes_pods: false
            }
        );
        assert_eq!(config.node.segment_prefixes(), Ok(None));
        let segment = GOOD.replace(
            "router-mac:",
            "segment-cidrs: [198.18.1.0/24]\n  router-mac:",
        );
        assert_eq!(
            parse(&segment).unwrap().node.segment_prefixes(),
            Ok(Some(vec!["198.18.1.0/24".parse().unwrap()]))
        );
    }

    #[test]
    fn cores_are_distinct_existing_at_most_64_and_one_with_encryption() {
        let off = Encryption::Off;
        assert_eq!(check_cores(&[0], 2, off), Ok(()));
        assert_eq!(check_cores(&[1, 0], 2, off), Ok(()));
        let many: Vec<usize> = (0..MAX_WORKERS).collect();
        assert_eq!(check_cores(&many, 128, off), Ok(()));
        assert_eq!(check_cores(&[3], 4, Encryption::Strict), Ok(()));
        let refused = [
            (check_cores(&[], 2, off), "at least one"),
            (check_cores(&[0, 2], 2, off), "core 2 does not exist"),
            (check_cores(&[0, 1, 0], 2, off), "core 0 is listed twice"),
            (
                check_cores(&(0..65).collect::<Vec<_>>(), 128, off),
                "at most 64",
            ),
            (check_cores(&[0, 1], 2, Encryption::On), "with encryption"),
            (
                check_cores(&[0, 1], 2, Encryption::Strict),
                "with encryption",
            ),
        ];
        for (result, words) in refused {
            let problem = result.unwrap_err();
            assert!(problem.contains(words), "{problem}");
        }
        let error = parse(&GOOD.replace("cores: [0]", "cores: [0, 0]"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("dataplane.cores"), "{error}");
    }

    #[test]
    fn encryption_is_off_unless_set_and_a_wrong_mode_is_refused() {
        assert_eq!(parse(GOOD).unwrap().encryption, Encryption::Off);
        for (word, mode) in [
            ("off", EncryptionMode::Off),
            ("on", EncryptionMode::On),
            ("strict", EncryptionMode::Strict),
        ] {
            let config = parse(&format!("{GOOD}\nencryption: {word}\n")).unwrap();
            assert_eq!(EncryptionMode::from(config.encryption), mode);
        }
        let error = parse(&format!("{GOOD}\nencryption: ipsec\n")).unwrap_err();
        let error = error.to_string();
        assert!(
            error.contains("`ipsec`, expected one of off, on, strict at line"),
            "{error}"
        );
    }
}
