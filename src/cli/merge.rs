//! One agent's observe stream, or several merged in time order — the mesh-wide view Hubble Relay
//! gives of its nodes. Each agent is read by a thread of its own. Without `--follow` the kept events
//! of all are sorted by time and the last N of them shown; with it, events are held back for
//! [`MERGE_WINDOW`] so that one from a slower agent still comes out in its place. An agent that
//! cannot be read is reported and the others are shown; only if none can be read is it an error.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use meshpath_api::client::ObserveRequest;
use meshpath_api::flow::{FlowResponse, FlowTime};
use meshpath_api::{Client, ClientError};

use super::observe::MERGE_WINDOW;

enum Message {
    Event(FlowResponse),
    Failed(ClientError),
    Done,
}

pub fn observe(
    sockets: &[PathBuf],
    request: &ObserveRequest,
    mut print: impl FnMut(&FlowResponse) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    if let [socket] = sockets {
        let mut failed = None;
        Client::new(socket).observe(request, |event| match print(&event) {
            Ok(()) => true,
            Err(error) => {
                failed = Some(error);
                false
            }
        })?;
        return failed.map_or(Ok(ExitCode::SUCCESS), Err);
    }
    let messages = spawn_readers(sockets, request);
    match request.follow {
        false => print_sorted(messages, sockets.len(), request.last, &mut print),
        true => print_merged(messages, sockets.len(), &mut print),
    }
}

/// One thread per agent, each sending what it reads (and then `Done`).
fn spawn_readers(sockets: &[PathBuf], request: &ObserveRequest) -> mpsc::Receiver<Message> {
    let (tx, rx) = mpsc::channel();
    for socket in sockets {
        let (tx, socket, request) = (tx.clone(), socket.clone(), request.clone());
        std::thread::spawn(move || {
            let read = Client::new(&socket)
                .observe(&request, |event| tx.send(Message::Event(event)).is_ok());
            let last = match read {
                Ok(()) => Message::Done,
                Err(error) => Message::Failed(error),
            };
            let _ = tx.send(last);
        });
    }
    rx
}

/// Every agent's kept events, sorted by time, the last `last` of them.
fn print_sorted(
    messages: mpsc::Receiver<Message>,
    agents: usize,
    last: Option<u64>,
    print: &mut impl FnMut(&FlowResponse) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let mut events = Vec::new();
    let mut tally = Tally::new(agents);
    while !tally.all_done() {
        match messages.recv() {
            Ok(Message::Event(event)) => events.push(event),
            Ok(other) => tally.note(other),
            Err(_) => break,
        }
    }
    events.sort_by_key(|e| e.time);
    let skip = last.map_or(0, |n| events.len().saturating_sub(n as usize));
    for event in &events[skip..] {
        print(event)?;
    }
    tally.exit()
}

/// Every agent's events as they come, in time order within the merge window.
fn print_merged(
    messages: mpsc::Receiver<Message>,
    agents: usize,
    print: &mut impl FnMut(&FlowResponse) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let mut held: BinaryHeap<Reverse<Held>> = BinaryHeap::new();
    let mut tally = Tally::new(agents);
    let mut arrival = 0u64;
    // The agents' kept events all arrive at first: hold them for a window before the first is out.
    let started = Instant::now();
    while !tally.all_done() || !held.is_empty() {
        match messages.recv_timeout(MERGE_WINDOW / 5) {
            Ok(Message::Event(event)) => {
                arrival += 1;
                held.push(Reverse(Held(event.time, arrival, event)));
            }
            Ok(other) => tally.note(other),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) if held.is_empty() => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        let ripe = ripe_before(started, tally.all_done());
        while held.peek().is_some_and(|Reverse(h)| h.0 <= ripe) {
            if let Some(Reverse(Held(_, _, event))) = held.pop() {
                print(&event)?;
            }
        }
    }
    tally.exit()
}

/// Events of this time or before may go out: those older than the window, everything once every
/// stream ended, nothing in the first window.
fn ripe_before(started: Instant, ended: bool) -> FlowTime {
    if ended {
        return FlowTime(SystemTime::now() + Duration::from_secs(3600 * 24 * 365));
    }
    if started.elapsed() < MERGE_WINDOW {
        return FlowTime(SystemTime::UNIX_EPOCH);
    }
    FlowTime(SystemTime::now() - MERGE_WINDOW)
}

/// An event held back, ordered by its time, then by arrival.
struct Held(FlowTime, u64, FlowResponse);

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.0, self.1) == (other.0, other.1)
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(other.0, other.1))
    }
}

/// Which agents are done, and which failed.
struct Tally {
    agents: usize,
    done: usize,
    failed: usize,
}

impl Tally {
    fn new(agents: usize) -> Tally {
        Tally {
            agents,
            done: 0,
            failed: 0,
        }
    }

    fn note(&mut self, message: Message) {
        self.done += 1;
        if let Message::Failed(error) = message {
            eprintln!("meshpath: {error}");
            self.failed += 1;
        }
    }

    fn all_done(&self) -> bool {
        self.done >= self.agents
    }

    fn exit(&self) -> anyhow::Result<ExitCode> {
        match self.failed {
            0 => Ok(ExitCode::SUCCESS),
            n if n == self.agents => anyhow::bail!("no agent could be read"),
            _ => Ok(ExitCode::FAILURE),
        }
    }
}
