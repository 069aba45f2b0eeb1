//! `meshpath vm leave`: an external workload leaves the mesh. A running agent is stopped the planned
//! way (SIGTERM; its stop revokes its lease, which withdraws its records); then whatever is still
//! published for the host in the joined cluster's etcd — left by an agent that was killed, or that
//! stopped while etcd was unreachable — is withdrawn by revoking the lease it hangs on: the host's
//! node record, its IP → identity pair and its identity claims go at once instead of at the lease's
//! expiry. The identity itself stays for the cluster's identity GC, as Cilium's do.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meshpath_control::etcd::{self, describe, EtcdTarget};
use meshpath_control::kvstore::Key;
use meshpath_control::ClusterName;
use meshpath_xdp_redirect::netns::Netns;

use super::super::config::{AgentConfig, Mode};

/// How long a stopping agent may take to withdraw its records and exit.
const STOP_WAIT: Duration = Duration::from_secs(20);

pub fn leave(config_path: PathBuf, netns: Option<String>) -> anyhow::Result<()> {
    let config = AgentConfig::load(&config_path)?;
    if config.mode != Mode::External {
        bail!(
            "{}: not `mode: external`: `vm leave` takes an external workload out of the mesh, not a node",
            config_path.display()
        );
    }
    if let Some(pid) = agent_pid(&config.status_socket) {
        stop(pid)?;
        println!("stopped the agent (pid {pid}) the planned way");
    }
    // Before any thread exists: etcd is reached from the host's own namespace.
    if let Some(name) = &netns {
        Netns::named(name)
            .and_then(|ns| ns.enter())
            .with_context(|| format!("entering network namespace `{name}`"))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let revoked = runtime.block_on(withdraw(&config))?;
    let (node, cluster) = (&config.node.name, &config.cluster.name);
    match revoked {
        Some(lease) => {
            println!("{node} left {cluster}: its records withdrawn (lease {lease:x} revoked)")
        }
        None => println!("{node} left {cluster}: nothing of it is published any more"),
    }
    Ok(())
}

/// The pid of the process serving `socket`, as the kernel tells its peer (SO_PEERCRED): the agent.
fn agent_pid(socket: &Path) -> Option<i32> {
    let stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the descriptor is `stream`'s, open for the whole call; `cred` and `len` are a ucred and
    // its size, which SO_PEERCRED fills in and nothing else.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid)
}

/// SIGTERM to the agent `pid`, then waits until it is gone.
fn stop(pid: i32) -> anyhow::Result<()> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let is_meshpath = exe
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("meshpath"));
    if !is_meshpath {
        bail!(
            "pid {pid} serves the status socket but is {}, not a meshpath agent: not stopping it",
            exe.display()
        );
    }
    // SAFETY: kill has no memory preconditions; the pid was the socket's peer a moment ago.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        bail!(
            "stopping the agent (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    let started = Instant::now();
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    while proc_dir.exists() && !exited(&proc_dir) {
        if started.elapsed() > STOP_WAIT {
            bail!("the agent (pid {pid}) did not stop within {STOP_WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A process that exited and waits for its parent to reap it.
fn exited(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
    })
}

/// Revokes the lease the host's node record or endpoint hangs on, if either is still there.
async fn withdraw(config: &AgentConfig) -> anyhow::Result<Option<i64>> {
    let etcd = config.etcd.as_ref().context("`etcd`")?;
    let tls = super::super::control::tls_material(etcd)?;
    let target = EtcdTarget {
        endpoints: &etcd.endpoints,
        tls: tls.as_ref(),
        connect_timeout: Duration::from_secs(5),
        keep_alive: Duration::from_secs(10),
    };
    let endpoints = etcd.endpoints.join(",");
    let fail = |e: etcd_client::Error| anyhow::anyhow!("etcd at {endpoints}: {}", describe(&e));
    let mut client = etcd::connect(&target).await.map_err(fail)?;
    let cluster = ClusterName::new(&config.cluster.name)?;
    let mut keys = vec![Key::Node {
        cluster,
        node: config.node.name.clone(),
    }];
    keys.extend(config.node.ipv4.map(|ip| Key::Endpoint(ip.into())));
    for key in keys {
        let found = client.get(key.to_string(), None).await.map_err(fail)?;
        let lease = found.kvs().first().map_or(0, |kv| kv.lease());
        if lease != 0 {
            client.lease_revoke(lease).await.map_err(fail)?;
            return Ok(Some(lease));
        }
    }
    Ok(None)
}
