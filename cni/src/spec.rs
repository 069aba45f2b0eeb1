//! What the CNI specification (1.0.0, and STATUS from 1.1.0) has a runtime and a plugin exchange: the
//! `CNI_*` environment, the network configuration on stdin, and the result or error on stdout.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use meshpath_api::cni::{ContainerRef, PodName};
use serde::{Deserialize, Serialize};

/// The versions this plugin speaks; the first is what VERSION answers when asked nothing older.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];

/// Where the agent's pod socket is by default: beside the status socket the DaemonSet configures.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/meshpath/agent.sock.cni";
/// Where the addresses handed out are kept, one file each.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/meshpath/cni";

/// The spec's well-known error codes, and this plugin's own (100 and up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    IncompatibleVersion = 1,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    /// STATUS: the plugin cannot serve ADD now (1.1.0).
    NotAvailable = 50,
    /// The agent refused or failed to attach the pod.
    Agent = 100,
    /// No address left in the node's pod CIDR.
    NoAddress = 101,
    /// CHECK found the pod's network other than ADD left it.
    CheckFailed = 102,
}

/// A failed command, as the runtime reads it from stdout.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: &str, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.to_owned(),
            details: details.into(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorOutput<'a> {
    pub cni_version: &'a str,
    pub code: u32,
    pub msg: &'a str,
    pub details: &'a str,
}

impl CniError {
    pub fn output<'a>(&'a self, version: &'a str) -> ErrorOutput<'a> {
        ErrorOutput {
            cni_version: version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        }
    }
}

/// The command a runtime runs the plugin for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Version,
}

/// The runtime's `CNI_*` variables, as the command needs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container: Option<ContainerRef>,
    /// `CNI_NETNS`: a path to the container's network namespace (may be empty for DEL).
    pub netns: Option<PathBuf>,
    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` from `CNI_ARGS`.
    pub pod: Option<PodName>,
    /// The addresses the runtime asks for: `IP` in `CNI_ARGS` (comma-separated), as host-local reads it.
    pub requested_ips: Vec<IpAddr>,
}

fn invalid_env(details: String) -> CniError {
    CniError::new(
        ErrorCode::InvalidEnvironment,
        "invalid CNI environment",
        details,
    )
}

impl Env {
    /// Reads the environment through `var` (the process's, or a test's).
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let present = |name: &str| var(name).filter(|v| !v.is_empty());
        let command = match present("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("STATUS") => Command::Status,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(invalid_env(format!(
                    "CNI_COMMAND `{other}` is none of ADD, DEL, CHECK, STATUS, VERSION"
                )))
            }
            None => return Err(invalid_env("CNI_COMMAND is not set".into())),
        };
        let mut env = Env {
            command,
            container: None,
            netns: present("CNI_NETNS").map(PathBuf::from),
            pod: None,
            requested_ips: Vec::new(),
        };
        if matches!(command, Command::Status | Command::Version) {
            return Ok(env);
        }
        let required =
            |name: &str| present(name).ok_or_else(|| invalid_env(format!("{name} is not set")));
        let container_id = required("CNI_CONTAINERID")?;
        if !container_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid_env(format!("CNI_CONTAINERID `{container_id}` has characters other than letters, digits, `-`, `_` and `.`")));
        }
        let ifname = required("CNI_IFNAME")?;
        check_ifname(&ifname).map_err(invalid_env)?;
        env.container = Some(ContainerRef {
            container_id,
            ifname,
        });
        if command != Command::Del && env.netns.is_none() {
            return Err(invalid_env("CNI_NETNS is not set".into()));
        }
        let args = CniArgs::parse(&present("CNI_ARGS").unwrap_or_default()).map_err(invalid_env)?;
        env.pod = args.pod;
        env.requested_ips = args.ips;
        if command == Command::Add && env.pod.is_none() {
            return Err(invalid_env("CNI_ARGS names no pod (K8S_POD_NAMESPACE and K8S_POD_NAME): the agent joins a pod to its labels by them".into()));
        }
        Ok(env)
    }
}

/// A name the kernel takes for an interface (`IFNAMSIZ`, no `/`, no space).
pub fn check_ifname(name: &str) -> Result<(), String> {
    let fits = (1..=15).contains(&name.len()) && name != "." && name != "..";
    if fits
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is no interface name (1 to 15 bytes, no `/`, `:` or space)"
        ))
    }
}

/// What this plugin reads of `CNI_ARGS` (`K=V;K=V`); other keys are the runtime's.
struct CniArgs {
    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME`; `None` when they name none.
    pod: Option<PodName>,
    /// `IP`: the addresses asked for.
    ips: Vec<IpAddr>,
}

impl CniArgs {
    fn parse(args: &str) -> Result<CniArgs, String> {
        let mut pairs = BTreeMap::new();
        for pair in args.split(';').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("CNI_ARGS: `{pair}` is not KEY=VALUE"))?;
            pairs.insert(key, value);
        }
        let pod = match (pairs.get("K8S_POD_NAMESPACE"), pairs.get("K8S_POD_NAME")) {
            (Some(namespace), Some(name)) if !namespace.is_empty() && !name.is_empty() => {
                Some(PodName {
                    namespace: (*namespace).to_owned(),
                    name: (*name).to_owned(),
                })
            }
            _ => None,
        };
        let ips = pairs
            .get("IP")
            .map(|list| {
                list.split(',')
                    .map(|ip| {
                        ip.trim().parse::<IpAddr>().map_err(|_| {
                            format!("CNI_ARGS: IP `{ip}` is not an IPv4 or IPv6 address")
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        Ok(CniArgs { pod, ips })
    }
}

/// The network configuration on stdin: the spec's keys and this plugin's own.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin: String,
    /// The agent's pod socket.
    #[serde(default = "default_agent_socket")]
    pub agent_socket: PathBuf,
    /// Where addresses are recorded.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// CHECK's input: what ADD returned.
    #[serde(default)]
    pub prev_result: Option<CniResult>,
    /// What the runtime passes for the capabilities the conflist declares.
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
}

/// `runtimeConfig`: the `ips` capability, the addresses the runtime asks for (`a.b.c.d` or
/// `a.b.c.d/len`, as host-local takes them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub ips: Vec<String>,
}

impl NetConf {
    /// The addresses `runtimeConfig.ips` asks for, without their prefix lengths.
    pub fn requested_ips(&self) -> Result<Vec<IpAddr>, CniError> {
        self.runtime_config
            .ips
            .iter()
            .map(|text| {
                let ip = text.split_once('/').map_or(text.as_str(), |(ip, _)| ip);
                ip.parse().map_err(|_| {
                    CniError::new(
                        ErrorCode::InvalidConfig,
                        "invalid network configuration",
                        format!("runtimeConfig.ips: `{text}` is not an IPv4 or IPv6 address"),
                    )
                })
            })
            .collect()
    }
}

fn default_agent_socket() -> PathBuf {
    PathBuf::from(DEFAULT_AGENT_SOCKET)
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

/// Only `cniVersion`: what VERSION (and a config this plugin cannot read) still gives.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionOnly {
    #[serde(default)]
    pub cni_version: String,
}

impl NetConf {
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let conf: NetConf = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                ErrorCode::Decode,
                "network configuration is not valid",
                e.to_string(),
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(incompatible(&conf.cni_version));
        }
        if conf.name.is_empty()
            || !conf
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                "invalid network configuration",
                format!(
                    "network name `{}` must be letters, digits, `-`, `_` and `.`",
                    conf.name
                ),
            ));
        }
        if !conf.agent_socket.is_absolute() || !conf.data_dir.is_absolute() {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                "invalid network configuration",
                "agentSocket and dataDir must be absolute paths",
            ));
        }
        Ok(conf)
    }
}

pub fn incompatible(version: &str) -> CniError {
    CniError::new(
        ErrorCode::IncompatibleVersion,
        "incompatible CNI version",
        format!("config is `{version}`, meshpath-cni supports {SUPPORTED_VERSIONS:?}"),
    )
}

/// VERSION's answer.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionOutput {
    pub cni_version: String,
    pub supported_versions: Vec<String>,
}

/// ADD's result (and CHECK's `prevResult`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The container's network namespace for the container's interface; absent for the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `address/prefix`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        Env::read(|name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    const ADD: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/var/run/netns/pod"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=x-wing;K8S_POD_INFRA_CONTAINER_ID=c0ffee"),
    ];

    #[test]
    fn an_add_names_its_container_netns_and_pod() {
        let add = env(&ADD).unwrap();
        assert_eq!(add.command, Command::Add);
        assert_eq!(add.container.unwrap().to_string(), "c0ffee/eth0");
        assert_eq!(add.pod.unwrap().to_string(), "default/x-wing");
        assert_eq!(add.netns.unwrap(), PathBuf::from("/var/run/netns/pod"));
        assert!(add.requested_ips.is_empty());
    }

    #[test]
    fn addresses_are_asked_for_in_cni_args_and_runtime_config() {
        let mut pairs = ADD.to_vec();
        pairs[4].1 = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=x-wing;IP=100.64.1.10,fd00:1::a";
        let add = env(&pairs).unwrap();
        let ips: Vec<String> = add.requested_ips.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(ips, ["100.64.1.10", "fd00:1::a"]);
        pairs[4].1 = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=x-wing;IP=100.64.1.300";
        let error = env(&pairs).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidEnvironment);
        assert!(error.details.contains("100.64.1.300"), "{error}");

        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"meshpath","type":"meshpath-cni","runtimeConfig":{"ips":["100.64.1.10/24","fd00:1::a"]}}"#,
        )
        .unwrap();
        let ips: Vec<String> = conf
            .requested_ips()
            .unwrap()
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        assert_eq!(ips, ["100.64.1.10", "fd00:1::a"]);
        let bad = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"meshpath","type":"meshpath-cni","runtimeConfig":{"ips":["pod"]}}"#,
        )
        .unwrap();
        assert_eq!(
            bad.requested_ips().unwrap_err().code,
            ErrorCode::InvalidConfig
        );
    }

    #[test]
    fn a_bad_environment_is_code_4_and_named() {
        let without = |name: &str| {
            ADD.iter()
                .copied()
                .filter(|(k, _)| *k != name)
                .collect::<Vec<_>>()
        };
        let with = |name: &'static str, value: &'static str| {
            let mut pairs = without(name);
            pairs.push((name, value));
            pairs
        };
        for (pairs, named) in [
            (without("CNI_COMMAND"), "CNI_COMMAND"),
            (with("CNI_COMMAND", "UPDATE"), "UPDATE"),
            (without("CNI_CONTAINERID"), "CNI_CONTAINERID"),
            (with("CNI_CONTAINERID", "../../etc"), "CNI_CONTAINERID"),
            (without("CNI_NETNS"), "CNI_NETNS"),
            (without("CNI_IFNAME"), "CNI_IFNAME"),
            (
                with("CNI_IFNAME", "a-name-far-too-long"),
                "a-name-far-too-long",
            ),
            (with("CNI_IFNAME", "eth/0"), "eth/0"),
            (without("CNI_ARGS"), "K8S_POD_NAME"),
            (with("CNI_ARGS", "K8S_POD_NAMESPACE"), "KEY=VALUE"),
        ] {
            let error = env(&pairs).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidEnvironment, "{pairs:?}");
            assert!(error.details.contains(named), "{named}: {error}");
        }
    }

    #[test]
    fn del_needs_no_netns_nor_pod() {
        let del = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(del.command, Command::Del);
        assert_eq!(del.netns, None);
        assert_eq!(del.pod, None);
        assert_eq!(env(&[("CNI_COMMAND", "VERSION")]).unwrap().container, None);
    }

    #[test]
    fn configs_are_read_or_refused_by_code() {
        let good = br#"{"cniVersion":"1.0.0","name":"meshpath","type":"meshpath-cni"}"#;
        let conf = NetConf::parse(good).unwrap();
        assert_eq!(conf.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert_eq!(conf.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        let code = |text: &str| NetConf::parse(text.as_bytes()).unwrap_err().code;
        assert_eq!(
            code(r#"{"cniVersion":"0.3.1","name":"meshpath","type":"meshpath-cni"}"#),
            ErrorCode::IncompatibleVersion
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"../x","type":"meshpath-cni"}"#),
            ErrorCode::InvalidConfig
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"m","type":"meshpath-cni","dataDir":"rel"}"#),
            ErrorCode::InvalidConfig
        );
        assert_eq!(code(r#"{"cniVersion":"1.0.0""#), ErrorCode::Decode);
    }

    /// What deploy/ installs on every node: each plugin of the list, as the runtime hands it over (with
    /// the list's version and name), is a configuration this plugin takes, pointed at the pod socket
    /// beside the status socket the DaemonSet's agents use.
    #[test]
    fn the_deployed_conflist_is_read() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/10-meshpath.conflist"
        );
        let list: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let plugins = list["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 1);
        let mut plugin = plugins[0].clone();
        plugin["cniVersion"] = list["cniVersion"].clone();
        plugin["name"] = list["name"].clone();
        let conf = NetConf::parse(plugin.to_string().as_bytes()).unwrap();
        assert_eq!(conf.plugin, "meshpath-cni");
        assert_eq!(
            plugins[0]["capabilities"]["ips"], true,
            "the runtime passes the addresses it asks for in runtimeConfig.ips"
        );
        assert_eq!(
            conf.agent_socket,
            PathBuf::from("/run/meshpath/agent.sock.cni")
        );
        assert_eq!(conf.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn results_and_errors_in_the_specs_shape() {
        let result = CniResult {
            cni_version: "1.0.0".into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                mtu: Some(1450),
                sandbox: Some("/var/run/netns/pod".into()),
            }],
            ips: vec![IpConfig {
                address: "100.64.1.10/32".into(),
                gateway: Some("100.64.1.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some("100.64.1.1".parse().unwrap()),
            }],
            dns: Dns {},
        };
        let text = serde_json::to_string(&result).unwrap();
        assert_eq!(
            text,
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"02:00:00:00:00:01","mtu":1450,"sandbox":"/var/run/netns/pod"}],"ips":[{"address":"100.64.1.10/32","gateway":"100.64.1.1","interface":0}],"routes":[{"dst":"0.0.0.0/0","gw":"100.64.1.1"}],"dns":{}}"#
        );
        assert_eq!(serde_json::from_str::<CniResult>(&text).unwrap(), result);
        let error = CniError::new(
            ErrorCode::TryAgainLater,
            "agent not ready",
            "no pod CIDR yet",
        );
        let text = serde_json::to_string(&error.output("1.0.0")).unwrap();
        assert_eq!(
            text,
            r#"{"cniVersion":"1.0.0","code":11,"msg":"agent not ready","details":"no pod CIDR yet"}"#
        );
    }
}
