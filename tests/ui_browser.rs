//! `meshpath ui` in a real browser (root): the demo's lab — two clusters, rebel-base behind the global
//! service in both, the cross-cluster policy denying x-wing's call to its own cluster's rebel-base —
//! with x-wing calling the service all along. `meshpath ui` reads every node's agent; headless
//! chromium opens the page, and the test waits until it shows both clusters, the rebel-base service
//! with backends in both, and the denied flow with its reason, then saves a screenshot as
//! `target/test-artefacts/ui.png` (and `ui-1024.png`, in a laptop's window, where the page must
//! fit its width). The filter line is then tried: a bad filter is named, and
//! `--verdict dropped` leaves only drops in the table.

mod browser;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meshpath_lab::demo::{scene::Scene, steps};
use meshpath_lab::mesh::{self, MeshOptions};
use meshpath_testkit::{needs_root, until};
use serde_json::Value;

use browser::Browser;

/// What the page shows, read from its DOM.
const PROBE: &str = r#"JSON.stringify({
  clusters: [...document.querySelectorAll('#clusters [data-cluster]')].map(e => e.dataset.cluster),
  map_clusters: [...document.querySelectorAll('#map g.cluster')].map(e => e.dataset.cluster).filter(Boolean),
  rebel_backends: [...document.querySelectorAll('[data-service="default/rebel-base"] [data-backend-cluster]')]
    .filter(e => e.querySelector('li[data-state="active"]')).map(e => e.dataset.backendCluster),
  workloads: [...document.querySelectorAll('#map g.workload')].map(e => e.dataset.workload),
  denied_edges: [...document.querySelectorAll('#map g.edge[data-reason="policy_denied"]')].map(e => e.textContent),
  forwarded_edges: document.querySelectorAll('#map g.edge[data-verdict="FORWARDED"]').length,
  rows: [...document.querySelectorAll('#flows tbody tr')].map(e => e.dataset.verdict),
  denied_rows: [...document.querySelectorAll('#flows tbody tr[data-verdict="DROPPED"]')].map(e => e.textContent),
  filter_error: document.getElementById('filter-error').hidden ? null : document.getElementById('filter-error').textContent,
})"#;

#[test]
fn the_service_map_shows_the_demo_in_a_browser() {
    if !needs_root("the_service_map_shows_the_demo_in_a_browser") {
        return;
    }
    std::env::set_var("MESHPATH_BIN", env!("CARGO_BIN_EXE_meshpath"));
    let prefix = format!("u{}", std::process::id() % 100_000);
    let scene = Scene::build(&prefix, MeshOptions::default(), 1).expect("the demo's lab");
    steps::wait_for_mesh(&scene).expect("the clusters mesh");
    let sockets: Vec<PathBuf> = [(1, 1), (1, 2), (2, 1), (2, 2)]
        .iter()
        .map(|(c, n)| mesh::socket(&prefix, *c, *n))
        .collect();
    let (ui, url) = UiServer::start(&sockets);
    let stop = AtomicBool::new(false);
    std::thread::scope(|threads| {
        // The demo's traffic: x-wing in each cluster calls the global service, all along.
        threads.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                for c in [1, 2] {
                    let _ = steps::call_service(&scene, c, 3);
                }
            }
        });
        // The denied flow: the cross-cluster policy's step (in force a moment, then lifted).
        let policy = steps::policy(&scene);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let report = policy.expect("the policy step");
            assert!(report.local_denied, "the policy denied: {report:?}");
            in_the_browser(&url, &prefix);
            save_flows(&sockets);
        }));
        stop.store(true, Ordering::Relaxed);
        drop(ui);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    });
}

fn in_the_browser(url: &str, prefix: &str) {
    let mut browser = Browser::launch(&std::env::temp_dir().join(format!("{prefix}-chromium")));
    let tab = browser.open(url, 1400, 960);
    let seen = until("the page to show the demo", Duration::from_secs(45), || {
        let shown: Value = probe(&mut browser, &tab);
        let has = |key: &str, what: &str| {
            shown[key]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(what)))
        };
        let clusters = ["cluster1", "cluster2"]
            .iter()
            .all(|c| has("clusters", c) && has("map_clusters", c) && has("rebel_backends", c));
        let denied = shown["denied_edges"].as_array().is_some_and(|edges| {
            edges
                .iter()
                .any(|e| e.as_str().unwrap_or("").contains("Policy denied"))
        });
        let rebel_base = has("workloads", "cluster1/default/rebel-base")
            && has("workloads", "cluster2/default/rebel-base")
            && has("workloads", "cluster1/default/x-wing");
        let forwarded = shown["forwarded_edges"].as_u64() > Some(0);
        match clusters && denied && rebel_base && forwarded {
            true => Ok(shown),
            false => Err(shown),
        }
    })
    .unwrap_or_else(|timeout| panic!("{timeout}"));
    let denied_row = seen["denied_rows"]
        .as_array()
        .and_then(|rows| rows.first())
        .cloned();
    let artefacts = artefacts();
    std::fs::write(artefacts.join("ui.png"), browser.screenshot(&tab)).unwrap();

    // A laptop's window: the page does not run off its right edge, the map is laid out anew for it.
    browser.resize(&tab, 1024, 700);
    until("the page to fit 1024 px", Duration::from_secs(10), || {
        let fits = "document.documentElement.scrollWidth <= window.innerWidth \
             && document.querySelector('#map svg').getBoundingClientRect().width \
                <= document.getElementById('map').clientWidth";
        match browser.evaluate(&tab, fits) {
            Ok(Value::Bool(true)) => Ok(()),
            other => Err(other),
        }
    })
    .unwrap_or_else(|timeout| panic!("{timeout}"));
    std::fs::write(artefacts.join("ui-1024.png"), browser.screenshot(&tab)).unwrap();
    browser.resize(&tab, 1400, 960);

    // The filter line: a bad one is named; `--verdict dropped` leaves only drops.
    set_filter(&mut browser, &tab, "--verdict maybe");
    until(
        "the bad filter to be named",
        Duration::from_secs(10),
        || {
            let shown = probe(&mut browser, &tab);
            match shown["filter_error"].as_str() {
                Some(error) if error.contains("maybe") => Ok(()),
                _ => Err(shown),
            }
        },
    )
    .unwrap_or_else(|timeout| panic!("{timeout}"));
    set_filter(&mut browser, &tab, "--verdict dropped");
    until("only drops in the table", Duration::from_secs(10), || {
        let shown = probe(&mut browser, &tab);
        let rows = shown["rows"].as_array().cloned().unwrap_or_default();
        let only_drops = !rows.is_empty() && rows.iter().all(|r| r == "DROPPED");
        match only_drops && shown["forwarded_edges"] == 0 && shown["filter_error"].is_null() {
            true => Ok(()),
            false => Err(shown),
        }
    })
    .unwrap_or_else(|timeout| panic!("{timeout}; a drop seen before: {denied_row:?}"));
}

/// What the page shows; while it is still loading, what went wrong reading it.
fn probe(browser: &mut Browser, tab: &browser::Tab) -> Value {
    match browser.evaluate(tab, PROBE) {
        Ok(text) => serde_json::from_str(text.as_str().unwrap_or("null")).unwrap_or(Value::Null),
        Err(exception) => exception,
    }
}

fn set_filter(browser: &mut Browser, tab: &browser::Tab, filter: &str) {
    let filter = serde_json::to_string(filter).unwrap();
    let submit = format!(
        "document.getElementById('filter').value = {filter}; \
         document.getElementById('filter-form').requestSubmit(); true"
    );
    browser
        .evaluate(tab, &submit)
        .unwrap_or_else(|e| panic!("setting the filter: {e}"));
}

/// The agents' kept flows as `meshpath observe -o json` prints them, beside the screenshot.
fn save_flows(sockets: &[PathBuf]) {
    let mut lines = String::new();
    for socket in sockets {
        let all = meshpath_api::client::ObserveRequest::default();
        let _ = meshpath_api::Client::new(socket).observe(&all, |event| {
            lines += &serde_json::to_string(&event).unwrap();
            lines.push('\n');
            true
        });
    }
    std::fs::write(artefacts().join("ui-flows.jsonl"), lines).unwrap();
}

/// `target/test-artefacts`, made if need be.
fn artefacts() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = target.parent().unwrap_or(&target).join("test-artefacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `meshpath ui` on a port of its own choosing, killed on drop.
struct UiServer(Child);

impl UiServer {
    fn start(sockets: &[PathBuf]) -> (UiServer, String) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_meshpath"));
        command.args(["ui", "--listen", "127.0.0.1:0"]);
        for socket in sockets {
            command.arg("--socket").arg(socket);
        }
        let mut child = command
            .env_remove("MESHPATH_SOCKET")
            .stdout(Stdio::piped())
            .spawn()
            .expect("meshpath ui starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("meshpath ui names its address: {line:?}"))
            .to_owned();
        (UiServer(child), url)
    }
}

impl Drop for UiServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
