//! Network namespaces by file descriptor: XDP attachment and AF_XDP sockets act in the calling thread's
//! namespace, so the lab, the tests and detach-on-drop move one thread, never the whole process.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::sys;

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
}

impl Netns {
    /// The namespace of the calling thread.
    pub fn current() -> io::Result<Netns> {
        File::open("/proc/thread-self/ns/net").map(|file| Netns { file })
    }

    /// A namespace by path, e.g. `/run/netns/mp-c1-n1` as `ip netns add` creates it.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Netns> {
        File::open(path).map(|file| Netns { file })
    }

    /// A namespace created by `ip netns add NAME`.
    pub fn named(name: &str) -> io::Result<Netns> {
        Netns::open(Path::new("/run/netns").join(name))
    }

    /// Whether the calling thread is in this namespace now.
    pub fn is_current(&self) -> io::Result<bool> {
        let here = Netns::current()?.file.metadata()?;
        let this = self.file.metadata()?;
        Ok((here.dev(), here.ino()) == (this.dev(), this.ino()))
    }

    /// Moves the calling thread into this namespace; threads it spawns afterwards start there too.
    pub fn enter(&self) -> io::Result<()> {
        sys::setns_net(&self.file)
    }

    /// Runs `f` in this namespace: directly if the thread is already there, else on a scoped thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        if self.is_current()? {
            return Ok(f());
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("thread in network namespace panicked")))
        })
    }
}

/// The index of interface `name` in the calling thread's namespace (not via /sys, which shows the
/// namespace of whoever mounted it).
pub fn ifindex(name: &str) -> io::Result<u32> {
    sys::ifindex(name)
}

/// The receive queues interface `name` of the calling thread's namespace uses now.
pub fn rx_queues(name: &str) -> io::Result<u32> {
    crate::sys::rx_queues(name)
}
