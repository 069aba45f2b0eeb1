//! The agent's unix sockets (status and observe) and the rules every connection to them follows.
//!
//! A socket is bound under a temporary name, given mode 0600 (0660 and the configured group with
//! `socket-group`), and only then renamed into place, so there is no moment at which the umask's
//! mode lets anyone else connect. Each connection is served by a task of its own: a client that
//! connects and never reads, or never finishes its request, holds only its own task, and only until
//! its deadline ([`REQUEST_TIMEOUT`] to send a request of at most [`REQUEST_LIMIT`] bytes,
//! [`WRITE_TIMEOUT`] for each answer to be taken).

use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// Longest request line a client may send.
pub const REQUEST_LIMIT: usize = 16 * 1024;
/// How long a client has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one answer (a document, a line of a stream) may wait for the client to take it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who may connect besides root: nobody, or the members of one group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    pub group: Option<u32>,
}

impl Access {
    fn mode(self) -> u32 {
        match self.group {
            Some(_) => 0o660,
            None => 0o600,
        }
    }
}

/// A connection broke one of the rules, or the client went away.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("the request is longer than {REQUEST_LIMIT} bytes")]
    RequestTooLong,
    #[error("no request within {}s", REQUEST_TIMEOUT.as_secs())]
    RequestTimeout,
    #[error("the client took no answer within {}s", WRITE_TIMEOUT.as_secs())]
    WriteTimeout,
    #[error("the request is not a request: {0}")]
    BadRequest(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Binds `path` with the mode and group of `access`, replacing a stale socket left there.
pub fn bind(path: &Path, access: Access) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let staging = staging_path(path);
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging)?;
    let placed = std::os::unix::fs::chown(&staging, None, access.group)
        .and_then(|()| {
            std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(access.mode()))
        })
        .and_then(|()| std::fs::rename(&staging, path));
    if let Err(error) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(error);
    }
    Ok(listener)
}

fn staging_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.new", std::process::id()));
    PathBuf::from(name)
}

/// Accepts connections until `cancel`, each served by `serve` in a task of its own (cancelled with
/// the rest); a connection's error is logged at debug level, as clients hanging up are routine.
pub async fn accept<F, Fut>(
    listener: UnixListener,
    path: &Path,
    cancel: CancellationToken,
    serve: F,
) -> io::Result<()>
where
    F: Fn(UnixStream) -> Fut,
    Fut: Future<Output = Result<(), ConnectionError>> + Send + 'static,
{
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of descriptors and the like: the listener itself is fine; try the next one.
                Err(error) => {
                    tracing::warn!(%error, socket = %path.display(), "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let connection = serve(stream);
        let cancel = cancel.clone();
        let socket = path.display().to_string();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                done = connection => if let Err(error) = done {
                    tracing::debug!(%error, %socket, "connection ended");
                },
            }
        });
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Reads one request line of at most [`REQUEST_LIMIT`] bytes within [`REQUEST_TIMEOUT`].
pub async fn read_request<R, T>(reader: R) -> Result<T, ConnectionError>
where
    R: tokio::io::AsyncRead + Unpin,
    T: serde::de::DeserializeOwned,
{
    let mut line = Vec::new();
    let limited = tokio::io::AsyncReadExt::take(reader, REQUEST_LIMIT as u64 + 1);
    let mut buffered = BufReader::new(limited);
    let read = buffered.read_until(b'\n', &mut line);
    tokio::time::timeout(REQUEST_TIMEOUT, read)
        .await
        .map_err(|_| ConnectionError::RequestTimeout)??;
    if line.len() > REQUEST_LIMIT {
        return Err(ConnectionError::RequestTooLong);
    }
    Ok(serde_json::from_slice(&line)?)
}

/// Reads a request line if the client sends one within `wait`: clients that predate requests send
/// none and get the default answer.
pub async fn read_optional_request<R, T>(
    reader: R,
    wait: Duration,
) -> Result<Option<T>, ConnectionError>
where
    R: tokio::io::AsyncRead + Unpin,
    T: serde::de::DeserializeOwned,
{
    let mut line = Vec::new();
    let limited = tokio::io::AsyncReadExt::take(reader, REQUEST_LIMIT as u64 + 1);
    let mut buffered = BufReader::new(limited);
    match tokio::time::timeout(wait, buffered.read_until(b'\n', &mut line)).await {
        Err(_) if line.is_empty() => return Ok(None),
        Err(_) => return Err(ConnectionError::RequestTimeout),
        Ok(read) => read?,
    };
    if line.len() > REQUEST_LIMIT {
        return Err(ConnectionError::RequestTooLong);
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    Ok(Some(serde_json::from_slice(&line)?))
}

/// Writes `bytes` within [`WRITE_TIMEOUT`].
pub async fn write<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
) -> Result<(), ConnectionError> {
    tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(bytes))
        .await
        .map_err(|_| ConnectionError::WriteTimeout)?
        .map_err(ConnectionError::Io)
}

/// A group by name (`/etc/group`) or by number.
pub fn group_id(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group")
        .map_err(|e| format!("reading /etc/group to find `{group}`: {e}"))?;
    groups
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .ok_or_else(|| format!("no group `{group}` in /etc/group"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn path(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mp-socket-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("agent.sock")
    }

    #[tokio::test]
    async fn sockets_are_private_whatever_the_umask() {
        let path = path("mode");
        // SAFETY: umask(2) only swaps the process's file mode mask; it cannot fail.
        let old = unsafe { libc::umask(0) };
        let bound = bind(&path, Access::default());
        // SAFETY: as above, restoring the mask.
        unsafe { libc::umask(old) };
        let _listener = bound.unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(!staging_path(&path).exists(), "renamed into place");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn a_group_may_connect_when_configured() {
        let path = path("group");
        let gid = std::fs::metadata("/proc/self").unwrap().gid();
        let _listener = bind(&path, Access { group: Some(gid) }).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, gid));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn a_request_past_the_limit_is_refused_without_reading_on() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let reader = tokio::spawn(async move {
            let (read, _write) = server.into_split();
            read_request::<_, serde_json::Value>(read).await
        });
        // No newline, ever: the old reader kept reading (and allocating) for as long as it came.
        let chunk = vec![b' '; 4096];
        for _ in 0..(REQUEST_LIMIT / chunk.len() + 2) {
            if client.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let result = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the reader gave up by itself")
            .unwrap();
        assert!(
            matches!(result, Err(ConnectionError::RequestTooLong)),
            "{result:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out() {
        let (_client, server) = UnixStream::pair().unwrap();
        let result = read_request::<_, serde_json::Value>(server).await;
        assert!(
            matches!(result, Err(ConnectionError::RequestTimeout)),
            "{result:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_read_times_out() {
        let (_client, mut server) = UnixStream::pair().unwrap();
        let big = vec![0u8; 8 << 20];
        let result = write(&mut server, &big).await;
        assert!(
            matches!(result, Err(ConnectionError::WriteTimeout)),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_request_is_optional_where_old_clients_send_none() {
        let wait = Duration::from_millis(100);
        let (client, server) = UnixStream::pair().unwrap();
        let none: Option<serde_json::Value> = read_optional_request(server, wait).await.unwrap();
        assert_eq!(none, None, "nothing within the wait");
        drop(client);
        let (mut client, server) = UnixStream::pair().unwrap();
        client.write_all(b"{\"view\":\"summary\"}\n").await.unwrap();
        let some: Option<serde_json::Value> = read_optional_request(server, wait).await.unwrap();
        assert_eq!(some.unwrap()["view"], "summary");
    }

    #[test]
    fn groups_by_name_or_number() {
        assert_eq!(group_id("0"), Ok(0));
        assert_eq!(group_id("root"), Ok(0));
        let missing = group_id("no-such-group-here").unwrap_err();
        assert!(
            missing.contains("no group `no-such-group-here`"),
            "{missing}"
        );
    }
}
