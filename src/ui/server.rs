//! The HTTP side of `meshpath ui`: the page's three files, built into the binary, and its API.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` , `/app.js`, `/app.css` | the page (no framework, nothing fetched from elsewhere: the CSP forbids it) |
//! | `GET /api/events?filter=…` | server-sent events: `view`, a [`PageView`] at once and on every change |
//! | `GET /api/view?filter=…` | the same view once, as JSON (for scripts and `curl`) |
//! | `GET /api/filter?filter=…` | 200 when the filter line parses, 400 with the reason when it does not |
//!
//! A filter that does not parse is a 400 naming what is wrong; more than [`MAX_PAGES`] open pages at
//! once, a 503 (each page aggregates on its own).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use serde::Deserialize;

use super::feed::Feed;
use super::filter::FilterLine;
use super::page::{Page, PageView};

/// Pages open at once.
pub const MAX_PAGES: usize = 32;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

#[derive(Clone)]
struct Shared {
    feed: Arc<Feed>,
    pages: Arc<AtomicUsize>,
}

#[derive(Deserialize)]
struct FilterQuery {
    #[serde(default)]
    filter: String,
}

pub fn router(feed: Arc<Feed>) -> Router {
    let shared = Shared {
        feed,
        pages: Arc::new(AtomicUsize::new(0)),
    };
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/api/filter", get(check_filter))
        .route("/api/view", get(view))
        .route("/api/events", get(events))
        .with_state(shared)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn bad_filter(why: String) -> Response {
    (StatusCode::BAD_REQUEST, why).into_response()
}

fn json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(text) => ([(CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn check_filter(Query(query): Query<FilterQuery>) -> Response {
    match FilterLine::parse(&query.filter) {
        Ok(line) => json(&line.text),
        Err(why) => bad_filter(why),
    }
}

async fn view(State(shared): State<Shared>, Query(query): Query<FilterQuery>) -> Response {
    let line = match FilterLine::parse(&query.filter) {
        Ok(line) => line,
        Err(why) => return bad_filter(why),
    };
    let feed = shared.feed.clone();
    // Aggregating the recent flows takes a moment: off the runtime's threads.
    let view = tokio::task::spawn_blocking(move || -> PageView {
        Page::new(line, feed.subscribe()).view()
    });
    match view.await {
        Ok(view) => json(&view),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Counts an open page for as long as its stream lives.
struct OpenPage(Arc<AtomicUsize>);

impl Drop for OpenPage {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn events(State(shared): State<Shared>, Query(query): Query<FilterQuery>) -> Response {
    let line = match FilterLine::parse(&query.filter) {
        Ok(line) => line,
        Err(why) => return bad_filter(why),
    };
    if shared.pages.fetch_add(1, Ordering::SeqCst) >= MAX_PAGES {
        shared.pages.fetch_sub(1, Ordering::SeqCst);
        let why = format!("{MAX_PAGES} pages are open already: close one");
        return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    }
    let open = OpenPage(shared.pages.clone());
    let feed = shared.feed.clone();
    let page = tokio::task::spawn_blocking(move || Page::new(line, feed.subscribe())).await;
    let Ok(page) = page else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the page could not be built",
        )
            .into_response();
    };
    let stream = page.events().map(move |event| {
        let _open = &open;
        event
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Serves the router on a port of its own, with the demo's flows in the feed.
    fn serve() -> (tokio::runtime::Runtime, std::net::SocketAddr) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let feed = Feed::new();
        for line in include_str!("testdata/demo-flows.jsonl").lines() {
            feed.push(serde_json::from_str(line).unwrap());
        }
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, router(feed)).await });
        (runtime, address)
    }

    /// One HTTP/1.0 request: the status line, the headers and the body (until the server closes,
    /// or, for a stream, until `end` came).
    fn get(address: std::net::SocketAddr, path: &str, end: Option<&str>) -> (String, String) {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while !end.is_some_and(|end| String::from_utf8_lossy(&answer).contains(end)) {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
        let text = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (head.to_owned(), body.to_owned())
    }

    #[test]
    fn the_page_is_served_with_its_policy() {
        let (_runtime, address) = serve();
        let (head, body) = get(address, "/", None);
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        assert!(
            head.contains("content-security-policy: default-src 'self'"),
            "{head}"
        );
        assert!(body.contains("/app.js") && body.contains("/app.css"));
        for (path, kind) in [("/app.js", "text/javascript"), ("/app.css", "text/css")] {
            let (head, _) = get(address, path, None);
            assert!(head.contains(kind), "{path}: {head}");
        }
        let (head, _) = get(address, "/nothing", None);
        assert!(head.contains(" 404"), "{head}");
    }

    #[test]
    fn a_bad_filter_is_a_400_that_names_it() {
        let (_runtime, address) = serve();
        for path in [
            "/api/filter?filter=--verdict%20maybe",
            "/api/view?filter=--verdict%20maybe",
            "/api/events?filter=--verdict%20maybe",
        ] {
            let (head, body) = get(address, path, None);
            assert!(head.contains(" 400"), "{path}: {head}");
            assert!(body.contains("maybe"), "{path}: {body}");
        }
        let (head, body) = get(address, "/api/filter?filter=--verdict%20dropped", None);
        assert!(head.contains(" 200"), "{head}");
        assert_eq!(body, "\"--verdict dropped\"");
    }

    #[test]
    fn the_view_is_the_aggregate_of_the_flows() {
        let (_runtime, address) = serve();
        let (_, body) = get(address, "/api/view?filter=--verdict%20dropped", None);
        let view: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(view["filter"], "--verdict dropped");
        let edges = view["map"]["edges"].as_array().unwrap();
        assert!(edges.iter().any(|e| e["reason"] == "policy_denied"
            && e["reason_text"] == "Policy denied"
            && e["colour"] == "denied"));
        assert!(edges.iter().all(|e| e["verdict"] == "DROPPED"));
        // The stream starts with the same view.
        let (head, body) = get(address, "/api/events", Some("}\n\n"));
        assert!(head.contains("text/event-stream"), "{head}");
        assert!(body.starts_with("event: view\ndata: {"), "{body}");
    }
}
