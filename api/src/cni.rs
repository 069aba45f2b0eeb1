//! The agent's pod socket, `<status-socket>.cni` (root's alone, whatever `socket-group` says: who may
//! attach a pod may send as it): what the CNI plugin `meshpath-cni` asks of the agent. One request
//! line per connection, one answer line back.
//!
//! ADD asks for the node's pod [`PodNetwork`] (its pod CIDRs and the pods' MTU), allocates and
//! configures the pod's addresses and veth itself, then asks the agent to [`PodRequest::Attach`] the
//! veth: the agent answers once the pod's port is served by the worker and its endpoint is in the
//! tables, so traffic flows when ADD returns. DEL asks to [`PodRequest::Detach`] (a container the
//! agent does not know is no error), CHECK to [`PodRequest::Check`] that the pod is still attached.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::ClientError;
use crate::node::Cidr;

/// The pod socket's path beside the status socket's.
pub fn cni_socket(status_socket: &Path) -> PathBuf {
    let mut path = status_socket.as_os_str().to_owned();
    path.push(".cni");
    PathBuf::from(path)
}

/// One request, as its line on the pod socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "request")]
pub enum PodRequest {
    /// The node's pod network.
    Network,
    Attach(PodAttachment),
    Detach(ContainerRef),
    Check(ContainerRef),
}

/// The container interface the runtime names: `CNI_CONTAINERID` and `CNI_IFNAME`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerRef {
    pub container_id: String,
    pub ifname: String,
}

impl fmt::Display for ContainerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// A pod by `namespace/name` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME` in `CNI_ARGS`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A pod's veth, made and addressed by the plugin, for the agent to serve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodAttachment {
    pub container: ContainerRef,
    pub pod: PodName,
    /// The node side of the veth, in the agent's network namespace.
    pub host_interface: String,
    /// The pod's own MAC (its `CNI_IFNAME`).
    pub mac: MacAddr,
    /// What the plugin assigned: the pod's endpoint addresses.
    pub addresses: Vec<IpAddr>,
}

/// The agent's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "answer")]
pub enum PodResponse {
    Network(PodNetwork),
    Attached(AttachedPod),
    /// `was_attached`: false when the agent did not know the container (already detached).
    Detached {
        was_attached: bool,
    },
    Refused(PodRefusal),
}

/// What a pod on this node is addressed and sized from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    /// The node's pod CIDRs (its Node's `spec.podCIDRs`), at most one per address family.
    pub pod_cidrs: Vec<Cidr>,
    /// The pods' MTU: the underlay's less the tunnel's overhead.
    pub mtu: u32,
    /// Receive and transmit queues of the pod's veth: one per dataplane worker (worker `i` serves
    /// queue `i`). 1 from an agent older than several workers.
    #[serde(default = "one_queue")]
    pub queues: u32,
}

fn one_queue() -> u32 {
    1
}

/// A pod the agent serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedPod {
    pub container: ContainerRef,
    pub pod: PodName,
    pub host_interface: String,
    pub port: u16,
    pub addresses: Vec<IpAddr>,
    /// The pod's security identity, in the tables.
    pub identity: u32,
}

/// Why the agent did not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRefusal {
    pub reason: RefusalReason,
    pub message: String,
}

named_enum! {
    /// Why a pod request was refused; each maps to a CNI error code in the plugin.
    pub enum RefusalReason ("refusal reason") {
        /// Not yet: the agent is starting, or the pod is not in its local state yet (CNI 11).
        TryAgainLater => "try_again_later",
        /// The request names what does not exist or cannot be (an interface that is not there,
        /// addresses outside the pod CIDRs) (CNI 7).
        Invalid => "invalid",
        /// The container is not attached (CHECK) (CNI 3).
        UnknownContainer => "unknown_container",
        /// The node has no room for another pod (`dataplane.max-pods`) (CNI 11).
        NoRoom => "no_room",
        /// The agent failed doing it (CNI 5).
        Failed => "failed",
    }
}

/// A MAC address; as text `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Text that is not six colon-separated hex octets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is no MAC address (aa:bb:cc:dd:ee:ff)")]
pub struct BadMac(pub String);

impl FromStr for MacAddr {
    type Err = BadMac;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadMac(text.to_owned());
        let mut out = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

serde_as_text!(MacAddr);

/// Asks the agent on `socket` (the pod socket itself) and waits up to `timeout` for its answer.
pub fn ask(
    socket: &Path,
    request: &PodRequest,
    timeout: Duration,
) -> Result<PodResponse, ClientError> {
    let io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::Timeout {
            socket: socket.to_owned(),
            after: timeout,
        },
        _ => ClientError::Io {
            socket: socket.to_owned(),
            source,
        },
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        socket: socket.to_owned(),
        source,
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(request).unwrap_or_default();
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|source| ClientError::Decode {
        socket: socket.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_and_answers_as_their_lines() {
        let attach = PodRequest::Attach(PodAttachment {
            container: ContainerRef {
                container_id: "c0ffee".into(),
                ifname: "eth0".into(),
            },
            pod: PodName {
                namespace: "default".into(),
                name: "x-wing".into(),
            },
            host_interface: "lxc1a2b3c4d5e6f".into(),
            mac: "3a:1f:0c:5e:77:10".parse().unwrap(),
            addresses: vec!["100.64.1.10".parse().unwrap()],
        });
        let line = serde_json::to_string(&attach).unwrap();
        assert!(
            line.starts_with(r#"{"request":"attach","container":{"#),
            "{line}"
        );
        assert!(line.contains(r#""mac":"3a:1f:0c:5e:77:10""#), "{line}");
        assert_eq!(serde_json::from_str::<PodRequest>(&line).unwrap(), attach);
        let network = serde_json::to_string(&PodRequest::Network).unwrap();
        assert_eq!(network, r#"{"request":"network"}"#);
        let refused = PodResponse::Refused(PodRefusal {
            reason: RefusalReason::TryAgainLater,
            message: "pod default/x-wing is not in the local state yet".into(),
        });
        let line = serde_json::to_string(&refused).unwrap();
        assert!(line.contains(r#""reason":"try_again_later""#), "{line}");
        assert_eq!(serde_json::from_str::<PodResponse>(&line).unwrap(), refused);
    }

    proptest! {
        #[test]
        fn macs_as_text(bytes in any::<[u8; 6]>()) {
            let mac = MacAddr(bytes);
            prop_assert_eq!(mac.to_string().parse::<MacAddr>(), Ok(mac));
        }

        #[test]
        fn mac_parsing_never_panics(text in ".{0,24}") {
            let _ = text.parse::<MacAddr>();
        }
    }

    #[test]
    fn bad_macs_are_named() {
        for bad in [
            "",
            "3a:1f:0c:5e:77",
            "3a:1f:0c:5e:77:10:00",
            "3a:1f:0c:5e:77:1",
            "zz:1f:0c:5e:77:10",
        ] {
            assert_eq!(bad.parse::<MacAddr>(), Err(BadMac(bad.into())), "{bad}");
        }
    }
}
