//! Threaded NAPI on the node's pod veth, its thread pinned to the forwarder's core: where way (d)'s
//! XDP program runs. A veth polls its peer's frames in softirq on the core that sent them — the
//! generator's — so without this the kernel reference would forward on the generator's core while
//! meshpath's worker has a core of its own. With the veth's NAPI in a kernel thread on the
//! forwarder's core, (d) runs the program, the redirect and the sink's receive there, as (c) runs
//! its worker, its transmit and the sink's receive on that core.
//!
//! A veth has NAPI only while an XDP program is attached, so this is switched on after attaching
//! and off before detaching. The thread is found as the one `napi/<dev>-<id>` kernel thread that
//! appeared when threading was switched on; two appearing at once (another run switching at the
//! same moment) stops the measurement rather than pin a thread that may not be ours.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{bail, Context};

/// The veth's NAPI threaded and pinned; [`ThreadedNapi::off`] switches it back to softirq.
pub struct ThreadedNapi {
    ns: String,
    dev: String,
    /// The kernel thread, as `ps` shows it.
    pub thread: u32,
}

impl ThreadedNapi {
    pub fn on(ns: &str, dev: &str, core: usize) -> anyhow::Result<ThreadedNapi> {
        let before = napi_threads(dev);
        set_threaded(ns, dev, true)?;
        let mut napi = ThreadedNapi {
            ns: ns.to_owned(),
            dev: dev.to_owned(),
            thread: 0,
        };
        let new: Vec<u32> = napi_threads(dev).difference(&before).copied().collect();
        let thread = match new.as_slice() {
            [one] => *one,
            [] => bail!("no NAPI thread of {dev} in {ns} appeared (has it an XDP program?)"),
            many => bail!(
                "{} NAPI threads named after {dev} appeared at once ({many:?}): another run is \
                 switching its own; not pinning one that may not be ours",
                many.len()
            ),
        };
        pin(thread, core)?;
        napi.thread = thread;
        Ok(napi)
    }

    pub fn off(mut self) -> anyhow::Result<()> {
        let (ns, dev) = (std::mem::take(&mut self.ns), std::mem::take(&mut self.dev));
        set_threaded(&ns, &dev, false)
    }
}

impl Drop for ThreadedNapi {
    fn drop(&mut self) {
        if !self.ns.is_empty() {
            let _ = set_threaded(&self.ns, &self.dev, false);
        }
    }
}

fn set_threaded(ns: &str, dev: &str, on: bool) -> anyhow::Result<()> {
    let write = format!("echo {} > /sys/class/net/{dev}/threaded", u8::from(on));
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", &write])
        .output()
        .context("running ip netns exec")?;
    if !out.status.success() {
        bail!(
            "{write} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The kernel threads polling a NAPI of an interface named `dev` (in any namespace).
fn napi_threads(dev: &str) -> BTreeSet<u32> {
    let prefix = format!("napi/{dev}-");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| is_napi_thread(&comm, &prefix))
        })
        .collect()
}

/// `napi/<dev>-<napi id>`, as the kernel names the thread (its comm cut to 15 bytes).
fn is_napi_thread(comm: &str, prefix: &str) -> bool {
    comm.trim_end()
        .strip_prefix(prefix)
        .is_some_and(|id| id.bytes().all(|b| b.is_ascii_digit()))
}

fn pin(thread: u32, core: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it; sched_setaffinity
    // reads `size_of` bytes of it.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(
            thread as libc::pid_t,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning NAPI thread {thread} to core {core}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_a_napi_thread_by_its_name() {
        assert!(is_napi_thread("napi/pod0-8195\n", "napi/pod0-"));
        assert!(!is_napi_thread("napi/pod01-8195\n", "napi/pod0-"));
        assert!(!is_napi_thread("napi/uplink-81\n", "napi/pod0-"));
        assert!(!is_napi_thread("kworker/0:1\n", "napi/pod0-"));
    }
}
