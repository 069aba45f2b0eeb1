//! Which flows `meshpath observe` wants, as `hubble observe`'s filters say it: sent to the agent in
//! the observe request and applied there, so that only the flows wanted cross the socket.
//!
//! The filters given (`--pod`, `--ip`, `--label`, …) form the allow list: every kind given must
//! match, and of the values of one kind any one. An undirected filter (`--pod`) matches either end,
//! `--from-*` the source, `--to-*` the destination. A filter after `--not` joins the deny list: a
//! flow that matches any of those is left out. Lost events are never filtered out.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::flow::{Endpoint, Flow, Layer4, Verdict};
use crate::identity::Label;
use crate::node::Cidr;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowFilters {
    pub allow: Vec<Filter>,
    pub deny: Vec<Filter>,
}

/// One filter of `hubble observe`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Filter {
    Pod { end: End, pod: PodPattern },
    Namespace { end: End, namespace: String },
    Ip { end: End, cidr: Cidr },
    Port { end: End, port: u16 },
    Identity { end: End, identity: u32 },
    Label { end: End, selector: LabelSelector },
    Protocol { protocol: FilterProtocol },
    Verdict { verdict: Verdict },
    NodeName { pattern: String },
}

named_enum! {
    /// Which end of a flow a filter looks at.
    pub enum End ("flow end") {
        Either => "either",
        Source => "source",
        Destination => "destination",
    }
}

named_enum! {
    /// `--protocol`, as hubble takes it (case aside): `icmp` is either ICMP.
    pub enum FilterProtocol ("protocol") {
        Tcp => "tcp",
        Udp => "udp",
        Icmp => "icmp",
        Icmpv4 => "icmpv4",
        Icmpv6 => "icmpv6",
    }
}

impl FlowFilters {
    /// Whether `flow` passes: every kind of the allow list matches, none of the deny list does.
    pub fn matches(&self, flow: &Flow) -> bool {
        let allowed = self.allow.iter().all(|filter| {
            // Of the filters of this kind (and end), any one.
            self.allow
                .iter()
                .filter(|other| other.group() == filter.group())
                .any(|other| other.matches(flow))
        });
        allowed && !self.deny.iter().any(|f| f.matches(flow))
    }
}

impl Filter {
    /// Filters of one group are alternatives: the same kind, the same end.
    fn group(&self) -> (std::mem::Discriminant<Filter>, Option<End>) {
        let end = match self {
            Filter::Pod { end, .. }
            | Filter::Namespace { end, .. }
            | Filter::Ip { end, .. }
            | Filter::Port { end, .. }
            | Filter::Identity { end, .. }
            | Filter::Label { end, .. } => Some(*end),
            _ => None,
        };
        (std::mem::discriminant(self), end)
    }

    pub fn matches(&self, flow: &Flow) -> bool {
        let (src_port, dst_port) = flow.ports();
        let source = (&flow.source, flow.ip.source, src_port);
        let destination = (&flow.destination, flow.ip.destination, dst_port);
        let at = |end: End, test: &dyn Fn(&Endpoint, IpAddr, u16) -> bool| match end {
            End::Either => {
                test(source.0, source.1, source.2)
                    || test(destination.0, destination.1, destination.2)
            }
            End::Source => test(source.0, source.1, source.2),
            End::Destination => test(destination.0, destination.1, destination.2),
        };
        match self {
            Filter::Pod { end, pod } => at(*end, &|e, _, _| pod.matches(e)),
            Filter::Namespace { end, namespace } => at(*end, &|e, _, _| &e.namespace == namespace),
            Filter::Ip { end, cidr } => at(*end, &|_, ip, _| contains(cidr, ip)),
            Filter::Port { end, port } => at(*end, &|_, _, p| p == *port && p != 0),
            Filter::Identity { end, identity } => at(*end, &|e, _, _| e.identity == *identity),
            Filter::Label { end, selector } => at(*end, &|e, _, _| selector.matches(&e.labels)),
            Filter::Protocol { protocol } => protocol.matches(flow.l4),
            Filter::Verdict { verdict } => flow.verdict == *verdict,
            Filter::NodeName { pattern } => node_matches(pattern, &flow.node_name),
        }
    }
}

impl FilterProtocol {
    fn matches(self, l4: Option<Layer4>) -> bool {
        matches!(
            (self, l4),
            (FilterProtocol::Tcp, Some(Layer4::Tcp(_)))
                | (FilterProtocol::Udp, Some(Layer4::Udp(_)))
                | (
                    FilterProtocol::Icmp | FilterProtocol::Icmpv4,
                    Some(Layer4::Icmpv4(_))
                )
                | (
                    FilterProtocol::Icmp | FilterProtocol::Icmpv6,
                    Some(Layer4::Icmpv6(_))
                )
        )
    }
}

/// Whether `cidr` holds `ip` (of the same family).
fn contains(cidr: &Cidr, ip: IpAddr) -> bool {
    let bits = |a: IpAddr| -> (u128, u8) {
        match a {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    };
    let ((net, width), (addr, addr_width)) = (bits(cidr.address), bits(ip));
    if width != addr_width || cidr.prefix_len > width {
        return false;
    }
    let mask = match cidr.prefix_len {
        0 => 0,
        len => u128::MAX << (128 - u32::from(len)),
    };
    net & mask == addr & mask
}

/// `*` matches any run of characters; a pattern without `/` is matched against the node part of
/// `cluster/node` alone.
fn node_matches(pattern: &str, node_name: &str) -> bool {
    let subject = match pattern.contains('/') {
        true => node_name,
        false => node_name.rsplit('/').next().unwrap_or(node_name),
    };
    glob(pattern.as_bytes(), subject.as_bytes())
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

/// `--pod`: `name-prefix` in any namespace, `namespace/name-prefix`, or `namespace/` (all of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPattern {
    pub namespace: Option<String>,
    pub prefix: String,
}

impl PodPattern {
    fn matches(&self, endpoint: &Endpoint) -> bool {
        let namespace = self
            .namespace
            .as_ref()
            .is_none_or(|n| *n == endpoint.namespace);
        let pod = match self.prefix.is_empty() {
            true => true,
            false => !endpoint.pod_name.is_empty() && endpoint.pod_name.starts_with(&self.prefix),
        };
        namespace && pod
    }
}

impl fmt::Display for PodPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{namespace}/{}", self.prefix),
            None => f.write_str(&self.prefix),
        }
    }
}

/// Text that is no pod pattern: empty, or with more than one `/`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is no pod (name-prefix, namespace/name-prefix or namespace/)")]
pub struct BadPod(pub String);

impl FromStr for PodPattern {
    type Err = BadPod;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadPod(text.to_owned());
        match text.split_once('/') {
            _ if text.is_empty() => Err(bad()),
            Some((_, rest)) if rest.contains('/') => Err(bad()),
            Some(("", _)) => Err(bad()),
            Some((namespace, prefix)) => Ok(PodPattern {
                namespace: Some(namespace.to_owned()),
                prefix: prefix.to_owned(),
            }),
            None => Ok(PodPattern {
                namespace: None,
                prefix: text.to_owned(),
            }),
        }
    }
}

serde_as_text!(PodPattern);

/// A Kubernetes label selector (`app=x-wing,tier in (front,back),!canary`), matched against an
/// endpoint's labels; a key without a source (`app`) matches that key of any source, one with
/// (`k8s:app`) only that source's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSelector {
    text: String,
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl LabelSelector {
    fn matches(&self, labels: &[Label]) -> bool {
        let values = |key: &str| -> Vec<&str> {
            let (source, key) = match key.split_once(':') {
                Some((source, key)) => (Some(source), key),
                None => (None, key),
            };
            labels
                .iter()
                .filter(|l| l.key == key && source.is_none_or(|s| s == l.source))
                .map(|l| l.value.as_str())
                .collect()
        };
        self.requirements.iter().all(|r| match r {
            Requirement::Exists(key) => !values(key).is_empty(),
            Requirement::Absent(key) => values(key).is_empty(),
            Requirement::In(key, set) => values(key).iter().any(|v| set.iter().any(|s| s == v)),
            Requirement::NotIn(key, set) => !values(key).iter().any(|v| set.iter().any(|s| s == v)),
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A label selector that does not parse, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is no label selector: {problem}")]
pub struct BadSelector {
    pub text: String,
    pub problem: String,
}

impl FromStr for LabelSelector {
    type Err = BadSelector;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |problem: &str| BadSelector {
            text: text.to_owned(),
            problem: problem.to_owned(),
        };
        let mut requirements = Vec::new();
        for part in split_top_level(text).map_err(bad)? {
            requirements.push(requirement(part.trim()).map_err(|p| bad(&p))?);
        }
        if requirements.is_empty() {
            return Err(bad("it is empty"));
        }
        Ok(LabelSelector {
            text: text.to_owned(),
            requirements,
        })
    }
}

serde_as_text!(LabelSelector);

/// Splits at the commas outside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, &'static str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err("a `)` without its `(`");
        }
    }
    if depth != 0 {
        return Err("a `(` without its `)`");
    }
    parts.push(&text[start..]);
    Ok(parts.into_iter().filter(|p| !p.trim().is_empty()).collect())
}

fn requirement(part: &str) -> Result<Requirement, String> {
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        let valid = !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:".contains(c));
        valid
            .then(|| k.to_owned())
            .ok_or_else(|| format!("`{k}` is no label key"))
    };
    if let Some(rest) = part.strip_prefix('!') {
        return Ok(Requirement::Absent(key(rest)?));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotIn(key(k)?, vec![v.trim().to_owned()]));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::In(key(k)?, vec![v.trim().to_owned()]));
    }
    for (word, negated) in [(" notin ", true), (" in ", false)] {
        if let Some((k, set)) = part.split_once(word) {
            let set = set
                .trim()
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| format!("`{part}`: the values go in parentheses"))?;
            let values = set.split(',').map(|v| v.trim().to_owned()).collect();
            return Ok(match negated {
                true => Requirement::NotIn(key(k)?, values),
                false => Requirement::In(key(k)?, values),
            });
        }
    }
    Ok(Requirement::Exists(key(part)?))
}

#[cfg(test)]
#[path = "flow_filter_tests.rs"]
mod tests;
