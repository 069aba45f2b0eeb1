//! Real AF_XDP end to end: two pod namespaces joined through a node namespace whose pod-facing veths
//! carry the XDP program and AF_XDP sockets, patched together by a cross-connect handler. A ping
//! between the pods must cross the AF_XDP path (port counters prove it) while the node's own traffic on
//! its uplink still reaches the kernel (XDP_PASS), and tunnel-port traffic to the node is taken.
//! Needs root: not root, it is reported as skipped (and fails under `scripts/test`).

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use meshpath_dataplane::afxdp::{
    BatchHandler, CrossConnect, PortConfig, StatsReader, Worker, WorkerConfig, WorkerHandle,
    WorkerStats, XdpMode,
};
use meshpath_dataplane::frame::HEADROOM;
use meshpath_dataplane::{DropReason, Frame, PortId, Verdict};
use meshpath_testkit::needs_root;
use meshpath_xdp_redirect::netns::{ifindex, Netns};
use meshpath_xdp_redirect::{Attachment, NodeAddrs, Role, XdpRedirect};

const UPLINK: PortId = PortId(0);
/// How long a frame already sent may take to be counted on a loaded machine.
const WAIT: std::time::Duration = std::time::Duration::from_secs(10);
const POD_A: PortId = PortId(1);
const POD_B: PortId = PortId(2);

/// A cross-connect that also moves every frame `SHIFT` bytes into its headroom (as encapsulation
/// would) before sending it: the receiver sees intact frames only if transmit follows the frame's head.
struct ShiftingCrossConnect {
    inner: CrossConnect,
    short_headroom: Arc<AtomicU64>,
}

const SHIFT: usize = 64;

impl BatchHandler for ShiftingCrossConnect {
    fn handle(&mut self, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
        for frame in frames.iter_mut() {
            if frame.headroom() < HEADROOM {
                self.short_headroom.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let len = frame.len();
            if let Some(bytes) = frame.push_front(SHIFT) {
                bytes.copy_within(SHIFT..SHIFT + len, 0);
                frame.truncate(len);
            }
        }
        self.inner.handle(frames, verdicts);
    }
}

/// The test's namespaces, deleted on drop whatever happened.
struct Lab {
    prefix: String,
}

impl Lab {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn build(tag: &str) -> Lab {
        let lab = Lab {
            prefix: format!("mp-t-{tag}{}", std::process::id()),
        };
        for n in ["node", "a", "b", "peer"] {
            ip(&["netns", "add", &lab.ns(n)]);
        }
        let node = lab.ns("node");
        for (pod, node_if, addr) in [
            ("a", "pa", "100.64.1.10/24"),
            ("b", "pb", "100.64.1.11/24"),
            ("peer", "uplink", ""),
        ] {
            let pod_ns = lab.ns(pod);
            ip(&[
                "-n", &node, "link", "add", node_if, "type", "veth", "peer", "name", "eth0",
                "netns", &pod_ns,
            ]);
            ip(&["-n", &node, "link", "set", node_if, "up"]);
            ip(&["-n", &pod_ns, "link", "set", "eth0", "up"]);
            if !addr.is_empty() {
                ip(&["-n", &pod_ns, "addr", "add", addr, "dev", "eth0"]);
            }
        }
        ip(&["-n", &node, "addr", "add", "198.18.1.1/24", "dev", "uplink"]);
        ip(&[
            "-n",
            &lab.ns("peer"),
            "addr",
            "add",
            "198.18.1.254/24",
            "dev",
            "eth0",
        ]);
        lab
    }

    fn exec(&self, ns: &str, args: &[&str]) -> bool {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns)])
            .args(args)
            .status();
        status.map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in ["node", "a", "b", "peer"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(n)])
                .status();
        }
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
fn pods_talk_through_afxdp_while_the_node_keeps_its_own_traffic() {
    if !needs_root("pods_talk_through_afxdp_while_the_node_keeps_its_own_traffic") {
        return;
    }
    let stats = forward_through_afxdp("fwd", false, true);
    assert!(stats.idle_polls > 0, "an idle worker sleeps in poll(2)");
}

#[test]
fn a_worker_free_to_choose_binds_veths_in_copy_mode_and_forwards() {
    if !needs_root("a_worker_free_to_choose_binds_veths_in_copy_mode_and_forwards") {
        return;
    }
    // Not forced to copy, the kernel tries zero-copy first; veth has none and falls back.
    forward_through_afxdp("auto", false, false);
}

#[test]
fn busy_polling_worker_forwards_without_sleeping() {
    if !needs_root("busy_polling_worker_forwards_without_sleeping") {
        return;
    }
    let stats = forward_through_afxdp("busy", true, true);
    assert_eq!(stats.idle_polls, 0, "a busy-polling worker never sleeps");
    assert!(stats.rx_kicks > 0, "it drives the queues with rx kicks");
}

/// The node namespace of a lab wired for AF_XDP: a worker bound to its three ports, their programs
/// loaded and attached with the sockets registered, the worker running `handler`.
struct Wired<H> {
    handle: WorkerHandle<H>,
    stats: StatsReader,
    stop: Arc<AtomicBool>,
    programs: Vec<XdpRedirect>,
    attachments: Vec<Attachment>,
}

impl<H> Wired<H> {
    fn stop(self) -> (WorkerStats, Vec<XdpRedirect>) {
        self.stop.store(true, Ordering::Relaxed);
        let stats = self.handle.join().expect("worker ends cleanly");
        drop(self.attachments);
        (stats, self.programs)
    }
}

fn wire<H: BatchHandler + Send + 'static>(
    lab: &Lab,
    handler: H,
    busy_poll: bool,
    copy: bool,
) -> Wired<H> {
    let home = Netns::current().expect("own namespace");
    Netns::named(&lab.ns("node"))
        .expect("node namespace")
        .enter()
        .expect("setns into the node");
    let node = NodeAddrs {
        ipv4: Some(Ipv4Addr::new(198, 18, 1, 1)),
        ipv6: None,
    };
    let ports = [
        (UPLINK, "uplink", Role::Uplink),
        (POD_A, "pa", Role::Pod),
        (POD_B, "pb", Role::Pod),
    ];
    let mut port_configs = Vec::new();
    for (id, name, _) in ports {
        let index = ifindex(name).expect("interface in node namespace");
        port_configs.push(PortConfig {
            id,
            ifindex: index,
            queue: 0,
        });
    }
    let mut config = WorkerConfig::new(port_configs.clone());
    config.busy_poll = busy_poll;
    config.copy = copy;
    let worker = Worker::bind(config).expect("AF_XDP sockets on shared UMEM");
    for (port, mode) in worker.modes() {
        assert_eq!(mode, Some(XdpMode::Copy), "veth {port:?} has no zero-copy");
    }
    // Sockets registered before the programs attach: the node is never open, only closed briefly.
    let mut programs = Vec::new();
    let mut attachments = Vec::new();
    for (((_, name, role), (_, fd)), port) in ports.iter().zip(worker.sockets()).zip(&port_configs)
    {
        let mut prog = XdpRedirect::load(*role, node).expect("load XDP program");
        if *role == Role::Uplink {
            let peer = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 254));
            prog.set_tunnel_peers(&[peer]).expect("the peer is a node");
        }
        prog.register_socket(0, fd).expect("register in XSKMAP");
        let attachment = prog.attach(port.ifindex).expect("attach XDP program");
        eprintln!("{name}: XDP attached in {:?} mode", attachment.mode());
        attachments.push(attachment);
        programs.push(prog);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stats = worker.stats_reader();
    let handle = worker.spawn(handler, stop.clone()).expect("worker thread");
    home.enter().expect("back home");
    Wired {
        handle,
        stats,
        stop,
        programs,
        attachments,
    }
}

/// Builds the namespaces, runs the worker with the cross-connect, checks what every variant must
/// show and returns the worker's final counters.
fn forward_through_afxdp(tag: &str, busy_poll: bool, copy: bool) -> WorkerStats {
    let lab = Lab::build(tag);
    let short_headroom = Arc::new(AtomicU64::new(0));
    let handler = ShiftingCrossConnect {
        inner: CrossConnect::new(vec![(POD_A, POD_B)]),
        short_headroom: short_headroom.clone(),
    };
    let wired = wire(&lab, handler, busy_poll, copy);

    let pods_ping = lab.exec(
        "a",
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", "100.64.1.11"],
    );
    let node_ping = lab.exec(
        "peer",
        &["ping", "-c", "2", "-i", "0.2", "-W", "2", "198.18.1.1"],
    );
    let vxlan_sent = lab.exec(
        "peer",
        &[
            "bash",
            "-c",
            "for i in 1 2 3; do echo vxlan > /dev/udp/198.18.1.1/8472; done",
        ],
    );
    // The datagrams are in flight when `bash` returns: wait until the worker has counted them.
    let taken = meshpath_testkit::until("the three tunnel datagrams on the uplink", WAIT, || {
        let stats = wired.stats.read();
        let dropped = stats
            .port(UPLINK)
            .map_or(0, |up| up.drops[DropReason::UnknownPort.index()]);
        meshpath_testkit::wait::check(dropped >= 3, format!("{dropped} dropped as unknown_port"))
    });

    let (stats, programs) = wired.stop();
    let uplink_verdicts = programs[0].verdicts().expect("uplink counters");
    eprintln!("{stats:#?}\nuplink program: {uplink_verdicts:?}");

    taken.expect("the worker counts what it took");
    assert!(pods_ping, "pod a could not ping pod b through AF_XDP");
    assert_eq!(
        short_headroom.load(Ordering::Relaxed),
        0,
        "every frame came with {HEADROOM} bytes of headroom"
    );
    let (a, b) = (
        stats.port(POD_A).expect("port a"),
        stats.port(POD_B).expect("port b"),
    );
    assert!(
        a.rx >= 3 && b.tx >= 3,
        "echo requests crossed a → b: {a:?} {b:?}"
    );
    assert!(
        b.rx >= 3 && a.tx >= 3,
        "echo replies crossed b → a: {a:?} {b:?}"
    );

    assert!(
        node_ping,
        "the node's own traffic on the uplink must still reach its kernel"
    );
    assert!(vxlan_sent, "sending UDP to the tunnel port");
    let up = stats.port(UPLINK).expect("uplink port");
    assert_eq!(
        up.rx, 3,
        "exactly the three tunnel datagrams were taken from the uplink: {up:?}"
    );
    assert_eq!(
        up.drops[DropReason::UnknownPort.index()],
        3,
        "the cross-connect owns no uplink traffic"
    );
    assert!(
        uplink_verdicts.pass >= 3,
        "two pings and the peer's ARP request were passed to the kernel: {uplink_verdicts:?}"
    );
    stats
}

/// Holds the worker inside its handler once armed and a frame comes, until released.
struct Stall {
    armed: Arc<AtomicBool>,
    inside: Arc<AtomicBool>,
    release: std::sync::mpsc::Receiver<()>,
}

impl BatchHandler for Stall {
    fn handle(&mut self, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.inside.store(true, Ordering::SeqCst);
            let _ = self.release.recv();
        }
        verdicts[..frames.len()].fill(Verdict::Drop(DropReason::UnknownPort));
    }
}

#[test]
fn the_heartbeat_beats_while_idle_and_stops_with_a_stuck_worker() {
    if !needs_root("the_heartbeat_beats_while_idle_and_stops_with_a_stuck_worker") {
        return;
    }
    let lab = Lab::build("beat");
    let (armed, inside) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (release, held) = std::sync::mpsc::channel();
    let stall = Stall {
        armed: armed.clone(),
        inside: inside.clone(),
        release: held,
    };
    let wired = wire(&lab, stall, false, true);
    // No traffic: an idle worker wakes from poll(2) and beats all the same.
    let first = wired.stats.heartbeat();
    assert!(
        wait_until(|| wired.stats.heartbeat() > first + 10),
        "an idle worker's heartbeat advances"
    );

    armed.store(true, Ordering::SeqCst);
    lab.exec("a", &["ping", "-c", "1", "-W", "1", "100.64.1.11"]);
    assert!(wait_until(|| inside.load(Ordering::SeqCst)), "a frame came");
    let stuck = wired.stats.heartbeat();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(
        wired.stats.heartbeat(),
        stuck,
        "a stuck worker does not beat"
    );
    release.send(()).unwrap();
    assert!(
        wait_until(|| wired.stats.heartbeat() > stuck),
        "released, it beats again"
    );
    wired.stop();
}

/// Takes `delay` per batch and drops it: a worker that cannot keep up and never idles.
struct Slow {
    delay: std::time::Duration,
}

impl BatchHandler for Slow {
    fn handle(&mut self, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
        std::thread::sleep(self.delay);
        verdicts[..frames.len()].fill(Verdict::Drop(DropReason::UnknownPort));
    }
}

/// The kernel drops what a saturated worker cannot take (rx ring full, fill ring empty); those
/// counters must show while it is saturated, not only once it idles again.
#[test]
fn kernel_drops_show_while_the_worker_is_saturated() {
    if !needs_root("kernel_drops_show_while_the_worker_is_saturated") {
        return;
    }
    let lab = Lab::build("sat");
    let slow = Slow {
        delay: std::time::Duration::from_millis(2),
    };
    let wired = wire(&lab, slow, false, true);
    // The handler answers no ARP: the destination's neighbour entry is set by hand.
    let neighbour = [
        "ip",
        "neigh",
        "replace",
        "100.64.1.11",
        "lladdr",
        "02:00:00:00:00:0b",
        "dev",
        "eth0",
    ];
    assert!(lab.exec("a", &neighbour));
    let flood = "import socket, time\n\
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
end = time.time() + 6\n\
while time.time() < end:\n    s.sendto(b'x' * 64, ('100.64.1.11', 9))\n";
    let mut sender = Command::new("ip")
        .args(["netns", "exec", &lab.ns("a"), "python3", "-c", flood])
        .spawn()
        .expect("python3 floods");
    let kernel_drops = |s: &WorkerStats| {
        let k = s.port(POD_A).map(|p| p.kernel).unwrap_or_default();
        k.rx_dropped + k.rx_ring_full + k.fill_ring_empty
    };
    let seen = wait_until(|| kernel_drops(&wired.stats.read()) > 0);
    let flooding = matches!(sender.try_wait(), Ok(None));
    let _ = sender.kill();
    let _ = sender.wait();
    let (stats, _) = wired.stop();
    eprintln!("{stats:#?}");
    assert!(seen, "the kernel's drops were published: {stats:?}");
    assert!(flooding, "and while the flood still ran");
    assert!(kernel_drops(&stats) > 0);
}

/// Whether `condition` holds within five seconds.
fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
    let five = std::time::Duration::from_secs(5);
    meshpath_testkit::until("the condition", five, || {
        meshpath_testkit::wait::check(condition(), ())
    })
    .is_ok()
}

/// Two workers bind sockets on queues 0 and 1 of two 2-queue veths over one shared UMEM (each socket
/// with fill and completion rings of its own, as the kernel requires for another queue): what a node
/// with two workers binds.
#[test]
fn two_workers_bind_their_own_queues_on_one_shared_umem() {
    if !needs_root("two_workers_bind_their_own_queues_on_one_shared_umem") {
        return;
    }
    let ns = format!("mp-t-mw{}", std::process::id());
    ip(&["netns", "add", &ns]);
    let queues = ["numtxqueues", "2", "numrxqueues", "2"];
    let mut add = vec!["-n", &ns, "link", "add", "q0"];
    add.extend(queues);
    add.extend(["type", "veth", "peer", "name", "q1"]);
    add.extend(queues);
    ip(&add);
    for dev in ["q0", "q1"] {
        ip(&["-n", &ns, "link", "set", dev, "up"]);
    }
    let home = Netns::current().expect("own namespace");
    Netns::named(&ns)
        .expect("namespace")
        .enter()
        .expect("setns");
    let ports = |queue| {
        ["q0", "q1"]
            .iter()
            .enumerate()
            .map(|(i, name)| PortConfig {
                id: PortId(i as u16),
                ifindex: ifindex(name).expect("interface"),
                queue,
            })
            .collect::<Vec<_>>()
    };
    let bound = Worker::bind_group(vec![
        WorkerConfig::new(ports(0)),
        WorkerConfig::new(ports(1)),
    ]);
    home.enter().expect("back home");
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    let workers = bound.expect("both workers bound");
    assert_eq!(workers.len(), 2);
    for worker in &workers {
        assert!(worker.modes().all(|(_, mode)| mode == Some(XdpMode::Copy)));
    }
}
