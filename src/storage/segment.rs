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
}

impl RecordKind {
    fn from_u8(b: u8) -> Option<RecordKind> {
        match b {
            1 => Some(RecordKind::Series),
            2 => Some(RecordKind::Block),
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

/// Appends one record (envelope + payload) to `out`.
pub fn encode_record(out: &mut Vec<u8>, kind: RecordKind, min_t: i64, max_t: i64, payload: &[u8]) {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    h[4] = kind as u8;
    h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[12..16].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    h[16..24].copy_from_slice(&min_t.to_le_bytes());
    h[24..32].copy_from_slice(&max_t.to_le_bytes());
    let crc = crc32fast::hash(&h[0..32]);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
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
    Ok((crc32fast::hash(&p) == r.crc).then_some(p))
}

/// Walks every record of segment `name`, checking headers and payloads. A segment whose header
/// is bad yields no records (and one corrupt count).
pub fn scan(b: &dyn Backend, name: &str) -> io::Result<Scan> {
    let len = b.len(name)?;
    let mut s = Scan::default();
    let head = b.read_exact_at(name, 0, SEGMENT_HEADER_LEN.min(len as usize))?;
    if check_segment_header(&head).is_none() {
        s.corrupt = 1;
        return Ok(s);
    }
    let mut off = SEGMENT_HEADER_LEN as u64;
    s.valid_end = off;
    // Read in windows, so scanning a segment costs a few large reads, not one per record.
    const WINDOW: usize = 1 << 20;
    let mut resyncing = false;
    while off + RECORD_HEADER_LEN as u64 <= len {
        let want = (len - off).min(WINDOW as u64) as usize;
        let win = b.read_exact_at(name, off, want)?;
        let mut i = 0usize;
        while i + RECORD_HEADER_LEN <= win.len() {
            match parse_record_header(&win[i..], off + i as u64) {
                Some(r) if r.offset + r.len as u64 <= len => {
                    if resyncing {
                        resyncing = false;
                    }
                    let start = i + RECORD_HEADER_LEN;
                    let end = start + r.len as usize;
                    let ok = if end <= win.len() {
                        crc32fast::hash(&win[start..end]) == r.crc
                    } else {
                        read_payload(b, name, &r)?.is_some()
                    };
                    if ok {
                        s.records.push(r);
                        s.valid_end = r.offset + r.len as u64;
                    } else {
                        s.corrupt += 1;
                    }
                    let next = r.offset + r.len as u64;
                    if next >= off + win.len() as u64 {
                        i = win.len();
                        off = next;
                        break;
                    }
                    i = (next - off) as usize;
                }
                _ => {
                    // Not a record here: a torn tail, or a damaged header to skip past.
                    if !resyncing {
                        resyncing = true;
                        s.corrupt += 1;
                    }
                    i += 1;
                }
            }
        }
        if i >= win.len() || off + (i as u64) + (RECORD_HEADER_LEN as u64) > len {
            if i < win.len() && off + i as u64 <= len {
                // Fewer than a header's bytes remain: a torn tail.
                if off + (i as u64) < len && !resyncing {
                    s.corrupt += 1;
                }
                break;
            }
            continue;
        }
        off += i as u64;
    }
    Ok(s)
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
        let s = scan(&b, &n).unwrap();
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
    fn corrupt_payload_is_skipped_and_counted() {
        let b = MemBackend::new();
        let n = segment(&b, &[b"one", b"two", b"three"]);
        let off = SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 3 + RECORD_HEADER_LEN;
        b.corrupt(&n, |d| d[off] ^= 0xff);
        let s = scan(&b, &n).unwrap();
        assert_eq!(s.records.len(), 2);
        assert_eq!(s.corrupt, 1);
    }

    #[test]
    fn corrupt_header_resyncs_to_the_next_record() {
        let b = MemBackend::new();
        let n = segment(&b, &[b"one", b"two", b"three"]);
        let off = SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 3 + 9;
        b.corrupt(&n, |d| d[off] ^= 0x01);
        let s = scan(&b, &n).unwrap();
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
            let s = scan(&b2, "s").unwrap();
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
            let s = scan(&b2, "s").unwrap();
            assert!(s.records.len() <= 4);
        }
    }
}
