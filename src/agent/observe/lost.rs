//! Lost events for `meshpath observe`, as Hubble reports them in the stream: flow events the queue
//! from the worker could not take, and the frames the kernel dropped on an AF_XDP socket before the
//! dataplane saw them (rx ring full, fill ring empty, …), which no flow would ever show. Each is the
//! growth of a counter that only grows, since it was last read.

use std::collections::HashMap;

use meshpath_api::flow::{LostEventSource, LostEvents};
use meshpath_dataplane::afxdp::PortStats;
use meshpath_dataplane::PortId;

/// The counters as last read.
#[derive(Default)]
pub struct LostCounters {
    queue: u64,
    kernel: HashMap<(PortId, LostEventSource), u64>,
}

impl LostCounters {
    /// The flow events lost in the worker's queue since the last call.
    pub fn queue(&mut self, total: u64) -> Option<LostEvents> {
        let lost = growth(&mut self.queue, total)?;
        Some(LostEvents {
            source: LostEventSource::ObserverEventsQueue,
            num_events_lost: lost,
            cpu: None,
            interface: None,
        })
    }

    /// The kernel's drops on each port's socket since the last call; `interface` names a port.
    pub fn kernel(
        &mut self,
        ports: &[PortStats],
        interface: impl Fn(PortId) -> Option<String>,
    ) -> Vec<LostEvents> {
        let mut events = Vec::new();
        for p in ports {
            let k = &p.kernel;
            for (source, total) in [
                (LostEventSource::AfXdpRxRingFull, k.rx_ring_full),
                (LostEventSource::AfXdpFillRingEmpty, k.fill_ring_empty),
                (LostEventSource::AfXdpRxDropped, k.rx_dropped),
                (
                    LostEventSource::AfXdpInvalidDescs,
                    k.rx_invalid_descs + k.tx_invalid_descs,
                ),
            ] {
                let last = self.kernel.entry((p.port, source)).or_default();
                if let Some(lost) = growth(last, total) {
                    events.push(LostEvents {
                        source,
                        num_events_lost: lost,
                        cpu: None,
                        interface: interface(p.port).or_else(|| Some(format!("port {}", p.port.0))),
                    });
                }
            }
        }
        events
    }
}

/// How much `total` grew past `last` (which becomes `total`); none if it did not.
fn growth(last: &mut u64, total: u64) -> Option<u64> {
    let grown = total.checked_sub(*last).filter(|n| *n > 0);
    *last = total;
    grown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_read_reports_the_growth_since_the_last() {
        let mut lost = LostCounters::default();
        assert_eq!(lost.queue(0), None);
        assert_eq!(lost.queue(12).map(|l| l.num_events_lost), Some(12));
        assert_eq!(lost.queue(12), None, "nothing new");
        assert_eq!(lost.queue(15).map(|l| l.num_events_lost), Some(3));

        let mut port = PortStats::new(PortId(0));
        port.kernel.rx_ring_full = 68;
        let name = |_| Some("uplink".to_owned());
        let events = lost.kernel(std::slice::from_ref(&port), name);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].source, LostEventSource::AfXdpRxRingFull);
        assert_eq!(events[0].num_events_lost, 68);
        assert_eq!(events[0].interface.as_deref(), Some("uplink"));
        assert!(lost.kernel(std::slice::from_ref(&port), name).is_empty());
        port.kernel.fill_ring_empty = 5;
        port.kernel.rx_ring_full = 70;
        let events = lost.kernel(&[port], name);
        let counts: Vec<(LostEventSource, u64)> = events
            .iter()
            .map(|e| (e.source, e.num_events_lost))
            .collect();
        assert_eq!(
            counts,
            [
                (LostEventSource::AfXdpRxRingFull, 2),
                (LostEventSource::AfXdpFillRingEmpty, 5)
            ]
        );
    }
}
