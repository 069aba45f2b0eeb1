//! The requests the stand-in answers, as the API server answers them: `/version` and discovery
//! (`/api`, `/apis`) to any authenticated client; on a resource, authentication (the bearer token),
//! then RBAC (403 Forbidden with a `Status`), then LIST (`limit`/`continue`, selectors) or WATCH
//! (`watch=1`: JSON lines of ADDED/MODIFIED/DELETED, BOOKMARK with `allowWatchBookmarks`, an ERROR
//! event with a 410 `Status` for a resourceVersion no longer kept).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use meshpath_control::local::Kind;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::rbac::{Rbac, Request as Access};
use super::selector::Selector;
use super::store::{Event, EventType, Store};

pub type Body = BoxBody<Bytes, Infallible>;

/// What every request may read.
pub struct Shared {
    pub store: Arc<Mutex<Store>>,
    pub rbac: Rbac,
    pub token: String,
    pub bookmark_every: Duration,
}

/// The resource a path names.
struct Target<'a> {
    kind: Option<Kind>,
    group: &'a str,
    resource: &'a str,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
}

pub async fn handle<B>(shared: Arc<Shared>, request: Request<B>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let query = Query::parse(request.uri().query().unwrap_or_default());
    let token = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if token != Some(shared.token.as_str()) {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
            None,
        );
    }
    match path.as_str() {
        "/version" => return json_response(StatusCode::OK, &version()),
        "/api" => {
            return json_response(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"]}),
            )
        }
        "/apis" => return json_response(StatusCode::OK, &groups()),
        "/healthz" | "/readyz" | "/livez" => return text(StatusCode::OK, "ok"),
        _ => {}
    }
    let Some(target) = target(&path) else {
        return not_found(&path);
    };
    let verb = verb(request.method(), &query, target.name.is_some());
    let access = Access {
        verb,
        group: target.group,
        resource: target.resource,
        namespace: target.namespace,
        name: target.name,
    };
    if !shared.rbac.allows(&access) {
        let details = json!({"kind": target.resource, "group": target.group, "name": target.name.unwrap_or_default()});
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &shared.rbac.refusal(&access),
            Some(details),
        );
    }
    let Some(kind) = target.kind else {
        return not_found(&path);
    };
    let selector =
        match Selector::parse(kind, query.get("labelSelector"), query.get("fieldSelector")) {
            Ok(selector) => selector,
            Err(problem) => return status(StatusCode::BAD_REQUEST, "BadRequest", &problem, None),
        };
    let scope = Scope {
        kind,
        namespace: target.namespace.map(str::to_owned),
        selector,
    };
    match verb {
        "list" => list(&shared, &scope, &query),
        "watch" => watch(shared, scope, &query),
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("the stand-in API server does not {verb}"),
            None,
        ),
    }
}

/// What a list or watch covers.
struct Scope {
    kind: Kind,
    namespace: Option<String>,
    selector: Selector,
}

impl Scope {
    fn matches(&self, object: &Value) -> bool {
        let in_namespace = match &self.namespace {
            Some(ns) => object["metadata"]["namespace"].as_str() == Some(ns),
            None => true,
        };
        in_namespace && self.selector.matches(object)
    }
}

fn list(shared: &Shared, scope: &Scope, query: &Query) -> Response<Body> {
    let store = shared.store.lock().unwrap_or_else(|p| p.into_inner());
    let rv = store.rv();
    let offset = match query.get("continue") {
        None | Some("") => 0,
        Some(token) => match token.split_once('-').and_then(|(v, o)| Some((v.parse::<u64>().ok()?, o.parse::<usize>().ok()?))) {
            Some((v, offset)) if v == rv => offset,
            Some(_) => return expired("the provided continue parameter is too old to display a consistent list result; list again without it"),
            None => return status(StatusCode::BAD_REQUEST, "BadRequest", "invalid continue token", None),
        },
    };
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let matching: Vec<&Value> = store
        .list(scope.kind)
        .filter(|o| scope.matches(o))
        .collect();
    let end = limit.map_or(matching.len(), |l| (offset + l).min(matching.len()));
    let items: Vec<&Value> = matching.get(offset..end).unwrap_or_default().to_vec();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if end < matching.len() {
        metadata["continue"] = json!(format!("{rv}-{end}"));
        metadata["remainingItemCount"] = json!(matching.len() - end);
    }
    let list = json!({
        "apiVersion": scope.kind.api_version(),
        "kind": format!("{}List", scope.kind.name()),
        "metadata": metadata,
        "items": items,
    });
    json_response(StatusCode::OK, &list)
}

fn watch(shared: Arc<Shared>, scope: Scope, query: &Query) -> Response<Body> {
    let bookmarks = matches!(query.get("allowWatchBookmarks"), Some("true" | "1"));
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let from = query
        .get("resourceVersion")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let (backlog, events) = {
        let store = shared.store.lock().unwrap_or_else(|p| p.into_inner());
        let events = store.subscribe();
        let backlog = match from {
            // No version: the current state as ADDED events first, as the server starts such a watch.
            None => Ok(store
                .list(scope.kind)
                .filter(|o| scope.matches(o))
                .map(|o| line("ADDED", o))
                .collect()),
            Some(rv) => match store.since(rv) {
                Some(missed) => Ok(missed
                    .iter()
                    .filter_map(|e| scope.event(e))
                    .collect::<Vec<_>>()),
                None => Err(rv),
            },
        };
        (backlog, events)
    };
    // A version no longer kept: the one event is the 410, and the watch ends (as the server ends it).
    let (backlog, ends) = match backlog {
        Ok(lines) => (lines, false),
        Err(rv) => {
            let gone = status_object(
                StatusCode::GONE,
                "Expired",
                &format!("too old resource version: {rv}"),
                None,
            );
            (vec![line("ERROR", &gone)], true)
        }
    };
    tokio::spawn(async move {
        for line in backlog {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if !ends {
            follow(
                &shared,
                &scope,
                events,
                tx,
                bookmarks.then_some(shared.bookmark_every),
                timeout,
            )
            .await;
        }
    });
    let body =
        StreamBody::new(ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b))));
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(BodyExt::boxed(body))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

/// Streams new events until the timeout, the client leaves, or the client fell too far behind (then
/// a 410, so it lists again rather than miss an event).
async fn follow(
    shared: &Shared,
    scope: &Scope,
    mut events: broadcast::Receiver<Arc<Event>>,
    tx: mpsc::Sender<Bytes>,
    bookmark_every: Option<Duration>,
    timeout: Duration,
) {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut bookmark = tokio::time::interval(bookmark_every.unwrap_or(Duration::from_secs(3600)));
    bookmark.tick().await;
    loop {
        let line = tokio::select! {
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            _ = bookmark.tick(), if bookmark_every.is_some() => {
                let rv = shared.store.lock().unwrap_or_else(|p| p.into_inner()).rv();
                let object = json!({"kind": scope.kind.name(), "apiVersion": scope.kind.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()}});
                line("BOOKMARK", &object)
            }
            event = events.recv() => match event {
                Ok(event) => match scope.event(&event) {
                    Some(line) => line,
                    None => continue,
                },
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let gone = status_object(StatusCode::GONE, "Expired", "the watch fell behind; list again", None);
                    let _ = tx.send(line("ERROR", &gone)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if tx.send(line).await.is_err() {
            return;
        }
    }
}

impl Scope {
    /// The event as this watch sees it: an object that enters its selection is ADDED, one that
    /// leaves it DELETED.
    fn event(&self, event: &Event) -> Option<Bytes> {
        if event.key.kind != self.kind {
            return None;
        }
        let now = self.matches(&event.object);
        let before = event.before.as_ref().is_some_and(|b| self.matches(b));
        let kind = match (event.kind, before, now) {
            (EventType::Deleted, true, _) => "DELETED",
            (EventType::Deleted, false, _) => return None,
            (_, false, true) => "ADDED",
            (_, true, true) => "MODIFIED",
            (_, true, false) => "DELETED",
            (_, false, false) => return None,
        };
        Some(line(kind, &event.object))
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// `/api/v1/[namespaces/NS/]RESOURCE[/NAME]`, `/apis/GROUP/VERSION/[namespaces/NS/]RESOURCE[/NAME]`.
fn target(path: &str) -> Option<Target<'_>> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(*ns), rest),
        rest => (None, rest),
    };
    let (resource, name) = match rest {
        [resource] => (*resource, None),
        [resource, name] => (*resource, Some(*name)),
        _ => return None,
    };
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.group() == group && k.version() == version && k.plural() == resource)
        .filter(|k| k.namespaced() || namespace.is_none());
    Some(Target {
        kind,
        group,
        resource,
        namespace,
        name,
    })
}

fn verb(method: &Method, query: &Query, named: bool) -> &'static str {
    let watching = matches!(query.get("watch"), Some("true" | "1"));
    match *method {
        Method::GET | Method::HEAD if watching => "watch",
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(text: &str) -> Query {
        let pairs = text.split('&').filter(|p| !p.is_empty()).map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        });
        Query(pairs.collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// `%2C` and `+` as a URL's query writes them.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn version() -> Value {
    json!({"major": "1", "minor": "37", "gitVersion": "v1.37.0-meshpath-lab", "gitCommit": "",
        "gitTreeState": "clean", "buildDate": "", "goVersion": "", "compiler": "rust",
        "platform": format!("linux/{}", std::env::consts::ARCH)})
}

fn groups() -> Value {
    let mut groups: Vec<(&str, &str)> = Kind::ALL
        .iter()
        .filter(|k| !k.group().is_empty())
        .map(|k| (k.group(), k.version()))
        .collect();
    groups.sort();
    groups.dedup();
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn status_object(code: StatusCode, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    if let Some(details) = details {
        status["details"] = details;
    }
    status
}

fn status(code: StatusCode, reason: &str, message: &str, details: Option<Value>) -> Response<Body> {
    json_response(code, &status_object(code, reason, message, details))
}

fn expired(message: &str) -> Response<Body> {
    status(StatusCode::GONE, "Expired", message, None)
}

fn not_found(path: &str) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("the server could not find the requested resource ({path})"),
        None,
    )
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn text(code: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *response.status_mut() = code;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_resource() {
        let t = target("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices").unwrap();
        assert_eq!(
            (t.kind, t.resource, t.namespace, t.name),
            (
                Some(Kind::EndpointSlice),
                "endpointslices",
                Some("default"),
                None
            )
        );
        let t = target("/api/v1/namespaces/default/pods/x-wing").unwrap();
        assert_eq!((t.kind, t.name), (Some(Kind::Pod), Some("x-wing")));
        let t = target("/api/v1/secrets").unwrap();
        assert_eq!((t.kind, t.resource), (None, "secrets"));
        assert!(
            target("/api/v1/namespaces/default/nodes")
                .unwrap()
                .kind
                .is_none(),
            "nodes are cluster-scoped"
        );
        assert!(target("/metrics").is_none());
    }

    #[test]
    fn queries_unescape() {
        let q = Query::parse("labelSelector=app%20in%20%28a%2Cb%29&watch=1&x");
        assert_eq!(q.get("labelSelector"), Some("app in (a,b)"));
        assert_eq!(q.get("watch"), Some("1"));
        assert_eq!(q.get("x"), Some(""));
        assert_eq!(unescape("%zz%4"), "%zz%4");
    }
}
