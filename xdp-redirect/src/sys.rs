//! Every `unsafe` call of this crate: libbpf's XDP attach/query/test-run entry points and setns(2).
//! Above this module everything is safe Rust over owned and borrowed file descriptors.

use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use libbpf_rs::libbpf_sys as bpf;

pub(crate) const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = bpf::XDP_FLAGS_UPDATE_IF_NOEXIST;
pub(crate) const XDP_FLAGS_SKB_MODE: u32 = bpf::XDP_FLAGS_SKB_MODE;
pub(crate) const XDP_FLAGS_DRV_MODE: u32 = bpf::XDP_FLAGS_DRV_MODE;
pub(crate) const XDP_FLAGS_REPLACE: u32 = bpf::XDP_FLAGS_REPLACE;
pub(crate) const XDP_ATTACHED_DRV: u8 = bpf::XDP_ATTACHED_DRV as u8;
pub(crate) const XDP_ATTACHED_SKB: u8 = bpf::XDP_ATTACHED_SKB as u8;

/// libbpf (1.x) returns `-errno` on failure.
fn check(ret: i32) -> io::Result<i32> {
    if ret < 0 {
        Err(io::Error::from_raw_os_error(-ret))
    } else {
        Ok(ret)
    }
}

fn ifindex_arg(ifindex: u32) -> io::Result<i32> {
    i32::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))
}

fn attach_opts(old: Option<BorrowedFd<'_>>) -> bpf::bpf_xdp_attach_opts {
    bpf::bpf_xdp_attach_opts {
        sz: size_of::<bpf::bpf_xdp_attach_opts>() as bpf::size_t,
        old_prog_fd: old.map_or(-1, |fd| fd.as_raw_fd()),
        ..Default::default()
    }
}

/// The id and attach mode (`XDP_ATTACHED_*`) of the XDP program on `ifindex`; id 0 if none.
pub(crate) fn xdp_query(ifindex: u32) -> io::Result<(u32, u8)> {
    let mut opts = bpf::bpf_xdp_query_opts {
        sz: size_of::<bpf::bpf_xdp_query_opts>() as bpf::size_t,
        ..Default::default()
    };
    // SAFETY: `opts` is a live, correctly sized bpf_xdp_query_opts that libbpf only writes into.
    check(unsafe { bpf::bpf_xdp_query(ifindex_arg(ifindex)?, 0, &mut opts) })?;
    Ok((opts.prog_id, opts.attach_mode))
}

/// Attaches `prog` with `flags`; with `XDP_FLAGS_REPLACE`, only if `old` is the program there now.
pub(crate) fn xdp_attach(
    ifindex: u32,
    prog: BorrowedFd<'_>,
    flags: u32,
    old: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let opts = attach_opts(old);
    // SAFETY: both fds are borrowed for the call, `opts` outlives it and is only read.
    check(unsafe { bpf::bpf_xdp_attach(ifindex_arg(ifindex)?, prog.as_raw_fd(), flags, &opts) })
        .map(drop)
}

/// Detaches the program on `ifindex` only if it is still `ours` (XDP_FLAGS_REPLACE semantics).
pub(crate) fn xdp_detach_if(ifindex: u32, mode_flags: u32, ours: BorrowedFd<'_>) -> io::Result<()> {
    let opts = attach_opts(Some(ours));
    let flags = mode_flags | XDP_FLAGS_REPLACE;
    // SAFETY: `ours` is borrowed for the call, `opts` outlives it and is only read.
    check(unsafe { bpf::bpf_xdp_detach(ifindex_arg(ifindex)?, flags, &opts) }).map(drop)
}

/// A new fd for the loaded program with this id.
pub(crate) fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall wrapper; on success the returned fd is new and owned by nobody else.
    let fd = check(unsafe { bpf::bpf_prog_get_fd_by_id(id) })?;
    // SAFETY: `fd` was just returned by the kernel and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The name (as the kernel keeps it: at most 15 bytes) and tag of a loaded program.
pub(crate) fn prog_name_and_tag(prog: BorrowedFd<'_>) -> io::Result<(String, [u8; 8])> {
    let mut info = bpf::bpf_prog_info::default();
    let mut len = size_of::<bpf::bpf_prog_info>() as u32;
    let info_ptr: *mut bpf::bpf_prog_info = &mut info;
    // SAFETY: `info` is a zeroed bpf_prog_info of `len` bytes that the kernel fills; every pointer
    // field in it is null, so the kernel writes nothing through them.
    check(unsafe { bpf::bpf_obj_get_info_by_fd(prog.as_raw_fd(), info_ptr.cast(), &mut len) })?;
    let name: Vec<u8> = info
        .name
        .iter()
        .map(|&c| c as u8)
        .take_while(|&c| c != 0)
        .collect();
    Ok((String::from_utf8_lossy(&name).into_owned(), info.tag))
}

/// Runs the program once over `frame` (BPF_PROG_TEST_RUN) and returns its XDP action.
pub(crate) fn test_run(prog: BorrowedFd<'_>, frame: &[u8]) -> io::Result<u32> {
    let mut out = [0u8; 2048];
    let mut opts = bpf::bpf_test_run_opts {
        sz: size_of::<bpf::bpf_test_run_opts>() as bpf::size_t,
        data_in: frame.as_ptr().cast(),
        data_size_in: u32::try_from(frame.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        data_out: out.as_mut_ptr().cast(),
        data_size_out: out.len() as u32,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: data_in/data_out point to live buffers of the stated sizes for the whole call.
    check(unsafe { bpf::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) })?;
    Ok(opts.retval)
}

/// Moves the calling thread (only) into the network namespace `ns`.
pub(crate) fn setns_net(ns: &File) -> io::Result<()> {
    // SAFETY: setns only reads the fd, which `ns` keeps open for the call.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The index of interface `name` in the calling thread's network namespace.
pub(crate) fn ifindex(name: &str) -> io::Result<u32> {
    let name =
        std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        index => Ok(index),
    }
}

/// The receive queues the driver of interface `name` uses now (ETHTOOL_GCHANNELS: separate rx
/// channels or combined ones); 1 for a device that does not report channels.
pub(crate) fn rx_queues(name: &str) -> io::Result<u32> {
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    #[repr(C)]
    #[derive(Default)]
    struct EthtoolChannels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    let mut channels = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    let mut req: libc::ifreq = unsafe_zeroed_ifreq();
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut channels as *mut EthtoolChannels).cast();
    // SAFETY: a plain datagram socket, closed below by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `req` names the interface and points at `channels`, both live for the call; the kernel
    // writes only into `channels` (its size is what ETHTOOL_GCHANNELS expects).
    let ret = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Ok(1),
            _ => Err(err),
        };
    }
    Ok(channels.rx_count.max(channels.combined_count).max(1))
}

fn unsafe_zeroed_ifreq() -> libc::ifreq {
    // SAFETY: ifreq is a plain C struct (names and a union of integers and pointers) for which all
    // zero bytes is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Loads `r0 = XDP_PASS; exit` as an XDP program named `name`: a program that is not ours, for tests.
#[cfg(test)]
pub(crate) fn load_foreign_xdp(name: &str) -> io::Result<OwnedFd> {
    // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 2 (XDP_PASS); then BPF_JMP | BPF_EXIT.
    let insns = [
        bpf::bpf_insn {
            code: 0xb7,
            _bitfield_1: bpf::bpf_insn::new_bitfield_1(0, 0),
            off: 0,
            imm: 2,
            ..Default::default()
        },
        bpf::bpf_insn {
            code: 0x95,
            ..Default::default()
        },
    ];
    let name =
        std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let license = c"GPL";
    // SAFETY: the name, license and instruction array outlive the call; no options are passed.
    let fd = check(unsafe {
        bpf::bpf_prog_load(
            bpf::BPF_PROG_TYPE_XDP,
            name.as_ptr(),
            license.as_ptr(),
            insns.as_ptr(),
            insns.len() as bpf::size_t,
            std::ptr::null_mut(),
        )
    })?;
    // SAFETY: `fd` was just returned by the kernel and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
