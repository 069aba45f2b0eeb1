//! The distance to a remote cluster: a TCP relay in front of its etcd that holds every chunk it
//! carries for a fixed time in each direction, so the watcher's connection (TLS inside, untouched)
//! has a round trip of twice that. This kernel has no netem, hence userspace; the relay runs on a
//! thread and runtime of its own, never on the runtime being measured. It adds latency only, not a
//! bandwidth limit or loss.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Chunks in flight per direction of one connection before reading pauses.
const IN_FLIGHT: usize = 4096;

pub struct DelayRelay {
    pub addr: SocketAddr,
    cancel: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DelayRelay {
    /// Listens on a free port of 127.0.0.1 and relays each connection to `upstream`, `delay` late
    /// each way.
    pub fn start(upstream: SocketAddr, delay: Duration) -> anyhow::Result<DelayRelay> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("delay-relay".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        () = accept(listener, upstream, delay) => {}
                        () = stop.cancelled() => {}
                    }
                });
            })
            .context("starting the delay relay's thread")?;
        Ok(DelayRelay {
            addr,
            cancel,
            thread: Some(thread),
        })
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, delay: Duration) {
    while let Ok((client, _)) = listener.accept().await {
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_rx, client_tx) = client.into_split();
            let (server_rx, server_tx) = server.into_split();
            tokio::join!(
                carry(client_rx, server_tx, delay),
                carry(server_rx, client_tx, delay)
            );
        });
    }
}

/// Carries one direction: each chunk read is written `delay` after it was read, in order.
async fn carry(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_whole_in_order_and_a_round_trip_takes_twice_the_delay() {
        let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut reader = s.try_clone().unwrap();
            std::io::copy(&mut reader, &mut s).unwrap();
        });
        let delay = Duration::from_millis(40);
        let relay = DelayRelay::start(upstream, delay).unwrap();
        let mut conn = std::net::TcpStream::connect(relay.addr).unwrap();
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let started = std::time::Instant::now();
        let writer = {
            let mut conn = conn.try_clone().unwrap();
            let sent = sent.clone();
            std::thread::spawn(move || std::io::Write::write_all(&mut conn, &sent).unwrap())
        };
        let mut got = vec![0u8; sent.len()];
        std::io::Read::read_exact(&mut conn, &mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(got, sent);
        assert!(
            started.elapsed() >= 2 * delay,
            "no byte can come back sooner than one round trip"
        );
    }
}
