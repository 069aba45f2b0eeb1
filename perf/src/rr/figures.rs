//! What `rr` reports: round trips per second per path (median and spread of the interleaved runs),
//! their ratio against its target, latency percentiles from every counted transaction, and the
//! agents' context switches per round trip (how often their threads slept and were woken).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::traffic::ConnectionResult;
use crate::forward::{Latency, Spread};
use crate::report::Report;

/// pod to pod / node to node, Cilium's CNI benchmark finds within a few percent.
pub const TARGET_RATIO: f64 = 0.9;

/// A figure for each path.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Paths<T> {
    /// Across two lab nodes through meshpath (VXLAN between the nodes).
    pub pod_to_pod: T,
    /// Between the same two nodes' own addresses, through the kernel.
    pub node_to_node: T,
}

/// The figures at one number of connections.
#[derive(Debug, Serialize, Deserialize)]
pub struct RrFigures {
    pub connections: usize,
    /// Round trips per second, all connections together: median of the runs.
    pub rr_per_s: Paths<f64>,
    /// pod_to_pod / node_to_node of the medians.
    pub ratio: f64,
    pub spread: Paths<Spread>,
    /// One request's round trip over every counted transaction of every run; null without any.
    pub latency_us: Paths<Option<Latency>>,
    /// Context switches of both agents' threads per round trip (null: not read).
    pub agent_switches_per_rr: Paths<Option<f64>>,
}

/// One path's runs at one number of connections, as measured.
#[derive(Default)]
pub struct PathRuns {
    pub rates: Vec<f64>,
    pub latency_ns: Option<Histogram<u64>>,
    pub transactions: u64,
    pub agent_switches: Option<u64>,
}

impl PathRuns {
    /// Adds one run of `seconds` counted, and the agents' context switches during it.
    pub fn add(
        &mut self,
        connections: Vec<ConnectionResult>,
        seconds: f64,
        switches: Option<u64>,
    ) -> anyhow::Result<()> {
        let mut transactions = 0;
        for c in connections {
            transactions += c.transactions;
            match &mut self.latency_ns {
                Some(h) => h.add(&c.latency_ns)?,
                None => self.latency_ns = Some(c.latency_ns),
            }
        }
        self.rates
            .push(transactions as f64 / seconds.max(f64::EPSILON));
        self.transactions += transactions;
        self.agent_switches = match (self.agent_switches, switches) {
            (Some(a), Some(b)) => Some(a + b),
            (None, Some(b)) if self.rates.len() == 1 => Some(b),
            _ => None,
        };
        Ok(())
    }

    fn latency(&self) -> Option<Latency> {
        let h = self.latency_ns.as_ref().filter(|h| !h.is_empty())?;
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        Some(Latency {
            p50: us(0.5),
            p99: us(0.99),
            p999: us(0.999),
            samples: h.len(),
        })
    }

    fn switches_per_rr(&self) -> Option<f64> {
        let switches = self.agent_switches?;
        (self.transactions > 0).then(|| switches as f64 / self.transactions as f64)
    }
}

impl RrFigures {
    pub fn of(connections: usize, runs: &Paths<PathRuns>) -> RrFigures {
        let spread = Paths {
            pod_to_pod: Spread::of(runs.pod_to_pod.rates.clone()),
            node_to_node: Spread::of(runs.node_to_node.rates.clone()),
        };
        let rr_per_s = Paths {
            pod_to_pod: spread.pod_to_pod.median,
            node_to_node: spread.node_to_node.median,
        };
        RrFigures {
            connections,
            ratio: rr_per_s.pod_to_pod / rr_per_s.node_to_node.max(f64::EPSILON),
            rr_per_s,
            spread,
            latency_us: Paths {
                pod_to_pod: runs.pod_to_pod.latency(),
                node_to_node: runs.node_to_node.latency(),
            },
            agent_switches_per_rr: Paths {
                pod_to_pod: runs.pod_to_pod.switches_per_rr(),
                node_to_node: runs.node_to_node.switches_per_rr(),
            },
        }
    }

    fn lines(&self) -> Vec<String> {
        let path = |name: &str, rate: f64, s: &Spread, l: &Option<Latency>, w: Option<f64>| {
            format!(
                "{name:<14} {rate:>10.0} {:>19} {:>9} {:>9} {:>14}",
                format!("({:.0}–{:.0})", s.min, s.max),
                l.as_ref()
                    .map_or("—".to_owned(), |l| format!("{:.0}", l.p50)),
                l.as_ref()
                    .map_or("—".to_owned(), |l| format!("{:.0}", l.p99)),
                w.map_or("—".to_owned(), |w| format!("{w:.2}")),
            )
        };
        vec![
            format!(
                "{} connection{}: pod to pod / node to node = {:.2} ({})",
                self.connections,
                if self.connections == 1 { "" } else { "s" },
                self.ratio,
                if self.ratio >= TARGET_RATIO {
                    format!("target ≥ {TARGET_RATIO} met")
                } else {
                    format!(
                        "target ≥ {TARGET_RATIO} missed by {:.2}",
                        TARGET_RATIO - self.ratio
                    )
                }
            ),
            format!(
                "{:<14} {:>10} {:>19} {:>9} {:>9} {:>14}",
                "path", "rr/s", "(min–max)", "p50 µs", "p99 µs", "agent sw./rr"
            ),
            path(
                "pod to pod",
                self.rr_per_s.pod_to_pod,
                &self.spread.pod_to_pod,
                &self.latency_us.pod_to_pod,
                self.agent_switches_per_rr.pod_to_pod,
            ),
            path(
                "node to node",
                self.rr_per_s.node_to_node,
                &self.spread.node_to_node,
                &self.latency_us.node_to_node,
                self.agent_switches_per_rr.node_to_node,
            ),
        ]
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RrReport {
    /// One connection: the headline (`rr_per_s.pod_to_pod`, `rr_per_s.node_to_node`, `ratio`).
    #[serde(flatten)]
    pub single: RrFigures,
    /// The same with many connections in parallel.
    pub parallel: RrFigures,
    pub target_ratio: f64,
    pub runs: usize,
    pub duration_s: f64,
    pub cores: String,
    /// Dataplane workers of each node's agent (`dataplane.cores`); 1 before there could be more.
    #[serde(default = "one_worker")]
    pub workers: u8,
}

fn one_worker() -> u8 {
    1
}

impl Report for RrReport {
    fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "TCP request/response, 1-byte request and answer, {} interleaved runs of {:.1} s per path; {}; cores: {}",
                self.runs, self.duration_s, workers(self.workers), self.cores
            ),
            String::new(),
        ];
        lines.extend(self.single.lines());
        lines.push(String::new());
        lines.extend(self.parallel.lines());
        lines.push(String::new());
        lines.push(
            "agent sw./rr: voluntary and involuntary context switches of both agents' threads per round trip (a worker sleeping in poll() and woken by a frame switches once per wake-up)".to_owned(),
        );
        lines
    }
}

fn workers(n: u8) -> String {
    match n {
        1 => "one dataplane worker per agent".to_owned(),
        n => format!("{n} dataplane workers per agent (flows steered between them)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(transactions: u64, latencies_ns: &[u64]) -> ConnectionResult {
        let mut latency_ns = Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
        for &ns in latencies_ns {
            latency_ns.record(ns).expect("in bounds");
        }
        ConnectionResult {
            transactions,
            latency_ns,
        }
    }

    #[test]
    fn runs_sum_their_connections_and_the_ratio_is_of_the_medians() {
        let mut runs = Paths::<PathRuns>::default();
        for (total, switches) in [(3000, 12_000), (1000, 4_000), (2000, 8_000)] {
            let half = total / 2;
            let conns = vec![connection(half, &[100_000]), connection(half, &[300_000])];
            runs.pod_to_pod
                .add(conns, 2.0, Some(switches))
                .expect("adds");
        }
        for total in [8000, 8000, 9000] {
            runs.node_to_node
                .add(vec![connection(total, &[50_000])], 2.0, None)
                .expect("adds");
        }
        let figures = RrFigures::of(2, &runs);
        assert_eq!(figures.spread.pod_to_pod.runs, vec![1500.0, 500.0, 1000.0]);
        assert_eq!(figures.rr_per_s.pod_to_pod, 1000.0);
        assert_eq!(figures.rr_per_s.node_to_node, 4000.0);
        assert_eq!(figures.ratio, 0.25);
        let latency = figures.latency_us.pod_to_pod.as_ref().expect("samples");
        assert_eq!(latency.samples, 6);
        assert!((latency.p50 - 100.0).abs() < 1.0, "{latency:?}");
        assert!((latency.p99 - 300.0).abs() < 1.0, "{latency:?}");
        assert_eq!(figures.agent_switches_per_rr.pod_to_pod, Some(4.0));
        assert_eq!(figures.agent_switches_per_rr.node_to_node, None);
    }

    /// The JSON `rr --json` prints is what `report` reads back into RESULTS.md, keys as the brief
    /// names them: `rr_per_s.pod_to_pod`, `rr_per_s.node_to_node`, `ratio` at the top.
    #[test]
    fn the_report_reads_back_from_its_json() {
        let mut runs = Paths::<PathRuns>::default();
        runs.pod_to_pod
            .add(vec![connection(900, &[110_000])], 1.0, Some(3600))
            .expect("adds");
        runs.node_to_node
            .add(vec![connection(1000, &[70_000])], 1.0, Some(10))
            .expect("adds");
        let report = RrReport {
            single: RrFigures::of(1, &runs),
            parallel: RrFigures::of(32, &runs),
            target_ratio: TARGET_RATIO,
            runs: 1,
            duration_s: 1.0,
            cores: "2 cores".into(),
            workers: 2,
        };
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["rr_per_s"]["pod_to_pod"], 900.0);
        assert_eq!(json["rr_per_s"]["node_to_node"], 1000.0);
        assert_eq!(json["ratio"], 0.9);
        assert_eq!(json["parallel"]["connections"], 32);
        let mut older = json.clone();
        older.as_object_mut().expect("an object").remove("workers");
        let older: RrReport = serde_json::from_value(older).expect("JSON without workers reads");
        assert_eq!(older.workers, 1);
        let back: RrReport = serde_json::from_value(json).expect("reads back");
        let lines = back.lines().join("\n");
        assert!(lines.contains("2 dataplane workers per agent"), "{lines}");
        assert!(
            lines.contains("1 connection: pod to pod / node to node = 0.90 (target ≥ 0.9 met)"),
            "{lines}"
        );
        assert!(lines.contains("32 connections"), "{lines}");
    }

    #[test]
    fn a_run_without_switch_counts_leaves_them_unknown() {
        let mut runs = PathRuns::default();
        runs.add(vec![connection(10, &[1_000])], 1.0, Some(5))
            .expect("adds");
        runs.add(vec![connection(10, &[1_000])], 1.0, None)
            .expect("adds");
        assert_eq!(runs.switches_per_rr(), None);
    }

    #[test]
    fn no_transaction_means_no_latency_and_a_zero_rate() {
        let mut runs = Paths::<PathRuns>::default();
        runs.pod_to_pod
            .add(vec![connection(0, &[])], 1.0, Some(3))
            .expect("adds");
        runs.node_to_node
            .add(vec![connection(10, &[1_000])], 1.0, None)
            .expect("adds");
        let figures = RrFigures::of(1, &runs);
        assert_eq!(figures.rr_per_s.pod_to_pod, 0.0);
        assert_eq!(figures.ratio, 0.0);
        assert!(figures.latency_us.pod_to_pod.is_none());
        assert_eq!(figures.agent_switches_per_rr.pod_to_pod, None);
        let json = serde_json::to_value(&figures).expect("json");
        assert!(json["latency_us"]["pod_to_pod"].is_null());
    }
}
