//! Debian's chromium, headless, driven through the DevTools protocol (CDP) over its WebSocket: the
//! little the browser tests need — open a page, evaluate an expression in it, set the window's size,
//! take a screenshot. The browser and its profile go away on drop.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// How long one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Browser {
    child: Child,
    profile: PathBuf,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

/// One tab, attached in flat mode: its commands carry its session id.
pub struct Tab {
    session: String,
}

impl Browser {
    /// Starts chromium headless with a profile of its own, and connects to its DevTools socket,
    /// whose address it prints on stderr once it listens.
    pub fn launch(profile: &Path) -> Browser {
        let binary =
            which("chromium").expect("chromium is missing: scripts/setup-host installs it");
        std::fs::create_dir_all(profile).unwrap();
        let mut child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Reads stderr to its end, so chromium never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium prints its DevTools address within 30 s");
        let (socket, _) = tungstenite::connect(url.as_str()).expect("DevTools WebSocket");
        if let MaybeTlsStream::Plain(tcp) = socket.get_ref() {
            tcp.set_read_timeout(Some(COMMAND_TIMEOUT)).unwrap();
        }
        Browser {
            child,
            profile: profile.to_owned(),
            socket,
            next_id: 0,
        }
    }

    /// Sends one command and waits for its answer (events in between are let go).
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::text(message.to_string()))
            .unwrap_or_else(|e| panic!("sending {method}: {e}"));
        loop {
            let answer = self
                .socket
                .read()
                .unwrap_or_else(|e| panic!("waiting for {method}'s answer: {e}"));
            let Message::Text(text) = answer else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] != json!(id) {
                continue;
            }
            if let Some(error) = answer.get("error") {
                panic!("{method}: {error}");
            }
            return answer["result"].clone();
        }
    }

    /// A new tab of `width`×`height` showing `url`.
    pub fn open(&mut self, url: &str, width: u32, height: u32) -> Tab {
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        let tab = Tab {
            session: attached["sessionId"].as_str().unwrap().to_owned(),
        };
        self.resize(&tab, width, height);
        self.call(Some(&tab.session), "Page.navigate", json!({"url": url}));
        tab
    }

    /// Gives the tab a window of `width`×`height`.
    pub fn resize(&mut self, tab: &Tab, width: u32, height: u32) {
        let metrics =
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false});
        self.call(
            Some(&tab.session),
            "Emulation.setDeviceMetricsOverride",
            metrics,
        );
    }

    /// The value of a JavaScript expression in the tab (a string, number, boolean or null), or the
    /// exception it threw.
    pub fn evaluate(&mut self, tab: &Tab, expression: &str) -> Result<Value, Value> {
        let result = self.call(
            Some(&tab.session),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        match result.get("exceptionDetails") {
            Some(exception) => Err(exception["exception"]["description"].clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// The tab as it shows now, as PNG.
    pub fn screenshot(&mut self, tab: &Tab) -> Vec<u8> {
        let shot = self.call(
            Some(&tab.session),
            "Page.captureScreenshot",
            json!({"format": "png"}),
        );
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Asked to close, chromium ends its helper processes too; killed, it might leave them.
        let close = json!({"id": 0, "method": "Browser.close"});
        let _ = self.socket.send(Message::text(close.to_string()));
        let closed = meshpath_testkit::until("chromium to exit", Duration::from_secs(10), || {
            match self.child.try_wait() {
                Ok(Some(_)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        if closed.is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
