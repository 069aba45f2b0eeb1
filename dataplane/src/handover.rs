//! Conntrack across a planned restart: a stopping agent writes every worker's table to one file, the
//! next one reads them back and gives each flow — both entries of a translated one — to the worker that
//! owns it now (the caller says which, by the node's steering:
//! [`crate::steering::Steering::flow_owner`]), so established flows — service
//! flows keep their backend, masqueraded flows their port — survive an upgrade.
//!
//! The file is versioned and checksummed: a header (magic, version, record size, the wall-clock time
//! it was written, the count), fixed-size little-endian records, and an FNV-1a checksum of all of it.
//! Times are stored as each flow's remaining lifetime and aged by the wall-clock time the file lay
//! there, so an old file brings back no flow that would have expired meanwhile. A file that is
//! truncated, corrupted, of another version or from the future is refused with a specific error and
//! nothing of it is used: the caller warns and starts empty.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::conntrack::{Conntrack, ConntrackConfig, CtEntry, CtNat, NatKind, TcpState};
use crate::{Addr, FlowKey};

const MAGIC: &[u8; 4] = b"MPCT";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 4 + 4 + 4 + 8 + 8;
const RECORD_LEN: usize = 16 + 16 + 2 + 2 + 1 + 8 + 1 + 1 + 1 + 1 + 16 + 2 + 1 + 4 + 8 + 8;
const CHECKSUM_LEN: usize = 8;
/// A file older than this is a leftover, not a handover.
const MAX_AGE_MS: u64 = 3_600_000;

/// Why a handover file was not used.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("reading {0}")]
    Io(#[from] io::Error),
    #[error("not a conntrack handover file (bad magic)")]
    Magic,
    #[error("version {found}, this agent reads version {VERSION}")]
    Version { found: u32 },
    #[error("records of {found} bytes, this agent writes {RECORD_LEN}")]
    RecordSize { found: u32 },
    #[error("{len} bytes, the header announces {expected}")]
    Length { len: usize, expected: usize },
    #[error("checksum mismatch: the file is corrupted")]
    Checksum,
    #[error("written {age_ms} ms ago (or in the future): too old to trust")]
    Stale { age_ms: i64 },
    #[error("record {index}: {problem}")]
    Record { index: usize, problem: &'static str },
}

/// Writes every live flow of every worker's table to `path` (atomically: a temporary file renamed,
/// mode 0600). Each table comes with the worker clock its expiry times are on. Returns how many flows
/// were written.
pub fn write(path: &Path, workers: &[(&Conntrack, u64)]) -> io::Result<usize> {
    let live: Vec<(FlowKey, &CtEntry, u64)> = workers
        .iter()
        .flat_map(|&(ct, now_ms)| {
            ct.iter()
                .filter(move |(_, e)| !e.is_expired(now_ms))
                .map(move |(k, e)| (k, e, now_ms))
        })
        .collect();
    let mut bytes = Vec::with_capacity(HEADER_LEN + live.len() * RECORD_LEN + CHECKSUM_LEN);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&(RECORD_LEN as u32).to_le_bytes());
    bytes.extend_from_slice(&unix_ms().to_le_bytes());
    bytes.extend_from_slice(&(live.len() as u64).to_le_bytes());
    for (key, entry, now_ms) in &live {
        encode(&mut bytes, key, entry, *now_ms);
    }
    let sum = fnv1a(&bytes);
    bytes.extend_from_slice(&sum.to_le_bytes());
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(live.len())
}

/// Who takes over the flows of a handover file: `workers` new tables of `config`, on a worker clock
/// now at `now_ms`, and the worker that owns each flow, asked with the flow's first packet
/// ([`CtEntry::first_packet`], so both entries of a translated flow go to one worker; an index past
/// the last is the last's).
pub struct Successors<'o> {
    pub config: ConntrackConfig,
    pub now_ms: u64,
    pub workers: usize,
    pub owner: &'o dyn Fn(&FlowKey) -> usize,
}

/// Reads a handover file into one new table per worker, each flow in its owner's.
pub fn read(path: &Path, successors: &Successors<'_>) -> Result<Vec<Conntrack>, HandoverError> {
    let bytes = fs::read(path)?;
    decode(&bytes, successors, unix_ms())
}

fn decode(
    bytes: &[u8],
    successors: &Successors<'_>,
    now_unix_ms: u64,
) -> Result<Vec<Conntrack>, HandoverError> {
    let now_ms = successors.now_ms;
    let mut r = Reader(bytes);
    if r.take(4)? != MAGIC {
        return Err(HandoverError::Magic);
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(HandoverError::Version { found: version });
    }
    let record_len = r.u32()?;
    if record_len as usize != RECORD_LEN {
        return Err(HandoverError::RecordSize { found: record_len });
    }
    let written = r.u64()?;
    let count = usize::try_from(r.u64()?).unwrap_or(usize::MAX);
    let expected = count
        .checked_mul(RECORD_LEN)
        .and_then(|n| n.checked_add(HEADER_LEN + CHECKSUM_LEN))
        .unwrap_or(usize::MAX);
    if bytes.len() != expected {
        return Err(HandoverError::Length {
            len: bytes.len(),
            expected,
        });
    }
    let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if fnv1a(body).to_le_bytes() != sum {
        return Err(HandoverError::Checksum);
    }
    let age_ms = now_unix_ms as i64 - written as i64;
    if !(0..=MAX_AGE_MS as i64).contains(&age_ms) {
        return Err(HandoverError::Stale { age_ms });
    }
    let mut tables: Vec<Conntrack> = (0..successors.workers.max(1))
        .map(|_| Conntrack::new(successors.config))
        .collect();
    let last = tables.len() - 1;
    for index in 0..count {
        let (key, mut entry, remaining) =
            decode_record(&mut r).map_err(|problem| HandoverError::Record { index, problem })?;
        let Some(left) = remaining.checked_sub(age_ms as u64).filter(|&l| l > 0) else {
            continue;
        };
        entry.expires_ms = now_ms.saturating_add(left);
        let owner = (successors.owner)(&entry.first_packet(&key)).min(last);
        // A table smaller than the last one keeps what fits.
        let _ = tables[owner].insert(key, entry, now_ms);
    }
    Ok(tables)
}

fn encode(out: &mut Vec<u8>, key: &FlowKey, entry: &CtEntry, now_ms: u64) {
    out.extend_from_slice(&key.src.bits().to_le_bytes());
    out.extend_from_slice(&key.dst.bits().to_le_bytes());
    out.extend_from_slice(&key.src_port.to_le_bytes());
    out.extend_from_slice(&key.dst_port.to_le_bytes());
    out.push(key.proto);
    out.extend_from_slice(&entry.expires_ms.saturating_sub(now_ms).to_le_bytes());
    out.push(tcp_state_code(entry.tcp));
    out.push(u8::from(entry.seen_reply));
    let nat = entry.nat;
    out.push(u8::from(nat.is_some()));
    out.push(nat.map_or(0, |n| nat_kind_code(n.kind)));
    out.extend_from_slice(&nat.map_or(0, |n| n.addr.bits()).to_le_bytes());
    out.extend_from_slice(&nat.map_or(0, |n| n.port).to_le_bytes());
    out.push(u8::from(entry.service.is_some()));
    out.extend_from_slice(&entry.service.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&entry.packets.to_le_bytes());
    out.extend_from_slice(&entry.bytes.to_le_bytes());
}

fn decode_record(r: &mut Reader<'_>) -> Result<(FlowKey, CtEntry, u64), &'static str> {
    let short = |_| "truncated";
    let key = FlowKey {
        src: Addr::from_v6_bits(r.u128().map_err(short)?),
        dst: Addr::from_v6_bits(r.u128().map_err(short)?),
        src_port: r.u16().map_err(short)?,
        dst_port: r.u16().map_err(short)?,
        proto: r.u8().map_err(short)?,
    };
    let remaining = r.u64().map_err(short)?;
    let tcp = tcp_state(r.u8().map_err(short)?).ok_or("unknown TCP state")?;
    let seen_reply = flag(r.u8().map_err(short)?).ok_or("bad flag")?;
    let has_nat = flag(r.u8().map_err(short)?).ok_or("bad flag")?;
    let kind = r.u8().map_err(short)?;
    let addr = Addr::from_v6_bits(r.u128().map_err(short)?);
    let port = r.u16().map_err(short)?;
    let nat = if has_nat {
        let kind = nat_kind(kind).ok_or("unknown NAT kind")?;
        Some(CtNat { addr, port, kind })
    } else {
        None
    };
    let has_service = flag(r.u8().map_err(short)?).ok_or("bad flag")?;
    let service = r.u32().map_err(short)?;
    let entry = CtEntry {
        expires_ms: 0,
        tcp,
        seen_reply,
        nat,
        service: has_service.then_some(service),
        packets: r.u64().map_err(short)?,
        bytes: r.u64().map_err(short)?,
        kept: Default::default(),
    };
    Ok((key, entry, remaining))
}

fn flag(byte: u8) -> Option<bool> {
    match byte {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

fn tcp_state_code(state: TcpState) -> u8 {
    match state {
        TcpState::NotTcp => 0,
        TcpState::Opening => 1,
        TcpState::Established => 2,
        TcpState::Closing => 3,
    }
}

fn tcp_state(code: u8) -> Option<TcpState> {
    Some(match code {
        0 => TcpState::NotTcp,
        1 => TcpState::Opening,
        2 => TcpState::Established,
        3 => TcpState::Closing,
        _ => return None,
    })
}

fn nat_kind_code(kind: NatKind) -> u8 {
    match kind {
        NatKind::Backend => 0,
        NatKind::Frontend => 1,
        NatKind::Masquerade => 2,
        NatKind::Unmasquerade => 3,
    }
}

fn nat_kind(code: u8) -> Option<NatKind> {
    Some(match code {
        0 => NatKind::Backend,
        1 => NatKind::Frontend,
        2 => NatKind::Masquerade,
        3 => NatKind::Unmasquerade,
        _ => return None,
    })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Little-endian reads off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HandoverError> {
        if self.0.len() < n {
            return Err(HandoverError::Length {
                len: self.0.len(),
                expected: n,
            });
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], HandoverError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, HandoverError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, HandoverError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, HandoverError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, HandoverError> {
        self.array().map(u64::from_le_bytes)
    }

    fn u128(&mut self) -> Result<u128, HandoverError> {
        self.array().map(u128::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::Timeouts;
    use crate::flow::proto;
    use proptest::prelude::*;

    fn config() -> ConntrackConfig {
        ConntrackConfig {
            capacity: 1024,
            timeouts: Timeouts::default(),
            endpoint_quota: None,
        }
    }

    fn entry(i: u32) -> (FlowKey, CtEntry) {
        let key = FlowKey {
            src: Addr::from_v4_bits(0x6440_0100 + i),
            dst: Addr::from_v4_bits(0x6441_0101),
            src_port: 40000 + i as u16,
            dst_port: 8080,
            proto: if i % 2 == 0 { proto::TCP } else { proto::UDP },
        };
        let mut e = CtEntry::new(key.proto, 0, &Timeouts::default());
        e.seen_reply = i % 3 == 0;
        e.packets = u64::from(i) * 10;
        e.bytes = u64::from(i) * 1000;
        if i % 4 == 1 {
            e.nat = Some(CtNat::backend(Addr::from_v4_bits(0x6442_0102), 8081));
            e.service = Some(i);
        }
        if i % 4 == 2 {
            e.nat = Some(CtNat::unmasquerade(Addr::from_v4_bits(0x6440_010a), 40000));
        }
        (key, e)
    }

    fn table(n: u32) -> Conntrack {
        let mut ct = Conntrack::new(config());
        for i in 0..n {
            let (k, e) = entry(i);
            ct.insert(k, e, 0).unwrap();
        }
        ct
    }

    fn encoded(ct: &Conntrack, now_ms: u64, written: u64) -> Vec<u8> {
        let dir = tempdir();
        let path = dir.join("ct");
        write(&path, &[(ct, now_ms)]).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        // Pin the write time for the test.
        bytes[12..20].copy_from_slice(&written.to_le_bytes());
        let len = bytes.len();
        let sum = fnv1a(&bytes[..len - 8]);
        bytes[len - 8..].copy_from_slice(&sum.to_le_bytes());
        let _ = fs::remove_dir_all(dir);
        bytes
    }

    /// Decodes for one worker, which owns every flow.
    fn decode_one(
        bytes: &[u8],
        config: ConntrackConfig,
        now_ms: u64,
        now_unix_ms: u64,
    ) -> Result<Conntrack, HandoverError> {
        let successors = Successors {
            config,
            now_ms,
            workers: 1,
            owner: &|_| 0,
        };
        decode(bytes, &successors, now_unix_ms).map(|mut tables| tables.remove(0))
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "mp-handover-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn flows_come_back_with_their_state_translation_and_remaining_life() {
        let ct = table(50);
        let bytes = encoded(&ct, 1_000, 5_000_000);
        // Read 2 s of wall time later on a fresh worker clock at 10.
        let back = decode_one(&bytes, config(), 10, 5_002_000).unwrap();
        assert_eq!(back.len(), 50);
        for i in 0..50 {
            let (key, want) = entry(i);
            let got = back.iter().find(|(k, _)| *k == key).unwrap().1;
            assert_eq!(
                (got.tcp, got.seen_reply, got.nat),
                (want.tcp, want.seen_reply, want.nat)
            );
            assert_eq!(
                (got.service, got.packets, got.bytes),
                (want.service, want.packets, want.bytes)
            );
            // Lifetime left at write: want.expires - 1000; then 2000 ms passed.
            assert_eq!(got.expires_ms, 10 + want.expires_ms - 1_000 - 2_000);
        }
    }

    #[test]
    fn flows_that_would_have_expired_meanwhile_stay_gone() {
        let ct = table(4);
        let udp_life = Timeouts::default().udp_ms;
        let bytes = encoded(&ct, 0, 1_000_000);
        let back = decode_one(&bytes, config(), 0, 1_000_000 + udp_life + 1).unwrap();
        assert!(
            back.iter().all(|(k, _)| k.proto == proto::TCP),
            "UDP flows expired"
        );
    }

    #[test]
    fn a_damaged_foreign_old_or_future_file_is_refused_whole() {
        let bytes = encoded(&table(8), 0, 1_000_000);
        let now = 1_000_100;
        let mut flipped = bytes.clone();
        flipped[HEADER_LEN + 3] ^= 1;
        assert!(matches!(
            decode_one(&flipped, config(), 0, now),
            Err(HandoverError::Checksum)
        ));
        let short = &bytes[..bytes.len() - 1];
        assert!(matches!(
            decode_one(short, config(), 0, now),
            Err(HandoverError::Length { .. })
        ));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert!(matches!(
            decode_one(&magic, config(), 0, now),
            Err(HandoverError::Magic)
        ));
        let mut version = bytes.clone();
        version[4] = 9;
        assert!(matches!(
            decode_one(&version, config(), 0, now),
            Err(HandoverError::Version { found: 9 })
        ));
        assert!(matches!(
            decode_one(&bytes, config(), 0, 1_000_000 + MAX_AGE_MS + 1),
            Err(HandoverError::Stale { .. })
        ));
        assert!(matches!(
            decode_one(&bytes, config(), 0, 999_000),
            Err(HandoverError::Stale { .. })
        ));
    }

    #[test]
    fn every_workers_flows_are_written_and_each_comes_back_to_its_owner() {
        // Two workers' tables, then three successors that own flows by source port.
        let mut first = Conntrack::new(config());
        let mut second = Conntrack::new(config());
        for i in 0..40 {
            let (k, e) = entry(i);
            let table = if i < 25 { &mut first } else { &mut second };
            table.insert(k, e, 0).unwrap();
        }
        let dir = tempdir();
        let path = dir.join("ct");
        assert_eq!(write(&path, &[(&first, 100), (&second, 200)]).unwrap(), 40);
        let owner = |key: &FlowKey| usize::from(key.src_port % 3);
        let successors = Successors {
            config: config(),
            now_ms: 0,
            workers: 3,
            owner: &owner,
        };
        let back = read(&path, &successors).unwrap();
        let _ = fs::remove_dir_all(dir);
        assert_eq!(back.len(), 3);
        assert_eq!(back.iter().map(Conntrack::len).sum::<usize>(), 40);
        for (worker, table) in back.iter().enumerate() {
            assert!(table
                .iter()
                .all(|(k, e)| owner(&e.first_packet(&k)) == worker));
        }
        // An owner past the last worker is the last's.
        let one = Successors {
            workers: 1,
            owner: &|_| 7,
            ..successors
        };
        let bytes = encoded(&first, 0, 1_000_000);
        assert_eq!(decode(&bytes, &one, 1_000_001).unwrap()[0].len(), 25);
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_one(&bytes, config(), 0, 0);
        }

        #[test]
        fn decode_never_panics_on_mutated_files(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = encoded(&table(3), 0, 1_000_000);
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let _ = decode_one(&bytes, config(), 0, 1_000_001);
        }
    }
}
