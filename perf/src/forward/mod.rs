//! `meshpath-perf forward`: real 64-byte UDP frames through a node, forwarded three ways in one run —
//! (a) a bare AF_XDP cross-connect, the machine's ceiling; (b) the kernel's IP forwarding into a VXLAN
//! device; (c) meshpath's pipeline (policy, service load balancing, VXLAN encapsulation) on an AF_XDP
//! worker — then (c) again at half its peak rate for latency. With `--encrypt`, (c) again at 1400-byte
//! frames, and both sizes once more under strict WireGuard (every frame encrypted on an established
//! session, [`sessions`]): Mpps and Gbit/s side by side and what encryption costs. Everything runs in
//! `mpb-` namespaces this run creates and deletes (see [`lab`]); the generator and sink share one
//! core, the forwarder has the other.

mod chart;
mod forwarder;
mod lab;
mod sessions;
mod traffic;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use meshpath_dataplane::afxdp::generator::TrafficPort;
use meshpath_dataplane::afxdp::WorkerStats;
use meshpath_dataplane::testbed::{Scale, Testbed};
use meshpath_xdp_redirect::netns::ifindex;
use meshpath_xdp_redirect::{NodeAddrs, Role, XdpRedirect};
use serde::{Deserialize, Serialize};

use crate::report::Report;
use forwarder::{Forwarder, Handler};
use lab::{inside, Lab, GEN_IF, SINK_IF};
use traffic::{Measured, Phase, Traffic};

const TARGET_VS_BARE: f64 = 0.9;
const TARGET_VS_KERNEL: f64 = 3.0;
const RING_SIZE: u32 = 2048;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds of traffic per measurement (four measurements, each after a short warm-up).
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// Flows (UDP source ports of one pod, to as many service frontends) the generator cycles over.
    #[arg(long, default_value_t = 1024)]
    pub flows: usize,
    /// Where to write the SVG chart of the three rates.
    #[arg(long, default_value = "target/meshpath-forward.svg")]
    pub chart: PathBuf,
    /// Also measure meshpath with strict WireGuard between the nodes, at 64- and 1400-byte frames,
    /// beside the plain pipeline at both sizes.
    #[arg(long)]
    pub encrypt: bool,
}

/// The frame sizes of the encrypted comparison, on the wire with the FCS.
const SMALL_FRAME: usize = 64;
const LARGE_FRAME: usize = 1400;
const FCS: usize = 4;

#[derive(Debug, Serialize, Deserialize)]
pub struct Rates {
    pub bare_afxdp: f64,
    pub kernel_vxlan: f64,
    pub meshpath: f64,
    /// With `--encrypt`: meshpath under strict WireGuard, 64-byte frames.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meshpath_encrypted: Option<f64>,
}

/// The encrypted comparison (`--encrypt`): meshpath plain and under strict WireGuard, by frame size.
#[derive(Debug, Serialize, Deserialize)]
pub struct BySize {
    pub meshpath_64: f64,
    pub meshpath_encrypted_64: f64,
    pub meshpath_1400: f64,
    pub meshpath_encrypted_1400: f64,
}

impl BySize {
    /// Mpps into Gbit/s of the pods' frames (FCS included, no preamble or gap).
    fn gbps(mpps: &BySize) -> BySize {
        let rate = |mpps: f64, bytes: usize| mpps * 1e6 * (bytes * 8) as f64 / 1e9;
        BySize {
            meshpath_64: rate(mpps.meshpath_64, SMALL_FRAME),
            meshpath_encrypted_64: rate(mpps.meshpath_encrypted_64, SMALL_FRAME),
            meshpath_1400: rate(mpps.meshpath_1400, LARGE_FRAME),
            meshpath_encrypted_1400: rate(mpps.meshpath_encrypted_1400, LARGE_FRAME),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

/// What an AF_XDP forwarder's worker counted over all its measurements.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerCounts {
    pub rx: u64,
    pub tx: u64,
    /// Dropped by the handler or for a full tx ring.
    pub dropped: u64,
    pub tx_ring_full: u64,
    /// The kernel dropped these for the worker's sockets (rx ring full, no fill buffers).
    pub kernel_rx_dropped: u64,
}

impl From<&WorkerStats> for WorkerCounts {
    fn from(stats: &WorkerStats) -> WorkerCounts {
        let ports = &stats.ports;
        WorkerCounts {
            rx: stats.rx(),
            tx: stats.tx(),
            dropped: ports.iter().map(|p| p.dropped()).sum(),
            tx_ring_full: ports.iter().map(|p| p.tx_ring_full).sum(),
            kernel_rx_dropped: ports
                .iter()
                .map(|p| p.kernel.rx_dropped + p.kernel.rx_ring_full + p.kernel.fill_ring_empty)
                .sum(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Forwarders {
    pub bare_afxdp: WorkerCounts,
    pub meshpath: WorkerCounts,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardReport {
    /// Frames per second that reached the sink, in millions.
    pub mpps: Rates,
    pub ratio_vs_bare: f64,
    pub ratio_vs_kernel: f64,
    /// Generator to sink, for meshpath at half its peak rate.
    pub latency_us: Latency,
    pub latency_offered_mpps: f64,
    /// What the generator managed to send in each measurement.
    pub offered_mpps: Rates,
    /// Share of the frames reaching the sink that came VXLAN-encapsulated.
    pub tunnelled_share: Rates,
    /// With `--encrypt`: Mpps of both sizes, plain and encrypted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mpps_by_size: Option<BySize>,
    /// With `--encrypt`: the same in Gbit/s of the pods' frames.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gbps: Option<BySize>,
    /// With `--encrypt`: encrypted / plain Mpps at 1400-byte frames.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_cost_ratio: Option<f64>,
    /// With `--encrypt`: share of the frames reaching the sink as WireGuard data (should be 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypted_share: Option<f64>,
    pub forwarder: Forwarders,
    /// The host's 1-minute load average when the run began: other work shares these cores.
    pub load_average_1m: f64,
    pub cores: String,
    pub chart: String,
    pub duration_s: f64,
    pub flows: usize,
}

impl Report for ForwardReport {
    fn lines(&self) -> Vec<String> {
        let mut lines = self.plain_lines();
        if let (Some(mpps), Some(gbps)) = (&self.mpps_by_size, &self.gbps) {
            lines.push(format!(
                "{:<34} {:>8} {:>8} {:>8} {:>8}",
                "meshpath", "64 Mpps", "Gbit/s", "1400 Mpps", "Gbit/s"
            ));
            lines.push(format!(
                "{:<34} {:>8.3} {:>8.2} {:>8.3} {:>8.2}",
                "plain", mpps.meshpath_64, gbps.meshpath_64, mpps.meshpath_1400, gbps.meshpath_1400
            ));
            lines.push(format!(
                "{:<34} {:>8.3} {:>8.2} {:>8.3} {:>8.2}",
                "strict WireGuard",
                mpps.meshpath_encrypted_64,
                gbps.meshpath_encrypted_64,
                mpps.meshpath_encrypted_1400,
                gbps.meshpath_encrypted_1400
            ));
            lines.push(format!(
                "encryption cost: encrypted / plain at 1400 bytes = {:.2} ({:.0} % of the frames reached the sink as WireGuard data)",
                self.encryption_cost_ratio.unwrap_or(f64::NAN),
                100.0 * self.encrypted_share.unwrap_or(0.0)
            ));
        }
        lines
    }
}

impl ForwardReport {
    fn plain_lines(&self) -> Vec<String> {
        let (m, o) = (&self.mpps, &self.offered_mpps);
        vec![
            format!("64-byte UDP frames, {} flows, {:.1} s per measurement", self.flows, self.duration_s),
            format!("cores: {}", self.cores),
            format!("{:<34} {:>8} {:>10}", "way", "Mpps", "offered"),
            format!("{:<34} {:>8.3} {:>10.3}", "(a) bare AF_XDP cross-connect", m.bare_afxdp, o.bare_afxdp),
            format!("{:<34} {:>8.3} {:>10.3}", "(b) kernel forwarding + VXLAN", m.kernel_vxlan, o.kernel_vxlan),
            format!("{:<34} {:>8.3} {:>10.3}", "(c) meshpath pipeline on AF_XDP", m.meshpath, o.meshpath),
            format!("c/a = {:.2} (target ≥ {TARGET_VS_BARE}: {})", self.ratio_vs_bare, distance(self.ratio_vs_bare, TARGET_VS_BARE)),
            format!("c/b = {:.2} (target ≥ {TARGET_VS_KERNEL}: {})", self.ratio_vs_kernel, distance(self.ratio_vs_kernel, TARGET_VS_KERNEL)),
            format!(
                "meshpath latency at {:.3} Mpps offered: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs",
                self.latency_offered_mpps, self.latency_us.p50, self.latency_us.p99, self.latency_us.p999
            ),
            format!(
                "AF_XDP workers: bare rx {} tx {} dropped {}, meshpath rx {} tx {} dropped {} (kernel rx drops {} / {})",
                self.forwarder.bare_afxdp.rx,
                self.forwarder.bare_afxdp.tx,
                self.forwarder.bare_afxdp.dropped,
                self.forwarder.meshpath.rx,
                self.forwarder.meshpath.tx,
                self.forwarder.meshpath.dropped,
                self.forwarder.bare_afxdp.kernel_rx_dropped,
                self.forwarder.meshpath.kernel_rx_dropped,
            ),
            format!("load average at start: {:.2} (other work on these cores skews the figures)", self.load_average_1m),
            format!("chart: {}", self.chart),
        ]
    }
}

/// "met" or how far below a target that sets a floor.
fn distance(value: f64, floor: f64) -> String {
    if value >= floor {
        format!("met, {:.0} % of it", 100.0 * value / floor)
    } else {
        format!(
            "missed by {:.2} ({:.0} % of it)",
            floor - value,
            100.0 * value / floor
        )
    }
}

pub fn run(args: &Args) -> anyhow::Result<ForwardReport> {
    if !is_root() {
        bail!("forward needs root: it creates network namespaces, XDP programs and AF_XDP sockets");
    }
    if !(args.duration > 0.0 && args.duration <= 600.0) {
        bail!(
            "--duration {}: must be more than 0 and at most 600 seconds",
            args.duration
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (gen_core, fwd_core) = (0, if cores > 1 { 1 } else { 0 });
    let flows = args.flows.clamp(1, 60_000);
    let testbed = Testbed::new(Scale {
        local_pods: 1,
        remote_endpoints: 4096,
        services: flows.min(4096),
        backends_per_service: 4,
        policy_rules: 64,
        flows,
    });
    let load_average_1m = load_average();
    let lab = Lab::build(fwd_core)?;
    lab.delete_on_signal();
    let generator = inside(&lab.gen, || {
        Ok(TrafficPort::bind(ifindex(GEN_IF)?, 0, RING_SIZE)?)
    })?;
    let (sink, sink_program, sink_attachment) = inside(&lab.sink, || {
        let sink = TrafficPort::bind(ifindex(SINK_IF)?, 0, RING_SIZE)?;
        let program = XdpRedirect::load(
            Role::Pod,
            NodeAddrs {
                ipv4: None,
                ipv6: None,
            },
        )?;
        let attachment = program.attach(ifindex(SINK_IF)?)?;
        program.register_socket(0, std::os::fd::AsFd::as_fd(&sink))?;
        Ok((sink, program, attachment))
    })?;
    let mut traffic = Traffic::new(generator, sink, &testbed);

    let window = Duration::from_secs_f64(args.duration);
    let warmup = Duration::from_secs_f64((args.duration / 4.0).min(0.5));
    let full = Phase {
        warmup,
        window,
        rate_pps: None,
        record_latency: false,
    };
    let measurements = if args.encrypt { 7 } else { 4 };
    let bar = progress((warmup + window) * measurements);
    let fwd = Some(fwd_core);

    bar.set_message("(a) bare AF_XDP");
    let forwarder = Forwarder::start(&lab.node, fwd, Handler::Bare)?;
    let bare = measure(&mut traffic, &full, gen_core, &bar)?;
    let bare_worker = forwarder.stop()?;

    bar.set_message("(c) meshpath");
    let forwarder = Forwarder::start(&lab.node, fwd, Handler::meshpath(&testbed))?;
    let mesh = measure(&mut traffic, &full, gen_core, &bar)?;
    bar.set_message("(c) meshpath, half rate, latency");
    let half = Phase {
        rate_pps: Some(mesh.mpps() * 1e6 / 2.0),
        record_latency: true,
        ..full
    };
    let paced = measure(&mut traffic, &half, gen_core, &bar)?;
    let mesh_worker = forwarder.stop()?;

    bar.set_message("(b) kernel");
    let kernel = measure(&mut traffic, &full, gen_core, &bar)?;
    let encrypted = if args.encrypt {
        let cores = (gen_core, fwd);
        let (encrypted, back) =
            measure_encryption(traffic, &testbed, &lab.node, &full, cores, &bar)?;
        traffic = back;
        Some(encrypted)
    } else {
        None
    };
    bar.finish_and_clear();
    drop((sink_attachment, sink_program, traffic, lab));

    let mpps = Rates {
        bare_afxdp: bare.mpps(),
        kernel_vxlan: kernel.mpps(),
        meshpath: mesh.mpps(),
        meshpath_encrypted: encrypted.as_ref().map(|e| e.mpps.meshpath_encrypted_64),
    };
    let svg = chart::svg(
        "meshpath-perf forward: 64-byte UDP, Mpps",
        &[
            ("bare AF_XDP", mpps.bare_afxdp),
            ("kernel + VXLAN", mpps.kernel_vxlan),
            ("meshpath", mpps.meshpath),
        ],
    );
    if let Some(dir) = args.chart.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.chart, svg)
        .with_context(|| format!("writing {}", args.chart.display()))?;
    let h = paced.latency_ns.as_ref();
    let us = |q: f64| h.map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1e3);
    Ok(ForwardReport {
        ratio_vs_bare: mpps.meshpath / mpps.bare_afxdp.max(f64::EPSILON),
        ratio_vs_kernel: mpps.meshpath / mpps.kernel_vxlan.max(f64::EPSILON),
        latency_us: Latency {
            p50: us(0.5),
            p99: us(0.99),
            p999: us(0.999),
        },
        latency_offered_mpps: paced.offered_mpps(),
        offered_mpps: Rates {
            bare_afxdp: bare.offered_mpps(),
            kernel_vxlan: kernel.offered_mpps(),
            meshpath: mesh.offered_mpps(),
            meshpath_encrypted: encrypted.as_ref().map(|e| e.offered_64),
        },
        tunnelled_share: Rates {
            bare_afxdp: bare.tunnelled_share(),
            kernel_vxlan: kernel.tunnelled_share(),
            meshpath: mesh.tunnelled_share(),
            meshpath_encrypted: None,
        },
        encryption_cost_ratio: encrypted
            .as_ref()
            .map(|e| e.mpps.meshpath_encrypted_1400 / e.mpps.meshpath_1400.max(f64::EPSILON)),
        encrypted_share: encrypted.as_ref().map(|e| e.encrypted_share),
        gbps: encrypted.as_ref().map(|e| BySize::gbps(&e.mpps)),
        mpps_by_size: encrypted.map(|e| e.mpps),
        forwarder: Forwarders {
            bare_afxdp: (&bare_worker).into(),
            meshpath: (&mesh_worker).into(),
        },
        load_average_1m,
        mpps,
        cores: cores_note(cores, gen_core, fwd_core),
        chart: args.chart.display().to_string(),
        duration_s: args.duration,
        flows,
    })
}

/// What the encrypted comparison measured.
struct Encrypted {
    mpps: BySize,
    offered_64: f64,
    /// Of what reached the sink in the encrypted runs, the share that was WireGuard data.
    encrypted_share: f64,
}

/// meshpath at 1400-byte frames plain, then under strict WireGuard at 64 and 1400 bytes; the plain
/// 64-byte figure is the run's (c), taken again here so both sizes share the conditions.
fn measure_encryption(
    traffic: Traffic,
    testbed: &Testbed,
    node: &str,
    phase: &Phase,
    (gen_core, fwd_core): (usize, Option<usize>),
    bar: &ProgressBar,
) -> anyhow::Result<(Encrypted, Traffic)> {
    let run = |traffic: &mut Traffic, handler: Handler, message: &'static str| {
        bar.set_message(message);
        let forwarder = Forwarder::start(node, fwd_core, handler)?;
        let measured = measure(traffic, phase, gen_core, bar);
        forwarder.stop()?;
        measured
    };
    let mut small = traffic.with_frames(testbed, SMALL_FRAME - FCS);
    let plain_64 = run(
        &mut small,
        Handler::meshpath(testbed),
        "(c) meshpath, 64 bytes",
    )?;
    let enc_64 = run(
        &mut small,
        Handler::meshpath_encrypted(testbed)?,
        "(e) meshpath + WireGuard, 64 bytes",
    )?;
    let mut large = small.with_frames(testbed, LARGE_FRAME - FCS);
    let plain_1400 = run(
        &mut large,
        Handler::meshpath(testbed),
        "(c) meshpath, 1400 bytes",
    )?;
    let enc_1400 = run(
        &mut large,
        Handler::meshpath_encrypted(testbed)?,
        "(e) meshpath + WireGuard, 1400 bytes",
    )?;
    let received = enc_64.received + enc_1400.received;
    let encrypted = Encrypted {
        mpps: BySize {
            meshpath_64: plain_64.mpps(),
            meshpath_encrypted_64: enc_64.mpps(),
            meshpath_1400: plain_1400.mpps(),
            meshpath_encrypted_1400: enc_1400.mpps(),
        },
        offered_64: enc_64.offered_mpps(),
        encrypted_share: (enc_64.encrypted + enc_1400.encrypted) as f64 / received.max(1) as f64,
    };
    Ok((encrypted, large.with_frames(testbed, SMALL_FRAME - FCS)))
}

fn cores_note(cores: usize, gen_core: usize, fwd_core: usize) -> String {
    format!(
        "{cores} cores: generator and sink in one thread pinned to core {gen_core}; forwarder on core {fwd_core} \
         (AF_XDP worker pinned there, kernel forwarding steered there by RPS); the veth transfers and XDP \
         redirects run in softirq on the sending side's core"
    )
}

/// Runs `phase` on a thread pinned to `core`, ticking `bar` meanwhile.
fn measure(
    traffic: &mut Traffic,
    phase: &Phase,
    core: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let position = bar.position();
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                eprintln!("generator: could not pin to core {core}; running unpinned");
            }
            traffic.run(phase)
        });
        while !worker.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
            bar.set_position(position + started.elapsed().as_millis() as u64);
        }
        bar.set_position(position + (phase.warmup + phase.window).as_millis() as u64);
        worker
            .join()
            .unwrap_or_else(|_| bail!("the generator thread panicked"))
    })
}

fn progress(total: Duration) -> ProgressBar {
    let bar = ProgressBar::new(total.as_millis() as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {percent:>3}% {msg}") {
        bar.set_style(style);
    }
    bar
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_says_met_or_by_how_much() {
        assert_eq!(distance(3.3, 3.0), "met, 110 % of it");
        assert_eq!(distance(0.45, 0.9), "missed by 0.45 (50 % of it)");
    }

    /// A 0.3 s run of each way: every one moved frames and the JSON has every key.
    #[test]
    fn smoke_every_way_forwards_frames() {
        if !meshpath_testkit::needs_root("smoke_every_way_forwards_frames") {
            return;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let args = Args {
            duration: 0.3,
            flows: 64,
            chart: dir.path().join("forward.svg"),
            encrypt: true,
        };
        let report = run(&args).expect("the benchmark runs");
        let json = serde_json::to_value(&report).expect("serializes");
        for way in ["bare_afxdp", "kernel_vxlan", "meshpath"] {
            let mpps = json["mpps"][way].as_f64().expect("a rate per way");
            assert!(mpps > 0.0, "{way} forwarded nothing: {report:?}");
        }
        let tunnelled = &json["tunnelled_share"];
        assert_eq!(
            tunnelled["bare_afxdp"], 0.0,
            "the cross-connect leaves frames as they are"
        );
        assert_eq!(
            tunnelled["kernel_vxlan"], 1.0,
            "the kernel encapsulates every frame"
        );
        assert_eq!(
            tunnelled["meshpath"], 1.0,
            "meshpath encapsulates every frame"
        );
        assert!(report.forwarder.meshpath.tx > 0 && report.forwarder.bare_afxdp.tx > 0);
        for key in ["ratio_vs_bare", "ratio_vs_kernel"] {
            assert!(
                json[key].as_f64().is_some_and(f64::is_finite),
                "{key}: {json}"
            );
        }
        for q in ["p50", "p99", "p999"] {
            assert!(
                json["latency_us"][q].as_f64().is_some_and(|v| v > 0.0),
                "latency {q}: {json}"
            );
        }
        assert!(
            json["mpps"]["meshpath_encrypted"].as_f64() > Some(0.0),
            "meshpath encrypted forwarded nothing: {json}"
        );
        for key in [
            "meshpath_64",
            "meshpath_encrypted_64",
            "meshpath_1400",
            "meshpath_encrypted_1400",
        ] {
            assert!(json["gbps"][key].as_f64() > Some(0.0), "gbps {key}: {json}");
        }
        assert!(
            json["encryption_cost_ratio"]
                .as_f64()
                .is_some_and(|r| r.is_finite() && r > 0.0),
            "{json}"
        );
        assert_eq!(
            json["encrypted_share"], 1.0,
            "under strict WireGuard only WireGuard data leaves: {json}"
        );
        let svg = std::fs::read_to_string(&args.chart).expect("the chart was written");
        assert!(svg.contains("meshpath"));
        let leftovers = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip");
        let pid = format!("mpb-{}-", std::process::id());
        assert!(
            !String::from_utf8_lossy(&leftovers.stdout).contains(&pid),
            "namespaces left behind"
        );
    }
}
