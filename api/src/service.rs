//! Services as the workers balance them now: `meshpath service list`.

use std::fmt;
use std::fmt::Write;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::protocol::Protocol;

/// One frontend and its backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub frontend: Frontend,
    pub backends: Vec<BackendInfo>,
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

/// `meshpath service list`: frontends → backends with their cluster and state.
pub fn render(services: &[ServiceStatus]) -> String {
    let mut out = format!(
        "{:<28} {:<24} {:<8} {}\n",
        "FRONTEND", "BACKEND", "CLUSTER", "STATE"
    );
    for service in services {
        let mut frontend = service.frontend.to_string();
        for b in &service.backends {
            let cluster = b.cluster.map_or("-".to_owned(), |c| c.to_string());
            let backend = b.backend.to_string();
            let _ = writeln!(out, "{frontend:<28} {backend:<24} {cluster:<8} {}", b.state);
            frontend.clear();
        }
        if service.backends.is_empty() {
            let _ = writeln!(out, "{frontend:<28} (no backends)");
        }
    }
    out
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
    fn table_lists_each_backend_under_its_frontend() {
        let service = ServiceStatus {
            frontend: "10.96.0.10:80/TCP".parse().unwrap(),
            backends: vec![
                BackendInfo {
                    backend: "10.1.0.3:80".parse().unwrap(),
                    cluster: Some(1),
                    state: BackendState::Active,
                },
                BackendInfo {
                    backend: "10.2.0.3:80".parse().unwrap(),
                    cluster: None,
                    state: BackendState::Terminating,
                },
            ],
        };
        let empty = ServiceStatus {
            frontend: "10.96.0.11:53/UDP".parse().unwrap(),
            backends: vec![],
        };
        let table = render(&[service, empty]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[1],
            "10.96.0.10:80/TCP            10.1.0.3:80              1        active"
        );
        assert_eq!(
            lines[2],
            "                             10.2.0.3:80              -        terminating"
        );
        assert_eq!(
            lines[3].trim_end(),
            "10.96.0.11:53/UDP            (no backends)"
        );
    }
}
