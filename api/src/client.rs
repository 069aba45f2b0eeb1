//! Reading a running agent: its status document from the status socket (one JSON document per
//! connection, then the agent closes it) and its flows from the observe socket beside it
//! (`<status-socket>.observe`: the client sends one [`ObserveRequest`] line, the agent answers one
//! JSON [`FlowResponse`] per line, flows and lost events, as Hubble's `GetFlowsResponse`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::flow::{FlowResponse, FlowTime};
use crate::flow_filter::FlowFilters;
use crate::status::AgentStatus;

/// Where the agent serves its status unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/meshpath/agent.sock";

/// How long a client waits for an agent that accepted the connection to answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a reader of the status socket asks for, as its first line. An agent waits a moment for it,
/// and none is a request for the full document: the client sends none for that, so that agents that
/// predate requests answer it too (one of those, asked for a summary, resets the connection and is
/// asked again without a request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRequest {
    pub view: StatusView,
}

/// How much of the status document to answer with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusView {
    /// Everything, with every service, node, identity and policy.
    #[default]
    Full,
    /// Health, versions, counters and sizes, without the lists: cheap at any scale.
    Summary,
}

/// What an observer asks for, as its first line on the observe socket: the agent filters, so only
/// what is wanted crosses the socket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObserveRequest {
    /// After the events the agent kept, every new one until the observer hangs up (or `until`).
    pub follow: bool,
    /// Of the events kept that pass, only the last so many; none: all of them.
    #[serde(default)]
    pub last: Option<u64>,
    /// Only events from this time on.
    #[serde(default)]
    pub since: Option<FlowTime>,
    /// Only events up to this time; a follower's stream ends there.
    #[serde(default)]
    pub until: Option<FlowTime>,
    #[serde(default)]
    pub filters: FlowFilters,
}

/// The observe socket's path beside the status socket's.
pub fn observe_socket(status_socket: &Path) -> PathBuf {
    let mut path = status_socket.as_os_str().to_owned();
    path.push(".observe");
    PathBuf::from(path)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent answers on {}: {source}", socket.display())]
    Connect { socket: PathBuf, source: io::Error },
    #[error("the agent on {} did not answer within {}s", socket.display(), after.as_secs_f32())]
    Timeout { socket: PathBuf, after: Duration },
    #[error("talking to the agent on {}: {source}", socket.display())]
    Io { socket: PathBuf, source: io::Error },
    #[error(
        "the agent on {} answered what this meshpath cannot read (are the agent and the CLI of different versions?): {source}",
        socket.display()
    )]
    Decode {
        socket: PathBuf,
        source: serde_json::Error,
    },
}

/// A client of one agent, by its status socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(status_socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: status_socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// How long to wait for each answer (not for the next flow of a followed stream).
    pub fn with_timeout(self, timeout: Duration) -> Client {
        Client { timeout, ..self }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The agent's whole status document.
    pub fn status(&self) -> Result<AgentStatus, ClientError> {
        self.status_view(None)
    }

    /// The agent's status document without its lists (services, nodes, identities, policies).
    pub fn summary(&self) -> Result<AgentStatus, ClientError> {
        let summary = StatusRequest {
            view: StatusView::Summary,
        };
        match self.status_view(Some(summary)) {
            Err(ClientError::Io { source, .. })
                if matches!(
                    source.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) =>
            {
                self.status_view(None)
            }
            answer => answer,
        }
    }

    fn status_view(&self, request: Option<StatusRequest>) -> Result<AgentStatus, ClientError> {
        let mut stream = self.connect(&self.socket)?;
        if let Some(request) = request {
            let mut line = serde_json::to_vec(&request).unwrap_or_default();
            line.push(b'\n');
            stream
                .write_all(&line)
                .map_err(|e| self.io(&self.socket, e))?;
        }
        let mut body = Vec::new();
        stream
            .read_to_end(&mut body)
            .map_err(|e| self.io(&self.socket, e))?;
        serde_json::from_slice(&body).map_err(|source| ClientError::Decode {
            socket: self.socket.clone(),
            source,
        })
    }

    /// Calls `each` with every event the agent kept that `request` wants, then (with `follow`) every
    /// new one, until the agent closes the stream or `each` returns `false`.
    pub fn observe(
        &self,
        request: &ObserveRequest,
        mut each: impl FnMut(FlowResponse) -> bool,
    ) -> Result<(), ClientError> {
        let path = observe_socket(&self.socket);
        let mut stream = self.connect(&path)?;
        let mut line = serde_json::to_vec(request).unwrap_or_default();
        line.push(b'\n');
        stream.write_all(&line).map_err(|e| self.io(&path, e))?;
        if request.follow {
            // A quiet node sends nothing for as long as it stays quiet.
            stream
                .set_read_timeout(None)
                .map_err(|e| self.io(&path, e))?;
        }
        for line in BufReader::new(stream).lines() {
            let line = line.map_err(|e| self.io(&path, e))?;
            let flow = serde_json::from_str(&line).map_err(|source| ClientError::Decode {
                socket: path.clone(),
                source,
            })?;
            if !each(flow) {
                break;
            }
        }
        Ok(())
    }

    fn connect(&self, path: &Path) -> Result<UnixStream, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            socket: path.to_owned(),
            source,
        })?;
        let timeouts = stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)));
        timeouts.map_err(|e| self.io(path, e))?;
        Ok(stream)
    }

    fn io(&self, path: &Path, source: io::Error) -> ClientError {
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
                socket: path.to_owned(),
                after: self.timeout,
            },
            _ => ClientError::Io {
                socket: path.to_owned(),
                source,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn socket(test: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("mp-api-{}-{test}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn a_missing_agent_is_named() {
        let path = socket("missing");
        let error = Client::new(&path).status().unwrap_err();
        assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");
        let text = error.to_string();
        assert!(text.starts_with("no agent answers on "), "{text}");
        assert!(text.contains(&*path.to_string_lossy()), "{text}");
    }

    #[test]
    fn a_silent_agent_times_out() {
        let path = socket("silent");
        let listener = UnixListener::bind(&path).unwrap();
        // Accepts and holds the connection without answering.
        let holder = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
        let client = Client::new(&path).with_timeout(Duration::from_millis(50));
        let error = client.status().unwrap_err();
        assert!(matches!(error, ClientError::Timeout { .. }), "{error:?}");
        assert!(
            error.to_string().contains("did not answer within 0.05s"),
            "{error}"
        );
        drop(holder.join());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let path = socket("garbage");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.write_all(b"{\"cluster\": 1}").unwrap();
        });
        let error = Client::new(&path).status().unwrap_err();
        assert!(matches!(error, ClientError::Decode { .. }), "{error:?}");
        assert!(error.to_string().contains("cannot read"), "{error}");
        let _ = std::fs::remove_file(&path);
    }

    const OLD_STATUS: &str = r#"{"cluster":"c1","node":"n1",
        "dataplane":{"received":5,"forwarded":{},"dropped":{},"ports":[]},
        "tables":{"endpoints":1,"ipcache":2,"services":0,"nodes":1},
        "services":[],"clustermesh":null,"nodes":[]}"#;

    #[test]
    fn a_summary_is_asked_for() {
        let path = socket("summary");
        let listener = UnixListener::bind(&path).unwrap();
        let agent = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut request = String::new();
            BufReader::new(&stream).read_line(&mut request).unwrap();
            let _ = (&stream).write_all(OLD_STATUS.as_bytes());
            request
        });
        let status = Client::new(&path).summary().unwrap();
        assert_eq!(status.cluster, "c1");
        let request: StatusRequest = serde_json::from_str(&agent.join().unwrap()).unwrap();
        assert_eq!(request.view, StatusView::Summary);
        let _ = std::fs::remove_file(&path);
    }

    /// An agent that predates requests answers and closes without reading: asked for a summary, it
    /// resets the connection, and is asked again without a request.
    #[test]
    fn old_agents_still_answer_a_summary() {
        let path = socket("old-agent");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let _ = stream.write_all(OLD_STATUS.as_bytes());
            }
        });
        for _ in 0..20 {
            let status = Client::new(&path).summary().unwrap();
            assert_eq!(status.node, "n1");
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn observe_sends_its_request_and_reads_flows_until_told_to_stop() {
        let status = socket("observe");
        let path = observe_socket(&status);
        assert_eq!(
            path.file_name().unwrap(),
            &*format!("mp-api-{}-observe.sock.observe", std::process::id())
        );
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let flow = r#"{"flow":{"time":"2023-11-14T22:13:20.123Z","verdict":"FORWARDED","IP":{"source":"10.0.0.1","destination":"10.0.0.2","ipVersion":"IPv4"},"l4":{"UDP":{"source_port":1,"destination_port":2}},"source":{"identity":1},"destination":{"identity":2},"Type":"L3_L4","node_name":"c1/n1","event_type":{"type":4},"traffic_direction":"EGRESS","trace_observation_point":"TO_ENDPOINT","is_reply":false,"Summary":"UDP","extensions":{"@type":"type.googleapis.com/meshpath.FlowDetails","forward":"local_pod","arrival":"from_pod"}},"node_name":"c1/n1","time":"2023-11-14T22:13:20.123Z"}"#;
        let agent = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut request = String::new();
            BufReader::new(&stream).read_line(&mut request).unwrap();
            let mut stream = stream;
            for _ in 0..3 {
                let _ = writeln!(stream, "{flow}");
            }
            request
        });
        let mut seen = 0;
        let asked = ObserveRequest {
            follow: true,
            last: Some(5),
            ..Default::default()
        };
        Client::new(&status)
            .observe(&asked, |event| {
                let forward = event.flow().and_then(|f| f.extensions.forward);
                assert_eq!(forward, Some(crate::ForwardKind::LocalPod));
                seen += 1;
                seen < 2
            })
            .unwrap();
        assert_eq!(seen, 2);
        let request: ObserveRequest = serde_json::from_str(&agent.join().unwrap()).unwrap();
        assert_eq!(request, asked);
        let _ = std::fs::remove_file(&path);
    }
}
