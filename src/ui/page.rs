//! One open page: its filter, its own aggregation of the flows that pass it (the map and the table),
//! and the view it is sent — at once, then at most every [`UPDATE_EVERY`] while anything changed, as
//! one server-sent event `view`. The page draws what it gets; it never sees a flow the table does not
//! show.

use std::convert::Infallible;
#[cfg(test)]
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::Event as SseEvent;
use futures_util::Stream;
use meshpath_api::flow::{Event, FlowResponse};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::feed::Subscription;
use super::filter::FilterLine;
use super::flow_table::{FlowRow, FlowTable};
use super::mesh::MeshView;
use super::service_map::{MapView, ServiceMap};

/// How often a page is sent a new view at most.
pub const UPDATE_EVERY: Duration = Duration::from_secs(1);

/// What the page gets: the server's aggregation, never the flows themselves.
#[derive(Clone, Debug, Serialize)]
pub struct PageView {
    /// The filter line in force.
    pub filter: String,
    pub mesh: MeshView,
    pub map: MapView,
    /// The latest flows that pass the filter, newest first.
    pub flows: Vec<FlowRow>,
    /// Flows that passed the filter.
    pub matched: u64,
    /// Events the agents reported lost (`EVENTS LOST`), whatever the filter.
    pub lost: u64,
    /// Flows this page fell too far behind to take in (the server was busy).
    pub missed: u64,
}

pub struct Page {
    filter: FilterLine,
    map: ServiceMap,
    table: FlowTable,
    matched: u64,
    lost: u64,
    missed: u64,
    subscription: Subscription,
}

impl Page {
    pub fn new(filter: FilterLine, mut subscription: Subscription) -> Page {
        let recent = std::mem::take(&mut subscription.recent);
        let mut page = Page {
            filter,
            map: ServiceMap::default(),
            table: FlowTable::default(),
            matched: 0,
            lost: 0,
            missed: 0,
            subscription,
        };
        for event in &recent {
            page.take(event);
        }
        page
    }

    pub fn take(&mut self, event: &FlowResponse) {
        match &event.event {
            Event::Flow(flow) if self.filter.matches(flow) => {
                self.matched += 1;
                self.map.add(flow);
                self.table.add(flow);
            }
            Event::Flow(_) => {}
            Event::LostEvents(lost) => self.lost += lost.num_events_lost,
        }
    }

    pub fn view(&self) -> PageView {
        PageView {
            filter: self.filter.text.clone(),
            mesh: MeshView::clone(&self.subscription.mesh.borrow()),
            map: self.map.view(),
            flows: self.table.rows(),
            matched: self.matched,
            lost: self.lost,
            missed: self.missed,
        }
    }

    /// Takes in flows until the next view is due and something changed; `false` once the feed is
    /// gone.
    async fn changes(&mut self, due: Instant) -> bool {
        let mut changed = false;
        loop {
            let wait_for = if changed { Some(due) } else { None };
            tokio::select! {
                received = self.subscription.flows.recv() => match received {
                    Ok(event) => {
                        let before = (self.matched, self.lost);
                        self.take(&event);
                        changed |= before != (self.matched, self.lost);
                    }
                    Err(RecvError::Lagged(n)) => {
                        self.missed += n;
                        changed = true;
                    }
                    Err(RecvError::Closed) => return false,
                },
                moved = self.subscription.mesh.changed() => match moved {
                    Ok(()) => changed = true,
                    Err(_) => return false,
                },
                () = sleep_until(wait_for) => return true,
            }
        }
    }

    /// The page's events: a view now, then one whenever something changed, at most every
    /// [`UPDATE_EVERY`].
    pub fn events(self) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        futures_util::stream::unfold((self, true), |(mut page, first)| async move {
            if !first {
                let due = Instant::now() + UPDATE_EVERY;
                if !page.changes(due).await {
                    return None;
                }
            }
            page.subscription.mesh.borrow_and_update();
            let data = serde_json::to_string(&page.view()).unwrap_or_default();
            Some((
                Ok(SseEvent::default().event("view").data(data)),
                (page, false),
            ))
        })
    }
}

/// Sleeps until `due`, or forever without one.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_api::flow::{LostEventSource, LostEvents, Verdict};
    use tokio::sync::{broadcast, watch};

    fn demo() -> Vec<Arc<FlowResponse>> {
        include_str!("testdata/demo-flows.jsonl")
            .lines()
            .map(|l| Arc::new(serde_json::from_str(l).unwrap()))
            .collect()
    }

    fn page(filter: &str, recent: Vec<Arc<FlowResponse>>) -> Page {
        let subscription = Subscription {
            recent,
            flows: broadcast::channel(4).1,
            mesh: watch::channel(Arc::new(MeshView::default())).1,
        };
        Page::new(FilterLine::parse(filter).unwrap(), subscription)
    }

    /// The filter picks the flows of the map and of the table alike.
    #[test]
    fn the_filter_picks_the_flows_of_map_and_table() {
        let all = page("", demo()).view();
        assert_eq!(all.matched, 21);
        let dropped = page("--verdict dropped --from-namespace default", demo()).view();
        assert!(dropped.matched > 0 && dropped.matched < 21);
        assert!(dropped.flows.iter().all(|r| r.verdict == Verdict::Dropped));
        assert!(dropped
            .map
            .edges
            .iter()
            .all(|e| e.verdict == Verdict::Dropped));
        assert_eq!(dropped.filter, "--verdict dropped --from-namespace default");
        let none = page("--not --pod default/", demo()).view();
        // The nodes' own router solicitations, of no pod: one edge, unknown to unknown.
        assert_eq!(none.map.edges.len(), 1, "{:?}", none.map.edges);
        assert_eq!(none.map.edges[0].flows, 4);
    }

    #[test]
    fn lost_events_are_counted_whatever_the_filter() {
        let mut events = demo();
        events.push(Arc::new(FlowResponse {
            event: Event::LostEvents(LostEvents {
                source: LostEventSource::ObserverEventsQueue,
                num_events_lost: 12,
                cpu: Some(0),
                interface: None,
            }),
            node_name: "cluster1/c1-n1".into(),
            time: events[0].time,
        }));
        let view = page("--verdict forwarded", events).view();
        assert_eq!(view.lost, 12);
        let json = serde_json::to_value(&view).unwrap();
        for key in [
            "mesh", "map", "flows", "matched", "lost", "missed", "filter",
        ] {
            assert!(json.get(key).is_some(), "{key} in the page's view");
        }
    }
}
