//! The pipeline: runs every stage over a batch of frames and decides each frame's fate.

use crate::{DropReason, PortId};

/// What becomes of a frame once the pipeline is done with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the frame's (possibly rewritten) bytes out of this port.
    Transmit(PortId),
    /// Not ours: hand the frame to the node's kernel stack unchanged.
    ToKernel,
    /// Drop it, counted under this reason.
    Drop(DropReason),
}
