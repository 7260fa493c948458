//! Segment files: the ring the store writes, one append-only file after another.
//!
//! A segment is a 40-byte header followed by records; each record is a 40-byte envelope and a
//! payload. Every field is a fixed-width little-endian integer, every header and payload has a
//! CRC-32, so the same files read back on 32- and 64-bit ARM and any torn or flipped byte is
//! found. The byte layout is drawn in `docs/format.md`.
//!
//! Segments are named `seg-<16 hex digits of the sequence number>.perch` and never rewritten:
//! the store appends records to the newest, starts a new one when it is full, and deletes the
//! oldest whole when the byte budget or the retention time says so.
//!
//! Reading tolerates damage: [`scan`] walks the records, checks both CRCs, skips a record whose
//! payload is corrupt (the header still gives its length), and when a header itself is damaged
//! looks for the next valid header byte by byte. What it skipped is counted, never fatal.

use super::backend::Backend;
use std::io;

/// File magic of a segment.
pub const SEGMENT_MAGIC: &[u8; 8] = b"PERCHSG1";
/// Magic of a record envelope ("PCHR" little-endian).
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"PCHR");
pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_LEN: usize = 40;
pub const RECORD_HEADER_LEN: usize = 40;
/// Largest payload a record may claim (a sanity bound against a corrupt length).
pub const MAX_PAYLOAD: u32 = 256 << 20;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Series definitions: id and labels.
    Series = 1,
    /// Samples of many series over a time range.
    Block = 2,
    /// The directory of a sealed segment's records (followed by the trailer).
    Index = 3,
    /// Small named states of other parts of Perch (the remote-write position), written with a
    /// flush; the newest one in the store is the one in force.
    Checkpoint = 4,
}

impl RecordKind {
    fn from_u8(b: u8) -> Option<RecordKind> {
        match b {
            1 => Some(RecordKind::Series),
            2 => Some(RecordKind::Block),
            3 => Some(RecordKind::Index),
            4 => Some(RecordKind::Checkpoint),
            _ => None,
        }
    }
}

/// The file name of segment `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("seg-{seq:016x}.perch")
}

/// The sequence number in a segment file name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?.strip_suffix(".perch")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The header of a segment.
pub fn segment_header(seq: u64, created_ms: i64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h[24..32].copy_from_slice(&created_ms.to_le_bytes());
    let crc = crc32fast::hash(&h[0..32]);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header; returns its sequence number.
pub fn check_segment_header(h: &[u8]) -> Option<u64> {
    if h.len() < SEGMENT_HEADER_LEN || &h[0..8] != SEGMENT_MAGIC {
        return None;
    }
    if crc32fast::hash(&h[0..32]) != le_u32(&h[32..36]) || le_u32(&h[8..12]) != FORMAT_VERSION {
        return None;
    }
    Some(le_u64(&h[16..24]))
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Appends one record (envelope + payload) to `out`; returns its ref, with the payload's
/// offset counted from the start of `out`.
pub fn encode_record(
    out: &mut Vec<u8>,
    kind: RecordKind,
    min_t: i64,
    max_t: i64,
    payload: &[u8],
) -> RecordRef {
    encode_record_with(out, kind, min_t, max_t, |out| {
        out.extend_from_slice(payload)
    })
}

/// As [`encode_record`], with the payload appended by `write` straight after the envelope (no
/// copy of a large payload).
pub fn encode_record_with(
    out: &mut Vec<u8>,
    kind: RecordKind,
    min_t: i64,
    max_t: i64,
    write: impl FnOnce(&mut Vec<u8>),
) -> RecordRef {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    write(out);
    let payload = &out[start + RECORD_HEADER_LEN..];
    let (len, payload_crc) = (payload.len() as u32, crc32fast::hash(payload));
    let h = &mut out[start..start + RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    h[4] = kind as u8;
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h[12..16].copy_from_slice(&payload_crc.to_le_bytes());
    h[16..24].copy_from_slice(&min_t.to_le_bytes());
    h[24..32].copy_from_slice(&max_t.to_le_bytes());
    let crc = crc32fast::hash(&h[0..32]);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    RecordRef {
        kind,
        offset: (start + RECORD_HEADER_LEN) as u64,
        len,
        crc: payload_crc,
        min_t,
        max_t,
    }
}

/// Where a record is and what it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef {
    pub kind: RecordKind,
    /// Offset of the payload in the file.
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
    pub min_t: i64,
    pub max_t: i64,
}

/// The 16 bytes that end a sealed segment: magic, then the offset of its index record.
pub const TRAILER_MAGIC: &[u8; 8] = b"PCHRIDX1";
pub const TRAILER_LEN: usize = 16;

/// The trailer pointing at an index record that starts at `index_offset`.
pub fn trailer(index_offset: u64) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[0..8].copy_from_slice(TRAILER_MAGIC);
    t[8..16].copy_from_slice(&index_offset.to_le_bytes());
    t
}

/// Encodes the records of a segment as an index payload body.
pub fn encode_index(records: &[RecordRef]) -> Vec<u8> {
    use super::codec::{put_uvarint, put_varint};
    let mut out = Vec::with_capacity(records.len() * 24 + 4);
    put_uvarint(&mut out, records.len() as u64);
    for r in records {
        out.push(r.kind as u8);
        put_uvarint(&mut out, r.offset);
        put_uvarint(&mut out, r.len as u64);
        out.extend_from_slice(&r.crc.to_le_bytes());
        put_varint(&mut out, r.min_t);
        put_varint(&mut out, r.max_t);
    }
    out
}

/// Reads a sealed segment's records from its index, if it has a valid one: a few reads instead
/// of a walk over every record header. None means "scan instead".
pub fn read_index(b: &dyn Backend, name: &str) -> io::Result<Option<Vec<RecordRef>>> {
    use super::codec::Reader;
    let len = b.len(name)?;
    let min = (SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + TRAILER_LEN) as u64;
    if len < min {
        return Ok(None);
    }
    let t = b.read_exact_at(name, len - TRAILER_LEN as u64, TRAILER_LEN)?;
    if &t[0..8] != TRAILER_MAGIC {
        return Ok(None);
    }
    let off = le_u64(&t[8..16]);
    if off < SEGMENT_HEADER_LEN as u64 || off + (RECORD_HEADER_LEN + TRAILER_LEN) as u64 > len {
        return Ok(None);
    }
    let h = b.read_exact_at(name, off, RECORD_HEADER_LEN)?;
    let Some(r) = parse_record_header(&h, off) else {
        return Ok(None);
    };
    if r.kind != RecordKind::Index || r.offset + r.len as u64 + TRAILER_LEN as u64 != len {
        return Ok(None);
    }
    let Some(payload) = read_payload(b, name, &r)? else {
        return Ok(None);
    };
    let Ok(body) = super::block::open(&payload) else {
        return Ok(None);
    };
    let mut rd = Reader::new(&body);
    let parse = |rd: &mut Reader<'_>| -> Option<Vec<RecordRef>> {
        let n = rd.uvarint().ok()?;
        if n > body.len() as u64 {
            return None;
        }
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let kind = RecordKind::from_u8(rd.u8().ok()?)?;
            let offset = rd.uvarint().ok()?;
            let rlen = u32::try_from(rd.uvarint().ok()?).ok()?;
            let c = rd.bytes(4).ok()?;
            let crc = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let min_t = rd.varint().ok()?;
            let max_t = rd.varint().ok()?;
            if offset + rlen as u64 > off {
                return None;
            }
            out.push(RecordRef {
                kind,
                offset,
                len: rlen,
                crc,
                min_t,
                max_t,
            });
        }
        Some(out)
    };
    Ok(parse(&mut rd))
}

/// A parsed record header, if `h` is a valid one.
fn parse_record_header(h: &[u8], offset: u64) -> Option<RecordRef> {
    if h.len() < RECORD_HEADER_LEN || le_u32(&h[0..4]) != RECORD_MAGIC {
        return None;
    }
    if crc32fast::hash(&h[0..32]) != le_u32(&h[32..36]) {
        return None;
    }
    let kind = RecordKind::from_u8(h[4])?;
    let len = le_u32(&h[8..12]);
    if len > MAX_PAYLOAD {
        return None;
    }
    Some(RecordRef {
        kind,
        offset: offset + RECORD_HEADER_LEN as u64,
        len,
        crc: le_u32(&h[12..16]),
        min_t: le_u64(&h[16..24]) as i64,
        max_t: le_u64(&h[24..32]) as i64,
    })
}

/// The result of scanning a segment.
#[derive(Debug, Default)]
pub struct Scan {
    /// Valid records, in file order.
    pub records: Vec<RecordRef>,
    /// Records (or stretches of bytes) skipped as corrupt.
    pub corrupt: u64,
    /// Offset just past the last valid record: where appending may continue.
    pub valid_end: u64,
}

/// Reads a record's payload and checks its CRC.
pub fn read_payload(b: &dyn Backend, name: &str, r: &RecordRef) -> io::Result<Option<Vec<u8>>> {
    let p = b.read_exact_at(name, r.offset, r.len as usize)?;
    Ok(payload_intact(r, &p).then_some(p))
}

/// Whether `payload`, read whole, is record `r`'s as written (its CRC matches).
pub fn payload_intact(r: &RecordRef, payload: &[u8]) -> bool {
    crc32fast::hash(payload) == r.crc
}

/// Walks the records of segment `name` by their headers, hopping over payloads, so opening a
/// store reads a few bytes per record rather than the whole file. Payload CRCs are checked here
/// for the last record of the file (where a torn write would be) and for every record when
/// `verify_all`; otherwise a block is checked as it is read (its parts by their own CRCs, an
/// old block by the record's). A bad header makes the scan look for the next valid one byte by
/// byte. A segment whose header is bad yields no records (and one corrupt count).
pub fn scan(b: &dyn Backend, name: &str, verify_all: bool) -> io::Result<Scan> {
    let len = b.len(name)?;
    let mut s = Scan::default();
    let head = b.read_exact_at(name, 0, SEGMENT_HEADER_LEN.min(len as usize))?;
    if check_segment_header(&head).is_none() {
        s.corrupt = 1;
        return Ok(s);
    }
    let mut off = SEGMENT_HEADER_LEN as u64;
    s.valid_end = off;
    while off < len {
        if off + RECORD_HEADER_LEN as u64 > len {
            let rest = b.read_exact_at(name, off, (len - off) as usize)?;
            let sealed = rest.len() == TRAILER_LEN && &rest[0..8] == TRAILER_MAGIC;
            if !sealed {
                s.corrupt += 1; // a torn tail shorter than a header
            }
            break;
        }
        let h = b.read_exact_at(name, off, RECORD_HEADER_LEN)?;
        match parse_record_header(&h, off) {
            Some(r) if r.offset + r.len as u64 <= len => {
                let end = r.offset + r.len as u64;
                let ok = if verify_all || r.kind == RecordKind::Series || end == len {
                    read_payload(b, name, &r)?.is_some()
                } else {
                    true
                };
                if ok {
                    s.records.push(r);
                    s.valid_end = end;
                } else {
                    s.corrupt += 1;
                }
                off = end;
            }
            _ => {
                s.corrupt += 1;
                match resync(b, name, off + 1, len)? {
                    Some(next) => off = next,
                    None => break,
                }
            }
        }
    }
    Ok(s)
}

/// The offset of the next valid record header at or after `from`, searching byte by byte.
fn resync(b: &dyn Backend, name: &str, from: u64, len: u64) -> io::Result<Option<u64>> {
    const WINDOW: u64 = 1 << 20;
    let mut start = from;
    while start + RECORD_HEADER_LEN as u64 <= len {
        let want = (len - start).min(WINDOW + RECORD_HEADER_LEN as u64) as usize;
        let win = b.read_exact_at(name, start, want)?;
        for i in 0..=win.len().saturating_sub(RECORD_HEADER_LEN) {
            if let Some(r) = parse_record_header(&win[i..], start + i as u64) {
                if r.offset + r.len as u64 <= len {
                    return Ok(Some(start + i as u64));
                }
            }
        }
        start += WINDOW;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::backend::MemBackend;

    fn segment(b: &MemBackend, payloads: &[&[u8]]) -> String {
        let name = segment_name(7);
        let mut buf = segment_header(7, 1000).to_vec();
        for (i, p) in payloads.iter().enumerate() {
            encode_record(&mut buf, RecordKind::Block, i as i64, i as i64 + 10, p);
        }
        b.append(&name, &buf).unwrap();
        name
    }

    #[test]
    fn names() {
        assert_eq!(segment_name(255), "seg-00000000000000ff.perch");
        assert_eq!(parse_segment_name("seg-00000000000000ff.perch"), Some(255));
        assert_eq!(parse_segment_name("seg-ff.perch"), None);
        assert_eq!(check_segment_header(&segment_header(9, 5)), Some(9));
    }

    #[test]
    fn scans_valid_records() {
        let b = MemBackend::new();
        let n = segment(&b, &[b"one", b"", b"three"]);
        let s = scan(&b, &n, true).unwrap();
        assert_eq!(s.corrupt, 0);
        assert_eq!(s.records.len(), 3);
        assert_eq!(
            read_payload(&b, &n, &s.records[2]).unwrap().unwrap(),
            b"three"
        );
        assert_eq!(s.records[1].min_t, 1);
        assert_eq!(s.valid_end, b.len(&n).unwrap());
    }

    #[test]
    fn a_hopping_scan_leaves_block_checks_to_the_reader() {
        let b = MemBackend::new();
        let n = segment(&b, &[b"one", b"two", b"three"]);
        let off = SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 3 + RECORD_HEADER_LEN;
        b.corrupt(&n, |d| d[off] ^= 0xff);
        let s = scan(&b, &n, false).unwrap();
        assert_eq!(s.records.len(), 3);
        assert!(read_payload(&b, &n, &s.records[1]).unwrap().is_none());
        assert!(read_payload(&b, &n, &s.records[2]).unwrap().is_some());
    }

    #[test]
    fn corrupt_payload_is_skipped_and_counted() {
        let b = MemBackend::new();
        let n = segment(&b, &[b"one", b"two", b"three"]);
        let off = SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 3 + RECORD_HEADER_LEN;
        b.corrupt(&n, |d| d[off] ^= 0xff);
        let s = scan(&b, &n, true).unwrap();
        assert_eq!(s.records.len(), 2);
        assert_eq!(s.corrupt, 1);
    }

    #[test]
    fn corrupt_header_resyncs_to_the_next_record() {
        let b = MemBackend::new();
        let n = segment(&b, &[b"one", b"two", b"three"]);
        let off = SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 3 + 9;
        b.corrupt(&n, |d| d[off] ^= 0x01);
        let s = scan(&b, &n, true).unwrap();
        let got: Vec<Vec<u8>> = s
            .records
            .iter()
            .map(|r| read_payload(&b, &n, r).unwrap().unwrap())
            .collect();
        assert_eq!(got, vec![b"one".to_vec(), b"three".to_vec()]);
        assert_eq!(s.corrupt, 1);
    }

    #[test]
    fn torn_tail_is_detected_at_every_cut() {
        let b = MemBackend::new();
        let n = segment(&b, &[b"one", b"two"]);
        let full = b.len(&n).unwrap();
        for cut in SEGMENT_HEADER_LEN as u64..full {
            let b2 = MemBackend::new();
            b2.append("s", &b.read_exact_at(&n, 0, cut as usize).unwrap())
                .unwrap();
            let s = scan(&b2, "s", true).unwrap();
            let complete = if cut >= full {
                2
            } else if cut >= (SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 3) as u64 {
                1
            } else {
                0
            };
            assert_eq!(s.records.len(), complete, "cut at {cut}");
            assert!(s.valid_end <= cut);
        }
    }

    #[test]
    fn random_damage_never_panics() {
        let b = MemBackend::new();
        let n = segment(&b, &[b"one", b"two", b"three", &[7u8; 300]]);
        let mut x: u64 = 12345;
        for _ in 0..500 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b2 = MemBackend::new();
            let mut d = b.read_exact_at(&n, 0, b.len(&n).unwrap() as usize).unwrap();
            let k = (x as usize) % d.len();
            d[k] ^= (x >> 32) as u8 | 1;
            b2.append("s", &d).unwrap();
            let s = scan(&b2, "s", true).unwrap();
            assert!(s.records.len() <= 4);
        }
    }
}
