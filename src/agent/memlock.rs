//! Room for BPF maps on kernels before 5.11, which charge them to RLIMIT_MEMLOCK (later ones charge
//! the memory cgroup): the agent lifts its own limit, as Cilium's does, which needs CAP_SYS_RESOURCE
//! in a container. The AF_XDP UMEM is charged to the same limit unless the agent holds CAP_IPC_LOCK.

/// Lifts RLIMIT_MEMLOCK to unlimited; the reason it could not, if it could not.
pub fn lift() -> Result<(), std::io::Error> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit(2) reads the rlimit we pass by reference and changes only this process's
    // limit; it has no other effect on our memory.
    match unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}
