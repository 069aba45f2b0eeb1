//! The input format of the sequence targets: records of `[control byte][length: u16 BE][bytes]`,
//! read until the input ends (a short last record is cut to what is there).
//!
//! The control byte's bits 0–1 are the port the frame arrives on (0 the uplink, 1–3 pods), bits 2–3
//! how far the clock moves before it (see [`CLOCK_STEPS`]), and bit 4 ends the batch before it.

use meshpath_dataplane::PortId;

/// Clock moves, in ms: none, a second, past the UDP and SYN timeouts, past the established timeout.
pub const CLOCK_STEPS: [u64; 4] = [0, 1_000, 61_000, 21_600_001];

/// One frame of a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub port: PortId,
    pub clock_step: u8,
    pub new_batch: bool,
    pub bytes: &'a [u8],
}

/// The records of `data`.
pub fn records(mut data: &[u8]) -> impl Iterator<Item = Record<'_>> {
    std::iter::from_fn(move || {
        let (&control, rest) = data.split_first()?;
        let (len, rest) = match rest {
            [hi, lo, rest @ ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), rest),
            _ => (rest.len(), &[][..]),
        };
        let (bytes, rest) = rest.split_at(len.min(rest.len()));
        data = rest;
        Some(Record {
            port: PortId(u16::from(control & 3)),
            clock_step: (control >> 2) & 3,
            new_batch: control & 0x10 != 0,
            bytes,
        })
    })
}

/// Writes records in the format [`records`] reads.
pub fn encode(records: &[Record<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let control = (r.port.0 as u8 & 3) | (r.clock_step & 3) << 2 | u8::from(r.new_batch) << 4;
        let len = u16::try_from(r.bytes.len()).unwrap_or(u16::MAX);
        out.push(control);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&r.bytes[..usize::from(len)]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_short_tail_is_cut() {
        let frames = [
            Record {
                port: PortId(2),
                clock_step: 3,
                new_batch: true,
                bytes: b"abc",
            },
            Record {
                port: PortId(0),
                clock_step: 0,
                new_batch: false,
                bytes: b"",
            },
        ];
        let mut data = encode(&frames);
        assert_eq!(records(&data).collect::<Vec<_>>(), frames);
        data.extend_from_slice(&[0x01, 0, 9, b'x']);
        let last = records(&data).last().unwrap();
        assert_eq!((last.port, last.bytes), (PortId(1), &b"x"[..]));
    }
}
