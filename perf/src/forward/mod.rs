//! `meshpath-perf forward`: real 64-byte UDP frames through a node, forwarded three ways in one run
//! — (a) a bare AF_XDP MAC swap, the machine's ceiling; (b) the kernel's IP forwarding into a VXLAN
//! device; (c) meshpath's pipeline (policy, service load balancing, VXLAN encapsulation) on an
//! AF_XDP worker over production-scale tables, its flows established, and again with a steady rate of
//! new flows (Maglev, policy and conntrack inserts on each first packet).
//!
//! Every way is offered the same load (the generator's own ceiling, measured first) in several
//! interleaved runs, reported as median and spread; beside that saturation figure, an RFC 2544 search
//! finds each way's highest rate with loss ≤ 0.1 %. Losses are counted where they happen (the
//! generator's schedule, the veths, the worker's rings, the worker, frames the sink refused), the
//! sink counting a frame only if it left the node as the way must make it ([`check`]): a kernel
//! fallback cannot count as meshpath. Latency is taken at half meshpath's rate from each frame's
//! scheduled send time. XDP must run in native mode. With `--encrypt`, (c) again at 1400-byte
//! frames, and both sizes under strict WireGuard ([`sessions`]).
//!
//! Everything runs in `mpb-` namespaces this run creates and deletes (see [`lab`]); the generator and
//! sink share one core, the forwarder has the other.

mod chart;
mod check;
mod encrypt;
mod figures;
mod forwarder;
mod lab;
mod sessions;
mod traffic;
mod veth;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use meshpath_dataplane::afxdp::generator::TrafficPort;
use meshpath_dataplane::afxdp::WorkerStats;
use meshpath_dataplane::testbed::{Scale, Testbed};
use meshpath_xdp_redirect::netns::ifindex;
use meshpath_xdp_redirect::{NodeAddrs, Role, XdpRedirect};

use check::Way;
use forwarder::{Forwarder, Handler, CONNTRACK_CAPACITY};
use lab::{inside, Lab, GEN_IF, SINK_IF};
use traffic::{Measured, Phase, Templates, Traffic};

pub use figures::ForwardReport;
use figures::{BySize, Latency, Losses, Spread, TablesReport};

const TARGET_VS_BARE: f64 = 0.9;
const TARGET_VS_KERNEL: f64 = 3.0;
/// RFC 2544's loss allowance for the zero-loss search, as a share of the frames sent.
const LOSS_ALLOWED: f64 = 0.001;
const RING_SIZE: u32 = 2048;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TableScale {
    /// 100k ipcache prefixes, 10k services × 10 backends, 1k rules (as `pipeline`).
    Production,
    /// 4096 endpoints, 1024 services × 4, 64 rules: cache-resident, for smoke tests.
    Small,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds of traffic per saturation run (each after a short warm-up).
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// Interleaved runs of every way at saturation: the figures are their median and spread.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Established flows (UDP source ports of one pod, to the services round-robin) the generator
    /// cycles over; at most 60 000.
    #[arg(long, default_value_t = 60_000)]
    pub flows: usize,
    #[arg(long, value_enum, default_value_t = TableScale::Production)]
    pub tables: TableScale,
    /// New flows per second in meshpath's new-flow runs (each a flow's first and only frame).
    #[arg(long, default_value_t = 20_000.0)]
    pub new_flows_per_s: f64,
    /// Seconds per trial of the zero-loss search.
    #[arg(long, default_value_t = 1.0)]
    pub trial: f64,
    /// Halvings of the zero-loss search after its first trial at the offered load.
    #[arg(long, default_value_t = 6)]
    pub search_steps: usize,
    /// Where to write the SVG chart of the rates.
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

/// The ways, by their JSON key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WayKind {
    MacSwap,
    Kernel,
    Meshpath,
    MeshpathNewFlows,
}

impl WayKind {
    const ALL: [WayKind; 4] = [
        WayKind::MacSwap,
        WayKind::Meshpath,
        WayKind::MeshpathNewFlows,
        WayKind::Kernel,
    ];

    fn key(self) -> &'static str {
        match self {
            WayKind::MacSwap => "bare_afxdp_mac_swap",
            WayKind::Kernel => "kernel_vxlan",
            WayKind::Meshpath => "meshpath_established",
            WayKind::MeshpathNewFlows => "meshpath_new_flows",
        }
    }

    fn label(key: &str) -> &'static str {
        match key {
            "bare_afxdp_mac_swap" => "(a) bare AF_XDP, MAC swap",
            "kernel_vxlan" => "(b) kernel forwarding + VXLAN",
            "meshpath_established" => "(c) meshpath, established flows",
            "meshpath_new_flows" => "(c) meshpath, with new flows",
            _ => "?",
        }
    }

    fn check(self, testbed: &Testbed) -> Way {
        match self {
            WayKind::MacSwap => Way::MacSwap,
            WayKind::Kernel => Way::Kernel,
            WayKind::Meshpath | WayKind::MeshpathNewFlows => Way::meshpath(testbed),
        }
    }

    fn handler(self, testbed: &Testbed) -> Option<Handler> {
        match self {
            WayKind::MacSwap => Some(Handler::MacSwap),
            WayKind::Kernel => None,
            WayKind::Meshpath | WayKind::MeshpathNewFlows => Some(Handler::meshpath(testbed)),
        }
    }
}

/// One run's setting: the lab, its traffic ports, the testbed and where things run.
struct Bench {
    lab: Lab,
    traffic: Traffic,
    testbed: Testbed,
    gen_core: usize,
    fwd_core: Option<usize>,
    bar: ProgressBar,
}

/// What one measurement of one way gave.
struct Outcome {
    measured: Measured,
    veth: u64,
    worker: Option<WorkerStats>,
}

impl Bench {
    /// Measures `way` once over `phase`, its forwarder (if any) started for this measurement alone.
    fn measure(
        &mut self,
        way: WayKind,
        phase: &Phase,
        templates: &Templates,
    ) -> anyhow::Result<Outcome> {
        self.bar.set_message(WayKind::label(way.key()));
        let veth_before = veth::dropped(&self.lab)?;
        let forwarder = way
            .handler(&self.testbed)
            .map(|h| Forwarder::start(&self.lab.node, self.fwd_core, h))
            .transpose()?;
        let measured = run_phase(
            &mut self.traffic,
            phase,
            templates,
            self.gen_core,
            &self.bar,
        )?;
        let worker = forwarder.map(Forwarder::stop).transpose()?;
        let veth = veth::dropped(&self.lab)?.saturating_sub(veth_before);
        Ok(Outcome {
            measured,
            veth,
            worker,
        })
    }

    /// RFC 2544: the highest rate up to `ceiling` (pps) at which `way` loses at most 0.1 %.
    fn zero_loss(
        &mut self,
        way: WayKind,
        ceiling: f64,
        args: &Args,
        templates: &Templates,
    ) -> anyhow::Result<f64> {
        let trial = |rate: f64| Phase {
            warmup: Duration::from_secs_f64((args.trial / 4.0).min(0.25)),
            window: Duration::from_secs_f64(args.trial),
            rate_pps: Some(rate),
            new_flows_pps: 0.0,
            record_latency: false,
        };
        let passes = |bench: &mut Bench, rate: f64| -> anyhow::Result<bool> {
            let m = bench.measure(way, &trial(rate), templates)?.measured;
            // The rate was offered (the generator kept its schedule) and at most 0.1 % was lost.
            let due = (m.sent + m.generator_behind).max(1) as f64;
            let kept_schedule = m.generator_behind as f64 / due <= LOSS_ALLOWED;
            Ok(kept_schedule && m.loss_ratio() <= LOSS_ALLOWED)
        };
        if passes(self, ceiling)? {
            return Ok(ceiling);
        }
        let (mut low, mut high) = (0.0, ceiling);
        for _ in 0..args.search_steps {
            let mid = f64::midpoint(low, high);
            if passes(self, mid)? {
                low = mid;
            } else {
                high = mid;
            }
        }
        Ok(low)
    }
}

pub fn run(args: &Args) -> anyhow::Result<ForwardReport> {
    check_args(args)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (gen_core, fwd_core) = (0, if cores > 1 { 1 } else { 0 });
    let flows = args.flows.clamp(1, 60_000);
    let scale = match args.tables {
        TableScale::Production => Scale {
            local_pods: 1,
            flows,
            ..Scale::BENCHMARK
        },
        TableScale::Small => Scale {
            local_pods: 1,
            remote_endpoints: 4096,
            services: flows.min(1024),
            backends_per_service: 4,
            policy_rules: 64,
            flows,
        },
    };
    eprintln!("building tables at {scale:?} …");
    let testbed = Testbed::new(scale);
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
        forwarder::require_native("the sink's eth0", attachment.mode())?;
        program.register_socket(0, std::os::fd::AsFd::as_fd(&sink))?;
        Ok((sink, program, attachment))
    })?;
    let mut bench = Bench {
        lab,
        traffic: Traffic::new(generator, sink),
        testbed,
        gen_core,
        fwd_core: Some(fwd_core),
        bar: ProgressBar::hidden(),
    };
    let report = measure_all(&mut bench, args, cores, scale);
    bench.bar.finish_and_clear();
    drop((sink_attachment, sink_program, bench));
    report
}

fn check_args(args: &Args) -> anyhow::Result<()> {
    if !is_root() {
        bail!("forward needs root: it creates network namespaces, XDP programs and AF_XDP sockets");
    }
    for (name, value) in [("--duration", args.duration), ("--trial", args.trial)] {
        if !(value > 0.0 && value <= 600.0) {
            bail!("{name} {value}: must be more than 0 and at most 600 seconds");
        }
    }
    if args.runs == 0 || args.runs > 50 {
        bail!("--runs {}: must be 1 to 50", args.runs);
    }
    if !(args.new_flows_per_s >= 0.0 && args.new_flows_per_s <= 1e6) {
        bail!(
            "--new-flows-per-s {}: must be 0 to 1 000 000",
            args.new_flows_per_s
        );
    }
    Ok(())
}

fn measure_all(
    bench: &mut Bench,
    args: &Args,
    cores: usize,
    scale: Scale,
) -> anyhow::Result<ForwardReport> {
    let window = Duration::from_secs_f64(args.duration);
    let warmup = Duration::from_secs_f64((args.duration / 4.0).min(0.5));
    let new_flows = (args.new_flows_per_s * (warmup + window).as_secs_f64()).ceil() as usize + 1;
    let templates: Vec<(WayKind, Templates)> = WayKind::ALL
        .iter()
        .map(|&w| {
            let fresh = if w == WayKind::MeshpathNewFlows {
                new_flows
            } else {
                0
            };
            (
                w,
                Templates::new(
                    &bench.testbed,
                    &w.check(&bench.testbed),
                    fresh,
                    SMALL_FRAME - FCS,
                ),
            )
        })
        .collect();
    let of = |w: WayKind| {
        &templates
            .iter()
            .find(|(k, _)| *k == w)
            .unwrap_or_else(|| unreachable!())
            .1
    };
    let steps = 1
        + args.runs * WayKind::ALL.len()
        + 3 * (args.search_steps + 1)
        + 1
        + if args.encrypt { 4 } else { 0 };
    bench.bar = progress(steps as u64);

    // The generator's ceiling: unpaced, through the cheapest way.
    let calibrate = Phase {
        warmup,
        window: window.min(Duration::from_secs(1)),
        rate_pps: None,
        new_flows_pps: 0.0,
        record_latency: false,
    };
    let ceiling = bench
        .measure(WayKind::MacSwap, &calibrate, of(WayKind::MacSwap))?
        .measured
        .offered_mpps()
        * 1e6;
    anyhow::ensure!(ceiling > 0.0, "the generator sent nothing");
    bench.bar.inc(1);

    let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut sent: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut losses: BTreeMap<&str, Losses> = BTreeMap::new();
    let mut tunnelled: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for run in 0..args.runs {
        for i in 0..WayKind::ALL.len() {
            let way = WayKind::ALL[(i + run) % WayKind::ALL.len()];
            let phase = Phase {
                warmup,
                window,
                rate_pps: Some(ceiling),
                new_flows_pps: if way == WayKind::MeshpathNewFlows {
                    args.new_flows_per_s
                } else {
                    0.0
                },
                record_latency: false,
            };
            let outcome = bench.measure(way, &phase, of(way))?;
            let m = &outcome.measured;
            rates.entry(way.key()).or_default().push(m.mpps());
            sent.entry(way.key()).or_default().push(m.offered_mpps());
            let t = tunnelled.entry(way.key()).or_default();
            t.0 += m.tunnelled;
            t.1 += m.received;
            losses
                .entry(way.key())
                .or_default()
                .add(m, outcome.veth, outcome.worker.as_ref());
            bench.bar.inc(1);
        }
    }
    let mut zero_loss = BTreeMap::new();
    for way in [WayKind::MacSwap, WayKind::Meshpath, WayKind::Kernel] {
        let rate = bench.zero_loss(way, ceiling, args, of(way))?;
        zero_loss.insert(way.key().to_owned(), rate / 1e6);
        bench.bar.inc(args.search_steps as u64 + 1);
    }
    let mpps: BTreeMap<String, Spread> = rates
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Spread::of(v)))
        .collect();
    let median = |k: WayKind| mpps.get(k.key()).map_or(f64::NAN, |s| s.median);
    let half = median(WayKind::Meshpath) * 1e6 / 2.0;
    let paced = Phase {
        warmup,
        window,
        rate_pps: Some(half.max(1.0)),
        new_flows_pps: 0.0,
        record_latency: true,
    };
    let latency = bench
        .measure(WayKind::Meshpath, &paced, of(WayKind::Meshpath))?
        .measured;
    bench.bar.inc(1);
    let encrypted = match args.encrypt {
        true => Some(encrypt::measure_encryption(
            bench,
            &unpaced(warmup, window),
        )?),
        false => None,
    };
    let svg = chart::svg(
        "meshpath-perf forward: 64-byte UDP, Mpps (median)",
        &[
            ("bare AF_XDP", median(WayKind::MacSwap)),
            ("kernel + VXLAN", median(WayKind::Kernel)),
            ("meshpath", median(WayKind::Meshpath)),
            ("meshpath, new flows", median(WayKind::MeshpathNewFlows)),
        ],
    );
    if let Some(dir) = args.chart.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.chart, svg)
        .with_context(|| format!("writing {}", args.chart.display()))?;
    let zl = |k: WayKind| zero_loss.get(k.key()).copied().unwrap_or(f64::NAN);
    let ratio = |a: f64, b: f64| a / b.max(f64::EPSILON);
    Ok(ForwardReport {
        ratio_vs_bare: ratio(median(WayKind::Meshpath), median(WayKind::MacSwap)),
        ratio_vs_kernel: ratio(median(WayKind::Meshpath), median(WayKind::Kernel)),
        zero_loss_ratio_vs_bare: ratio(zl(WayKind::Meshpath), zl(WayKind::MacSwap)),
        zero_loss_ratio_vs_kernel: ratio(zl(WayKind::Meshpath), zl(WayKind::Kernel)),
        mpps,
        offered_mpps: ceiling / 1e6,
        sent_mpps: sent
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Spread::of(v).median))
            .collect(),
        zero_loss_mpps: zero_loss,
        loss_allowed: LOSS_ALLOWED,
        losses: losses.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        latency_us: latency.latency_ns.as_ref().map(|h| {
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
            Latency {
                p50: us(0.5),
                p99: us(0.99),
                p999: us(0.999),
                samples: h.len(),
            }
        }),
        latency_offered_mpps: latency.offered_mpps(),
        latency_generator_behind: latency.generator_behind,
        tunnelled_share: tunnelled
            .into_iter()
            .map(|(k, (t, r))| (k.to_owned(), t as f64 / r.max(1) as f64))
            .collect(),
        xdp_mode: "native".to_owned(),
        tables: TablesReport {
            scale: format!("{:?}", args.tables).to_lowercase(),
            ipcache_prefixes: bench.testbed.tables.ipcache.len(),
            services: bench.testbed.tables.services.len(),
            backends_per_service: scale.backends_per_service,
            policy_rules: scale.policy_rules,
            established_flows: scale.flows,
            conntrack_entries: 2 * scale.flows,
            conntrack_capacity: CONNTRACK_CAPACITY,
        },
        new_flows_per_s: args.new_flows_per_s,
        encryption_cost_ratio: encrypted
            .as_ref()
            .map(|e| e.mpps.meshpath_encrypted_1400 / e.mpps.meshpath_1400.max(f64::EPSILON)),
        encrypted_share: encrypted.as_ref().map(|e| e.encrypted_share),
        gbps: encrypted.as_ref().map(|e| BySize::gbps(&e.mpps)),
        mpps_by_size: encrypted.map(|e| e.mpps),
        cores: cores_note(cores, bench.gen_core, bench.fwd_core.unwrap_or(0)),
        chart: args.chart.display().to_string(),
        duration_s: args.duration,
        runs: args.runs,
        trial_s: args.trial,
    })
}

/// As fast as the generator sends.
fn unpaced(warmup: Duration, window: Duration) -> Phase {
    Phase {
        warmup,
        window,
        rate_pps: None,
        new_flows_pps: 0.0,
        record_latency: false,
    }
}

fn cores_note(cores: usize, gen_core: usize, fwd_core: usize) -> String {
    format!(
        "{cores} cores: generator and sink in one thread pinned to core {gen_core}; forwarder on core {fwd_core} \
         (AF_XDP worker pinned there, kernel forwarding steered there by RPS); the veth transfers and XDP \
         redirects run in softirq on the sending side's core"
    )
}

/// Runs `phase` on a thread pinned to `core`.
fn run_phase(
    traffic: &mut Traffic,
    phase: &Phase,
    templates: &Templates,
    core: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Measured> {
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                eprintln!("generator: could not pin to core {core}; running unpinned");
            }
            traffic.run(phase, templates)
        });
        while !worker.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
            bar.tick();
        }
        worker
            .join()
            .unwrap_or_else(|_| bail!("the generator thread panicked"))
    })
}

fn progress(steps: u64) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short run of each way with small tables: every way moved valid frames, none was refused,
    /// the JSON has every key, and no namespace is left.
    #[test]
    fn smoke_every_way_forwards_frames() {
        if !meshpath_testkit::needs_root("smoke_every_way_forwards_frames") {
            return;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let args = Args {
            duration: 0.3,
            runs: 1,
            flows: 64,
            tables: TableScale::Small,
            new_flows_per_s: 2_000.0,
            trial: 0.2,
            search_steps: 1,
            chart: dir.path().join("forward.svg"),
            encrypt: true,
        };
        let report = run(&args).expect("the benchmark runs");
        let json = serde_json::to_value(&report).expect("serializes");
        for way in [
            "bare_afxdp_mac_swap",
            "kernel_vxlan",
            "meshpath_established",
            "meshpath_new_flows",
        ] {
            let mpps = json["mpps"][way]["median"]
                .as_f64()
                .expect("a rate per way");
            assert!(mpps > 0.0, "{way} forwarded nothing: {report:?}");
            assert_eq!(
                report.losses[way].sink_refused.total(),
                0,
                "{way}: frames reached the sink not as the way makes them: {report:?}"
            );
            assert!(json["zero_loss_mpps"][way].is_number() || way == "meshpath_new_flows");
        }
        let tunnelled = &json["tunnelled_share"];
        assert_eq!(tunnelled["bare_afxdp_mac_swap"], 0.0);
        assert_eq!(tunnelled["kernel_vxlan"], 1.0);
        assert_eq!(tunnelled["meshpath_established"], 1.0);
        assert_eq!(json["xdp_mode"], "native");
        for key in ["ratio_vs_bare", "ratio_vs_kernel", "offered_mpps"] {
            assert!(
                json[key].as_f64().is_some_and(f64::is_finite),
                "{key}: {json}"
            );
        }
        // Under load a short run may time no frame: then null, never 0.
        match &report.latency_us {
            Some(l) => assert!(l.samples > 0 && l.p50 > 0.0 && l.p99 >= l.p50, "{l:?}"),
            None => assert!(json["latency_us"].is_null()),
        }
        assert!(
            json["mpps_by_size"]["meshpath_encrypted_64"].as_f64() > Some(0.0),
            "meshpath encrypted forwarded nothing: {json}"
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
