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
    seal_using(compressor(level).as_mut(), body)
}

/// As [`seal`], with a compressor made once for several payloads (none: stored raw).
pub fn seal_using(c: Option<&mut zstd::bulk::Compressor<'static>>, body: &[u8]) -> Vec<u8> {
    match c {
        Some(c) => seal_with(c, body),
        None => seal_raw(body),
    }
}

/// As [`seal`], with a compressor that is reused across calls.
pub fn seal_with(c: &mut zstd::bulk::Compressor<'static>, body: &[u8]) -> Vec<u8> {
    match c.compress(body) {
        Ok(z) if z.len() < body.len() => {
            let mut out = Vec::with_capacity(z.len() + 6);
            out.push(PAYLOAD_VERSION);
            out.push(Compression::Zstd as u8);
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&z);
            out
        }
        _ => seal_raw(body),
    }
}

fn seal_raw(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 6);
    out.push(PAYLOAD_VERSION);
    out.push(Compression::None as u8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Most bytes zstd may look back for a match. Series records and imported frames are about
/// 64 KiB, so a window of that size loses nothing; capping it (with the tables) bounds the
/// compressor's memory to a few hundred KiB at any level — at level 19 on a large body zstd
/// would otherwise take many MiB.
/// Imports (level 15 and up) use tables twice as large: a little smaller on disk, and an import
/// is a one-off that can afford the memory; a live flush keeps the running agent's peak low.
const ZSTD_WINDOW_LOG: u32 = 17;
const ZSTD_WINDOW_LOG_FLUSH: u32 = 16;
/// The window of a live flush's chunk frames, which are [`FRAME_BYTES_FLUSH`] long. On blocks
/// of live data (three scrapers on `live_footprint.py`'s targets, re-compressed by frame size,
/// window and level) a 16 KiB window with tables to match gave frames about 1 % smaller than a
/// 64 KiB window: distant matches in this data cost more bits than they save.
const ZSTD_WINDOW_LOG_FLUSH_FRAMES: u32 = 14;

/// Whether `level` is a backfill's (imports compress at 15 and up, live flushes below): the
/// one rule that picks windows and frame sizes for the two.
fn is_import(level: i32) -> bool {
    level >= 15
}

/// A zstd compressor at `level` with the window capped.
pub fn compressor(level: i32) -> Option<zstd::bulk::Compressor<'static>> {
    let window = if is_import(level) {
        ZSTD_WINDOW_LOG
    } else {
        ZSTD_WINDOW_LOG_FLUSH
    };
    compressor_with(level, window)
}

/// The compressor of a block's chunk frames at `level` (see [`frame_bytes`]).
fn frame_compressor(level: i32) -> Option<zstd::bulk::Compressor<'static>> {
    let window = if is_import(level) {
        ZSTD_WINDOW_LOG
    } else {
        ZSTD_WINDOW_LOG_FLUSH_FRAMES
    };
    compressor_with(level, window)
}

fn compressor_with(level: i32, window: u32) -> Option<zstd::bulk::Compressor<'static>> {
    use zstd::zstd_safe::CParameter;
    let mut c = zstd::bulk::Compressor::new(level).ok()?;
    c.set_parameter(CParameter::WindowLog(window)).ok()?;
    c.set_parameter(CParameter::HashLog(window - 2)).ok()?;
    c.set_parameter(CParameter::ChainLog(window - 1)).ok()?;
    Some(c)
}

thread_local! {
    /// One decompression context, reused: payloads are decompressed often and are small.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
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
            // The frame states its size too; both must agree before anything is allocated.
            match zstd::zstd_safe::get_frame_content_size(rest) {
                Ok(Some(n)) if n == len as u64 => {}
                _ => return Err(CodecError("compressed body has the wrong length")),
            }
            let out = DECOMPRESSOR.with(|d| {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = zstd::bulk::Decompressor::new().ok();
                }
                match d.as_mut() {
                    Some(d) => d.decompress(rest, len).ok(),
                    None => zstd::bulk::decompress(rest, len).ok(),
                }
            });
            match out {
                Some(out) if out.len() == len => Ok(out),
                _ => Err(CodecError("bad compressed body")),
            }
        }
        _ => Err(CodecError("unknown compression")),
    }
}

// ---------------------------------------------------------------------------------------------
// Series definitions.

/// Writes a series body piece by piece: `count` series, each an id, a label count and that many
/// name and value texts, in label order.
pub struct SeriesWriter {
    body: Vec<u8>,
}

impl SeriesWriter {
    pub fn new(count: usize) -> Self {
        let mut body = Vec::with_capacity(count * 64 + 8);
        put_uvarint(&mut body, count as u64);
        SeriesWriter { body }
    }

    /// Starts a series with `labels` label pairs.
    pub fn series(&mut self, id: u64, labels: usize) {
        put_uvarint(&mut self.body, id);
        put_uvarint(&mut self.body, labels as u64);
    }

    /// One name or value.
    pub fn text(&mut self, t: &str) {
        put_uvarint(&mut self.body, t.len() as u64);
        self.body.extend_from_slice(t.as_bytes());
    }

    pub fn finish(self) -> Vec<u8> {
        self.body
    }
}

/// Encodes series definitions (id, labels) as a body.
pub fn encode_series(defs: &[(u64, &Labels)]) -> Vec<u8> {
    let mut w = SeriesWriter::new(defs.len());
    for (id, labels) in defs {
        w.series(*id, labels.len());
        for l in labels.iter() {
            w.text(&l.name);
            w.text(&l.value);
        }
    }
    w.finish()
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

/// Builds a block from per-series samples, given in ascending id order. Frames are compressed
/// as soon as they fill, so building a block holds one raw frame, not the whole block.
pub struct BlockBuilder {
    dir: Vec<(u64, usize)>,
    /// The raw chunks of the frame being filled.
    chunks: Vec<u8>,
    /// Compressed frames so far.
    frames: Vec<Vec<u8>>,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// Raw bytes at which a frame is cut.
    frame_bytes: usize,
    raw_total: usize,
    pub min_t: i64,
    pub max_t: i64,
    pub samples: usize,
}

impl BlockBuilder {
    /// A builder whose frames are compressed at zstd `level`.
    pub fn new(level: i32) -> Self {
        BlockBuilder {
            dir: Vec::new(),
            chunks: Vec::new(),
            frames: Vec::new(),
            compressor: frame_compressor(level),
            frame_bytes: frame_bytes(level),
            raw_total: 0,
            min_t: i64::MAX,
            max_t: i64::MIN,
            samples: 0,
        }
    }

    /// Adds one series' chunk (non-empty, ascending timestamps); ids must ascend.
    pub fn add(&mut self, id: u64, samples: &[Sample]) {
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
            return;
        };
        let before = self.chunks.len();
        codec::encode_chunk(samples, &mut self.chunks);
        let len = self.chunks.len() - before;
        self.dir.push((id, len));
        self.raw_total += len;
        self.min_t = self.min_t.min(first.t);
        self.max_t = self.max_t.max(last.t);
        self.samples += samples.len();
        // Frames end at chunk boundaries.
        if self.chunks.len() >= self.frame_bytes {
            let frame = self.seal(&self.chunks.clone());
            self.frames.push(frame);
            self.chunks.clear();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.dir.is_empty()
    }

    fn seal(&mut self, body: &[u8]) -> Vec<u8> {
        seal_using(self.compressor.as_mut(), body)
    }

    /// Bytes of the chunks so far (before compression).
    pub fn raw_len(&self) -> usize {
        self.raw_total + self.dir.len() * 4
    }

    /// The block payload: a compressed directory, then the chunks in independently compressed
    /// frames of about [`frame_bytes`], so a reader decompresses only the frames of the series
    /// it wants, and the compressor's memory stays small whatever the block's size.
    pub fn finish(mut self) -> Vec<u8> {
        if !self.chunks.is_empty() {
            let chunks = std::mem::take(&mut self.chunks);
            let frame = self.seal(&chunks);
            self.frames.push(frame);
        }
        let mut dir = Vec::with_capacity(self.dir.len() * 3 + 8);
        put_uvarint(&mut dir, self.dir.len() as u64);
        let mut prev = 0u64;
        for (id, len) in &self.dir {
            put_uvarint(&mut dir, id.wrapping_sub(prev));
            put_uvarint(&mut dir, *len as u64);
            prev = *id;
        }
        let dir_payload = self.seal(&dir);
        let mut out = Vec::with_capacity(
            dir_payload.len() + self.frames.iter().map(Vec::len).sum::<usize>() + 32,
        );
        out.push(BLOCK_VERSION);
        put_uvarint(&mut out, dir_payload.len() as u64);
        put_uvarint(&mut out, self.frames.len() as u64);
        for f in &self.frames {
            put_uvarint(&mut out, f.len() as u64);
        }
        out.extend_from_slice(&dir_payload);
        for f in &self.frames {
            out.extend_from_slice(f);
        }
        out
    }
}

/// Uncompressed bytes of chunks per frame of an imported block (a frame ends at the first
/// chunk boundary past it).
pub const FRAME_BYTES: usize = 64 << 10;
/// The same for a live flush's block. A query of a few series decompresses one frame per
/// block it reads, so smaller frames make it cheaper (a 1 h graph of one series reads 60
/// blocks); on the live data above, 32 KiB frames were about 0.5 % larger than 64 KiB ones
/// and 16 KiB frames 1.5 %.
pub const FRAME_BYTES_FLUSH: usize = 32 << 10;

/// The frame size of blocks written at zstd `level`: imports keep the larger frames that
/// `storage_bytes.py`'s figures were measured with.
pub fn frame_bytes(level: i32) -> usize {
    if is_import(level) {
        FRAME_BYTES
    } else {
        FRAME_BYTES_FLUSH
    }
}
/// Marks the framed block payload.
pub const BLOCK_VERSION: u8 = 2;

/// A block read from disk: its directory decoded, its frames decompressed when first needed.
#[derive(Debug)]
pub struct Block {
    payload: Vec<u8>,
    /// (start, end) of each frame's payload within `payload`, and its start in chunk space.
    frames: Vec<(usize, usize, usize)>,
    /// (id, offset in chunk space, length), ascending by id.
    dir: Vec<(u64, usize, usize)>,
    /// Decompressed frames, by index.
    open: std::cell::RefCell<Vec<Option<std::rc::Rc<Vec<u8>>>>>,
}

impl Block {
    /// Parses a block payload (checks the directory; frames are checked when opened).
    pub fn parse(payload: Vec<u8>) -> Result<Block, CodecError> {
        let mut r = Reader::new(&payload);
        if r.u8()? != BLOCK_VERSION {
            return Err(CodecError("unknown block version"));
        }
        let dir_len = r.uvarint()? as usize;
        let nframes = r.uvarint()?;
        if nframes > payload.len() as u64 {
            return Err(CodecError("frame count larger than block"));
        }
        let mut lens = Vec::with_capacity(nframes as usize);
        for _ in 0..nframes {
            lens.push(r.uvarint()? as usize);
        }
        let dir_start = r.pos;
        let dir_end = dir_start
            .checked_add(dir_len)
            .ok_or(CodecError("directory length"))?;
        let dir_bytes = payload
            .get(dir_start..dir_end)
            .ok_or(CodecError("directory past the end"))?;
        let body = open(dir_bytes)?;
        let mut d = Reader::new(&body);
        let n = d.uvarint()?;
        if n > body.len() as u64 {
            return Err(CodecError("directory larger than block"));
        }
        let mut dir = Vec::with_capacity(n as usize);
        let (mut id, mut off) = (0u64, 0usize);
        for _ in 0..n {
            id = id.wrapping_add(d.uvarint()?);
            let len = d.uvarint()? as usize;
            dir.push((id, off, len));
            off = off.checked_add(len).ok_or(CodecError("chunk length"))?;
        }
        if !dir.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(CodecError("block directory not sorted"));
        }
        let mut frames = Vec::with_capacity(lens.len());
        let mut at = dir_end;
        for len in lens {
            let end = at.checked_add(len).ok_or(CodecError("frame length"))?;
            if end > payload.len() {
                return Err(CodecError("frame past the end of the block"));
            }
            frames.push((at, end, 0));
            at = end;
        }
        let open_frames = std::cell::RefCell::new(vec![None; frames.len()]);
        let mut b = Block {
            payload,
            frames,
            dir,
            open: open_frames,
        };
        b.locate_frames()?;
        Ok(b)
    }

    /// Fills in each frame's start in chunk space from the frames' uncompressed lengths, read
    /// from their preambles (no decompression).
    fn locate_frames(&mut self) -> Result<(), CodecError> {
        let mut start = 0usize;
        for f in &mut self.frames {
            let pre = self
                .payload
                .get(f.0..f.0 + 6)
                .ok_or(CodecError("truncated frame"))?;
            f.2 = start;
            start += u32::from_le_bytes([pre[2], pre[3], pre[4], pre[5]]) as usize;
        }
        let total = self.dir.last().map_or(0, |e| e.1 + e.2);
        if total > start {
            return Err(CodecError("directory points past the frames"));
        }
        Ok(())
    }

    fn frame(&self, i: usize) -> Result<std::rc::Rc<Vec<u8>>, CodecError> {
        if let Some(Some(f)) = self.open.borrow().get(i) {
            return Ok(f.clone());
        }
        let (a, b, _) = self.frames[i];
        let body = std::rc::Rc::new(open(&self.payload[a..b])?);
        if let Some(slot) = self.open.borrow_mut().get_mut(i) {
            *slot = Some(body.clone());
        }
        Ok(body)
    }

    /// Appends the samples of series `id` to `out`; false if the block has none.
    pub fn series(&self, id: u64, out: &mut Vec<Sample>) -> Result<bool, CodecError> {
        let Ok(i) = self.dir.binary_search_by_key(&id, |e| e.0) else {
            return Ok(false);
        };
        let (_, off, len) = self.dir[i];
        let fi = self
            .frames
            .partition_point(|f| f.2 <= off)
            .saturating_sub(1);
        let frame = self.frame(fi)?;
        let bytes = self
            .chunk_onwards(&frame, fi, off, len)
            .ok_or(CodecError("chunk past the end of its frame"))?;
        codec::decode_chunk_of(&mut Reader::new(bytes), len, out)?;
        Ok(true)
    }

    /// The bytes of frame `fi` (decompressed: `frame`) from the chunk at `off` in chunk space
    /// to the frame's end, if the chunk's `len` bytes are all there: varints may be read a word
    /// at a time when the bytes ahead are there; a chunk read past `len` is corrupt.
    fn chunk_onwards<'f>(
        &self,
        frame: &'f [u8],
        fi: usize,
        off: usize,
        len: usize,
    ) -> Option<&'f [u8]> {
        let start = off.checked_sub(self.frames.get(fi).map_or(0, |f| f.2))?;
        frame.get(start..start.checked_add(len)?)?;
        frame.get(start..)
    }

    /// Appends the samples of each wanted series to its vector, in one pass over the directory:
    /// `per[k]` receives the samples of `ids[k]` (`ids` ascending, as long as `per`), only those
    /// in `[mint, maxt]`, and `ordered[k]` is cleared if they do not continue its samples in
    /// ascending order (imported blocks may overlap). Frames are opened in order, once each.
    /// Returns how many chunks were corrupt (skipped; the other series are still served).
    pub fn series_many(
        &self,
        ids: &[u64],
        per: &mut [Vec<Sample>],
        ordered: &mut [bool],
        mint: i64,
        maxt: i64,
    ) -> u64 {
        let mut corrupt = 0;
        // A few ids among many series: jump by binary search; otherwise walk both in step.
        let jump = ids.len().saturating_mul(8) < self.dir.len();
        let mut i = 0usize;
        let mut fi = 0usize;
        let mut frame: Option<std::rc::Rc<Vec<u8>>> = None;
        for (k, id) in ids.iter().enumerate() {
            if jump {
                i += self.dir[i.min(self.dir.len())..].partition_point(|e| e.0 < *id);
            } else {
                while i < self.dir.len() && self.dir[i].0 < *id {
                    i += 1;
                }
            }
            let Some(&(found, off, len)) = self.dir.get(i) else {
                break;
            };
            if found != *id {
                continue;
            }
            // The frame holding this chunk: frames only move forward as the offsets do.
            let before = fi;
            while fi + 1 < self.frames.len() && self.frames[fi + 1].2 <= off {
                fi += 1;
            }
            if frame.is_none() || fi != before {
                frame = self.frame(fi).ok();
            }
            let Some(bytes) = frame
                .as_ref()
                .and_then(|f| self.chunk_onwards(f, fi, off, len))
            else {
                corrupt += 1;
                continue;
            };
            let out = &mut per[k];
            let start = out.len();
            if codec::decode_chunk_of(&mut Reader::new(bytes), len, out).is_err() {
                out.truncate(start);
                corrupt += 1;
                continue;
            }
            let ok = ascending(&out[start.saturating_sub(1)..]);
            if let Some(o) = ordered.get_mut(k) {
                *o &= ok;
            }
            let inside = out[start..]
                .first()
                .zip(out.last())
                .is_some_and(|(a, b)| a.t >= mint && b.t <= maxt);
            if !inside {
                keep_within(out, start, mint, maxt, ok);
            }
        }
        corrupt
    }

    /// The ids in this block.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.dir.iter().map(|e| e.0)
    }
}

/// Drops the samples of `v[from..]` outside `[mint, maxt]`, in place, keeping their order;
/// `sorted`: they ascend by time, so the ones kept are found by binary search.
pub fn keep_within(v: &mut Vec<Sample>, from: usize, mint: i64, maxt: i64, sorted: bool) {
    if sorted {
        let part = v.get(from..).unwrap_or(&[]);
        let (lo, hi) = (
            part.partition_point(|s| s.t < mint),
            part.partition_point(|s| s.t <= maxt),
        );
        v.truncate(from + hi.max(lo));
        v.drain(from..from + lo);
        return;
    }
    let mut kept = from;
    for i in from..v.len() {
        let s = v[i];
        if s.t >= mint && s.t <= maxt {
            v[kept] = s;
            kept += 1;
        }
    }
    v.truncate(kept);
}

/// Whether the timestamps of `v` strictly ascend.
pub fn ascending(v: &[Sample]) -> bool {
    v.windows(2).all(|w| w[0].t < w[1].t)
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
        let mut bb = BlockBuilder::new(3);
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
        let block = Block::parse(bb.finish()).unwrap();
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
    fn big_blocks_are_framed_and_read_frame_by_frame() {
        let mut bb = BlockBuilder::new(3);
        let mut want = Vec::new();
        for id in 0..400u64 {
            let s: Vec<Sample> = (0..100)
                .map(|i| Sample {
                    t: i * 1000,
                    v: f64::from_bits((id * 7919 + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                })
                .collect();
            bb.add(id + 1, &s);
            want.push(s);
        }
        let block = Block::parse(bb.finish()).unwrap();
        assert!(block.frames.len() > 3, "{} frames", block.frames.len());
        for (k, s) in want.iter().enumerate().rev() {
            let mut out = Vec::new();
            assert!(block.series(k as u64 + 1, &mut out).unwrap());
            assert_eq!(out.len(), s.len());
            assert!(out
                .iter()
                .zip(s)
                .all(|(a, b)| a.t == b.t && a.v.to_bits() == b.v.to_bits()));
        }
    }

    #[test]
    fn many_series_in_one_pass_match_one_at_a_time() {
        let mut bb = BlockBuilder::new(3);
        for id in (1..3000u64).step_by(3) {
            let s: Vec<Sample> = (0..20)
                .map(|i| Sample {
                    t: i * 1000,
                    v: f64::from_bits((id * 7919 + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                })
                .collect();
            bb.add(id, &s);
        }
        let block = Block::parse(bb.finish()).unwrap();
        assert!(block.frames.len() > 1);
        // Walking (many ids) and jumping (few ids), some absent, some cut by the range.
        for ids in [
            (1..3000).collect::<Vec<u64>>(),
            vec![2, 4, 1000, 2998],
            vec![2999],
        ] {
            for (mint, maxt) in [(i64::MIN, i64::MAX), (4500, 9000)] {
                let mut per = vec![vec![Sample { t: -1, v: 0.0 }]; ids.len()];
                let mut ordered = vec![true; ids.len()];
                assert_eq!(
                    block.series_many(&ids, &mut per, &mut ordered, mint, maxt),
                    0
                );
                assert!(ordered.iter().all(|o| *o));
                for (k, id) in ids.iter().enumerate() {
                    let mut want = vec![Sample { t: -1, v: 0.0 }];
                    let mut one = Vec::new();
                    block.series(*id, &mut one).unwrap();
                    want.extend(one.into_iter().filter(|s| s.t >= mint && s.t <= maxt));
                    let bits =
                        |v: &[Sample]| v.iter().map(|s| (s.t, s.v.to_bits())).collect::<Vec<_>>();
                    assert_eq!(bits(&per[k]), bits(&want), "id {id}");
                }
            }
        }
    }

    #[test]
    fn damaged_payloads_are_errors() {
        let mut bb = BlockBuilder::new(3);
        bb.add(1, &[Sample { t: 1, v: 1.0 }, Sample { t: 2, v: 2.5 }]);
        let payload = bb.finish();
        for cut in 0..payload.len() {
            if let Ok(b) = Block::parse(payload[..cut].to_vec()) {
                let _ = b.series(1, &mut Vec::new());
            }
        }
        let mut x = 99u64;
        for _ in 0..500 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut p = payload.clone();
            let k = (x as usize) % p.len();
            p[k] ^= 1 << (x % 8);
            if let Ok(b) = Block::parse(p) {
                let mut out = Vec::new();
                let _ = b.series(1, &mut out);
                let _ = b.series_many(&[1], &mut [Vec::new()], &mut [true], i64::MIN, i64::MAX);
            }
        }
    }
}

/// A payload that failed its checks (for callers that only need to count it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptPayload;
