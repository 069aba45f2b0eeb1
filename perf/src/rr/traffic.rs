//! TCP request/response as netperf's TCP_RR does it: each connection sends one byte and waits for
//! the one-byte answer before the next, so a connection's rate is the inverse of its round trip.
//! Sockets are made inside the lab's namespaces (a socket stays in the namespace it was made in),
//! then driven by threads of this process: a thread per connection on both sides.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

use crate::forward::inside;

/// One byte answered by one byte, for as long as the client keeps the connection.
pub struct Server {
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on `port` of every address of namespace `ns`.
    pub fn start(ns: &str, port: u16) -> anyhow::Result<Server> {
        let listener = inside(ns, || {
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                .with_context(|| format!("listening on port {port} in {ns}"))
        })?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let acceptor = std::thread::Builder::new()
            .name("rr-server".into())
            .spawn(move || accept(&listener, &stopping))?;
        Ok(Server {
            stop,
            acceptor: Some(acceptor),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = std::thread::Builder::new()
                    .name("rr-answer".into())
                    .spawn(move || answer(stream));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Answers each byte with a byte until the client closes.
fn answer(mut stream: TcpStream) {
    if stream.set_nonblocking(false).is_err() || stream.set_nodelay(true).is_err() {
        return;
    }
    let mut byte = [0u8; 1];
    while matches!(stream.read(&mut byte), Ok(1)) {
        if stream.write_all(&byte).is_err() {
            return;
        }
    }
}

/// What one connection did in the counted window.
#[derive(Debug)]
pub struct ConnectionResult {
    pub transactions: u64,
    pub latency_ns: Histogram<u64>,
}

/// A measurement: `connections` connections from namespace `ns` to `server`, each doing
/// transactions for `warmup` (not counted) then `window` (counted).
pub fn measure(
    ns: &str,
    server: SocketAddr,
    connections: usize,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<Vec<ConnectionResult>> {
    let streams = inside(ns, || {
        (0..connections)
            .map(|_| {
                let stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))
                    .with_context(|| format!("connecting to {server} from {ns}"))?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                Ok(stream)
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let start = Arc::new(Barrier::new(connections + 1));
    let threads: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let start = start.clone();
            std::thread::Builder::new()
                .name("rr-client".into())
                .spawn(move || {
                    start.wait();
                    let counted = Instant::now() + warmup;
                    transact(stream, counted, counted + window)
                })
        })
        .collect::<std::io::Result<_>>()?;
    start.wait();
    threads
        .into_iter()
        .map(|t| {
            t.join()
                .unwrap_or_else(|_| anyhow::bail!("a client thread panicked"))
        })
        .collect()
}

/// Transactions until `end`, those that finish from `counted` on counted and timed.
fn transact(
    mut stream: TcpStream,
    counted: Instant,
    end: Instant,
) -> anyhow::Result<ConnectionResult> {
    let mut latency_ns = Histogram::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut transactions = 0;
    let mut byte = [1u8; 1];
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        stream.write_all(&byte).context("sending a request")?;
        stream.read_exact(&mut byte).context("reading an answer")?;
        let done = Instant::now();
        if done >= counted && done < end {
            transactions += 1;
            latency_ns.saturating_record((done - sent).as_nanos() as u64);
        }
    }
    Ok(ConnectionResult {
        transactions,
        latency_ns,
    })
}
