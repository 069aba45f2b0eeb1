//! The pod socket, `<status-socket>.cni`: one request line, one answer line, per connection (each its
//! own task, under the rules of [`crate::agent::socket`]). Root's alone: `socket-group` opens the
//! status and observe sockets to a group, never this one.

use std::path::Path;
use std::sync::Arc;

use meshpath_api::cni::{PodRefusal, PodRequest, PodResponse, RefusalReason};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use super::Pods;
use crate::agent::socket::{self, ConnectionError};

/// Serves `pods` on `listener` (bound at `path`) until `cancel`.
pub async fn serve(
    listener: UnixListener,
    path: &Path,
    pods: Arc<Pods>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    socket::accept(listener, path, cancel, move |mut stream| {
        let pods = pods.clone();
        async move {
            let (reader, mut writer) = stream.split();
            let answer = match socket::read_request::<_, PodRequest>(reader).await {
                Ok(request) => pods.handle(request).await,
                Err(ConnectionError::BadRequest(error)) => PodResponse::Refused(PodRefusal {
                    reason: RefusalReason::Invalid,
                    message: format!("not a pod request: {error}"),
                }),
                Err(error) => return Err(error),
            };
            let mut line = serde_json::to_vec(&answer)?;
            line.push(b'\n');
            socket::write(&mut writer, &line).await
        }
    })
    .await
}
