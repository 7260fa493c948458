//! Record payloads: series definitions and blocks of samples, each compressed as one unit.
//!
//! A payload starts with a 6-byte preamble — format version (u8), compression (u8), length of
//! the uncompressed body (u32 LE) — followed by the compressed body:
//!
//! - series body: count, then per series its id and labels (varint lengths, UTF-8 text);
//! - block body: count, a directory (series id delta, chunk length) sorted by id, then the
//!   chunks (see `codec::encode_chunk`) in directory order.
//!
//! Decoding checks every length against the body and never panics; a bad payload is an error
//! the store counts as a corrupt record.

use super::codec::{self, put_uvarint, CodecError, Reader};
use crate::model::{Labels, LabelsBuilder, Sample};
use std::io::Read;

pub const PAYLOAD_VERSION: u8 = 1;
/// Largest uncompressed body accepted when reading (a bound against a corrupt length).
pub const MAX_BODY: usize = 512 << 20;

/// How a payload body is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None = 0,
    Zstd = 1,
}

/// Compresses `body` into a payload (preamble + compressed body).
pub fn seal(body: &[u8], level: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() / 4 + 16);
    out.push(PAYLOAD_VERSION);
    match zstd_compress(body, level) {
        Some(c) if c.len() < body.len() => {
            out.push(Compression::Zstd as u8);
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&c);
        }
        _ => {
            out.push(Compression::None as u8);
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(body);
        }
    }
    out
}

fn zstd_compress(body: &[u8], level: i32) -> Option<Vec<u8>> {
    zstd::bulk::compress(body, level).ok()
}

/// Decompresses a payload into its body.
pub fn open(payload: &[u8]) -> Result<Vec<u8>, CodecError> {
    let mut r = Reader::new(payload);
    if r.u8()? != PAYLOAD_VERSION {
        return Err(CodecError("unknown payload version"));
    }
    let comp = r.u8()?;
    let len_bytes = r.bytes(4)?;
    let len = u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
    if len > MAX_BODY {
        return Err(CodecError("body too large"));
    }
    let rest = &payload[r.pos..];
    match comp {
        0 if rest.len() == len => Ok(rest.to_vec()),
        1 => {
            let mut out = Vec::with_capacity(len);
            let mut dec = zstd::stream::read::Decoder::with_buffer(rest)
                .map_err(|_| CodecError("bad compressed body"))?
                .take(len as u64 + 1);
            dec.read_to_end(&mut out)
                .map_err(|_| CodecError("bad compressed body"))?;
            if out.len() != len {
                return Err(CodecError("compressed body has the wrong length"));
            }
            Ok(out)
        }
        _ => Err(CodecError("unknown compression")),
    }
}

// ---------------------------------------------------------------------------------------------
// Series definitions.

/// Encodes series definitions (id, labels) as a body.
pub fn encode_series(defs: &[(u64, &Labels)]) -> Vec<u8> {
    let mut out = Vec::new();
    put_uvarint(&mut out, defs.len() as u64);
    for (id, labels) in defs {
        put_uvarint(&mut out, *id);
        put_uvarint(&mut out, labels.len() as u64);
        for l in labels.iter() {
            put_uvarint(&mut out, l.name.len() as u64);
            out.extend_from_slice(l.name.as_bytes());
            put_uvarint(&mut out, l.value.len() as u64);
            out.extend_from_slice(l.value.as_bytes());
        }
    }
    out
}

/// Decodes a series body.
pub fn decode_series(body: &[u8]) -> Result<Vec<(u64, Labels)>, CodecError> {
    let mut r = Reader::new(body);
    let n = r.uvarint()?;
    let mut out = Vec::new();
    for _ in 0..n {
        let id = r.uvarint()?;
        let nl = r.uvarint()?;
        let mut b = LabelsBuilder::new();
        for _ in 0..nl {
            let nlen = r.uvarint()? as usize;
            let name = std::str::from_utf8(r.bytes(nlen)?).map_err(|_| CodecError("label name"))?;
            let vlen = r.uvarint()? as usize;
            let value =
                std::str::from_utf8(r.bytes(vlen)?).map_err(|_| CodecError("label value"))?;
            b.set(name, value);
        }
        out.push((id, b.take()));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Blocks.

/// Builds a block body from per-series samples, given in ascending id order.
#[derive(Debug, Default)]
pub struct BlockBuilder {
    dir: Vec<(u64, usize)>,
    chunks: Vec<u8>,
    pub min_t: i64,
    pub max_t: i64,
    pub samples: usize,
}

impl BlockBuilder {
    pub fn new() -> Self {
        BlockBuilder {
            min_t: i64::MAX,
            max_t: i64::MIN,
            ..Default::default()
        }
    }

    /// Adds one series' chunk (non-empty, ascending timestamps); ids must ascend.
    pub fn add(&mut self, id: u64, samples: &[Sample]) {
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
            return;
        };
        let before = self.chunks.len();
        codec::encode_chunk(samples, &mut self.chunks);
        self.dir.push((id, self.chunks.len() - before));
        self.min_t = self.min_t.min(first.t);
        self.max_t = self.max_t.max(last.t);
        self.samples += samples.len();
    }

    pub fn is_empty(&self) -> bool {
        self.dir.is_empty()
    }

    /// Bytes of the chunks so far (before compression).
    pub fn raw_len(&self) -> usize {
        self.chunks.len() + self.dir.len() * 4
    }

    /// The block body.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.chunks.len() + self.dir.len() * 4 + 8);
        put_uvarint(&mut out, self.dir.len() as u64);
        let mut prev = 0u64;
        for (id, len) in &self.dir {
            put_uvarint(&mut out, id.wrapping_sub(prev));
            put_uvarint(&mut out, *len as u64);
            prev = *id;
        }
        out.extend_from_slice(&self.chunks);
        out
    }
}

/// A decoded block directory over its body: find a series' chunk without decoding the others.
#[derive(Debug)]
pub struct Block {
    body: Vec<u8>,
    /// (id, offset in body, length), ascending by id.
    dir: Vec<(u64, usize, usize)>,
}

impl Block {
    pub fn parse(body: Vec<u8>) -> Result<Block, CodecError> {
        let mut r = Reader::new(&body);
        let n = r.uvarint()?;
        if n > body.len() as u64 {
            return Err(CodecError("directory larger than block"));
        }
        let mut entries = Vec::with_capacity(n as usize);
        let mut id = 0u64;
        for _ in 0..n {
            id = id.wrapping_add(r.uvarint()?);
            let len = r.uvarint()? as usize;
            entries.push((id, len));
        }
        let mut off = r.pos;
        let mut dir = Vec::with_capacity(entries.len());
        for (id, len) in entries {
            let end = off.checked_add(len).ok_or(CodecError("chunk length"))?;
            if end > body.len() {
                return Err(CodecError("chunk past the end of the block"));
            }
            dir.push((id, off, len));
            off = end;
        }
        if !dir.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(CodecError("block directory not sorted"));
        }
        Ok(Block { body, dir })
    }

    /// Appends the samples of series `id` to `out`; false if the block has none.
    pub fn series(&self, id: u64, out: &mut Vec<Sample>) -> Result<bool, CodecError> {
        let Ok(i) = self.dir.binary_search_by_key(&id, |e| e.0) else {
            return Ok(false);
        };
        let (_, off, len) = self.dir[i];
        codec::decode_chunk(&mut Reader::new(&self.body[off..off + len]), out)?;
        Ok(true)
    }

    /// The ids in this block.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.dir.iter().map(|e| e.0)
    }

    pub fn heap_bytes(&self) -> usize {
        self.body.capacity() + self.dir.capacity() * 24
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_round_trip() {
        let a = Labels::from_pairs(&[("__name__", "up"), ("job", "x")]);
        let b = Labels::from_pairs(&[("__name__", "ü"), ("k", "v\n\"")]);
        let body = encode_series(&[(1, &a), (900, &b)]);
        let payload = seal(&body, 3);
        let back = decode_series(&open(&payload).unwrap()).unwrap();
        assert_eq!(back, vec![(1, a), (900, b)]);
    }

    #[test]
    fn block_round_trip() {
        let mut bb = BlockBuilder::new();
        let s1: Vec<Sample> = (0..60)
            .map(|i| Sample {
                t: 1000 * i,
                v: i as f64,
            })
            .collect();
        let s2: Vec<Sample> = (0..3).map(|i| Sample { t: 500 + i, v: 0.5 }).collect();
        bb.add(3, &s1);
        bb.add(70, &s2);
        assert_eq!((bb.min_t, bb.max_t, bb.samples), (0, 59_000, 63));
        let payload = seal(&bb.finish(), 3);
        let block = Block::parse(open(&payload).unwrap()).unwrap();
        let mut out = Vec::new();
        assert!(block.series(70, &mut out).unwrap());
        assert_eq!(out, s2);
        out.clear();
        assert!(block.series(3, &mut out).unwrap());
        assert_eq!(out, s1);
        assert!(!block.series(4, &mut out).unwrap());
        assert_eq!(block.ids().collect::<Vec<_>>(), vec![3, 70]);
    }

    #[test]
    fn damaged_payloads_are_errors() {
        let mut bb = BlockBuilder::new();
        bb.add(1, &[Sample { t: 1, v: 1.0 }, Sample { t: 2, v: 2.5 }]);
        let payload = seal(&bb.finish(), 3);
        for cut in 0..payload.len() {
            let _ = open(&payload[..cut]).and_then(Block::parse);
        }
        let mut x = 99u64;
        for _ in 0..500 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut p = payload.clone();
            let k = (x as usize) % p.len();
            p[k] ^= 1 << (x % 8);
            if let Ok(b) = open(&p).and_then(Block::parse) {
                let mut out = Vec::new();
                let _ = b.series(1, &mut out);
            }
        }
    }
}

/// A payload that failed its checks (for callers that only need to count it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptPayload;
