//! A steady stream of new connections from x-wing to the global service while the failover happens:
//! `stream.py` in x-wing's pod issues a request every 1/rate seconds, each on a new TCP connection,
//! and reports every one of them, so a request that fails during a transition is counted, never
//! skipped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context;
use serde::{Deserialize, Serialize};

const SCRIPT: &str = include_str!("stream.py");

/// One request's fate.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Answer {
    /// When it was issued, Unix milliseconds.
    pub issued_ms: u64,
    /// The answering cluster's name; `None`: it failed.
    pub answer: Option<String>,
    /// Why it failed: refused, reset, connect timeout, answer timeout, bad answer.
    #[serde(default)]
    pub error: Option<String>,
    /// When it was over (answered or failed), Unix milliseconds.
    #[serde(default)]
    pub over_ms: u64,
    /// Its local port, to find it in a capture or a flow log.
    #[serde(default)]
    pub port: Option<u16>,
}

/// A failed request, placed in its window: milliseconds from the window's start.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Failure {
    pub issued_at_ms: u64,
    pub over_at_ms: u64,
    pub error: String,
    pub port: Option<u16>,
}

/// Requests in a window of time, by outcome.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub issued: u64,
    pub per_cluster: BTreeMap<String, u64>,
    pub failed: u64,
    /// The failed ones by why.
    pub failures: BTreeMap<String, u64>,
    /// Each failed one.
    pub failed_requests: Vec<Failure>,
}

pub struct Stream {
    child: Child,
    reader: JoinHandle<()>,
    answers: Arc<Mutex<Vec<Answer>>>,
}

impl Stream {
    /// Starts `rate` requests a second from the pod in `netns` to `host:port`.
    pub fn start(netns: &str, host: &str, port: u16, rate: u32) -> anyhow::Result<Stream> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "python3", "-c", SCRIPT])
            .args([host, &port.to_string(), &rate.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the failover's request stream (python3)")?;
        let stdout = child.stdout.take().context("the stream's output")?;
        let answers = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&answers);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(answer) = serde_json::from_str::<Answer>(&line) {
                    collected
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(answer);
                }
            }
        });
        Ok(Stream {
            child,
            reader,
            answers,
        })
    }

    /// Stops issuing, waits for the requests in flight; every request's fate.
    pub fn stop(mut self) -> anyhow::Result<Vec<Answer>> {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        self.child
            .wait()
            .context("waiting for the request stream")?;
        let _ = self.reader.join();
        let answers = std::mem::take(&mut *self.answers.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(answers)
    }
}

/// The requests issued from `from_ms` (inclusive) to `to_ms` (exclusive).
pub fn tally(answers: &[Answer], from_ms: u64, to_ms: u64) -> Tally {
    let mut tally = Tally::default();
    for a in answers
        .iter()
        .filter(|a| (from_ms..to_ms).contains(&a.issued_ms))
    {
        tally.issued += 1;
        match &a.answer {
            Some(cluster) => *tally.per_cluster.entry(cluster.clone()).or_default() += 1,
            None => {
                tally.failed += 1;
                let why = a.error.as_deref().unwrap_or("unknown");
                *tally.failures.entry(why.to_owned()).or_default() += 1;
                tally.failed_requests.push(Failure {
                    issued_at_ms: a.issued_ms - from_ms,
                    over_at_ms: a.over_ms.saturating_sub(from_ms),
                    error: why.to_owned(),
                    port: a.port,
                });
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_what_was_issued_in_it_failures_included() {
        let answer = |issued_ms, cluster: Option<&str>| Answer {
            issued_ms,
            answer: cluster.map(str::to_owned),
            error: cluster.is_none().then(|| "refused".to_owned()),
            over_ms: issued_ms + 3,
            port: Some(40000),
        };
        let answers = [
            answer(99, Some("cluster2")),
            answer(100, Some("cluster1")),
            answer(150, None),
            answer(199, Some("cluster1")),
            answer(200, Some("cluster2")),
        ];
        assert_eq!(
            tally(&answers, 100, 200),
            Tally {
                issued: 3,
                per_cluster: BTreeMap::from([("cluster1".to_owned(), 2)]),
                failed: 1,
                failures: BTreeMap::from([("refused".to_owned(), 1)]),
                failed_requests: vec![Failure {
                    issued_at_ms: 50,
                    over_at_ms: 53,
                    error: "refused".to_owned(),
                    port: Some(40000),
                }],
            }
        );
    }

    #[test]
    fn the_script_reports_a_refused_connect_with_its_port() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let child = Command::new("python3")
            .args(["-c", SCRIPT, "127.0.0.1", &port.to_string(), "20"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (scripts/setup-host installs it)");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let out = child.wait_with_output().unwrap();
        let answers: Vec<Answer> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(!answers.is_empty());
        for a in answers {
            assert_eq!((a.answer, a.error.as_deref()), (None, Some("refused")));
            assert!(a.over_ms >= a.issued_ms);
            assert!(a.port.is_some_and(|p| p != 0 && p != port));
        }
    }

    #[test]
    fn the_script_speaks_the_lines_answer_reads() {
        let line = r#"{"issued_ms": 1732990000000, "answer": null, "error": "reset",
            "over_ms": 1732990000004, "port": 40312}"#;
        let parsed: Answer = serde_json::from_str(line).unwrap();
        assert_eq!(parsed.answer, None);
        assert_eq!(parsed.error.as_deref(), Some("reset"));
        assert_eq!((parsed.over_ms, parsed.port), (1732990000004, Some(40312)));
        assert!(SCRIPT.contains(r#"{"issued_ms": issued_ms, "answer": answer, "error": error,"#));
        assert!(SCRIPT.contains(r#""over_ms": int(time.time() * 1000), "port": local_port}"#));
    }
}
