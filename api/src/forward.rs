//! How the dataplane forwarded a frame, by the stable name the dataplane's `Forward::name()` gives it
//! (a mirror, as [`crate::drop_reason`] is).

named_enum! {
    /// How a forwarded frame left the node.
    pub enum ForwardKind ("forward kind") {
        /// Delivered to a pod on this node.
        LocalPod => "local_pod",
        /// Encapsulated to another node.
        Tunnel => "tunnel",
        /// Sent to another node on the same L2 segment without encapsulation.
        Direct => "direct",
        /// An ARP or neighbour answer sent back to a pod.
        NeighbourReply => "neighbour_reply",
        /// Handed to the node's kernel.
        ToKernel => "to_kernel",
        /// Answered with an ICMP error the node wrote (path MTU).
        IcmpError => "icmp_error",
        /// A WireGuard message of the node's own (handshake response, keepalive, cookie) answered
        /// or absorbed.
        Wireguard => "wireguard",
    }
}
