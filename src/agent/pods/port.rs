//! A pod's port on the running workers: one AF_XDP socket per worker on the node's shared UMEM, worker
//! `i`'s on queue `i` of the pod's veth, the XDP program on the veth (maps pinned under the interface's
//! name, as the node's other interfaces), every socket registered at its queue before the program is
//! attached so the pod is never open. Closing undoes each step in the reverse order: the program's
//! sockets unregistered and the program detached, its pins removed, then each socket taken from its
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
    /// One per worker: the socket on queue `i` is worker `i`'s.
    queues: u32,
    attachment: Option<Attachment>,
    pins: PathBuf,
}

/// Opens `interface`'s port `id` on every worker (`controls[i]` is worker `i`'s); nothing of it is
/// left behind on failure.
pub fn open(
    controls: &[PortControl],
    id: PortId,
    interface: &str,
    node: NodeAddrs,
    pins: &Path,
) -> anyhow::Result<PodPort> {
    let index = ifindex(interface)
        .with_context(|| format!("no interface `{interface}` in the node's network namespace"))?;
    let mut bound = Vec::with_capacity(controls.len());
    for (queue, control) in controls.iter().enumerate() {
        let config = PortConfig {
            id,
            ifindex: index,
            queue: queue as u32,
        };
        bound.push(
            control
                .bind(config)
                .with_context(|| format!("`{interface}` queue {queue}"))?,
        );
    }
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
        queues: bound.len() as u32,
        attachment: None,
        pins: dir,
    };
    let attached = port.with_program(|p| {
        for socket in &bound {
            p.register_socket(socket.config().queue, socket.socket())?;
        }
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
    for (control, socket) in controls.iter().zip(bound) {
        if let Err(error) = control.add(socket) {
            port.unwire();
            // A worker that took the port too late still has it, and the others took theirs: take
            // them back.
            for control in controls {
                let _ = control.remove(id);
            }
            return Err(error.into());
        }
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

    /// Takes the port from every worker and its program off the veth (a veth already gone counts as
    /// detached); the chunks given back are summed over the workers.
    pub fn close(mut self, controls: &[PortControl]) -> anyhow::Result<Released> {
        self.unwire();
        let (mut chunks, mut failed) = (0, None);
        for control in controls {
            match control.remove(self.id) {
                Ok(released) => chunks += released.chunks,
                Err(error) => failed = Some(error),
            }
        }
        match failed {
            Some(error) => Err(error.into()),
            None => Ok(Released { chunks }),
        }
    }

    /// The program off the veth, its sockets unregistered, its pins removed.
    fn unwire(&mut self) {
        let _ = self.with_program(|p| {
            for queue in 0..self.queues {
                p.unregister_socket(queue)?;
            }
            Ok(())
        });
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
