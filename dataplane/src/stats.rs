//! Per-worker counters: forwards by kind and drops by reason.
//!
//! A worker owns its counters and bumps them without atomics; others read copies
//! ([`Counters::clone`]) that the worker publishes, and add them up with [`Counters::merge`].

use crate::DropReason;

/// How a forwarded frame left the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Forward {
    /// Delivered to a pod on this node.
    LocalPod,
    /// Encapsulated to another node.
    Tunnel,
    /// Sent to another node on our L2 segment without encapsulation.
    Direct,
    /// An ARP or neighbour answer sent back to a pod.
    NeighbourReply,
    /// Handed to the node's kernel.
    ToKernel,
    /// Answered with an ICMP error the node wrote (path MTU): the frame itself went no further.
    IcmpError,
    /// A WireGuard message of the node's own (handshake response, keepalive, cookie) answered or
    /// absorbed.
    Wireguard,
}

impl Forward {
    pub const ALL: [Forward; 7] = [
        Forward::LocalPod,
        Forward::Tunnel,
        Forward::Direct,
        Forward::NeighbourReply,
        Forward::ToKernel,
        Forward::IcmpError,
        Forward::Wireguard,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Forward::LocalPod => "local_pod",
            Forward::Tunnel => "tunnel",
            Forward::Direct => "direct",
            Forward::NeighbourReply => "neighbour_reply",
            Forward::ToKernel => "to_kernel",
            Forward::IcmpError => "icmp_error",
            Forward::Wireguard => "wireguard",
        }
    }
}

/// Packets and bytes under one label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }

    fn merge(&mut self, other: &Count) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// One worker's view of what happened to its frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    pub received: Count,
    pub forwarded: [Count; Forward::ALL.len()],
    pub dropped: [Count; DropReason::COUNT],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            received: Count::default(),
            forwarded: [Count::default(); Forward::ALL.len()],
            dropped: [Count::default(); DropReason::COUNT],
        }
    }
}

impl Counters {
    pub fn count_received(&mut self, bytes: usize) {
        self.received.add(bytes);
    }

    pub fn count_forward(&mut self, kind: Forward, bytes: usize) {
        self.forwarded[kind as usize].add(bytes);
    }

    pub fn count_drop(&mut self, reason: DropReason, bytes: usize) {
        self.dropped[reason.index()].add(bytes);
    }

    pub fn forwarded(&self, kind: Forward) -> Count {
        self.forwarded[kind as usize]
    }

    pub fn dropped(&self, reason: DropReason) -> Count {
        self.dropped[reason.index()]
    }

    pub fn total_dropped(&self) -> u64 {
        self.dropped.iter().map(|c| c.packets).sum()
    }

    pub fn total_forwarded(&self) -> u64 {
        self.forwarded.iter().map(|c| c.packets).sum()
    }

    /// Adds another worker's counters to these.
    pub fn merge(&mut self, other: &Counters) {
        self.received.merge(&other.received);
        for (mine, theirs) in self.forwarded.iter_mut().zip(&other.forwarded) {
            mine.merge(theirs);
        }
        for (mine, theirs) in self.dropped.iter_mut().zip(&other.dropped) {
            mine.merge(theirs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_merges_per_label() {
        let mut a = Counters::default();
        a.count_received(100);
        a.count_forward(Forward::Tunnel, 150);
        a.count_drop(DropReason::PolicyDenied, 60);
        let mut b = Counters::default();
        b.count_drop(DropReason::PolicyDenied, 40);
        b.count_drop(DropReason::NoRoute, 40);
        a.merge(&b);
        assert_eq!(
            a.dropped(DropReason::PolicyDenied),
            Count {
                packets: 2,
                bytes: 100
            }
        );
        assert_eq!(a.total_dropped(), 3);
        assert_eq!(a.forwarded(Forward::Tunnel).bytes, 150);
        assert_eq!(a.total_forwarded(), 1);
    }
}
