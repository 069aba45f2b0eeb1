//! meshpath's fuzz targets: every entry point that takes bytes from outside, as plain functions that
//! panic when an invariant breaks.
//!
//! - [`parse`]: the dataplane's frame parser on arbitrary bytes.
//! - [`pipeline`]: the pipeline fed a sequence of frames on any port, in batches, with the clock
//!   moving between them, conntrack state carried from one frame to the next.
//! - [`tunnel`]: tunnel decapsulation of what a known node sends (VXLAN or Geneve header and inner
//!   frame from the input, behind a valid outer header from that node), then the whole pipeline.
//! - [`wireguard`]: WireGuard datagrams from a known node under strict encryption: raw bytes on port
//!   51871, or IP packets the node sends through a session it has just handshaken with this one,
//!   decrypted and checked by the whole pipeline.
//! - [`control`]: the control plane's decoders of remote bytes: kvstore keys and values as a remote
//!   cluster's etcd serves them (through to the snapshot builder), label strings, and the clustermesh
//!   configuration.
//!
//! `afl/` wraps each target in an AFL++ binary (`scripts/fuzz TARGET SECONDS`); `corpus/TARGET/` holds
//! their seeds, real frames and real Cilium values, which [`seeds`] writes and `cargo test` replays.
//! [`frames`] builds the real frames of every kind the pipeline handles; the property tests of this
//! crate draw sequences of them, mutated, so that generated inputs reach service flows, replies,
//! ARP/ND, IPv6 and Geneve rather than stopping at the parser.

pub mod bed;
pub mod control;
pub mod frames;
pub mod input;
pub mod parse;
pub mod pipeline;
pub mod seeds;
pub mod tunnel;
pub mod wireguard;

/// A target: panics when an invariant breaks on `data`.
pub type Target = fn(data: &[u8]);

/// Every target by name, as `scripts/fuzz` and the corpus replay know them.
pub const TARGETS: &[(&str, Target)] = &[
    ("parse", parse::run),
    ("pipeline", pipeline::run),
    ("tunnel", tunnel::run),
    ("wireguard", wireguard::run),
    ("control", control::run),
];
