//! tcpdump on a lab interface, inbound only — what reached that kernel's stack, which frames an XDP
//! program redirected or dropped never do — started and known to be listening before the caller sends
//! anything, so an empty capture means nothing came, not that tcpdump was not ready yet.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};

pub struct Capture {
    child: Child,
}

impl Capture {
    /// Starts tcpdump on `interface` in `netns` and returns once it listens.
    pub fn start(netns: &str, interface: &str) -> anyhow::Result<Capture> {
        Capture::filtered(netns, interface, &[])
    }

    /// The same, for the frames a pcap-filter expression (`ip`, `udp port 6081`, …) selects, one
    /// line each (tcpdump's `-q`).
    pub fn filtered(netns: &str, interface: &str, filter: &[&str]) -> anyhow::Result<Capture> {
        Capture::decoded(netns, interface, &["-q"], filter)
    }

    /// The same, each frame's line followed by its bytes as text (`-A`: non-printable bytes as
    /// dots), to look for a payload in clear.
    pub fn with_payload(netns: &str, interface: &str, filter: &[&str]) -> anyhow::Result<Capture> {
        Capture::decoded(netns, interface, &["-q", "-A"], filter)
    }

    /// The same with tcpdump's decoding `options` (`-T vxlan` to decode UDP as VXLAN, …): without
    /// `-q`, an encapsulated frame's inner packet may come on a line of its own, after its outer one.
    pub fn decoded(
        netns: &str,
        interface: &str,
        options: &[&str],
        filter: &[&str],
    ) -> anyhow::Result<Capture> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "tcpdump", "-i", interface])
            .args(["-Q", "in", "-n", "-l"])
            .args(options)
            .args(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump (scripts/setup-host installs it)")?;
        let stderr = child.stderr.take().context("tcpdump's stderr")?;
        let (listening, ready) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = listening.send(());
                }
            }
        });
        if ready.recv_timeout(Duration::from_secs(10)).is_err() {
            let _ = child.kill();
            bail!("tcpdump on {interface} in {netns} did not start listening");
        }
        Ok(Capture { child })
    }

    /// Stops tcpdump; the frames it captured, one line each.
    pub fn stop(self) -> anyhow::Result<Vec<String>> {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let out = self.child.wait_with_output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect())
    }
}
