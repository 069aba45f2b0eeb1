//! The XDP side of meshpath: a minimal XDP program on every pod-facing veth and on the node uplink that
//! redirects what the dataplane owns (pod traffic, tunnel ports, local pod addresses) into AF_XDP sockets
//! through an XSKMAP and passes everything else to the kernel; and the loader that attaches it.
//!
//! Not here: what happens to the redirected frames (the `meshpath-dataplane` crate).
