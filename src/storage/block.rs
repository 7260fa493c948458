//! Record payloads: series definitions and blocks of samples, each compressed as one unit.
//!
//! A payload starts with a 6-byte preamble — format version (u8), compression (u8), length of
//! the uncompressed body (u32 LE) — followed by the compressed body:
//!
//! - series body: count, then per series its id and labels (varint lengths, UTF-8 text).
//!
//! A block is several payloads behind a frame table: a directory (series id delta, chunk
//! length, sorted by id) and frames of chunks (see `codec::encode_chunk`), placed by the class
//! of their length (see [`class_starts`]), or in directory order in a block of one frame.
//! The table, the directory and each frame carry a CRC, so a reader fetches and checks only
//! the frames of the series it wants ([`Block::read`], `docs/format.md`).
//!
//! Decoding checks every length against the body and never panics; a bad payload is an error
//! the store counts as a corrupt record, a bad frame costs only the chunks in it.

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
    let mut out = Vec::new();
    open_into(payload, &mut out)?;
    Ok(out)
}

/// As [`open`], into `out` (cleared first), so a caller can reuse its buffer.
pub fn open_into(payload: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
    out.clear();
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
        0 if rest.len() == len => {
            out.extend_from_slice(rest);
            Ok(())
        }
        1 => {
            // The frame states its size too; both must agree before anything is allocated.
            match zstd::zstd_safe::get_frame_content_size(rest) {
                Ok(Some(n)) if n == len as u64 => {}
                _ => return Err(CodecError("compressed body has the wrong length")),
            }
            out.reserve_exact(len);
            let done = DECOMPRESSOR.with(|d| {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = zstd::bulk::Decompressor::new().ok();
                }
                // (No fallback: zstd's one-shot functions make the same context.)
                d.as_mut()
                    .and_then(|d| d.decompress_to_buffer(rest, out).ok())
            });
            match done {
                Some(n) if n == len && out.len() == len => Ok(()),
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

/// Builds a block from per-series samples, given in ascending id order. The raw chunks are held
/// until the block is sealed, as their placement depends on all their lengths: a live block of
/// 5.6k series at 1 s holds about 310 KB of them while it is built (a block has at most
/// 16,384 series in a flush, a few MB in an import of long series); then the frames are
/// compressed one at a time ([`BlockBuilder::seal_frame`]) and the raw chunks freed.
pub struct BlockBuilder {
    /// (series id, chunk length) in id order.
    dir: Vec<(u64, u32)>,
    /// The raw chunks, in id order, until the block is sealed.
    chunks: Vec<u8>,
    /// Once sealing has begun: the chunks in the order the block places them.
    placing: Option<Placing>,
    /// Compressed frames so far, with their bodies' lengths.
    frames: Vec<(Vec<u8>, usize)>,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// Raw bytes at which a frame is cut.
    frame_bytes: usize,
    /// The first chunk's first timestamp: every chunk's is written as its distance from it.
    base: Option<i64>,
    pub min_t: i64,
    pub max_t: i64,
    pub samples: usize,
    /// Tests: write chunks in id order whatever the frames (as version 3 always did).
    #[cfg(test)]
    in_id_order: bool,
}

/// A block being sealed: its chunks in placement order, a frame at a time.
struct Placing {
    /// Directory indices in placement order, and each chunk's offset in `chunks`.
    order: Vec<u32>,
    from: Vec<u32>,
    /// The next index of `order` to put in a frame.
    next: usize,
    /// Placed by length class (version 4), or in id order (version 3: a block of one frame).
    by_class: bool,
}

/// The placement class of a chunk `len` bytes long: its length to 3 significant bits (exact
/// below 16). A block places its chunks by class, ascending, and in directory order within a
/// class (see [`class_starts`]).
fn place_key(len: u32) -> usize {
    if len < 8 {
        return len as usize;
    }
    let bits = 32 - len.leading_zeros(); // 4..=32
    8 + (bits as usize - 4) * 8 + ((len >> (bits - 4)) & 7) as usize
}

/// How many placement classes there are ([`place_key`] of `u32::MAX` is the last).
const PLACE_KEYS: usize = 8 + 29 * 8;

/// Where each placement class starts in chunk space, given the chunks' lengths in directory
/// order, as a block of [`BLOCK_VERSION`] places them: by [`place_key`] of their length,
/// ascending, and in directory order within a key. So chunks of
/// similar length — series that move alike — share frames, and each frame's compressor, whose
/// entropy coder has one table a frame, fits them better: on the live benchmark's load blocks
/// are about 8 % smaller than with chunks in id order (`cargo bench --bench storage -- wear`).
/// The layout costs no bytes: a reader derives it from the lengths it reads anyway. A chunk's
/// offset is its class's start plus the lengths of the chunks of its class before it.
fn class_starts(lens: impl Iterator<Item = u32>) -> [u64; PLACE_KEYS] {
    let mut start = [0u64; PLACE_KEYS];
    for len in lens {
        start[place_key(len)] += u64::from(len);
    }
    let mut at = 0u64;
    for s in start.iter_mut() {
        let bytes = *s;
        *s = at;
        at += bytes;
    }
    start
}

impl BlockBuilder {
    /// A builder whose frames are compressed at zstd `level`.
    pub fn new(level: i32) -> Self {
        BlockBuilder {
            dir: Vec::new(),
            chunks: Vec::new(),
            placing: None,
            frames: Vec::new(),
            compressor: frame_compressor(level),
            frame_bytes: frame_bytes(level),
            base: None,
            min_t: i64::MAX,
            max_t: i64::MIN,
            samples: 0,
            #[cfg(test)]
            in_id_order: false,
        }
    }

    /// Adds one series' chunk (non-empty, ascending timestamps); ids must ascend, and no
    /// chunk may be added once sealing has begun ([`BlockBuilder::seal_frame`]).
    pub fn add(&mut self, id: u64, samples: &[Sample]) {
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
            return;
        };
        debug_assert!(
            self.placing.is_none(),
            "a chunk added to a block being sealed"
        );
        let before = self.chunks.len();
        let base = *self.base.get_or_insert(first.t);
        codec::encode_chunk(samples, base, &mut self.chunks);
        let len = (self.chunks.len() - before) as u32;
        self.dir.push((id, len));
        self.min_t = self.min_t.min(first.t);
        self.max_t = self.max_t.max(last.t);
        self.samples += samples.len();
    }

    pub fn is_empty(&self) -> bool {
        self.dir.is_empty()
    }

    fn seal(&mut self, body: &[u8]) -> Vec<u8> {
        seal_using(self.compressor.as_mut(), body)
    }

    /// Bytes of the chunks so far (before compression).
    pub fn raw_len(&self) -> usize {
        self.chunks.len() + self.dir.len() * 4
    }

    /// Whether sealing has begun ([`BlockBuilder::seal_frame`]): no more chunks are added.
    pub fn is_sealing(&self) -> bool {
        self.placing.is_some()
    }

    /// Series added so far.
    pub fn series(&self) -> usize {
        self.dir.len()
    }

    /// Compresses the next frame of about [`frame_bytes`] of chunks, in placement order (the
    /// first call ends the adding); true once every chunk is in a frame. A caller that must
    /// not hold its thread long seals a block a frame at a time.
    pub fn seal_frame(&mut self) -> bool {
        #[cfg(not(test))]
        let one_frame = self.chunks.len() <= self.frame_bytes;
        #[cfg(test)]
        let one_frame = self.chunks.len() <= self.frame_bytes || self.in_id_order;
        let placing = self.placing.get_or_insert_with(|| {
            let from = self.dir.iter().scan(0u32, |at, e| {
                let here = *at;
                *at += e.1;
                Some(here)
            });
            let from: Vec<u32> = from.collect();
            let mut order: Vec<u32> = (0..self.dir.len() as u32).collect();
            // All in one frame, placing changes little: the block keeps id order (version 3),
            // which a reader lays out without a pass over the lengths. Otherwise by class,
            // ascending, and in directory order within a class (a stable sort): the layout a
            // reader derives from the lengths (`class_starts`).
            if !one_frame {
                order.sort_by_key(|&i| place_key(self.dir[i as usize].1));
            }
            Placing {
                order,
                from,
                next: 0,
                by_class: !one_frame,
            }
        });
        if placing.next >= placing.order.len() {
            return true;
        }
        let mut frame = Vec::with_capacity(self.frame_bytes + 1024);
        // Frames end at chunk boundaries.
        while frame.len() < self.frame_bytes {
            let Some(&i) = placing.order.get(placing.next) else {
                break;
            };
            placing.next += 1;
            let (at, len) = (
                placing.from[i as usize] as usize,
                self.dir[i as usize].1 as usize,
            );
            frame.extend_from_slice(&self.chunks[at..at + len]);
        }
        let done = placing.next >= placing.order.len();
        let sealed = self.seal(&frame);
        self.frames.push((sealed, frame.len()));
        if done {
            self.chunks = Vec::new();
        }
        done
    }

    /// The block payload: a frame table, a compressed directory, then the chunks in
    /// independently compressed frames of about [`frame_bytes`], so a reader fetches and
    /// decompresses only the frames of the series it wants, and the compressor's memory stays
    /// small whatever the block's size. The table, the directory and each frame carry a CRC.
    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::new();
        self.finish_into(&mut out);
        out
    }

    /// As [`BlockBuilder::finish`], appending the payload to `out` (a flush's records): the
    /// frames not sealed yet are sealed, then copied once, each freed as soon as it is.
    pub fn finish_into(mut self, out: &mut Vec<u8>) {
        while !self.seal_frame() {}
        let mut dir = Vec::with_capacity(self.dir.len() * 3 + 8);
        put_uvarint(&mut dir, self.dir.len() as u64);
        codec::put_varint(&mut dir, self.base.unwrap_or(0));
        let mut prev = 0u64;
        for (id, len) in &self.dir {
            put_uvarint(&mut dir, id.wrapping_sub(prev));
            put_uvarint(&mut dir, u64::from(*len));
            prev = *id;
        }
        let dir_payload = self.seal(&dir);
        let mut table = Vec::with_capacity(self.frames.len() * 10 + 16);
        put_uvarint(&mut table, dir_payload.len() as u64);
        table.extend_from_slice(&crc32fast::hash(&dir_payload).to_le_bytes());
        put_uvarint(&mut table, self.frames.len() as u64);
        for (f, body_len) in &self.frames {
            put_uvarint(&mut table, f.len() as u64);
            put_uvarint(&mut table, *body_len as u64);
            table.extend_from_slice(&crc32fast::hash(f).to_le_bytes());
        }
        out.reserve_exact(
            5 + table.len()
                + dir_payload.len()
                + self.frames.iter().map(|f| f.0.len()).sum::<usize>(),
        );
        let by_class = self.placing.as_ref().is_some_and(|p| p.by_class);
        out.push(if by_class {
            BLOCK_VERSION
        } else {
            BLOCK_VERSION_IN_ID_ORDER
        });
        out.extend_from_slice(&crc32fast::hash(&table).to_le_bytes());
        out.extend_from_slice(&table);
        out.extend_from_slice(&dir_payload);
        for (f, _) in self.frames.drain(..) {
            out.extend_from_slice(&f);
        }
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
/// Marks a framed block payload whose frame table, directory and frames each carry a CRC, so
/// a reader fetches and checks only the parts it needs, and whose chunks lie by length class
/// (see [`class_starts`]).
pub const BLOCK_VERSION: u8 = 4;
/// The same with the chunks in directory order: a block of one frame, and every block written
/// before chunks were placed by length.
pub const BLOCK_VERSION_IN_ID_ORDER: u8 = 3;

/// Whether a block payload starting with `version` can be read in parts (its parts carry
/// CRCs); an older one is read whole.
pub fn reads_in_parts(version: u8) -> bool {
    version == BLOCK_VERSION || version == BLOCK_VERSION_IN_ID_ORDER
}
/// The framed block payload of stores written before its parts had CRCs: read whole and
/// checked by its record's CRC (the caller's part, see [`Block::parse`]).
pub const BLOCK_VERSION_WHOLE: u8 = 2;

/// Bytes of a block record read first: the frame table and, for blocks of a few thousand
/// series, the directory and the first frames, in one read. A block no larger is read whole.
pub const BLOCK_PREFIX: usize = 16 << 10;

/// Reads `len` bytes at `off` within a block's payload (the caller knows where the record is).
pub type Fetch<'a> = &'a dyn Fn(usize, usize) -> std::io::Result<Vec<u8>>;

/// Why a block could not be read.
#[derive(Debug)]
pub enum BlockError {
    /// Reading its bytes failed.
    Io(std::io::Error),
    /// Its frame table or directory is damaged (its frames are checked when read).
    Corrupt(CodecError),
}

impl From<CodecError> for BlockError {
    fn from(e: CodecError) -> Self {
        BlockError::Corrupt(e)
    }
}

impl std::fmt::Display for BlockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockError::Io(e) => write!(f, "read: {e}"),
            BlockError::Corrupt(e) => write!(f, "{e}"),
        }
    }
}

/// Where one frame of a block lies in its payload, and what it decompresses to.
#[derive(Debug, Clone, Copy)]
struct FrameRef {
    start: usize,
    end: usize,
    /// Its first byte in chunk space (the concatenation of the frames' bodies).
    chunk_start: usize,
    /// Its body's length (the same as its preamble's).
    body_len: usize,
    /// CRC-32 of the payload bytes `start..end`; none in an old block (the record's CRC).
    crc: Option<u32>,
}

/// A frame of a block as far as a reader has got with it.
#[derive(Debug, Clone)]
enum FrameState {
    Unread,
    /// Its CRC or its compressed body was bad: its chunks are counted as corrupt.
    Bad,
    Open(std::rc::Rc<Vec<u8>>),
}

/// A block read from disk: its frame table and directory checked and decoded; its frames
/// fetched, checked and decompressed when first needed.
#[derive(Debug)]
pub struct Block {
    /// The payload's first bytes as read so far (a small block: all of it).
    bytes: Vec<u8>,
    frames: Vec<FrameRef>,
    /// (id, offset in chunk space, length), ascending by id; 16 bytes an entry, as a live block
    /// has one per series.
    dir: Vec<DirEntry>,
    /// The timestamp the chunks' first timestamps count from.
    base: i64,
    /// The times the block's samples lie within (its record's header states them; unbounded
    /// until [`Block::within`]): a chunk that claims samples outside them is corrupt.
    span: (i64, i64),
    open: std::cell::RefCell<Vec<FrameState>>,
}

/// A block's frame table: where the directory is, and the frames.
struct Table {
    /// Version 3 and up: the parts carry CRCs (and the directory a base timestamp).
    checked: bool,
    /// Version 4: the chunks lie by length class.
    placed: bool,
    dir: (usize, usize, Option<u32>),
    frames: Vec<FrameRef>,
}

/// Why a frame table did not parse.
#[derive(Debug)]
enum TableError {
    /// The bytes given end inside it: read more.
    Short,
    Bad(CodecError),
}

/// Parses the frame table at the start of `b`, a payload `total` bytes long.
fn parse_table(b: &[u8], total: usize) -> Result<Table, TableError> {
    // Running out of `b` is `Short`; any other error is a damaged table.
    let short = |_| TableError::Short;
    let mut r = Reader::new(b);
    let version = r.u8().map_err(short)?;
    let checked = reads_in_parts(version);
    if !checked && version != BLOCK_VERSION_WHOLE {
        return Err(TableError::Bad(CodecError("unknown block version")));
    }
    let table_crc = if checked {
        Some(r.u32_le().map_err(short)?)
    } else {
        None
    };
    let crc_from = r.pos;
    let dir_len = r.uvarint().map_err(short)? as usize;
    let dir_crc = if checked {
        Some(r.u32_le().map_err(short)?)
    } else {
        None
    };
    let nframes = r.uvarint().map_err(short)?;
    // Each entry takes at least 6 bytes (1 in an old block): a count the bytes at hand cannot
    // hold is read further before anything is allocated for it, and one the block cannot hold
    // is damage.
    let entry = if checked { 6 } else { 1 };
    if nframes > (total / entry) as u64 {
        return Err(TableError::Bad(CodecError("frame count larger than block")));
    }
    if nframes > ((b.len() - r.pos) / entry) as u64 {
        return Err(TableError::Short);
    }
    let mut frames = Vec::with_capacity(nframes as usize);
    for _ in 0..nframes {
        let len = r.uvarint().map_err(short)? as usize;
        let (body_len, crc) = if checked {
            (
                r.uvarint().map_err(short)? as usize,
                Some(r.u32_le().map_err(short)?),
            )
        } else {
            (0, None)
        };
        frames.push(FrameRef {
            start: 0,
            end: len,
            chunk_start: 0,
            body_len,
            crc,
        });
    }
    let bad = |e: &'static str| TableError::Bad(CodecError(e));
    if let Some(crc) = table_crc {
        if crc32fast::hash(&b[crc_from..r.pos]) != crc {
            return Err(bad("block frame table fails its CRC"));
        }
    }
    let dir_start = r.pos;
    let dir_end = dir_start
        .checked_add(dir_len)
        .filter(|e| *e <= total)
        .ok_or(bad("directory past the end"))?;
    let mut at = dir_end;
    for f in &mut frames {
        let end = at
            .checked_add(f.end)
            .filter(|e| *e <= total)
            .ok_or(bad("frame past the end of the block"))?;
        (f.start, f.end) = (at, end);
        at = end;
    }
    Ok(Table {
        checked,
        placed: version == BLOCK_VERSION,
        dir: (dir_start, dir_end, dir_crc),
        frames,
    })
}

thread_local! {
    /// A buffer for directory bodies, which are parsed and dropped: one allocation fewer per
    /// block read. One larger than [`DIR_SCRATCH_KEEP`] (an import's) is not kept.
    static DIR_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}
const DIR_SCRATCH_KEEP: usize = 64 << 10;

/// A block directory's entry: (series id, chunk's offset in chunk space, chunk's length).
type DirEntry = (u64, u32, u32);

/// Parses a directory body: (id, offset in chunk space, length) per series, ascending by id,
/// the timestamp the chunks' first timestamps count from (`with_base`: version 3 and up; an
/// old block's count from 0), and the length of the chunk space. `placed` (version 4): the
/// chunks lie by length class ([`class_starts`]); before, in directory order.
fn parse_dir(
    body: &[u8],
    with_base: bool,
    placed: bool,
) -> Result<(Vec<DirEntry>, i64, u64), CodecError> {
    let mut d = Reader::new(body);
    let n = d.uvarint()?;
    if n > body.len() as u64 {
        return Err(CodecError("directory larger than block"));
    }
    let base = if with_base { d.varint()? } else { 0 };
    let mut dir = Vec::with_capacity(n as usize);
    let (mut id, mut off) = (0u64, 0u32);
    for k in 0..n {
        // Ids ascend strictly: every delta but the first is positive, and none wraps.
        let delta = d.uvarint()?;
        id = match id.checked_add(delta) {
            Some(next) if delta > 0 || k == 0 => next,
            _ => return Err(CodecError("block directory not sorted")),
        };
        let len = u32::try_from(d.uvarint()?).map_err(|_| CodecError("chunk length"))?;
        dir.push((id, off, len));
        off = off.checked_add(len).ok_or(CodecError("chunk length"))?;
    }
    if !d.is_empty() {
        return Err(CodecError("directory has bytes past its entries"));
    }
    if placed {
        let mut start = class_starts(dir.iter().map(|e| e.2));
        for e in dir.iter_mut() {
            let k = place_key(e.2);
            // Offsets fit in u32, as the whole does (checked above).
            e.1 = start[k] as u32;
            start[k] += u64::from(e.2);
        }
    }
    Ok((dir, base, u64::from(off)))
}

/// `fetch(off, len)`, which must return `len` bytes.
fn fetch_exact(fetch: Fetch, off: usize, len: usize) -> Result<Vec<u8>, std::io::Error> {
    let got = fetch(off, len)?;
    if got.len() != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(got)
}

impl Block {
    /// Parses a whole block payload. An old block ([`BLOCK_VERSION_WHOLE`]) has no CRCs of its
    /// own: the caller has checked the record's.
    pub fn parse(payload: Vec<u8>) -> Result<Block, CodecError> {
        let total = payload.len();
        let none = |_: usize, _: usize| Err(std::io::ErrorKind::UnexpectedEof.into());
        match Block::read(payload, total, &none) {
            Ok(b) => Ok(b),
            Err(BlockError::Corrupt(e)) => Err(e),
            Err(BlockError::Io(_)) => Err(CodecError("block shorter than its table")),
        }
    }

    /// Reads a block of `total` bytes from `bytes`, the payload's first bytes, fetching more
    /// through `fetch` as the frame table and the directory need; frames are fetched later,
    /// by the calls that need them. An old block must be given whole (see [`Block::parse`]).
    pub fn read(mut bytes: Vec<u8>, total: usize, fetch: Fetch) -> Result<Block, BlockError> {
        let table = loop {
            match parse_table(&bytes, total) {
                Ok(t) => break t,
                // The table runs past the bytes read so far: read twice as much and retry.
                Err(TableError::Short) if bytes.len() < total => {
                    let more = bytes.len().max(64).min(total - bytes.len());
                    bytes.extend(fetch_exact(fetch, bytes.len(), more).map_err(BlockError::Io)?);
                }
                Err(TableError::Short) => return Err(CodecError("truncated frame table").into()),
                Err(TableError::Bad(e)) => return Err(e.into()),
            }
        };
        let (dir_start, dir_end, dir_crc) = table.dir;
        if bytes.len() < dir_end {
            let more = fetch_exact(fetch, bytes.len(), dir_end - bytes.len());
            bytes.extend(more.map_err(BlockError::Io)?);
        }
        if table.frames.first().is_some_and(|f| f.crc.is_none()) && bytes.len() < total {
            return Err(CodecError("an old block must be read whole").into());
        }
        let dir_bytes = bytes
            .get(dir_start..dir_end)
            .ok_or(CodecError("directory past the end"))?;
        if dir_crc.is_some_and(|crc| crc32fast::hash(dir_bytes) != crc) {
            return Err(CodecError("block directory fails its CRC").into());
        }
        // The directory's body is only parsed: decompressed into a buffer kept for the next.
        let mut body = DIR_SCRATCH.with(|b| std::mem::take(&mut *b.borrow_mut()));
        let parsed = open_into(dir_bytes, &mut body)
            .and_then(|_| parse_dir(&body, table.checked, table.placed));
        if body.capacity() <= DIR_SCRATCH_KEEP {
            DIR_SCRATCH.with(|b| *b.borrow_mut() = body);
        }
        let (dir, base, chunk_space) = parsed?;
        let open_frames = std::cell::RefCell::new(vec![FrameState::Unread; table.frames.len()]);
        let mut b = Block {
            bytes,
            frames: table.frames,
            dir,
            base,
            span: (i64::MIN, i64::MAX),
            open: open_frames,
        };
        b.locate_frames(chunk_space)?;
        Ok(b)
    }

    /// The block, with its samples known to lie within `[min_t, max_t]` (its record's header):
    /// a regular chunk can then claim no more samples than fit in that span at its step, so a
    /// corrupt count of a few bytes cannot ask for a large allocation.
    pub fn within(mut self, min_t: i64, max_t: i64) -> Block {
        self.span = (min_t, max_t);
        self
    }

    /// Fills in each frame's start in chunk space from the frames' body lengths: stated in the
    /// frame table, or in an old block read from the frames' preambles (no decompression).
    fn locate_frames(&mut self, chunk_space: u64) -> Result<(), CodecError> {
        let mut start = 0usize;
        for f in &mut self.frames {
            if f.crc.is_none() {
                let pre = self
                    .bytes
                    .get(f.start..f.start + 6)
                    .ok_or(CodecError("truncated frame"))?;
                f.body_len = u32::from_le_bytes([pre[2], pre[3], pre[4], pre[5]]) as usize;
            }
            f.chunk_start = start;
            start = start
                .checked_add(f.body_len)
                .ok_or(CodecError("frame length"))?;
        }
        if chunk_space > start as u64 {
            return Err(CodecError("directory points past the frames"));
        }
        Ok(())
    }

    /// Checks and decompresses frame `i` from its payload bytes `raw`.
    fn decode_frame(&self, i: usize, raw: &[u8]) -> FrameState {
        let f = self.frames[i];
        if f.crc.is_some_and(|crc| crc32fast::hash(raw) != crc) {
            return FrameState::Bad;
        }
        match open(raw) {
            Ok(body) if body.len() == f.body_len => FrameState::Open(std::rc::Rc::new(body)),
            _ => FrameState::Bad,
        }
    }

    /// Frame `i` decompressed (none if it is damaged), fetched if it is not in memory.
    fn frame(
        &self,
        i: usize,
        fetch: Fetch,
    ) -> Result<Option<std::rc::Rc<Vec<u8>>>, std::io::Error> {
        let state = self.open.borrow().get(i).cloned();
        let state = match state {
            None | Some(FrameState::Bad) => return Ok(None),
            Some(FrameState::Open(f)) => return Ok(Some(f)),
            Some(FrameState::Unread) => {
                let f = self.frames[i];
                let st = match self.bytes.get(f.start..f.end) {
                    Some(raw) => self.decode_frame(i, raw),
                    None => self.decode_frame(i, &fetch_exact(fetch, f.start, f.end - f.start)?),
                };
                self.open.borrow_mut()[i] = st.clone();
                st
            }
        };
        Ok(match state {
            FrameState::Open(f) => Some(f),
            _ => None,
        })
    }

    /// Reads the unread frames marked in `need` that are not in memory, one read per run of
    /// adjacent frames, and checks and decompresses them.
    fn fetch_frames(&self, need: &[bool], fetch: Fetch) -> Result<(), std::io::Error> {
        let missing = |i: usize| {
            need[i]
                && self.frames[i].end > self.bytes.len()
                && matches!(self.open.borrow()[i], FrameState::Unread)
        };
        let mut i = 0;
        while i < self.frames.len() {
            if !missing(i) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < self.frames.len() && missing(j) {
                j += 1;
            }
            let from = self.frames[i].start;
            let raw = fetch_exact(fetch, from, self.frames[j - 1].end - from)?;
            for k in i..j {
                let f = self.frames[k];
                let st = match raw.get(f.start - from..f.end - from) {
                    Some(r) => self.decode_frame(k, r),
                    None => FrameState::Bad,
                };
                self.open.borrow_mut()[k] = st;
            }
            i = j;
        }
        Ok(())
    }

    /// The chunks of `ids` (ascending) found in the block, in order (see [`Chunks`]).
    fn chunks<'b>(&'b self, ids: &'b [u64]) -> Chunks<'b> {
        Chunks {
            block: self,
            ids,
            // A few ids among many series: jump by binary search; otherwise walk both in step.
            jump: ids.len().saturating_mul(8) < self.dir.len(),
            k: 0,
            i: 0,
            fi: 0,
        }
    }

    /// Appends the samples of series `id` to `out`; false if the block has none.
    pub fn series(&self, id: u64, out: &mut Vec<Sample>, fetch: Fetch) -> Result<bool, BlockError> {
        let (mut per, mut ordered) = ([std::mem::take(out)], [true]);
        let before = per[0].len();
        let corrupt = self
            .series_many(&[id], &mut per, &mut ordered, i64::MIN, i64::MAX, fetch)
            .map_err(BlockError::Io)?;
        let [got] = per;
        *out = got;
        if corrupt > 0 {
            return Err(CodecError("damaged chunk or frame").into());
        }
        Ok(out.len() > before || self.dir.binary_search_by_key(&id, |e| e.0).is_ok())
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
        let start = off.checked_sub(self.frames.get(fi).map_or(0, |f| f.chunk_start))?;
        frame.get(start..start.checked_add(len)?)?;
        frame.get(start..)
    }

    /// Appends the samples of each wanted series to its vector, in one pass over the directory:
    /// `per[k]` receives the samples of `ids[k]` (`ids` ascending, as long as `per`), only those
    /// in `[mint, maxt]`, and `ordered[k]` is cleared if they do not continue its samples in
    /// ascending order (imported blocks may overlap). The frames needed are fetched first, one
    /// read per run of adjacent frames, and opened once each. Returns how many chunks were
    /// corrupt (skipped; the other series are still served).
    pub fn series_many(
        &self,
        ids: &[u64],
        per: &mut [Vec<Sample>],
        ordered: &mut [bool],
        mint: i64,
        maxt: i64,
        fetch: Fetch,
    ) -> Result<u64, std::io::Error> {
        self.prefetch(ids, fetch)?;
        let mut corrupt = 0;
        let mut current: Option<(usize, Option<std::rc::Rc<Vec<u8>>>)> = None;
        for Chunk {
            k,
            frame: fi,
            off,
            len,
        } in self.chunks(ids)
        {
            if current.as_ref().is_none_or(|c| c.0 != fi) {
                current = Some((fi, self.frame(fi, fetch)?));
            }
            let Some(bytes) = current
                .as_ref()
                .and_then(|(_, f)| f.as_ref())
                .and_then(|f| self.chunk_onwards(f, fi, off, len))
            else {
                corrupt += 1;
                continue;
            };
            let out = &mut per[k];
            let start = out.len();
            let Ok(ascends) =
                codec::decode_chunk_of(&mut Reader::new(bytes), len, self.base, self.span, out)
            else {
                out.truncate(start);
                corrupt += 1;
                continue;
            };
            // In order: within the chunk (known for a regular one), and after the samples before.
            let ok = if ascends {
                start == 0 || out.get(start).is_none_or(|s| out[start - 1].t < s.t)
            } else {
                ascending(&out[start.saturating_sub(1)..])
            };
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
        Ok(corrupt)
    }

    /// Adds to `counts[k]` the number of samples of `ids[k]` (ascending) in this block, read from
    /// its chunk's first byte(s) without decoding it; chunks in damaged frames count nothing.
    pub fn sample_counts(
        &self,
        ids: &[u64],
        counts: &mut [usize],
        fetch: Fetch,
    ) -> Result<(), std::io::Error> {
        self.prefetch(ids, fetch)?;
        let mut current: Option<(usize, Option<std::rc::Rc<Vec<u8>>>)> = None;
        for c in self.chunks(ids) {
            if current.as_ref().is_none_or(|f| f.0 != c.frame) {
                current = Some((c.frame, self.frame(c.frame, fetch)?));
            }
            let n = current
                .as_ref()
                .and_then(|(_, f)| f.as_ref())
                .and_then(|f| self.chunk_onwards(f, c.frame, c.off, c.len))
                .and_then(|b| Reader::new(b).uvarint().ok());
            if let (Some(n), Some(count)) = (n, counts.get_mut(c.k)) {
                *count = count.saturating_add(n.min(codec::MAX_CHUNK_SAMPLES) as usize);
            }
        }
        Ok(())
    }

    /// Reads the frames that hold the chunks of `ids` (ascending) and are not in memory yet,
    /// one read per run of adjacent frames: for callers that then read the series one by one.
    pub fn prefetch(&self, ids: &[u64], fetch: Fetch) -> Result<(), std::io::Error> {
        if self.frames.iter().all(|f| f.end <= self.bytes.len()) {
            return Ok(());
        }
        let mut need = vec![false; self.frames.len()];
        for c in self.chunks(ids) {
            need[c.frame] = true;
        }
        self.fetch_frames(&need, fetch)
    }

    /// The ids in this block.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.dir.iter().map(|e| e.0)
    }
}

/// A wanted series' chunk in a block: `ids[k]`'s, at `off` in chunk space, `len` bytes, in
/// frame `frame`.
struct Chunk {
    k: usize,
    frame: usize,
    off: usize,
    len: usize,
}

/// Walks a block's directory and a list of wanted ids (both ascending) in step.
struct Chunks<'b> {
    block: &'b Block,
    ids: &'b [u64],
    jump: bool,
    /// The next wanted id, the directory entry reached, and the frame of the last chunk found.
    k: usize,
    i: usize,
    fi: usize,
}

impl Iterator for Chunks<'_> {
    type Item = Chunk;

    // Inlined in the decoding loop, where it runs once per chunk (5 % of a select otherwise).
    #[inline(always)]
    fn next(&mut self) -> Option<Chunk> {
        let dir = &self.block.dir;
        let frames = &self.block.frames;
        while let Some(id) = self.ids.get(self.k) {
            let k = self.k;
            self.k += 1;
            if self.jump {
                self.i += dir[self.i.min(dir.len())..].partition_point(|e| e.0 < *id);
            } else {
                while self.i < dir.len() && dir[self.i].0 < *id {
                    self.i += 1;
                }
            }
            let &(found, off, len) = dir.get(self.i)?;
            let (off, len) = (off as usize, len as usize);
            if found != *id {
                continue;
            }
            // In id order, offsets (and so frames) move forward a little, but for a jump from
            // one length class to another (version 4): then the frame is searched for.
            let ahead = |i: usize| frames.get(i).is_some_and(|f| f.chunk_start <= off);
            if frames.get(self.fi).is_some_and(|f| off < f.chunk_start) || ahead(self.fi + 2) {
                self.fi = frames
                    .partition_point(|f| f.chunk_start <= off)
                    .saturating_sub(1);
            }
            while ahead(self.fi + 1) {
                self.fi += 1;
            }
            return Some(Chunk {
                k,
                frame: self.fi,
                off,
                len,
            });
        }
        None
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

    /// A fetch for blocks given whole (never called).
    fn whole(_: usize, _: usize) -> std::io::Result<Vec<u8>> {
        panic!("a whole block fetched more bytes")
    }

    /// Reads series `id` of `b` (a block given whole).
    fn one(b: &Block, id: u64, out: &mut Vec<Sample>) -> bool {
        b.series(id, out, &whole).unwrap()
    }

    /// Samples of series `id` in the big blocks below: values that do not compress.
    fn noisy(id: u64, n: i64) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                t: i * 1000,
                v: f64::from_bits((id * 7919 + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            })
            .collect()
    }

    fn bits(v: &[Sample]) -> Vec<(i64, u64)> {
        v.iter().map(|s| (s.t, s.v.to_bits())).collect()
    }

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
        assert!(one(&block, 70, &mut out));
        assert_eq!(out, s2);
        out.clear();
        assert!(one(&block, 3, &mut out));
        assert_eq!(out, s1);
        assert!(!one(&block, 4, &mut out));
        assert_eq!(block.ids().collect::<Vec<_>>(), vec![3, 70]);
    }

    #[test]
    fn big_blocks_are_framed_and_read_frame_by_frame() {
        let mut bb = BlockBuilder::new(3);
        let mut want = Vec::new();
        for id in 0..400u64 {
            let s = noisy(id, 100);
            bb.add(id + 1, &s);
            want.push(s);
        }
        let block = Block::parse(bb.finish()).unwrap();
        assert!(block.frames.len() > 3, "{} frames", block.frames.len());
        for (k, s) in want.iter().enumerate().rev() {
            let mut out = Vec::new();
            assert!(one(&block, k as u64 + 1, &mut out));
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
            bb.add(id, &noisy(id, 20));
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
                    block
                        .series_many(&ids, &mut per, &mut ordered, mint, maxt, &whole)
                        .unwrap(),
                    0
                );
                assert!(ordered.iter().all(|o| *o));
                for (k, id) in ids.iter().enumerate() {
                    let mut want = vec![Sample { t: -1, v: 0.0 }];
                    let mut got = Vec::new();
                    one(&block, *id, &mut got);
                    want.extend(got.into_iter().filter(|s| s.t >= mint && s.t <= maxt));
                    assert_eq!(bits(&per[k]), bits(&want), "id {id}");
                }
            }
        }
    }

    /// Samples of series `id` whose chunks differ in length by kind: constant, a slow counter,
    /// noise of a few lengths.
    fn mixed(id: u64) -> Vec<Sample> {
        match id % 4 {
            0 => (0..60)
                .map(|i| Sample {
                    t: i * 1000,
                    v: 7.0,
                })
                .collect(),
            1 => (0..60)
                .map(|i| Sample {
                    t: i * 1000,
                    v: (id * 1000 + (i as u64) * (id % 7)) as f64,
                })
                .collect(),
            _ => noisy(id, 10 + (id % 50) as i64),
        }
    }

    #[test]
    fn chunks_lie_by_length_class_and_every_series_reads_back() {
        let mut bb = BlockBuilder::new(3);
        let want: Vec<Vec<Sample>> = (1..=1500u64).map(mixed).collect();
        for (k, s) in want.iter().enumerate() {
            bb.add(k as u64 + 1, s);
        }
        let payload = bb.finish();
        assert_eq!(payload[0], BLOCK_VERSION);
        let block = Block::parse(payload.clone()).unwrap();
        assert!(block.frames.len() > 3, "{} frames", block.frames.len());
        // Laid out by class: ascending classes in chunk space, ids ascending within a class.
        let mut laid: Vec<DirEntry> = block.dir.clone();
        laid.sort_by_key(|e| e.1);
        let mut end = 0u32;
        for w in laid.windows(2) {
            assert_eq!(w[0].1 + w[0].2, w[1].1, "chunks tile chunk space");
            let (a, b) = (place_key(w[0].2), place_key(w[1].2));
            assert!(a < b || (a == b && w[0].0 < w[1].0));
            end = w[1].1 + w[1].2;
        }
        assert!(end > 0);
        // Read all at once (walking), a few (jumping), and one by one, from a prefix.
        let fetch = |off: usize, len: usize| Ok(payload[off..off + len].to_vec());
        let block = Block::read(payload[..200].to_vec(), payload.len(), &fetch).unwrap();
        let (per, corrupt) = read_all(&block, 1500, &fetch);
        assert_eq!(corrupt, 0);
        assert!(per.iter().zip(&want).all(|(a, b)| bits(a) == bits(b)));
        let few = [3u64, 4, 900, 1499];
        let mut per = vec![Vec::new(); few.len()];
        let mut ordered = vec![true; few.len()];
        block
            .series_many(&few, &mut per, &mut ordered, i64::MIN, i64::MAX, &fetch)
            .unwrap();
        for (k, id) in few.iter().enumerate() {
            assert_eq!(bits(&per[k]), bits(&want[*id as usize - 1]), "id {id}");
        }
        for id in (1..=1500u64).rev().step_by(7) {
            let mut out = Vec::new();
            assert!(block.series(id, &mut out, &fetch).unwrap());
            assert_eq!(bits(&out), bits(&want[id as usize - 1]), "id {id}");
        }
    }

    #[test]
    fn a_block_of_one_frame_keeps_id_order_and_older_multi_frame_blocks_still_read() {
        let mut bb = BlockBuilder::new(3);
        for id in 1..=20u64 {
            bb.add(id, &mixed(id));
        }
        let payload = bb.finish();
        assert_eq!(payload[0], BLOCK_VERSION_IN_ID_ORDER);
        let block = Block::parse(payload).unwrap();
        assert_eq!(block.frames.len(), 1);
        // A version 3 block of many frames (as written before chunks were placed by class).
        let mut bb = BlockBuilder::new(3);
        let want: Vec<Vec<Sample>> = (1..=1500u64).map(mixed).collect();
        for (k, s) in want.iter().enumerate() {
            bb.add(k as u64 + 1, s);
        }
        bb.in_id_order = true;
        let payload = bb.finish();
        assert_eq!(payload[0], BLOCK_VERSION_IN_ID_ORDER);
        let block = Block::parse(payload).unwrap();
        assert!(block.frames.len() > 3);
        assert!(block.dir.windows(2).all(|w| w[0].1 < w[1].1));
        let (per, corrupt) = read_all(&block, 1500, &whole);
        assert_eq!(corrupt, 0);
        assert!(per.iter().zip(&want).all(|(a, b)| bits(a) == bits(b)));
    }

    #[test]
    fn placement_classes_ascend_with_length_and_fit_the_table() {
        let mut last = 0;
        for len in (0..5000u32).chain([u32::MAX / 3, u32::MAX - 1, u32::MAX]) {
            let k = place_key(len);
            assert!(k >= last && k < PLACE_KEYS, "len {len}");
            last = k;
        }
        assert_eq!(place_key(u32::MAX), PLACE_KEYS - 1);
        // Exact below 16; then 8 classes an octave.
        assert_eq!((place_key(15), place_key(16), place_key(17)), (15, 16, 16));
        assert_eq!(place_key(31), 23);
    }

    #[test]
    fn damaged_payloads_are_errors() {
        let mut bb = BlockBuilder::new(3);
        bb.add(1, &[Sample { t: 1, v: 1.0 }, Sample { t: 2, v: 2.5 }]);
        let payload = bb.finish();
        for cut in 0..payload.len() {
            if let Ok(b) = Block::parse(payload[..cut].to_vec()) {
                let _ = b.series(1, &mut Vec::new(), &whole);
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
                let _ = b.series(1, &mut out, &whole);
                let _ = b.series_many(
                    &[1],
                    &mut [Vec::new()],
                    &mut [true],
                    i64::MIN,
                    i64::MAX,
                    &whole,
                );
            }
        }
    }

    /// A big block of `n` series (ids 1..=n) and their samples.
    fn big_block(n: u64) -> (Vec<u8>, Vec<Vec<Sample>>) {
        let mut bb = BlockBuilder::new(3);
        let want: Vec<Vec<Sample>> = (1..=n).map(|id| noisy(id, 60)).collect();
        for (k, s) in want.iter().enumerate() {
            bb.add(k as u64 + 1, s);
        }
        (bb.finish(), want)
    }

    /// Reads series 1..=n of `block` in one call: their samples, and the corrupt count.
    fn read_all(block: &Block, n: u64, fetch: Fetch) -> (Vec<Vec<Sample>>, u64) {
        let ids: Vec<u64> = (1..=n).collect();
        let mut per = vec![Vec::new(); ids.len()];
        let mut ordered = vec![true; ids.len()];
        let corrupt = block
            .series_many(&ids, &mut per, &mut ordered, i64::MIN, i64::MAX, fetch)
            .unwrap();
        (per, corrupt)
    }

    #[test]
    fn a_few_series_fetch_the_table_the_directory_and_their_frames_only() {
        let (payload, want) = big_block(2000);
        let reads = std::cell::RefCell::new(Vec::new());
        let fetch = |off: usize, len: usize| {
            reads.borrow_mut().push((off, len));
            Ok(payload[off..off + len].to_vec())
        };
        let prefix = payload[..100].to_vec();
        let block = Block::read(prefix, payload.len(), &fetch).unwrap();
        assert!(block.frames.len() > 20, "{} frames", block.frames.len());
        let dir_end = block.frames[0].start;
        assert_eq!(
            block.bytes.len(),
            dir_end,
            "table and directory, nothing more"
        );
        reads.borrow_mut().clear();
        // Two series in the same frame and one far off: two reads, of their frames alone.
        let ids = [1000u64, 1001, 1900];
        let mut per = vec![Vec::new(); 3];
        let corrupt = block
            .series_many(&ids, &mut per, &mut [true; 3], i64::MIN, i64::MAX, &fetch)
            .unwrap();
        assert_eq!(corrupt, 0);
        for (k, id) in ids.iter().enumerate() {
            assert_eq!(bits(&per[k]), bits(&want[*id as usize - 1]));
        }
        let fetched: usize = reads.borrow().iter().map(|r| r.1).sum();
        assert_eq!(reads.borrow().len(), 2, "{:?}", reads.borrow());
        assert!(
            fetched * 10 < payload.len(),
            "{fetched} of {}",
            payload.len()
        );
        // All series: the frames not read yet, one read per run of them (before, between and
        // after the two frames read above).
        reads.borrow_mut().clear();
        let (per, corrupt) = read_all(&block, 2000, &fetch);
        assert_eq!(corrupt, 0);
        assert!(per.iter().zip(&want).all(|(a, b)| bits(a) == bits(b)));
        assert_eq!(
            reads.borrow().len(),
            3,
            "the runs between the frames already read"
        );
    }

    #[test]
    fn a_damaged_frame_costs_its_own_series_only() {
        let (mut payload, want) = big_block(2000);
        let block = Block::parse(payload.clone()).unwrap();
        let hit = block.frames[5];
        payload[(hit.start + hit.end) / 2] ^= 0x10;
        let fetch = |off: usize, len: usize| Ok(payload[off..off + len].to_vec());
        let block = Block::read(payload[..64].to_vec(), payload.len(), &fetch).unwrap();
        let (per, corrupt) = read_all(&block, 2000, &fetch);
        let in_hit = block
            .dir
            .iter()
            .filter(|e| {
                let at = e.1 as usize;
                at >= hit.chunk_start && at < hit.chunk_start + hit.body_len
            })
            .count();
        assert!(in_hit > 0);
        assert_eq!(corrupt, in_hit as u64);
        let served = per
            .iter()
            .zip(&want)
            .filter(|(a, b)| bits(a) == bits(b))
            .count();
        assert_eq!(served, 2000 - in_hit);
        // A damaged frame table or directory is a corrupt block, not a wrong answer.
        for at in [3, block.frames[0].start - 2] {
            let mut p = payload.clone();
            p[at] ^= 1;
            assert!(Block::parse(p).is_err(), "byte {at}");
        }
    }

    #[test]
    fn sample_counts_are_read_without_decoding() {
        let (payload, _) = big_block(2000);
        let block = Block::parse(payload).unwrap();
        let ids = [1u64, 777, 2000, 2001];
        let mut counts = [1usize, 0, 0, 0];
        block.sample_counts(&ids, &mut counts, &whole).unwrap();
        // Added to what was there; an id the block lacks counts nothing.
        assert_eq!(counts, [61, 60, 60, 0]);
    }

    #[test]
    fn a_short_read_is_an_error_not_a_loop() {
        let (payload, _) = big_block(300);
        let nothing = |_: usize, _: usize| Ok(Vec::new());
        for prefix in [1, 10, 100] {
            let got = Block::read(payload[..prefix].to_vec(), payload.len(), &nothing);
            assert!(matches!(got, Err(BlockError::Io(_))), "prefix {prefix}");
        }
    }

    #[test]
    fn an_old_block_without_part_crcs_still_reads() {
        // Its samples start at t = 0, so the chunks' timestamps are as version 2 wrote them.
        let (payload, want) = big_block(300);
        let t = parse_table(&payload, payload.len()).unwrap();
        // Version 2's directory had no base timestamp (here one byte, 0, after the count).
        let mut dir = open(&payload[t.dir.0..t.dir.1]).unwrap();
        let mut r = Reader::new(&dir);
        r.uvarint().unwrap();
        let base_at = r.pos;
        assert_eq!(dir.remove(base_at), 0);
        let dir = seal(&dir, 3);
        // Its frame table had lengths only.
        let mut old = vec![BLOCK_VERSION_WHOLE];
        put_uvarint(&mut old, dir.len() as u64);
        put_uvarint(&mut old, t.frames.len() as u64);
        for f in &t.frames {
            put_uvarint(&mut old, (f.end - f.start) as u64);
        }
        old.extend_from_slice(&dir);
        old.extend_from_slice(&payload[t.dir.1..]);
        let block = Block::parse(old.clone()).unwrap();
        for id in [1u64, 150, 300] {
            let mut out = Vec::new();
            assert!(one(&block, id, &mut out));
            assert_eq!(bits(&out), bits(&want[id as usize - 1]));
        }
        // Given in part, it asks to be read whole.
        let fetch = |off: usize, len: usize| Ok(old[off..off + len].to_vec());
        assert!(Block::read(old[..1000].to_vec(), old.len(), &fetch).is_err());
    }
}

/// A payload that failed its checks (for callers that only need to count it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptPayload;
