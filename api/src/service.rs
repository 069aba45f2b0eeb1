//! Services as the workers balance them now: `meshpath service list`, as `cilium-dbg service list`
//! shows them (ID, frontend, type, each backend with its protocol and state).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::protocol::Protocol;
use crate::text::Table;

/// One frontend and its backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The dataplane's id of the service.
    #[serde(default)]
    pub id: Option<u32>,
    /// `namespace/name` of the Kubernetes service of this cluster the frontend belongs to, when the
    /// agent knows it (as Cilium's service flags carry it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub frontend: Frontend,
    #[serde(default, rename = "type")]
    pub service_type: ServiceType,
    pub backends: Vec<BackendInfo>,
}

named_enum! {
    /// What kind of service a frontend is, by Kubernetes' names.
    #[derive(Default)]
    pub enum ServiceType ("service type") {
        /// A virtual address inside the mesh (a Kubernetes ClusterIP, local or global).
        #[default]
        ClusterIp => "ClusterIP",
    }
}

/// A service's address, port and protocol; as text `address:port/protocol` (`[fd00::a]:80/TCP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub address: SocketAddr,
    pub protocol: Protocol,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.protocol)
    }
}

/// Text that is not `address:port/protocol`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is no service frontend (address:port/protocol)")]
pub struct BadFrontend(pub String);

impl FromStr for Frontend {
    type Err = BadFrontend;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadFrontend(text.to_owned());
        let (address, protocol) = text.rsplit_once('/').ok_or_else(bad)?;
        Ok(Frontend {
            address: address.parse().map_err(|_| bad())?,
            protocol: protocol.parse().map_err(|_| bad())?,
        })
    }
}

serde_as_text!(Frontend);

/// One backend of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    pub backend: SocketAddr,
    /// The id of the cluster it runs in.
    pub cluster: Option<u8>,
    pub state: BackendState,
}

named_enum! {
    /// Whether a backend takes new flows: only active ones do; the others keep the flows they have.
    pub enum BackendState ("backend state") {
        Active => "active",
        Terminating => "terminating",
        Unhealthy => "unhealthy",
    }
}

/// `meshpath service list` as `cilium-dbg service list`: `ID  Frontend  Service Type  Backend`, each
/// backend as `1 => 10.1.0.3:80/TCP (active)`, one per line.
pub fn render(services: &[ServiceStatus]) -> String {
    let mut table = Table::new(["ID", "Frontend", "Service Type", "Backend"]);
    for service in services {
        let id = service.id.map_or("-".to_owned(), |id| id.to_string());
        let mut first = [
            id,
            service.frontend.to_string(),
            service.service_type.to_string(),
        ];
        if service.backends.is_empty() {
            let [a, b, c] = first;
            table.row([a, b, c, String::new()]);
            continue;
        }
        for (i, b) in service.backends.iter().enumerate() {
            let backend = format!(
                "{} => {}/{} ({})",
                i + 1,
                b.backend,
                service.frontend.protocol,
                b.state
            );
            let [a, c, d] = std::mem::take(&mut first);
            table.row([a, c, d, backend]);
        }
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frontend_as_text() {
        let v4: Frontend = "10.96.0.10:80/TCP".parse().unwrap();
        assert_eq!(v4.address, "10.96.0.10:80".parse().unwrap());
        assert_eq!(v4.protocol, Protocol::Tcp);
        let v6: Frontend = "[fd00::a]:53/UDP".parse().unwrap();
        assert_eq!(v6.to_string(), "[fd00::a]:53/UDP");
        for bad in ["10.96.0.10:80", "10.96.0.10/TCP", "10.96.0.10:80/tcp", ""] {
            assert!(bad.parse::<Frontend>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn frontends_round_trip(address: SocketAddr, number: u8) {
            // Scope ids and flow labels are not part of a frontend's text.
            let address = SocketAddr::new(address.ip(), address.port());
            let frontend = Frontend { address, protocol: Protocol::from_number(number) };
            prop_assert_eq!(frontend.to_string().parse::<Frontend>(), Ok(frontend));
        }

        #[test]
        fn any_text_parses_or_fails_cleanly(text in "\\PC{0,40}") {
            let _ = text.parse::<Frontend>();
        }
    }

    #[test]
    fn table_as_cilium_dbg_lists_services() {
        let service = ServiceStatus {
            id: Some(7),
            name: Some("default/web".into()),
            frontend: "10.96.0.10:80/TCP".parse().unwrap(),
            service_type: ServiceType::ClusterIp,
            backends: vec![
                BackendInfo {
                    backend: "10.1.0.3:80".parse().unwrap(),
                    cluster: Some(1),
                    state: BackendState::Active,
                },
                BackendInfo {
                    backend: "[fd00:2::3]:80".parse().unwrap(),
                    cluster: None,
                    state: BackendState::Terminating,
                },
            ],
        };
        let empty = ServiceStatus {
            id: Some(8),
            name: None,
            frontend: "10.96.0.11:53/UDP".parse().unwrap(),
            service_type: ServiceType::ClusterIp,
            backends: vec![],
        };
        let table = render(&[service, empty]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "ID  Frontend           Service Type  Backend");
        assert_eq!(
            lines[1],
            "7   10.96.0.10:80/TCP  ClusterIP     1 => 10.1.0.3:80/TCP (active)"
        );
        assert_eq!(
            lines[2],
            "                                     2 => [fd00:2::3]:80/TCP (terminating)"
        );
        assert_eq!(lines[3], "8   10.96.0.11:53/UDP  ClusterIP");
        let json = serde_json::to_value(render_input()).unwrap();
        assert_eq!(json[0]["type"], "ClusterIP");
    }

    fn render_input() -> Vec<ServiceStatus> {
        vec![ServiceStatus {
            id: None,
            name: None,
            frontend: "10.96.0.10:80/TCP".parse().unwrap(),
            service_type: ServiceType::default(),
            backends: vec![],
        }]
    }
}
