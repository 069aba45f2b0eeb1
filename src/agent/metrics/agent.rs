//! The agent itself: its build (`cilium_version`, as Cilium's build info), its process's CPU and
//! memory (`cilium_process_*`, what Cilium's Go process collector exports, read from `/proc/self`),
//! its health, each worker's frames and loop heartbeat, and the flow log (`hubble_lost_events_total`, Hubble's
//! name for events lost on the way to observers).

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use meshpath_api::status::WorkerStatus;

use super::{encode_family, encode_one, MetricsView};
use crate::agent::status::version;

/// Linux reports CPU times and start times in /proc in USER_HZ, which is 100 on every architecture
/// the agent runs on (x86-64, arm64).
const USER_HZ: f64 = 100.0;

pub fn encode<V: MetricsView>(view: &V, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    let v = version();
    let arch = format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH);
    let build = [(
        [
            ("version", v.version.as_str()),
            ("revision", v.commit.as_str()),
            ("arch", arch.as_str()),
        ],
        ConstGauge::new(1),
    )];
    encode_family(encoder, "cilium_version", "Cilium version", &build)?;
    if let Some(p) = Process::read() {
        encode_process(&p, encoder)?;
    }
    let health = view.health();
    encode_one(
        encoder,
        "meshpath_agent_live",
        "1 while the worker and the control loop make progress",
        ConstGauge::new(i64::from(health.live)),
    )?;
    encode_one(
        encoder,
        "meshpath_agent_ready",
        "1 once the local state is synced and its first snapshot installed",
        ConstGauge::new(i64::from(health.ready)),
    )?;
    encode_workers(&view.workers(), encoder)?;
    let flows = view.flows();
    encode_one(
        encoder,
        "meshpath_flows_logged",
        "Flows the workers logged for meshpath observe",
        ConstCounter::new(flows.seen),
    )?;
    let lost = [(
        [("source", "observer_events_queue")],
        ConstCounter::new(flows.lost),
    )];
    encode_family(
        encoder,
        "hubble_lost_events",
        "Number of lost events",
        &lost,
    )
}

/// Per worker (labelled by its index): its frames by kind and its loop's turns.
fn encode_workers(
    workers: &[WorkerStatus],
    encoder: &mut DescriptorEncoder,
) -> Result<(), fmt::Error> {
    let names: Vec<String> = workers.iter().map(|w| w.index.to_string()).collect();
    let mut packets = Vec::new();
    for (w, name) in workers.iter().zip(&names) {
        for (kind, n) in [
            ("rx", w.rx),
            ("tx", w.tx),
            ("handed_off", w.handed_off),
            ("received_handoff", w.received_handoff),
        ] {
            packets.push((
                [("worker", name.as_str()), ("kind", kind)],
                ConstCounter::new(n),
            ));
        }
    }
    encode_family(
        encoder,
        "meshpath_worker_packets",
        "Frames of each dataplane worker: received on its queues, queued for transmit, handed to the flow's owner, received from another worker",
        &packets,
    )?;
    let turns: Vec<_> = workers
        .iter()
        .zip(&names)
        .map(|(w, name)| ([("worker", name.as_str())], ConstCounter::new(w.loop_turns)))
        .collect();
    encode_family(
        encoder,
        "meshpath_worker_loop_turns",
        "Turns of each dataplane worker's loop (its heartbeat: it grows busy or idle)",
        &turns,
    )
}

fn encode_process(p: &Process, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    encode_one(
        encoder,
        "cilium_process_cpu_seconds",
        "Total user and system CPU time spent in seconds",
        ConstCounter::new(p.cpu_seconds),
    )?;
    encode_one(
        encoder,
        "cilium_process_resident_memory_bytes",
        "Resident memory size in bytes",
        ConstGauge::new(p.resident_bytes as i64),
    )?;
    encode_one(
        encoder,
        "cilium_process_virtual_memory_bytes",
        "Virtual memory size in bytes",
        ConstGauge::new(p.virtual_bytes as i64),
    )?;
    encode_one(
        encoder,
        "cilium_process_open_fds",
        "Number of open file descriptors",
        ConstGauge::new(p.open_fds as i64),
    )?;
    encode_one(
        encoder,
        "cilium_process_max_fds",
        "Maximum number of open file descriptors",
        ConstGauge::new(p.max_fds as i64),
    )?;
    encode_one(
        encoder,
        "cilium_process_start_time_seconds",
        "Start time of the process since unix epoch in seconds",
        ConstGauge::new(p.start_time_seconds),
    )
}

/// This process, as /proc/self tells it.
#[derive(Debug, PartialEq)]
struct Process {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: u64,
    max_fds: u64,
    start_time_seconds: f64,
}

impl Process {
    fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Process::parse(&stat, &status, &limits, &boot, open_fds)
    }

    fn parse(stat: &str, status: &str, limits: &str, boot: &str, open_fds: u64) -> Option<Process> {
        // The command name may hold spaces and parentheses: the fields start after its last `)`.
        let fields: Vec<&str> = stat
            .get(stat.rfind(')')? + 1..)?
            .split_whitespace()
            .collect();
        // After the name: state is field 3 of stat(5), so field n is at index n - 3.
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        let ticks = field(14)? + field(15)?;
        let started = field(22)?;
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        };
        let max_fds = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let btime: u64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(Process {
            cpu_seconds: ticks as f64 / USER_HZ,
            resident_bytes: kb("VmRSS:")? * 1024,
            virtual_bytes: kb("VmSize:")? * 1024,
            open_fds,
            max_fds,
            start_time_seconds: btime as f64 + started as f64 / USER_HZ,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_self_as_the_kernel_writes_it() {
        let stat = "4242 (meshpath (agent)) S 1 4242 4242 0 -1 4194560 2000 0 0 0 150 50 0 0 20 0 5 0 12345 987654321 4000 18446744073709551615";
        let status = "Name:\tmeshpath\nVmSize:\t  964504 kB\nVmRSS:\t   16000 kB\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
        let p = Process::parse(stat, status, limits, boot, 17).unwrap();
        assert_eq!(
            p,
            Process {
                cpu_seconds: 2.0,
                resident_bytes: 16000 * 1024,
                virtual_bytes: 964504 * 1024,
                open_fds: 17,
                max_fds: 1024,
                start_time_seconds: 1_700_000_123.45,
            }
        );
        assert!(Process::parse("garbage", status, limits, boot, 1).is_none());
        assert!(Process::read().is_some(), "this process's own /proc reads");
    }
}
