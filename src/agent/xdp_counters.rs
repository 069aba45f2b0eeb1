//! The XDP programs of the node's interfaces, shared between what configures them (the uplink's
//! tunnel peers) and what reads their verdict counters for the status and the metrics: pass, to_xsk,
//! dropped_no_socket (the fail-closed drops while no agent ran) and dropped_unknown_peer. A read is a
//! map lookup per program, made when asked, off the packet path.

use std::sync::{Arc, Mutex, RwLock};

use meshpath_api::status::{PortRole, XdpStatus};
use meshpath_xdp_redirect::{Role, XdpRedirect};

use super::config::AgentConfig;
use super::wiring;

struct Program {
    interface: String,
    role: PortRole,
    program: Arc<Mutex<XdpRedirect>>,
}

/// Every interface's program, the uplink's first; pods' programs join and leave as pods are attached
/// and detached.
#[derive(Clone)]
pub struct XdpPrograms(Arc<RwLock<Vec<Program>>>);

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
        XdpPrograms(Arc::new(RwLock::new(named)))
    }

    /// The uplink's program, whose tunnel peers the node sync keeps current.
    pub fn uplink(&self) -> Option<Arc<Mutex<XdpRedirect>>> {
        let programs = self.0.read().ok()?;
        programs
            .iter()
            .find(|p| p.role == PortRole::Uplink)
            .map(|p| p.program.clone())
    }

    pub fn read(&self) -> Vec<XdpStatus> {
        let programs: Vec<(String, PortRole, Arc<Mutex<XdpRedirect>>)> = match self.0.read() {
            Ok(p) => p
                .iter()
                .map(|p| (p.interface.clone(), p.role, p.program.clone()))
                .collect(),
            Err(_) => return Vec::new(),
        };
        programs
            .into_iter()
            .map(|(interface, role, program)| {
                Program {
                    interface,
                    role,
                    program,
                }
                .read()
            })
            .collect()
    }

    /// A pod's program, attached to its veth's node side `interface`.
    pub fn add(&self, interface: String, program: Arc<Mutex<XdpRedirect>>) {
        if let Ok(mut programs) = self.0.write() {
            programs.retain(|p| p.interface != interface);
            programs.push(Program {
                interface,
                role: PortRole::Pod,
                program,
            });
        }
    }

    /// The program of `interface` goes (its pod was detached).
    pub fn remove(&self, interface: &str) {
        if let Ok(mut programs) = self.0.write() {
            programs.retain(|p| p.interface != interface);
        }
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
