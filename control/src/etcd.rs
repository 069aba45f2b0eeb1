//! Talking to an etcd: connecting over mutual TLS (or plain http behind the insecure flag), and listing a
//! prefix page by page at one revision so that a 100k-entry cluster neither exceeds gRPC message limits
//! nor mixes two points in time.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity as TlsIdentity, KeyValue, KvClient,
    TlsOptions,
};

use crate::clustermesh::config::TlsMaterial;

/// Large pages of a big cluster fit under this.
const MAX_MESSAGE: usize = 64 << 20;

/// How to reach one etcd.
#[derive(Clone, Debug)]
pub struct EtcdTarget<'a> {
    pub endpoints: &'a [String],
    pub tls: Option<&'a TlsMaterial>,
    pub connect_timeout: Duration,
    pub keep_alive: Duration,
}

/// An etcd failure, with the error's whole chain of causes in one line (tonic hides the TLS reason
/// in the source chain).
pub fn describe(err: &etcd_client::Error) -> String {
    if let etcd_client::Error::GRpcStatus(status) = err {
        if !status.message().is_empty() {
            return format!("{} ({:?})", status.message(), status.code());
        }
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

pub async fn connect(target: &EtcdTarget<'_>) -> Result<Client, etcd_client::Error> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(target.connect_timeout)
        .with_keep_alive(target.keep_alive, target.keep_alive)
        .with_keep_alive_while_idle(true);
    if target.tls.is_none() {
        tracing::warn!(endpoints = ?target.endpoints, "connecting to etcd without TLS (`insecure: true`): anyone on the path reads and can change the mesh's state");
    }
    if let Some(tls) = target.tls {
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(&tls.ca))
            .identity(TlsIdentity::from_pem(&tls.cert, &tls.key));
        options = options.with_tls(tls);
    }
    Client::connect(target.endpoints, Some(options)).await
}

pub fn kv_client(client: &Client) -> KvClient {
    client.kv_client().max_decoding_message_size(MAX_MESSAGE)
}

/// The end of the range of keys starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Every key under `prefix` at one revision, which is returned too (watch from it + 1).
pub async fn list_prefix(
    kv: &mut KvClient,
    prefix: &str,
    page: i64,
) -> Result<(i64, Vec<KeyValue>), etcd_client::Error> {
    let mut out = Vec::new();
    let (revision, _) = list_pages(kv, prefix, page, 0, |kvs| {
        out.extend(kvs);
        true
    })
    .await?;
    Ok((revision, out))
}

/// Lists `prefix` at `revision` (0: the current one) a page at a time, handing each page to `take`
/// until it returns `false`, so that a huge range is never held whole. Returns the revision read and
/// how many keys of the range were left unread.
pub async fn list_pages(
    kv: &mut KvClient,
    prefix: &str,
    page: i64,
    mut revision: i64,
    mut take: impl FnMut(Vec<KeyValue>) -> bool,
) -> Result<(i64, u64), etcd_client::Error> {
    let end = prefix_end(prefix.as_bytes());
    let mut start = prefix.as_bytes().to_vec();
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(page);
        if revision != 0 {
            options = options.with_revision(revision);
        }
        let mut resp = kv.get(start.clone(), Some(options)).await?;
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        }
        let more = resp.more();
        // `count` is every key from `start` to the end of the range, this page's included.
        let in_range = u64::try_from(resp.count()).unwrap_or_default();
        let kvs = resp.take_kvs();
        let read = kvs.len() as u64;
        if let Some(last) = kvs.last() {
            start = last.key().to_vec();
            start.push(0);
        }
        if !take(kvs) {
            return Ok((revision, in_range.saturating_sub(read)));
        }
        if !more {
            return Ok((revision, 0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"cilium/"), b"cilium0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    proptest! {
        #[test]
        fn every_key_with_the_prefix_sorts_below_the_end(prefix in proptest::collection::vec(any::<u8>(), 1..8), suffix in proptest::collection::vec(any::<u8>(), 0..8)) {
            prop_assume!(prefix.iter().any(|b| *b != 0xff));
            let mut key = prefix.clone();
            key.extend(suffix);
            prop_assert!(key < prefix_end(&prefix));
        }
    }
}
