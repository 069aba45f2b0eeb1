//! Each port's interface and role, for the status, the metrics and observe's lost events: the node's
//! own ports from the start, and the pods the CNI plugin attaches and detaches while the agent runs.
//! Read when asked (a status, a scrape, once a second for observe), never on the packet path.

use std::sync::{Arc, RwLock};

use meshpath_api::status::PortRole;
use meshpath_dataplane::PortId;

/// A port's interface and role.
pub type NamedPort = (PortId, String, PortRole);

#[derive(Clone, Debug, Default)]
pub struct PortNames(Arc<RwLock<Vec<NamedPort>>>);

impl PortNames {
    pub fn new(ports: Vec<NamedPort>) -> PortNames {
        PortNames(Arc::new(RwLock::new(ports)))
    }

    /// Every port, in the order they were named.
    pub fn list(&self) -> Vec<NamedPort> {
        self.0.read().map(|p| p.clone()).unwrap_or_default()
    }

    /// The interface and role of `port`.
    pub fn get(&self, port: PortId) -> Option<(String, PortRole)> {
        let ports = self.0.read().ok()?;
        let named = ports.iter().find(|(id, _, _)| *id == port)?;
        Some((named.1.clone(), named.2))
    }

    pub fn insert(&self, port: PortId, interface: String, role: PortRole) {
        if let Ok(mut ports) = self.0.write() {
            ports.retain(|(id, _, _)| *id != port);
            ports.push((port, interface, role));
        }
    }

    pub fn remove(&self, port: PortId) {
        if let Ok(mut ports) = self.0.write() {
            ports.retain(|(id, _, _)| *id != port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_come_and_go_beside_the_nodes_own_ports() {
        let names = PortNames::new(vec![(PortId(0), "uplink".into(), PortRole::Uplink)]);
        names.insert(PortId(2), "lxc0123456789ab".into(), PortRole::Pod);
        assert_eq!(
            names.get(PortId(2)),
            Some(("lxc0123456789ab".into(), PortRole::Pod))
        );
        names.remove(PortId(2));
        assert_eq!(names.get(PortId(2)), None);
        assert_eq!(names.list().len(), 1);
    }
}
