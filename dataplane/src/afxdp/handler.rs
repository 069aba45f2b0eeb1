//! What a worker runs over each received burst: the pipeline later, bare forwarders now (for tests and
//! the benchmark's ceiling).

use crate::steering::Owner;
use crate::{DropReason, Frame, PortId, Verdict};

/// Decides the fate of every frame of a burst; `verdicts[i]` belongs to `frames[i]`.
pub trait BatchHandler: Send {
    fn handle(&mut self, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]);

    /// Which of a node's workers owns each frame of a burst just received (`owners[i]` belongs to
    /// `frames[i]`, [`Owner::Any`] when given): a frame another worker owns is handed to it, and
    /// the pipeline runs there ([`crate::steering`]). By default this worker handles every frame,
    /// as the bare forwarders, which keep no per-flow state, do.
    fn steer(&mut self, frames: &[Frame<'_>], owners: &mut [Owner]) {
        let _ = (frames, owners);
    }

    /// Frames the handler sends of its own accord (WireGuard's handshakes and keepalives, packets
    /// held for a handshake): each handed to `send` with its port, after every turn.
    fn originate(&mut self, send: &mut dyn FnMut(PortId, &[u8])) {
        let _ = send;
    }

    /// The handler's timers, run from the worker's loop every [`super::worker::TICK_EVERY`].
    fn tick(&mut self) {}
}

/// A boxed handler, for callers that choose one at run time.
impl<H: BatchHandler + ?Sized> BatchHandler for Box<H> {
    fn handle(&mut self, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
        (**self).handle(frames, verdicts);
    }

    fn steer(&mut self, frames: &[Frame<'_>], owners: &mut [Owner]) {
        (**self).steer(frames, owners);
    }

    fn originate(&mut self, send: &mut dyn FnMut(PortId, &[u8])) {
        (**self).originate(send);
    }

    fn tick(&mut self) {
        (**self).tick();
    }
}

/// Reflects every frame out of the port it came in on with its MAC addresses swapped: the bare
/// AF_XDP forwarding ceiling of the machine.
#[derive(Debug, Default)]
pub struct MacSwap;

impl BatchHandler for MacSwap {
    fn handle(&mut self, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
        for (frame, verdict) in frames.iter_mut().zip(verdicts.iter_mut()) {
            let port = frame.port();
            *verdict = match frame.data_mut().get_mut(..12) {
                Some(macs) => {
                    let (dst, src) = macs.split_at_mut(6);
                    dst.swap_with_slice(src);
                    Verdict::Transmit(port)
                }
                None => Verdict::Drop(DropReason::InvalidHeader),
            };
        }
    }
}

/// Patches pairs of ports together: a frame in on one goes out of the other unchanged, as a cable
/// would. Frames from any other port are dropped as `unknown_port`.
#[derive(Debug)]
pub struct CrossConnect {
    pairs: Vec<(PortId, PortId)>,
}

impl CrossConnect {
    pub fn new(pairs: Vec<(PortId, PortId)>) -> CrossConnect {
        CrossConnect { pairs }
    }

    fn peer(&self, port: PortId) -> Option<PortId> {
        self.pairs.iter().find_map(|&(a, b)| match port {
            p if p == a => Some(b),
            p if p == b => Some(a),
            _ => None,
        })
    }
}

impl BatchHandler for CrossConnect {
    fn handle(&mut self, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
        for (frame, verdict) in frames.iter().zip(verdicts.iter_mut()) {
            *verdict = match self.peer(frame.port()) {
                Some(out) => Verdict::Transmit(out),
                None => Verdict::Drop(DropReason::UnknownPort),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    fn udp_frame(src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
        let mut out = vec![0u8; crate::frame::HEADROOM];
        PacketBuilder::ethernet2(src, dst)
            .ipv4([100, 64, 1, 10], [100, 64, 1, 11], 64)
            .udp(1000, 2000)
            .write(&mut out, b"hello")
            .expect("fits");
        out
    }

    proptest! {
        #[test]
        fn mac_swap_reflects_with_swapped_addresses(src in any::<[u8; 6]>(), dst in any::<[u8; 6]>(), port in any::<u16>()) {
            let mut buf = udp_frame(src, dst);
            let len = buf.len() - crate::frame::HEADROOM;
            let mut frames = [Frame::new(&mut buf, crate::frame::HEADROOM, len, PortId(port)).expect("in buffer")];
            let mut verdicts = [Verdict::ToKernel];
            MacSwap.handle(&mut frames, &mut verdicts);
            prop_assert_eq!(verdicts[0], Verdict::Transmit(PortId(port)));
            let data = frames[0].data();
            prop_assert_eq!(&data[..6], &src[..]);
            prop_assert_eq!(&data[6..12], &dst[..]);
        }

        #[test]
        fn cross_connect_sends_each_side_to_the_other(a in 0u16..100, b in 100u16..200, other in 200u16..300) {
            let mut cc = CrossConnect::new(vec![(PortId(a), PortId(b))]);
            let mut bufs = [udp_frame([2; 6], [4; 6]), udp_frame([4; 6], [2; 6]), udp_frame([6; 6], [2; 6])];
            let ports = [a, b, other];
            let mut frames: Vec<Frame<'_>> = bufs
                .iter_mut()
                .zip(ports)
                .map(|(buf, p)| {
                    let len = buf.len() - crate::frame::HEADROOM;
                    Frame::new(buf, crate::frame::HEADROOM, len, PortId(p)).expect("in buffer")
                })
                .collect();
            let mut verdicts = [Verdict::ToKernel; 3];
            cc.handle(&mut frames, &mut verdicts);
            prop_assert_eq!(verdicts, [
                Verdict::Transmit(PortId(b)),
                Verdict::Transmit(PortId(a)),
                Verdict::Drop(DropReason::UnknownPort),
            ]);
        }
    }

    #[test]
    fn mac_swap_drops_a_runt() {
        let mut buf = [0u8; 8];
        let mut frames = [Frame::new(&mut buf, 0, 8, PortId(1)).expect("in buffer")];
        let mut verdicts = [Verdict::ToKernel];
        MacSwap.handle(&mut frames, &mut verdicts);
        assert_eq!(verdicts[0], Verdict::Drop(DropReason::InvalidHeader));
    }
}
