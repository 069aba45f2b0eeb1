//! A pod's port on the running worker: its AF_XDP socket on the worker's UMEM, the XDP program on its
//! veth (maps pinned under the interface's name, as the node's other interfaces), registered before it
//! is attached so the pod is never open. Closing undoes each step in the reverse order: the program's
//! socket unregistered and the program detached, its pins removed, then the socket taken from the
//! worker, which gives its UMEM chunks back. Blocking: run off the agent's runtime.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use meshpath_dataplane::afxdp::{PortConfig, PortControl, Released};
use meshpath_dataplane::PortId;
use meshpath_xdp_redirect::netns::ifindex;
use meshpath_xdp_redirect::{Attachment, NodeAddrs, Role, XdpRedirect};

use crate::agent::wiring::pin_dir;

/// A pod's veth, served.
pub struct PodPort {
    pub id: PortId,
    pub interface: String,
    pub program: Arc<Mutex<XdpRedirect>>,
    attachment: Option<Attachment>,
    pins: PathBuf,
}

/// Opens `interface`'s port `id`; nothing of it is left behind on failure.
pub fn open(
    control: &PortControl,
    id: PortId,
    interface: &str,
    node: NodeAddrs,
    pins: &Path,
) -> anyhow::Result<PodPort> {
    let index = ifindex(interface)
        .with_context(|| format!("no interface `{interface}` in the node's network namespace"))?;
    let bound = control.bind(PortConfig {
        id,
        ifindex: index,
        queue: 0,
    })?;
    let dir = pin_dir(pins, interface);
    let program = XdpRedirect::load_pinned(Role::Pod, node, &dir)
        .with_context(|| format!("XDP program for `{interface}`"));
    let program = match program {
        Ok(p) => p,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(error);
        }
    };
    let mut port = PodPort {
        id,
        interface: interface.to_owned(),
        program: Arc::new(Mutex::new(program)),
        attachment: None,
        pins: dir,
    };
    let attached = port.with_program(|p| {
        p.register_socket(0, bound.socket())?;
        p.attach(index)
            .with_context(|| format!("attaching XDP to `{interface}`"))
    });
    match attached {
        Ok(attachment) => port.attachment = Some(attachment),
        Err(error) => {
            port.unwire();
            return Err(error);
        }
    }
    if let Err(error) = control.add(bound) {
        port.unwire();
        // A worker that took the port too late still has it: take it back.
        let _ = control.remove(id);
        return Err(error.into());
    }
    Ok(port)
}

impl PodPort {
    fn with_program<T>(
        &self,
        f: impl FnOnce(&XdpRedirect) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let program = self
            .program
            .lock()
            .map_err(|_| anyhow::anyhow!("XDP program lock poisoned"))?;
        f(&program)
    }

    /// Takes the port from the worker and its program off the veth (a veth already gone counts as
    /// detached).
    pub fn close(mut self, control: &PortControl) -> anyhow::Result<Released> {
        self.unwire();
        Ok(control.remove(self.id)?)
    }

    /// The program off the veth, its socket unregistered, its pins removed.
    fn unwire(&mut self) {
        let _ = self.with_program(|p| Ok(p.unregister_socket(0)?));
        if let Some(attachment) = self.attachment.take() {
            if let Err(error) = attachment.detach() {
                tracing::warn!(interface = %self.interface, %error, "XDP program not detached");
            }
        }
        if let Err(error) = std::fs::remove_dir_all(&self.pins) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.pins.display(), %error, "pinned maps not removed");
            }
        }
    }

    /// Leaves the program attached past this agent (it stops): the pod stays closed until the next
    /// agent attaches it again.
    pub fn keep(mut self) {
        if let Some(attachment) = self.attachment.take() {
            attachment.keep();
        }
    }
}
