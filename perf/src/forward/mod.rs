//! `meshpath-perf forward`: real 64-byte UDP frames through a node, forwarded four ways in one run
//! — (a) a bare AF_XDP MAC swap, the machine's ceiling; (b) the kernel's IP forwarding into a VXLAN
//! device; (c) meshpath's pipeline (policy, service load balancing, VXLAN encapsulation) on an
//! AF_XDP worker over production-scale tables, its flows established, and again with a steady rate of
//! new flows (Maglev, policy and conntrack inserts on each first packet); (d) the kernel-native
//! reference: an XDP program applying meshpath's per-flow decision (the same rewrite and VXLAN
//! encapsulation) in the driver ([`xdp_reference`]).
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
mod napi;
mod sessions;
mod traffic;
mod veth;
mod xdp_reference;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use meshpath_dataplane::afxdp::generator::TrafficPort;
use meshpath_dataplane::testbed::{Scale, Testbed};
use meshpath_xdp_redirect::netns::ifindex;
use meshpath_xdp_redirect::{NodeAddrs, Role, XdpRedirect};

use check::Way;
use forwarder::{Forwarder, Handler, CONNTRACK_CAPACITY};
use lab::{Lab, GEN_IF, POD_IF, SINK_IF, UPLINK_IF};
use traffic::{Measured, Phase, Templates, Traffic};

use figures::{BySize, Losses, NodeDrops, TablesReport};
pub use figures::{ForwardReport, Latency, Spread};
pub use lab::inside;
use xdp_reference::XdpReference;

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
    /// Where way (d)'s XDP program runs: in the pod veth's NAPI thread pinned to the forwarder's
    /// core, or in softirq on the generator's core (the veth's default).
    #[arg(long, value_enum, default_value_t = ReferenceNapi::Thread)]
    pub reference_napi: ReferenceNapi,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReferenceNapi {
    /// Threaded NAPI, its thread pinned to the forwarder's core.
    Thread,
    /// Softirq on the sending side's core, which the generator has.
    Softirq,
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
    XdpVxlan,
}

impl WayKind {
    const ALL: [WayKind; 5] = [
        WayKind::MacSwap,
        WayKind::Meshpath,
        WayKind::MeshpathNewFlows,
        WayKind::XdpVxlan,
        WayKind::Kernel,
    ];
    /// The ways the zero-loss search runs for.
    const SEARCHED: [WayKind; 4] = [
        WayKind::MacSwap,
        WayKind::Meshpath,
        WayKind::XdpVxlan,
        WayKind::Kernel,
    ];

    fn key(self) -> &'static str {
        match self {
            WayKind::MacSwap => "bare_afxdp_mac_swap",
            WayKind::Kernel => "kernel_vxlan",
            WayKind::Meshpath => "meshpath_established",
            WayKind::MeshpathNewFlows => "meshpath_new_flows",
            WayKind::XdpVxlan => "xdp_vxlan",
        }
    }

    fn label(key: &str) -> &'static str {
        match key {
            "bare_afxdp_mac_swap" => "(a) bare AF_XDP, MAC swap",
            "kernel_vxlan" => "(b) kernel forwarding + VXLAN",
            "meshpath_established" => "(c) meshpath, established flows",
            "meshpath_new_flows" => "(c) meshpath, with new flows",
            "xdp_vxlan" => "(d) kernel XDP, same rewrite + VXLAN",
            _ => "?",
        }
    }

    fn check(self, testbed: &Testbed) -> Way {
        match self {
            WayKind::MacSwap => Way::MacSwap,
            WayKind::Kernel => Way::Kernel,
            WayKind::Meshpath | WayKind::MeshpathNewFlows | WayKind::XdpVxlan => {
                Way::meshpath(testbed)
            }
        }
    }

    fn handler(self, testbed: &Testbed) -> Option<Handler> {
        match self {
            WayKind::MacSwap => Some(Handler::MacSwap),
            WayKind::Kernel | WayKind::XdpVxlan => None,
            WayKind::Meshpath | WayKind::MeshpathNewFlows => Some(Handler::meshpath(testbed)),
        }
    }
}

/// One run's setting: the lab, its traffic ports, the testbed and where things run.
struct Bench {
    lab: Lab,
    traffic: Traffic,
    testbed: Testbed,
    /// Way (d), loaded once with every flow's decision; attached for its measurements only.
    reference: XdpReference,
    gen_core: usize,
    fwd_core: Option<usize>,
    reference_napi: ReferenceNapi,
    bar: ProgressBar,
}

/// What one measurement of one way gave.
struct Outcome {
    measured: Measured,
    veth: u64,
    node: NodeDrops,
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
        let node = if way == WayKind::XdpVxlan {
            self.measure_xdp(phase, templates)?
        } else {
            let forwarder = way
                .handler(&self.testbed)
                .map(|h| Forwarder::start(&self.lab.node, self.fwd_core, h))
                .transpose()?;
            let measured = self.run(phase, templates)?;
            let node = match forwarder {
                Some(f) => NodeDrops::of_worker(&f.stop()?),
                None => NodeDrops::default(),
            };
            (measured, node)
        };
        let veth = veth::dropped(&self.lab)?.saturating_sub(veth_before);
        Ok(Outcome {
            measured: node.0,
            veth,
            node: node.1,
        })
    }

    fn run(&mut self, phase: &Phase, templates: &Templates) -> anyhow::Result<Measured> {
        run_phase(
            &mut self.traffic,
            phase,
            templates,
            self.gen_core,
            &self.bar,
        )
    }

    /// Way (d): the reference attached to the node's pod veth for this measurement alone; what its
    /// program dropped is the forwarder's count.
    fn measure_xdp(
        &mut self,
        phase: &Phase,
        templates: &Templates,
    ) -> anyhow::Result<(Measured, NodeDrops)> {
        let before = self.reference.counts()?;
        let reference = &self.reference;
        let attached = inside(&self.lab.node, || {
            reference.attach(ifindex(POD_IF)?, ifindex(UPLINK_IF)?)
        })?;
        let napi = match (self.reference_napi, self.fwd_core) {
            (ReferenceNapi::Thread, Some(core)) => {
                Some(napi::ThreadedNapi::on(&self.lab.node, POD_IF, core))
            }
            _ => None,
        };
        let (measured, napi) = match napi.transpose() {
            Err(e) => (Err(e), None),
            Ok(napi) => (self.run(phase, templates), napi),
        };
        let napi_off = napi.map(napi::ThreadedNapi::off);
        inside(&self.lab.node, || attached.detach())?;
        napi_off.transpose()?;
        let counts = self.reference.counts()?.since(before);
        let node = NodeDrops {
            rings: None,
            forwarder: Some(counts.dropped),
        };
        Ok((measured?, node))
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
    let reference = XdpReference::load(&xdp_reference::decisions(&testbed)?)?;
    let lab = Lab::build(fwd_core)?;
    lab.delete_on_signal();
    let ends = Ends::bind(&lab)?;
    let mut bench = Bench {
        lab,
        traffic: Traffic::new(ends.generator, ends.sink),
        testbed,
        reference,
        gen_core,
        fwd_core: Some(fwd_core),
        reference_napi: args.reference_napi,
        bar: ProgressBar::hidden(),
    };
    let report = measure_all(&mut bench, args, cores, scale);
    bench.bar.finish_and_clear();
    drop((ends.sink_attachment, ends.sink_program, bench));
    report
}

/// The generator's and the sink's sockets, and the sink's XDP program that feeds its socket.
struct Ends {
    generator: TrafficPort,
    sink: TrafficPort,
    sink_program: XdpRedirect,
    sink_attachment: meshpath_xdp_redirect::Attachment,
}

impl Ends {
    fn bind(lab: &Lab) -> anyhow::Result<Ends> {
        let generator = inside(&lab.gen, || {
            Ok(TrafficPort::bind(ifindex(GEN_IF)?, 0, RING_SIZE)?)
        })?;
        inside(&lab.sink, || {
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
            Ok(Ends {
                generator,
                sink,
                sink_program: program,
                sink_attachment: attachment,
            })
        })
    }
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
        + WayKind::SEARCHED.len() * (args.search_steps + 1)
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
                .add(m, outcome.veth, outcome.node);
            bench.bar.inc(1);
        }
    }
    let mut zero_loss = BTreeMap::new();
    for way in WayKind::SEARCHED {
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
            ("kernel XDP + VXLAN", median(WayKind::XdpVxlan)),
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
        ratio_vs_xdp: Some(ratio(median(WayKind::Meshpath), median(WayKind::XdpVxlan))),
        zero_loss_ratio_vs_xdp: Some(ratio(zl(WayKind::Meshpath), zl(WayKind::XdpVxlan))),
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
        cores: cores_note(
            cores,
            bench.gen_core,
            bench.fwd_core.unwrap_or(0),
            args.reference_napi,
        ),
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

fn cores_note(
    cores: usize,
    gen_core: usize,
    fwd_core: usize,
    reference_napi: ReferenceNapi,
) -> String {
    let reference = match reference_napi {
        ReferenceNapi::Thread => {
            format!("(d)'s XDP program in the pod veth's NAPI thread pinned to core {fwd_core}")
        }
        ReferenceNapi::Softirq => {
            format!("(d)'s XDP program in softirq on core {gen_core} (the sender's)")
        }
    };
    format!(
        "{cores} cores: generator and sink in one thread pinned to core {gen_core}; forwarder on core {fwd_core} \
         (AF_XDP worker pinned there, kernel forwarding steered there by RPS, {reference}); the other veth \
         transfers and XDP redirects run in softirq on the sending side's core"
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
    use check::{Seen, Stamp, PAYLOAD};
    use meshpath_dataplane::frame::HEADROOM;
    use meshpath_dataplane::pipeline;
    use meshpath_dataplane::{Frame, Verdict};
    use std::time::Instant;

    /// Way (d) on the benchmark's veths: flow 1's request from the generator leaves the node's
    /// uplink byte for byte as meshpath's pipeline makes it from the same request.
    #[test]
    fn the_xdp_reference_puts_meshpaths_bytes_on_the_wire() {
        if !meshpath_testkit::needs_root("the_xdp_reference_puts_meshpaths_bytes_on_the_wire") {
            return;
        }
        let testbed = Testbed::new(Scale {
            local_pods: 1,
            ..Scale::TINY
        });
        let reference = XdpReference::load(&xdp_reference::decisions(&testbed).expect("decisions"))
            .expect("the reference loads");
        let lab = Lab::build(0).expect("the lab");
        let mut ends = Ends::bind(&lab).expect("the generator and the sink");
        let attached = inside(&lab.node, || {
            reference.attach(ifindex(POD_IF)?, ifindex(UPLINK_IF)?)
        })
        .expect("attached in native mode");
        let mut request = [0u8; 60];
        testbed.request(&testbed.flows[1], &mut request);
        let stamp = Stamp {
            seq: 7,
            scheduled_ns: 1,
            template: 1,
        };
        assert!(stamp.write(&mut request[PAYLOAD..]));
        let want = through_meshpath(&testbed, &request);

        let sent = ends.generator.send(1, |buf| {
            buf[..request.len()].copy_from_slice(&request);
            request.len()
        });
        assert_eq!(sent, 1);
        let expected: Vec<_> = testbed
            .flows
            .iter()
            .map(|f| check::Way::meshpath(&testbed).expect(&testbed, f))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = None;
        while got.is_none() && Instant::now() < deadline {
            ends.sink.receive(|frame| {
                if check::check(frame, &expected) == Seen::Valid(stamp) {
                    got = Some(frame.to_vec());
                }
            });
            std::thread::sleep(Duration::from_millis(1));
        }
        inside(&lab.node, || attached.detach()).expect("detached");
        let got = got.expect("the frame reached the sink as meshpath makes it");
        assert_eq!(got, want, "the reference's frame differs from meshpath's");
        let counts = reference.counts().expect("counters");
        assert_eq!((counts.redirected, counts.dropped), (1, 0), "{counts:?}");
    }

    /// (d) is held to meshpath's checks: a frame the kernel's VXLAN device made of the same request
    /// does not count for it, meshpath's own does.
    #[test]
    fn the_reference_counts_only_frames_as_meshpath_makes_them() {
        let testbed = Testbed::new(Scale {
            local_pods: 1,
            ..Scale::TINY
        });
        let way = WayKind::XdpVxlan.check(&testbed);
        let expected: Vec<_> = testbed
            .flows
            .iter()
            .map(|f| way.expect(&testbed, f))
            .collect();
        let mut request = [0u8; 60];
        testbed.request(&testbed.flows[1], &mut request);
        let stamp = Stamp {
            seq: 3,
            scheduled_ns: 9,
            template: 1,
        };
        assert!(stamp.write(&mut request[PAYLOAD..]));
        let mut frame = through_meshpath(&testbed, &request);
        assert_eq!(check::check(&frame, &expected), Seen::Valid(stamp));
        frame[46..49].copy_from_slice(&check::KERNEL_VNI.to_be_bytes()[1..]);
        assert_eq!(
            check::check(&frame, &expected),
            Seen::Wrong(check::Wrong::Vni)
        );
        assert_eq!(
            check::check(&request, &expected),
            Seen::Wrong(check::Wrong::Encapsulation),
            "passed to the sink unencapsulated"
        );
    }

    /// `request` after meshpath's pipeline, its flows established.
    fn through_meshpath(testbed: &Testbed, request: &[u8]) -> Vec<u8> {
        let mut state = testbed.warmed_worker(1024);
        let mut buf = vec![0u8; 2048];
        buf[HEADROOM..HEADROOM + request.len()].copy_from_slice(request);
        let port = meshpath_dataplane::testbed::pod_port(0);
        let mut frame = Frame::new(&mut buf, HEADROOM, request.len(), port).expect("a frame");
        let verdict = pipeline::process_one(&testbed.tables, &mut state, 0, &mut frame);
        assert_eq!(
            verdict,
            Verdict::Transmit(meshpath_dataplane::testbed::UPLINK)
        );
        frame.data().to_vec()
    }

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
            reference_napi: ReferenceNapi::Thread,
        };
        let report = run(&args).expect("the benchmark runs");
        let json = serde_json::to_value(&report).expect("serializes");
        for way in [
            "bare_afxdp_mac_swap",
            "kernel_vxlan",
            "meshpath_established",
            "meshpath_new_flows",
            "xdp_vxlan",
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
        assert_eq!(tunnelled["xdp_vxlan"], 1.0);
        assert_eq!(json["xdp_mode"], "native");
        for key in [
            "ratio_vs_bare",
            "ratio_vs_kernel",
            "ratio_vs_xdp",
            "offered_mpps",
        ] {
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
