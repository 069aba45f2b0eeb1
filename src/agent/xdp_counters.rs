//! The XDP programs of the node's interfaces, shared between what configures them (the uplink's
//! tunnel peers) and what reads their verdict counters for the status and the metrics: pass, to_xsk,
//! dropped_no_socket (the fail-closed drops while no agent ran) and dropped_unknown_peer. A read is a
//! map lookup per program, made when asked, off the packet path.

use std::sync::{Arc, Mutex};

use meshpath_api::status::{PortRole, XdpStatus};
use meshpath_xdp_redirect::{Role, XdpRedirect};

use super::config::AgentConfig;
use super::wiring;

struct Program {
    interface: String,
    role: PortRole,
    program: Arc<Mutex<XdpRedirect>>,
}

/// Every interface's program, the uplink's first.
#[derive(Clone)]
pub struct XdpPrograms(Arc<Vec<Program>>);

impl XdpPrograms {
    /// `programs` in the order `wiring::wire` loaded them.
    pub fn new(config: &AgentConfig, programs: Vec<XdpRedirect>) -> XdpPrograms {
        let named = wiring::interfaces(config)
            .into_iter()
            .zip(programs)
            .map(|(interface, program)| Program {
                interface: interface.name.to_owned(),
                role: port_role(interface.role),
                program: Arc::new(Mutex::new(program)),
            })
            .collect();
        XdpPrograms(Arc::new(named))
    }

    /// The uplink's program, whose tunnel peers the node sync keeps current.
    pub fn uplink(&self) -> Option<Arc<Mutex<XdpRedirect>>> {
        self.0
            .iter()
            .find(|p| p.role == PortRole::Uplink)
            .map(|p| p.program.clone())
    }

    pub fn read(&self) -> Vec<XdpStatus> {
        self.0.iter().map(Program::read).collect()
    }
}

impl Program {
    fn read(&self) -> XdpStatus {
        let counts = self
            .program
            .lock()
            .map_err(|_| "program lock poisoned".to_owned())
            .and_then(|p| p.verdicts().map_err(|e| e.to_string()));
        let mut status = XdpStatus {
            interface: self.interface.clone(),
            role: self.role,
            pass: 0,
            to_xsk: 0,
            dropped_no_socket: 0,
            dropped_unknown_peer: 0,
            error: None,
        };
        match counts {
            Ok(c) => {
                status.pass = c.pass;
                status.to_xsk = c.to_xsk;
                status.dropped_no_socket = c.dropped_no_socket;
                status.dropped_unknown_peer = c.dropped_unknown_peer;
            }
            Err(error) => status.error = Some(error),
        }
        status
    }
}

pub fn port_role(role: Role) -> PortRole {
    match role {
        Role::Uplink => PortRole::Uplink,
        Role::Host => PortRole::Host,
        Role::Pod => PortRole::Pod,
    }
}
