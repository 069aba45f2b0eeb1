//! Attaching the XDP program to an interface: native mode first, generic with a warning; an existing
//! program of ours is replaced atomically (XDP_FLAGS_REPLACE with its fd), another's is refused, and
//! detaching removes only our own.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::netns::Netns;
use crate::{sys, Error, Result};

/// The kernel keeps 15 bytes of a program's name: `meshpath_redirect` is known by this.
const OUR_PROGRAM_NAME: &str = "meshpath_redire";

/// How the program runs on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (XDP_FLAGS_DRV_MODE).
    Native,
    /// On the generic skb path (XDP_FLAGS_SKB_MODE): slower, works everywhere.
    Generic,
}

impl AttachMode {
    fn flags(self) -> u32 {
        match self {
            AttachMode::Native => sys::XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => sys::XDP_FLAGS_SKB_MODE,
        }
    }
}

/// The program attached to one interface; detaches on drop unless [`Attachment::keep`] is called.
#[derive(Debug)]
pub struct Attachment {
    ifindex: u32,
    mode: AttachMode,
    prog: OwnedFd,
    netns: Netns,
    replaced: Option<u32>,
    /// Whether dropping detaches: cleared once detached or kept. Its descriptors close either way.
    armed: bool,
}

impl Attachment {
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// The id of the program this attachment replaced, if the interface had one.
    pub fn replaced(&self) -> Option<u32> {
        self.replaced
    }

    /// Detaches now and reports failure; an interface that is already gone counts as detached.
    pub fn detach(mut self) -> Result<()> {
        self.armed = false;
        self.detach_in_netns()
    }

    /// Leaves the program attached past this attachment (the kernel holds it on the interface),
    /// for a restart that will replace it.
    pub fn keep(mut self) {
        self.armed = false;
    }

    fn detach_in_netns(&self) -> Result<()> {
        let (ifindex, flags, prog) = (self.ifindex, self.mode.flags(), self.prog.as_fd());
        let result = self
            .netns
            .run(|| sys::xdp_detach_if(ifindex, flags, prog))
            .map_err(Error::Netns)?;
        match result {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            other => other.map_err(|source| Error::Attach {
                ifindex,
                action: "detach",
                source,
            }),
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Err(e) = self.detach_in_netns() {
            // EEXIST: another program replaced ours meanwhile; it is not ours to remove.
            tracing::warn!(ifindex = self.ifindex, "XDP program not detached: {e}");
        }
    }
}

/// Attaches `prog` to `ifindex` in the calling thread's network namespace.
pub(crate) fn attach(prog: BorrowedFd<'_>, ifindex: u32) -> Result<Attachment> {
    let netns = Netns::current().map_err(Error::Netns)?;
    let io = |action| {
        move |source| Error::Attach {
            ifindex,
            action,
            source,
        }
    };
    let prog = prog.try_clone_to_owned().map_err(io("dup program fd"))?;
    let (old_id, old_mode) = sys::xdp_query(ifindex).map_err(io("query"))?;
    let (mode, replaced) = if old_id != 0 {
        (
            replace(prog.as_fd(), ifindex, old_id, old_mode)?,
            Some(old_id),
        )
    } else {
        (attach_new(prog.as_fd(), ifindex)?, None)
    };
    Ok(Attachment {
        ifindex,
        mode,
        prog,
        netns,
        replaced,
        armed: true,
    })
}

fn replace(prog: BorrowedFd<'_>, ifindex: u32, old_id: u32, old_mode: u8) -> Result<AttachMode> {
    let io = |action| {
        move |source| Error::Attach {
            ifindex,
            action,
            source,
        }
    };
    let old = sys::prog_fd_by_id(old_id).map_err(io("open the attached program"))?;
    let (name, tag) =
        sys::prog_name_and_tag(old.as_fd()).map_err(io("read the attached program"))?;
    if name != OUR_PROGRAM_NAME {
        return Err(Error::ForeignProgram {
            ifindex,
            id: old_id,
            name,
            tag: tag.iter().map(|b| format!("{b:02x}")).collect(),
        });
    }
    let mode = match old_mode {
        sys::XDP_ATTACHED_DRV => AttachMode::Native,
        sys::XDP_ATTACHED_SKB => AttachMode::Generic,
        _ => {
            return Err(io("replace")(std::io::Error::other(
                "existing program is offloaded or multi-mode",
            )))
        }
    };
    sys::xdp_attach(
        ifindex,
        prog,
        mode.flags() | sys::XDP_FLAGS_REPLACE,
        Some(old.as_fd()),
    )
    .map_err(io("replace"))?;
    tracing::info!(
        ifindex,
        old_id,
        ?mode,
        "replaced the XDP program atomically"
    );
    Ok(mode)
}

fn attach_new(prog: BorrowedFd<'_>, ifindex: u32) -> Result<AttachMode> {
    let native = sys::XDP_FLAGS_DRV_MODE | sys::XDP_FLAGS_UPDATE_IF_NOEXIST;
    match sys::xdp_attach(ifindex, prog, native, None) {
        Ok(()) => Ok(AttachMode::Native),
        Err(e)
            if e.raw_os_error() == Some(libc::EBUSY) || e.raw_os_error() == Some(libc::EEXIST) =>
        {
            Err(Error::Attach {
                ifindex,
                action: "attach (raced with another loader)",
                source: e,
            })
        }
        Err(e) => {
            tracing::warn!(
                ifindex,
                "native XDP refused ({e}); attaching in generic (skb) mode"
            );
            let generic = sys::XDP_FLAGS_SKB_MODE | sys::XDP_FLAGS_UPDATE_IF_NOEXIST;
            sys::xdp_attach(ifindex, prog, generic, None).map_err(|source| Error::Attach {
                ifindex,
                action: "attach generic",
                source,
            })?;
            Ok(AttachMode::Generic)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeAddrs, Role, XdpRedirect};
    use std::process::Command;

    /// A namespace with a veth pair in it, deleted on drop.
    struct Scratch(String);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let name = format!("mp-t-{tag}-{}", std::process::id());
            let scratch = Scratch(name.clone());
            ip(&["netns", "add", &name]);
            ip(&[
                "-n", &name, "link", "add", "xa", "type", "veth", "peer", "name", "xb",
            ]);
            ip(&["-n", &name, "link", "set", "xa", "up"]);
            ip(&["-n", &name, "link", "set", "xb", "up"]);
            // A bridge device has no native XDP: attaching there must fall back to generic.
            ip(&["-n", &name, "link", "add", "xd", "up", "type", "bridge"]);
            scratch
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    fn ip(args: &[&str]) {
        let status = Command::new("ip")
            .args(args)
            .status()
            .expect("iproute2 installed");
        assert!(status.success(), "ip {args:?}: {status}");
    }

    #[test]
    fn restart_replaces_atomically_and_detach_removes_only_our_program() {
        if !meshpath_testkit::needs_root(
            "restart_replaces_atomically_and_detach_removes_only_our_program",
        ) {
            return;
        }
        let scratch = Scratch::new("replace");
        let ns = Netns::named(&scratch.0).expect("namespace just created");
        ns.run(|| {
            let xa = crate::netns::ifindex("xa").expect("xa exists in the namespace");
            let first = XdpRedirect::load(Role::Pod, NodeAddrs::default()).expect("load");
            let a = first.attach(xa).expect("attach");
            assert_eq!((a.mode(), a.replaced()), (AttachMode::Native, None));
            let (id_a, _) = sys::xdp_query(xa).expect("query");
            assert_ne!(id_a, 0);

            let second = XdpRedirect::load(Role::Pod, NodeAddrs::default()).expect("load");
            let b = second.attach(xa).expect("replace");
            assert_eq!((b.mode(), b.replaced()), (AttachMode::Native, Some(id_a)));
            let (id_b, mode) = sys::xdp_query(xa).expect("query");
            assert!(id_b != id_a && mode == sys::XDP_ATTACHED_DRV);

            // The first agent exits: its program is gone already, the new one must stay.
            assert!(
                a.detach().is_err(),
                "detaching a replaced program is refused"
            );
            assert_eq!(sys::xdp_query(xa).expect("query").0, id_b);
            drop(b);
            assert_eq!(
                sys::xdp_query(xa).expect("query").0,
                0,
                "clean exit leaves no program"
            );
        })
        .expect("thread in namespace");
    }

    #[test]
    fn a_device_without_native_xdp_gets_the_program_in_generic_mode() {
        if !meshpath_testkit::needs_root(
            "a_device_without_native_xdp_gets_the_program_in_generic_mode",
        ) {
            return;
        }
        let scratch = Scratch::new("generic");
        let ns = Netns::named(&scratch.0).expect("namespace just created");
        ns.run(|| {
            let xd = crate::netns::ifindex("xd").expect("xd exists in the namespace");
            let prog = XdpRedirect::load(Role::Uplink, NodeAddrs::default()).expect("load");
            let a = prog.attach(xd).expect("attach");
            assert_eq!(a.mode(), AttachMode::Generic);
            assert_eq!(sys::xdp_query(xd).expect("query").1, sys::XDP_ATTACHED_SKB);
            a.detach().expect("detach");
            assert_eq!(sys::xdp_query(xd).expect("query").0, 0);
        })
        .expect("thread in namespace");
    }

    #[test]
    fn a_program_that_is_not_ours_is_never_replaced() {
        if !meshpath_testkit::needs_root("a_program_that_is_not_ours_is_never_replaced") {
            return;
        }
        let scratch = Scratch::new("foreign");
        let ns = Netns::named(&scratch.0).expect("namespace just created");
        ns.run(|| {
            let xa = crate::netns::ifindex("xa").expect("xa exists in the namespace");
            let other = sys::load_foreign_xdp("their_firewall").expect("load a foreign program");
            let flags = sys::XDP_FLAGS_DRV_MODE | sys::XDP_FLAGS_UPDATE_IF_NOEXIST;
            sys::xdp_attach(xa, other.as_fd(), flags, None).expect("attach theirs");
            let (theirs, _) = sys::xdp_query(xa).expect("query");
            let ours = XdpRedirect::load(Role::Pod, NodeAddrs::default()).expect("load");
            let err = ours.attach(xa).unwrap_err();
            assert!(
                matches!(&err, Error::ForeignProgram { name, .. } if name == "their_firewall"),
                "{err}"
            );
            assert!(err.to_string().contains("their_firewall"));
            assert_eq!(
                sys::xdp_query(xa).expect("query").0,
                theirs,
                "left in place"
            );
        })
        .expect("thread in namespace");
    }

    #[test]
    fn receive_queues_are_what_the_driver_uses_now() {
        if !meshpath_testkit::needs_root("receive_queues_are_what_the_driver_uses_now") {
            return;
        }
        let scratch = Scratch::new("queues");
        ip(&[
            "-n",
            &scratch.0,
            "link",
            "add",
            "xq",
            "numrxqueues",
            "4",
            "numtxqueues",
            "4",
            "type",
            "veth",
            "peer",
            "name",
            "xr",
            "numrxqueues",
            "4",
            "numtxqueues",
            "4",
        ]);
        let ns = Netns::named(&scratch.0).expect("namespace just created");
        ns.run(|| {
            assert_eq!(crate::netns::rx_queues("xa").expect("xa"), 1);
            assert_eq!(crate::netns::rx_queues("xq").expect("xq"), 4);
            assert_eq!(
                crate::netns::rx_queues("xd").expect("bridge"),
                1,
                "no channels: one"
            );
            assert!(crate::netns::rx_queues("nonexistent0").is_err());
        })
        .expect("thread in namespace");
    }
}
