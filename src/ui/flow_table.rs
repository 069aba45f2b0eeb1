//! The table of flows below the map: the latest [`MAX_ROWS`] that pass the page's filters, newest
//! first, each row in the columns `hubble observe` prints (time, node, source, destination, type,
//! verdict, summary). Flows of several agents arrive out of time order; the table keeps them sorted.

use std::collections::VecDeque;

use meshpath_api::flow::{Flow, FlowTime, Verdict};
use serde::Serialize;

use super::service_map::EdgeColour;

/// Rows the page gets.
pub const MAX_ROWS: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowRow {
    pub time: FlowTime,
    pub node: String,
    /// `namespace/pod:port`, or the address, with the identity: `default/x-wing:40000 (ID:65792)`.
    pub source: String,
    pub destination: String,
    /// The observation point (`to-overlay`) or the drop reason (`Policy denied`).
    pub kind: String,
    pub verdict: Verdict,
    pub colour: EdgeColour,
    /// `TCP Flags: SYN`.
    pub summary: String,
}

impl FlowRow {
    pub fn of(flow: &Flow) -> FlowRow {
        let (src_port, dst_port) = flow.ports();
        let kind = match (flow.trace_observation_point, flow.extensions.reason) {
            (Some(point), _) => point.text(),
            (None, Some(reason)) => reason.cilium().description.to_owned(),
            (None, None) => "UNKNOWN".to_owned(),
        };
        FlowRow {
            time: flow.time,
            node: flow.node_name.clone(),
            source: end(flow.ip.source, src_port, &flow.source),
            destination: end(flow.ip.destination, dst_port, &flow.destination),
            kind,
            verdict: flow.verdict,
            colour: EdgeColour::of(flow.verdict, flow.extensions.reason),
            summary: flow.summary.clone(),
        }
    }
}

fn end(ip: std::net::IpAddr, port: u16, endpoint: &meshpath_api::flow::Endpoint) -> String {
    let name = endpoint.pod().unwrap_or_else(|| ip.to_string());
    let name = match port {
        0 => name,
        port if endpoint.pod_name.is_empty() && ip.is_ipv6() => format!("[{name}]:{port}"),
        port => format!("{name}:{port}"),
    };
    match endpoint.identity {
        0 => name,
        id => format!("{name} (ID:{id})"),
    }
}

/// The latest rows, newest first.
#[derive(Clone, Debug, Default)]
pub struct FlowTable {
    rows: VecDeque<FlowRow>,
}

impl FlowTable {
    pub fn add(&mut self, flow: &Flow) {
        if self.rows.len() == MAX_ROWS && self.rows.back().is_some_and(|r| r.time >= flow.time) {
            return;
        }
        let at = self.rows.partition_point(|r| r.time > flow.time);
        self.rows.insert(at, FlowRow::of(flow));
        self.rows.truncate(MAX_ROWS);
    }

    pub fn rows(&self) -> Vec<FlowRow> {
        self.rows.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_api::flow::FlowResponse;

    fn flows() -> Vec<Flow> {
        include_str!("testdata/demo-flows.jsonl")
            .lines()
            .filter_map(|l| {
                serde_json::from_str::<FlowResponse>(l)
                    .unwrap()
                    .flow()
                    .cloned()
            })
            .collect()
    }

    #[test]
    fn rows_read_as_hubble_observe_prints_them() {
        let denied = flows()
            .into_iter()
            .find(|f| f.verdict == Verdict::Dropped && f.l4.is_some_and(|l| l.ports().1 == 8080))
            .unwrap();
        let row = FlowRow::of(&denied);
        assert!(
            row.source.starts_with("default/p1-1:") && row.source.ends_with("(ID:65538)"),
            "{}",
            row.source
        );
        assert_eq!(row.destination, "default/p2-1:8080 (ID:65539)");
        assert_eq!(row.kind, "Policy denied");
        assert_eq!(row.colour, EdgeColour::Denied);
        assert_eq!(row.summary, "TCP Flags: SYN");
        assert_eq!(row.node, "cluster1/c1-n1");
    }

    /// Out of order from several agents, the table is newest first and never longer than MAX_ROWS.
    #[test]
    fn newest_first_and_bounded() {
        let template = flows().remove(0);
        let mut table = FlowTable::default();
        let times: Vec<u64> = (0..MAX_ROWS as u64 * 2)
            .map(|i| (i * 7919) % 1000)
            .collect();
        for ms in &times {
            let mut flow = template.clone();
            flow.time = FlowTime::from_unix_ms(1_700_000_000_000 + ms);
            table.add(&flow);
        }
        let rows = table.rows();
        assert_eq!(rows.len(), MAX_ROWS);
        assert!(rows.windows(2).all(|w| w[0].time >= w[1].time));
        let mut newest: Vec<u64> = times.clone();
        newest.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(rows[0].time.unix_ms(), 1_700_000_000_000 + newest[0]);
        assert_eq!(
            rows[MAX_ROWS - 1].time.unix_ms(),
            1_700_000_000_000 + newest[MAX_ROWS - 1]
        );
    }
}
